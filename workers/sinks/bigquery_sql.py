"""The BigQuery sink's statements and names: identifier checks, job ids, staging names, the MERGE.

Everything here is pure (no I/O), so the SQL the sink runs can be read and tested on its own. SQL
text is built only from identifiers that passed :func:`check_identifier` (values travel as query
parameters), which is why ruff's S608 is silenced for this project.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

from schemas.tables import METADATA_COLUMNS, TableSpec

__all__ = [
    "MAX_JOB_ATTEMPTS",
    "BatchRef",
    "InvalidIdentifier",
    "MergeStatement",
    "PartitionRange",
    "build_mark_deleted",
    "build_merge",
    "check_identifier",
    "check_spec",
    "content_digest",
    "job_id",
    "staging_table_name",
]

IdentifierKind = Literal["project", "dataset", "table", "column"]

#: Project ids: 6-30 lowercase letters, digits and hyphens starting with a letter; legacy
#: domain-scoped ids carry ``domain.tld:`` in front.
_PROJECT_RE = re.compile(r"^(?:[a-z0-9][a-z0-9.-]{0,61}[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")
#: Datasets: letters, digits and underscores, at most 1,024 characters.
_DATASET_RE = re.compile(r"^[A-Za-z0-9_]{1,1024}$")
#: Tables: BigQuery also allows some Unicode and dashes/spaces; we allow the portable subset only.
_TABLE_RE = re.compile(r"^[A-Za-z0-9_]{1,1024}$")
#: Columns: a letter or underscore, then letters, digits, underscores; at most 300 characters.
_COLUMN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,299}$")
#: Column-name prefixes BigQuery reserves (case-insensitive).
_RESERVED_COLUMN_PREFIXES = (
    "_table_",
    "_file_",
    "_partition",
    "_row_timestamp",
    "__root__",
    "_colidentifier",
)
_PATTERNS = {"project": _PROJECT_RE, "dataset": _DATASET_RE, "table": _TABLE_RE, "column": _COLUMN_RE}

#: Attempts per job kind and batch: a job id that ended in failure can never run again, so a
#: retried batch moves to the next attempt's id (``..._1``, ``..._2``); past this many failures
#: the batch's ids are spent and the write fails permanently.
MAX_JOB_ATTEMPTS = 20

_METADATA_NAMES = frozenset(column.name for column in METADATA_COLUMNS)
_RANK = "_possync_rank"


class InvalidIdentifier(ValueError):
    """A project, dataset, table or column name breaks BigQuery's rules (or ours, which are stricter)."""


def check_identifier(kind: IdentifierKind, name: str) -> str:
    """Return ``name`` if it is a valid ``kind`` identifier.

    Raises:
        InvalidIdentifier: naming the kind and the rule broken.
    """
    if not isinstance(name, str) or not _PATTERNS[kind].match(name):
        raise InvalidIdentifier(f"invalid BigQuery {kind} name {name!r}")
    if kind == "column" and name.lower().startswith(_RESERVED_COLUMN_PREFIXES):
        raise InvalidIdentifier(f"column name {name!r} uses a prefix BigQuery reserves")
    return name


def check_spec(spec: TableSpec) -> None:
    """Check every identifier of a table spec and that its key, version, partition and clustering
    columns exist and fit.

    Raises:
        InvalidIdentifier: for a bad name.
        ValueError: for an inconsistent spec (unknown column, too many clustering columns...).
    """
    check_identifier("table", spec.name)
    names = [check_identifier("column", column.name) for column in spec.columns]
    if len({name.lower() for name in names}) != len(names):
        raise ValueError(f"{spec.name}: column names must be unique (case-insensitively)")
    for name in (*spec.key, *spec.clustering):
        spec.column(name)
    if not spec.key:
        raise ValueError(f"{spec.name}: a table needs a key to merge on")
    if spec.version_column is not None and (
        spec.column(spec.version_column).type not in ("TIMESTAMP", "INT64", "DATE", "NUMERIC")
    ):
        raise ValueError(f"{spec.name}: version column {spec.version_column!r} must be orderable")
    if spec.partition_field is not None and spec.column(spec.partition_field).type not in (
        "TIMESTAMP",
        "DATE",
    ):
        raise ValueError(f"{spec.name}: partition column {spec.partition_field!r} must be TIMESTAMP or DATE")
    if len(spec.clustering) > 4:
        raise ValueError(f"{spec.name}: BigQuery clusters by at most 4 columns")
    for name in spec.clustering:
        if spec.column(name).mode == "REPEATED":
            raise ValueError(f"{spec.name}: clustering column {name!r} cannot be REPEATED")


def content_digest(rows: Iterable[Mapping[str, Any]]) -> str:
    """SHA-256 of the rows' source content, ingestion metadata (``_synced_at``...) left out.

    A redelivered message rebuilds the same rows with a new ``_synced_at``; leaving metadata out
    gives it the same job ids, so it re-attaches to the jobs that already ran.
    """
    digest = hashlib.sha256()
    for row in rows:
        content = {key: value for key, value in row.items() if key not in _METADATA_NAMES}
        digest.update(json.dumps(content, sort_keys=True, separators=(",", ":"), default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class BatchRef:
    """What a batch covers, from which its job ids and staging table name are derived.

    Attributes:
        project: project id of the target table.
        dataset: dataset of the target table.
        table: target table name.
        batch_id: the engine's id for the batch (stream, window, first and last key...).
        contents: :func:`content_digest` of the rows.
    """

    project: str
    dataset: str
    table: str
    batch_id: str
    contents: str

    @property
    def digest(self) -> str:
        """32 hex digits naming the batch; the whole target ref is in it (job ids are per project)."""
        parts = (self.project, self.dataset, self.table, self.batch_id, self.contents)
        return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


def job_id(kind: Literal["load", "merge"], batch: BatchRef, attempt: int) -> str:
    """The BigQuery job id of a batch's load or merge, derived from what the batch covers.

    Args:
        kind: ``load`` (into staging) or ``merge`` (into the table).
        batch: the batch.
        attempt: 0 for the first try; see :data:`MAX_JOB_ATTEMPTS`.
    """
    return f"possync_{kind}_{batch.table}_{batch.digest}_{attempt}"


def staging_table_name(batch: BatchRef) -> str:
    """The staging table a batch is loaded into: one per batch, same name on redelivery."""
    return f"_possync_staging_{batch.table}_{batch.digest}"


def _quoted(*parts: str) -> str:
    return "`" + ".".join(parts) + "`"


@dataclass(frozen=True)
class MergeStatement:
    """A MERGE and its parameters.

    Attributes:
        sql: the statement.
        parameters: ``(name, BigQuery type, value)`` per query parameter.
    """

    sql: str
    parameters: tuple[tuple[str, str, Any], ...]


def _partition_value(spec: TableSpec, value: Any) -> datetime | date:
    assert spec.partition_field is not None
    if spec.column(spec.partition_field).type == "DATE":
        return value if isinstance(value, date) else date.fromisoformat(str(value))
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass
class PartitionRange:
    """The range of a batch's partition column, for the MERGE's partition pruning.

    Attributes:
        low: smallest value seen (``None`` until one is).
        high: largest value seen.
        nulls: whether some row had no value.
    """

    low: datetime | date | None = None
    high: datetime | date | None = None
    nulls: bool = False

    def add(self, spec: TableSpec, value: Any) -> None:
        """Widen the range to ``value`` (a JSON value of ``spec``'s partition column)."""
        if value is None:
            self.nulls = True
            return
        parsed = _partition_value(spec, value)
        if self.low is None or parsed < self.low:
            self.low = parsed
        if self.high is None or parsed > self.high:
            self.high = parsed


def _key_match(spec: TableSpec) -> list[str]:
    conditions = []
    for name in spec.key:
        if spec.column(name).mode == "REQUIRED":
            conditions.append(f"T.`{name}` = S.`{name}`")
        else:
            # A NULL key part must still match itself, or a replay would insert the row again.
            conditions.append(f"(T.`{name}` = S.`{name}` OR (T.`{name}` IS NULL AND S.`{name}` IS NULL))")
    return conditions


def build_merge(
    spec: TableSpec,
    *,
    project: str,
    dataset: str,
    staging_table: str,
    rows: Sequence[Mapping[str, Any]] = (),
    partition: PartitionRange | None = None,
) -> MergeStatement:
    """The MERGE of a staging table into ``spec``'s table.

    - The source is de-duplicated on the key (``ROW_NUMBER`` ordered by the version column, newest
      first), since BigQuery refuses a MERGE where one target row matches two source rows.
    - A matched row is updated only when the incoming version is greater, so a replay or an older
      version changes nothing (``_synced_at`` included); or, for tables with a ``deleted_column``,
      when the incoming row marks a deletion the stored row does not show yet; or, for tables
      with a ``coarse_version``, when the versions are equal but the content differs.
    - Unmatched rows are inserted; insert-only tables (no version column) only insert.
    - For partitioned tables the ON clause bounds the target's partition column to the batch's
      range (``@partition_min``..``@partition_max``), so BigQuery prunes partitions. This is only
      correct because the partition column never changes for a row (see ``schemas/tables.py``).

    Args:
        spec: the target table (checked with :func:`check_spec`).
        project: project id (checked).
        dataset: dataset name (checked).
        staging_table: staging table name (checked).
        rows: the batch, to compute the partition range from (when ``partition`` is not given).
        partition: the batch's partition range, as the batcher gathered it.

    Raises:
        InvalidIdentifier: if any identifier is invalid (before any SQL is built).
    """
    check_identifier("project", project)
    check_identifier("dataset", dataset)
    check_identifier("table", staging_table)
    check_spec(spec)
    columns = spec.column_names
    column_list = ", ".join(f"`{name}`" for name in columns)
    partition_keys = ", ".join(f"`{name}`" for name in spec.key)
    order = f" ORDER BY `{spec.version_column}` DESC" if spec.version_column else ""
    source = (
        f"SELECT * EXCEPT ({_RANK}) FROM ("
        f"SELECT *, ROW_NUMBER() OVER (PARTITION BY {partition_keys}{order}) AS {_RANK} "
        f"FROM {_quoted(project, dataset, staging_table)}) WHERE {_RANK} = 1"
    )
    on = _key_match(spec)
    parameters: list[tuple[str, str, Any]] = []
    if spec.partition_field is not None:
        field = spec.partition_field
        if partition is None:
            partition = PartitionRange()
            for row in rows:
                partition.add(spec, row.get(field))
        kind = spec.column(field).type
        if partition.low is not None:
            parameters = [("partition_min", kind, partition.low), ("partition_max", kind, partition.high)]
            bounded = f"T.`{field}` BETWEEN @partition_min AND @partition_max"
            on.append(f"({bounded} OR T.`{field}` IS NULL)" if partition.nulls else bounded)
        else:
            on.append(f"T.`{field}` IS NULL")
    lines = [
        f"MERGE {_quoted(project, dataset, spec.name)} AS T",
        f"USING ({source}) AS S",
        "ON " + "\n  AND ".join(on),
    ]
    if spec.version_column is not None:
        version = spec.version_column
        updates = ", ".join(f"`{name}` = S.`{name}`" for name in columns if name not in spec.key)
        newer = f"S.`{version}` > T.`{version}`"
        if spec.coarse_version:
            metadata = {column.name for column in METADATA_COLUMNS}
            changed = " OR ".join(
                f"S.`{column.name}` IS DISTINCT FROM T.`{column.name}`"
                for column in spec.columns
                if column.name not in spec.key and column.name not in metadata and column.mode != "REPEATED"
            )
            newer = f"({newer} OR (S.`{version}` = T.`{version}` AND ({changed})))"
        if spec.deleted_column is not None:
            deleted = spec.deleted_column
            newer = f"({newer} OR (S.`{deleted}` AND NOT COALESCE(T.`{deleted}`, FALSE)))"
        lines.append(f"WHEN MATCHED AND {newer} THEN UPDATE SET {updates}")
    values_list = ", ".join(f"S.`{name}`" for name in columns)
    lines.append(f"WHEN NOT MATCHED BY TARGET THEN INSERT ({column_list}) VALUES ({values_list})")
    return MergeStatement(sql="\n".join(lines), parameters=tuple(parameters))


def build_mark_deleted(
    spec: TableSpec,
    *,
    project: str,
    dataset: str,
    key: Mapping[str, Any],
    deleted_at: datetime,
    synced_at: datetime,
    message_id: str | None,
) -> MergeStatement:
    """The UPDATE that marks one stored row deleted (``spec.deleted_column``), if it is not yet.

    For deletions that arrive without the record's last state (nothing to merge): a row not in
    the table stays absent, a row already marked keeps its first ``deleted_at``, so a replay
    changes nothing.

    Raises:
        InvalidIdentifier: if any identifier is invalid.
        ValueError: if the table has no deleted column, or ``key`` does not name the table's key.
    """
    check_identifier("project", project)
    check_identifier("dataset", dataset)
    check_spec(spec)
    if spec.deleted_column is None:
        raise ValueError(f"{spec.name} has no deleted column")
    if set(key) != set(spec.key):
        raise ValueError(f"the key of {spec.name} is {spec.key}, not {tuple(key)}")
    deleted = spec.deleted_column
    parameters: list[tuple[str, str, Any]] = [
        ("deleted_at", "TIMESTAMP", deleted_at),
        ("synced_at", "TIMESTAMP", synced_at),
        ("message_id", "STRING", message_id),
    ]
    conditions = []
    for index, name in enumerate(spec.key):
        parameters.append((f"key_{index}", spec.column(name).type, key[name]))
        conditions.append(f"`{name}` = @key_{index}")
    sets = [f"`{deleted}` = TRUE", "`_synced_at` = @synced_at", "`_message_id` = @message_id"]
    if "deleted_at" in spec.column_names:
        sets.insert(1, "`deleted_at` = @deleted_at")
    sql = (
        f"UPDATE {_quoted(project, dataset, spec.name)}\n"
        f"SET {', '.join(sets)}\n"
        f"WHERE {' AND '.join(conditions)} AND NOT COALESCE(`{deleted}`, FALSE)"
    )
    return MergeStatement(sql=sql, parameters=tuple(parameters))
