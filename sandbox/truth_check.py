"""The ground-truth check: does the warehouse hold exactly what the Square sandbox holds?

The sandbox computes its truth from its own integer-cents model and serves it as NDJSON
(``GET /_sandbox/truth/payments|items|customers``; see :mod:`sandbox.truth`). :func:`check_warehouse`
reads each warehouse table with one query (:mod:`sandbox.truth_warehouse`) and compares it row by row
(:mod:`sandbox.truth_compare`): every truth key present exactly once, no other key, every column equal
(timestamps as instants to the microsecond, money as exact decimals of the truth's cents, NULL only
where the truth has null; see :mod:`sandbox.truth_columns`), plus payment sums by status and by
location to the cent. A customer deleted at Square is expected as a row marked ``is_deleted`` with
``deleted_at`` (its ``customer.deleted`` event's time), never as a missing row; every other customer
as ``is_deleted`` false with no ``deleted_at``. The comparison is written independently of the sync
code (it does not reuse the row converters in ``schemas/square.py``), so a conversion bug there shows
up here instead of agreeing with itself. The findings are the types of :mod:`sandbox.truth_report`.

The payments the sandbox serves malformed are not expected in ``square_payments``: the truth lists them
as rejects instead, and :func:`check_rejects` checks ``_possync_rejects`` holds each of them (with a
reason naming the broken field) and nothing else of the source.

This module is the check's entry point and re-exports the names callers use, among them
:func:`~sandbox.truth.fetch_truth` and :func:`~sandbox.truth.expected_report`. Its per-table loop,
:func:`check_tables`, is the Lightspeed check's too (:mod:`sandbox.truth_lightspeed`), over its own tables.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any

from google.api_core import exceptions as google_exceptions
from google.cloud import bigquery

from sandbox.truth import Truth, expected_report, fetch_truth
from sandbox.truth_columns import PAYMENT_SUM_COLUMNS, SQUARE_TABLES, TABLE_NAMES, CheckedTable
from sandbox.truth_compare import compare_rejects, compare_table
from sandbox.truth_report import (
    EXAMPLES,
    CheckReport,
    ColumnMismatch,
    Mismatch,
    RejectsCheck,
    SumDifference,
    TableCheck,
)
from sandbox.truth_warehouse import read_table, schema_differences, table_ref
from schemas.tables import REJECTS

__all__ = [
    "EXAMPLES",
    "PAYMENT_SUM_COLUMNS",
    "TABLE_NAMES",
    "CheckReport",
    "ColumnMismatch",
    "Mismatch",
    "RejectsCheck",
    "SumDifference",
    "TableCheck",
    "Truth",
    "check_rejects",
    "check_tables",
    "check_warehouse",
    "expected_report",
    "fetch_truth",
]


def check_warehouse(
    client: bigquery.Client,
    *,
    project: str,
    dataset: str,
    truth: Truth,
    tables: Collection[str] = TABLE_NAMES,
    timeout_seconds: float = 300.0,
) -> CheckReport:
    """Compare the warehouse with the sandbox's truth, row by row, one query per table.

    Args:
        client: a BigQuery client (the emulator or real BigQuery).
        project: BigQuery project id.
        dataset: the dataset holding the Square tables.
        truth: the sandbox's truth (see :func:`fetch_truth`).
        tables: which of :data:`TABLE_NAMES` to check (all by default).
        timeout_seconds: deadline for each table's query, seconds.

    Returns:
        The report; ``report.ok`` is True only if every checked table equals the truth.

    Raises:
        ValueError: for an invalid project or dataset id, or an unknown table name.
        google.api_core.exceptions.GoogleAPICallError: if BigQuery fails for a reason other than a
            missing table (a missing table is reported as a difference instead).
    """
    unknown = set(tables) - set(TABLE_NAMES)
    if unknown:
        raise ValueError(f"no truth for tables {sorted(unknown)}; known: {TABLE_NAMES}")
    return check_tables(
        client,
        project=project,
        dataset=dataset,
        tables=(SQUARE_TABLES[name] for name in TABLE_NAMES if name in tables),
        records=truth.records,
        timeout_seconds=timeout_seconds,
    )


def check_tables(
    client: bigquery.Client,
    *,
    project: str,
    dataset: str,
    tables: Iterable[CheckedTable],
    records: Callable[[str], list[dict[str, Any]]],
    timeout_seconds: float,
) -> CheckReport:
    """Compare tables with their truth records, one query per table; the Square and Lightspeed checks run it.

    Args:
        client: the BigQuery client.
        project: the project id.
        dataset: the dataset holding ``tables``.
        tables: the tables to check, in report order.
        records: the truth's records for a table name (``Truth.records``, ``LightspeedTruth.records``).
        timeout_seconds: deadline for each table's query, seconds.

    Returns:
        The report; ``report.ok`` is True only if every table equals the truth.

    Raises:
        ValueError: for an invalid project or dataset id, or a key the truth holds twice.
        google.api_core.exceptions.GoogleAPICallError: as for :func:`check_warehouse`.
    """
    results: dict[str, TableCheck] = {}
    for table in tables:
        truth_records = records(table.name)
        ref = table_ref(project, dataset, table.name)
        try:
            schema = client.get_table(ref.strip("`"), timeout=timeout_seconds).schema
        except google_exceptions.NotFound as exc:
            absent = TableCheck(
                table=table.name, expected_rows=len(truth_records), error=f"not found: {exc.message}"
            )
            key_field = table.columns[0][1]
            absent.missing = sorted((str(record[key_field]) for record in truth_records), key=table.key_order)
            results[table.name] = absent
            continue
        differences = schema_differences(table, schema)
        if differences.get(table.columns[0][0], "").startswith("missing"):
            results[table.name] = TableCheck(
                table=table.name, expected_rows=len(truth_records), schema=differences, error="no key column"
            )
            continue
        present = {f.name for f in schema}
        check = compare_table(table, truth_records, read_table(client, ref, present, table, timeout_seconds))
        check.schema = differences
        results[table.name] = check
    return CheckReport(tables=results)


def check_rejects(
    client: bigquery.Client,
    *,
    project: str,
    dataset: str,
    truth: Truth,
    source: str = "square",
    timeout_seconds: float = 300.0,
) -> RejectsCheck:
    """Compare one source's rows in ``_possync_rejects`` with the truth's rejects, in one query.

    Args:
        client: a BigQuery client (the emulator or real BigQuery).
        project: BigQuery project id.
        dataset: the dataset holding ``_possync_rejects``.
        truth: the sandbox's truth (see :func:`fetch_truth`); its ``rejects`` are expected.
        source: whose rejects to check.
        timeout_seconds: deadline for the query and for reading its result, seconds.

    Returns:
        The check; ``check.ok`` is True when every expected record has a row whose reason names its
        broken field, and the source has no other reject.

    Raises:
        ValueError: for an invalid project or dataset id, or a key the truth's rejects hold twice.
        google.api_core.exceptions.GoogleAPICallError: if BigQuery fails for a reason other than a
            missing table (a missing table is reported as a difference instead).
    """
    ref = table_ref(project, dataset, REJECTS.name)
    config = bigquery.QueryJobConfig(
        query_parameters=[bigquery.ScalarQueryParameter("source", "STRING", source)]
    )
    try:
        job = client.query(
            f"SELECT stream, record_key, reason, message_id FROM {ref} WHERE source = @source",
            job_config=config,
            timeout=timeout_seconds,
        )
        rows = [
            (row["stream"], row["record_key"], row["reason"], row["message_id"])
            for row in job.result(timeout=timeout_seconds)
        ]
    except google_exceptions.NotFound as exc:
        absent = compare_rejects(source, truth.rejects, [])
        absent.error = f"not found: {exc.message}"
        return absent
    return compare_rejects(source, truth.rejects, rows)
