"""The check's findings: per-table differences from the truth, the rejects table's, and how they read
as text or JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

__all__ = [
    "EXAMPLES",
    "CheckReport",
    "ColumnMismatch",
    "Mismatch",
    "RejectsCheck",
    "SumDifference",
    "TableCheck",
]

#: How many example keys or values a report shows per kind of difference.
EXAMPLES = 5


@dataclass(frozen=True)
class Mismatch:
    """One row whose column differs from the truth."""

    key: str
    expected: Any
    actual: Any


@dataclass
class ColumnMismatch:
    """Rows whose value in one column differs from the truth: how many, and a few examples."""

    column: str
    count: int = 0
    examples: list[Mismatch] = field(default_factory=list)


@dataclass(frozen=True)
class SumDifference:
    """A payment sum over one group (a status or a location) that differs from the truth."""

    dimension: str
    group: str | None
    column: str
    expected: Decimal
    actual: Decimal

    @property
    def difference(self) -> Decimal:
        """``actual - expected``, major units."""
        return self.actual - self.expected


@dataclass
class TableCheck:
    """How one warehouse table compares with the truth.

    Attributes:
        table: the table name.
        expected_rows: records in the truth.
        warehouse_rows: rows in the warehouse table (duplicates included).
        missing: truth keys absent from the warehouse, sorted (all of them).
        duplicates: keys present more than once, with how many copies.
        unexpected: warehouse keys the truth does not have, sorted.
        mismatched: per column, rows whose value differs (every copy of a key is compared).
        sum_differences: payment sums by status and by location that differ (payments only).
        schema: columns whose type or mode differs from ``schemas/tables.py``, with how.
        error: why the table could not be read (for example it does not exist), else ``None``.
    """

    table: str
    expected_rows: int
    warehouse_rows: int = 0
    missing: list[str] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    mismatched: dict[str, ColumnMismatch] = field(default_factory=dict)
    sum_differences: list[SumDifference] = field(default_factory=list)
    schema: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the table equals the truth exactly."""
        return not (
            self.error
            or self.missing
            or self.duplicates
            or self.unexpected
            or self.mismatched
            or self.sum_differences
            or self.schema
            or self.warehouse_rows != self.expected_rows
        )

    def summary(self) -> str:
        """A few readable lines about this table."""
        head = f"{self.table}: {self.expected_rows} expected, {self.warehouse_rows} in the warehouse"
        if self.ok:
            return f"{head}: ok"
        lines = [f"{head}: DIFFERS"]
        if self.error:
            lines.append(f"  error: {self.error}")
        for name, how in self.schema.items():
            lines.append(f"  column {name}: {how}")
        if self.missing:
            lines.append(f"  missing {len(self.missing)} keys, e.g. {', '.join(self.missing[:EXAMPLES])}")
        if self.duplicates:
            extra = sum(self.duplicates.values()) - len(self.duplicates)
            shown = ", ".join(f"{key} x{copies}" for key, copies in list(self.duplicates.items())[:EXAMPLES])
            lines.append(f"  duplicated {len(self.duplicates)} keys ({extra} extra rows), e.g. {shown}")
        if self.unexpected:
            shown = ", ".join(self.unexpected[:EXAMPLES])
            lines.append(f"  unexpected {len(self.unexpected)} keys, e.g. {shown}")
        for mismatch in self.mismatched.values():
            shown = "; ".join(
                f"{m.key}: expected {_text(m.expected)}, got {_text(m.actual)}" for m in mismatch.examples[:3]
            )
            lines.append(f"  {mismatch.column} differs on {mismatch.count} rows, e.g. {shown}")
        for diff in self.sum_differences[: EXAMPLES * 2]:
            lines.append(
                f"  sum({diff.column}) for {diff.dimension}={diff.group}: expected {diff.expected},"
                f" got {diff.actual} ({diff.difference:+})"
            )
        if len(self.sum_differences) > EXAMPLES * 2:
            lines.append(f"  ... {len(self.sum_differences) - EXAMPLES * 2} more sum differences")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: counts, a few examples, every sum difference."""
        return {
            "table": self.table,
            "ok": self.ok,
            "error": self.error,
            "expected_rows": self.expected_rows,
            "warehouse_rows": self.warehouse_rows,
            "schema": dict(self.schema),
            "missing": {"count": len(self.missing), "examples": self.missing[:EXAMPLES]},
            "duplicates": {
                "count": len(self.duplicates),
                "extra_rows": sum(self.duplicates.values()) - len(self.duplicates),
                "examples": dict(list(self.duplicates.items())[:EXAMPLES]),
            },
            "unexpected": {"count": len(self.unexpected), "examples": self.unexpected[:EXAMPLES]},
            "mismatched": {
                name: {
                    "count": column.count,
                    "examples": [
                        {"key": m.key, "expected": _text(m.expected), "actual": _text(m.actual)}
                        for m in column.examples
                    ],
                }
                for name, column in self.mismatched.items()
            },
            "sum_differences": [
                {
                    "dimension": diff.dimension,
                    "group": diff.group,
                    "column": diff.column,
                    "expected": str(diff.expected),
                    "actual": str(diff.actual),
                    "difference": str(diff.difference),
                }
                for diff in self.sum_differences
            ],
        }


@dataclass
class CheckReport:
    """The whole check: one :class:`TableCheck` per table, in :data:`TABLE_NAMES` order."""

    tables: dict[str, TableCheck]

    @property
    def ok(self) -> bool:
        """True when every checked table equals the truth."""
        return all(table.ok for table in self.tables.values())

    def __getitem__(self, table: str) -> TableCheck:
        return self.tables[table]

    def summary(self) -> str:
        """A short readable text: the verdict, then a few lines per table."""
        verdict = (
            "warehouse matches the ground truth" if self.ok else "warehouse DIFFERS from the ground truth"
        )
        return "\n".join([verdict, *(table.summary() for table in self.tables.values())])

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form of the report."""
        return {"ok": self.ok, "tables": {name: table.as_dict() for name, table in self.tables.items()}}


@dataclass
class RejectsCheck:
    """How one source's rows in ``_possync_rejects`` compare with the records the truth says the API
    serves malformed (``Truth.rejects``). Keys read ``stream/record_key``.

    A record read by two messages (two syncs that met it) is rejected twice, one row each, and that
    is right; two rows of one key for the same message are duplicates.

    Attributes:
        source: the source checked (``square``).
        expected_rows: records the truth lists as rejects.
        warehouse_rows: the source's rows in the rejects table.
        missing: expected keys without a row, sorted.
        unexpected: keys with a row that the truth does not list, sorted.
        duplicates: keys held more than once for one message, with the most copies of one message.
        unnamed: expected keys whose reason does not name the field the truth says is broken, with
            the reason found (cut to 200 characters).
        error: why the table could not be read (for example it does not exist), else ``None``.
    """

    source: str
    expected_rows: int
    warehouse_rows: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)
    unnamed: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when every expected record has a row naming its field, and nothing else is there."""
        return not (self.error or self.missing or self.unexpected or self.duplicates or self.unnamed)

    def summary(self) -> str:
        """A few readable lines about the rejects table."""
        head = (
            f"_possync_rejects ({self.source}): {self.expected_rows} expected,"
            f" {self.warehouse_rows} in the warehouse"
        )
        if self.ok:
            return f"{head}: ok"
        lines = [f"{head}: DIFFERS"]
        if self.error:
            lines.append(f"  error: {self.error}")
        if self.missing:
            lines.append(f"  missing {len(self.missing)} keys, e.g. {', '.join(self.missing[:EXAMPLES])}")
        if self.unexpected:
            shown = ", ".join(self.unexpected[:EXAMPLES])
            lines.append(f"  unexpected {len(self.unexpected)} keys, e.g. {shown}")
        if self.duplicates:
            shown = ", ".join(f"{key} x{copies}" for key, copies in list(self.duplicates.items())[:EXAMPLES])
            lines.append(f"  duplicated {len(self.duplicates)} keys for one message, e.g. {shown}")
        for key, reason in list(self.unnamed.items())[:EXAMPLES]:
            lines.append(f"  {key}: the reason does not name the broken field: {reason}")
        if len(self.unnamed) > EXAMPLES:
            lines.append(f"  ... {len(self.unnamed) - EXAMPLES} more reasons not naming their field")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: counts and a few examples."""
        return {
            "source": self.source,
            "ok": self.ok,
            "error": self.error,
            "expected_rows": self.expected_rows,
            "warehouse_rows": self.warehouse_rows,
            "missing": {"count": len(self.missing), "examples": self.missing[:EXAMPLES]},
            "unexpected": {"count": len(self.unexpected), "examples": self.unexpected[:EXAMPLES]},
            "duplicates": {
                "count": len(self.duplicates),
                "examples": dict(list(self.duplicates.items())[:EXAMPLES]),
            },
            "unnamed": {"count": len(self.unnamed), "examples": dict(list(self.unnamed.items())[:EXAMPLES])},
        }


def _text(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
