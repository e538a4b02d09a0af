"""Square to BigQuery end to end: the issue's acceptance, driven only through ``possync`` commands.

Every test runs real processes: a Redis server, the BigQuery emulator, the Square sandbox and
``possync worker`` pools, and reads the warehouse at the end against the sandbox's ground truth.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import redis

from sandbox.truth_check import check_warehouse, fetch_truth
from tests.e2e.conftest import System
from tests.polling import wait_until
from workers.sinks.bigquery import make_bigquery_client


def _sandbox_now(system: System) -> datetime:
    info = httpx.get(f"{system.sandbox.base_url}/_sandbox/info", timeout=10).json()
    return datetime.fromisoformat(str(info["now"]).replace("Z", "+00:00"))


def _since(system: System) -> str:
    return (_sandbox_now(system) - timedelta(days=2 * 365 + 30)).isoformat()


def _check(system: System) -> Any:
    client = make_bigquery_client(system.settings)
    truth = fetch_truth(system.sandbox.base_url)
    return check_warehouse(
        client,
        project=system.settings.require_bigquery(),
        dataset=system.settings.bigquery_dataset,
        truth=truth,
    )


def _snapshot(system: System, table: str, key: str) -> list[dict[str, Any]]:
    client = make_bigquery_client(system.settings)
    ref = f"`{system.settings.bigquery_project}.{system.settings.bigquery_dataset}.{table}`"
    return [dict(row.items()) for row in client.query(f"SELECT * FROM {ref} ORDER BY {key}").result()]


def _faults(system: System, **faults: Any) -> None:
    httpx.post(f"{system.sandbox.base_url}/_sandbox/faults", json=faults, timeout=10).raise_for_status()


@pytest.mark.slow
def test_backfill_under_429s_and_5xx_is_exact_and_replays_byte_identical(make_system: Any) -> None:
    # Given 20,000 payments behind a sandbox answering 10% 429s and 5% 5xx
    system = make_system(payments=20_000)
    _faults(system, rate_429=0.10, retry_after_seconds=1, rate_500=0.025, rate_503=0.025)
    system.start_worker(processes=2, threads=4)

    # When the full history is backfilled
    result = system.cli("backfill", "square", "--since", _since(system), "--wait", timeout=900)

    # Then the command succeeds and the warehouse equals the ground truth
    assert result.returncode == 0, result.stderr + result.stdout
    report = _check(system)
    assert report.ok, report.summary()
    stats = httpx.get(f"{system.sandbox.base_url}/_sandbox/stats", timeout=10).json()
    assert "429" in str(stats), "the sandbox never answered 429: the fault was not injected"

    # When the same backfill runs again
    before = {table: _snapshot(system, table, key) for table, key in _TABLE_KEYS}
    again = system.cli("backfill", "square", "--since", _since(system), "--wait", timeout=900)
    assert again.returncode == 0, again.stderr + again.stdout

    # Then every row is byte-identical, _synced_at included
    after = {table: _snapshot(system, table, key) for table, key in _TABLE_KEYS}
    for table, _ in _TABLE_KEYS:
        assert len(after[table]) == len(before[table]) > 0
        assert after[table] == before[table], f"{table} changed on replay"

    # When payments change (some created over a year ago) and new ones arrive, then an incremental sync runs
    _faults(system, rate_429=0.0, rate_500=0.0, rate_503=0.0)
    changes = httpx.post(
        f"{system.sandbox.base_url}/_sandbox/clock/advance",
        json={"seconds": 3600, "new_payments": 150, "changed_payments": 120},
        timeout=30,
    ).json()
    assert changes["changed"], "the sandbox changed no payment"
    synced = system.cli("sync", "square", "--wait", timeout=600)

    # Then the warehouse shows every payment's latest state, old ones included
    assert synced.returncode == 0, synced.stderr + synced.stdout
    report = _check(system)
    assert report.ok, report.summary()
    old = [
        row
        for row in _snapshot(system, "square_payments", "id")
        if row["id"] in set(changes["changed"])
        and row["created_at"] < _sandbox_now(system) - timedelta(days=365)
    ]
    assert old, "no payment older than a year was changed and synced"


_TABLE_KEYS = (("square_payments", "id"), ("square_items", "variation_id"), ("square_customers", "id"))


@pytest.mark.slow
def test_a_killed_worker_holding_messages_still_ends_exact(make_system: Any) -> None:
    # Given a backfill in many small windows behind a slow sandbox, and one worker pool
    system = make_system(payments=12_000, latency_ms=40)
    pool = system.start_worker(processes=1, threads=3)
    enqueued = system.cli("backfill", "square", "--since", _since(system), "--window-days", "60", check=True)
    assert enqueued.returncode == 0

    # When the pool is SIGKILLed while it holds messages in flight
    wait_until(
        lambda: system.status()["queues"]["square"]["in_flight"] >= 2,
        timeout_seconds=120,
        message="the worker never held two messages in flight",
    )
    pool.kill()
    killed_at = time.monotonic()

    # Then status still shows them in flight (nobody acknowledged them) ...
    held = system.status()["queues"]["square"]["in_flight"]
    assert held >= 2

    # ... until a live worker (default heartbeat settings) hands them back, within 90 s
    system.start_worker(processes=1, threads=3)
    wait_until(
        lambda: system.status()["queues"]["square"]["in_flight"] < held,
        timeout_seconds=90,
        message="the killed worker's messages were not handed back within 90 s",
    )
    requeued_after = time.monotonic() - killed_at

    # And the backfill ends exact
    backfill_id = next(iter(system.status()["backfills"]))
    wait_until(
        lambda: system.status()["backfills"][backfill_id]["missing"] == 0,
        timeout_seconds=600,
        message="the backfill never completed after the restart",
    )
    report = _check(system)
    assert report.ok, report.summary()
    assert requeued_after <= 90


def test_a_401_is_dead_lettered_at_once_and_visible_in_status(make_system: Any) -> None:
    # Given a worker whose token the sandbox does not accept
    system = make_system(payments=500, worker_token="not-the-right-token")
    system.start_worker(processes=1, threads=2)

    # When a sync of payments is requested
    result = system.cli("sync", "square", "--stream", "payments", "--wait", "--timeout", "120")

    # Then the request fails, the message is dead-lettered with its reason, and it was tried once
    assert result.returncode == 1, result.stderr + result.stdout
    letters = system.status()["dead_letters"]
    assert len(letters) == 1
    assert letters[0]["error_type"] == "SourceAuthError"
    assert "401" in letters[0]["error"]
    assert letters[0]["retries"] == 0
    assert system.status()["queues"]["square"]["dead"] == 1
    stats = httpx.get(f"{system.sandbox.base_url}/_sandbox/stats", timeout=10).json()
    assert "401" in str(stats)
    assert "not-the-right-token" not in system.logs()


def test_resume_re_enqueues_what_the_plan_shows_missing(make_system: Any) -> None:
    # Given a backfill whose plan was recorded, then whose queued messages were all lost
    system = make_system(payments=6_000, latency_ms=20)
    pool = system.start_worker(processes=1, threads=2)
    system.cli("backfill", "square", "--since", _since(system), "--window-days", "90", check=True)
    wait_until(
        lambda: any(plan["windows"] for plan in system.status()["backfills"].values()),
        timeout_seconds=60,
        message="the backfill was never planned",
    )
    pool.kill()
    client = redis.Redis.from_url(system.settings.redis_url)
    lost = [key for key in client.scan_iter(match="dramatiq:*")]
    client.delete(*lost)
    backfill_id, plan = next(iter(system.status()["backfills"].items()))
    assert plan["missing"] > 0

    # When a worker runs again and the backfill is resumed
    system.start_worker(processes=1, threads=2)
    resumed = system.cli("backfill", "square", "--resume", "--wait", timeout=600)

    # Then the missing windows ran and the warehouse equals the ground truth
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert system.status()["backfills"][backfill_id]["missing"] == 0
    report = _check(system)
    assert report.ok, report.summary()
