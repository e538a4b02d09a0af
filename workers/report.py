"""The revenue report: one parameterised aggregation over COMPLETED payments in BigQuery.

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

from schemas.report import Report, to_cents
from schemas.tables import SQUARE_PAYMENTS
from workers.sinks.bigquery import translate_error
from workers.sinks.bigquery_sql import check_identifier

__all__ = ["COMPLETED", "Period", "build_report", "report_periods", "report_query"]

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


def _table_ref(project: str, dataset: str) -> str:
    # Identifiers cannot be query parameters: validate them so nothing else reaches the SQL text.
    check_identifier("project", project)
    check_identifier("dataset", dataset)
    return f"`{project}.{dataset}.{SQUARE_PAYMENTS.name}`"


def report_query(
    *, project: str, dataset: str, now: datetime, zone: ZoneInfo
) -> tuple[str, list[bigquery.ScalarQueryParameter]]:
    """The report's SQL and its parameters.

    Args:
        project: BigQuery project id.
        dataset: dataset holding ``square_payments``.
        now: the moment the report is for (aware).
        zone: the report time zone.

    Returns:
        The query text and its named parameters.

    Raises:
        ValueError: for an invalid project or dataset id, or a naive ``now``.
    """
    periods = report_periods(now, zone)
    sums = ",\n  ".join(
        f"SUM(CASE WHEN created_at >= @{p.name}_start AND created_at < @{p.name}_end THEN amount END)"
        f" AS {p.name}_revenue"
        for p in periods
    )
    sql = (
        f"SELECT\n  {sums},\n"
        "  SUM(amount) AS total_revenue,\n"
        "  COUNT(*) AS total_transactions,\n"
        "  COUNT(DISTINCT customer_id) AS total_customers\n"
        f"FROM {_table_ref(project, dataset)}\n"
        "WHERE status = @status"
    )
    parameters = [bigquery.ScalarQueryParameter("status", "STRING", COMPLETED)]
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
    """Compute the revenue report with one aggregation query over ``square_payments``.

    Args:
        client: a BigQuery client (real BigQuery or the emulator).
        project: BigQuery project id.
        dataset: dataset holding ``square_payments``.
        zone: the report time zone.
        now: the moment the report is for (aware); also the report's ``generatedAt``.
        timeout_seconds: deadline for the query job, seconds.

    Returns:
        The report, money to the cent.

    Raises:
        ValueError: for an invalid project or dataset id, or a naive ``now``.
        WarehouseUnavailable: BigQuery failed in a way that may pass.
        WarehouseRejected: BigQuery refused the query (missing table, bad SQL).
    """
    sql, parameters = report_query(project=project, dataset=dataset, now=now, zone=zone)
    config = bigquery.QueryJobConfig(query_parameters=parameters)
    try:
        rows = list(
            client.query(sql, job_config=config, timeout=timeout_seconds).result(timeout=timeout_seconds)
        )
    except _BIGQUERY_ERRORS as exc:
        raise translate_error(exc, action="report query") from exc
    row = rows[0]
    transactions = int(row["total_transactions"])
    revenue = _money(row["total_revenue"])
    return Report(
        today_revenue=_money(row["today_revenue"]),
        week_revenue=_money(row["week_revenue"]),
        month_revenue=_money(row["month_revenue"]),
        year_revenue=_money(row["year_revenue"]),
        total_transactions=transactions,
        total_customers=int(row["total_customers"]),
        avg_order_value=to_cents(revenue / transactions) if transactions else Decimal(0),
        generated_at=now,
        timezone=zone.key,
    )
