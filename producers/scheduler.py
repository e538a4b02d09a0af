"""The scheduler: one incremental sync per stream per cron tick, however many replicas run.

Each scheduled stream ("<source>.<stream>", from ``POSSYNC_SCHEDULES``, UTC) is handled at each
tick T of its cron expression:

1. Claim: ``SET possync:scheduler:tick:<source>.<stream>:<T> <replica> NX EX <ttl>``. Tick keys
   are named by the tick's time, not by anyone's clock, so replicas whose clocks differ slightly
   still contend for the same key and only one wins; the others count the tick ``taken``.
2. Coalesce: the winner sends nothing while the stream's previous scheduled sync is unfinished
   (a message of its request still ``pending`` in the request-tracking hash: queued, delayed,
   retrying or running) or while the stream lock is held (a sync from anywhere is running).
3. Otherwise enqueue one :class:`~schemas.messages.SyncRequest` with request id
   ``tick-<source>.<stream>-<YYYYMMDDTHHMMSSZ>`` and remember it for step 2 of the next tick.

The last tick handled per stream is kept in Redis and only moves forward, so a restart resumes
where the replicas left off: after downtime only the latest due tick is handled (one catch-up
sync per stream, however many ticks were missed); the first start ever begins at the next tick.

Redis keys (all under ``possync:scheduler:``):

- ``tick:<source>.<stream>:<YYYY-MM-DDTHH:MM:SSZ>``: the claim, valued with the winner's replica
  id, expiring after two intervals of the schedule plus a minute.
- ``last:<source>.<stream>``: the latest tick handled (``YYYY-MM-DDTHH:MM:SSZ``), forward only.
- ``pending:<source>.<stream>``: the request id of the stream's last scheduled sync.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any, Literal

import dramatiq
import redis
import structlog
from prometheus_client import Counter, start_http_server

from producers.enqueue import enqueue
from producers.schedules import Schedule, parse_schedules
from schemas.messages import SyncRequest, routes_for
from schemas.settings import ConfigError, Settings
from workers.broker import REQUEST_KEY, REQUEST_TTL_SECONDS
from workers.metrics import SCHEDULER_TICKS
from workers.metrics_state import process_registry
from workers.state import NAMESPACE, StateStore

__all__ = [
    "LAST_KEY",
    "PENDING_KEY",
    "TICK_KEY",
    "Outcome",
    "Scheduler",
    "TickResult",
    "run_scheduler",
]

#: Claim of one tick of one schedule: ``SET NX``, valued with the winning replica's id.
TICK_KEY = NAMESPACE + "scheduler:tick:{schedule}:{tick}"
#: The latest tick handled of one schedule (moves forward only).
LAST_KEY = NAMESPACE + "scheduler:last:{schedule}"
#: The request id of one schedule's last enqueued sync.
PENDING_KEY = NAMESPACE + "scheduler:pending:{schedule}"
#: The longest the loop sleeps at once, seconds: stop signals and clock jumps are noticed this fast.
MAX_SLEEP_SECONDS = 1.0
#: Bounds of the pause before a schedule whose tick hit a Redis error tries again, seconds.
RETRY_MIN_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0
#: Redis client deadlines, seconds: a Redis that stops answering is an error at a tick, not a hang.
REDIS_CONNECT_TIMEOUT_SECONDS = 5.0
REDIS_SOCKET_TIMEOUT_SECONDS = 10.0

_TICK_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_COMPACT_FORMAT = "%Y%m%dT%H%M%SZ"

Outcome = Literal["enqueued", "coalesced", "taken", "error"]

# KEYS: last, pending. ARGV: tick (fixed-width UTC text, so string order is time order), request id
# ("" to leave the pending record alone), pending TTL in seconds.
_RECORD = """
local last = redis.call('GET', KEYS[1])
if not last or last < ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[1])
end
if ARGV[2] ~= '' then
    redis.call('SET', KEYS[2], ARGV[2], 'EX', tonumber(ARGV[3]))
end
return 1
"""

log = structlog.get_logger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _format_tick(tick: datetime) -> str:
    return tick.astimezone(UTC).strftime(_TICK_FORMAT)


def _parse_tick(text: str) -> datetime:
    return datetime.strptime(text, _TICK_FORMAT).replace(tzinfo=UTC)


@dataclass(frozen=True)
class TickResult:
    """What one replica did at one tick of one schedule.

    Attributes:
        schedule: ``<source>.<stream>``.
        tick: the tick handled (``None`` if an error struck before it was known).
        outcome: ``enqueued``, ``coalesced`` (claimed, previous sync unfinished or stream locked),
            ``taken`` (another replica claimed it) or ``error`` (Redis failed; tried again later).
        request_id: the sync's request id (``enqueued``), or the one it coalesced into.
        reason: why it coalesced, or the error.
        ticks_skipped: due ticks passed over in favour of this one (catch-up after downtime).
    """

    schedule: str
    tick: datetime | None
    outcome: Outcome
    request_id: str | None = None
    reason: str | None = None
    ticks_skipped: int = 0


@dataclass
class _Slot:
    """One schedule's progress in this replica."""

    schedule: Schedule
    #: The next tick to act on; ``None`` until the last handled tick was read from Redis.
    next_tick: datetime | None = None
    failures: int = 0
    retry_at: datetime | None = None


class Scheduler:
    """Claims and handles the due ticks of some schedules; the loop of ``possync scheduler``.

    Args:
        client: Redis client (the broker's, or one on the same server).
        broker: the broker that sends (``workers.broker.build_broker``), with request tracking.
        schedules: what to schedule (:func:`parse_schedules`).
        now: the clock (UTC, aware); tests inject one.
        replica_id: this replica's name in tick claims (default: host, pid and a random suffix).
        ticks: the counter of ticks by source, stream and outcome (tests inject a fresh one).
    """

    def __init__(
        self,
        client: redis.Redis,
        broker: dramatiq.Broker,
        schedules: Sequence[Schedule],
        *,
        now: Callable[[], datetime] = _utc_now,
        replica_id: str | None = None,
        ticks: Counter = SCHEDULER_TICKS,
    ) -> None:
        if not schedules:
            raise ValueError("nothing to schedule")
        self._redis = client
        self._state = StateStore(client)
        self._broker = broker
        self._now = now
        self._ticks = ticks
        self.replica_id = replica_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._slots = [_Slot(schedule) for schedule in schedules]
        self._record = client.register_script(_RECORD)
        for schedule in schedules:
            # Every series exists from the start, at zero, so rates and alerts see it.
            for outcome in ("enqueued", "coalesced", "taken"):
                ticks.labels(source=schedule.source, stream=schedule.stream, outcome=outcome)

    @property
    def schedules(self) -> tuple[Schedule, ...]:
        """The schedules this scheduler handles."""
        return tuple(slot.schedule for slot in self._slots)

    def run_due(self, now: datetime | None = None) -> list[TickResult]:
        """Handle every schedule's due tick (at most one each: the latest), never raising on Redis errors.

        A schedule seen for the first time starts after its last handled tick in Redis or, if it
        has none, after ``now``. A schedule whose tick failed is tried again after a pause
        (doubling from 1 s to 30 s), at the latest tick due by then.
        """
        return self._run(now or self._now(), at_or_before=False)

    def run_once(self, now: datetime | None = None) -> list[TickResult]:
        """Handle the ticks due now and stop (``possync scheduler --once``).

        Due means after the schedule's last handled tick and at or before ``now``; a schedule with
        no record gets the tick at or just before ``now``.
        """
        for slot in self._slots:
            slot.next_tick, slot.retry_at = None, None
        return self._run(now or self._now(), at_or_before=True)

    def seconds_until_due(self, now: datetime | None = None) -> float:
        """How long until the next schedule is due (0 if one is), in seconds."""
        now = now or self._now()
        waits = []
        for slot in self._slots:
            due = slot.retry_at or slot.next_tick
            waits.append(0.0 if due is None else (due - now).total_seconds())
        return max(0.0, min(waits))

    def run(self, stop: threading.Event) -> None:
        """Handle ticks as they come until ``stop`` is set.

        Sleeps until the earliest due tick, but never longer than :data:`MAX_SLEEP_SECONDS` at a
        time, so that a stop or a clock jump is noticed within a second.
        """
        log.info(
            "scheduler_started",
            replica_id=self.replica_id,
            schedules={slot.schedule.name: slot.schedule.cron for slot in self._slots},
        )
        while not stop.is_set():
            self.run_due()
            stop.wait(min(self.seconds_until_due(), MAX_SLEEP_SECONDS))
        log.info("scheduler_stopped", replica_id=self.replica_id)

    # One schedule.

    def _run(self, now: datetime, *, at_or_before: bool) -> list[TickResult]:
        results = []
        for slot in self._slots:
            # A retry time further off than the longest pause means the clock went back: retry now.
            if slot.retry_at is not None and timedelta(0) < slot.retry_at - now <= timedelta(
                seconds=RETRY_MAX_SECONDS
            ):
                continue
            try:
                result = self._run_slot(slot, now, at_or_before=at_or_before)
            except (redis.RedisError, dramatiq.errors.BrokerError) as exc:
                result = self._failed(slot, now, exc)
            else:
                slot.failures, slot.retry_at = 0, None
            if result is not None:
                results.append(result)
        return results

    def _run_slot(self, slot: _Slot, now: datetime, *, at_or_before: bool) -> TickResult | None:
        schedule = slot.schedule
        if slot.next_tick is None:
            last = self._last(schedule)
            if last is not None:
                slot.next_tick = schedule.next_after(last)
            elif at_or_before:
                slot.next_tick = schedule.latest_at_or_before(now)
            else:
                # First start ever: begin with the next tick rather than one already past.
                slot.next_tick = schedule.next_after(now)
        if now < slot.next_tick:
            return None
        last = self._last(schedule)
        tick = schedule.latest_at_or_before(now)
        if last is not None and last >= tick:
            # Another replica already handled it (and recorded it before this one looked).
            result = TickResult(schedule.name, tick, "taken", reason="already_handled")
        else:
            # Ticks another replica handled are not ours to count as missed.
            start = slot.next_tick if last is None else max(slot.next_tick, schedule.next_after(last))
            skipped = schedule.count_between(start, tick)
            if skipped:
                log.warning(
                    "scheduler_ticks_skipped",
                    schedule=schedule.name,
                    ticks_skipped=skipped,
                    first_skipped=_format_tick(start),
                    catch_up_tick=_format_tick(tick),
                )
            result = self._handle(schedule, tick, skipped)
        # Only now: a tick whose handling raised stays due, and is tried again.
        slot.next_tick = schedule.next_after(tick)
        self._count(schedule, result.outcome)
        log.info(
            "scheduler_tick",
            schedule=schedule.name,
            tick=_format_tick(tick),
            outcome=result.outcome,
            request_id=result.request_id,
            reason=result.reason,
            ticks_skipped=result.ticks_skipped,
            replica_id=self.replica_id,
        )
        return result

    def _last(self, schedule: Schedule) -> datetime | None:
        """The latest tick of ``schedule`` handled by any replica, from Redis."""
        text = _text(self._redis.get(LAST_KEY.format(schedule=schedule.name)))
        return _parse_tick(text) if text else None

    def _handle(self, schedule: Schedule, tick: datetime, skipped: int) -> TickResult:
        name = schedule.name
        if not self._claim(schedule, tick):
            return TickResult(name, tick, "taken", ticks_skipped=skipped)
        request_id = f"tick-{name}-{tick.strftime(_COMPACT_FORMAT)}"
        # Sent by an earlier try at this tick that failed before recording it: record it now.
        if not self._redis.exists(REQUEST_KEY.format(request_id=request_id)):
            busy = self._busy(schedule)
            if busy is not None:
                previous, reason = busy
                self._record_tick(schedule, tick, None)
                return TickResult(name, tick, "coalesced", previous, reason, skipped)
            payload = SyncRequest(request_id=request_id, source=schedule.source, stream=schedule.stream)
            enqueue(self._broker, routes_for(schedule.source).sync, payload)
        self._record_tick(schedule, tick, request_id)
        return TickResult(name, tick, "enqueued", request_id, ticks_skipped=skipped)

    def _claim(self, schedule: Schedule, tick: datetime) -> bool:
        """Whether this replica holds the tick (claimed now, or by an earlier try that then failed)."""
        key = TICK_KEY.format(schedule=schedule.name, tick=_format_tick(tick))
        # Long enough that no replica can still find this tick due once the key is gone.
        interval = (schedule.next_after(tick) - tick).total_seconds()
        ttl_seconds = math.ceil(2 * interval) + 60
        if self._redis.set(key, self.replica_id, nx=True, ex=ttl_seconds):
            return True
        return _text(self._redis.get(key)) == self.replica_id

    def _busy(self, schedule: Schedule) -> tuple[str | None, str] | None:
        """``(request id, reason)`` if the stream must not get another sync now, else ``None``."""
        previous = _text(self._redis.get(PENDING_KEY.format(schedule=schedule.name)))
        if previous:
            states = self._redis.hvals(REQUEST_KEY.format(request_id=previous))
            if any(_text(state) == "pending" for state in states):
                return previous, "previous_sync_unfinished"
        if self._state.is_locked(schedule.source, schedule.stream):
            return None, "stream_locked"
        return None

    def _record_tick(self, schedule: Schedule, tick: datetime, request_id: str | None) -> None:
        self._record(
            keys=[LAST_KEY.format(schedule=schedule.name), PENDING_KEY.format(schedule=schedule.name)],
            args=[_format_tick(tick), request_id or "", REQUEST_TTL_SECONDS],
        )

    def _failed(self, slot: _Slot, now: datetime, exc: Exception) -> TickResult:
        slot.failures += 1
        pause = min(RETRY_MAX_SECONDS, RETRY_MIN_SECONDS * 2 ** (slot.failures - 1))
        slot.retry_at = now + timedelta(seconds=pause)
        self._count(slot.schedule, "error")
        log.warning(
            "scheduler_tick_failed",
            schedule=slot.schedule.name,
            tick=_format_tick(slot.next_tick) if slot.next_tick else None,
            error_type=type(exc).__name__,
            error=str(exc),
            retry_in_seconds=pause,
        )
        return TickResult(slot.schedule.name, slot.next_tick, "error", reason=type(exc).__name__)

    def _count(self, schedule: Schedule, outcome: str) -> None:
        self._ticks.labels(source=schedule.source, stream=schedule.stream, outcome=outcome).inc()


def _install_stop_handlers(stop: threading.Event) -> Callable[[], None]:
    """Make SIGTERM and SIGINT set ``stop``; returns a function that puts the old handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("scheduler_stopping", signal=signal.Signals(signum).name)
        stop.set()

    signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT)
    previous = {signum: signal.signal(signum, handle) for signum in signals}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore


def run_scheduler(settings: Settings, *, once: bool) -> int:
    """``possync scheduler``: run until SIGTERM/SIGINT (exit 0), or handle the due ticks once.

    Args:
        settings: possync settings (``POSSYNC_SCHEDULES``, Redis, scheduler metrics endpoint).
        once: handle the ticks due now and return instead of running on.

    Returns:
        The exit status: 0, or 1 when ``once`` met a Redis error.

    Raises:
        ConfigError: for a bad ``POSSYNC_SCHEDULES`` (or none at all), before anything starts.
    """
    from workers.broker import build_broker

    schedules = parse_schedules(settings)
    client = redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_SECONDS,
        socket_timeout=REDIS_SOCKET_TIMEOUT_SECONDS,
    )
    broker = build_broker(settings, client=client)
    try:
        scheduler = Scheduler(client, broker, schedules)
        if once:
            results = scheduler.run_once()
            return 1 if any(result.outcome == "error" for result in results) else 0
        server = None
        if settings.scheduler_metrics_port:
            host, port = settings.scheduler_metrics_host, settings.scheduler_metrics_port
            try:
                registry = process_registry(
                    client, heartbeat_timeout_seconds=settings.worker_heartbeat_timeout_seconds
                )
                server, _thread = start_http_server(port, addr=host, registry=registry)
            except OSError as exc:
                raise ConfigError(
                    f"cannot serve /metrics on {host}:{port} (POSSYNC_SCHEDULER_METRICS_HOST/PORT; "
                    f"0 turns it off): {exc}"
                ) from None
        stop = threading.Event()
        restore = _install_stop_handlers(stop)
        try:
            scheduler.run(stop)
        finally:
            restore()
            if server is not None:
                server.shutdown()
        return 0
    finally:
        broker.close()
