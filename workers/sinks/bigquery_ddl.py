"""A migration's statements and names: the copy into a new layout, the figures that verify it, the
catch-up MERGE and the renames of the swap.

Everything here is pure (no I/O), so the SQL a migration runs can be read and tested on its own. As
in ``bigquery_sql``, SQL text is built only from identifiers that passed ``check_identifier`` and
from this project's own table specs; values travel as query parameters, except the copy's snapshot
time, which is a timestamp literal formatted here from an aware ``datetime``.

How a source column becomes a column of the spec (:func:`plan_copy`), the casts being exact:

=============================  ===============================================================
source → spec type             expression
=============================  ===============================================================
same type (and mode)           the column as is
FLOAT64 → NUMERIC              ``ROUND(CAST(c AS NUMERIC), 2)``: the old system's FLOAT money
                               becomes cents (verify then proves no value had a sub-cent part)
INT64 → NUMERIC                ``CAST(c AS NUMERIC)``
INT64 → STRING                 ``CAST(c AS STRING)``
DATE → TIMESTAMP               ``TIMESTAMP(c)`` (midnight UTC)
DATETIME → TIMESTAMP           ``TIMESTAMP(c)`` (the DATETIME read as UTC, how possync stores time)
missing, NULLABLE              ``CAST(NULL AS type)``; missing REPEATED: an empty array
missing, REQUIRED              refused
anything else                  refused (not exact: NUMERIC → FLOAT64, TIMESTAMP → DATE, ...)
=============================  ===============================================================

Source columns the spec does not have are left behind (the plan lists them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from schemas.tables import MIGRATIONS, TableSpec
from workers.sinks.bigquery_sql import MergeStatement, check_identifier

__all__ = [
    "CLUSTERABLE_TYPES",
    "SNAPSHOT_LABEL",
    "CopyPlan",
    "CopyRefused",
    "FiguresQuery",
    "SourceColumn",
    "backup_table_name",
    "build_catch_up_merge",
    "build_ctas",
    "build_drop",
    "build_figures",
    "build_journal_merge",
    "build_rename",
    "copy_job_id",
    "migrating_table_name",
    "normalize_type",
    "partition_expression",
    "plan_copy",
    "snapshot_from_label",
    "snapshot_label",
    "timestamp_literal",
]

Granularity = Literal["HOUR", "DAY", "MONTH", "YEAR"]

#: Column types BigQuery clusters by (top-level, not repeated); FLOAT64 is not among them.
CLUSTERABLE_TYPES = frozenset(
    {"STRING", "INT64", "NUMERIC", "BIGNUMERIC", "DATE", "DATETIME", "TIMESTAMP", "BOOL"}
)
#: Job label carrying the copy's snapshot time (microseconds since the epoch): a re-attached copy
#: job tells which snapshot of the source it read, whoever started it.
SNAPSHOT_LABEL = "possync_snapshot_us"
#: Longest table name part kept in a job id (job ids allow 1,024 characters; the digest is unique).
_JOB_TABLE_CHARS = 100
_RANK = "_possync_rank"

#: Legacy and standard SQL spellings of column types, as the API reports them, to one name.
_TYPE_NAMES = {
    "FLOAT": "FLOAT64",
    "FLOAT64": "FLOAT64",
    "INTEGER": "INT64",
    "INT64": "INT64",
    "BOOLEAN": "BOOL",
    "BOOL": "BOOL",
    "RECORD": "STRUCT",
    "STRUCT": "STRUCT",
}

#: (source type, spec type) → expression template over ``{c}`` (the quoted source column); exact.
_CASTS = {
    ("FLOAT64", "NUMERIC"): "ROUND(CAST({c} AS NUMERIC), 2)",
    ("INT64", "NUMERIC"): "CAST({c} AS NUMERIC)",
    ("INT64", "STRING"): "CAST({c} AS STRING)",
    ("DATE", "TIMESTAMP"): "TIMESTAMP({c})",
    ("DATETIME", "TIMESTAMP"): "TIMESTAMP({c})",
}


class CopyRefused(ValueError):
    """The source table cannot be copied into the spec's columns exactly; the message lists why."""


def normalize_type(field_type: str) -> str:
    """The standard SQL name of a column type as the API reports it (``FLOAT`` → ``FLOAT64``)."""
    upper = field_type.upper()
    return _TYPE_NAMES.get(upper, upper)


@dataclass(frozen=True)
class SourceColumn:
    """A column of the table being migrated, as its metadata reports it.

    Attributes:
        name: column name.
        type: standard SQL type name (see :func:`normalize_type`).
        mode: ``NULLABLE``, ``REQUIRED`` or ``REPEATED``.
    """

    name: str
    type: str
    mode: str = "NULLABLE"


@dataclass(frozen=True)
class CopyPlan:
    """How each column of the spec is read from the source.

    Attributes:
        spec: the target table's spec.
        expressions: ``(column, SQL expression over the source)`` for every spec column, in order.
        source_types: each spec column's type in the source (``None`` when missing).
        casts: column → the conversion applied (``"FLOAT64 -> NUMERIC (cents)"``...), for the plan.
        rounded: columns converted from FLOAT64 to NUMERIC cents (verify counts sub-cent values).
        missing: spec columns absent from the source, filled with NULL.
        dropped: source columns the spec does not have; not copied.
    """

    spec: TableSpec
    expressions: tuple[tuple[str, str], ...]
    source_types: dict[str, str | None]
    casts: dict[str, str]
    rounded: tuple[str, ...]
    missing: tuple[str, ...]
    dropped: tuple[str, ...]

    def expression(self, name: str) -> str:
        """The expression that reads spec column ``name`` from the source.

        Raises:
            KeyError: if the spec has no such column.
        """
        for column, expression in self.expressions:
            if column == name:
                return expression
        raise KeyError(name)


def _q(name: str) -> str:
    return f"`{name}`"


def _ref(project: str, dataset: str, table: str) -> str:
    return "`" + ".".join((project, dataset, table)) + "`"


def _sql_type(type_: str, mode: str) -> str:
    return f"ARRAY<{type_}>" if mode == "REPEATED" else type_


def plan_copy(spec: TableSpec, source: Iterable[SourceColumn]) -> CopyPlan:
    """Decide how every column of ``spec`` is read from a source table with these columns.

    Args:
        spec: the target layout's table spec (its columns and types win).
        source: the source table's columns.

    Returns:
        The plan (see :class:`CopyPlan`).

    Raises:
        CopyRefused: listing every column that cannot be copied exactly (a REQUIRED column
            missing, a cast that could change a value, a mode change to or from REPEATED).
    """
    by_name = {column.name.lower(): column for column in source}
    expressions: list[tuple[str, str]] = []
    source_types: dict[str, str | None] = {}
    casts: dict[str, str] = {}
    rounded: list[str] = []
    missing: list[str] = []
    problems: list[str] = []
    for column in spec.columns:
        found = by_name.get(column.name.lower())
        target = _sql_type(column.type, column.mode)
        if found is None:
            source_types[column.name] = None
            if column.mode == "REQUIRED":
                problems.append(f"{column.name}: REQUIRED in the spec but missing from the source")
                continue
            missing.append(column.name)
            empty = f"{target}[]" if column.mode == "REPEATED" else f"CAST(NULL AS {target})"
            expressions.append((column.name, empty))
            continue
        source_types[column.name] = _sql_type(found.type, found.mode)
        if (found.mode == "REPEATED") != (column.mode == "REPEATED"):
            problems.append(f"{column.name}: {found.mode} in the source, {column.mode} in the spec")
            continue
        quoted = _q(found.name)
        if found.type == column.type:
            expressions.append((column.name, quoted))
            continue
        template = _CASTS.get((found.type, column.type))
        if template is None or column.mode == "REPEATED":
            problems.append(f"{column.name}: no exact cast from {found.type} to {column.type}")
            continue
        expressions.append((column.name, template.format(c=quoted)))
        if (found.type, column.type) == ("FLOAT64", "NUMERIC"):
            rounded.append(column.name)
            casts[column.name] = "FLOAT64 -> NUMERIC rounded to cents"
        else:
            casts[column.name] = f"{found.type} -> {column.type}"
    if problems:
        raise CopyRefused(f"cannot copy {spec.name} into its spec's columns: " + "; ".join(problems))
    known = {column.name.lower() for column in spec.columns}
    dropped = tuple(column.name for column in source if column.name.lower() not in known)
    return CopyPlan(
        spec=spec,
        expressions=tuple(expressions),
        source_types=source_types,
        casts=casts,
        rounded=tuple(rounded),
        missing=tuple(missing),
        dropped=dropped,
    )


def partition_expression(field: str, field_type: str, granularity: Granularity) -> str:
    """The ``PARTITION BY`` expression for time-unit partitioning on ``field``.

    TIMESTAMP: ``DATE(f)`` for DAY, ``TIMESTAMP_TRUNC(f, HOUR|MONTH|YEAR)`` otherwise. DATE: ``f``
    for DAY, ``DATE_TRUNC(f, MONTH|YEAR)``; a DATE cannot be partitioned by HOUR.

    Raises:
        ValueError: for a type other than TIMESTAMP/DATE, or DATE with HOUR.
    """
    quoted = _q(check_identifier("column", field))
    if field_type == "TIMESTAMP":
        return f"DATE({quoted})" if granularity == "DAY" else f"TIMESTAMP_TRUNC({quoted}, {granularity})"
    if field_type == "DATE":
        if granularity == "HOUR":
            raise ValueError(f"a DATE column ({field}) cannot be partitioned by HOUR")
        return quoted if granularity == "DAY" else f"DATE_TRUNC({quoted}, {granularity})"
    raise ValueError(f"partition column {field} must be TIMESTAMP or DATE, not {field_type}")


def timestamp_literal(moment: datetime) -> str:
    """A BigQuery TIMESTAMP literal for an aware ``datetime``, to the microsecond, in UTC.

    Raises:
        ValueError: for a naive ``datetime``.
    """
    if moment.tzinfo is None:
        raise ValueError("a snapshot time must be timezone-aware")
    return f"TIMESTAMP '{moment.astimezone(UTC).isoformat(sep=' ')}'"


def _source(project: str, dataset: str, table: str, snapshot: datetime | None) -> str:
    ref = _ref(project, dataset, table)
    return ref if snapshot is None else f"{ref} FOR SYSTEM_TIME AS OF {timestamp_literal(snapshot)}"


def _string_literal(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def build_ctas(
    plan: CopyPlan,
    *,
    project: str,
    dataset: str,
    source_table: str,
    target_table: str,
    partition_field: str,
    granularity: Granularity,
    cluster: Sequence[str],
    snapshot: datetime | None,
) -> str:
    """``CREATE TABLE target (columns of the spec) PARTITION BY ... CLUSTER BY ... AS SELECT ...``.

    The column list gives the new table the spec's exact types, modes (``NOT NULL`` for REQUIRED:
    a NULL in the source fails the copy rather than loosening the schema) and descriptions, as the
    sink would create it. Reading the source ``FOR SYSTEM_TIME AS OF snapshot`` pins the copy to a
    point in time that verify can read again.

    Raises:
        InvalidIdentifier: for an invalid name.
        ValueError: for an invalid partitioning (see :func:`partition_expression`).
    """
    spec = plan.spec
    check_identifier("project", project)
    check_identifier("dataset", dataset)
    check_identifier("table", source_table)
    check_identifier("table", target_table)
    for name in cluster:
        check_identifier("column", name)
    definitions = []
    for column in spec.columns:
        check_identifier("column", column.name)
        definition = f"  {_q(column.name)} {_sql_type(column.type, column.mode)}"
        if column.mode == "REQUIRED":
            definition += " NOT NULL"
        if column.description:
            definition += f" OPTIONS(description={_string_literal(column.description)})"
        definitions.append(definition)
    partition = partition_expression(partition_field, spec.column(partition_field).type, granularity)
    lines = [
        f"CREATE TABLE {_ref(project, dataset, target_table)} (",
        ",\n".join(definitions),
        ")",
        f"PARTITION BY {partition}",
    ]
    if cluster:
        lines.append("CLUSTER BY " + ", ".join(_q(name) for name in cluster))
    if spec.description:
        lines.append(f"OPTIONS(description={_string_literal(spec.description)})")
    select = ",\n  ".join(f"{expression} AS {_q(name)}" for name, expression in plan.expressions)
    lines.append(f"AS SELECT\n  {select}\nFROM {_source(project, dataset, source_table, snapshot)}")
    return "\n".join(lines)


@dataclass(frozen=True)
class FiguresQuery:
    """A query returning one row of figures; column ``{prefix}{i}`` holds figure ``names[i]``.

    Attributes:
        sql: the query.
        names: the figures' names (``rows``, ``distinct_keys``, ``min(created_at)``, ``sum(amount)``...),
            the same on both sides, so source and copy compare by name.
        prefix: the prefix of the result's column names.
    """

    sql: str
    names: tuple[str, ...]
    prefix: str = "f"

    def columns(self) -> tuple[str, ...]:
        """The result column holding each figure, in the order of :attr:`names`."""
        return tuple(f"{self.prefix}{index}" for index in range(len(self.names)))


def _key_expression(plan: CopyPlan, side: Literal["source", "copy"]) -> str:
    key = plan.spec.key

    def read(name: str) -> str:
        return plan.expression(name) if side == "source" else _q(name)

    if len(key) == 1:
        return read(key[0])
    return "TO_JSON_STRING(STRUCT(" + ", ".join(f"{read(name)} AS {_q(name)}" for name in key) + "))"


def build_figures(
    plan: CopyPlan,
    *,
    project: str,
    dataset: str,
    table: str,
    side: Literal["source", "copy"],
    partition_field: str,
    snapshot: datetime | None = None,
    prefix: str = "f",
) -> FiguresQuery:
    """The figures verify compares between the source and the copy, which must be equal.

    - ``rows``: ``COUNT(*)``; ``distinct_keys``: distinct values of the spec's key.
    - ``min(f)``/``max(f)`` of the partition column (the source read through its cast).
    - ``sum(c)`` of every NUMERIC/FLOAT64 column of the spec, to the cent: on a FLOAT64 source the
      float total rounded once, ``ROUND(CAST(SUM(c) AS NUMERIC), 2)``, against the exact NUMERIC
      total of the rounded values in the copy; they differ when rounding row by row changed money.
    - ``sub_cent_rows(c)`` for each FLOAT64 → NUMERIC column: values with a part below the cent
      (after the 9 decimal places NUMERIC keeps, so 0.1 + 0.2 counts as 0.30); must be 0 in both.

    Args:
        plan: the copy plan (its expressions read the source).
        project, dataset, table: the table to read.
        side: ``source`` (read through the plan's casts) or ``copy`` (the spec's columns as they are).
        partition_field: the new layout's partition column.
        snapshot: read the table as of this time (``FOR SYSTEM_TIME AS OF``), or now.
        prefix: result columns are named ``{prefix}0``, ``{prefix}1``... (letters only).

    Raises:
        InvalidIdentifier: for an invalid name.
    """
    check_identifier("table", table)

    def read(name: str) -> str:
        return plan.expression(name) if side == "source" else _q(name)

    figures: list[tuple[str, str]] = [
        ("rows", "COUNT(*)"),
        ("distinct_keys", f"COUNT(DISTINCT {_key_expression(plan, side)})"),
        (f"min({partition_field})", f"MIN({read(partition_field)})"),
        (f"max({partition_field})", f"MAX({read(partition_field)})"),
    ]
    for column in plan.spec.columns:
        if column.mode == "REPEATED" or column.type not in ("NUMERIC", "FLOAT64"):
            continue
        quoted = _q(column.name)
        if side == "copy":
            total = (
                f"SUM({quoted})" if column.type == "NUMERIC" else f"ROUND(CAST(SUM({quoted}) AS NUMERIC), 2)"
            )
        elif plan.source_types.get(column.name) == "FLOAT64":
            total = f"ROUND(CAST(SUM({quoted}) AS NUMERIC), 2)"
        else:
            total = f"CAST(SUM({read(column.name)}) AS NUMERIC)"
        figures.append((f"sum({column.name})", total))
    for name in plan.rounded:
        quoted = _q(name)
        if side == "source":
            exact = f"COUNTIF(CAST({quoted} AS NUMERIC) != ROUND(CAST({quoted} AS NUMERIC), 2))"
        else:
            exact = f"COUNTIF({quoted} != ROUND({quoted}, 2))"
        figures.append((f"sub_cent_rows({name})", exact))
    if not prefix.isalpha():
        raise ValueError(f"figure column prefix {prefix!r} must be letters")
    select = ",\n  ".join(f"{expression} AS {prefix}{index}" for index, (_, expression) in enumerate(figures))
    sql = f"SELECT\n  {select}\nFROM {_source(project, dataset, table, snapshot)}"
    return FiguresQuery(sql=sql, names=tuple(name for name, _ in figures), prefix=prefix)


def _key_match(spec: TableSpec) -> str:
    conditions = []
    for name in spec.key:
        quoted = _q(name)
        if spec.column(name).mode == "REQUIRED":
            conditions.append(f"T.{quoted} = S.{quoted}")
        else:
            conditions.append(f"(T.{quoted} = S.{quoted} OR (T.{quoted} IS NULL AND S.{quoted} IS NULL))")
    return "\n  AND ".join(conditions)


def build_catch_up_merge(
    plan: CopyPlan,
    *,
    project: str,
    dataset: str,
    source_table: str,
    target_table: str,
    change_column: str | None,
    since: datetime,
) -> MergeStatement:
    """The MERGE that carries into the copy what writers changed in the source after the copy.

    Run with every writer held off, so the source is still: rows whose ``change_column`` (the
    ingestion time writers stamp, ``_synced_at``) is at or after ``since`` are read through the
    plan's casts and replace the copy's row with the same key, or are inserted. The source is the
    truth here, so no version rule applies; it is de-duplicated on the key (newest version first)
    since a MERGE refuses two source rows for one target row. Without a change column every row of
    the source is merged.

    Raises:
        InvalidIdentifier: for an invalid name.
    """
    spec = plan.spec
    check_identifier("project", project)
    check_identifier("dataset", dataset)
    check_identifier("table", source_table)
    check_identifier("table", target_table)
    columns = spec.column_names
    inner = ", ".join(f"{expression} AS {_q(name)}" for name, expression in plan.expressions)
    parameters: tuple[tuple[str, str, object], ...] = ()
    where = ""
    if change_column is not None:
        where = f" WHERE {_q(check_identifier('column', change_column))} >= @since"
        parameters = (("since", "TIMESTAMP", since),)
    order = f" ORDER BY {_q(spec.version_column)} DESC" if spec.version_column else ""
    keys = ", ".join(_q(name) for name in spec.key)
    source = (
        f"SELECT * EXCEPT ({_RANK}) FROM ("
        f"SELECT *, ROW_NUMBER() OVER (PARTITION BY {keys}{order}) AS {_RANK} FROM ("
        f"SELECT {inner} FROM {_ref(project, dataset, source_table)}{where})) WHERE {_RANK} = 1"
    )
    updates = ", ".join(f"{_q(name)} = S.{_q(name)}" for name in columns if name not in spec.key)
    column_list = ", ".join(_q(name) for name in columns)
    values = ", ".join(f"S.{_q(name)}" for name in columns)
    lines = [
        f"MERGE {_ref(project, dataset, target_table)} AS T",
        f"USING ({source}) AS S",
        f"ON {_key_match(spec)}",
    ]
    if updates:
        lines.append(f"WHEN MATCHED THEN UPDATE SET {updates}")
    lines.append(f"WHEN NOT MATCHED BY TARGET THEN INSERT ({column_list}) VALUES ({values})")
    return MergeStatement(sql="\n".join(lines), parameters=parameters)


def build_rename(*, project: str, dataset: str, table: str, new_name: str) -> str:
    """``ALTER TABLE table RENAME TO new_name`` (same dataset).

    Raises:
        InvalidIdentifier: for an invalid name.
    """
    check_identifier("table", table)
    check_identifier("table", new_name)
    return f"ALTER TABLE {_ref(project, dataset, table)} RENAME TO {_q(new_name)}"


def build_drop(*, project: str, dataset: str, table: str) -> str:
    """``DROP TABLE IF EXISTS table``.

    Raises:
        InvalidIdentifier: for an invalid name.
    """
    check_identifier("table", table)
    return f"DROP TABLE IF EXISTS {_ref(project, dataset, table)}"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def migrating_table_name(table: str, migration_id: str) -> str:
    """The new layout's table until the swap: ``TABLE__migrating_<10 hex digits of the id>``.

    Raises:
        InvalidIdentifier: if the name would be invalid (too long).
    """
    return check_identifier("table", f"{table}__migrating_{_digest(migration_id)[:10]}")


def backup_table_name(table: str, at: datetime) -> str:
    """The old table after the swap: ``TABLE__backup_<YYYYMMDDHHMMSS>`` (UTC).

    Raises:
        InvalidIdentifier: if the name would be invalid (too long).
    """
    return check_identifier("table", f"{table}__backup_{at.astimezone(UTC):%Y%m%d%H%M%S}")


def copy_job_id(*, project: str, dataset: str, table: str, migration_id: str, attempt: int) -> str:
    """The copy's job id: the same for a retried copy (which re-attaches on 409), new per attempt.

    Job ids are unique per project, so the digest covers the dataset too. An attempt whose job
    failed (or whose copy a failed verify threw away) moves to the next number.
    """
    digest = _digest(project, dataset, migration_id)[:24]
    return f"possync_migrate_copy_{table[:_JOB_TABLE_CHARS]}_{digest}_{attempt}"


def snapshot_label(snapshot: datetime) -> str:
    """The :data:`SNAPSHOT_LABEL` value for a snapshot time (microseconds since the epoch)."""
    delta = snapshot.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return str((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds)


def snapshot_from_label(value: str) -> datetime:
    """The snapshot time a :func:`snapshot_label` value stands for.

    Raises:
        ValueError: if the value is not a number.
    """
    micros = int(value)
    seconds, rest = divmod(micros, 1_000_000)
    return datetime.fromtimestamp(seconds, tz=UTC).replace(microsecond=rest)


def build_journal_merge(*, project: str, dataset: str) -> str:
    """The MERGE that records one step of a migration in ``_possync_migrations``.

    One row per (migration, step), from ``@``-parameters named after the columns; a row is replaced
    only by a newer ``updated_at``, so a repeated write changes nothing (the sink's rule, without
    its staging table: a step's row is one small row).

    Raises:
        InvalidIdentifier: for an invalid project or dataset name.
    """
    check_identifier("project", project)
    check_identifier("dataset", dataset)
    columns = MIGRATIONS.column_names
    select = ", ".join(f"@{name.lstrip('_')} AS {_q(name)}" for name in columns)
    updates = ", ".join(f"{_q(name)} = S.{_q(name)}" for name in columns if name not in MIGRATIONS.key)
    listed = ", ".join(_q(name) for name in columns)
    values = ", ".join(f"S.{_q(name)}" for name in columns)
    return "\n".join(
        [
            f"MERGE {_ref(project, dataset, MIGRATIONS.name)} AS T",
            f"USING (SELECT {select}) AS S",
            f"ON {_key_match(MIGRATIONS)}",
            "WHEN MATCHED AND S.`updated_at` > T.`updated_at`",
            f"  THEN UPDATE SET {updates}",
            f"WHEN NOT MATCHED BY TARGET THEN INSERT ({listed}) VALUES ({values})",
        ]
    )
