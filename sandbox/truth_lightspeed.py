"""The Lightspeed ground-truth check: does the warehouse hold exactly what the Lightspeed sandbox holds?

The sandbox computes its truth from its integer-cents model and serves it as NDJSON
(``GET /_sandbox/truth/sales|items``; see ``SaleState.to_truth`` and ``ItemState.to_truth``).
:func:`check_lightspeed_warehouse` reads ``lightspeed_transactions`` and ``lightspeed_products`` with
one query each and compares them row by row exactly as the Square check (:mod:`sandbox.truth_check`)
does: every truth key present exactly once, no other key, every column equal (money as exact decimals
of the truth's cents, timestamps as instants to the microsecond, NULL only where the truth has null),
plus the sum of ``calcTotal`` by ``completed`` to the cent. Like the Square check it is written
independently of the sync code (it does not reuse the row converters in ``schemas/lightspeed.py``).

It reuses the Square check's canonical values (:mod:`sandbox.truth_columns`) and findings
(:mod:`sandbox.truth_report`); the reading and comparing there are tied to the Square tables, so the
few lines that generalise them over a column list live here. :func:`expected_lightspeed_report` is
the revenue report the truth implies, over completed sales.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
from google.api_core import exceptions as google_exceptions
from google.cloud import bigquery

from sandbox.truth import expected_report
from sandbox.truth_columns import ColumnKind, shown, timestamp_text, truth_value
from sandbox.truth_report import EXAMPLES, CheckReport, ColumnMismatch, Mismatch, SumDifference, TableCheck
from sandbox.truth_warehouse import table_ref
from schemas.report import Report
from schemas.tables import LIGHTSPEED_PRODUCTS, LIGHTSPEED_TRANSACTIONS, TableSpec

__all__ = [
    "LIGHTSPEED_COLUMNS",
    "LIGHTSPEED_TABLE_NAMES",
    "SALE_SUM_COLUMNS",
    "LightspeedTruth",
    "check_lightspeed_warehouse",
    "expected_lightspeed_report",
    "fetch_lightspeed_truth",
]

#: Tables the check covers, in report order.
LIGHTSPEED_TABLE_NAMES = (LIGHTSPEED_TRANSACTIONS.name, LIGHTSPEED_PRODUCTS.name)
#: Their definitions, by name.
_SPECS: dict[str, TableSpec] = {spec.name: spec for spec in (LIGHTSPEED_TRANSACTIONS, LIGHTSPEED_PRODUCTS)}

#: Per table: warehouse column -> (truth field, how to compare). The first column is the key.
LIGHTSPEED_COLUMNS: dict[str, tuple[tuple[str, str, ColumnKind], ...]] = {
    LIGHTSPEED_TRANSACTIONS.name: (
        ("saleID", "sale_id", "int"),
        ("completed", "completed", "bool"),
        ("calcSubtotal", "subtotal_cents", "cents"),
        ("calcDiscount", "discount_cents", "cents"),
        ("calcTax1", "tax1_cents", "cents"),
        ("calcTax2", "tax2_cents", "cents"),
        ("calcTotal", "total_cents", "cents"),
        ("customerID", "customer_id", "int"),
        ("employeeID", "employee_id", "int"),
        ("shopID", "shop_id", "int"),
        ("registerID", "register_id", "int"),
        ("archived", "archived", "bool"),
        ("voided", "voided", "bool"),
        ("createTime", "create_time", "timestamp"),
        ("updatetime", "update_time", "timestamp"),
        ("completeTime", "complete_time", "timestamp"),
    ),
    LIGHTSPEED_PRODUCTS.name: (
        ("itemID", "item_id", "int"),
        ("description", "description", "str"),
        ("defaultCost", "default_cost_cents", "cents"),
        ("avgCost", "avg_cost_cents", "cents"),
        ("categoryID", "category_id", "int"),
        ("manufacturerSku", "manufacturer_sku", "str"),
        ("systemSku", "system_sku", "str"),
        ("price", "price_cents", "cents"),
        ("archived", "archived", "bool"),
        ("createTime", "create_time", "timestamp"),
        ("timeStamp", "time_stamp", "timestamp"),
    ),
}
#: Sale money columns whose sums by ``completed`` must match to the cent.
SALE_SUM_COLUMNS = ("calcTotal",)
#: The column the sale sums are grouped by.
_SUM_DIMENSION = "completed"

#: BigQuery's legacy type names, as the tables API may report them, and the standard ones.
_TYPE_ALIASES = {"INTEGER": "INT64", "BOOLEAN": "BOOL", "FLOAT": "FLOAT64"}
#: RFC 3339 UTC to the microsecond: TIMESTAMP's whole precision, in a form ``fromisoformat`` reads.
_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%E6SZ"

_Columns = Sequence[tuple[str, str, ColumnKind]]


@dataclass(frozen=True)
class LightspeedTruth:
    """The Lightspeed sandbox's ground truth, one JSON object per record as its NDJSON endpoints serve it.

    Attributes:
        sales: ``{"sale_id", "completed", "total_cents", "customer_id", "create_time", ...}`` per sale.
        items: ``{"item_id", "description", "price_cents", "prices_cents", ...}`` per item.
    """

    sales: list[dict[str, Any]]
    items: list[dict[str, Any]]

    def records(self, table: str) -> list[dict[str, Any]]:
        """The truth records for a warehouse table name.

        Raises:
            KeyError: for a table the truth does not cover.
        """
        return {LIGHTSPEED_TRANSACTIONS.name: self.sales, LIGHTSPEED_PRODUCTS.name: self.items}[table]


def fetch_lightspeed_truth(
    base_url: str, http: httpx.Client | None = None, *, timeout_seconds: float = 120.0
) -> LightspeedTruth:
    """Load the sandbox's ground truth from ``GET /_sandbox/truth/sales`` and ``/items``.

    Args:
        base_url: the sandbox's base URL (``http://127.0.0.1:PORT``).
        http: an httpx client to reuse; a short-lived one is made when omitted.
        timeout_seconds: per-request timeout, seconds.

    Returns:
        The truth for both Lightspeed tables.

    Raises:
        httpx.HTTPError: if the sandbox cannot be reached or answers with an error status.
    """
    client = httpx.Client(timeout=timeout_seconds) if http is None else http
    try:
        streams = []
        for stream in ("sales", "items"):
            url = f"{base_url.rstrip('/')}/_sandbox/truth/{stream}"
            response = client.get(url, timeout=timeout_seconds)
            response.raise_for_status()
            streams.append([orjson.loads(line) for line in response.content.splitlines() if line.strip()])
    finally:
        if http is None:
            client.close()
    sales, items = streams
    return LightspeedTruth(sales=sales, items=items)


def check_lightspeed_warehouse(
    client: bigquery.Client,
    *,
    project: str,
    dataset: str,
    truth: LightspeedTruth,
    timeout_seconds: float = 300.0,
) -> CheckReport:
    """Compare the Lightspeed tables with the sandbox's truth, row by row, one query per table.

    Args:
        client: a BigQuery client (the emulator or real BigQuery).
        project: BigQuery project id.
        dataset: the dataset holding the Lightspeed tables.
        truth: the sandbox's truth (see :func:`fetch_lightspeed_truth`).
        timeout_seconds: deadline for each table's query, seconds.

    Returns:
        The report; ``report.ok`` is True only if both tables equal the truth.

    Raises:
        ValueError: for an invalid project or dataset id, or a key the truth holds twice.
        google.api_core.exceptions.GoogleAPICallError: if BigQuery fails for a reason other than a
            missing table (a missing table is reported as a difference instead).
    """
    results: dict[str, TableCheck] = {}
    for table in LIGHTSPEED_TABLE_NAMES:
        columns = LIGHTSPEED_COLUMNS[table]
        records = truth.records(table)
        ref = table_ref(project, dataset, table)
        try:
            schema = client.get_table(ref.strip("`"), timeout=timeout_seconds).schema
        except google_exceptions.NotFound as exc:
            absent = TableCheck(table=table, expected_rows=len(records), error=f"not found: {exc.message}")
            absent.missing = sorted((str(record[columns[0][1]]) for record in records), key=_key_order)
            results[table] = absent
            continue
        differences = _schema_differences(_SPECS[table], columns, schema)
        if differences.get(columns[0][0], "").startswith("missing"):
            results[table] = TableCheck(
                table=table, expected_rows=len(records), schema=differences, error="no key column"
            )
            continue
        present = {field.name for field in schema}
        rows = _read_rows(client, ref, present, columns, timeout_seconds)
        check = _compare(table, columns, records, rows)
        check.schema = differences
        results[table] = check
    return CheckReport(tables=results)


def expected_lightspeed_report(
    truth_sales: Iterable[Mapping[str, Any]], *, zone: ZoneInfo, now: datetime
) -> Report:
    """The Lightspeed revenue report as the truth says it should be (``Report.lightspeed``'s figures).

    Over completed sales: revenue is ``calcTotal`` (``total_cents``), a sale counts in a period when
    its ``createTime`` seen in ``zone`` falls on the same local date, ISO week, month or year as
    ``now``; transactions are the completed sales, customers the distinct non-null customer ids among
    them, and the average order value all-time revenue / transactions, to the cent.

    Args:
        truth_sales: the truth's sale records (``LightspeedTruth.sales``).
        zone: the report time zone.
        now: the moment the report is for (aware); also the report's ``generatedAt``.

    Returns:
        The figures as a :class:`~schemas.report.Report` (``lightspeed`` left ``None``), exact to the cent.

    Raises:
        ValueError: if ``now`` is naive.
    """
    # The Square computation over the sales seen as payments: the same periods, sums and rounding.
    as_payments = (
        {
            "status": "COMPLETED" if sale["completed"] else "OPEN",
            "amount_cents": sale["total_cents"],
            "customer_id": sale["customer_id"],
            "created_at": sale["create_time"],
        }
        for sale in truth_sales
    )
    return expected_report(as_payments, zone=zone, now=now)


# -- reading the warehouse --------------------------------------------------------------------------


def _select_expression(column: str, kind: ColumnKind) -> str:
    # Every value goes out as a string in one JSON array per row (see sandbox.truth_warehouse); a
    # string column is cast too, so a table that stores it as another type still reads.
    quoted = f"`{column}`"
    if kind == "timestamp":
        return f"FORMAT_TIMESTAMP('{_TIMESTAMP_FORMAT}', {quoted}, 'UTC')"
    return f"CAST({quoted} AS STRING)"


def _warehouse_value(kind: ColumnKind, text: str | None) -> Any:
    """A warehouse string in the canonical form of ``kind``; text that does not parse stays text."""
    if text is None:
        return None
    try:
        if kind == "timestamp":
            return timestamp_text(text)
        if kind == "cents":
            return Decimal(text)
        if kind == "int":
            return int(text)
    except (ValueError, InvalidOperation):
        return text
    if kind == "bool":
        return {"true": True, "false": False}.get(text, text)
    return text


def _read_rows(
    client: bigquery.Client, ref: str, present: Collection[str], columns: _Columns, timeout_seconds: float
) -> list[list[Any]]:
    """Every row of a table, one query, values in ``columns`` order and canonical form."""
    # A column the table lacks reads as NULL, so the rest is still compared (and it shows as differing).
    items = ", ".join(
        _select_expression(column, kind) if column in present else "CAST(NULL AS STRING)"
        for column, _, kind in columns
    )
    job = client.query(f"SELECT TO_JSON_STRING([{items}]) AS row_json FROM {ref}", timeout=timeout_seconds)
    kinds = [kind for _, _, kind in columns]
    return [
        [_warehouse_value(kind, text) for kind, text in zip(kinds, orjson.loads(row[0]), strict=True)]
        for row in job.result(timeout=timeout_seconds, page_size=100_000)
    ]


def _schema_differences(
    spec: TableSpec, columns: _Columns, schema: Sequence[bigquery.SchemaField]
) -> dict[str, str]:
    """Checked columns whose type or mode differs from ``spec``, mapped to how they differ."""
    actual = {f.name: (_TYPE_ALIASES.get(f.field_type, f.field_type), f.mode or "NULLABLE") for f in schema}
    differences = {}
    for column, _, _ in columns:
        want = spec.column(column)
        found = actual.get(column)
        if found is None:
            differences[column] = f"missing, expected {want.type} {want.mode}"
        elif found[0] != want.type or (found[1] == "REPEATED") != (want.mode == "REPEATED"):
            differences[column] = f"{found[0]} {found[1]}, expected {want.type} {want.mode}"
    return differences


# -- comparing --------------------------------------------------------------------------------------


def _compare(
    table: str, columns: _Columns, records: list[dict[str, Any]], rows: list[list[Any]]
) -> TableCheck:
    """Compare one table's canonical rows with its truth records (as ``truth_compare.compare_table``)."""
    expected: dict[str, list[Any]] = {}
    for record in records:
        key = str(record[columns[0][1]])
        if key in expected:
            raise ValueError(f"the truth for {table} holds key {key!r} twice")
        expected[key] = [truth_value(kind, record.get(field)) for _, field, kind in columns]

    check = TableCheck(table=table, expected_rows=len(expected), warehouse_rows=len(rows))
    copies = Counter(str(row[0]) for row in rows)
    check.missing = sorted((key for key in expected if key not in copies), key=_key_order)
    check.unexpected = sorted((key for key in copies if key not in expected), key=_key_order)
    check.duplicates = {key: copies[key] for key in sorted(copies, key=_key_order) if copies[key] > 1}

    mismatched: dict[str, ColumnMismatch] = {}
    for row in rows:
        key = str(row[0])
        truth = expected.get(key)
        if truth is None:
            continue
        # The key itself matched already; its type is the schema check's business.
        for index, (column, _, kind) in enumerate(columns[1:], start=1):
            want, actual = truth[index], row[index]
            # Same type as well as equal: True == 1 must not pass for a BOOL column, nor 0 for NULL.
            if want == actual and type(want) is type(actual):
                continue
            found = mismatched.setdefault(column, ColumnMismatch(column))
            found.count += 1
            if len(found.examples) < EXAMPLES:
                found.examples.append(Mismatch(key, shown(kind, want), shown(kind, actual)))
    check.mismatched = {column: mismatched[column] for column, _, _ in columns if column in mismatched}
    if table == LIGHTSPEED_TRANSACTIONS.name:
        check.sum_differences = _sum_differences(columns, list(expected.values()), rows)
    return check


def _key_order(key: str) -> tuple[int, str]:
    """Numeric ids in numeric order (``2`` before ``10``), anything else after them."""
    return (int(key), "") if key.isdigit() else (1 << 62, key)


def _group(value: Any) -> str | None:
    """A ``completed`` value as a group name: ``true``, ``false``, or the odd value as text."""
    if value is None:
        return None
    return str(value).lower() if isinstance(value, bool) else str(value)


def _sums(columns: _Columns, rows: Iterable[Sequence[Any]]) -> dict[tuple[str | None, str], Decimal]:
    names = [column for column, _, _ in columns]
    group_index = names.index(_SUM_DIMENSION)
    money = [(column, names.index(column)) for column in SALE_SUM_COLUMNS]
    totals: dict[tuple[str | None, str], Decimal] = defaultdict(Decimal)
    for row in rows:
        for column, index in money:
            if isinstance(row[index], Decimal):
                totals[(_group(row[group_index]), column)] += row[index]
    return totals


def _sum_differences(
    columns: _Columns, truth_rows: list[list[Any]], rows: list[list[Any]]
) -> list[SumDifference]:
    expected, actual = _sums(columns, truth_rows), _sums(columns, rows)
    differences = []
    for group, column in sorted(expected.keys() | actual.keys(), key=lambda k: (str(k[0]), k[1])):
        want = expected.get((group, column), Decimal(0))
        got = actual.get((group, column), Decimal(0))
        if want != got:
            differences.append(SumDifference(_SUM_DIMENSION, group, column, want, got))
    return differences
