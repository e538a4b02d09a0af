"""The revenue report: one query in the emulator, equal to the report computed from the truth.

Payments sit a millisecond either side of local midnights (day, ISO week, month, year) so that a
boundary taken in UTC instead of the report time zone, or a week starting on Sunday, changes a
figure; each payment's amount is a distinct power of two dollars, so a wrong figure says which
payment was wrongly counted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from google.cloud import bigquery

from sandbox.process import SandboxProcess, start_square_sandbox
from sandbox.truth_check import expected_report, fetch_truth
from schemas.report import Report
from schemas.tables import SQUARE_PAYMENTS
from tests.sandbox.broken_clients import truth_payment_rows
from workers.report import build_report, report_periods
from workers.sinks.bigquery import BigQuerySink

NEW_YORK = ZoneInfo("America/New_York")
#: Sunday 2026-01-04 23:30 in New York; already Monday 2026-01-05 in UTC.
NOW = datetime(2026, 1, 5, 4, 30, tzinfo=UTC)


def _ny(year: int, month: int, day: int, hour: int, minute: int, second: int, ms: int = 0) -> str:
    """A New York wall-clock time as the truth writes it (UTC, milliseconds, Z)."""
    moment = datetime(year, month, day, hour, minute, second, ms * 1000, tzinfo=NEW_YORK).astimezone(UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def _payment(
    key: str, created_at: str, cents: int, *, status: str = "COMPLETED", customer: str | None
) -> dict[str, Any]:
    return {
        "id": key,
        "created_at": created_at,
        "updated_at": created_at,
        "status": status,
        "amount_cents": cents,
        "tip_cents": 0,
        "total_cents": cents,
        "refunded_cents": 0,
        "currency": "USD",
        "customer_id": customer,
        "location_id": "L1",
        "order_id": f"O-{key}",
        "source_type": "CARD",
        "card_brand": "VISA",
        "receipt_url": None,
    }


#: Around New York's midnights; amounts in cents. The two old ones make the average 63.08 / 8 = 7.885,
#: which rounds (half up) to 7.89.
EDGE_PAYMENTS = [
    _payment("p1", _ny(2026, 1, 4, 0, 0, 0), 100, customer="C1"),  # today's first millisecond
    _payment("p2", _ny(2026, 1, 3, 23, 59, 59, 999), 200, customer="C2"),  # yesterday's last
    _payment("p3", _ny(2025, 12, 31, 23, 59, 59, 999), 400, customer="C1"),  # last year, this week
    _payment("p4", _ny(2025, 12, 29, 0, 0, 0), 800, customer="C3"),  # Monday: this week's first
    _payment("p5", _ny(2025, 12, 28, 23, 59, 59, 999), 1600, customer=None),  # Sunday: last week
    _payment("p6", _ny(2026, 1, 4, 23, 45, 0), 3200, customer="C2"),  # later today, after NOW
    _payment("p7", _ny(2026, 1, 4, 12, 0, 0), 6400, status="APPROVED", customer="C4"),  # not revenue
    _payment("p8", "2024-06-01T12:00:00.000Z", 1, customer=None),
    _payment("p9", "2024-06-02T12:00:00.000Z", 7, customer="C5"),
]


@pytest.fixture
def sink(make_sink: Callable[..., BigQuerySink]) -> BigQuerySink:
    built = make_sink()
    built.ensure_tables([SQUARE_PAYMENTS])
    return built


@pytest.fixture(scope="module")
def square() -> Iterator[SandboxProcess]:
    """A small sandbox (3,000 payments over two years) with a fixed clock."""
    with start_square_sandbox(
        payments=3_000, customers=200, items=20, seed=5, anchor="2026-03-02T04:10:00+00:00"
    ) as sandbox:
        yield sandbox


def _load(sink: BigQuerySink, truth_payments: list[dict[str, Any]]) -> None:
    """Load truth payments as warehouse rows by the sink's load + MERGE."""
    rows = truth_payment_rows(truth_payments)
    sink.write(SQUARE_PAYMENTS, rows, batch_id="report-test")


def _job_count(client: bigquery.Client) -> int:
    return sum(1 for _ in client.list_jobs(all_users=True))


def _report(sink: BigQuerySink, zone: ZoneInfo, now: datetime = NOW) -> Report:
    """The report's Square figures (its ``lightspeed`` part is checked where it matters)."""
    report = build_report(sink.client, project=sink.project, dataset=sink.dataset, zone=zone, now=now)
    return report.model_copy(update={"lightspeed": None})


def test_new_york_report_counts_local_days_weeks_months_and_years(sink: BigQuerySink) -> None:
    # Given payments a millisecond either side of New York's midnights, in the warehouse
    _load(sink, EDGE_PAYMENTS)
    jobs_before = _job_count(sink.client)

    # When the report is built for Sunday 23:30 in New York
    full = build_report(sink.client, project=sink.project, dataset=sink.dataset, zone=NEW_YORK, now=NOW)
    report = full.model_copy(update={"lightspeed": None})

    # Then each period holds exactly the local-calendar payments (week from Monday), from one query per
    # source; Lightspeed, never synced here (no table), reports zeros with the same keys
    assert _job_count(sink.client) == jobs_before + 2
    assert full.lightspeed is not None
    assert full.lightspeed.total_transactions == 0
    assert full.lightspeed.year_revenue == Decimal(0)
    assert full.lightspeed.timezone == "America/New_York"
    assert report == expected_report(EDGE_PAYMENTS, zone=NEW_YORK, now=NOW)
    assert report.today_revenue == Decimal("33.00")  # p1 + p6
    assert report.week_revenue == Decimal("47.00")  # p1 + p2 + p3 + p4 + p6, not p5 (Sunday before)
    assert report.month_revenue == Decimal("35.00")  # p1 + p2 + p6
    assert report.year_revenue == Decimal("35.00")
    assert report.total_transactions == 8
    assert report.total_customers == 4  # C1, C2, C3, C5; C4's payment is not COMPLETED
    assert report.avg_order_value == Decimal("7.89")  # 63.08 / 8 = 7.885, half up
    assert report.timezone == "America/New_York"
    assert report.generated_at == NOW


def test_utc_report_of_the_same_payments_differs_where_the_zone_matters(sink: BigQuerySink) -> None:
    # Given the same payments
    _load(sink, EDGE_PAYMENTS)

    # When the report is built for the same instant in UTC (Monday 04:30)
    report = _report(sink, ZoneInfo("UTC"))

    # Then today and this week hold only p6, this month and year p1, p2, p3 and p6
    assert report == expected_report(EDGE_PAYMENTS, zone=ZoneInfo("UTC"), now=NOW)
    assert (report.today_revenue, report.week_revenue) == (Decimal("32.00"), Decimal("32.00"))
    assert (report.month_revenue, report.year_revenue) == (Decimal("39.00"), Decimal("39.00"))
    assert report.avg_order_value == Decimal("7.89")


def test_report_of_the_sandbox_history_equals_the_truth(square: SandboxProcess, sink: BigQuerySink) -> None:
    # Given the sandbox's two years of payments in the warehouse, exactly as the truth has them
    truth = fetch_truth(square.base_url)
    _load(sink, truth.payments)
    now = datetime.fromisoformat(str(square.admin.info()["now"]))

    for zone in (ZoneInfo("UTC"), NEW_YORK, ZoneInfo("Asia/Kolkata")):
        # When the report is built at the sandbox's clock
        report = _report(sink, zone, now)

        # Then it equals the report computed from the truth's cents
        assert report == expected_report(truth.payments, zone=zone, now=now), zone
        assert report.total_transactions > 0
        assert report.year_revenue > 0


def test_empty_warehouse_reports_zeros(sink: BigQuerySink) -> None:
    # Given an empty payments table
    # When the report is built
    report = _report(sink, NEW_YORK)

    # Then every figure is zero, the average included
    assert report == expected_report([], zone=NEW_YORK, now=NOW)
    assert report.avg_order_value == Decimal("0.00")
    assert report.total_transactions == 0


def test_report_serialises_with_the_dashboard_names_and_numbers() -> None:
    # Given a report
    report = expected_report(EDGE_PAYMENTS, zone=NEW_YORK, now=NOW)

    # When it is written as JSON
    data = json.loads(report.model_dump_json(by_alias=True))

    # Then the keys are the dashboard's, and money is a JSON number exact to the cent
    assert list(data) == [
        "todayRevenue",
        "weekRevenue",
        "monthRevenue",
        "yearRevenue",
        "totalTransactions",
        "totalCustomers",
        "avgOrderValue",
        "generatedAt",
        "timezone",
        "lightspeed",
    ]
    assert data["avgOrderValue"] == 7.89
    assert data["weekRevenue"] == 47
    assert isinstance(data["todayRevenue"], float)
    assert data["generatedAt"].startswith("2026-01-05T04:30:00")
    assert Report.model_validate(data) == report


def test_periods_start_monday_and_at_the_first_local_instant_of_a_day() -> None:
    # Given a São Paulo date whose midnight did not exist (DST began at 00:00 on 2018-11-04)
    zone = ZoneInfo("America/Sao_Paulo")
    now = datetime(2018, 11, 4, 15, 0, tzinfo=UTC)

    # When the periods are computed
    today, week, month, year = report_periods(now, zone)

    # Then today begins at 01:00 local (03:00 UTC), the week on Monday 2018-10-29, and all end exclusive
    assert today.start == datetime(2018, 11, 4, 3, 0, tzinfo=UTC)
    assert today.end == datetime(2018, 11, 5, 2, 0, tzinfo=UTC)
    assert week.start.astimezone(zone).date().isoformat() == "2018-10-29"
    assert week.start.astimezone(zone).weekday() == 0
    assert (week.end - week.start) == timedelta(days=7, hours=-1)
    assert month.start.astimezone(zone).date().isoformat() == "2018-11-01"
    assert year.end.astimezone(zone).date().isoformat() == "2019-01-01"


def test_naive_now_is_refused() -> None:
    # Given a naive "now" / When the periods are computed / Then it is refused
    with pytest.raises(ValueError, match="naive"):
        report_periods(datetime(2026, 1, 1), NEW_YORK)
