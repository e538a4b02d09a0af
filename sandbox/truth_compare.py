"""Comparing a table's warehouse rows with the truth: keys, every column, and money sums to the cent;
and the rejects table's rows with the records the truth says are served malformed."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from sandbox.truth_columns import CheckedTable, shown, truth_value
from sandbox.truth_report import (
    EXAMPLES,
    ColumnMismatch,
    Mismatch,
    RejectsCheck,
    SumDifference,
    TableCheck,
)

__all__ = ["compare_rejects", "compare_table"]

#: How much of a reason a rejects report quotes, characters.
_REASON_SHOWN = 200


def compare_table(table: CheckedTable, records: list[dict[str, Any]], rows: list[list[Any]]) -> TableCheck:
    """Compare one table's rows with its truth records.

    Args:
        table: the checked table: its columns, key order and money sums.
        records: the truth's records for the table.
        rows: the warehouse rows as :func:`sandbox.truth_warehouse.read_table` returns them.

    Returns:
        The table's check, without schema differences (the caller adds those).

    Raises:
        ValueError: if the truth holds a key twice.
    """
    columns = table.columns
    key_field = columns[0][1]
    expected: dict[str, list[Any]] = {}
    for record in records:
        key = str(record[key_field])
        if key in expected:
            raise ValueError(f"the truth for {table.name} holds key {key!r} twice")
        expected[key] = [truth_value(kind, record.get(truth_field)) for _, truth_field, kind in columns]

    check = TableCheck(table=table.name, expected_rows=len(expected), warehouse_rows=len(rows))
    copies = Counter(str(row[0]) for row in rows)
    order = table.key_order
    check.missing = sorted((key for key in expected if key not in copies), key=order)
    check.unexpected = sorted((key for key in copies if key not in expected), key=order)
    check.duplicates = {key: copies[key] for key in sorted(copies, key=order) if copies[key] > 1}

    mismatched: dict[str, ColumnMismatch] = {}
    for row in rows:
        key = str(row[0])
        truth = expected.get(key)
        if truth is None:
            continue
        # The key itself matched already; its type is the schema check's business.
        for index in range(1, len(columns)):
            want, actual = truth[index], row[index]
            # Same type as well as equal: True == 1 must not pass for a BOOL column, nor a float amount.
            if want == actual and type(want) is type(actual):
                continue
            column, _, kind = columns[index]
            found = mismatched.setdefault(column, ColumnMismatch(column))
            found.count += 1
            if len(found.examples) < EXAMPLES:
                found.examples.append(Mismatch(key, shown(kind, want), shown(kind, actual)))
    # Report columns in table order, whatever order the rows surfaced them in.
    check.mismatched = {column: mismatched[column] for column, _, _ in columns if column in mismatched}
    if table.sum_columns:
        check.sum_differences = _sum_differences(table, list(expected.values()), rows)
    return check


_SumKey = tuple[str, str | None, str]


def _group(value: Any) -> str | None:
    """A dimension's value as a group name: text as it is, a boolean as ``true`` or ``false``."""
    if value is None:
        return None
    return str(value).lower() if isinstance(value, bool) else str(value)


def _sums(table: CheckedTable, rows: Iterable[Sequence[Any]]) -> dict[_SumKey, Decimal]:
    """Money sums keyed by (dimension, group, column), for every dimension in one pass."""
    names = [column for column, _, _ in table.columns]
    dimensions = [(dimension, names.index(dimension)) for dimension in table.sum_dimensions]
    money = [(column, names.index(column)) for column in table.sum_columns]
    totals: dict[_SumKey, Decimal] = defaultdict(Decimal)
    for row in rows:
        for column, index in money:
            value = row[index]
            # NULL adds nothing; text that did not read as money is a column mismatch already.
            if not isinstance(value, Decimal):
                continue
            for dimension, group_index in dimensions:
                totals[(dimension, _group(row[group_index]), column)] += value
    return totals


def _sum_differences(
    table: CheckedTable, truth_rows: list[list[Any]], rows: list[list[Any]]
) -> list[SumDifference]:
    expected = _sums(table, truth_rows)
    actual = _sums(table, rows)
    differences = []
    for dimension, group, column in sorted(
        expected.keys() | actual.keys(), key=lambda k: (k[0], str(k[1]), k[2])
    ):
        want = expected.get((dimension, group, column), Decimal(0))
        got = actual.get((dimension, group, column), Decimal(0))
        if want != got:
            differences.append(SumDifference(dimension, group, column, want, got))
    return differences


def compare_rejects(
    source: str, records: Iterable[dict[str, Any]], rows: Iterable[Sequence[str | None]]
) -> RejectsCheck:
    """Compare one source's rows in ``_possync_rejects`` with the truth's rejects.

    Args:
        source: the source compared (``square``); records of other sources are ignored.
        records: the truth's rejects (``Truth.rejects``): ``{"source", "stream", "record_key",
            "field", ...}`` each.
        rows: the source's rejects rows as ``(stream, record_key, reason, message_id)``.

    Returns:
        The comparison: every expected key present with a reason naming its ``field``, no other key,
        no key twice for one message.

    Raises:
        ValueError: if the truth holds a key twice.
    """
    expected: dict[str, str] = {}
    for record in records:
        if record["source"] != source:
            continue
        key = f"{record['stream']}/{record['record_key']}"
        if key in expected:
            raise ValueError(f"the truth's rejects hold key {key!r} twice")
        expected[key] = str(record["field"])
    rows = list(rows)
    check = RejectsCheck(source=source, expected_rows=len(expected), warehouse_rows=len(rows))
    reasons: dict[str, list[str]] = defaultdict(list)
    copies: Counter[tuple[str, str]] = Counter()
    for stream, record_key, reason, message_id in rows:
        key = f"{stream}/{record_key}"
        reasons[key].append(reason or "")
        copies[(key, message_id or "")] += 1
    check.missing = sorted(key for key in expected if key not in reasons)
    check.unexpected = sorted(key for key in reasons if key not in expected)
    duplicated: dict[str, int] = {}
    for (key, _message), count in copies.items():
        if count > 1:
            duplicated[key] = max(count, duplicated.get(key, 0))
    check.duplicates = dict(sorted(duplicated.items()))
    for key in sorted(expected.keys() & reasons.keys()):
        wrong = [reason for reason in reasons[key] if expected[key] not in reason]
        if wrong:
            check.unnamed[key] = wrong[0][:_REASON_SHOWN]
    return check
