"""Comparing a table's warehouse rows with the truth: keys, every column, and payment sums to the cent."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from sandbox.truth_columns import COLUMNS, shown, truth_value
from sandbox.truth_report import EXAMPLES, ColumnMismatch, Mismatch, SumDifference, TableCheck
from schemas.tables import SQUARE_PAYMENTS

__all__ = ["PAYMENT_SUM_COLUMNS", "compare_table"]

#: Payment money columns whose sums by status and by location must match to the cent.
PAYMENT_SUM_COLUMNS = ("amount", "tip_amount", "total_amount", "refunded_amount")
#: Payment columns the money sums are grouped by.
_SUM_DIMENSIONS = ("status", "location_id")


def compare_table(table: str, records: list[dict[str, Any]], rows: list[list[Any]]) -> TableCheck:
    """Compare one table's rows with its truth records.

    Args:
        table: the table name, a key of :data:`~sandbox.truth_columns.COLUMNS`.
        records: the truth's records for the table.
        rows: the warehouse rows as :func:`sandbox.truth_warehouse.read_table` returns them.

    Returns:
        The table's check, without schema differences (the caller adds those).

    Raises:
        ValueError: if the truth holds a key twice.
    """
    spec = COLUMNS[table]
    key_field = spec[0][1]
    expected: dict[str, list[Any]] = {}
    for record in records:
        key = str(record[key_field])
        if key in expected:
            raise ValueError(f"the truth for {table} holds key {key!r} twice")
        expected[key] = [truth_value(kind, record.get(truth_field)) for _, truth_field, kind in spec]

    check = TableCheck(table=table, expected_rows=len(expected), warehouse_rows=len(rows))
    copies = Counter(str(row[0]) for row in rows)
    check.missing = sorted(key for key in expected if key not in copies)
    check.unexpected = sorted(key for key in copies if key not in expected)
    check.duplicates = {key: count for key, count in sorted(copies.items()) if count > 1}

    mismatched: dict[str, ColumnMismatch] = {}
    for row in rows:
        key = str(row[0])
        truth = expected.get(key)
        if truth is None:
            continue
        for index in range(1, len(spec)):
            want, actual = truth[index], row[index]
            # Same type as well as equal: True == 1 must not pass for a BOOL column, nor a float amount.
            if want == actual and type(want) is type(actual):
                continue
            column, _, kind = spec[index]
            found = mismatched.setdefault(column, ColumnMismatch(column))
            found.count += 1
            if len(found.examples) < EXAMPLES:
                found.examples.append(Mismatch(key, shown(kind, want), shown(kind, actual)))
    # Report columns in table order, whatever order the rows surfaced them in.
    check.mismatched = {column: mismatched[column] for column, _, _ in spec if column in mismatched}
    if table == SQUARE_PAYMENTS.name:
        check.sum_differences = _payment_sums(list(expected.values()), rows)
    return check


_SumKey = tuple[str, str | None, str]


def _sums(rows: Iterable[Sequence[Any]]) -> dict[_SumKey, Decimal]:
    """Money sums keyed by (dimension, group, column), for both dimensions in one pass."""
    names = [column for column, _, _ in COLUMNS[SQUARE_PAYMENTS.name]]
    dimensions = [(dimension, names.index(dimension)) for dimension in _SUM_DIMENSIONS]
    money = [(column, names.index(column)) for column in PAYMENT_SUM_COLUMNS]
    totals: dict[_SumKey, Decimal] = defaultdict(Decimal)
    for row in rows:
        for column, index in money:
            value = row[index]
            if value is None:
                continue
            amount = value if isinstance(value, Decimal) else Decimal(value)
            for dimension, group_index in dimensions:
                totals[(dimension, row[group_index], column)] += amount
    return totals


def _payment_sums(truth_rows: list[list[Any]], rows: list[list[Any]]) -> list[SumDifference]:
    expected = _sums(truth_rows)
    actual = _sums(rows)
    differences = []
    for dimension, group, column in sorted(
        expected.keys() | actual.keys(), key=lambda k: (k[0], str(k[1]), k[2])
    ):
        want = expected.get((dimension, group, column), Decimal(0))
        got = actual.get((dimension, group, column), Decimal(0))
        if want != got:
            differences.append(SumDifference(dimension, group, column, want, got))
    return differences
