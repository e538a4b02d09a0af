"""The batcher keeps rows as NDJSON lines in a file: memory per row is its key and version only."""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.tables import SQUARE_PAYMENTS
from workers.batching import Batcher

_START = datetime(2025, 1, 1, tzinfo=UTC)


def _row(number: int, *, minutes: int = 0, note: str = "") -> dict[str, Any]:
    created = _START + timedelta(seconds=number)
    return {
        "id": f"P{number:06d}",
        "created_at": created.isoformat(),
        "updated_at": (created + timedelta(minutes=minutes)).isoformat(),
        "status": "COMPLETED",
        "note": note,
        "_synced_at": _START.isoformat(),
        "_message_id": "m-1",
    }


def test_rows_held_by_a_batcher_cost_a_fraction_of_their_size_in_memory() -> None:
    # Given 20,000 rows of about 2 KB each (40 MB as JSON), each dropped once added
    batcher = Batcher(SQUARE_PAYMENTS, "w", "payments", max_rows=100_000, max_bytes=1 << 30)
    filler = "x" * 2000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for number in range(20_000):
            assert batcher.add(_row(number, note=filler)) is None
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()

    # Then the batcher holds well under a quarter of them in memory (keys and versions)
    assert held < 10_000_000, held
    # And the batch gives every row back, whole
    batch = batcher.flush()
    assert batch is not None
    assert len(batch.rows) == 20_000
    rows = list(batch.rows)
    assert rows[0] == _row(0, note=filler)
    assert rows[-1]["id"] == "P019999"
    assert batch.rows.size == sum(len(line) for line in batch.rows.payload())
    batch.rows.close()


def test_a_row_met_again_with_a_newer_version_replaces_its_line_and_the_range_covers_every_row() -> None:
    # Given a row seen, then again older, then again newer, among others
    batcher = Batcher(SQUARE_PAYMENTS, "w", "payments", max_rows=100, max_bytes=1 << 20)
    for row in (_row(1), _row(2, minutes=5), _row(2), _row(2, minutes=9), _row(3)):
        assert batcher.add(row) is None

    # When the batch is made
    batch = batcher.flush()

    # Then each key has one line, its newest version, and the partition range spans the rows
    assert batch is not None
    rows = sorted(batch.rows, key=lambda row: row["id"])
    assert [row["id"] for row in rows] == ["P000001", "P000002", "P000003"]
    assert rows[1] == _row(2, minutes=9)
    assert batch.rows.count == 3
    assert batch.rows.partition is not None
    assert batch.rows.partition.low == _START + timedelta(seconds=1)
    assert batch.rows.partition.high == _START + timedelta(seconds=3)
    batch.rows.close()
