"""Rows to the sink in bounded batches, written by one thread while the caller keeps fetching.

A :class:`Batcher` gathers one table's rows, at most one per key (the newest version), up to a row
and byte bound, and names each batch by what it covers so a redelivered message re-attaches to the
load it already ran. A :class:`Writer` thread loads the previous batch while the caller pages and
converts the next (a queue of one batch between them); its error is raised in the caller's thread.
Records that fail validation become :func:`reject_row` rows for ``_possync_rejects``, stripped of
personal data, and go through a batcher of their own.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import queue
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import ValidationError

from schemas.tables import TableSpec

__all__ = ["MAX_REASON_CHARS", "Batch", "Batcher", "Sink", "Writer", "reject_row"]

#: Longest rejection reason stored, characters.
MAX_REASON_CHARS = 2000
#: Keys of personal data dropped from a rejected record's raw JSON before it is stored: the
#: warehouse never copies what analytics does not need.
_PERSONAL_KEYS = frozenset(
    {
        "given_name", "family_name", "nickname", "company_name", "email_address", "buyer_email_address",
        "phone_number", "address", "billing_address", "shipping_address", "birthday", "note",
        "cardholder_name", "fingerprint", "bin", "last_4", "exp_month", "exp_year",
    }
)  # fmt: skip


class Sink(Protocol):
    """Where batches go (``workers/sinks/bigquery.py:BigQuerySink``): idempotent per ``batch_id``."""

    def write(self, spec: TableSpec, rows: Sequence[Mapping[str, Any]], *, batch_id: str) -> object:
        """Merge ``rows`` into ``spec``'s table; a repeated ``batch_id`` re-attaches, never duplicates."""
        ...


@dataclass
class Batch:
    """Rows for one sink write, named by ``batch_id`` (the sink's idempotency key)."""

    spec: TableSpec
    rows: list[dict[str, Any]]
    batch_id: str


@dataclass
class Batcher:
    """Rows of one table, bounded by rows and bytes; one row per key (the newest version)."""

    spec: TableSpec
    scope: str
    stream: str
    max_rows: int
    max_bytes: int
    rows: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)
    size_bytes: int = 0

    def add(self, row: dict[str, Any]) -> Batch | None:
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

    def flush(self) -> Batch | None:
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
        batch = Batch(self.spec, list(self.rows.values()), batch_id)
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


class Writer:
    """One thread writing batches to the sink, fed through a queue of one batch."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._queue: queue.Queue[Batch | None] = queue.Queue(maxsize=1)
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

    def submit(self, batch: Batch | None) -> None:
        """Queue a batch (waits while the writer is busy); raise the writer's error if it failed."""
        if batch is None:
            return
        self._put(batch)

    def _put(self, item: Batch | None) -> None:
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
    return text[:MAX_REASON_CHARS]


def _without_personal_data(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_personal_data(v) for k, v in value.items() if k not in _PERSONAL_KEYS}
    if isinstance(value, list):
        return [_without_personal_data(item) for item in value]
    return value


def reject_row(
    source: str, stream: str, raw: Any, exc: Exception, rejected_at: datetime, message_id: str | None
) -> dict[str, Any]:
    """The ``_possync_rejects`` row for a record that failed conversion, without its personal data."""
    text = json.dumps(_without_personal_data(raw), sort_keys=True, default=str)
    key = raw.get("id") if isinstance(raw, dict) else None
    # The rejects table is keyed by record_key: a record without an id gets one from its content,
    # so two such rejects of one run stay two rows.
    record_key = str(key) if key is not None else "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:24]
    return {
        "source": source,
        "stream": stream,
        "record_key": record_key,
        "reason": _reason(exc),
        "raw": text,
        "message_id": message_id,
        "rejected_at": rejected_at.astimezone(UTC).isoformat(),
    }
