"""Rows to the sink in bounded batches, written by one thread while the caller keeps fetching.

A :class:`Batcher` gathers one table's rows, at most one per key (the newest version), up to a row
and byte bound, each encoded once as the NDJSON line its load job reads and spooled to a file, and
names each batch by what it covers so a redelivered message re-attaches to the load it already ran.
A :class:`Writer` thread loads the previous batch while the caller pages and converts the next (a
queue of one batch between them); its error is raised in the caller's thread. Records that fail
validation become :func:`reject_row` rows for ``_possync_rejects``, stripped of personal data, and
go through a batcher of their own.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import queue
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, Protocol

from pydantic import ValidationError

from schemas.tables import METADATA_COLUMNS, TableSpec
from workers.ndjson import EncodedRows, encode_row, new_spool
from workers.sinks.bigquery_sql import PartitionRange

__all__ = ["MAX_REASON_CHARS", "Batch", "Batcher", "Sink", "Writer", "reject_row"]

#: Longest rejection reason stored, characters.
MAX_REASON_CHARS = 2000
#: Keys of personal data dropped from a rejected record's raw JSON before it is stored: the
#: warehouse never copies what analytics does not need.
_METADATA_NAMES = frozenset(column.name for column in METADATA_COLUMNS)
_PERSONAL_KEYS = frozenset(
    {
        "given_name", "family_name", "nickname", "company_name", "email_address", "buyer_email_address",
        "phone_number", "address", "billing_address", "shipping_address", "birthday", "note",
        "cardholder_name", "fingerprint", "bin", "last_4", "exp_month", "exp_year",
    }
)  # fmt: skip


class Sink(Protocol):
    """Where batches go (``workers/sinks/bigquery.py:BigQuerySink``): idempotent per ``batch_id``."""

    def write(
        self, spec: TableSpec, rows: EncodedRows | Sequence[Mapping[str, Any]], *, batch_id: str
    ) -> object:
        """Merge ``rows`` into ``spec``'s table; a repeated ``batch_id`` re-attaches, never duplicates."""
        ...


@dataclass
class Batch:
    """Rows for one sink write, named by ``batch_id`` (the sink's idempotency key)."""

    spec: TableSpec
    rows: EncodedRows
    batch_id: str


class Batcher:
    """Rows of one table, bounded by rows and bytes; one row per key (the newest version).

    Each row is encoded once, as the NDJSON line its load job reads, and spooled to a file
    (:mod:`workers.ndjson`); what stays in memory is each key's version marker.
    """

    def __init__(self, spec: TableSpec, scope: str, stream: str, max_rows: int, max_bytes: int) -> None:
        self.spec = spec
        self.scope = scope
        self.stream = stream
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._start()

    def _start(self) -> None:
        #: Each key's version marker (its version, or a digest of its content for unversioned tables).
        self.markers: dict[tuple[Any, ...], Any] = {}
        #: Keys met twice with a newer version: their older lines are dropped at flush.
        self.replaced: set[tuple[Any, ...]] = set()
        self.size_bytes = 0
        self._lines = new_spool()
        self._partition = PartitionRange() if self.spec.partition_field is not None else None

    def add(self, row: dict[str, Any]) -> Batch | None:
        """Add a row; return the batch to write first if the row would overflow the bounds."""
        line = encode_row(row)
        key = tuple(row.get(column) for column in self.spec.key)
        flushed = None
        if key not in self.markers and (
            len(self.markers) + 1 > self.max_rows or self.size_bytes + len(line) > self.max_bytes
        ):
            flushed = self.flush()
        marker = self._marker(row)
        existing = self.markers.get(key)
        if existing is not None:
            # A record met twice in one read (it changed between pages) keeps its newest version: a
            # MERGE must match at most one source row per target row.
            if self.spec.version_column is None or not _newer(marker, existing):
                return flushed
            self.replaced.add(key)
        self.markers[key] = marker
        self._lines.write(line)
        # A replaced row's bytes stay counted: an overestimate keeps the batch within bounds.
        self.size_bytes += len(line)
        if self._partition is not None and self.spec.partition_field is not None:
            self._partition.add(self.spec, row.get(self.spec.partition_field))
        return flushed

    def _marker(self, row: Mapping[str, Any]) -> Any:
        if self.spec.version_column is not None:
            return row.get(self.spec.version_column)
        # Without ingestion metadata, so a redelivered message's rows get the same batch id.
        content = {name: value for name, value in row.items() if name not in _METADATA_NAMES}
        return hashlib.sha256(encode_row(content)).hexdigest()[:16]

    def flush(self) -> Batch | None:
        """The rows held as a batch (``None`` if empty), and start over."""
        if not self.markers:
            return None
        lines = self._lines if not self.replaced else self._without_replaced()
        by_key = sorted(("|".join(str(part) for part in key), marker) for key, marker in self.markers.items())
        digest = hashlib.sha256()
        for key_text, marker in by_key:
            digest.update(f"{key_text}\x1f{marker}\x1e".encode())
        contents = digest.hexdigest()
        # Derived from what the batch covers, so a redelivered message re-attaches to the job it
        # already ran; the digest of keys and versions tells apart two reads of the same key range
        # in which a record changed (the job id must then differ, or the change would be skipped).
        first, last = by_key[0][0], by_key[-1][0]
        batch_id = f"{self.stream}:{self.scope}:{first}:{last}:{contents[:16]}"
        rows = EncodedRows(
            lines, count=len(self.markers), size=lines.tell(), contents=contents, partition=self._partition
        )
        self._start()
        return Batch(self.spec, rows, batch_id)

    def _without_replaced(self) -> IO[bytes]:
        """The lines with each replaced key's older versions left out (only its marker's line kept)."""
        kept = new_spool()
        self._lines.seek(0)
        for line in self._lines:
            row = json.loads(line)
            key = tuple(row.get(column) for column in self.spec.key)
            if key in self.replaced and self.markers.get(key) != self._marker(row):
                continue
            kept.write(line)
        self._lines.close()
        return kept


def _newer(new: Any, old: Any) -> bool:
    """Whether version ``new`` is later than ``old`` (ISO timestamps compared as times)."""
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
            finally:
                batch.rows.close()
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
            queued = self._queue.get_nowait()
            if queued is not None:
                queued.rows.close()
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
