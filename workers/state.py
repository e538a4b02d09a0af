"""Sync state in Redis: stream checkpoints, stream locks with a heartbeat, and backfill plans.

Every key lives under ``possync:``. Losing this state costs a re-read, never a wrong row: the
warehouse MERGE is idempotent, so a lost checkpoint only makes the next sync read more.

Keys:

- ``possync:stream:<source>.<stream>`` hash: ``checkpoint``, ``last_success``, ``last_error``,
  ``last_error_at`` (ISO 8601 UTC); ``possync:streams`` is the set of known ``<source>.<stream>``.
- ``possync:lock:<source>.<stream>``: the stream lock (redis-py ``Lock``: a random token + Lua).
- ``possync:backfill:<id>:plan`` JSON (windows, meta); ``possync:backfill:<id>:status`` hash
  ``window_id -> done|failed``; ``possync:backfills`` sorted set of ids scored by creation time.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal

import redis
import structlog
from pydantic import BaseModel, ConfigDict
from redis.exceptions import LockError, LockNotOwnedError, RedisError

from schemas.messages import BackfillWindow

__all__ = [
    "NAMESPACE",
    "BackfillPlan",
    "PlannedWindow",
    "StateStore",
    "StreamState",
    "WindowStatus",
]

#: Prefix of every key possync keeps in Redis.
NAMESPACE = "possync:"

WindowStatus = Literal["pending", "done", "failed"]

_STATUSES: dict[str, WindowStatus] = {"done": "done", "failed": "failed"}

log = structlog.get_logger(__name__)

# Marks a window, except that "failed" never overwrites "done": a redelivered window that fails after
# an earlier run completed it leaves its rows in the warehouse all the same.
_MARK_WINDOW = """
if ARGV[2] == 'failed' and redis.call('HGET', KEYS[1], ARGV[1]) == 'done' then
    return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


class StreamState(BaseModel):
    """What ``possync status`` shows of one stream.

    Attributes:
        source: e.g. ``square``.
        stream: e.g. ``payments``.
        checkpoint: the incremental cursor: the next sync reads changes from here (minus lookback).
        last_success: start time of the last successful sync.
        last_error: the last failure's type and message (cleared by the next success).
        last_error_at: when that failure happened.
    """

    model_config = ConfigDict(frozen=True)

    source: str
    stream: str
    checkpoint: datetime | None = None
    last_success: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None


class PlannedWindow(BaseModel):
    """A window of a backfill plan and how far it got."""

    model_config = ConfigDict(frozen=True)

    window: BackfillWindow
    status: WindowStatus = "pending"


class BackfillPlan(BaseModel):
    """A recorded backfill: its windows with their status, the planner's meta, when it was planned."""

    model_config = ConfigDict(frozen=True)

    backfill_id: str
    created_at: datetime
    meta: dict[str, Any]
    windows: tuple[PlannedWindow, ...]

    def missing(self) -> list[BackfillWindow]:
        """Windows not done yet (pending or failed), in plan order."""
        return [planned.window for planned in self.windows if planned.status != "done"]

    def summary(self) -> dict[str, Any]:
        """Counts for ``possync status``: ``windows``, ``done``, ``failed``, ``missing``, ``created_at``."""
        done = sum(1 for planned in self.windows if planned.status == "done")
        failed = sum(1 for planned in self.windows if planned.status == "failed")
        return {
            "created_at": self.created_at.isoformat(),
            "windows": len(self.windows),
            "done": done,
            "failed": failed,
            "missing": len(self.windows) - done,
        }


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: pass an aware one")
    return moment.astimezone(UTC).isoformat()


def _parse(value: Any) -> datetime | None:
    text = _text(value)
    return datetime.fromisoformat(text) if text else None


def _text(value: Any) -> str | None:
    # Works with clients created with or without ``decode_responses``.
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class StateStore:
    """Checkpoints, stream locks and backfill plans kept in Redis.

    Args:
        client: the Redis client to use (decoded or not: both work).
    """

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._mark_window = client.register_script(_MARK_WINDOW)

    # Checkpoints.

    def get_checkpoint(self, source: str, stream: str) -> StreamState | None:
        """The stream's state, or ``None`` if it never synced nor failed."""
        fields = self._redis.hgetall(self._stream_key(source, stream))
        if not fields:
            return None
        return self._stream_state(source, stream, fields)

    def commit_checkpoint(
        self, source: str, stream: str, *, checkpoint: datetime, started_at: datetime
    ) -> None:
        """Advance the stream's checkpoint after everything it covers was written, and clear its error.

        Args:
            checkpoint: where the next incremental sync starts reading (before lookback).
            started_at: start time of the sync that just succeeded.
        """
        name = f"{source}.{stream}"
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(
            self._stream_key(source, stream),
            mapping={"checkpoint": _iso(checkpoint), "last_success": _iso(started_at)},
        )
        pipe.hdel(self._stream_key(source, stream), "last_error", "last_error_at")
        pipe.sadd(NAMESPACE + "streams", name)
        pipe.execute()

    def record_error(self, source: str, stream: str, *, error: str, at: datetime) -> None:
        """Remember the stream's last failure (shown by ``possync status``); the checkpoint stays.

        Args:
            error: a one-line description; it must carry no secret.
            at: when the failure happened.
        """
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self._stream_key(source, stream), mapping={"last_error": error, "last_error_at": _iso(at)})
        pipe.sadd(NAMESPACE + "streams", f"{source}.{stream}")
        pipe.execute()

    def list_streams(self) -> dict[str, StreamState]:
        """Every known stream's state, by ``<source>.<stream>``."""
        names = sorted(_text(name) or "" for name in self._redis.smembers(NAMESPACE + "streams"))
        states: dict[str, StreamState] = {}
        for name in names:
            source, _, stream = name.partition(".")
            fields = self._redis.hgetall(self._stream_key(source, stream))
            if fields:
                states[name] = self._stream_state(source, stream, fields)
        return states

    # Rows written, per table (``possync_rows_synced_total``).

    def add_rows_synced(self, table: str, rows: int) -> None:
        """Count rows a batch wrote to ``table`` (one HINCRBY: shared by every worker, kept by Redis)."""
        if rows:
            self._redis.hincrby(NAMESPACE + "rows_synced", table, rows)

    def rows_synced(self) -> dict[str, int]:
        """Rows written per table since Redis was created."""
        counts = self._redis.hgetall(NAMESPACE + "rows_synced")
        return {_text(table) or "": int(value) for table, value in counts.items()}

    # Locks.

    def is_locked(self, source: str, stream: str) -> bool:
        """Whether a sync of the stream holds its lock now (someone is syncing it)."""
        return bool(self._redis.exists(self._lock_key(source, stream)))

    @staticmethod
    def _lock_key(source: str, stream: str) -> str:
        return NAMESPACE + f"lock:{source}.{stream}"

    @contextmanager
    def stream_lock(self, source: str, stream: str, *, ttl_seconds: float = 60) -> Iterator[bool]:
        """Hold the stream's lock without waiting; yield whether it was acquired.

        While held, a heartbeat thread resets the lock's TTL every ``ttl_seconds / 3``, so a long
        sync keeps it and a killed holder's lock expires within ``ttl_seconds``.

        Args:
            ttl_seconds: how long the lock outlives a holder that stopped beating, seconds.

        Yields:
            ``True`` if this caller holds the lock, ``False`` if someone else does (coalesce).
        """
        # thread_local=False: the heartbeat thread must see the token the caller's thread acquired.
        lock = self._redis.lock(
            self._lock_key(source, stream), timeout=ttl_seconds, blocking=False, thread_local=False
        )
        if not lock.acquire(blocking=False):
            yield False
            return
        stop = threading.Event()
        beat = threading.Thread(
            target=_heartbeat,
            args=(lock, stop, ttl_seconds / 3, f"{source}.{stream}"),
            name=f"possync-lock-{source}.{stream}",
            daemon=True,
        )
        beat.start()
        try:
            yield True
        finally:
            stop.set()
            beat.join()
            try:
                lock.release()
            except LockError:
                # Expired (or taken over) while we held it: nothing of ours to release.
                log.warning("stream_lock_lost", stream=f"{source}.{stream}")

    # Backfill plans.

    def record_plan(self, backfill_id: str, windows: list[BackfillWindow], meta: dict[str, Any]) -> None:
        """Record (or re-record, on redelivery) a backfill's windows; statuses already set are kept.

        Args:
            backfill_id: the backfill's id.
            windows: every window of the plan, in order.
            meta: what the plan was made from (JSON-serialisable), shown by ``possync status``.
        """
        for window in windows:
            if window.backfill_id != backfill_id:
                raise ValueError(f"window {window.window_id} belongs to backfill {window.backfill_id}")
        document = {
            "meta": meta,
            "windows": [window.model_dump(mode="json") for window in windows],
        }
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(self._plan_key(backfill_id), json.dumps(document))
        # NX: a re-recorded plan keeps its original creation time.
        pipe.zadd(NAMESPACE + "backfills", {backfill_id: datetime.now(UTC).timestamp()}, nx=True)
        pipe.execute()

    def mark_window(self, backfill_id: str, window_id: str, status: Literal["done", "failed"]) -> None:
        """Set a window's status (``failed`` never overwrites ``done``)."""
        if status not in ("done", "failed"):
            raise ValueError(f"unknown window status {status!r}")
        self._mark_window(keys=[self._status_key(backfill_id)], args=[window_id, status])

    def get_plan(self, backfill_id: str) -> BackfillPlan | None:
        """The plan with each window's status, or ``None`` if no such backfill was recorded."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.get(self._plan_key(backfill_id))
        pipe.hgetall(self._status_key(backfill_id))
        pipe.zscore(NAMESPACE + "backfills", backfill_id)
        raw, statuses, score = pipe.execute()
        if raw is None:
            return None
        document = json.loads(raw)
        status_by_id = {_text(key): _text(value) for key, value in statuses.items()}
        windows = tuple(
            PlannedWindow(
                window=BackfillWindow.model_validate(window),
                status=_STATUSES.get(status_by_id.get(window["window_id"]) or "", "pending"),
            )
            for window in document["windows"]
        )
        created_at = datetime.fromtimestamp(score, UTC) if score is not None else datetime.now(UTC)
        return BackfillPlan(
            backfill_id=backfill_id, created_at=created_at, meta=document["meta"], windows=windows
        )

    def list_backfills(self) -> list[BackfillPlan]:
        """Every recorded backfill, oldest first."""
        ids = self._redis.zrange(NAMESPACE + "backfills", 0, -1)
        plans = (self.get_plan(_text(backfill_id) or "") for backfill_id in ids)
        return [plan for plan in plans if plan is not None]

    def latest_backfill(self, source: str | None = None) -> BackfillPlan | None:
        """The most recently created backfill (of ``source``, if given), or ``None``."""
        if source is None:
            ids = self._redis.zrange(NAMESPACE + "backfills", -1, -1)
            return self.get_plan(_text(ids[0]) or "") if ids else None
        for backfill_id in reversed(self._redis.zrange(NAMESPACE + "backfills", 0, -1)):
            plan = self.get_plan(_text(backfill_id) or "")
            # Plans recorded before sources were named in them are Square's.
            if plan is not None and plan.meta.get("source", "square") == source:
                return plan
        return None

    def missing_windows(self, backfill_id: str) -> list[BackfillWindow]:
        """The windows of a backfill that are not done (for ``possync backfill --resume``).

        Raises:
            KeyError: if no such backfill was recorded.
        """
        plan = self.get_plan(backfill_id)
        if plan is None:
            raise KeyError(f"no backfill {backfill_id!r}")
        return plan.missing()

    # Keys and decoding.

    @staticmethod
    def _stream_key(source: str, stream: str) -> str:
        if "." in source or not source or not stream:
            raise ValueError(f"bad stream name {source!r}.{stream!r}")
        return NAMESPACE + f"stream:{source}.{stream}"

    @staticmethod
    def _plan_key(backfill_id: str) -> str:
        return NAMESPACE + f"backfill:{backfill_id}:plan"

    @staticmethod
    def _status_key(backfill_id: str) -> str:
        return NAMESPACE + f"backfill:{backfill_id}:status"

    @staticmethod
    def _stream_state(source: str, stream: str, fields: Any) -> StreamState:
        decoded = {_text(key): value for key, value in fields.items()}
        return StreamState(
            source=source,
            stream=stream,
            checkpoint=_parse(decoded.get("checkpoint")),
            last_success=_parse(decoded.get("last_success")),
            last_error=_text(decoded.get("last_error")),
            last_error_at=_parse(decoded.get("last_error_at")),
        )


def _heartbeat(lock: Any, stop: threading.Event, interval_seconds: float, name: str) -> None:
    """Reset the lock's TTL every ``interval_seconds`` until ``stop`` is set."""
    while not stop.wait(interval_seconds):
        try:
            lock.reacquire()
        except LockNotOwnedError:
            # The lock expired (the process stalled past its TTL) and may be someone else's now.
            log.warning("stream_lock_lost", stream=name)
            return
        except RedisError as exc:
            # Keep beating: a blip shorter than the TTL must not cost the lock.
            log.warning("stream_lock_heartbeat_failed", stream=name, error=type(exc).__name__)
