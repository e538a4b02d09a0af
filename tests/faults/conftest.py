"""The fault suite: each scenario backfills the sandbox through real processes, breaks something, and
ends with the ground-truth check; its figures go to a JSON file that ``docs/reliability.md`` is made from.

Run it with ``pytest -m faults``. ``POSSYNC_FAULT_PAYMENTS`` sets the payments per scenario (CI runs
10,000; the documented full run 100,184) and ``POSSYNC_FAULT_RESULTS`` where the figures are written
(default ``docs/reliability.json``); ``python -m tests.faults.report`` then rewrites the table in
``docs/reliability.md``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sandbox.truth_check import check_warehouse, fetch_truth
from sandbox.truth_lightspeed import check_lightspeed_warehouse, fetch_lightspeed_truth
from tests.e2e.conftest import System, WorkerPool, make_system  # noqa: F401 (a fixture, re-exported)
from workers.sinks.bigquery import make_bigquery_client

ROOT = Path(__file__).resolve().parents[2]

#: Payments each scenario backfills (CI: at least 10,000).
FAULT_PAYMENTS = int(os.environ.get("POSSYNC_FAULT_PAYMENTS", "10000"))
#: Where the figures are written, one entry per scenario, merged with earlier runs' other scenarios.
RESULTS_PATH = Path(os.environ.get("POSSYNC_FAULT_RESULTS", str(ROOT / "docs" / "reliability.json")))


@dataclass(frozen=True)
class Figures:
    """What one scenario reports: the issue's columns, from the ground-truth check and the metrics."""

    scenario: str
    payments: int
    rows_expected: int
    rows_in_warehouse: int
    duplicates: int
    lost: int
    sums_difference: str
    retries: int
    failed_requests: int
    dead_letters: int
    wall_seconds: float
    exact: bool
    measured_at: str
    #: Rows in ``_possync_rejects``: source records that failed validation, kept there instead of in
    #: ``square_payments`` (``rows_expected`` counts the loadable payments only).
    rejected: int = 0


def pool_counter(pool: WorkerPool, name: str, **labels: str) -> float:
    """Sum of one series over the label sets matching ``labels`` in the pool's ``/metrics`` (0 if absent).

    A label value starting with ``!`` matches every other value.
    """
    try:
        text = httpx.get(pool.metrics_url, timeout=10).text
    except httpx.HTTPError:
        return 0.0

    def matches(sample_labels: dict[str, str]) -> bool:
        for key, wanted in labels.items():
            value = sample_labels.get(key)
            if (wanted.startswith("!") and value == wanted[1:]) or (
                not wanted.startswith("!") and value != wanted
            ):
                return False
        return True

    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and matches(sample.labels)
    )


def pool_retries(pool: WorkerPool) -> tuple[float, float]:
    """``(message retries, failed source requests)`` the pool counted: Dramatiq's retries, and the
    requests answered other than 2xx or with no answer (each retried in place or with the message)."""
    return (
        pool_counter(pool, "dramatiq_message_retries_total"),
        pool_counter(pool, "possync_source_request_duration_seconds_count", status_class="!2xx"),
    )


def check_payments(
    system: System, *, scenario: str, started: float, retries: tuple[float, float], source: str = "square"
) -> tuple[Figures, str]:
    """Run the ground-truth check: its payments table (Lightspeed: its sales) as :class:`Figures`,
    and the readable summary."""
    wall = time.monotonic() - started
    client = make_bigquery_client(system.settings)
    project, dataset = system.settings.require_bigquery(), system.settings.bigquery_dataset
    if source == "lightspeed":
        truth = fetch_lightspeed_truth(system.sandbox.base_url)
        report = check_lightspeed_warehouse(client, project=project, dataset=dataset, truth=truth)
        payments = report["lightspeed_transactions"]
    else:
        report = check_warehouse(
            client, project=project, dataset=dataset, truth=fetch_truth(system.sandbox.base_url)
        )
        payments = report["square_payments"]
    status = system.status()
    return Figures(
        scenario=scenario,
        payments=FAULT_PAYMENTS,
        rows_expected=payments.expected_rows,
        rows_in_warehouse=payments.warehouse_rows,
        duplicates=sum(payments.duplicates.values()) - len(payments.duplicates),
        lost=len(payments.missing),
        sums_difference=str(sum((abs(diff.difference) for diff in payments.sum_differences), start=0)),
        retries=int(retries[0]),
        failed_requests=int(retries[1]),
        dead_letters=len(status["dead_letters"]),
        wall_seconds=round(wall, 1),
        exact=report.ok,
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
    ), report.summary()


@pytest.fixture
def record_figures() -> Callable[[Figures], None]:
    """Write a scenario's figures into :data:`RESULTS_PATH`, keyed by scenario."""

    def record(figures: Figures) -> None:
        RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
        existing: dict[str, Any] = {}
        if RESULTS_PATH.exists():
            existing = json.loads(RESULTS_PATH.read_text(encoding="utf-8"))
        existing.setdefault("scenarios", {})[figures.scenario] = asdict(figures)
        RESULTS_PATH.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    return record
