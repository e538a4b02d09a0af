"""The ground-truth check is itself tested: it must pass a correct load and catch each classic bug.

Warehouses are built in the real emulator by small real loaders (``broken_clients.py``) that page
the real sandbox over HTTP; each broken one must fail the check with the difference its bug makes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from google.cloud import bigquery

from sandbox.emulator import BigQueryEmulator
from sandbox.process import SandboxProcess
from sandbox.truth_check import PAYMENT_SUM_COLUMNS, CheckReport, Truth, check_warehouse, fetch_truth
from schemas.tables import SQUARE_CUSTOMERS, SQUARE_ITEMS, SQUARE_PAYMENTS
from tests.sandbox.broken_clients import (
    AppendsOnly,
    CorrectLoader,
    DropsDeletedCustomers,
    FloatCents,
    OmitsBeginTime,
    SkipsListLocations,
    StopsAtShortPage,
    truth_payment_rows,
)
from workers.sinks.bigquery import BigQuerySink

PAYMENTS_ONLY = (SQUARE_PAYMENTS.name,)
CUSTOMERS_ONLY = (SQUARE_CUSTOMERS.name,)
#: Differences other than the one a bug should cause.
OTHER_KINDS = ("missing", "duplicates", "unexpected", "mismatched")


@pytest.fixture
def sink(make_sink: Callable[..., BigQuerySink]) -> BigQuerySink:
    """A sink on a fresh dataset whose tables exist (empty)."""
    built = make_sink()
    built.ensure_tables()
    return built


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


@pytest.fixture
def load(
    http: httpx.Client, sink: BigQuerySink
) -> Callable[[type[CorrectLoader], SandboxProcess], CorrectLoader]:
    """Factory: ``load(LoaderClass, sandbox)`` builds a loader reading that sandbox into ``sink``."""

    def build(kind: type[CorrectLoader], sandbox: SandboxProcess) -> CorrectLoader:
        return kind(http, base_url=sandbox.base_url, token=str(sandbox.token), sink=sink)

    return build


def _check(sink: BigQuerySink, truth: Truth, **options: Any) -> CheckReport:
    return check_warehouse(sink.client, project=sink.project, dataset=sink.dataset, truth=truth, **options)


def _sandbox_now(sandbox: SandboxProcess) -> datetime:
    return datetime.fromisoformat(str(sandbox.admin.info()["now"]))


def _by_id(truth: Truth) -> dict[str, dict[str, Any]]:
    return {payment["id"]: payment for payment in truth.payments}


def _sql_string(value: str | None) -> str:
    return "NULL" if value is None else f"'{value}'"


def _only(report: CheckReport, *kinds: str) -> list[str]:
    """The kinds of difference, among OTHER_KINDS, that the payments table shows beyond ``kinds``."""
    payments = report[SQUARE_PAYMENTS.name]
    return [kind for kind in OTHER_KINDS if kind not in kinds and getattr(payments, kind)]


def test_correct_load_of_all_three_tables_passes(
    square: SandboxProcess, load: Any, sink: BigQuerySink
) -> None:
    # Given a correct loader's full read of payments, catalog and customers
    load(CorrectLoader, square).sync_all()
    truth = fetch_truth(square.base_url)
    counts = square.admin.info()["counts"]

    # When the warehouse is checked
    started = time.monotonic()
    report = _check(sink, truth)
    seconds = time.monotonic() - started

    # Then every table matches, row for row, and the truth is complete
    assert report.ok, report.summary()
    assert (len(truth.payments), len(truth.items), len(truth.customers)) == (
        counts["payments"],
        counts["variations"],
        counts["customers"],
    )
    for name, table in report.tables.items():
        assert table.warehouse_rows == table.expected_rows > 0, name
    assert report.summary().startswith("warehouse matches the ground truth")
    assert json.loads(json.dumps(report.as_dict()))["ok"] is True
    assert seconds < 30, f"checking {len(truth.payments)} payments took {seconds:.1f} s"


def test_skipping_list_locations_misses_exactly_the_other_locations(
    square: SandboxProcess, load: Any, sink: BigQuerySink
) -> None:
    # Given a loader that never lists locations (ListPayments then reads the main location only)
    load(SkipsListLocations, square).sync_payments()
    truth = fetch_truth(square.base_url)
    main = square.admin.info()["main_location_id"]

    # When the warehouse is checked
    report = _check(sink, truth, tables=PAYMENTS_ONLY)

    # Then it fails, missing exactly the payments of the other locations, and nothing else is wrong
    payments = report[SQUARE_PAYMENTS.name]
    assert not report.ok
    expected_missing = sorted(p["id"] for p in truth.payments if p["location_id"] != main)
    assert expected_missing, "the sandbox has no payment outside the main location"
    assert payments.missing == expected_missing
    assert _only(report, "missing") == []
    # and the per-location sums name only the other locations
    assert {d.group for d in payments.sum_differences if d.dimension == "location_id"} == {
        p["location_id"] for p in truth.payments if p["location_id"] != main
    }
    assert f"missing {len(expected_missing)} keys" in report.summary()


def test_omitting_begin_time_misses_exactly_the_payments_older_than_a_year(
    square: SandboxProcess, load: Any, sink: BigQuerySink
) -> None:
    # Given a loader that lists locations but sends no begin_time (Square's default: the last year)
    load(OmitsBeginTime, square).sync_payments()
    truth = fetch_truth(square.base_url)
    year_ago = _sandbox_now(square) - timedelta(days=365)

    # When the warehouse is checked
    report = _check(sink, truth, tables=PAYMENTS_ONLY)

    # Then it fails, and the missing keys are exactly those created more than a year ago
    payments = report[SQUARE_PAYMENTS.name]
    assert not report.ok
    by_id = _by_id(truth)
    assert payments.missing
    assert all(datetime.fromisoformat(by_id[key]["created_at"]) < year_ago for key in payments.missing)
    assert payments.missing == sorted(
        p["id"] for p in truth.payments if datetime.fromisoformat(p["created_at"]) < year_ago
    )
    assert _only(report, "missing") == []
    assert payments.sum_differences


def test_stopping_at_the_first_short_page_misses_payments(
    make_square: Callable[..., SandboxProcess], load: Any, sink: BigQuerySink
) -> None:
    # Given a sandbox where one page in five comes back short (with a cursor), and a loader that
    # takes a short page for the last one
    sandbox = make_square(short_page_rate=0.2)
    load(StopsAtShortPage, sandbox).sync_payments()
    truth = fetch_truth(sandbox.base_url)

    # When the warehouse is checked
    report = _check(sink, truth, tables=PAYMENTS_ONLY)

    # Then it fails with missing keys only
    payments = report[SQUARE_PAYMENTS.name]
    assert not report.ok
    assert payments.missing
    assert payments.warehouse_rows == payments.expected_rows - len(payments.missing)
    assert _only(report, "missing") == []


def test_cents_through_float_mismatch_amounts_and_sums(
    square: SandboxProcess, load: Any, sink: BigQuerySink
) -> None:
    # Given a loader that turns cents into float dollars and back with int() (29 cents -> $0.28)
    load(FloatCents, square).sync_payments()
    truth = fetch_truth(square.base_url)

    # When the warehouse is checked
    report = _check(sink, truth, tables=PAYMENTS_ONLY)

    # Then every key is there once, but amounts differ row by row, each a cent short
    payments = report[SQUARE_PAYMENTS.name]
    assert not report.ok
    assert _only(report, "mismatched") == []
    assert "amount" in payments.mismatched
    assert set(payments.mismatched) <= set(PAYMENT_SUM_COLUMNS)
    for column in payments.mismatched.values():
        assert column.count > 0
        for example in column.examples:
            assert example.actual == example.expected - Decimal("0.01"), example
    # and the sums by status and by location differ, by as many cents as rows lost one
    amount_by_status = [
        d for d in payments.sum_differences if d.column == "amount" and d.dimension == "status"
    ]
    assert amount_by_status
    assert (
        sum(d.difference for d in amount_by_status) == -Decimal("0.01") * payments.mismatched["amount"].count
    )
    assert {d.dimension for d in payments.sum_differences} == {"status", "location_id"}
    assert "amount differs on" in report.summary()


def test_appending_instead_of_merging_duplicates_changed_payments(
    make_square: Callable[..., SandboxProcess], load: Any, sink: BigQuerySink
) -> None:
    # Given an append-only loader's full read, then payments changed and created on the sandbox
    sandbox = make_square()
    loader = load(AppendsOnly, sandbox)
    loader.sync_payments()
    before = sandbox.admin.info()["now"]
    changes = sandbox.admin.advance(3600, new_payments=25, changed_payments=40)
    assert changes["changed"], "the sandbox changed no payment"

    # When it syncs what changed since the first read, and the warehouse is checked
    loader.sync_payments(updated_since=before)
    report = _check(sink, fetch_truth(sandbox.base_url), tables=PAYMENTS_ONLY)

    # Then it fails: every changed payment is there twice, the new ones once
    payments = report[SQUARE_PAYMENTS.name]
    assert not report.ok
    assert payments.duplicates == dict.fromkeys(sorted(changes["changed"]), 2)
    assert payments.missing == []
    assert payments.unexpected == []
    assert payments.warehouse_rows == payments.expected_rows + len(changes["changed"])
    assert payments.sum_differences


def test_merging_the_same_incremental_read_passes(
    make_square: Callable[..., SandboxProcess], load: Any, sink: BigQuerySink
) -> None:
    # Given a correct loader's full read, then payments changed (some over a year old) and created
    sandbox = make_square()
    loader = load(CorrectLoader, sandbox)
    loader.sync_payments()
    before = sandbox.admin.info()["now"]
    changes = sandbox.admin.advance(3600, new_payments=25, changed_payments=40)

    # When it merges what changed since the first read, through the sink
    written = loader.sync_payments(updated_since=before)
    report = _check(sink, fetch_truth(sandbox.base_url), tables=PAYMENTS_ONLY)

    # Then the warehouse equals the truth
    assert written >= len(changes["changed"]) + len(changes["created"])
    assert report.ok, report.summary()


def test_deleted_customers_must_be_kept_marked_not_left_live_nor_dropped(
    make_square: Callable[..., SandboxProcess], load: Any, sink: BigQuerySink
) -> None:
    # Given a correct load of customers, then two customers deleted at the sandbox (one in groups)
    sandbox = make_square()
    loader = load(CorrectLoader, sandbox)
    loader.sync_customers()
    customers = sandbox.admin.truth("customers")
    grouped = next(c for c in customers if c["group_ids"])
    plain = next(c for c in customers if not c["group_ids"])
    deletions = [sandbox.admin.delete_customer(c["id"]) for c in (grouped, plain)]
    events = [deletion["event"] for deletion in deletions]
    gone = sorted([grouped["id"], plain["id"]])

    # When the loader syncs customers again but ignores the customer.deleted events
    loader.sync_customers()
    ignored = _check(sink, fetch_truth(sandbox.base_url), tables=CUSTOMERS_ONLY)[SQUARE_CUSTOMERS.name]

    # Then both rows still look live: not deleted, no deletion time, and the groups the event dropped
    assert not ignored.ok
    assert (ignored.missing, ignored.unexpected, ignored.duplicates) == ([], [], {})
    assert set(ignored.mismatched) == {"is_deleted", "deleted_at", "group_ids"}
    assert sorted(m.key for m in ignored.mismatched["is_deleted"].examples) == gone
    assert {(m.expected, m.actual) for m in ignored.mismatched["is_deleted"].examples} == {(True, False)}
    assert {m.actual for m in ignored.mismatched["deleted_at"].examples} == {None}
    assert {m.expected.isoformat() for m in ignored.mismatched["deleted_at"].examples} == {
        datetime.fromisoformat(deletion["deleted_at"]).isoformat() for deletion in deletions
    }
    assert [m.key for m in ignored.mismatched["group_ids"].examples] == [grouped["id"]]

    # When a buggy loader drops deleted customers' rows instead
    for event in events:
        load(DropsDeletedCustomers, sandbox).apply_customer_deleted(event)
    dropped = _check(sink, fetch_truth(sandbox.base_url), tables=CUSTOMERS_ONLY)[SQUARE_CUSTOMERS.name]

    # Then the check finds them missing, and nothing else wrong
    assert dropped.missing == gone
    assert (dropped.unexpected, dropped.mismatched) == ([], {})

    # When the correct loader applies each event, twice as a redelivery would, and syncs again
    for event in events + events:
        loader.apply_customer_deleted(event)
    loader.sync_customers()
    report = _check(sink, fetch_truth(sandbox.base_url), tables=CUSTOMERS_ONLY)

    # Then the warehouse equals the truth: every customer once, the deleted ones marked
    assert report.ok, report.summary()
    assert report[SQUARE_CUSTOMERS.name].warehouse_rows == len(customers)


def test_single_value_differences_are_found_by_column(
    square: SandboxProcess, load: Any, sink: BigQuerySink
) -> None:
    # Given a correct load of all three tables
    load(CorrectLoader, square).sync_all()
    truth = fetch_truth(square.base_url)
    ref = f"{sink.project}.{sink.dataset}"
    payment = next(p for p in truth.payments if p["customer_id"] is not None)
    gone = next(p for p in truth.payments if p["id"] != payment["id"])
    customer = next(c for c in truth.customers if not c["group_ids"])
    item = next(i for i in truth.items if i["price_cents"] is not None)

    # When single values are changed behind the loader's back: one microsecond, NULL for a value,
    # a value for an empty list, NULL for a price, a row deleted and a stranger inserted
    statements = [
        f"UPDATE `{ref}.square_payments` SET updated_at = TIMESTAMP_ADD(updated_at, INTERVAL 1 MICROSECOND),"
        f" customer_id = NULL WHERE id = '{payment['id']}'",
        f"DELETE FROM `{ref}.square_payments` WHERE id = '{gone['id']}'",
        # (The emulator cannot UPDATE an ARRAY column, so the customer is replaced whole.)
        f"DELETE FROM `{ref}.square_customers` WHERE id = '{customer['id']}'",
        f"INSERT INTO `{ref}.square_customers` (id, created_at, updated_at, version, creation_source,"
        " reference_id, group_ids, is_deleted, _synced_at)"
        f" VALUES ('{customer['id']}', TIMESTAMP '{customer['created_at']}',"
        f" TIMESTAMP '{customer['updated_at']}',"
        f" {customer['version']}, '{customer['creation_source']}',"
        f" {_sql_string(customer['reference_id'])}, ['GRPX'], FALSE, CURRENT_TIMESTAMP())",
        f"UPDATE `{ref}.square_items` SET price = NULL WHERE variation_id = '{item['variation_id']}'",
        f"INSERT INTO `{ref}.square_customers` (id, created_at, updated_at, version, group_ids, _synced_at)"
        " VALUES ('STRANGER', CURRENT_TIMESTAMP(), CURRENT_TIMESTAMP(), 1, [], CURRENT_TIMESTAMP())",
    ]
    for statement in statements:
        sink.client.query(statement).result(timeout=60)
    report = _check(sink, truth)

    # Then each difference is reported on its table and column, with the values
    payments, customers, items = (
        report[name] for name in ("square_payments", "square_customers", "square_items")
    )
    assert not report.ok
    assert set(payments.mismatched) == {"updated_at", "customer_id"}
    (shifted,) = payments.mismatched["updated_at"].examples
    assert shifted.key == payment["id"]
    assert shifted.actual - shifted.expected == timedelta(microseconds=1)
    (nulled,) = payments.mismatched["customer_id"].examples
    assert (nulled.expected, nulled.actual) == (payment["customer_id"], None)
    assert payments.missing == [gone["id"]]
    assert {(d.dimension, d.group) for d in payments.sum_differences} == {
        ("status", gone["status"]),
        ("location_id", gone["location_id"]),
    }
    assert set(customers.mismatched) == {"group_ids"}
    assert customers.mismatched["group_ids"].examples[0].actual == ["GRPX"]
    assert customers.unexpected == ["STRANGER"]
    assert set(items.mismatched) == {"price"}
    assert items.mismatched["price"].count == 1
    assert items.mismatched["price"].examples[0].key == item["variation_id"]
    assert items.mismatched["price"].examples[0].actual is None
    assert (
        json.loads(json.dumps(report.as_dict()))["tables"]["square_items"]["mismatched"]["price"]["count"]
        == 1
    )


def test_money_stored_as_float_fails_on_the_schema(
    square: SandboxProcess, http: httpx.Client, bq_client: bigquery.Client, sink: BigQuerySink
) -> None:
    # Given a payments table whose money columns are FLOAT64, loaded with every payment; the values
    # print like the truth, so only the column type can tell
    table = f"{sink.project}.{sink.dataset}.{SQUARE_PAYMENTS.name}"
    schema = [
        bigquery.SchemaField(c.name, "FLOAT64" if c.name in PAYMENT_SUM_COLUMNS else c.type, mode=c.mode)
        for c in SQUARE_PAYMENTS.columns
    ]
    bq_client.delete_table(table)
    bq_client.create_table(bigquery.Table(table, schema=schema))
    loader = CorrectLoader(http, base_url=square.base_url, token=str(square.token), sink=sink)
    rows = loader.payment_rows(loader.fetch_payments())
    config = bigquery.LoadJobConfig(schema=schema, write_disposition="WRITE_APPEND")
    bq_client.load_table_from_json(rows, table, job_config=config).result(timeout=120)

    # When the warehouse is checked
    report = _check(sink, fetch_truth(square.base_url), tables=PAYMENTS_ONLY)

    # Then it fails on the money columns' type
    payments = report[SQUARE_PAYMENTS.name]
    assert not report.ok
    assert set(payments.schema) == set(PAYMENT_SUM_COLUMNS)
    assert payments.schema["amount"] == "FLOAT64 NULLABLE, expected NUMERIC NULLABLE"
    assert "column amount: FLOAT64" in report.summary()


def test_missing_tables_fail_with_every_key_missing(
    square: SandboxProcess, bq_client: bigquery.Client, bigquery_emulator: BigQueryEmulator, dataset: str
) -> None:
    # Given a dataset with no tables at all
    bq_client.create_dataset(dataset)
    truth = fetch_truth(square.base_url)

    # When the warehouse is checked
    report = check_warehouse(bq_client, project=bigquery_emulator.project, dataset=dataset, truth=truth)

    # Then every table is reported absent, with every truth key missing
    assert not report.ok
    assert set(report.tables) == {SQUARE_PAYMENTS.name, SQUARE_ITEMS.name, SQUARE_CUSTOMERS.name}
    for table in report.tables.values():
        assert table.error is not None
        assert table.error.startswith("not found")
        assert len(table.missing) == table.expected_rows > 0


def test_invalid_identifiers_are_refused_before_any_query(bq_client: bigquery.Client) -> None:
    # Given a dataset name that would inject SQL
    truth = Truth(payments=[], items=[], customers=[])

    # When / Then the check refuses it
    with pytest.raises(ValueError, match="dataset"):
        check_warehouse(bq_client, project="possync-test", dataset="x`; DROP TABLE y; --", truth=truth)


def test_one_hundred_thousand_payments_check_in_seconds(
    square_default: SandboxProcess, bq_client: bigquery.Client, sink: BigQuerySink
) -> None:
    # Given the default sandbox's 100,184 payments loaded exactly as the truth has them
    truth = fetch_truth(square_default.base_url)
    table = f"{sink.project}.{sink.dataset}.{SQUARE_PAYMENTS.name}"
    schema = [bigquery.SchemaField(c.name, c.type, mode=c.mode) for c in SQUARE_PAYMENTS.columns]
    config = bigquery.LoadJobConfig(schema=schema, write_disposition="WRITE_APPEND")
    bq_client.load_table_from_json(truth_payment_rows(truth.payments), table, job_config=config).result(
        timeout=300
    )

    # When the payments table is checked
    started = time.monotonic()
    report = _check(sink, truth, tables=PAYMENTS_ONLY)
    seconds = time.monotonic() - started

    # Then it passes within a few seconds (about 3 s on the 2-core reference machine)
    assert report.ok, report.summary()
    assert report[SQUARE_PAYMENTS.name].warehouse_rows == len(truth.payments) > 100_000
    print(f"checked {len(truth.payments)} payments in {seconds:.2f} s")
    assert seconds < 15, f"checking {len(truth.payments)} payments took {seconds:.1f} s"
