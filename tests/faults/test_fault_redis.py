"""Fault scenario: Redis SIGKILLed mid-backfill and started again from its append-only file (AOF on,
``appendfsync everysec``, as in the compose file), then ``possync backfill --resume`` completing
whatever the plan shows missing; it ends with the ground-truth check (see ``conftest.py``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandbox.redis_server import RedisServer
from tests.e2e.conftest import System
from tests.faults.conftest import FAULT_PAYMENTS, Figures, check_payments, pool_counter, pool_retries
from tests.faults.scenario import assert_exact, backfill_done, backfill_under_way, plan, quiet
from tests.polling import wait_until

pytestmark = pytest.mark.faults

#: How long Redis stays down, seconds: long enough for every worker thread to meet the outage.
REDIS_OUTAGE_SECONDS = 5.0


@pytest.fixture
def redis_server_aof(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server of this test's own (it is killed), with AOF on as in production."""
    with RedisServer.start(appendonly=True, data_dir=tmp_path / "redis") as server:
        yield server


@pytest.fixture
def redis_url(redis_server_aof: RedisServer) -> str:
    """The system under test uses the test's own Redis server, not the session's."""
    return redis_server_aof.url


def test_redis_killed_and_restarted_then_the_backfill_resumed(
    make_system: Callable[..., System],
    redis_server_aof: RedisServer,
    record_figures: Callable[[Figures], None],
) -> None:
    # Given a backfill in small windows behind a slow sandbox, on a Redis server with AOF on
    system = make_system(payments=FAULT_PAYMENTS, latency_ms=30)
    started = time.monotonic()
    pool = backfill_under_way(system)

    # When Redis is SIGKILLed while windows are in flight (no final fsync), kept down for 5 s, and
    # the pool notices
    redis_server_aof.kill()
    down_at = time.monotonic()
    wait_until(
        lambda: (
            time.monotonic() - down_at >= REDIS_OUTAGE_SECONDS and pool_counter(pool, "possync_state_up") == 0
        ),
        timeout_seconds=REDIS_OUTAGE_SECONDS + 60,
        message="the pool never reported its state unreadable while Redis was down",
    )
    assert pool.process.poll() is None, "the pool died with Redis:\n" + pool.log()[-3000:]

    # And Redis is started again on the same port, from its append-only file
    redis_server_aof.restart()
    wait_until(
        lambda: pool_counter(pool, "possync_state_up") == 1,
        timeout_seconds=60,
        message="the pool never read its state again after Redis came back",
    )

    # Then the pool finishes what it still holds, and --resume completes what the plan shows missing
    wait_until(lambda: quiet(system), timeout_seconds=900, message="the square queue never emptied")
    missing = plan(system)["missing"]
    resume = system.cli("backfill", "square", "--resume", "--wait", "--timeout", "900", timeout=1000)
    assert resume.returncode == 0, resume.stderr + resume.stdout
    assert f"{missing} windows re-enqueued" in resume.stderr, resume.stderr
    assert backfill_done(system), system.status()["backfills"]
    figures, summary = check_payments(
        system,
        scenario="Redis killed and restarted, then --resume",
        started=started,
        retries=pool_retries(pool),
    )
    record_figures(figures)
    assert_exact(figures, summary)
    assert pool.process.poll() is None, "the pool died:\n" + pool.log()[-3000:]
