"""The sync engine: pages in, validated rows in bounded batches out to the sink, checkpoint after commit.

Source-agnostic: a :class:`StreamSource` (``workers/sources/square_streams.py``,
``workers/sources/lightspeed_streams.py``) says how to read each of its streams and how one raw
record becomes warehouse rows; everything else (rejects, overlapping fetching with loading,
checkpoints, locks, backfill plans) is the same for every source and stream. A record that fails
validation becomes a ``_possync_rejects`` row and the rest still load.

Fetching and loading overlap: the calling thread pages and converts while one writer thread loads
the previous batch (a queue of one batch between them; batching and the writer are in
``workers/batching.py``). An error on either side stops both and propagates; the checkpoint (or the
backfill window's ``done``) is written only after every batch was.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import redis
import structlog
from pydantic import BaseModel

from schemas.messages import BackfillRequest, BackfillWindow
from schemas.settings import Settings
from schemas.tables import REJECTS, table_for
from workers.batching import MAX_REASON_CHARS, Batcher, Sink, Writer, reject_row
from workers.errors import InvalidPayload
from workers.metrics import ROWS_REJECTED
from workers.state import StateStore

__all__ = [
    "Sink",
    "StreamSource",
    "SyncResult",
    "plan_backfill",
    "run_incremental",
    "run_records",
    "run_window",
]

#: Seconds a stream lock outlives a holder that stopped heartbeating.
LOCK_TTL_SECONDS = 60

log = structlog.get_logger()


@dataclass(frozen=True)
class SyncResult:
    """What one run did.

    Attributes:
        stream: the stream synced.
        pages: source pages read.
        rows_read: source records read.
        rows_written: rows written to the stream's table.
        rows_rejected: records that failed validation (written to ``_possync_rejects``).
        batches: sink writes, rejects included.
        coalesced: ``True`` if another sync of the stream held the lock, so this one did nothing.
        seconds: wall time of the run, seconds.
    """

    stream: str
    pages: int = 0
    rows_read: int = 0
    rows_written: int = 0
    rows_rejected: int = 0
    batches: int = 0
    coalesced: bool = False
    seconds: float = 0.0

    def log_fields(self) -> dict[str, Any]:
        """The result as log key/values, without ``stream`` (callers bind it themselves)."""
        return {
            "pages": self.pages,
            "rows_read": self.rows_read,
            "rows_written": self.rows_written,
            "rows_rejected": self.rows_rejected,
            "batches": self.batches,
            "coalesced": self.coalesced,
            "seconds": round(self.seconds, 3),
        }


class StreamSource(Protocol):
    """One source's streams, as the engine reads them."""

    #: The source's name: ``square`` or ``lightspeed`` (checkpoints, locks, tables, rejects).
    name: str
    #: Its streams, in sync order.
    streams: tuple[str, ...]

    def convert(
        self, stream: str, raw: dict[str, Any], synced_at: datetime, message_id: str | None
    ) -> list[BaseModel]:
        """One raw record as rows (possibly none).

        Raises:
            ValueError, TypeError, ArithmeticError: the record is invalid (it becomes a reject).
        """
        ...

    def incremental_pages(self, stream: str, since: datetime | None) -> Iterable[list[dict[str, Any]]]:
        """Pages of the stream's records changed at or after ``since`` (all of them when ``None``)."""
        ...

    def plan_windows(self, request: BackfillRequest) -> tuple[list[BackfillWindow], dict[str, Any]]:
        """A backfill's windows, plus what the plan was made from (shown by ``possync status``)."""
        ...

    def window_pages(self, window: BackfillWindow) -> Iterable[list[dict[str, Any]]]:
        """Pages of one backfill window's records."""
        ...


# Loading.


def _load(
    pages: Iterable[list[dict[str, Any]]],
    *,
    source: StreamSource,
    sink: Sink,
    stream: str,
    scope: str,
    settings: Settings,
    synced_at: datetime,
    message_id: str | None,
) -> SyncResult:
    """Convert every page's records, write them in bounded batches, return the counts."""
    spec = table_for(source.name, stream)
    rows = Batcher(spec, scope, stream, settings.batch_max_rows, settings.batch_max_bytes)
    rejects = Batcher(REJECTS, scope, f"{stream}-rejects", settings.batch_max_rows, settings.batch_max_bytes)
    writer = Writer(sink)
    page_count = rows_read = rejected = 0
    try:
        for page in pages:
            page_count += 1
            for raw in page:
                rows_read += 1
                try:
                    if not isinstance(raw, dict):
                        raise TypeError(f"record is a {type(raw).__name__}, not an object")
                    converted = source.convert(stream, raw, synced_at, message_id)
                except (ValueError, TypeError, ArithmeticError) as exc:
                    rejected += 1
                    ROWS_REJECTED.labels(spec.name).inc()
                    writer.submit(
                        rejects.add(reject_row(source.name, stream, raw, exc, synced_at, message_id))
                    )
                    continue
                for row in converted:
                    writer.submit(rows.add(row.model_dump(mode="json", by_alias=True)))
        writer.submit(rows.flush())
        writer.submit(rejects.flush())
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return SyncResult(
        stream=stream,
        pages=page_count,
        rows_read=rows_read,
        rows_written=writer.written.get(spec.name, 0),
        rows_rejected=rejected,
        batches=writer.batches,
    )


def _utcnow() -> datetime:
    return datetime.now(UTC)


# Entry points the actors call.


def run_incremental(
    *,
    source: StreamSource,
    sink: Sink,
    state: StateStore,
    stream: str,
    settings: Settings,
    message_id: str | None,
    now: Callable[[], datetime] = _utcnow,
) -> SyncResult:
    """Sync what changed in one stream since its checkpoint, under the stream's lock.

    Reads changes since ``checkpoint - incremental_lookback_seconds`` (everything when there is no
    checkpoint), writes them, then sets the checkpoint to this sync's start time.

    Args:
        source: the source to read (its client inside).
        stream: one of ``source.streams``.
        message_id: the Dramatiq message doing this, stored on each row (``_message_id``).
        now: the clock (UTC-aware datetimes).

    Returns:
        The counts; ``coalesced=True`` (and nothing done) if another sync of the stream holds the lock.

    Raises:
        WorkerError: from the source or the sink; the checkpoint is then left where it was.
    """
    if stream not in source.streams:
        raise ValueError(f"unknown {source.name} stream {stream!r}")
    name = source.name
    clock = time.monotonic()
    with state.stream_lock(name, stream, ttl_seconds=LOCK_TTL_SECONDS) as held:
        if not held:
            log.info("incremental_sync_coalesced", source=name, stream=stream)
            return SyncResult(stream=stream, coalesced=True, seconds=time.monotonic() - clock)
        # Taken before the first read: anything changed after it is seen by the next sync.
        started = now()
        previous = state.get_checkpoint(name, stream)
        since = None
        if previous is not None and previous.checkpoint is not None:
            since = previous.checkpoint - timedelta(seconds=settings.incremental_lookback_seconds)
        try:
            result = _load(
                source.incremental_pages(stream, since),
                source=source,
                sink=sink,
                stream=stream,
                scope="incremental",
                settings=settings,
                synced_at=started,
                message_id=message_id,
            )
            state.commit_checkpoint(name, stream, checkpoint=started, started_at=started)
        except Exception as exc:
            _record_error(state, name, stream, exc, now())
            log.warning(
                "incremental_sync_failed",
                source=name,
                stream=stream,
                error_type=type(exc).__name__,
                seconds=round(time.monotonic() - clock, 3),
            )
            raise
    result = _with_seconds(result, time.monotonic() - clock)
    log.info(
        "incremental_sync_done",
        source=name,
        stream=stream,
        since=since.isoformat() if since else None,
        checkpoint=started.isoformat(),
        **result.log_fields(),
    )
    return result


def _record_error(state: StateStore, source: str, stream: str, exc: Exception, at: datetime) -> None:
    try:
        state.record_error(source, stream, error=f"{type(exc).__name__}: {exc}"[:MAX_REASON_CHARS], at=at)
    except redis.RedisError as secondary:  # the original error is the one to raise
        log.warning("stream_error_not_recorded", stream=stream, error_type=type(secondary).__name__)


def _with_seconds(result: SyncResult, seconds: float) -> SyncResult:
    return SyncResult(**{**result.__dict__, "seconds": seconds})


def plan_backfill(
    *, source: StreamSource, state: StateStore, request: BackfillRequest, settings: Settings
) -> list[BackfillWindow]:
    """Split a backfill into windows and record the plan (the caller enqueues the windows).

    Returns:
        The windows, in plan order (see each source's ``plan_windows``).

    Raises:
        InvalidPayload: if ``until`` is not after ``since``.
        WorkerError: from the source (Square's ListLocations).
    """
    if request.until <= request.since:
        raise InvalidPayload(f"backfill {request.backfill_id}: until must be after since")
    windows, made_from = source.plan_windows(request)
    meta = {
        "request_id": request.request_id,
        "source": source.name,
        "since": request.since.isoformat(),
        "until": request.until.isoformat(),
        "window_days": request.window_days,
        "streams": list(request.selected_streams),
        **made_from,
    }
    state.record_plan(request.backfill_id, windows, meta)
    log.info(
        "backfill_planned",
        source=source.name,
        backfill_id=request.backfill_id,
        windows=len(windows),
        **{key: len(value) for key, value in made_from.items() if isinstance(value, list)},
    )
    return windows


def run_window(
    *,
    source: StreamSource,
    sink: Sink,
    state: StateStore,
    window: BackfillWindow,
    settings: Settings,
    message_id: str | None,
    now: Callable[[], datetime] = _utcnow,
) -> SyncResult:
    """Sync one backfill window, then mark it done in the plan (``failed`` if it raises).

    What a window covers is the source's business (``window_pages``). Windows run in parallel and
    take no stream lock: the MERGE's newer-version rule keeps them safe.

    Raises:
        InvalidPayload: a payments window without location or bounds.
        WorkerError: from the source or the sink.
    """
    clock = time.monotonic()
    try:
        result = _load(
            source.window_pages(window),
            source=source,
            sink=sink,
            stream=window.stream,
            scope=window.window_id,
            settings=settings,
            synced_at=now(),
            message_id=message_id,
        )
        state.mark_window(window.backfill_id, window.window_id, "done")
    except Exception as exc:
        try:
            state.mark_window(window.backfill_id, window.window_id, "failed")
        except redis.RedisError as secondary:  # the original error is the one to raise
            log.warning(
                "window_status_not_recorded", window_id=window.window_id, error=type(secondary).__name__
            )
        log.warning(
            "backfill_window_failed",
            backfill_id=window.backfill_id,
            window_id=window.window_id,
            stream=window.stream,
            error_type=type(exc).__name__,
            seconds=round(time.monotonic() - clock, 3),
        )
        raise
    result = _with_seconds(result, time.monotonic() - clock)
    log.info(
        "backfill_window_done",
        source=source.name,
        backfill_id=window.backfill_id,
        window_id=window.window_id,
        stream=window.stream,
        **result.log_fields(),
    )
    return result


def run_records(
    *,
    source: StreamSource,
    sink: Sink,
    stream: str,
    records: list[dict[str, Any]],
    scope: str,
    settings: Settings,
    message_id: str | None,
    now: Callable[[], datetime] = _utcnow,
) -> SyncResult:
    """Write records fetched one by one (a webhook's targeted upsert) through the same conversion,
    rejects and batches as a sync, beside it: no stream lock and no checkpoint. The MERGE's
    newer-version rule keeps a concurrent sync and this upsert consistent whichever lands first.

    Args:
        records: raw records of ``stream``.
        scope: what the records are, for batch ids (e.g. ``upsert:payment:<id>``).

    Raises:
        WorkerError: from the sink.
    """
    clock = time.monotonic()
    result = _load(
        [records],
        source=source,
        sink=sink,
        stream=stream,
        scope=scope,
        settings=settings,
        synced_at=now(),
        message_id=message_id,
    )
    return _with_seconds(result, time.monotonic() - clock)
