"""What the fault scenarios share: a pool that notices a dead worker fast, the backfill's range, and
the polls and assertions every scenario ends with."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx

from tests.e2e.conftest import System, WorkerPool
from tests.faults.conftest import Figures
from tests.polling import wait_until

__all__ = [
    "add_retries",
    "answers",
    "assert_exact",
    "backfill_done",
    "backfill_under_way",
    "part_done",
    "plan",
    "quiet",
    "since",
    "start_pool",
]


def add_retries(first: tuple[float, float], second: tuple[float, float]) -> tuple[float, float]:
    """Add two ``(message retries, failed requests)`` pairs (pools counted apart)."""
    return (first[0] + second[0], first[1] + second[1])


def start_pool(
    system: System,
    *,
    processes: int,
    threads: int,
    square_timeout_seconds: str = "30",
    queues: tuple[str, ...] = ("square",),
) -> WorkerPool:
    """A worker pool on ``queues`` that notices a killed worker within seconds (5 s heartbeat timeout)."""
    return system.start_worker(
        processes=processes,
        threads=threads,
        queues=queues,
        POSSYNC_WORKER_HEARTBEAT_TIMEOUT_SECONDS="5",
        POSSYNC_WORKER_MAINTENANCE_INTERVAL_SECONDS="1",
        POSSYNC_SQUARE_TIMEOUT_SECONDS=square_timeout_seconds,
    )


def backfill_under_way(system: System, *, processes: int = 2, threads: int = 3) -> WorkerPool:
    """Start a pool and a backfill of the whole history in 30-day windows, and return the pool once
    the backfill is under way (:func:`part_done`): the moment a scenario breaks something."""
    pool = start_pool(system, processes=processes, threads=threads)
    system.cli("backfill", "square", "--since", since(system), "--window-days", "30", check=True)
    wait_until(lambda: part_done(system), timeout_seconds=300, message="the backfill never got under way")
    return pool


def since(system: System) -> str:
    """The start of the sandbox's whole history (two years and a month before its now), ISO 8601."""
    info = httpx.get(f"{system.sandbox.base_url}/_sandbox/info", timeout=10).json()
    now = datetime.fromisoformat(str(info["now"]).replace("Z", "+00:00"))
    return (now - timedelta(days=2 * 365 + 30)).isoformat()


def backfill_done(system: System) -> bool:
    """Every recorded backfill has every window done."""
    backfills = system.status()["backfills"]
    return bool(backfills) and all(plan["missing"] == 0 for plan in backfills.values())


def plan(system: System) -> dict[str, Any]:
    """The one backfill's counts (``windows``, ``done``, ``failed``, ``missing``)."""
    plans: dict[str, dict[str, Any]] = system.status()["backfills"]
    assert len(plans) == 1, plans
    return next(iter(plans.values()))


def quiet(system: System) -> bool:
    """Nothing of the square queue is waiting or being worked on."""
    queue = system.status()["queues"]["square"]
    return bool(queue["ready"] == queue["delayed"] == queue["in_flight"] == 0)


def part_done(system: System) -> bool:
    """The backfill is under way: a window done, more to do, and at least one in flight."""
    status = system.status()
    plans = status["backfills"]
    if not plans:
        return False
    counts = next(iter(plans.values()))
    return bool(0 < counts["done"] < counts["windows"] and status["queues"]["square"]["in_flight"] >= 1)


def answers(system: System, status: str) -> int:
    """How many ``/v2`` requests the sandbox answered with ``status`` so far."""
    requests: dict[str, dict[str, int]] = system.sandbox.admin.stats()["requests"]
    return sum(by_status.get(status, 0) for by_status in requests.values())


def assert_exact(figures: Figures, summary: str) -> None:
    """0 lost, 0 duplicated, every expected row there, sums equal to the cent, no dead letter left."""
    assert figures.exact, summary
    assert (figures.lost, figures.duplicates) == (0, 0)
    assert figures.rows_in_warehouse == figures.rows_expected > 0
    assert figures.sums_difference == "0"
    assert figures.dead_letters == 0
