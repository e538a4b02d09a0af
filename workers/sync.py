"""The sync engine: pages in, validated rows in bounded batches out to the sink, checkpoint after commit.

Source-agnostic in its loop: per-stream readers and converters (``_CONVERTERS``) say how to read a stream
from the Square client and how to turn one raw record into warehouse rows; everything else (rejects,
overlapping fetching with loading, checkpoints, locks, backfill plans) is the same for every stream.
A record that fails validation becomes a ``_possync_rejects`` row and the rest still load.

Fetching and loading overlap: the calling thread pages and converts while one writer thread loads
the previous batch (a queue of one batch between them; batching and the writer are in
``workers/batching.py``). An error on either side stops both and propagates; the checkpoint (or the
backfill window's ``done``) is written only after every batch was.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
import structlog
from pydantic import BaseModel

from schemas.messages import BackfillRequest, BackfillWindow
from schemas.settings import Settings
from schemas.square import (
    SquareCatalogObject,
    SquareCustomer,
    SquarePayment,
    customer_row,
    item_rows,
    payment_row,
)
from schemas.tables import REJECTS, table_for
from workers.batching import MAX_REASON_CHARS, Batcher, Sink, Writer, reject_row
from workers.errors import InvalidPayload
from workers.sources.square import SquareClient, rfc3339
from workers.state import StateStore

__all__ = ["SOURCE", "Sink", "SyncResult", "plan_backfill", "run_incremental", "run_window"]

#: The source this engine's adapters read.
SOURCE = "square"
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


# Per-stream adapters: how to read a stream and how one raw record becomes rows.

Convert = Callable[[dict[str, Any], datetime, "str | None"], list[BaseModel]]


def _payment(raw: dict[str, Any], synced_at: datetime, message_id: str | None) -> list[BaseModel]:
    return [payment_row(SquarePayment.model_validate(raw), synced_at=synced_at, message_id=message_id)]


def _item(raw: dict[str, Any], synced_at: datetime, message_id: str | None) -> list[BaseModel]:
    # Non-ITEM objects and items without variations yield no row; that is not a rejection.
    return list(
        item_rows(SquareCatalogObject.model_validate(raw), synced_at=synced_at, message_id=message_id)
    )


def _customer(raw: dict[str, Any], synced_at: datetime, message_id: str | None) -> list[BaseModel]:
    return [customer_row(SquareCustomer.model_validate(raw), synced_at=synced_at, message_id=message_id)]


_CONVERTERS: dict[str, Convert] = {"payments": _payment, "items": _item, "customers": _customer}


def _locations(client: SquareClient, settings: Settings) -> list[str]:
    """Configured location ids, else every location the seller has (inactive ones keep history)."""
    if settings.square_location_ids:
        return list(settings.square_location_ids)
    return [str(location["id"]) for location in client.list_locations() if location.get("id")]


def _incremental_pages(
    client: SquareClient, settings: Settings, stream: str, since: datetime | None
) -> Iterator[list[dict[str, Any]]]:
    if stream == "payments":
        # begin_time (created_at) is explicit: changes to payments created over a year ago count too.
        history_start = datetime.fromisoformat(settings.square_history_start)
        for location_id in _locations(client, settings):
            yield from client.iter_payments(
                location_id=location_id,
                begin_time=history_start,
                updated_at_begin_time=since,
                sort_field="UPDATED_AT",
            )
    elif stream == "items":
        yield from client.iter_catalog(begin_time=since)
    else:
        yield from client.iter_customers(updated_since=since)


def _window_pages(client: SquareClient, window: BackfillWindow) -> Iterator[list[dict[str, Any]]]:
    if window.stream == "payments":
        if not window.location_id or window.start is None or window.end is None:
            raise InvalidPayload(f"payments window {window.window_id} needs location_id, start and end")
        yield from client.iter_payments(
            location_id=window.location_id, begin_time=window.start, end_time=window.end
        )
    elif window.stream == "items":
        yield from client.iter_catalog()
    else:
        yield from client.iter_customers()


# Loading.


def _load(
    pages: Iterable[list[dict[str, Any]]],
    *,
    sink: Sink,
    stream: str,
    scope: str,
    settings: Settings,
    synced_at: datetime,
    message_id: str | None,
) -> SyncResult:
    """Convert every page's records, write them in bounded batches, return the counts."""
    spec = table_for(SOURCE, stream)
    convert = _CONVERTERS[stream]
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
                    converted = convert(raw, synced_at, message_id)
                except (ValueError, TypeError, ArithmeticError) as exc:
                    rejected += 1
                    writer.submit(rejects.add(reject_row(SOURCE, stream, raw, exc, synced_at, message_id)))
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
    client: SquareClient,
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
        stream: ``payments``, ``items`` or ``customers``.
        message_id: the Dramatiq message doing this, stored on each row (``_message_id``).
        now: the clock (UTC-aware datetimes).

    Returns:
        The counts; ``coalesced=True`` (and nothing done) if another sync of the stream holds the lock.

    Raises:
        WorkerError: from the source or the sink; the checkpoint is then left where it was.
    """
    if stream not in _CONVERTERS:
        raise ValueError(f"unknown stream {stream!r}")
    clock = time.monotonic()
    with state.stream_lock(SOURCE, stream, ttl_seconds=LOCK_TTL_SECONDS) as held:
        if not held:
            log.info("incremental_sync_coalesced", source=SOURCE, stream=stream)
            return SyncResult(stream=stream, coalesced=True, seconds=time.monotonic() - clock)
        # Taken before the first read: anything changed after it is seen by the next sync.
        started = now()
        previous = state.get_checkpoint(SOURCE, stream)
        since = None
        if previous is not None and previous.checkpoint is not None:
            since = previous.checkpoint - timedelta(seconds=settings.incremental_lookback_seconds)
        try:
            result = _load(
                _incremental_pages(client, settings, stream, since),
                sink=sink,
                stream=stream,
                scope="incremental",
                settings=settings,
                synced_at=started,
                message_id=message_id,
            )
            state.commit_checkpoint(SOURCE, stream, checkpoint=started, started_at=started)
        except Exception as exc:
            _record_error(state, stream, exc, now())
            log.warning(
                "incremental_sync_failed",
                source=SOURCE,
                stream=stream,
                error_type=type(exc).__name__,
                seconds=round(time.monotonic() - clock, 3),
            )
            raise
    result = _with_seconds(result, time.monotonic() - clock)
    log.info(
        "incremental_sync_done",
        source=SOURCE,
        stream=stream,
        since=since.isoformat() if since else None,
        checkpoint=started.isoformat(),
        **result.log_fields(),
    )
    return result


def _record_error(state: StateStore, stream: str, exc: Exception, at: datetime) -> None:
    try:
        state.record_error(SOURCE, stream, error=f"{type(exc).__name__}: {exc}"[:MAX_REASON_CHARS], at=at)
    except redis.RedisError as secondary:  # the original error is the one to raise
        log.warning("stream_error_not_recorded", stream=stream, error_type=type(secondary).__name__)


def _with_seconds(result: SyncResult, seconds: float) -> SyncResult:
    return SyncResult(**{**result.__dict__, "seconds": seconds})


def _spans(since: datetime, until: datetime, width: timedelta) -> Iterator[tuple[datetime, datetime]]:
    start = since
    while start < until:
        end = min(start + width, until)
        yield start, end
        start = end


def plan_backfill(
    *, client: SquareClient, state: StateStore, request: BackfillRequest, settings: Settings
) -> list[BackfillWindow]:
    """Split a backfill into windows and record the plan (the caller enqueues the windows).

    Payments get windows of ``request.window_days`` over [since, until) for every location (configured,
    else ListLocations); items and customers get one whole-stream window each.

    Returns:
        The windows, in plan order.

    Raises:
        InvalidPayload: if ``until`` is not after ``since``.
        WorkerError: from ListLocations.
    """
    if request.until <= request.since:
        raise InvalidPayload(f"backfill {request.backfill_id}: until must be after since")
    width = timedelta(days=request.window_days)
    locations = _locations(client, settings) if "payments" in request.streams else []
    windows: list[BackfillWindow] = []
    for stream in request.streams:
        base = {"request_id": request.request_id, "backfill_id": request.backfill_id, "stream": stream}
        if stream != "payments":
            windows.append(BackfillWindow(**base, window_id=stream))
            continue
        for location_id in locations:
            for start, end in _spans(request.since, request.until, width):
                window_id = f"payments:{location_id}:{rfc3339(start)}:{rfc3339(end)}"
                windows.append(
                    BackfillWindow(**base, window_id=window_id, location_id=location_id, start=start, end=end)
                )
    meta = {
        "request_id": request.request_id,
        "since": request.since.isoformat(),
        "until": request.until.isoformat(),
        "window_days": request.window_days,
        "streams": list(request.streams),
        "locations": locations,
    }
    state.record_plan(request.backfill_id, windows, meta)
    log.info(
        "backfill_planned", backfill_id=request.backfill_id, windows=len(windows), locations=len(locations)
    )
    return windows


def run_window(
    *,
    client: SquareClient,
    sink: Sink,
    state: StateStore,
    window: BackfillWindow,
    settings: Settings,
    message_id: str | None,
    now: Callable[[], datetime] = _utcnow,
) -> SyncResult:
    """Sync one backfill window, then mark it done in the plan (``failed`` if it raises).

    Payments: one location's payments created in [start, end). Items and customers: a full read.
    Windows run in parallel and take no stream lock: the MERGE's newer-version rule keeps them safe.

    Raises:
        InvalidPayload: a payments window without location or bounds.
        WorkerError: from the source or the sink.
    """
    clock = time.monotonic()
    try:
        result = _load(
            _window_pages(client, window),
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
        backfill_id=window.backfill_id,
        window_id=window.window_id,
        stream=window.stream,
        **result.log_fields(),
    )
    return result
