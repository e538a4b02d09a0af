"""Fault scenarios: a backfill through real processes survives each fault with 0 lost, 0 duplicated
and sums equal to the cent, and reports its figures (see ``conftest.py``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import System, WorkerPool
from tests.faults.conftest import FAULT_PAYMENTS, Figures, check_payments, pool_retries
from tests.polling import wait_until

pytestmark = pytest.mark.faults


def _add(first: tuple[float, float], second: tuple[float, float]) -> tuple[float, float]:
    return (first[0] + second[0], first[1] + second[1])


def _pool(system: System, *, processes: int, threads: int, square_timeout_seconds: str = "30") -> WorkerPool:
    """A worker pool that notices a killed worker within seconds (5 s heartbeat timeout)."""
    return system.start_worker(
        processes=processes,
        threads=threads,
        POSSYNC_WORKER_HEARTBEAT_TIMEOUT_SECONDS="5",
        POSSYNC_WORKER_MAINTENANCE_INTERVAL_SECONDS="1",
        POSSYNC_SQUARE_TIMEOUT_SECONDS=square_timeout_seconds,
    )


def _since(system: System) -> str:
    info = httpx.get(f"{system.sandbox.base_url}/_sandbox/info", timeout=10).json()
    now = datetime.fromisoformat(str(info["now"]).replace("Z", "+00:00"))
    return (now - timedelta(days=2 * 365 + 30)).isoformat()


def _backfill_done(system: System) -> bool:
    backfills = system.status()["backfills"]
    return bool(backfills) and all(plan["missing"] == 0 for plan in backfills.values())


def _assert_exact(figures: Figures, summary: str) -> None:
    assert figures.exact, summary
    assert (figures.lost, figures.duplicates) == (0, 0)
    assert figures.rows_in_warehouse == figures.rows_expected > 0
    assert figures.sums_difference == "0"
    assert figures.dead_letters == 0


def test_a_worker_killed_three_times_while_holding_messages(
    make_system: Callable[..., System], record_figures: Callable[[Figures], None]
) -> None:
    # Given a backfill in small windows behind a slow sandbox, and one worker pool
    system = make_system(payments=FAULT_PAYMENTS, latency_ms=30)
    started = time.monotonic()
    pool = _pool(system, processes=1, threads=3)
    system.cli("backfill", "square", "--since", _since(system), "--window-days", "30", check=True)
    retries = (0.0, 0.0)

    # When the pool is SIGKILLed three times, each time while it holds messages in flight
    for kill in range(3):
        wait_until(
            lambda: system.status()["queues"]["square"]["in_flight"] >= 2,
            timeout_seconds=180,
            message=f"kill {kill + 1}: the worker never held two messages in flight",
        )
        retries = _add(retries, pool_retries(pool))
        pool.kill()
        held = system.status()["queues"]["square"]["in_flight"]
        assert held >= 2, f"kill {kill + 1}: nothing was in flight when the pool died"
        pool = _pool(system, processes=1, threads=3)

    # Then the backfill completes and the warehouse equals the truth
    wait_until(lambda: _backfill_done(system), timeout_seconds=900, message="the backfill never completed")
    figures, summary = check_payments(
        system,
        scenario="worker SIGKILLed 3 times",
        started=started,
        retries=_add(retries, pool_retries(pool)),
    )
    record_figures(figures)
    _assert_exact(figures, summary)


def test_a_sandbox_failing_thirty_percent_of_requests(
    make_system: Callable[..., System], record_figures: Callable[[Figures], None]
) -> None:
    # Given a sandbox answering 15% 5xx and hanging up on 15% of requests after a timeout
    system = make_system(payments=FAULT_PAYMENTS)
    httpx.post(
        f"{system.sandbox.base_url}/_sandbox/faults",
        json={"rate_500": 0.075, "rate_503": 0.075, "timeout_rate": 0.15, "timeout_hang_seconds": 2.0},
        timeout=10,
    ).raise_for_status()
    started = time.monotonic()
    pool = _pool(system, processes=2, threads=4, square_timeout_seconds="1")

    # When the full history is backfilled
    result = system.cli("backfill", "square", "--since", _since(system), "--wait", timeout=1200)

    # Then it succeeds and the warehouse equals the truth
    assert result.returncode == 0, result.stderr + result.stdout
    stats: dict[str, Any] = httpx.get(f"{system.sandbox.base_url}/_sandbox/stats", timeout=10).json()
    figures, summary = check_payments(
        system,
        scenario="sandbox failing 30% (5xx and timeouts)",
        started=started,
        retries=pool_retries(pool),
    )
    record_figures(figures)
    _assert_exact(figures, summary)
    assert "500" in str(stats), f"no 5xx was injected: {stats}"
    assert figures.failed_requests > 0, "no request failed: the faults were not injected"
