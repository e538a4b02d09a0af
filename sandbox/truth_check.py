"""The ground-truth check: does the warehouse hold exactly what the Square sandbox holds?

The sandbox computes its truth from its own integer-cents model and serves it as NDJSON
(``GET /_sandbox/truth/payments|items|customers``). :func:`check_warehouse` reads each warehouse
table with one query and compares it row by row: every truth key present exactly once, no other
key, every column equal (timestamps as instants to the microsecond, money as exact decimals of the
truth's cents, NULL only where the truth has null), plus payment sums by status and by location to
the cent. The comparison is written independently of the sync code (it does not reuse the row
converters in ``schemas/square.py``), so a conversion bug there shows up here instead of agreeing
with itself. :func:`expected_report` computes the revenue report from the truth the same way, by
local calendar dates rather than the UTC boundaries ``workers/report.py`` uses.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

import httpx
import orjson
from google.api_core import exceptions as google_exceptions
from google.cloud import bigquery

from schemas.report import Report, to_cents
from schemas.tables import SQUARE_CUSTOMERS, SQUARE_ITEMS, SQUARE_PAYMENTS, TABLES, TableSpec
from workers.sinks.bigquery_sql import check_identifier

__all__ = [
    "EXAMPLES",
    "PAYMENT_SUM_COLUMNS",
    "TABLE_NAMES",
    "CheckReport",
    "ColumnMismatch",
    "Mismatch",
    "SumDifference",
    "TableCheck",
    "Truth",
    "check_warehouse",
    "expected_report",
    "fetch_truth",
]

#: How many example keys or values a report shows per kind of difference.
EXAMPLES = 5
#: Payment money columns whose sums by status and by location must match to the cent.
PAYMENT_SUM_COLUMNS = ("amount", "tip_amount", "total_amount", "refunded_amount")
#: Payment columns the money sums are grouped by.
_SUM_DIMENSIONS = ("status", "location_id")
#: Tables the check covers, in report order.
TABLE_NAMES = (SQUARE_PAYMENTS.name, SQUARE_ITEMS.name, SQUARE_CUSTOMERS.name)


_Kind = Literal["str", "timestamp", "cents", "int", "bool", "list"]

#: Per table: warehouse column -> (truth field, how to compare). The first column is the key.
_COLUMNS: dict[str, tuple[tuple[str, str, _Kind], ...]] = {
    SQUARE_PAYMENTS.name: (
        ("id", "id", "str"),
        ("created_at", "created_at", "timestamp"),
        ("updated_at", "updated_at", "timestamp"),
        ("status", "status", "str"),
        ("amount", "amount_cents", "cents"),
        ("tip_amount", "tip_cents", "cents"),
        ("total_amount", "total_cents", "cents"),
        ("refunded_amount", "refunded_cents", "cents"),
        ("currency", "currency", "str"),
        ("customer_id", "customer_id", "str"),
        ("location_id", "location_id", "str"),
        ("order_id", "order_id", "str"),
        ("source_type", "source_type", "str"),
        ("card_brand", "card_brand", "str"),
        ("receipt_url", "receipt_url", "str"),
    ),
    SQUARE_ITEMS.name: (
        ("variation_id", "variation_id", "str"),
        ("item_id", "item_id", "str"),
        ("name", "name", "str"),
        ("variation_name", "variation_name", "str"),
        ("category_id", "category_id", "str"),
        ("sku", "sku", "str"),
        ("price", "price_cents", "cents"),
        ("currency", "currency", "str"),
        ("available", "available", "bool"),
        ("is_deleted", "is_deleted", "bool"),
        ("version", "version", "int"),
        ("updated_at", "updated_at", "timestamp"),
    ),
    SQUARE_CUSTOMERS.name: (
        ("id", "id", "str"),
        ("created_at", "created_at", "timestamp"),
        ("updated_at", "updated_at", "timestamp"),
        ("version", "version", "int"),
        ("creation_source", "creation_source", "str"),
        ("reference_id", "reference_id", "str"),
        ("group_ids", "group_ids", "list"),
    ),
}


@dataclass(frozen=True)
class Truth:
    """The sandbox's ground truth, one JSON object per record as its NDJSON endpoints serve it.

    Attributes:
        payments: ``{"id", "created_at", "amount_cents", "status", "location_id", ...}`` per payment.
        items: one object per catalog variation, keyed by ``variation_id``.
        customers: one object per customer, keyed by ``id``.
    """

    payments: list[dict[str, Any]]
    items: list[dict[str, Any]]
    customers: list[dict[str, Any]]

    def records(self, table: str) -> list[dict[str, Any]]:
        """The truth records for a warehouse table name.

        Raises:
            KeyError: for a table the truth does not cover.
        """
        by_table = {
            SQUARE_PAYMENTS.name: self.payments,
            SQUARE_ITEMS.name: self.items,
            SQUARE_CUSTOMERS.name: self.customers,
        }
        return by_table[table]


def fetch_truth(
    base_url: str,
    http: httpx.Client | None = None,
    *,
    token: str | None = None,
    timeout_seconds: float = 120.0,
) -> Truth:
    """Load the sandbox's ground truth from ``GET /_sandbox/truth/payments|items|customers``.

    Args:
        base_url: the sandbox's base URL (``http://127.0.0.1:PORT``).
        http: an httpx client to reuse; a short-lived one is made when omitted.
        token: a bearer token, if the sandbox wants one on its ``/_sandbox`` endpoints.
        timeout_seconds: per-request timeout, seconds.

    Returns:
        The truth for the three Square tables.

    Raises:
        httpx.HTTPError: if the sandbox cannot be reached or answers with an error status.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    own = http is None
    client = httpx.Client(timeout=timeout_seconds) if http is None else http
    try:
        streams = []
        for stream in ("payments", "items", "customers"):
            response = client.get(
                f"{base_url.rstrip('/')}/_sandbox/truth/{stream}", headers=headers, timeout=timeout_seconds
            )
            response.raise_for_status()
            streams.append([orjson.loads(line) for line in response.content.splitlines() if line.strip()])
    finally:
        if own:
            client.close()
    payments, items, customers = streams
    return Truth(payments=payments, items=items, customers=customers)


@dataclass(frozen=True)
class Mismatch:
    """One row whose column differs from the truth."""

    key: str
    expected: Any
    actual: Any


@dataclass
class ColumnMismatch:
    """Rows whose value in one column differs from the truth: how many, and a few examples."""

    column: str
    count: int = 0
    examples: list[Mismatch] = field(default_factory=list)


@dataclass(frozen=True)
class SumDifference:
    """A payment sum over one group (a status or a location) that differs from the truth."""

    dimension: str
    group: str | None
    column: str
    expected: Decimal
    actual: Decimal

    @property
    def difference(self) -> Decimal:
        """``actual - expected``, major units."""
        return self.actual - self.expected


@dataclass
class TableCheck:
    """How one warehouse table compares with the truth.

    Attributes:
        table: the table name.
        expected_rows: records in the truth.
        warehouse_rows: rows in the warehouse table (duplicates included).
        missing: truth keys absent from the warehouse, sorted (all of them).
        duplicates: keys present more than once, with how many copies.
        unexpected: warehouse keys the truth does not have, sorted.
        mismatched: per column, rows whose value differs (every copy of a key is compared).
        sum_differences: payment sums by status and by location that differ (payments only).
        schema: columns whose type or mode differs from ``schemas/tables.py``, with how.
        error: why the table could not be read (for example it does not exist), else ``None``.
    """

    table: str
    expected_rows: int
    warehouse_rows: int = 0
    missing: list[str] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    mismatched: dict[str, ColumnMismatch] = field(default_factory=dict)
    sum_differences: list[SumDifference] = field(default_factory=list)
    schema: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the table equals the truth exactly."""
        return not (
            self.error
            or self.missing
            or self.duplicates
            or self.unexpected
            or self.mismatched
            or self.sum_differences
            or self.schema
            or self.warehouse_rows != self.expected_rows
        )

    def summary(self) -> str:
        """A few readable lines about this table."""
        head = f"{self.table}: {self.expected_rows} expected, {self.warehouse_rows} in the warehouse"
        if self.ok:
            return f"{head}: ok"
        lines = [f"{head}: DIFFERS"]
        if self.error:
            lines.append(f"  error: {self.error}")
        for name, how in self.schema.items():
            lines.append(f"  column {name}: {how}")
        if self.missing:
            lines.append(f"  missing {len(self.missing)} keys, e.g. {', '.join(self.missing[:EXAMPLES])}")
        if self.duplicates:
            extra = sum(self.duplicates.values()) - len(self.duplicates)
            shown = ", ".join(f"{key} x{copies}" for key, copies in list(self.duplicates.items())[:EXAMPLES])
            lines.append(f"  duplicated {len(self.duplicates)} keys ({extra} extra rows), e.g. {shown}")
        if self.unexpected:
            shown = ", ".join(self.unexpected[:EXAMPLES])
            lines.append(f"  unexpected {len(self.unexpected)} keys, e.g. {shown}")
        for mismatch in self.mismatched.values():
            shown = "; ".join(
                f"{m.key}: expected {_text(m.expected)}, got {_text(m.actual)}" for m in mismatch.examples[:3]
            )
            lines.append(f"  {mismatch.column} differs on {mismatch.count} rows, e.g. {shown}")
        for diff in self.sum_differences[: EXAMPLES * 2]:
            lines.append(
                f"  sum({diff.column}) for {diff.dimension}={diff.group}: expected {diff.expected},"
                f" got {diff.actual} ({diff.difference:+})"
            )
        if len(self.sum_differences) > EXAMPLES * 2:
            lines.append(f"  ... {len(self.sum_differences) - EXAMPLES * 2} more sum differences")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: counts, a few examples, every sum difference."""
        return {
            "table": self.table,
            "ok": self.ok,
            "error": self.error,
            "expected_rows": self.expected_rows,
            "warehouse_rows": self.warehouse_rows,
            "schema": dict(self.schema),
            "missing": {"count": len(self.missing), "examples": self.missing[:EXAMPLES]},
            "duplicates": {
                "count": len(self.duplicates),
                "extra_rows": sum(self.duplicates.values()) - len(self.duplicates),
                "examples": dict(list(self.duplicates.items())[:EXAMPLES]),
            },
            "unexpected": {"count": len(self.unexpected), "examples": self.unexpected[:EXAMPLES]},
            "mismatched": {
                name: {
                    "count": column.count,
                    "examples": [
                        {"key": m.key, "expected": _text(m.expected), "actual": _text(m.actual)}
                        for m in column.examples
                    ],
                }
                for name, column in self.mismatched.items()
            },
            "sum_differences": [
                {
                    "dimension": diff.dimension,
                    "group": diff.group,
                    "column": diff.column,
                    "expected": str(diff.expected),
                    "actual": str(diff.actual),
                    "difference": str(diff.difference),
                }
                for diff in self.sum_differences
            ],
        }


@dataclass
class CheckReport:
    """The whole check: one :class:`TableCheck` per table, in :data:`TABLE_NAMES` order."""

    tables: dict[str, TableCheck]

    @property
    def ok(self) -> bool:
        """True when every checked table equals the truth."""
        return all(table.ok for table in self.tables.values())

    def __getitem__(self, table: str) -> TableCheck:
        return self.tables[table]

    def summary(self) -> str:
        """A short readable text: the verdict, then a few lines per table."""
        verdict = (
            "warehouse matches the ground truth" if self.ok else "warehouse DIFFERS from the ground truth"
        )
        return "\n".join([verdict, *(table.summary() for table in self.tables.values())])

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form of the report."""
        return {"ok": self.ok, "tables": {name: table.as_dict() for name, table in self.tables.items()}}


def _text(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _instant(value: str) -> datetime:
    # Python 3.11 parses "Z" and drops digits past the microsecond, which is BigQuery's precision.
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError(f"truth timestamp {value!r} has no offset")
    return moment.astimezone(UTC)


@functools.lru_cache(maxsize=65_536)
def _cents(value: int) -> Decimal:
    # Cached: prices repeat across payments, and this conversion is a large share of a 100k-row check.
    return Decimal(value).scaleb(-2)


def _timestamp_text(value: str) -> str:
    """``value`` as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC: one spelling per instant, so strings compare."""
    if len(value) == 27 and value[19] == "." and value[26] == "Z":
        return value
    if len(value) == 24 and value[19] == "." and value[23] == "Z":
        # Square's (and the truth's) milliseconds: skip parsing, it dominates a 100k-row check.
        return value[:23] + "000Z"
    return f"{_instant(value):%Y-%m-%dT%H:%M:%S.%f}Z"


def _truth_value(kind: _Kind, value: Any) -> Any:
    if value is None:
        return [] if kind == "list" else None
    if kind == "timestamp":
        return _timestamp_text(value)
    if kind == "cents":
        return _cents(int(value))
    if kind == "list":
        return list(value)
    return value


#: BigQuery's legacy type names, as the tables API may report them, and the standard ones.
_TYPE_ALIASES = {"INTEGER": "INT64", "BOOLEAN": "BOOL", "FLOAT": "FLOAT64", "BIGNUMERIC": "BIGNUMERIC"}
#: RFC 3339 UTC to the microsecond: TIMESTAMP's whole precision, in a form ``fromisoformat`` reads.
_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%E6SZ"


def _select_expression(column: str, kind: _Kind) -> str:
    # Every column goes out as a string in one JSON array per row: the client library converts each
    # cell of a typed result in Python (4-7 s for 100k payments); one string per row takes ~2 s.
    # The types themselves are checked against the table's schema instead.
    quoted = f"`{column}`"
    if kind == "timestamp":
        return f"FORMAT_TIMESTAMP('{_TIMESTAMP_FORMAT}', {quoted}, 'UTC')"
    if kind in ("cents", "int", "bool"):
        return f"CAST({quoted} AS STRING)"
    if kind == "list":
        return f"TO_JSON_STRING({quoted})"
    return quoted


def _warehouse_list(text: str | None) -> list[Any]:
    # A REPEATED column has no NULL: an empty array reads back as [].
    return [] if text is None else list(orjson.loads(text))


def _warehouse_timestamp(text: str | None) -> str | None:
    return None if text is None else _timestamp_text(text)


def _warehouse_cents(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def _warehouse_int(text: str | None) -> int | None:
    return None if text is None else int(text)


def _warehouse_bool(text: str | None) -> bool | str | None:
    return None if text is None else {"true": True, "false": False}.get(text, text)


#: How each kind of column is read back from its string form; strings stay as they are.
_READERS: dict[_Kind, Callable[[str | None], Any] | None] = {
    "str": None,
    "timestamp": _warehouse_timestamp,
    "cents": _warehouse_cents,
    "int": _warehouse_int,
    "bool": _warehouse_bool,
    "list": _warehouse_list,
}


def _shown(kind: _Kind, value: Any) -> Any:
    # Timestamps are compared as canonical strings but reported as instants.
    return _instant(value) if kind == "timestamp" and isinstance(value, str) else value


def _table_ref(project: str, dataset: str, table: str) -> str:
    # Identifiers cannot be query parameters: validate them so nothing else reaches the SQL text.
    check_identifier("project", project)
    check_identifier("dataset", dataset)
    return f"`{project}.{dataset}.{table}`"


def _schema_differences(spec: TableSpec, schema: Sequence[bigquery.SchemaField]) -> dict[str, str]:
    actual = {f.name: (_TYPE_ALIASES.get(f.field_type, f.field_type), f.mode or "NULLABLE") for f in schema}
    differences = {}
    for column, _, _ in _COLUMNS[spec.name]:
        want = spec.column(column)
        found = actual.get(column)
        if found is None:
            differences[column] = f"missing, expected {want.type} {want.mode}"
        elif found[0] != want.type or (found[1] == "REPEATED") != (want.mode == "REPEATED"):
            differences[column] = f"{found[0]} {found[1]}, expected {want.type} {want.mode}"
    return differences


def _read_table(
    client: bigquery.Client, ref: str, present: Collection[str], table: str, timeout_seconds: float
) -> list[list[Any]]:
    spec = _COLUMNS[table]
    # A column the table lacks reads as NULL, so the rest is still compared (and it shows as differing).
    items = ", ".join(
        _select_expression(column, kind) if column in present else "CAST(NULL AS STRING)"
        for column, _, kind in spec
    )
    job = client.query(f"SELECT TO_JSON_STRING([{items}]) AS row_json FROM {ref}", timeout=timeout_seconds)
    readers = [(index, reader) for index, (_, _, kind) in enumerate(spec) if (reader := _READERS[kind])]
    rows = []
    # Large pages: the check reads whole tables, and each page is a round trip.
    for row in job.result(timeout=timeout_seconds, page_size=100_000):
        values = orjson.loads(row[0])
        for index, reader in readers:
            values[index] = reader(values[index])
        rows.append(values)
    return rows


def _compare_table(table: str, records: list[dict[str, Any]], rows: list[list[Any]]) -> TableCheck:
    spec = _COLUMNS[table]
    key_field = spec[0][1]
    expected: dict[str, list[Any]] = {}
    for record in records:
        key = str(record[key_field])
        if key in expected:
            raise ValueError(f"the truth for {table} holds key {key!r} twice")
        expected[key] = [_truth_value(kind, record.get(truth_field)) for _, truth_field, kind in spec]

    check = TableCheck(table=table, expected_rows=len(expected), warehouse_rows=len(rows))
    copies = Counter(str(row[0]) for row in rows)
    check.missing = sorted(key for key in expected if key not in copies)
    check.unexpected = sorted(key for key in copies if key not in expected)
    check.duplicates = {key: count for key, count in sorted(copies.items()) if count > 1}

    mismatched: dict[str, ColumnMismatch] = {}
    for row in rows:
        key = str(row[0])
        truth = expected.get(key)
        if truth is None:
            continue
        for index in range(1, len(spec)):
            want, actual = truth[index], row[index]
            # Same type as well as equal: True == 1 must not pass for a BOOL column, nor a float amount.
            if want == actual and type(want) is type(actual):
                continue
            column, _, kind = spec[index]
            found = mismatched.setdefault(column, ColumnMismatch(column))
            found.count += 1
            if len(found.examples) < EXAMPLES:
                found.examples.append(Mismatch(key, _shown(kind, want), _shown(kind, actual)))
    # Report columns in table order, whatever order the rows surfaced them in.
    check.mismatched = {column: mismatched[column] for column, _, _ in spec if column in mismatched}
    if table == SQUARE_PAYMENTS.name:
        check.sum_differences = _payment_sums(list(expected.values()), rows)
    return check


_SumKey = tuple[str, str | None, str]


def _sums(rows: Iterable[Sequence[Any]]) -> dict[_SumKey, Decimal]:
    """Money sums keyed by (dimension, group, column), for both dimensions in one pass."""
    names = [column for column, _, _ in _COLUMNS[SQUARE_PAYMENTS.name]]
    dimensions = [(dimension, names.index(dimension)) for dimension in _SUM_DIMENSIONS]
    money = [(column, names.index(column)) for column in PAYMENT_SUM_COLUMNS]
    totals: dict[_SumKey, Decimal] = defaultdict(Decimal)
    for row in rows:
        for column, index in money:
            value = row[index]
            if value is None:
                continue
            amount = value if isinstance(value, Decimal) else Decimal(value)
            for dimension, group_index in dimensions:
                totals[(dimension, row[group_index], column)] += amount
    return totals


def _payment_sums(truth_rows: list[list[Any]], rows: list[list[Any]]) -> list[SumDifference]:
    expected = _sums(truth_rows)
    actual = _sums(rows)
    differences = []
    for dimension, group, column in sorted(
        expected.keys() | actual.keys(), key=lambda k: (k[0], str(k[1]), k[2])
    ):
        want = expected.get((dimension, group, column), Decimal(0))
        got = actual.get((dimension, group, column), Decimal(0))
        if want != got:
            differences.append(SumDifference(dimension, group, column, want, got))
    return differences


def check_warehouse(
    client: bigquery.Client,
    *,
    project: str,
    dataset: str,
    truth: Truth,
    tables: Collection[str] = TABLE_NAMES,
    timeout_seconds: float = 300.0,
) -> CheckReport:
    """Compare the warehouse with the sandbox's truth, row by row, one query per table.

    Args:
        client: a BigQuery client (the emulator or real BigQuery).
        project: BigQuery project id.
        dataset: the dataset holding the Square tables.
        truth: the sandbox's truth (see :func:`fetch_truth`).
        tables: which of :data:`TABLE_NAMES` to check (all by default).
        timeout_seconds: deadline for each table's query, seconds.

    Returns:
        The report; ``report.ok`` is True only if every checked table equals the truth.

    Raises:
        ValueError: for an invalid project or dataset id, or an unknown table name.
        google.api_core.exceptions.GoogleAPICallError: if BigQuery fails for a reason other than a
            missing table (a missing table is reported as a difference instead).
    """
    unknown = set(tables) - set(TABLE_NAMES)
    if unknown:
        raise ValueError(f"no truth for tables {sorted(unknown)}; known: {TABLE_NAMES}")
    results: dict[str, TableCheck] = {}
    for table in (name for name in TABLE_NAMES if name in tables):
        records = truth.records(table)
        key_field = _COLUMNS[table][0][1]
        ref = _table_ref(project, dataset, table)
        try:
            schema = client.get_table(ref.strip("`"), timeout=timeout_seconds).schema
        except google_exceptions.NotFound as exc:
            absent = TableCheck(table=table, expected_rows=len(records), error=f"not found: {exc.message}")
            absent.missing = sorted(str(record[key_field]) for record in records)
            results[table] = absent
            continue
        differences = _schema_differences(TABLES[table], schema)
        key_column = _COLUMNS[table][0][0]
        if key_column in differences and differences[key_column].startswith("missing"):
            results[table] = TableCheck(
                table=table, expected_rows=len(records), schema=differences, error="no key column"
            )
            continue
        present = {f.name for f in schema}
        check = _compare_table(table, records, _read_table(client, ref, present, table, timeout_seconds))
        check.schema = differences
        results[table] = check
    return CheckReport(tables=results)


def expected_report(truth_payments: Iterable[Mapping[str, Any]], *, zone: ZoneInfo, now: datetime) -> Report:
    """The revenue report as the truth says it should be (see ``workers.report.build_report``).

    A payment counts in a period when its creation instant, seen in ``zone``, falls on the same
    local date (today), ISO week (Monday to Sunday), month or year as ``now``.

    Args:
        truth_payments: the truth's payment records (``Truth.payments``).
        zone: the report time zone.
        now: the moment the report is for (aware); also the report's ``generatedAt``.

    Returns:
        The report computed from integer cents, exact to the cent.

    Raises:
        ValueError: if ``now`` is naive.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"naive datetime {now.isoformat()} has no time zone; pass an aware one")
    local_now = now.astimezone(zone)
    keys: dict[str, Callable[[datetime], object]] = {
        "today": lambda moment: moment.date(),
        "week": lambda moment: moment.isocalendar()[:2],
        "month": lambda moment: (moment.year, moment.month),
        "year": lambda moment: moment.year,
    }
    current = {name: key(local_now) for name, key in keys.items()}
    cents: dict[str, int] = dict.fromkeys(keys, 0)
    total_cents = 0
    transactions = 0
    customers: set[str] = set()
    for payment in truth_payments:
        if payment["status"] != "COMPLETED":
            continue
        amount = int(payment["amount_cents"])
        transactions += 1
        total_cents += amount
        if payment.get("customer_id") is not None:
            customers.add(str(payment["customer_id"]))
        local = _instant(str(payment["created_at"])).astimezone(zone)
        for name, key in keys.items():
            if key(local) == current[name]:
                cents[name] += amount
    return Report(
        today_revenue=_cents(cents["today"]),
        week_revenue=_cents(cents["week"]),
        month_revenue=_cents(cents["month"]),
        year_revenue=_cents(cents["year"]),
        total_transactions=transactions,
        total_customers=len(customers),
        avg_order_value=to_cents(_cents(total_cents) / transactions) if transactions else Decimal(0),
        generated_at=now,
        timezone=zone.key,
    )
