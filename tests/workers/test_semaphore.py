"""The per-table Redis semaphore: a bound on concurrent holders, leases, and exclusive holds."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import pytest
import redis

from tests.polling import wait_until
from workers.semaphore import PermitTimeout, TableSemaphore

TABLE = "square_payments"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def _contend(url: str, permits: int, rounds: int) -> None:
    # Runs in a child process: take and release a permit `rounds` times, recording in Redis how
    # many holders were inside at once (INCR/DECR around the critical section).
    connection = redis.Redis.from_url(url)
    semaphore = TableSemaphore(connection, permits=permits, lease_seconds=30)
    for _ in range(rounds):
        with semaphore.permit(TABLE, timeout_seconds=60):
            inside = connection.incr("test:inside")
            connection.eval(
                "if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then "
                "redis.call('SET', KEYS[1], ARGV[1]) end",
                1,
                "test:max",
                inside,
            )
            connection.incr("test:done")
            connection.decr("test:inside")
    connection.close()


def _hold_forever(url: str, permits: int) -> None:
    # Runs in a child process: take every permit with a short lease, say so, then wait to be killed.
    connection = redis.Redis.from_url(url)
    semaphore = TableSemaphore(connection, permits=permits, lease_seconds=1.0)
    with semaphore.hold_all(TABLE, timeout_seconds=10):
        connection.set("test:holding", "1")
        threading.Event().wait()


def _latest_expiry_ms(client: redis.Redis) -> float:
    """The furthest lease expiry among the table's holders, milliseconds of the Redis clock."""
    key = f"possync:semaphore:{TABLE}"
    holders = cast(list[tuple[bytes, float]], client.zrange(key, 0, -1, withscores=True))
    return max(score for _, score in holders)


def test_threads_never_exceed_the_permits(client: redis.Redis) -> None:
    # Given a semaphore of 2 permits and 6 threads wanting one each
    semaphore = TableSemaphore(client, permits=2)
    lock = threading.Lock()
    state = {"inside": 0, "max": 0, "max_seen_by_redis": 0}
    two_inside = threading.Event()

    def work(_: int) -> None:
        with semaphore.permit(TABLE, timeout_seconds=30):
            with lock:
                state["inside"] += 1
                state["max"] = max(state["max"], state["inside"])
                if state["inside"] == 2:
                    two_inside.set()
            state["max_seen_by_redis"] = max(state["max_seen_by_redis"], semaphore.holders(TABLE))
            # Hold until two holders have met once, so the bound is actually reached, not just unmet.
            two_inside.wait(timeout=10)
            with lock:
                state["inside"] -= 1

    # When they all run
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(work, range(6)))

    # Then exactly 2 were ever inside at once, and every permit was released
    assert state["max"] == 2
    assert state["max_seen_by_redis"] <= 2
    assert semaphore.holders(TABLE) == 0


def test_processes_never_exceed_the_permits(client: redis.Redis, redis_url: str) -> None:
    # Given 4 processes contending 25 times each for a semaphore of 2 permits
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_contend, args=(redis_url, 2, 25)) for _ in range(4)]

    # When they all run
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)

    # Then every round completed and never more than 2 were inside at once
    assert [process.exitcode for process in processes] == [0, 0, 0, 0]
    assert int(client.get("test:done") or 0) == 100
    assert 1 <= int(client.get("test:max") or 0) <= 2


def test_a_killed_holders_permit_frees_itself_when_its_lease_ends(
    client: redis.Redis, redis_url: str
) -> None:
    # Given a process holding every permit with a 1 s lease
    holder = multiprocessing.get_context("spawn").Process(target=_hold_forever, args=(redis_url, 2))
    holder.start()
    wait_until(
        lambda: client.get("test:holding"), timeout_seconds=30, message="the holder never took the permits"
    )
    semaphore = TableSemaphore(client, permits=2)
    assert semaphore.holders(TABLE) == 2
    with pytest.raises(PermitTimeout), semaphore.permit(TABLE, timeout_seconds=0.2):
        pass

    # When the holder is SIGKILLed (it cannot release anything)
    holder.kill()
    holder.join(timeout=10)

    # Then a permit comes free once the lease has run out
    with semaphore.permit(TABLE, timeout_seconds=10):
        assert semaphore.holders(TABLE) == 1


def test_a_live_holder_renews_its_lease(client: redis.Redis) -> None:
    # Given a permit held with a lease of 0.3 s
    semaphore = TableSemaphore(client, permits=1, lease_seconds=0.3)
    other = TableSemaphore(client, permits=1, lease_seconds=0.3)
    with semaphore.permit(TABLE):
        first_expiry = _latest_expiry_ms(client)

        # When several lease lengths pass
        wait_until(
            lambda: _latest_expiry_ms(client) > first_expiry + 900,
            timeout_seconds=10,
            message="the lease was never renewed",
        )

        # Then the permit is still held: nobody else gets in
        assert semaphore.holders(TABLE) == 1
        with pytest.raises(PermitTimeout), other.permit(TABLE, timeout_seconds=0.2):
            pass


def test_hold_all_excludes_everyone_and_drains_current_holders(client: redis.Redis) -> None:
    # Given one writer holding a permit of 2
    semaphore = TableSemaphore(client, permits=2)
    writer_release = threading.Event()
    writer_in = threading.Event()
    exclusive_in = threading.Event()
    exclusive_release = threading.Event()

    def writer() -> None:
        with semaphore.permit(TABLE, timeout_seconds=10):
            writer_in.set()
            writer_release.wait(timeout=30)

    def exclusive() -> None:
        with semaphore.hold_all(TABLE, timeout_seconds=30):
            exclusive_in.set()
            exclusive_release.wait(timeout=30)

    writer_thread = threading.Thread(target=writer)
    writer_thread.start()
    assert writer_in.wait(timeout=10)

    # When a migration asks for every permit
    exclusive_thread = threading.Thread(target=exclusive)
    exclusive_thread.start()

    # Then, while it waits, no new writer gets the free permit (the holders drain)
    wait_until(
        lambda: client.exists(f"possync:semaphore:{TABLE}:drain"),
        timeout_seconds=10,
        message="the exclusive taker never marked the table as draining",
    )
    with pytest.raises(PermitTimeout), semaphore.permit(TABLE, timeout_seconds=0.3):
        pass
    assert not exclusive_in.is_set()

    # When the writer finishes
    writer_release.set()
    writer_thread.join(timeout=10)

    # Then the migration holds every permit and nobody else gets in
    assert exclusive_in.wait(timeout=10)
    assert semaphore.holders(TABLE) == 2
    with pytest.raises(PermitTimeout), semaphore.permit(TABLE, timeout_seconds=0.3):
        pass
    exclusive_release.set()
    exclusive_thread.join(timeout=10)

    # And afterwards the permits are free again
    with semaphore.permit(TABLE, timeout_seconds=5):
        assert semaphore.holders(TABLE) == 1


def test_tables_have_separate_permits(client: redis.Redis) -> None:
    # Given a semaphore of 1 permit held for one table
    semaphore = TableSemaphore(client, permits=1)
    # When another table's permit is asked for while the first is held
    # Then it is granted at once
    with semaphore.permit("square_payments"), semaphore.permit("square_items", timeout_seconds=1):
        assert semaphore.holders("square_items") == 1


def test_invalid_arguments_are_refused(client: redis.Redis) -> None:
    # Given / When a semaphore of no permits or no lease is built
    # Then it is refused as a programming mistake
    with pytest.raises(ValueError, match="permits"):
        TableSemaphore(client, permits=0)
    with pytest.raises(ValueError, match="lease"):
        TableSemaphore(client, permits=1, lease_seconds=0)
