"""The sync engine: pages in, validated rows in bounded batches out to the sink, checkpoint after commit.

Source-agnostic in its loop: a small per-stream adapter (``_STREAMS``) says how to read a stream
from the Square client and how to turn one raw record into warehouse rows; everything else (batching,
rejects, overlapping fetching with loading, checkpoints, locks, backfill plans) is the same for every
stream. A record that fails validation becomes a ``_possync_rejects`` row and the rest still load.

Fetching and loading overlap: the calling thread pages and converts while one writer thread loads
the previous batch (a queue of one batch between them). An error on either side stops both and
propagates; the checkpoint (or the backfill window's ``done``) is written only after every batch was.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog
from pydantic import BaseModel, ValidationError

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
from schemas.tables import REJECTS, TableSpec, table_for
from workers.errors import InvalidPayload
from workers.sources.square import SquareClient, rfc3339
from workers.state import StateStore

__all__ = ["SOURCE", "Sink", "SyncResult", "plan_backfill", "run_incremental", "run_window"]

#: The source this engine's adapters read.
SOURCE = "square"
#: Seconds a stream lock outlives a holder that stopped heartbeating.
LOCK_TTL_SECONDS = 60
#: Longest rejection reason stored, characters.
_MAX_REASON = 2000
#: Keys of personal data dropped from a rejected record's raw JSON before it is stored: the
#: warehouse never copies what analytics does not need.
_PERSONAL_KEYS = frozenset(
    {
        "given_name", "family_name", "nickname", "company_name", "email_address", "buyer_email_address",
        "phone_number", "address", "billing_address", "shipping_address", "birthday", "note",
        "cardholder_name", "fingerprint", "bin", "last_4", "exp_month", "exp_year",
    }
)  # fmt: skip

log = structlog.get_logger()


class Sink(Protocol):
    """Where batches go (``workers/sinks/bigquery.py:BigQuerySink``): idempotent per ``batch_id``."""

    def write(self, spec: TableSpec, rows: Sequence[Mapping[str, Any]], *, batch_id: str) -> object:
        """Merge ``rows`` into ``spec``'s table; a repeated ``batch_id`` re-attaches, never duplicates."""
        ...


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


# Batching and loading.


@dataclass
class _Batch:
    spec: TableSpec
    rows: list[dict[str, Any]]
    batch_id: str


@dataclass
class _Batcher:
    """Rows of one table, bounded by rows and bytes; one row per key (the newest version)."""

    spec: TableSpec
    scope: str
    stream: str
    max_rows: int
    max_bytes: int
    rows: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)
    size_bytes: int = 0

    def add(self, row: dict[str, Any]) -> _Batch | None:
        """Add a row; return the batch to write first if the row would overflow the bounds."""
        # The row as the NDJSON line the sink loads: a cheap, close estimate of what it costs.
        row_bytes = len(json.dumps(row, separators=(",", ":"), default=str)) + 1
        key = tuple(row.get(column) for column in self.spec.key)
        flushed = None
        if key not in self.rows and (
            len(self.rows) + 1 > self.max_rows or self.size_bytes + row_bytes > self.max_bytes
        ):
            flushed = self.flush()
        existing = self.rows.get(key)
        # A record met twice in one read (it changed between pages) keeps its newest version: a MERGE
        # must match at most one source row per target row.
        if existing is None or _newer(self.spec, row, existing):
            # A replaced row's bytes stay counted: an overestimate keeps the batch within bounds.
            self.size_bytes += row_bytes
            self.rows[key] = row
        return flushed

    def flush(self) -> _Batch | None:
        """The rows held as a batch (``None`` if empty), and start over."""
        if not self.rows:
            return None
        version = self.spec.version_column
        by_key = sorted(("|".join(str(part) for part in key), row) for key, row in self.rows.items())
        digest = hashlib.sha256()
        for key_text, row in by_key:
            marker = row.get(version) if version else json.dumps(row, sort_keys=True, default=str)
            digest.update(f"{key_text}\x1f{marker}\x1e".encode())
        # Derived from what the batch covers, so a redelivered message re-attaches to the job it
        # already ran; the digest of keys and versions tells apart two reads of the same key range
        # in which a record changed (the job id must then differ, or the change would be skipped).
        first, last = by_key[0][0], by_key[-1][0]
        batch_id = f"{self.stream}:{self.scope}:{first}:{last}:{digest.hexdigest()[:16]}"
        batch = _Batch(self.spec, list(self.rows.values()), batch_id)
        self.rows = {}
        self.size_bytes = 0
        return batch


def _newer(spec: TableSpec, row: Mapping[str, Any], existing: Mapping[str, Any]) -> bool:
    if spec.version_column is None:
        return False
    new, old = row.get(spec.version_column), existing.get(spec.version_column)
    if isinstance(new, str) and isinstance(old, str):
        return datetime.fromisoformat(new) > datetime.fromisoformat(old)
    return bool(new is not None and (old is None or new > old))


class _Writer:
    """One thread writing batches to the sink, fed through a queue of one batch."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._queue: queue.Queue[_Batch | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._cancelled = threading.Event()
        self.written: dict[str, int] = {}
        self.batches = 0
        # Run in a copy of the caller's context, so the sink's logs carry the message's bound fields.
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._run,), name="possync-writer", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None or self._cancelled.is_set():
                return
            try:
                self._sink.write(batch.spec, batch.rows, batch_id=batch.batch_id)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, which raises it
                self._error = exc
                return
            self.written[batch.spec.name] = self.written.get(batch.spec.name, 0) + len(batch.rows)
            self.batches += 1

    def submit(self, batch: _Batch | None) -> None:
        """Queue a batch (waits while the writer is busy); raise the writer's error if it failed."""
        if batch is None:
            return
        self._put(batch)

    def _put(self, item: _Batch | None) -> None:
        while True:
            self._raise_if_failed()
            if not self._thread.is_alive():
                raise RuntimeError("the writer thread stopped")
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Wait until every queued batch is written; raise the writer's error if any."""
        self._put(None)
        self._thread.join()
        self._raise_if_failed()

    def abort(self) -> None:
        """Stop without writing what is still queued, and wait for the thread."""
        self._cancelled.set()
        with contextlib.suppress(queue.Empty):
            self._queue.get_nowait()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        # Field paths and messages only: the input values are in ``raw`` already.
        text = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'record'}: {err['msg']}" for err in exc.errors()
        )
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text[:_MAX_REASON]


def _without_personal_data(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_personal_data(v) for k, v in value.items() if k not in _PERSONAL_KEYS}
    if isinstance(value, list):
        return [_without_personal_data(item) for item in value]
    return value


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
    rows = _Batcher(spec, scope, stream, settings.batch_max_rows, settings.batch_max_bytes)
    rejects = _Batcher(REJECTS, scope, f"{stream}-rejects", settings.batch_max_rows, settings.batch_max_bytes)
    writer = _Writer(sink)
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
                    writer.submit(rejects.add(_reject_row(stream, raw, exc, synced_at, message_id)))
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


def _reject_row(
    stream: str, raw: Any, exc: Exception, rejected_at: datetime, message_id: str | None
) -> dict[str, Any]:
    text = json.dumps(_without_personal_data(raw), sort_keys=True, default=str)
    key = raw.get("id") if isinstance(raw, dict) else None
    # The rejects table is keyed by record_key: a record without an id gets one from its content,
    # so two such rejects of one run stay two rows.
    record_key = str(key) if key is not None else "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:24]
    return {
        "source": SOURCE,
        "stream": stream,
        "record_key": record_key,
        "reason": _reason(exc),
        "raw": text,
        "message_id": message_id,
        "rejected_at": rejected_at.astimezone(UTC).isoformat(),
    }


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
        state.record_error(SOURCE, stream, error=f"{type(exc).__name__}: {exc}"[:_MAX_REASON], at=at)
    except Exception as secondary:  # noqa: BLE001 - the original error is the one to raise
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
        except Exception as secondary:  # noqa: BLE001 - the original error is the one to raise
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
