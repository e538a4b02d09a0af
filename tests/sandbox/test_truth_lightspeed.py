"""The Lightspeed ground-truth check is itself tested: it passes a correct load and catches each bug.

Warehouses are built in the real emulator straight from the sandbox's truth (exact dollars from its
cents); each broken build changes what one classic bug changes and must fail the check with exactly
that difference. The expected report is checked on a tiny truth worked out by hand.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from google.cloud import bigquery

from sandbox.process import SandboxProcess, start_lightspeed_sandbox
from sandbox.square_money import FLOAT_TRAP_CENTS
from sandbox.truth_lightspeed import (
    CheckReport,
    LightspeedTruth,
    check_lightspeed_warehouse,
    expected_lightspeed_report,
    fetch_lightspeed_truth,
)
from sandbox.truth_report import SumDifference
from schemas.tables import LIGHTSPEED_PRODUCTS, LIGHTSPEED_TRANSACTIONS, TableSpec

SALES, PRODUCTS = LIGHTSPEED_TRANSACTIONS.name, LIGHTSPEED_PRODUCTS.name
#: Differences other than the one a bug should cause.
OTHER_KINDS = ("missing", "duplicates", "unexpected", "mismatched", "sum_differences", "schema")
#: When the rows were synced, for ``_synced_at`` (the check ignores it).
SYNCED_AT = "2026-01-01T00:00:00+00:00"
SALE_MONEY = {
    "calcSubtotal": "subtotal_cents",
    "calcDiscount": "discount_cents",
    "calcTax1": "tax1_cents",
    "calcTax2": "tax2_cents",
    "calcTotal": "total_cents",
}

Rows = list[dict[str, Any]]


@pytest.fixture(scope="module")
def lightspeed() -> Iterator[SandboxProcess]:
    """A small sandbox nobody changes: 700 sales (about 40 with float-trap subtotals), 60 items."""
    with start_lightspeed_sandbox(sales=700, items=60, seed=5, anchor="2026-03-15T12:00:00+00:00") as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def truth(lightspeed: SandboxProcess) -> LightspeedTruth:
    return fetch_lightspeed_truth(lightspeed.base_url)


def dollars(cents: int | None) -> str | None:
    """Exact major units, as a correct loader writes NUMERIC."""
    return None if cents is None else str(Decimal(cents).scaleb(-2))


def dollars_of(cents: int) -> Decimal:
    """Exact major units, as the check reads NUMERIC back."""
    return Decimal(cents).scaleb(-2)


def through_float(cents: int | None) -> str | None:
    """The classic bug: dollars as a binary float, back to cents with ``int()`` (29 -> 28)."""
    return None if cents is None else dollars(int(cents / 100 * 100))


def sale_rows(truth: LightspeedTruth) -> Rows:
    """``lightspeed_transactions`` rows exactly as the truth has them."""
    return [
        {
            "saleID": sale["sale_id"],
            "completed": sale["completed"],
            **{column: dollars(sale[field]) for column, field in SALE_MONEY.items()},
            "customerID": sale["customer_id"],
            "employeeID": sale["employee_id"],
            "shopID": sale["shop_id"],
            "registerID": sale["register_id"],
            "archived": sale["archived"],
            "voided": sale["voided"],
            "createTime": sale["create_time"],
            "updatetime": sale["update_time"],
            "completeTime": sale["complete_time"],
            "_synced_at": SYNCED_AT,
        }
        for sale in truth.sales
    ]


def product_rows(truth: LightspeedTruth) -> Rows:
    """``lightspeed_products`` rows exactly as the truth has them."""
    return [
        {
            "itemID": item["item_id"],
            "description": item["description"],
            "defaultCost": dollars(item["default_cost_cents"]),
            "avgCost": dollars(item["avg_cost_cents"]),
            "categoryID": item["category_id"],
            "manufacturerSku": item["manufacturer_sku"],
            "systemSku": item["system_sku"],
            "price": dollars(item["prices_cents"].get("Default")),
            "archived": item["archived"],
            "createTime": item["create_time"],
            "timeStamp": item["time_stamp"],
            "_synced_at": SYNCED_AT,
        }
        for item in truth.items
    ]


@pytest.fixture
def warehouse(bq_client: bigquery.Client, dataset: str, truth: LightspeedTruth) -> Callable[..., CheckReport]:
    """Factory: ``warehouse(sales=rows, products=rows)`` loads those tables (the truth's rows by
    default, ``None`` for no table; ``types`` overrides column types) and returns the check's report."""
    bq_client.create_dataset(dataset, exists_ok=True)

    def load(spec: TableSpec, rows: Rows, types: dict[str, str]) -> None:
        table = f"{bq_client.project}.{dataset}.{spec.name}"
        schema = [bigquery.SchemaField(c.name, types.get(c.name, c.type), mode=c.mode) for c in spec.columns]
        bq_client.create_table(bigquery.Table(table, schema=schema))
        config = bigquery.LoadJobConfig(schema=schema, write_disposition="WRITE_APPEND")
        bq_client.load_table_from_json(rows, table, job_config=config).result(timeout=120)

    def build(
        *, sales: Rows | None = None, products: Rows | None = None, types: dict[str, str] | None = None
    ) -> CheckReport:
        load(LIGHTSPEED_TRANSACTIONS, sale_rows(truth) if sales is None else sales, types or {})
        if products != []:
            load(LIGHTSPEED_PRODUCTS, product_rows(truth) if products is None else products, types or {})
        return check_lightspeed_warehouse(bq_client, project=bq_client.project, dataset=dataset, truth=truth)

    return build


def others(report: CheckReport, table: str, *kinds: str) -> list[str]:
    """The kinds of difference, among OTHER_KINDS, that ``table`` shows beyond ``kinds``."""
    check = report[table]
    return [kind for kind in OTHER_KINDS if kind not in kinds and getattr(check, kind)]


def total_by_completed(truth: LightspeedTruth, completed: bool) -> Decimal:
    return sum((dollars_of(s["total_cents"]) for s in truth.sales if s["completed"] is completed), Decimal(0))


# -- the warehouse check ----------------------------------------------------------------------------


def test_a_correct_load_passes(
    lightspeed: SandboxProcess, truth: LightspeedTruth, warehouse: Callable[..., CheckReport]
) -> None:
    # Given the whole truth, which covers every sale and item the sandbox has
    counts = lightspeed.admin.info()["counts"]
    assert (len(truth.sales), len(truth.items)) == (counts["sales"], counts["items"])

    # When a warehouse holding exactly it is checked
    report = warehouse()

    # Then both tables match, row for row
    assert report.ok, report.summary()
    assert list(report.tables) == [SALES, PRODUCTS]
    assert report[SALES].warehouse_rows == report[SALES].expected_rows == 700
    assert report[PRODUCTS].warehouse_rows == report[PRODUCTS].expected_rows == 60
    assert report.summary().startswith("warehouse matches the ground truth")
    assert json.loads(json.dumps(report.as_dict()))["ok"] is True


def test_a_missing_sale_is_missing_and_short_in_the_completed_sum(
    truth: LightspeedTruth, warehouse: Callable[..., CheckReport]
) -> None:
    # Given a load that lost one completed sale
    rows = sale_rows(truth)
    gone = next(s for s in truth.sales if s["completed"] and s["total_cents"] > 0)
    report = warehouse(sales=[row for row in rows if row["saleID"] != gone["sale_id"]])

    # Then exactly that key is missing, and the completed sales' calcTotal is short by its total
    sales = report[SALES]
    assert not report.ok
    assert sales.missing == [str(gone["sale_id"])]
    assert others(report, SALES, "missing", "sum_differences") == []
    expected = total_by_completed(truth, True)
    assert sales.sum_differences == [
        SumDifference("completed", "true", "calcTotal", expected, expected - dollars_of(gone["total_cents"]))
    ]
    assert report[PRODUCTS].ok
    assert f"missing 1 keys, e.g. {gone['sale_id']}" in report.summary()


def test_money_through_float_loses_a_cent_on_float_trap_amounts(
    truth: LightspeedTruth, warehouse: Callable[..., CheckReport]
) -> None:
    # Given a load that converted every amount through a binary float
    rows = [
        {**row, **{column: through_float(sale[field]) for column, field in SALE_MONEY.items()}}
        for row, sale in zip(sale_rows(truth), truth.sales, strict=True)
    ]
    report = warehouse(sales=rows)

    # Then every key is there once, but each amount the float cannot carry is a cent short, among
    # them float-trap subtotals
    sales = report[SALES]
    assert not report.ok
    assert others(report, SALES, "mismatched", "sum_differences") == []

    def hit(cents: int) -> bool:
        return int(cents / 100 * 100) != cents

    assert any(hit(s["subtotal_cents"]) for s in truth.sales if s["subtotal_cents"] in FLOAT_TRAP_CENTS)
    for column, field in SALE_MONEY.items():
        lost = sum(hit(s[field]) for s in truth.sales)
        assert (sales.mismatched[column].count if column in sales.mismatched else 0) == lost, column
    for mismatch in sales.mismatched.values():
        for example in mismatch.examples:
            assert example.actual == example.expected - Decimal("0.01"), example
    # And the calcTotal sums by completed are short by a cent per row that lost one
    lost_by_group = Counter(
        "true" if s["completed"] else "false" for s in truth.sales if hit(s["total_cents"])
    )
    assert {d.group: d.difference for d in sales.sum_differences} == {
        group: -Decimal("0.01") * lost for group, lost in lost_by_group.items()
    }
    assert "calcSubtotal differs on" in report.summary()


def test_customer_id_zero_stored_as_zero_instead_of_null(
    truth: LightspeedTruth, warehouse: Callable[..., CheckReport]
) -> None:
    # Given a load that kept Lightspeed's customerID "0" (no customer) as 0
    rows = [{**row, "customerID": row["customerID"] or 0} for row in sale_rows(truth)]
    report = warehouse(sales=rows)

    # Then customerID differs on exactly the sales without a customer: NULL expected, 0 found
    sales = report[SALES]
    assert not report.ok
    assert others(report, SALES, "mismatched") == []
    assert list(sales.mismatched) == ["customerID"]
    assert sales.mismatched["customerID"].count == sum(s["customer_id"] is None for s in truth.sales) > 0
    for example in sales.mismatched["customerID"].examples:
        assert (example.expected, example.actual) == (None, 0)
    assert report[PRODUCTS].ok


def test_price_taken_from_msrp_instead_of_default(
    truth: LightspeedTruth, warehouse: Callable[..., CheckReport]
) -> None:
    # Given a load that took each item's MSRP ItemPrice for its price
    rows = [
        {**row, "price": dollars(item["prices_cents"]["MSRP"])}
        for row, item in zip(product_rows(truth), truth.items, strict=True)
    ]
    report = warehouse(products=rows)

    # Then price differs on every item (MSRP is 110 % of Default), with both values shown
    products = report[PRODUCTS]
    assert not report.ok
    assert report[SALES].ok
    assert others(report, PRODUCTS, "mismatched") == []
    assert list(products.mismatched) == ["price"]
    assert products.mismatched["price"].count == len(truth.items)
    by_id = {str(item["item_id"]): item for item in truth.items}
    for example in products.mismatched["price"].examples:
        prices = by_id[example.key]["prices_cents"]
        assert (example.expected, example.actual) == (
            dollars_of(prices["Default"]),
            dollars_of(prices["MSRP"]),
        )


def test_a_missing_table_and_a_float_column_are_reported(
    truth: LightspeedTruth, warehouse: Callable[..., CheckReport]
) -> None:
    # Given sales whose calcTotal column is FLOAT64 (the values print like the truth), and no products
    report = warehouse(types={"calcTotal": "FLOAT64"}, products=[])

    # Then the sales fail on that column's type only, and every item is missing
    assert not report.ok
    assert report[SALES].schema == {"calcTotal": "FLOAT64 NULLABLE, expected NUMERIC NULLABLE"}
    assert others(report, SALES, "schema") == []
    products = report[PRODUCTS]
    assert products.error is not None
    assert products.error.startswith("not found")
    assert products.missing == [str(item["item_id"]) for item in truth.items]


# -- the expected report ----------------------------------------------------------------------------


def sale(
    sale_id: int, completed: bool, total_cents: int, customer_id: int | None, created: str
) -> dict[str, Any]:
    """A truth sale with only what the report reads (and a decoy subtotal it must not read)."""
    return {
        "sale_id": sale_id,
        "completed": completed,
        "subtotal_cents": 999_999,
        "total_cents": total_cents,
        "customer_id": customer_id,
        "create_time": created,
    }


def test_expected_report_over_completed_sales_by_local_create_time() -> None:
    # Given a Sunday noon UTC in New York (UTC-4 since 8 March 2026), and sales around its periods
    zone = ZoneInfo("America/New_York")
    now = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
    sales = [
        sale(1, True, 1999, 7, "2026-03-15T10:00:00+00:00"),  # 06:00 today
        sale(2, True, 1, None, "2026-03-15T03:00:00+00:00"),  # 23:00 yesterday: this week
        sale(3, False, 5000, 8, "2026-03-15T11:00:00+00:00"),  # open: not counted at all
        sale(4, True, 10_000, 7, "2026-03-01T02:00:00+00:00"),  # 28 February locally: this year
        sale(5, True, 250, 9, "2025-12-31T23:30:00+00:00"),  # 31 December 2025 locally
        sale(6, True, 29, None, "2026-03-09T04:30:00+00:00"),  # Monday 00:30: this week
        sale(7, True, 100, 10, "2026-03-09T03:30:00+00:00"),  # Sunday 23:30: last week, this month
    ]

    # When the expected report is computed
    report = expected_lightspeed_report(sales, zone=zone, now=now)

    # Then it counts completed sales' calcTotal by local createTime, exact to the cent
    assert report.today_revenue == Decimal("19.99")
    assert report.week_revenue == Decimal("20.29")  # 19.99 + 0.01 + 0.29
    assert report.month_revenue == Decimal("21.29")  # and 1.00
    assert report.year_revenue == Decimal("121.29")  # and 100.00
    assert report.total_transactions == 6
    assert report.total_customers == 3  # 7, 9 and 10; sale 3's customer 8 is not completed
    assert report.avg_order_value == Decimal("20.63")  # 123.79 / 6 = 20.6316...
    assert (report.generated_at, report.timezone, report.lightspeed) == (now, "America/New_York", None)


def test_expected_report_without_completed_sales_is_zero() -> None:
    # Given only an open sale
    now = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
    report = expected_lightspeed_report(
        [sale(1, False, 500, 3, "2026-03-15T10:00:00+00:00")], zone=ZoneInfo("UTC"), now=now
    )

    # Then every figure is zero
    assert (report.year_revenue, report.total_transactions, report.total_customers) == (Decimal(0), 0, 0)
    assert report.avg_order_value == Decimal(0)

    # And a naive now is refused
    with pytest.raises(ValueError, match="naive"):
        expected_lightspeed_report([], zone=ZoneInfo("UTC"), now=datetime(2026, 3, 15, 12, 0))
