"""Sync state against a real Redis server: checkpoints, stream locks with heartbeat, backfill plans."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from schemas.messages import BackfillWindow
from tests.polling import wait_until
from workers.state import NAMESPACE, StateStore

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


@pytest.fixture
def state(client: redis.Redis) -> StateStore:
    return StateStore(client)


def _window(backfill_id: str, index: int) -> BackfillWindow:
    start = T0 + timedelta(days=30 * index)
    return BackfillWindow(
        request_id="req-1",
        backfill_id=backfill_id,
        window_id=f"payments:L1:{start.isoformat()}",
        stream="payments",
        location_id="L1",
        start=start,
        end=start + timedelta(days=30),
    )


def test_a_stream_without_state_has_no_checkpoint(state: StateStore) -> None:
    # Given an empty Redis
    # When the checkpoint of a stream is read
    # Then there is none, and no stream is listed
    assert state.get_checkpoint("square", "payments") is None
    assert state.list_streams() == {}


def test_commit_checkpoint_is_read_back_and_listed(state: StateStore) -> None:
    # Given a committed checkpoint
    state.commit_checkpoint("square", "payments", checkpoint=T0, started_at=T0 - timedelta(seconds=5))

    # When it is read back, directly and through the listing
    got = state.get_checkpoint("square", "payments")
    listed = state.list_streams()

    # Then both show the same instants, as aware datetimes
    assert got is not None
    assert got.checkpoint == T0
    assert got.last_success == T0 - timedelta(seconds=5)
    assert got.last_error is None
    assert listed == {"square.payments": got}


def test_an_error_is_kept_beside_the_checkpoint_and_cleared_by_the_next_success(state: StateStore) -> None:
    # Given a stream that synced once, then failed
    state.commit_checkpoint("square", "items", checkpoint=T0, started_at=T0)
    state.record_error("square", "items", error="SourceUnavailable: 503", at=T0 + timedelta(minutes=1))

    # When its state is read
    failed = state.get_checkpoint("square", "items")

    # Then the error is shown and the checkpoint did not move
    assert failed is not None
    assert failed.last_error == "SourceUnavailable: 503"
    assert failed.last_error_at == T0 + timedelta(minutes=1)
    assert failed.checkpoint == T0

    # When the next sync succeeds
    later = T0 + timedelta(minutes=15)
    state.commit_checkpoint("square", "items", checkpoint=later, started_at=later)

    # Then the error is gone and the checkpoint moved
    healed = state.get_checkpoint("square", "items")
    assert healed is not None
    assert healed.last_error is None
    assert healed.last_error_at is None
    assert healed.checkpoint == later


def test_a_stream_that_only_failed_is_listed_without_checkpoint(state: StateStore) -> None:
    # Given a stream whose first sync failed
    state.record_error("square", "customers", error="SourceAuthError: 401", at=T0)

    # When streams are listed
    listed = state.list_streams()

    # Then it is there with its error and no checkpoint
    assert listed["square.customers"].checkpoint is None
    assert listed["square.customers"].last_error == "SourceAuthError: 401"


def test_state_works_with_a_decoding_client(redis_url: str) -> None:
    # Given a client created with decode_responses=True
    decoding = redis.Redis.from_url(redis_url, decode_responses=True)
    store = StateStore(decoding)

    # When a checkpoint and a plan are written and read back
    store.commit_checkpoint("square", "payments", checkpoint=T0, started_at=T0)
    store.record_plan("b1", [_window("b1", 0)], {"note": "x"})
    store.mark_window("b1", _window("b1", 0).window_id, "done")

    # Then both read back the same as with a bytes client
    assert store.list_streams()["square.payments"].checkpoint == T0
    plan = store.get_plan("b1")
    assert plan is not None
    assert plan.summary()["done"] == 1
    decoding.close()


def test_the_stream_lock_is_exclusive_and_released(state: StateStore) -> None:
    # Given one holder of the payments lock
    with state.stream_lock("square", "payments") as first:
        assert first is True

        # When another caller tries the same lock, and a different stream's lock
        with state.stream_lock("square", "payments") as second:
            # Then the same stream's lock is refused at once (the caller coalesces)
            assert second is False
        with state.stream_lock("square", "items") as other:
            # And another stream's lock is independent
            assert other is True

    # When the holder left
    # Then the lock can be taken again
    with state.stream_lock("square", "payments") as again:
        assert again is True


def test_only_one_of_many_concurrent_callers_gets_the_lock(state: StateStore) -> None:
    # Given eight threads trying the same stream lock at once, each holding it until told to go
    results: list[bool] = []
    barrier = threading.Barrier(8)
    release = threading.Event()
    guard = threading.Lock()

    def contend() -> None:
        barrier.wait()
        with state.stream_lock("square", "payments") as held:
            with guard:
                results.append(held)
            if held:
                release.wait(timeout=30)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for thread in threads:
        thread.start()

    # When all have tried
    wait_until(lambda: len(results) == 8, timeout_seconds=10, message="not every thread tried the lock")
    release.set()
    for thread in threads:
        thread.join(timeout=10)

    # Then exactly one held it
    assert sorted(results) == [False] * 7 + [True]


def test_the_heartbeat_keeps_a_lock_past_its_ttl(state: StateStore, client: redis.Redis) -> None:
    # Given a lock with a 1.5-second TTL, held by a long sync
    key = NAMESPACE + "lock:square.payments"
    with state.stream_lock("square", "payments", ttl_seconds=1.5) as held:
        assert held
        started = time.monotonic()
        samples = [client.pttl(key)]

        # When more than twice the TTL passes while it is held
        def held_past_ttl() -> bool:
            ttl = client.pttl(key)
            assert ttl > 0, "the lock expired while its holder was alive"
            samples.append(ttl)
            return time.monotonic() - started > 3.5

        wait_until(held_past_ttl, timeout_seconds=10, message="the lock was not held for 3.5 s")

        # Then the TTL was reset by the heartbeat (it never ran out) and another caller is still refused
        assert any(later > earlier for earlier, later in itertools.pairwise(samples)), "no TTL reset seen"
        with state.stream_lock("square", "payments") as other:
            assert other is False

    # And the lock is released on exit
    assert client.exists(key) == 0


def test_a_killed_holders_lock_expires(state: StateStore, redis_url: str) -> None:
    # Given another process holding the lock with a 1-second TTL and its heartbeat
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, threading, redis\n"
            "from workers.state import StateStore\n"
            "store = StateStore(redis.Redis.from_url(sys.argv[1]))\n"
            "with store.stream_lock('square', 'payments', ttl_seconds=1) as held:\n"
            "    print('held' if held else 'refused', flush=True)\n"
            "    threading.Event().wait()\n",
            redis_url,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with state.stream_lock("square", "payments") as while_alive:
            assert while_alive is False

        # When the holder is killed without releasing it
        holder.kill()
        holder.wait(timeout=10)
        killed = time.monotonic()

        # Then the lock can be taken once its TTL ran out
        def acquired() -> bool:
            with state.stream_lock("square", "payments") as held:
                return held

        wait_until(acquired, timeout_seconds=5, message="a killed holder's lock never expired")
        assert time.monotonic() - killed < 5
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)


def test_a_plan_records_windows_statuses_and_what_is_missing(state: StateStore) -> None:
    # Given a plan of three windows
    windows = [_window("b1", index) for index in range(3)]
    state.record_plan("b1", windows, {"since": "2024-01-01", "locations": ["L1"]})

    # When one window is done and one failed
    state.mark_window("b1", windows[0].window_id, "done")
    state.mark_window("b1", windows[1].window_id, "failed")

    # Then the plan shows each status, its meta, and the two that are not done are missing, in order
    plan = state.get_plan("b1")
    assert plan is not None
    assert [planned.status for planned in plan.windows] == ["done", "failed", "pending"]
    assert [planned.window for planned in plan.windows] == windows
    assert plan.meta == {"since": "2024-01-01", "locations": ["L1"]}
    assert plan.summary() == {
        "created_at": plan.created_at.isoformat(),
        "windows": 3,
        "done": 1,
        "failed": 1,
        "missing": 2,
    }
    assert state.missing_windows("b1") == windows[1:]


def test_failed_never_overwrites_done_but_done_overwrites_failed(state: StateStore) -> None:
    # Given a plan whose first window is done and second failed
    windows = [_window("b1", 0), _window("b1", 1)]
    state.record_plan("b1", windows, {})
    state.mark_window("b1", windows[0].window_id, "done")
    state.mark_window("b1", windows[1].window_id, "failed")

    # When a redelivery of the done window fails, and a retry of the failed one succeeds
    state.mark_window("b1", windows[0].window_id, "failed")
    state.mark_window("b1", windows[1].window_id, "done")

    # Then both are done and nothing is missing
    assert state.missing_windows("b1") == []


def test_re_recording_a_plan_keeps_statuses_and_creation_time(state: StateStore) -> None:
    # Given a recorded plan with one window done
    windows = [_window("b1", 0), _window("b1", 1)]
    state.record_plan("b1", windows, {"attempt": 1})
    state.mark_window("b1", windows[0].window_id, "done")
    first = state.get_plan("b1")
    assert first is not None

    # When the planning message is redelivered and records the plan again
    state.record_plan("b1", windows, {"attempt": 2})

    # Then the done window stays done and the creation time is the first one
    again = state.get_plan("b1")
    assert again is not None
    assert again.created_at == first.created_at
    assert [planned.status for planned in again.windows] == ["done", "pending"]


def test_backfills_are_listed_oldest_first_and_the_latest_is_found(state: StateStore) -> None:
    # Given no backfill
    assert state.latest_backfill() is None
    assert state.list_backfills() == []

    # When two backfills are recorded one after the other
    state.record_plan("older", [_window("older", 0)], {})
    state.record_plan("newer", [_window("newer", 0)], {})

    # Then both are listed oldest first, and the latest is the newer
    assert [plan.backfill_id for plan in state.list_backfills()] == ["older", "newer"]
    latest = state.latest_backfill()
    assert latest is not None
    assert latest.backfill_id == "newer"


def test_an_unknown_backfill_is_none_or_a_key_error(state: StateStore) -> None:
    # Given no backfill called "nope"
    # When it is read, or its missing windows asked for
    # Then get_plan says None and missing_windows raises KeyError
    assert state.get_plan("nope") is None
    with pytest.raises(KeyError, match="nope"):
        state.missing_windows("nope")


def test_a_window_of_another_backfill_is_refused(state: StateStore) -> None:
    # Given a window that belongs to backfill "other"
    # When it is recorded under "b1"
    # Then it is refused (a programming mistake)
    with pytest.raises(ValueError, match="belongs to backfill other"):
        state.record_plan("b1", [_window("other", 0)], {})
