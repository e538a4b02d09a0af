"""Reading the warehouse for the check: each table's schema differences, and its rows as canonical values.

One query per table returns every row as a single JSON array of strings, which is then read back into
the canonical forms of :mod:`sandbox.truth_columns`; column types are checked against the table's
schema instead of the result's.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from google.cloud import bigquery

from sandbox.truth_columns import CheckedTable, ColumnKind, timestamp_text
from workers.sinks.bigquery_sql import check_identifier

__all__ = ["read_table", "schema_differences", "table_ref"]

#: BigQuery's legacy type names, as the tables API may report them, and the standard ones.
_TYPE_ALIASES = {"INTEGER": "INT64", "BOOLEAN": "BOOL", "FLOAT": "FLOAT64", "BIGNUMERIC": "BIGNUMERIC"}
#: RFC 3339 UTC to the microsecond: TIMESTAMP's whole precision, in a form ``fromisoformat`` reads.
_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%E6SZ"


def _select_expression(column: str, kind: ColumnKind) -> str:
    # Every column goes out as a string in one JSON array per row: the client library converts each
    # cell of a typed result in Python (4-7 s for 100k payments); one string per row takes ~2 s.
    # The types themselves are checked against the table's schema instead; a string column is cast
    # too, so a table that stores it as another type still reads (and differs where it should).
    quoted = f"`{column}`"
    if kind == "timestamp":
        return f"FORMAT_TIMESTAMP('{_TIMESTAMP_FORMAT}', {quoted}, 'UTC')"
    if kind == "list":
        return f"TO_JSON_STRING({quoted})"
    return f"CAST({quoted} AS STRING)"


def _warehouse_list(text: str | None) -> list[Any]:
    # A REPEATED column has no NULL: an empty array reads back as [].
    return [] if text is None else list(orjson.loads(text))


def _warehouse_bool(text: str | None) -> bool | str | None:
    return None if text is None else {"true": True, "false": False}.get(text, text)


def _or_text(read: Callable[[str], Any]) -> Callable[[str | None], Any]:
    """``read`` for a value, None for NULL, and the text itself where it does not parse."""

    def reader(text: str | None) -> Any:
        if text is None:
            return None
        try:
            return read(text)
        except (ValueError, InvalidOperation):
            # A column stored as another type: its text then differs from the truth, and the schema
            # check says why, instead of the check stopping.
            return text

    return reader


#: How each kind of column is read back from its string form; strings stay as they are.
_READERS: dict[ColumnKind, Callable[[str | None], Any] | None] = {
    "str": None,
    "timestamp": _or_text(timestamp_text),
    "cents": _or_text(Decimal),
    "int": _or_text(int),
    "bool": _warehouse_bool,
    "list": _warehouse_list,
}


def table_ref(project: str, dataset: str, table: str) -> str:
    """The backquoted ``project.dataset.table`` reference for the query text.

    Raises:
        ValueError: for an invalid project or dataset id.
    """
    # Identifiers cannot be query parameters: validate them so nothing else reaches the SQL text.
    check_identifier("project", project)
    check_identifier("dataset", dataset)
    return f"`{project}.{dataset}.{table}`"


def schema_differences(table: CheckedTable, schema: Sequence[bigquery.SchemaField]) -> dict[str, str]:
    """Checked columns whose type or mode differs from the table's spec, mapped to how they differ.

    Args:
        table: the checked table; its ``spec`` is the table as ``schemas/tables.py`` declares it.
        schema: the table's schema as BigQuery reports it.

    Returns:
        ``{column: "missing, expected ..."}`` or ``{column: "<found>, expected <wanted>"}``.
    """
    actual = {f.name: (_TYPE_ALIASES.get(f.field_type, f.field_type), f.mode or "NULLABLE") for f in schema}
    differences = {}
    for column, _, _ in table.columns:
        want = table.spec.column(column)
        found = actual.get(column)
        if found is None:
            differences[column] = f"missing, expected {want.type} {want.mode}"
        elif found[0] != want.type or (found[1] == "REPEATED") != (want.mode == "REPEATED"):
            differences[column] = f"{found[0]} {found[1]}, expected {want.type} {want.mode}"
    return differences


def read_table(
    client: bigquery.Client, ref: str, present: Collection[str], table: CheckedTable, timeout_seconds: float
) -> list[list[Any]]:
    """Every row of a checked table, one query, values in the order of its ``columns``.

    Args:
        client: a BigQuery client.
        ref: the table reference from :func:`table_ref`.
        present: the columns the table has; the others read as NULL.
        table: the checked table.
        timeout_seconds: deadline for the query and for reading its result, seconds.

    Returns:
        One list per row (duplicates included), each value in its canonical form; a value that does
        not parse as its kind (a column stored as another type) stays text, so it differs from the truth.
    """
    # A column the table lacks reads as NULL, so the rest is still compared (and it shows as differing).
    items = ", ".join(
        _select_expression(column, kind) if column in present else "CAST(NULL AS STRING)"
        for column, _, kind in table.columns
    )
    job = client.query(f"SELECT TO_JSON_STRING([{items}]) AS row_json FROM {ref}", timeout=timeout_seconds)
    readers = [
        (index, reader) for index, (_, _, kind) in enumerate(table.columns) if (reader := _READERS[kind])
    ]
    rows = []
    # Large pages: the check reads whole tables, and each page is a round trip.
    for row in job.result(timeout=timeout_seconds, page_size=100_000):
        values = orjson.loads(row[0])
        for index, reader in readers:
            values[index] = reader(values[index])
        rows.append(values)
    return rows
