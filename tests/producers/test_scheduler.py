"""The scheduler against a real Redis server: claims, coalescing, catch-up, replicas as processes."""

from __future__ import annotations

import contextlib
import json
import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from prometheus_client import CollectorRegistry, Counter

from producers.scheduler import LAST_KEY, PENDING_KEY, TICK_KEY, Scheduler
from producers.schedules import Schedule, parse_schedules
from sandbox.process import free_port
from sandbox.redis_server import RedisServer
from schemas.settings import ConfigError, Settings
from tests.polling import wait_until
from tests.producers.scheduler_helpers import (
    SchedulerProcess,
    StubSyncConsumer,
    claimed_ticks,
    clock,
    run_scheduler_once,
    start_scheduler_process,
)
from workers.broker import REQUEST_KEY, PossyncRedisBroker, build_broker
from workers.queues import queue_depth, request_progress
from workers.state import StateStore

EVERY_5_MIN = "*/5 * * * *"
#: A Monday morning, on a tick of EVERY_5_MIN.
T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
PAYMENTS = Schedule("square", "payments", EVERY_5_MIN)
ITEMS = Schedule("square", "items", EVERY_5_MIN)


def _counter() -> tuple[Counter, CollectorRegistry]:
    registry = CollectorRegistry()
    counter = Counter(
        "possync_scheduler_ticks_total", "ticks", ["source", "stream", "outcome"], registry=registry
    )
    return counter, registry


def _count(registry: CollectorRegistry, stream: str, outcome: str) -> float | None:
    return registry.get_sample_value(
        "possync_scheduler_ticks_total", {"source": "square", "stream": stream, "outcome": outcome}
    )


def _request_id(schedule: Schedule, tick: datetime) -> str:
    return f"tick-{schedule.name}-{tick.strftime('%Y%m%dT%H%M%SZ')}"


def _messages(client: redis.Redis, request_id: str) -> int:
    return int(client.hlen(REQUEST_KEY.format(request_id=request_id)))


def _iso(tick: datetime) -> str:
    return tick.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def broker(redis_url: str, redis_client: redis.Redis) -> Iterator[PossyncRedisBroker]:
    broker = build_broker(Settings(redis_url=redis_url), client=redis_client)
    yield broker
    broker.close()


MakeScheduler = Callable[..., tuple[Scheduler, CollectorRegistry]]


@pytest.fixture
def make_scheduler(redis_client: redis.Redis, broker: PossyncRedisBroker) -> MakeScheduler:
    """Factory: a Scheduler with its own clock, replica id and metrics registry."""

    def make(
        *schedules: Schedule, now: Callable[[], datetime], replica_id: str
    ) -> tuple[Scheduler, CollectorRegistry]:
        counter, registry = _counter()
        scheduler = Scheduler(
            redis_client, broker, schedules or (PAYMENTS,), now=now, replica_id=replica_id, ticks=counter
        )
        return scheduler, registry

    return make


# Claims.


def test_two_replicas_claim_each_tick_once_even_with_skewed_clocks(
    redis_client: redis.Redis, make_scheduler: MakeScheduler
) -> None:
    # Given two replicas started before a tick, replica b's clock 300 ms behind replica a's
    clock_a, clock_b = clock(T0 - timedelta(minutes=2)), clock(T0 - timedelta(minutes=2, seconds=0.3))
    a, metrics_a = make_scheduler(now=clock_a, replica_id="a")
    b, metrics_b = make_scheduler(now=clock_b, replica_id="b")
    tick = T0
    assert a.run_due() == []
    assert b.run_due() == []

    # When a reaches the tick first, then b (whose clock still reads just before it, then just after)
    clock_a.advance(minutes=2)
    clock_b.advance(minutes=2)
    [won] = a.run_due()
    assert b.run_due() == []
    clock_b.advance(seconds=0.5)
    [lost] = b.run_due()

    # Then a enqueued one sync, b counted the tick taken, and the claim names a
    assert (won.outcome, won.tick, won.request_id) == ("enqueued", tick, _request_id(PAYMENTS, tick))
    assert (lost.outcome, lost.tick) == ("taken", tick)
    assert claimed_ticks(redis_client, PAYMENTS) == {tick: "a"}
    assert _messages(redis_client, _request_id(PAYMENTS, tick)) == 1
    assert queue_depth(redis_client, "square").ready == 1
    assert _count(metrics_a, "payments", "enqueued") == 1
    assert _count(metrics_b, "payments", "taken") == 1
    assert _count(metrics_b, "payments", "enqueued") == 0


def test_a_tick_claimed_by_another_replica_is_taken_before_it_is_recorded(
    redis_client: redis.Redis, make_scheduler: MakeScheduler
) -> None:
    # Given another replica holds the claim of the 09:05 tick but has not recorded it as handled yet
    now = clock(T0 + timedelta(minutes=3))
    scheduler, metrics = make_scheduler(now=now, replica_id="mine")
    scheduler.run_due()
    tick = T0 + timedelta(minutes=5)
    redis_client.set(TICK_KEY.format(schedule=PAYMENTS.name, tick=_iso(tick)), "theirs")

    # When this replica reaches the tick
    now.advance(minutes=2)
    [result] = scheduler.run_due()

    # Then it sends nothing: the claim is theirs
    assert (result.outcome, result.tick) == ("taken", tick)
    assert queue_depth(redis_client, "square").ready == 0
    assert _count(metrics, "payments", "taken") == 1


# Coalescing.


def test_a_sync_still_pending_makes_the_next_ticks_coalesce_until_it_is_done(
    redis_url: str, redis_client: redis.Redis, make_scheduler: MakeScheduler
) -> None:
    # Given a tick that enqueued a sync no worker has taken yet
    now = clock(T0 - timedelta(seconds=1))
    scheduler, metrics = make_scheduler(now=now, replica_id="a")
    scheduler.run_due()
    now.advance(seconds=1)
    [first] = scheduler.run_due()
    assert first.outcome == "enqueued"

    # When three more ticks come while it is still pending
    coalesced = []
    for _ in range(3):
        now.advance(minutes=5)
        coalesced.extend(scheduler.run_due())

    # Then each coalesces into it and nothing more is sent
    assert [(r.outcome, r.reason, r.request_id) for r in coalesced] == [
        ("coalesced", "previous_sync_unfinished", first.request_id)
    ] * 3
    assert queue_depth(redis_client, "square").ready == 1
    assert _count(metrics, "payments", "coalesced") == 3

    # And once a worker has finished it, the next tick enqueues again
    consumer = StubSyncConsumer(redis_url)
    try:
        consumer.start()
        assert first.request_id is not None
        wait_until(
            lambda: request_progress(redis_client, str(first.request_id)).finished,
            timeout_seconds=10,
            message="the stub worker did not finish the first sync",
        )
    finally:
        consumer.close()
    now.advance(minutes=5)
    [after] = scheduler.run_due()
    assert after.outcome == "enqueued"
    assert redis_client.get(PENDING_KEY.format(schedule=PAYMENTS.name)) == str(after.request_id).encode()


def test_a_held_stream_lock_makes_ticks_coalesce_and_its_release_lets_the_next_one_enqueue(
    redis_client: redis.Redis, make_scheduler: MakeScheduler
) -> None:
    # Given a sync of square.payments running (started by `possync sync`: it holds the stream lock)
    now = clock(T0 - timedelta(seconds=1))
    scheduler, metrics = make_scheduler(PAYMENTS, ITEMS, now=now, replica_id="a")
    scheduler.run_due()
    state = StateStore(redis_client)
    with state.stream_lock("square", "payments", ttl_seconds=60) as held:
        assert held

        # When three ticks pass while it runs
        outcomes: list[tuple[str, str, str | None]] = []
        for _ in range(3):
            now.advance(minutes=5)
            outcomes.extend((r.schedule, r.outcome, r.reason) for r in scheduler.run_due())

    # Then payments coalesced at each (items, unlocked, enqueued once, then waited for that sync)
    payments = [o for o in outcomes if o[0] == "square.payments"]
    assert payments == [("square.payments", "coalesced", "stream_locked")] * 3
    assert _count(metrics, "payments", "enqueued") == 0
    assert [o[1] for o in outcomes if o[0] == "square.items"] == ["enqueued", "coalesced", "coalesced"]

    # And after the lock is released the next tick enqueues one sync of payments
    now.advance(minutes=5)
    results = {r.schedule: r for r in scheduler.run_due()}
    assert results["square.payments"].outcome == "enqueued"
    assert _messages(redis_client, str(results["square.payments"].request_id)) == 1


# Catch-up and restarts.


def test_after_downtime_each_stream_gets_one_catch_up_sync(
    redis_client: redis.Redis, make_scheduler: MakeScheduler
) -> None:
    # Given both streams last handled at 09:00, and the scheduler back at 09:50:30 (10 ticks later)
    for schedule in (PAYMENTS, ITEMS):
        redis_client.set(LAST_KEY.format(schedule=schedule.name), _iso(T0))
    now = clock(T0 + timedelta(minutes=50, seconds=30))
    scheduler, metrics = make_scheduler(PAYMENTS, ITEMS, now=now, replica_id="a")

    # When it runs
    results = scheduler.run_due()

    # Then each stream gets one sync, for the latest tick, the 9 before it skipped
    latest = T0 + timedelta(minutes=50)
    assert [(r.schedule, r.outcome, r.tick, r.ticks_skipped) for r in results] == [
        ("square.payments", "enqueued", latest, 9),
        ("square.items", "enqueued", latest, 9),
    ]
    assert queue_depth(redis_client, "square").ready == 2
    assert redis_client.get(LAST_KEY.format(schedule=PAYMENTS.name)) == _iso(latest).encode()
    assert _count(metrics, "items", "enqueued") == 1

    # And a replica restarted at the same moment finds nothing due
    again, _ = make_scheduler(PAYMENTS, ITEMS, now=now, replica_id="b")
    assert again.run_due() == []
    assert queue_depth(redis_client, "square").ready == 2


def test_the_first_start_ever_waits_for_the_next_tick(
    redis_client: redis.Redis, make_scheduler: MakeScheduler
) -> None:
    # Given no record at all, and a start at 09:03 (the 09:00 tick is past)
    now = clock(T0 + timedelta(minutes=3))
    scheduler, _ = make_scheduler(now=now, replica_id="a")

    # When it runs now, then at 09:05
    assert scheduler.run_due() == []
    now.advance(minutes=2)
    [result] = scheduler.run_due()

    # Then the first tick handled is 09:05, not 09:00
    assert (result.tick, result.outcome, result.ticks_skipped) == (T0 + timedelta(minutes=5), "enqueued", 0)
    assert scheduler.seconds_until_due() == 300


def test_once_handles_the_due_ticks_and_nothing_twice(
    redis_client: redis.Redis, make_scheduler: MakeScheduler
) -> None:
    # Given no record: --once at 09:07 claims the tick at or just before now
    now = clock(T0 + timedelta(minutes=7))
    first, _ = make_scheduler(now=now, replica_id="a")
    [result] = first.run_once()
    assert (result.tick, result.outcome) == (T0 + timedelta(minutes=5), "enqueued")

    # When --once runs again at the same time (another cron invocation)
    again, _ = make_scheduler(now=now, replica_id="b")
    # Then nothing is due: 09:05 was handled
    assert again.run_once() == []

    # When --once runs at 09:21 (three ticks later) with that sync still queued
    now.advance(minutes=14)
    [late] = again.run_once()

    # Then only the latest tick is handled, and it coalesces into the queued sync
    assert (late.tick, late.outcome, late.ticks_skipped) == (T0 + timedelta(minutes=20), "coalesced", 2)
    assert late.request_id == result.request_id
    assert queue_depth(redis_client, "square").ready == 1


def test_once_on_a_tick_exactly_claims_that_tick(make_scheduler: MakeScheduler) -> None:
    scheduler, _ = make_scheduler(now=clock(T0), replica_id="a")
    [result] = scheduler.run_once()
    assert (result.tick, result.outcome) == (T0, "enqueued")


# A Redis outage.


def test_a_redis_outage_is_counted_and_survived(tmp_path: Path) -> None:
    # Given a scheduler on its own Redis server
    with RedisServer.start(data_dir=tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url, socket_connect_timeout=1, socket_timeout=1)
        broker = build_broker(Settings(redis_url=server.url), client=client)
        counter, metrics = _counter()
        now = clock(T0 - timedelta(seconds=1))
        scheduler = Scheduler(client, broker, (PAYMENTS,), now=now, replica_id="a", ticks=counter)
        try:
            scheduler.run_due()

            # When the server dies just before a tick
            server.kill()
            now.advance(seconds=1)
            [failed] = scheduler.run_due()

            # Then the tick fails without raising, is counted, and is not retried before its pause
            assert (failed.outcome, failed.tick) == ("error", T0)
            assert _count(metrics, "payments", "error") == 1
            now.advance(seconds=0.5)
            assert scheduler.run_due() == []

            # And once Redis is back, the same tick is handled
            server.restart()
            now.advance(seconds=1)
            [recovered] = scheduler.run_due()
            assert (recovered.outcome, recovered.tick) == ("enqueued", T0)
            assert _messages(client, _request_id(PAYMENTS, T0)) == 1
        finally:
            broker.close()


def test_the_loop_keeps_running_through_a_redis_outage(tmp_path: Path) -> None:
    # Given the scheduler loop on real time, a tick every second, on its own Redis server
    every_second = Schedule("square", "payments", "* * * * * *")
    with RedisServer.start(data_dir=tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url, socket_connect_timeout=1, socket_timeout=1)
        broker = build_broker(Settings(redis_url=server.url), client=client)
        counter, metrics = _counter()
        scheduler = Scheduler(client, broker, (every_second,), replica_id="a", ticks=counter)
        stop = threading.Event()
        loop = threading.Thread(target=scheduler.run, args=(stop,), daemon=True)
        loop.start()
        try:
            wait_until(
                lambda: _count(metrics, "payments", "enqueued") or 0,
                timeout_seconds=5,
                message="no tick enqueued before the outage",
            )

            # When Redis dies for a while, then comes back
            server.kill()
            wait_until(
                lambda: _count(metrics, "payments", "error") or 0,
                timeout_seconds=5,
                message="the outage was not noticed",
            )
            server.restart()

            # Then the loop is still alive and enqueues again (Redis came back empty: no pending sync)
            wait_until(
                lambda: queue_depth(client, "square").ready,
                timeout_seconds=10,
                message="no sync enqueued after Redis came back",
            )
            assert loop.is_alive()
        finally:
            stop.set()
            loop.join(timeout=5)
            broker.close()
        assert not loop.is_alive()


# Configuration.


def _settings(**values: object) -> Settings:
    defaults: dict[str, object] = {
        "square_access_token": None,
        "lightspeed_account_id": None,
        "lightspeed_client_id": None,
        "lightspeed_client_secret": None,
        "lightspeed_refresh_token": None,
        "schedules": {},
    }
    return Settings(**{**defaults, **values})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("schedules", "expected"),
    [
        ({"square.payments": "61 * * * *"}, ["'square.payments'", "invalid cron"]),
        ({"square.items": "every minute"}, ["'square.items'", "expected 5"]),
        ({"square": "* * * *"}, ["'square'", "expected 5"]),
        ({"square": "0 0 30 2 *"}, ["'square'", "never fires"]),
        ({"square.refunds": "*/5 * * * *"}, ["'square.refunds'", "payments, items, customers"]),
        ({"shopify": "*/5 * * * *"}, ["'shopify'", "square, lightspeed"]),
        ({"lightspeed.payments": "*/5 * * * *"}, ["'lightspeed.payments'", "sales, items"]),
    ],
)
def test_a_bad_schedule_fails_at_start_naming_the_variable_and_the_entry(
    schedules: dict[str, str], expected: list[str]
) -> None:
    with pytest.raises(ConfigError) as error:
        parse_schedules(_settings(schedules=schedules, square_access_token="t"))
    assert "POSSYNC_SCHEDULES" in str(error.value)
    for fragment in expected:
        assert fragment in str(error.value)


def test_stream_entries_override_their_source_and_seconds_are_the_sixth_field() -> None:
    schedules = parse_schedules(
        _settings(
            schedules={
                "square": "*/5 * * * *",
                "square.items": "0 * * * *",
                "lightspeed.sales": "* * * * * */30",
            }
        )
    )
    assert schedules == (
        Schedule("square", "payments", "*/5 * * * *"),
        Schedule("square", "items", "0 * * * *"),
        Schedule("square", "customers", "*/5 * * * *"),
        Schedule("lightspeed", "sales", "* * * * * */30"),
    )
    assert schedules[3].next_after(T0) == T0 + timedelta(seconds=30)


def test_the_default_schedules_every_stream_of_each_source_with_credentials() -> None:
    square_only = parse_schedules(_settings(square_access_token="t"))
    assert [(s.name, s.cron) for s in square_only] == [
        ("square.payments", "*/15 * * * *"),
        ("square.items", "*/15 * * * *"),
        ("square.customers", "*/15 * * * *"),
    ]
    lightspeed_only = parse_schedules(
        _settings(
            lightspeed_account_id="1",
            lightspeed_client_id="c",
            lightspeed_client_secret="s",
            lightspeed_refresh_token="r",
        )
    )
    assert [s.name for s in lightspeed_only] == ["lightspeed.sales", "lightspeed.items"]
    # Half a Lightspeed configuration is no configuration.
    partial = parse_schedules(_settings(square_access_token="t", lightspeed_account_id="1"))
    assert [s.source for s in partial] == ["square"] * 3
    with pytest.raises(ConfigError, match="POSSYNC_SCHEDULES"):
        parse_schedules(_settings())


# The command, as processes.


def test_the_command_refuses_a_bad_schedule(redis_url: str) -> None:
    result = run_scheduler_once(redis_url, {"square.orders": "*/5 * * * *"})
    assert result.returncode == 2
    assert "POSSYNC_SCHEDULES" in result.stderr
    assert "payments, items, customers" in result.stderr


def test_once_after_downtime_sends_one_catch_up_sync_per_stream(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # Given both streams last handled ten ticks ago
    ten_ago = PAYMENTS.latest_at_or_before(datetime.now(UTC)) - timedelta(minutes=50)
    for schedule in (PAYMENTS, ITEMS):
        redis_client.set(LAST_KEY.format(schedule=schedule.name), _iso(ten_ago))

    # When `possync scheduler --once` runs
    result = run_scheduler_once(redis_url, {"square.payments": EVERY_5_MIN, "square.items": EVERY_5_MIN})

    # Then it exits 0 having sent exactly one sync per stream, for the latest tick, the others skipped
    assert result.returncode == 0, result.stderr
    assert queue_depth(redis_client, "square").ready == 2
    ticks = {
        line["schedule"]: line for line in _json_lines(result.stderr) if line["event"] == "scheduler_tick"
    }
    assert set(ticks) == {PAYMENTS.name, ITEMS.name}
    for schedule in (PAYMENTS, ITEMS):
        latest = _parse(redis_client.get(LAST_KEY.format(schedule=schedule.name)))
        # Ten ticks later, or eleven if one more came while the command started.
        assert latest in (ten_ago + timedelta(minutes=50), ten_ago + timedelta(minutes=55))
        assert _messages(redis_client, _request_id(schedule, latest)) == 1
        assert ticks[schedule.name]["outcome"] == "enqueued"
        assert ticks[schedule.name]["ticks_skipped"] == (latest - ten_ago) // timedelta(minutes=5) - 1


def _json_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for raw in text.splitlines():
        with contextlib.suppress(ValueError):
            lines.append(json.loads(raw))
    return lines


def _parse(value: Any) -> datetime:
    return datetime.strptime(value.decode(), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


# Replicas as processes: the acceptance test.

EVERY_2_S = "* * * * * */2"


@dataclass(frozen=True)
class Snapshot:
    """Both replicas' tick counters and Redis' claims and sends, read while no tick was under way."""

    claims: dict[str, dict[datetime, str]]
    sent: dict[str, int]
    metrics: tuple[Tally[tuple[str, str]], Tally[tuple[str, str]]]


def _sent(client: redis.Redis, schedule: Schedule) -> int:
    pattern = REQUEST_KEY.format(request_id=f"tick-{schedule.name}-*")
    return sum(int(client.hlen(key)) for key in client.scan_iter(match=pattern, count=1000))


def _snapshot(
    client: redis.Redis, streams: list[Schedule], replicas: tuple[SchedulerProcess, SchedulerProcess]
) -> Snapshot | None:
    """A snapshot where the counters agree with Redis, or None (a tick was under way while reading).

    Agreement: each replica counted every tick from the first it handled on, once (it sent it,
    coalesced it, or found it taken); the sends counted by both are the syncs in Redis; and every
    claimed tick was sent or coalesced by exactly one replica.
    """
    before = {s.stream: claimed_ticks(client, s) for s in streams}
    counters = replicas[0].ticks_metric(), replicas[1].ticks_metric()
    sent = {s.stream: _sent(client, s) for s in streams}
    after = {s.stream: claimed_ticks(client, s) for s in streams}
    first, second = counters
    if first is None or second is None or before != after:
        return None
    for s in streams:
        claims = after[s.stream]
        for replica, metrics in zip(replicas, (first, second), strict=True):
            since = replica.first_tick(s.name)
            seen = sum(metrics[(s.stream, outcome)] for outcome in ("enqueued", "coalesced", "taken"))
            if since is None or seen != sum(1 for tick in claims if tick >= since):
                return None
        if first[(s.stream, "enqueued")] + second[(s.stream, "enqueued")] != sent[s.stream]:
            return None
        if sum(m[(s.stream, o)] for m in (first, second) for o in ("enqueued", "coalesced")) != len(claims):
            return None
    return Snapshot(claims=after, sent=sent, metrics=(first, second))


def _first_syncs_finished(client: redis.Redis, streams: list[Schedule]) -> bool:
    return all(
        request_progress(client, _request_id(s, min(claimed_ticks(client, s)))).finished for s in streams
    )


def _claimed_after(client: redis.Redis, streams: list[Schedule], moment: datetime) -> int:
    """The fewest ticks after ``moment`` claimed by any of ``streams``."""
    return min(sum(1 for tick in claimed_ticks(client, s) if tick > moment) for s in streams)


def test_two_scheduler_processes_send_exactly_one_sync_per_stream_per_tick(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    schedules = {"square.payments": EVERY_2_S, "square.items": EVERY_2_S}
    streams = [Schedule("square", "payments", EVERY_2_S), Schedule("square", "items", EVERY_2_S)]
    consumer = StubSyncConsumer(redis_url)
    ports = free_port(), free_port()
    try:
        # Given two scheduler processes on one Redis, a tick every 2 s for two streams, no worker
        with (
            start_scheduler_process(
                redis_url, schedules, metrics_port=ports[0], log_path=tmp_path / "a.log"
            ) as a,
            start_scheduler_process(
                redis_url, schedules, metrics_port=ports[1], log_path=tmp_path / "b.log"
            ) as b,
        ):
            started = datetime.now(UTC)
            wait_until(
                lambda: all(r.first_tick(s.name) for r in (a, b) for s in streams),
                timeout_seconds=20,
                message="the scheduler processes did not both handle a tick",
            )
            both_running = max(r.first_tick(s.name) or started for r in (a, b) for s in streams)

            # When three ticks pass with both running and no worker consuming
            wait_until(
                lambda: _claimed_after(redis_client, streams, both_running) >= 2,
                timeout_seconds=20,
                message="ticks were not claimed",
            )
            # and then a worker finishes every sync at once, for three more ticks
            consumer.start()
            wait_until(
                lambda: _first_syncs_finished(redis_client, streams),
                timeout_seconds=10,
                message="the worker did not finish the first tick's syncs",
            )
            finished_at = datetime.now(UTC)
            wait_until(
                lambda: _claimed_after(redis_client, streams, finished_at) >= 3,
                timeout_seconds=20,
                message="three ticks were not claimed after the worker started",
            )
            try:
                # (wait_until returns the predicate's first truthy value: a Snapshot)
                snapshot = cast(
                    Snapshot,
                    wait_until(
                        lambda: _snapshot(redis_client, streams, (a, b)),
                        timeout_seconds=10,
                        message="the replicas' tick counters never matched the claims and sends in Redis",
                    ),
                )
            except AssertionError as exc:
                counts = {
                    s.name: (len(claimed_ticks(redis_client, s)), _sent(redis_client, s)) for s in streams
                }
                raise AssertionError(
                    f"{exc}\n(claimed, sent) {counts}\na {a.ticks_metric()}\nb {b.ticks_metric()}"
                ) from None
            replica_ids = {a.replica_id(), b.replica_id()}
            first_ticks = {s.name: max(r.first_tick(s.name) or started for r in (a, b)) for s in streams}

            # Then SIGTERM stops both cleanly
            assert a.stop() == 0, a.log_tail()
            assert b.stop() == 0, b.log_tail()

        for s in streams:
            _check_one_sync_per_tick(redis_client, consumer, s, finished_at, replica_ids)
            first, second = snapshot.metrics
            # and at the snapshot the counters of both replicas added up to the claims and sends
            claimed = len(snapshot.claims[s.stream])
            assert first[(s.stream, "enqueued")] + second[(s.stream, "enqueued")] == snapshot.sent[s.stream]
            assert (
                sum(m[(s.stream, o)] for m in (first, second) for o in ("enqueued", "coalesced")) == claimed
            )
            # and each tick both replicas ran for was taken by one of them (3 or more: all of phase 2)
            both = sum(1 for tick in snapshot.claims[s.stream] if tick >= first_ticks[s.name])
            assert both >= 3
            assert first[(s.stream, "taken")] + second[(s.stream, "taken")] == both
    finally:
        consumer.close()


def _check_one_sync_per_tick(
    client: redis.Redis,
    consumer: StubSyncConsumer,
    schedule: Schedule,
    finished_at: datetime,
    replica_ids: set[str | None],
) -> None:
    claims = claimed_ticks(client, schedule)
    ticks = sorted(claims)
    first_tick = ticks[0]
    # Every tick from the first on was claimed, by one of the two replicas, none skipped
    expected = [first_tick]
    while len(expected) < len(ticks):
        expected.append(schedule.next_after(expected[-1]))
    assert ticks == expected
    assert set(claims.values()) <= replica_ids
    # The first tick sent a sync; the ticks before the worker finished it coalesced into it
    before = [tick for tick in ticks if tick <= finished_at]
    after = [tick for tick in ticks if tick > finished_at]
    assert len(before) >= 3, before
    assert len(after) >= 3
    assert _messages(client, _request_id(schedule, first_tick)) == 1
    assert [_messages(client, _request_id(schedule, tick)) for tick in before[1:]] == [0] * (len(before) - 1)
    # and every tick after that sent exactly one sync, which the worker received once
    assert [_messages(client, _request_id(schedule, tick)) for tick in after] == [1] * len(after)
    wanted = {_request_id(schedule, tick) for tick in (first_tick, *after)}

    def received() -> Tally[str]:
        return Tally(
            request_id for request_id in consumer.seen() if request_id.startswith(f"tick-{schedule.name}-")
        )

    wait_until(
        lambda: set(received()) == wanted,
        timeout_seconds=10,
        message=f"the worker did not receive every {schedule.name} sync",
    )
    assert received() == dict.fromkeys(wanted, 1)
