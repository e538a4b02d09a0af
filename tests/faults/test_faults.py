"""Fault scenarios: a backfill through real processes survives each fault with 0 lost, 0 duplicated
and sums equal to the cent, and reports its figures (see ``conftest.py``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import System
from tests.faults.conftest import FAULT_PAYMENTS, Figures, check_payments, pool_retries
from tests.faults.scenario import add_retries, assert_exact, backfill_done, since, start_pool
from tests.polling import wait_until

pytestmark = pytest.mark.faults


#: The Lightspeed sandbox's bucket drains this many requests per second in these scenarios (the real
#: API's 1/s would make pacing, not the fault, the run's length).
LIGHTSPEED_DRIP_RATE = 10.0


@pytest.mark.parametrize("source", ["square", "lightspeed"])
def test_a_worker_killed_three_times_while_holding_messages(
    make_system: Callable[..., System], record_figures: Callable[[Figures], None], source: str
) -> None:
    # Given a backfill in small windows behind a slow sandbox, and one worker pool
    if source == "lightspeed":
        system = make_system(
            source=source, sales=FAULT_PAYMENTS, latency_ms=30, drip_rate=LIGHTSPEED_DRIP_RATE
        )
    else:
        system = make_system(payments=FAULT_PAYMENTS, latency_ms=30)
    started = time.monotonic()
    pool = start_pool(system, processes=1, threads=3, queues=(source,))
    system.cli("backfill", source, "--since", since(system), "--window-days", "30", check=True)
    retries = (0.0, 0.0)

    # When the pool is SIGKILLed three times, each time while it holds messages in flight
    for kill in range(3):
        wait_until(
            lambda: system.status()["queues"][source]["in_flight"] >= 2,
            timeout_seconds=180,
            message=f"kill {kill + 1}: the worker never held two messages in flight",
        )
        retries = add_retries(retries, pool_retries(pool))
        pool.kill()
        held = system.status()["queues"][source]["in_flight"]
        assert held >= 2, f"kill {kill + 1}: nothing was in flight when the pool died"
        pool = start_pool(system, processes=1, threads=3, queues=(source,))

    # Then the backfill completes and the warehouse equals the truth
    wait_until(lambda: backfill_done(system), timeout_seconds=900, message="the backfill never completed")
    figures, summary = check_payments(
        system,
        scenario="worker SIGKILLed 3 times" + (" (Lightspeed)" if source == "lightspeed" else ""),
        started=started,
        retries=add_retries(retries, pool_retries(pool)),
        source=source,
    )
    record_figures(figures)
    assert_exact(figures, summary)


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
    pool = start_pool(system, processes=2, threads=4, square_timeout_seconds="1")

    # When the full history is backfilled
    result = system.cli("backfill", "square", "--since", since(system), "--wait", timeout=1200)

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
    assert_exact(figures, summary)
    assert "500" in str(stats), f"no 5xx was injected: {stats}"
    assert figures.failed_requests > 0, "no request failed: the faults were not injected"


def test_a_lightspeed_sandbox_failing_thirty_percent_of_requests(
    make_system: Callable[..., System], record_figures: Callable[[Figures], None]
) -> None:
    # Given a Lightspeed sandbox answering 30% of its API requests with 500 (the faults it can inject)
    system = make_system(
        source="lightspeed", sales=FAULT_PAYMENTS, rate_500=0.3, drip_rate=LIGHTSPEED_DRIP_RATE
    )
    started = time.monotonic()
    pool = start_pool(system, processes=2, threads=4, queues=("lightspeed",))

    # When the full history is backfilled
    result = system.cli("backfill", "lightspeed", "--since", since(system), "--wait", timeout=1200)

    # Then it succeeds and the warehouse equals the truth
    assert result.returncode == 0, result.stderr + result.stdout
    figures, summary = check_payments(
        system,
        scenario="sandbox failing 30% (500s) (Lightspeed)",
        started=started,
        retries=pool_retries(pool),
        source="lightspeed",
    )
    record_figures(figures)
    assert_exact(figures, summary)
    assert figures.failed_requests > 0, "no request failed: the faults were not injected"
