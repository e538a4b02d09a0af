"""Rows as NDJSON lines, encoded once and kept in a temporary file until their load job reads them.

A converted row becomes the line its load job reads exactly once: the batcher's byte bound and the
sink's payload both use that line. Lines wait in an unnamed temporary file rather than as dicts: a
payment as a dict of JSON values costs about 5 KB of a worker's memory, as a line in a file nothing
but the file's write buffer. So a worker's memory follows its threads and the batch bound, not the
number of rows a window holds. (google-cloud-bigquery reads the file whole to upload it, in one
request under 5 MB and in chunks of 100 MB above: the batch's byte bound is its memory bound.)
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

from schemas.tables import TableSpec
from workers.sinks.bigquery_sql import PartitionRange, content_digest

__all__ = ["SPOOL_BUFFER_BYTES", "EncodedRows", "encode_row", "encode_rows", "new_spool"]


def encode_row(row: Mapping[str, Any]) -> bytes:
    """The row as one NDJSON line (JSON-ready values; anything else as its ``str``)."""
    return json.dumps(row, separators=(",", ":"), default=str).encode() + b"\n"


#: Write buffer of a spool, bytes: lines reach the file in few, large writes.
SPOOL_BUFFER_BYTES = 256 * 1024


def new_spool() -> IO[bytes]:
    """An empty file for lines, deleted when closed (or when the process ends)."""
    return tempfile.TemporaryFile(mode="w+b", buffering=SPOOL_BUFFER_BYTES)


class EncodedRows:
    """A batch's rows as NDJSON lines in a file, with what the sink needs besides the lines.

    Iterating decodes the lines back to dicts (tests and small batches); the sink reads
    :meth:`payload`. Whoever holds it last closes it (the writer, after the sink's write).

    Attributes:
        count: rows (lines) held.
        size: bytes of the lines.
        contents: digest of what the rows hold, without ingestion metadata: part of the job ids,
            so a redelivered batch re-attaches to the jobs it already ran.
        partition: the range of the table's partition column (``None`` if it is not partitioned).
    """

    def __init__(
        self, lines: IO[bytes], *, count: int, size: int, contents: str, partition: PartitionRange | None
    ) -> None:
        self._lines = lines
        self.count = count
        self.size = size
        self.contents = contents
        self.partition = partition

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._lines.seek(0)
        for line in self._lines:
            yield json.loads(line)

    def payload(self) -> IO[bytes]:
        """The lines, from the start (a load job's upload reads and rewinds it)."""
        self._lines.seek(0)
        return self._lines

    def close(self) -> None:
        """Release the file (deleting it if it went to disk)."""
        self._lines.close()


def encode_rows(spec: TableSpec, rows: Sequence[Mapping[str, Any]]) -> EncodedRows:
    """Rows held as dicts, encoded for the sink (the webhook path's one-row writes, tests)."""
    spool = new_spool()
    partition = PartitionRange() if spec.partition_field is not None else None
    for row in rows:
        spool.write(encode_row(row))
        if partition is not None and spec.partition_field is not None:
            partition.add(spec, row.get(spec.partition_field))
    return EncodedRows(
        spool, count=len(rows), size=spool.tell(), contents=content_digest(rows), partition=partition
    )
