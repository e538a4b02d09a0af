"""The revenue report: one parameterised aggregation per source over its completed transactions.

Square: COMPLETED ``square_payments`` by ``created_at``, revenue ``amount``. Lightspeed: completed
``lightspeed_transactions`` by ``createTime``, revenue ``calcTotal``. A source whose table does not
exist yet (never synced) reports zeros.

Calendar periods (today, this ISO week, this month, this year) are taken in the report time zone
and turned into UTC instants in Python, then passed to the query as parameters: the query stays a
plain range filter BigQuery can evaluate without time-zone functions, and the boundaries are
testable on their own (:func:`report_periods`). A period is the whole calendar period containing
``now`` (``[start, next start)``), so a payment stamped a little ahead of ``now`` by a source's
clock still lands in today's figure.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import requests
from google.api_core import exceptions as google_exceptions
from google.cloud import bigquery

from schemas.report import Figures, Report, to_cents
from schemas.tables import LIGHTSPEED_TRANSACTIONS, SQUARE_PAYMENTS, TableSpec
from workers.sinks.bigquery import translate_error
from workers.sinks.bigquery_sql import check_identifier

__all__ = [
    "COMPLETED",
    "LIGHTSPEED_FIGURES",
    "SQUARE_FIGURES",
    "FiguresSource",
    "Period",
    "build_report",
    "report_periods",
    "report_query",
]

#: The payment status the report counts; every other status is neither revenue nor a transaction.
COMPLETED = "COMPLETED"

#: What the BigQuery client raises for a failed call or job; translated into the worker error tree.
_BIGQUERY_ERRORS = (
    google_exceptions.GoogleAPICallError,
    google_exceptions.RetryError,
    requests.RequestException,
    concurrent.futures.TimeoutError,
    TimeoutError,
)


@dataclass(frozen=True)
class FiguresSource:
    """Where one source's figures come from: table, time, revenue and customer columns, and which
    rows are completed transactions (``completed_column`` equals ``completed_value``)."""

    table: TableSpec
    time_column: str
    revenue_column: str
    customer_column: str
    completed_column: str
    completed_value: str | bool


SQUARE_FIGURES = FiguresSource(
    table=SQUARE_PAYMENTS,
    time_column="created_at",
    revenue_column="amount",
    customer_column="customer_id",
    completed_column="status",
    completed_value=COMPLETED,
)
LIGHTSPEED_FIGURES = FiguresSource(
    table=LIGHTSPEED_TRANSACTIONS,
    time_column="createTime",
    revenue_column="calcTotal",
    customer_column="customerID",
    completed_column="completed",
    completed_value=True,
)

#: Names of the periods, in the order they appear in the query and the report.
_PERIODS = ("today", "week", "month", "year")


@dataclass(frozen=True)
class Period:
    """One calendar period of the report as UTC instants: ``start <= t < end``."""

    name: str
    start: datetime
    end: datetime


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    # fold=0 picks the first 00:00 when midnight repeats, and a midnight skipped by a DST jump maps
    # to the first instant of the day: either way, the instant the local day begins. It is returned
    # in UTC: a wall time inside a gap never compares equal to any other zone's datetime (PEP 495).
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def report_periods(now: datetime, zone: ZoneInfo) -> tuple[Period, Period, Period, Period]:
    """The report's calendar periods containing ``now``, in ``zone``.

    Args:
        now: the moment the report is for; must be time-zone aware.
        zone: the report time zone.

    Returns:
        ``today``, ``week`` (starting Monday), ``month`` and ``year``, each ``[start, end)``.

    Raises:
        ValueError: if ``now`` is naive.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"naive datetime {now.isoformat()} has no time zone; pass an aware one")
    today = now.astimezone(zone).date()
    monday = today - timedelta(days=today.weekday())
    month = today.replace(day=1)
    next_month = (month + timedelta(days=32)).replace(day=1)
    year = today.replace(month=1, day=1)
    bounds = (
        (today, today + timedelta(days=1)),
        (monday, monday + timedelta(days=7)),
        (month, next_month),
        (year, year.replace(year=year.year + 1)),
    )
    today_p, week_p, month_p, year_p = (
        Period(name, _local_midnight(start, zone), _local_midnight(end, zone))
        for name, (start, end) in zip(_PERIODS, bounds, strict=True)
    )
    return today_p, week_p, month_p, year_p


def _table_ref(project: str, dataset: str, table: str) -> str:
    # Identifiers cannot be query parameters: validate them so nothing else reaches the SQL text.
    check_identifier("project", project)
    check_identifier("dataset", dataset)
    check_identifier("table", table)
    return f"`{project}.{dataset}.{table}`"


def report_query(
    *,
    project: str,
    dataset: str,
    now: datetime,
    zone: ZoneInfo,
    source: FiguresSource = SQUARE_FIGURES,
) -> tuple[str, list[bigquery.ScalarQueryParameter]]:
    """One source's figures as SQL and its parameters.

    Args:
        project: BigQuery project id.
        dataset: dataset holding the source's table.
        now: the moment the report is for (aware).
        zone: the report time zone.
        source: which source's figures.

    Returns:
        The query text and its named parameters.

    Raises:
        ValueError: for an invalid project or dataset id, or a naive ``now``.
    """
    periods = report_periods(now, zone)
    # Looked up in the table spec, so only its (validated) column names reach the SQL text.
    at, revenue, customer, completed = (
        f"`{source.table.column(name).name}`"
        for name in (
            source.time_column,
            source.revenue_column,
            source.customer_column,
            source.completed_column,
        )
    )
    sums = ",\n  ".join(
        f"SUM(CASE WHEN {at} >= @{p.name}_start AND {at} < @{p.name}_end THEN {revenue} END)"
        f" AS {p.name}_revenue"
        for p in periods
    )
    sql = (
        f"SELECT\n  {sums},\n"
        f"  SUM({revenue}) AS total_revenue,\n"
        "  COUNT(*) AS total_transactions,\n"
        f"  COUNT(DISTINCT {customer}) AS total_customers\n"
        f"FROM {_table_ref(project, dataset, source.table.name)}\n"
        f"WHERE {completed} = @completed"
    )
    completed_type = source.table.column(source.completed_column).type
    parameters = [bigquery.ScalarQueryParameter("completed", completed_type, source.completed_value)]
    for period in periods:
        parameters.append(bigquery.ScalarQueryParameter(f"{period.name}_start", "TIMESTAMP", period.start))
        parameters.append(bigquery.ScalarQueryParameter(f"{period.name}_end", "TIMESTAMP", period.end))
    return sql, parameters


def _money(value: Any) -> Decimal:
    # SUM over no rows is NULL; a NUMERIC sum comes back as Decimal.
    return Decimal(0) if value is None else Decimal(value)


def build_report(
    client: bigquery.Client,
    *,
    project: str,
    dataset: str,
    zone: ZoneInfo,
    now: datetime,
    timeout_seconds: float = 120.0,
) -> Report:
    """Compute the revenue report: Square's figures, and Lightspeed's under ``lightspeed``.

    Args:
        client: a BigQuery client (real BigQuery or the emulator).
        project: BigQuery project id.
        dataset: dataset holding the sources' tables.
        zone: the report time zone.
        now: the moment the report is for (aware); also the report's ``generatedAt``.
        timeout_seconds: deadline for each query job, seconds.

    Returns:
        The report, money to the cent.

    Raises:
        ValueError: for an invalid project or dataset id, or a naive ``now``.
        WarehouseUnavailable: BigQuery failed in a way that may pass.
        WarehouseRejected: BigQuery refused a query (bad SQL, no access).
    """
    options: dict[str, Any] = {
        "project": project,
        "dataset": dataset,
        "zone": zone,
        "now": now,
        "timeout_seconds": timeout_seconds,
    }
    square = build_figures(client, source=SQUARE_FIGURES, **options)
    lightspeed = build_figures(client, source=LIGHTSPEED_FIGURES, **options)
    return Report(**square.model_dump(), lightspeed=lightspeed)


def build_figures(
    client: bigquery.Client,
    *,
    source: FiguresSource,
    project: str,
    dataset: str,
    zone: ZoneInfo,
    now: datetime,
    timeout_seconds: float = 120.0,
) -> Figures:
    """One source's figures, with one aggregation query; zeros if its table does not exist yet.

    Raises:
        As :func:`build_report`.
    """
    sql, parameters = report_query(project=project, dataset=dataset, now=now, zone=zone, source=source)
    config = bigquery.QueryJobConfig(query_parameters=parameters)
    try:
        rows = list(
            client.query(sql, job_config=config, timeout=timeout_seconds).result(timeout=timeout_seconds)
        )
    except google_exceptions.NotFound as exc:
        if not _table_missing(client, project, dataset, source.table.name):
            raise translate_error(exc, action="report query") from exc
        rows = []
    except _BIGQUERY_ERRORS as exc:
        raise translate_error(exc, action="report query") from exc
    row: Any = rows[0] if rows else {}
    transactions = int(row.get("total_transactions") or 0)
    revenue = _money(row.get("total_revenue"))
    return Figures(
        today_revenue=_money(row.get("today_revenue")),
        week_revenue=_money(row.get("week_revenue")),
        month_revenue=_money(row.get("month_revenue")),
        year_revenue=_money(row.get("year_revenue")),
        total_transactions=transactions,
        total_customers=int(row.get("total_customers") or 0),
        avg_order_value=to_cents(revenue / transactions) if transactions else Decimal(0),
        generated_at=now,
        timezone=zone.key,
    )


def _table_missing(client: bigquery.Client, project: str, dataset: str, table: str) -> bool:
    """Whether ``table`` does not exist (as opposed to the dataset or the project)."""
    try:
        client.get_table(f"{project}.{dataset}.{table}")
    except google_exceptions.NotFound:
        try:
            client.get_dataset(f"{project}.{dataset}")
        except google_exceptions.NotFound:
            return False
        return True
    return False
