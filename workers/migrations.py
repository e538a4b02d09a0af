"""Table migrations: move a table to a partitioned, clustered layout in recorded, resumable steps.

A :class:`~schemas.messages.MigrationRequest` (``possync migrate partition``) is carried out by
:func:`run_migration` as steps recorded in ``_possync_migrations`` (one row per migration and step,
written through the sink's idempotent MERGE), so a crashed or retried message resumes at the step
it was on (ARCHITECTURE.md, "Warehouse"):

1. **plan**: a dry run of the copy estimates the bytes it processes and their on-demand cost
   (where the endpoint's dry run reports nothing, as the local emulator's does, the source's
   ``num_bytes`` stands in, and ``estimate_source`` says so). A dry-run request stops here.
2. **copy**: ``CREATE TABLE TABLE__migrating_<hash> (spec columns) PARTITION BY ... CLUSTER BY ...
   AS SELECT`` with the column types of ``schemas/tables.py`` (FLOAT money → NUMERIC cents; see
   ``workers/sinks/bigquery_ddl.py``), reading the source ``FOR SYSTEM_TIME AS OF`` a snapshot
   time carried in the job's labels. The job id comes from the migration id and attempt, so a
   retried copy re-attaches (409) instead of copying twice.
3. **verify**: row count, distinct keys, min/max of the partition column, sums of every money
   column to the cent and sub-cent values of the FLOAT ones must equal the source's *at the copy's
   snapshot*. A difference fails the migration: the source is untouched and the copy is left for
   inspection, expiring after :data:`FAILED_COPY_KEEP_SECONDS`.
4. **swap**: holding every permit of the table's semaphore (no MERGE of any writer runs, guarantee
   3): carry over what writers changed since the snapshot (``_synced_at`` at or after it, less
   :func:`catch_up_lookback_seconds`), check the figures again, now source against copy with both
   still, then ``TABLE → TABLE__backup_<timestamp>`` and ``TABLE__migrating_<hash> → TABLE``. Each
   half is idempotent on resume, judged by which tables exist; a table a writer's ``ensure_tables``
   created between the renames is dropped when empty, else merged into the copy first.
5. **done**: writers keep writing ``TABLE`` by name, now the new layout. The sink remembers only
   that a table name exists, never its schema, and the copy has the spec's schema, so no writer is
   left believing anything stale.

Asking again: a migration recorded done is a no-op, as is one whose table already has the layout;
a failed one starts over from a fresh copy (the next attempt's job id), unless its swap had begun
renaming, which is always finished instead.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import structlog
from google.api_core import exceptions as google_exceptions
from google.cloud import bigquery
from google.cloud.bigquery.retry import DEFAULT_RETRY

from schemas.messages import MigrationRequest
from schemas.settings import Settings
from schemas.tables import MIGRATIONS, TABLES, TableSpec
from workers.errors import PermanentError, WorkerError
from workers.metrics import MIGRATION_SECONDS, observe_bigquery_job
from workers.metrics import MIGRATIONS as MIGRATIONS_TOTAL
from workers.semaphore import PermitTimeout, TableSemaphore
from workers.sinks.bigquery import BigQuerySink
from workers.sinks.bigquery_client import TRANSLATED_ERRORS, query_rows, translate_error
from workers.sinks.bigquery_ddl import (
    CLUSTERABLE_TYPES,
    SNAPSHOT_LABEL,
    CopyPlan,
    CopyRefused,
    SourceColumn,
    backup_table_name,
    build_catch_up_merge,
    build_ctas,
    build_drop,
    build_figures,
    build_journal_merge,
    build_rename,
    copy_job_id,
    migrating_table_name,
    normalize_type,
    plan_copy,
    snapshot_from_label,
    snapshot_label,
)
from workers.sinks.bigquery_sql import InvalidIdentifier, build_merge, check_identifier

__all__ = [
    "FAILED_COPY_KEEP_SECONDS",
    "STEPS",
    "InvalidMigration",
    "MigrationFailed",
    "MigrationResult",
    "MigrationStatus",
    "StepStatus",
    "catch_up_lookback_seconds",
    "list_migrations",
    "migration_id_for",
    "run_migration",
    "validate_migration",
]

_log = structlog.get_logger(__name__)

Step = Literal["plan", "copy", "verify", "swap", "done"]
Outcome = Literal["succeeded", "noop", "planned", "stopped", "failed"]

#: The steps of a migration, in order.
STEPS: tuple[Step, ...] = ("plan", "copy", "verify", "swap", "done")
#: Longest migration id (``MigrationRequest.migration_id``).
MAX_MIGRATION_ID_CHARS = 256
#: A copy that failed verification is kept this long for inspection, then expires, seconds.
FAILED_COPY_KEEP_SECONDS = 7 * 86_400
#: Clocks of the machines that stamp ``_synced_at`` may run this far behind BigQuery's, seconds.
CLOCK_SKEW_SECONDS = 600
#: Copy attempts (job ids) per migration before it gives up for good.
MAX_COPY_ATTEMPTS = 20
_BYTES_PER_TIB = 2**40
#: The ingestion-time column writers stamp on every row they insert or update.
_CHANGE_COLUMN = "_synced_at"


class InvalidMigration(PermanentError):
    """The migration cannot be carried out as asked (unknown table, bad column, uncastable source)."""


class MigrationFailed(PermanentError):
    """A step failed for good: verify found differences, or BigQuery refused a step's work.

    The message names the step and the differences, so the dead letter carries them.

    Attributes:
        migration_id: the migration.
        step: the step that failed.
        differences: figure → ``{"source": ..., "copy": ...}`` for a verify failure, else empty.
        result: what the run did, with ``outcome="failed"``.
    """

    def __init__(
        self,
        message: str,
        *,
        migration_id: str,
        step: str,
        differences: Mapping[str, Any],
        result: MigrationResult,
    ) -> None:
        super().__init__(message, system="bigquery")
        self.migration_id = migration_id
        self.step = step
        self.differences = dict(differences)
        self.result = result


@dataclass(frozen=True)
class MigrationResult:
    """What one :func:`run_migration` call did.

    Attributes:
        migration_id: the migration.
        table: the table migrated.
        outcome: ``succeeded`` (swapped), ``noop`` (done before, or already in the layout),
            ``planned`` (dry run), ``stopped`` (``stop_after`` reached), ``failed``.
        steps_done: every step recorded done, in order (this run's and earlier runs').
        steps_run: the steps this call carried out.
        estimate_bytes: bytes the copy processes, from the plan (``None`` before planning).
        estimate_usd: their on-demand cost, dollars.
        estimate_source: ``dry_run`` or ``table_metadata``.
        differences: figure → ``{"source": ..., "copy": ...}`` when verify failed.
        backup_table: the old table's name after the swap.
        migrating_table: the new layout's table until the swap.
        seconds: wall time of the call, seconds.
    """

    migration_id: str
    table: str
    outcome: Outcome
    steps_done: tuple[str, ...]
    steps_run: tuple[str, ...]
    estimate_bytes: int | None = None
    estimate_usd: float | None = None
    estimate_source: str | None = None
    differences: dict[str, Any] = field(default_factory=dict)
    backup_table: str | None = None
    migrating_table: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class StepStatus:
    """One recorded step of a migration.

    Attributes:
        step: ``plan``, ``copy``, ``verify``, ``swap`` or ``done``.
        status: ``running``, ``done`` or ``failed``.
        started_at: when the step started.
        finished_at: when it ended (``None`` while running).
        updated_at: when the row was last written.
        details: what the step found or did (estimate, snapshot, figures, differences, backup...).
    """

    step: str
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    details: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (times as ISO 8601 strings)."""
        return {
            "step": self.step,
            "status": self.status,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "updated_at": _iso(self.updated_at),
            "details": self.details,
        }


@dataclass(frozen=True)
class MigrationStatus:
    """A migration as recorded, for ``possync migrate status``.

    Attributes:
        migration_id: the migration.
        table: the table migrated.
        state: ``done``; ``failed``; ``running`` (a step is under way, or its worker died: asking
            again resumes it); ``planned`` (a dry run); ``paused`` (between steps: ``stop_after``,
            or interrupted; asking again resumes it).
        steps: recorded steps, in step order.
        request: the last request recorded, as a dict.
    """

    migration_id: str
    table: str
    state: str
    steps: tuple[StepStatus, ...]
    request: dict[str, Any] | None

    def step(self, name: str) -> StepStatus | None:
        """The recorded step called ``name``, if any."""
        return next((step for step in self.steps if step.step == name), None)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "migration_id": self.migration_id,
            "table": self.table,
            "state": self.state,
            "request": self.request,
            "steps": [step.as_dict() for step in self.steps],
        }

    def describe(self) -> str:
        """A few human-readable lines: the migration, then one line per step."""
        lines = [f"{self.migration_id}  table={self.table}  state={self.state}"]
        for step in self.steps:
            shown = {key: step.details[key] for key in _DESCRIBED if key in step.details}
            extra = "  " + json.dumps(shown, sort_keys=True, default=str) if shown else ""
            lines.append(
                f"  {step.step:<7}{step.status:<8}started {_iso(step.started_at) or '-'}"
                f"  finished {_iso(step.finished_at) or '-'}{extra}"
            )
        return "\n".join(lines)


#: Details shown by :meth:`MigrationStatus.describe` (the rest is in ``--json``).
_DESCRIBED = (
    "bytes",
    "usd",
    "estimate_source",
    "attempt",
    "rows",
    "caught_up_rows",
    "differences",
    "backup",
    "noop",
    "error",
)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _utc_now() -> datetime:
    return datetime.now(UTC)


def migration_id_for(table: str, partition_field: str, granularity: str, cluster: Sequence[str]) -> str:
    """The id of the migration of ``table`` to this layout: the same for the same layout, readable.

    ``square_payments:created_at:DAY:customer_id,status`` (no cluster part when unclustered). Past
    :data:`MAX_MIGRATION_ID_CHARS` it is cut and ends in ``~`` and 16 hex digits of the whole.
    """
    parts = [table, partition_field, granularity.upper()]
    if cluster:
        parts.append(",".join(cluster))
    text = ":".join(parts)
    if len(text) <= MAX_MIGRATION_ID_CHARS:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return f"{text[: MAX_MIGRATION_ID_CHARS - 17]}~{digest}"


def catch_up_lookback_seconds(settings: Settings) -> int:
    """How far before the copy's snapshot the swap looks for rows writers changed, seconds.

    A writer stamps ``_synced_at`` when its sync starts, and its MERGE may commit as late as the
    end of its message (the actor time limit) after waiting for a permit (the BigQuery timeout,
    twice over for a retry), on a clock up to :data:`CLOCK_SKEW_SECONDS` behind. Reaching further
    back costs nothing on an unpartitioned source (it is scanned whole anyway) and only re-merges
    rows that are already equal.
    """
    return int(settings.actor_time_limit_seconds + 2 * settings.bigquery_timeout_seconds + CLOCK_SKEW_SECONDS)


# --- The journal: steps recorded in _possync_migrations -------------------------------------------


def _migrations_table_exists(client: bigquery.Client, project: str, dataset: str, timeout: float) -> bool:
    try:
        client.get_table(
            f"{project}.{dataset}.{MIGRATIONS.name}",
            retry=DEFAULT_RETRY.with_deadline(timeout),
            timeout=timeout,
        )
    except google_exceptions.NotFound:
        return False
    except TRANSLATED_ERRORS as exc:
        raise translate_error(exc, action="look up the migrations table") from exc
    return True


def _read_rows(
    client: bigquery.Client, *, project: str, dataset: str, migration_id: str | None, timeout: float = 300
) -> list[dict[str, Any]]:
    check_identifier("project", project)
    check_identifier("dataset", dataset)
    if not _migrations_table_exists(client, project, dataset, timeout):
        return []
    sql = (
        "SELECT migration_id, step, status, table_name, started_at, finished_at, updated_at, details, "
        f"request FROM `{project}.{dataset}.{MIGRATIONS.name}`"
    )
    params: dict[str, tuple[str, Any]] = {}
    if migration_id is not None:
        sql += " WHERE migration_id = @migration_id"
        params["migration_id"] = ("STRING", migration_id)
    return query_rows(client, sql, params, timeout_seconds=timeout)


def _loads(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"raw": text}
    return value if isinstance(value, dict) else {"value": value}


def _step_status(row: Mapping[str, Any]) -> StepStatus:
    return StepStatus(
        step=str(row["step"]),
        status=str(row["status"]),
        started_at=row.get("started_at"),
        finished_at=row.get("finished_at"),
        updated_at=row["updated_at"],
        details=_loads(row.get("details")),
    )


def _step_order(step: StepStatus) -> int:
    return STEPS.index(step.step) if step.step in STEPS else len(STEPS)


def _overall_state(steps: Sequence[StepStatus], request: Mapping[str, Any] | None) -> str:
    """The migration's state, from the step written last (earlier attempts' rows may linger)."""
    done = next((step for step in steps if step.step == "done"), None)
    if done is not None and done.status == "done":
        return "done"
    if not steps:
        return "paused"
    latest = max(steps, key=lambda step: step.updated_at)
    if latest.status in ("failed", "running"):
        return latest.status
    if latest.step == "plan" and request is not None and request.get("dry_run"):
        return "planned"
    return "paused"


def list_migrations(client: bigquery.Client, *, project: str, dataset: str) -> list[MigrationStatus]:
    """Every migration recorded in the dataset, oldest first, with its steps and overall state.

    Returns:
        The migrations; ``[]`` when ``_possync_migrations`` does not exist yet.

    Raises:
        InvalidIdentifier: for an invalid project or dataset name.
        WarehouseUnavailable: BigQuery failed transiently.
        WarehouseRejected: BigQuery refused the query.
    """
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in _read_rows(client, project=project, dataset=dataset, migration_id=None):
        grouped.setdefault(str(row["migration_id"]), []).append(row)
    found = []
    for migration_id, rows in grouped.items():
        steps = tuple(sorted((_step_status(row) for row in rows), key=_step_order))
        latest = max(rows, key=lambda row: row["updated_at"])
        request = _loads(latest.get("request")) or None
        found.append(
            MigrationStatus(
                migration_id=migration_id,
                table=str(latest["table_name"]),
                state=_overall_state(steps, request),
                steps=steps,
                request=request,
            )
        )
    return sorted(
        found, key=lambda migration: min(step.started_at or step.updated_at for step in migration.steps)
    )


class _Journal:
    """One migration's recorded steps: read once, then kept in step with every write."""

    def __init__(
        self,
        *,
        client: bigquery.Client,
        sink: BigQuerySink,
        request: MigrationRequest,
        message_id: str | None,
        now: Callable[[], datetime],
        timeout_seconds: float,
    ) -> None:
        self._client = client
        self._sink = sink
        self._request = request
        self._message_id = message_id
        self._now = now
        self._timeout = timeout_seconds
        self.steps: dict[str, StepStatus] = {}
        #: The attempt rows are recorded under; rows of earlier attempts are stale.
        self.attempt = 0
        self._last_update: datetime | None = None

    def load(self) -> None:
        rows = _read_rows(
            self._client,
            project=self._sink.project,
            dataset=self._sink.dataset,
            migration_id=self._request.migration_id,
            timeout=self._timeout,
        )
        self.steps = {str(row["step"]): _step_status(row) for row in rows}
        self.attempt = max((_attempt(step) for step in self.steps.values()), default=0)
        if self.steps:
            latest = max(step.updated_at for step in self.steps.values())
            self._last_update = max(latest, self._last_update) if self._last_update else latest

    def get(self, step: str) -> StepStatus | None:
        """The step's row, if it belongs to the current attempt."""
        found = self.steps.get(step)
        return found if found is not None and _attempt(found) == self.attempt else None

    def done(self, step: str) -> bool:
        found = self.get(step)
        return found is not None and found.status == "done"

    def failed(self) -> bool:
        """Whether a step of the current attempt failed."""
        return any(row.status == "failed" and _attempt(row) == self.attempt for row in self.steps.values())

    def record(
        self, step: Step, status: Literal["running", "done", "failed"], details: Mapping[str, Any]
    ) -> None:
        """Write the step's row; its ``updated_at`` always moves forward, so the MERGE keeps it."""
        moment = self._now()
        if self._last_update is not None and moment <= self._last_update:
            moment = self._last_update + timedelta(microseconds=1)
        self._last_update = moment
        previous = self.get(step)
        started = previous.started_at if previous is not None and previous.status == "running" else None
        if status == "running" and started is None:
            started = moment
        finished = moment if status != "running" else None
        text = json.dumps({**details, "attempt": self.attempt}, sort_keys=True, default=_json_default)
        values: dict[str, Any] = {
            "migration_id": self._request.migration_id,
            "step": step,
            "status": status,
            "table_name": self._request.table,
            "started_at": started or moment,
            "finished_at": finished,
            "updated_at": moment,
            "details": text,
            "request": self._request.model_dump_json(),
            "_synced_at": moment,
            "_message_id": self._message_id,
        }
        self._write(values)
        self.steps[step] = StepStatus(step, status, started or moment, finished, moment, json.loads(text))
        _log.info(
            "migration_step_recorded",
            migration_id=self._request.migration_id,
            table=self._request.table,
            step=step,
            status=status,
        )

    def _write(self, values: Mapping[str, Any]) -> None:
        """One MERGE of the row, under a permit of the journal table like every MERGE."""
        sink = self._sink
        sink.ensure_tables([MIGRATIONS])
        config = bigquery.QueryJobConfig(
            query_parameters=[
                bigquery.ScalarQueryParameter(column.name.lstrip("_"), column.type, values[column.name])
                for column in MIGRATIONS.columns
            ]
        )
        sql = build_journal_merge(project=sink.project, dataset=sink.dataset)
        retry = DEFAULT_RETRY.with_deadline(self._timeout)
        try:
            with sink.semaphore.permit(MIGRATIONS.name, timeout_seconds=self._timeout):
                job = self._client.query(
                    sql,
                    job_config=config,
                    location=sink.location,
                    retry=retry,
                    timeout=self._timeout,
                    job_retry=None,  # the version rule makes a repeat harmless; the step's retry repeats it
                )
                job.result(retry=retry, timeout=self._timeout)
        except PermitTimeout as exc:
            raise translate_error(exc, action="wait for a permit of the migrations table") from exc
        except TRANSLATED_ERRORS as exc:
            raise translate_error(exc, action="record a migration step") from exc


def _attempt(step: StepStatus) -> int:
    value = step.details.get("attempt", 0)
    return value if isinstance(value, int) else 0


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return str(value)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_json_default))


# --- Validation -----------------------------------------------------------------------------------


def validate_migration(request: MigrationRequest, *, project: str, dataset: str) -> tuple[TableSpec, str]:
    """The spec of the table to migrate and the copy's table name, or :class:`InvalidMigration`.

    Every name is checked against BigQuery's rules and the table's columns before any request, so
    ``possync migrate`` can refuse a bad layout before enqueuing it and the worker again before work.

    Raises:
        InvalidMigration: naming what is wrong (an identifier, an unknown table or column, a type
            that cannot be partitioned or clustered by, a migration id that does not name its layout).
    """
    try:
        check_identifier("project", project)
        check_identifier("dataset", dataset)
        check_identifier("table", request.table)
        check_identifier("column", request.partition_field)
        for name in request.cluster:
            check_identifier("column", name)
    except InvalidIdentifier as exc:
        raise InvalidMigration(f"migration {request.migration_id!r}: {exc}") from None
    spec = TABLES.get(request.table)
    if spec is None or spec is MIGRATIONS:
        known = ", ".join(sorted(name for name in TABLES if name != MIGRATIONS.name))
        raise InvalidMigration(f"unknown table {request.table!r}: possync migrates {known}")
    expected = migration_id_for(request.table, request.partition_field, request.granularity, request.cluster)
    if request.migration_id != expected:
        raise InvalidMigration(
            f"migration id {request.migration_id!r} does not name its layout: expected {expected!r}"
        )
    if request.partition_field not in spec.column_names:
        raise InvalidMigration(f"{spec.name} has no column {request.partition_field!r} to partition by")
    partition = spec.column(request.partition_field)
    if partition.type not in ("TIMESTAMP", "DATE") or partition.mode == "REPEATED":
        raise InvalidMigration(
            f"{spec.name}.{partition.name} is {partition.type}: partition by a TIMESTAMP or DATE column"
        )
    if partition.type == "DATE" and request.granularity == "HOUR":
        raise InvalidMigration(f"{spec.name}.{partition.name} is a DATE: it cannot be partitioned by HOUR")
    if len(request.cluster) > 4:
        raise InvalidMigration(f"BigQuery clusters by at most 4 columns, not {len(request.cluster)}")
    if len(set(request.cluster)) != len(request.cluster):
        raise InvalidMigration(f"clustering columns repeat: {', '.join(request.cluster)}")
    for name in request.cluster:
        if name not in spec.column_names:
            raise InvalidMigration(f"{spec.name} has no column {name!r} to cluster by")
        column = spec.column(name)
        if column.mode == "REPEATED" or column.type not in CLUSTERABLE_TYPES:
            raise InvalidMigration(
                f"{spec.name}.{name} ({column.type}, {column.mode}) cannot be clustered by"
            )
    try:
        migrating = migrating_table_name(spec.name, request.migration_id)
        backup_table_name(spec.name, datetime(2000, 1, 1, tzinfo=UTC))
    except InvalidIdentifier as exc:
        raise InvalidMigration(f"table name {spec.name!r} is too long to migrate: {exc}") from None
    return spec, migrating


# --- The run --------------------------------------------------------------------------------------


class _Run:
    """One call of :func:`run_migration`: resumes the recorded steps and carries out the rest."""

    def __init__(
        self,
        *,
        client: bigquery.Client,
        sink: BigQuerySink,
        semaphore: TableSemaphore,
        project: str,
        dataset: str,
        location: str,
        request: MigrationRequest,
        settings: Settings,
        message_id: str | None,
        now: Callable[[], datetime],
        after_step: Callable[[str], None] | None,
        spec: TableSpec,
        migrating: str,
    ) -> None:
        self.client = client
        self.semaphore = semaphore
        self.project = project
        self.dataset = dataset
        self.location = location
        self.request = request
        self.settings = settings
        self.now = now
        self.after_step = after_step
        self.spec = spec
        self.table = spec.name
        self.migrating = migrating
        self.timeout = settings.bigquery_timeout_seconds
        self.job_timeout = float(settings.migration_time_limit_seconds)
        self.retry = DEFAULT_RETRY.with_deadline(self.timeout)
        self.journal = _Journal(
            client=client,
            sink=sink,
            request=request,
            message_id=message_id,
            now=now,
            timeout_seconds=self.timeout,
        )
        self.log = _log.bind(migration_id=request.migration_id, table=self.table)
        self.steps_run: list[str] = []
        self.step: Step = "plan"
        #: Whether a step began (failures before that are not recorded: nothing was done).
        self.in_step = False
        self.differences: dict[str, Any] = {}
        self._plan: CopyPlan | None = None

    # BigQuery plumbing ----------------------------------------------------------------------------

    def _id(self, table: str) -> str:
        return f"{self.project}.{self.dataset}.{table}"

    def get_table(self, table: str) -> bigquery.Table | None:
        try:
            return self.client.get_table(self._id(table), retry=self.retry, timeout=self.timeout)
        except google_exceptions.NotFound:
            return None
        except TRANSLATED_ERRORS as exc:
            raise translate_error(exc, action=f"look up table {table}") from exc

    def query(
        self,
        sql: str,
        *,
        action: str,
        parameters: Sequence[tuple[str, str, Any]] = (),
        read_only: bool = True,
    ) -> bigquery.QueryJob:
        """Run a statement to its end. Statements that change tables are never re-run by the
        client on failure (``job_retry=None``): the message's retry resumes at the step instead."""
        config = bigquery.QueryJobConfig(
            query_parameters=[
                bigquery.ScalarQueryParameter(name, kind, value) for name, kind, value in parameters
            ]
        )
        extra: dict[str, Any] = {} if read_only else {"job_retry": None}
        try:
            job = self.client.query(
                sql,
                job_config=config,
                location=self.location,
                retry=self.retry,
                timeout=self.timeout,
                **extra,
            )
            job.result(retry=self.retry, timeout=self.job_timeout)
        except TRANSLATED_ERRORS as exc:
            raise translate_error(exc, action=action) from exc
        return job

    def one_row(self, sql: str, *, action: str) -> dict[str, Any]:
        job = self.query(sql, action=action)
        try:
            rows = [dict(row.items()) for row in job.result(retry=self.retry, timeout=self.job_timeout)]
        except TRANSLATED_ERRORS as exc:
            raise translate_error(exc, action=action) from exc
        return rows[0]

    def get_job(self, job_id: str) -> bigquery.QueryJob | None:
        try:
            job = self.client.get_job(job_id, location=self.location, retry=self.retry, timeout=self.timeout)
        except google_exceptions.NotFound:
            return None
        except TRANSLATED_ERRORS as exc:
            raise translate_error(exc, action="look up the copy job", job_id=job_id) from exc
        return job if isinstance(job, bigquery.QueryJob) else None

    def copy_plan(self) -> CopyPlan:
        """How the spec's columns are read from the source (``TABLE`` before the swap)."""
        if self._plan is None:
            source = self.get_table(self.table)
            if source is None:
                raise InvalidMigration(f"table {self._id(self.table)} does not exist")
            columns = [
                SourceColumn(field.name, normalize_type(field.field_type), field.mode or "NULLABLE")
                for field in source.schema
            ]
            try:
                self._plan = plan_copy(self.spec, columns)
            except CopyRefused as exc:
                raise InvalidMigration(str(exc)) from None
        return self._plan

    # Layout ---------------------------------------------------------------------------------------

    def has_layout(self, table: bigquery.Table) -> bool:
        partitioning = table.time_partitioning
        if partitioning is None or partitioning.field != self.request.partition_field:
            return False
        if (partitioning.type_ or "DAY") != self.request.granularity:
            return False
        return tuple(table.clustering_fields or ()) == tuple(self.request.cluster)

    def layout(self, table: bigquery.Table) -> dict[str, Any]:
        partitioning = table.time_partitioning
        return {
            "partition_field": partitioning.field if partitioning is not None else None,
            "granularity": partitioning.type_ if partitioning is not None else None,
            "cluster": list(table.clustering_fields or ()),
        }

    # The steps ------------------------------------------------------------------------------------

    def result(self, outcome: Outcome, started: float) -> MigrationResult:
        plan = self.journal.get("plan")
        estimate = plan.details if plan is not None else {}
        swap = self.journal.get("swap")
        backup = swap.details.get("backup") if swap is not None and swap.status == "done" else None
        return MigrationResult(
            migration_id=self.request.migration_id,
            table=self.table,
            outcome=outcome,
            steps_done=tuple(step for step in STEPS if self.journal.done(step)),
            steps_run=tuple(self.steps_run),
            estimate_bytes=estimate.get("bytes"),
            estimate_usd=estimate.get("usd"),
            estimate_source=estimate.get("estimate_source"),
            differences=self.differences,
            backup_table=backup,
            migrating_table=self.migrating,
            seconds=time.monotonic() - started,
        )

    def finish_step(self, step: Step, details: Mapping[str, Any]) -> None:
        running = self.journal.get(step)
        carried = running.details if running is not None and running.status == "running" else {}
        self.journal.record(step, "done", {**carried, **details})
        self.steps_run.append(step)
        self.in_step = False
        if self.after_step is not None:
            self.after_step(step)

    def begin(self, step: Step) -> None:
        self.step = step
        self.in_step = True
        self.log.info("migration_step_started", step=step, attempt=self.journal.attempt)

    def run(self) -> MigrationResult:
        started = time.monotonic()
        journal = self.journal
        journal.load()
        if journal.done("done"):
            current = self.get_table(self.table)
            if current is not None and self.has_layout(current):
                self.log.info("migration_already_done")
                return self.result("noop", started)
            # Done once, but the table has had another layout since: migrate it again.
            journal.attempt += 1
            self.log.info("migration_redone", attempt=journal.attempt)
        swap = journal.get("swap")
        renaming = swap is not None and swap.details.get("phase") == "renaming"
        if not renaming and journal.failed():
            # Asked again after a failure: start over from a fresh copy under the next attempt.
            journal.attempt += 1
            self.log.info("migration_restarting", attempt=journal.attempt)
        completed = {step for step in STEPS if journal.done(step)}
        if renaming:
            # The swap had begun renaming: finish it, whatever else was asked.
            completed |= {"plan", "copy", "verify"}
        else:
            source = self.get_table(self.table)
            if source is None:
                raise InvalidMigration(f"table {self._id(self.table)} does not exist")
            if self.has_layout(source):
                self.log.info("migration_noop", layout=self.layout(source))
                if not self.request.dry_run:
                    self.begin("done")
                    self.finish_step("done", {"noop": True, "layout": self.layout(source)})
                return self.result("noop", started)

        if "plan" not in completed:
            self.begin("plan")
            self.finish_step("plan", self.plan())
        if self.request.dry_run:
            return self.result("planned", started)
        stop_after = None if renaming else self.request.stop_after
        if stop_after == "plan":
            return self.result("stopped", started)
        if "copy" not in completed:
            self.begin("copy")
            self.finish_step("copy", self.copy())
        if stop_after == "copy":
            return self.result("stopped", started)
        if "verify" not in completed:
            self.begin("verify")
            self.finish_step("verify", self.verify())
        if stop_after == "verify":
            return self.result("stopped", started)
        if "swap" not in completed:
            self.begin("swap")
            details = self.swap()
            if details is not None:
                self.finish_step("swap", details)
        self.begin("done")
        swap_row = journal.get("swap")
        backup = swap_row.details.get("backup") if swap_row is not None else None
        self.finish_step("done", {"noop": False, "backup": backup})
        return self.result("succeeded", started)

    def plan(self) -> dict[str, Any]:
        """Estimate the copy's bytes and cost; check the source can be copied exactly."""
        plan = self.copy_plan()
        source = self.get_table(self.table)
        assert source is not None  # copy_plan() found it
        select = ", ".join(f"{expression} AS `{name}`" for name, expression in plan.expressions)
        sql = f"SELECT {select} FROM `{self._id(self.table)}`"
        note = None
        processed: int | None = None
        try:
            job = self.client.query(
                sql,
                job_config=bigquery.QueryJobConfig(dry_run=True, use_query_cache=False),
                location=self.location,
                retry=self.retry,
                timeout=self.timeout,
            )
            processed = job.total_bytes_processed
        except TRANSLATED_ERRORS as exc:
            error = translate_error(exc, action="dry-run the copy")
            if not isinstance(error, PermanentError):
                raise error from exc
            note = f"dry run refused: {error}"
        metadata_bytes = int(source.num_bytes or 0)
        if processed is None or (processed == 0 and metadata_bytes > 0):
            estimate, estimate_source = metadata_bytes, "table_metadata"
            note = note or "the endpoint's dry run reported no bytes; the source's size stands in"
        else:
            estimate, estimate_source = int(processed), "dry_run"
        usd = estimate / _BYTES_PER_TIB * self.settings.bigquery_usd_per_tib
        details: dict[str, Any] = {
            "bytes": estimate,
            "usd": round(usd, 6),
            "usd_per_tib": self.settings.bigquery_usd_per_tib,
            "estimate_source": estimate_source,
            "source_rows": source.num_rows,
            "source_layout": self.layout(source),
            "target_layout": {
                "partition_field": self.request.partition_field,
                "granularity": self.request.granularity,
                "cluster": list(self.request.cluster),
            },
            "casts": plan.casts,
            "missing_columns": list(plan.missing),
            "dropped_columns": list(plan.dropped),
            "migrating_table": self.migrating,
        }
        if note is not None:
            details["estimate_note"] = note
        self.log.info("migration_planned", bytes=estimate, usd=round(usd, 6), estimate_source=estimate_source)
        return details

    def copy(self) -> dict[str, Any]:
        """CTAS into the migrating table, or re-attach to this attempt's copy job if it exists."""
        plan = self.copy_plan()
        while True:
            attempt = self.journal.attempt
            if attempt >= MAX_COPY_ATTEMPTS:
                raise InvalidMigration(
                    f"all {MAX_COPY_ATTEMPTS} copy attempts of {self.request.migration_id} are spent"
                )
            job_id = copy_job_id(
                project=self.project,
                dataset=self.dataset,
                table=self.table,
                migration_id=self.request.migration_id,
                attempt=attempt,
            )
            job = self.get_job(job_id)
            if job is None or job.state != "DONE" or job.error_result is None:
                break
            self.journal.attempt += 1  # this job id is spent by a failed copy
        if job is None:
            if self.get_table(self.migrating) is not None:
                # Left by an earlier attempt (or a failed verify): replaced, never trusted.
                self.query(
                    build_drop(project=self.project, dataset=self.dataset, table=self.migrating),
                    action="drop an earlier copy",
                    read_only=False,
                )
            snapshot = self.server_now()
            self.journal.record(
                "copy",
                "running",
                {
                    "attempt": attempt,
                    "job_id": job_id,
                    "snapshot_at": snapshot,
                    "migrating_table": self.migrating,
                },
            )
            sql = build_ctas(
                plan,
                project=self.project,
                dataset=self.dataset,
                source_table=self.table,
                target_table=self.migrating,
                partition_field=self.request.partition_field,
                granularity=self.request.granularity,
                cluster=self.request.cluster,
                snapshot=snapshot,
            )
            config = bigquery.QueryJobConfig(labels={SNAPSHOT_LABEL: snapshot_label(snapshot)})
            try:
                job = self.client.query(
                    sql,
                    job_config=config,
                    job_id=job_id,
                    location=self.location,
                    retry=self.retry,
                    timeout=self.timeout,
                    job_retry=None,
                )
            except google_exceptions.Conflict:
                job = self.get_job(job_id)  # another run of this migration started it first
            except TRANSLATED_ERRORS as exc:
                raise translate_error(exc, action="start the copy", job_id=job_id) from exc
            if job is None:
                raise InvalidMigration(f"copy job {job_id} vanished after a conflict")
            self.log.info("migration_copy_started", job_id=job_id, attempt=attempt)
        else:
            self.log.info("migration_copy_reattached", job_id=job_id, attempt=attempt, state=job.state)
        try:
            job.result(retry=self.retry, timeout=self.job_timeout)
        except TRANSLATED_ERRORS as exc:
            raise translate_error(exc, action="copy", job_id=job_id) from exc
        label = (job.labels or {}).get(SNAPSHOT_LABEL)
        if label is None:
            raise InvalidMigration(f"copy job {job_id} carries no {SNAPSHOT_LABEL} label")
        created = self.get_table(self.migrating)
        if created is None:
            raise InvalidMigration(f"copy job {job_id} finished but {self.migrating} does not exist")
        if job.created is not None and job.ended is not None:
            observe_bigquery_job(
                "query",
                self.table,
                seconds=(job.ended - job.created).total_seconds(),
                rows=created.num_rows,
                bytes_billed=job.total_bytes_billed,
                usd_per_tib=self.settings.bigquery_usd_per_tib,
            )
        return {
            "attempt": attempt,
            "job_id": job_id,
            "snapshot_at": snapshot_from_label(label),
            "migrating_table": self.migrating,
            "created": created.created,
            "rows": created.num_rows,
            "bytes_processed": job.total_bytes_processed,
            "bytes_billed": job.total_bytes_billed,
        }

    def server_now(self) -> datetime:
        """BigQuery's clock (a snapshot time must not be in BigQuery's future)."""
        now = self.one_row("SELECT CURRENT_TIMESTAMP() AS now", action="read the clock")["now"]
        assert isinstance(now, datetime)
        return now

    def compare(self, snapshot: datetime | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """The copy's figures, and the differences from the source's (at ``snapshot``, or now).

        Both sides are measured by one query, so they come from one moment.
        """
        common: dict[str, Any] = {
            "project": self.project,
            "dataset": self.dataset,
            "partition_field": self.request.partition_field,
        }
        plan = self.copy_plan()
        source = build_figures(plan, table=self.table, side="source", snapshot=snapshot, prefix="s", **common)
        copy = build_figures(plan, table=self.migrating, side="copy", prefix="c", **common)
        row = self.one_row(
            f"SELECT * FROM ({source.sql}) CROSS JOIN ({copy.sql})", action=f"compare {self.migrating}"
        )
        measured = {
            side: {name: row[column] for name, column in zip(query.names, query.columns(), strict=True)}
            for side, query in (("source", source), ("copy", copy))
        }
        differences = {
            name: {"source": value, "copy": measured["copy"].get(name)}
            for name, value in measured["source"].items()
            if value != measured["copy"].get(name)
        }
        return _jsonable(measured["copy"]), _jsonable(differences)

    def fail(self, differences: dict[str, Any], details: Mapping[str, Any]) -> MigrationFailed:
        """Record the current step failed with these differences; the error to raise."""
        self.differences = differences
        self.keep_copy_for_inspection()
        running = self.journal.get(self.step)
        carried = running.details if running is not None and running.status == "running" else {}
        self.journal.record(self.step, "failed", {**carried, **details, "differences": differences})
        shown = "; ".join(
            f"{name}: source {value['source']} != copy {value['copy']}" for name, value in differences.items()
        )
        message = (
            f"migration {self.request.migration_id} failed at {self.step}: the copy {self.migrating} "
            f"differs from {self.table}, which is left as it was ({shown})"
        )
        self.log.warning("migration_verify_failed", step=self.step, differences=differences)
        return MigrationFailed(
            message,
            migration_id=self.request.migration_id,
            step=self.step,
            differences=differences,
            result=self.result("failed", time.monotonic()),
        )

    def keep_copy_for_inspection(self) -> None:
        """Give the failed copy an expiration, so a copy nobody looks at cleans itself up."""
        table = self.get_table(self.migrating)
        if table is None:
            return
        # The wall clock, not the injected one: the expiration is BigQuery's to act on.
        table.expires = datetime.now(UTC) + timedelta(seconds=FAILED_COPY_KEEP_SECONDS)
        try:
            self.client.update_table(table, ["expires"], retry=self.retry, timeout=self.timeout)
        except TRANSLATED_ERRORS as exc:
            self.log.warning("migration_copy_expiry_failed", error=type(exc).__name__)

    def verify(self) -> dict[str, Any]:
        """Compare the copy with the source as the copy read it (its snapshot)."""
        copy = self.journal.get("copy")
        snapshot_text = copy.details.get("snapshot_at") if copy is not None else None
        if not snapshot_text:
            raise InvalidMigration("the copy step recorded no snapshot time")
        snapshot = datetime.fromisoformat(str(snapshot_text))
        if self.get_table(self.migrating) is None:
            raise InvalidMigration(f"the copy {self.migrating} is gone; ask again to copy afresh")
        self.journal.record("verify", "running", {"snapshot_at": snapshot})
        figures, differences = self.compare(snapshot)
        if differences:
            raise self.fail(differences, {"figures": figures})
        self.log.info("migration_verified", figures=figures)
        return {"figures": figures}

    def swap(self) -> dict[str, Any] | None:
        """Under every permit of the table: catch up, check, rename twice; resumable at each point.

        Returns:
            The swap's details, or ``None`` when another run recorded the swap done meanwhile.
        """
        try:
            with self.semaphore.hold_all(self.table, timeout_seconds=2 * self.timeout):
                return self.swap_held()
        except PermitTimeout as exc:
            raise translate_error(exc, action="wait for every permit of the table") from exc

    def swap_held(self) -> dict[str, Any] | None:
        self.journal.load()  # another run of this migration may have swapped meanwhile
        swap = self.journal.get("swap")
        if swap is not None and swap.status == "done":
            return None
        renaming = swap is not None and swap.details.get("phase") == "renaming"
        backup = str(swap.details["backup"]) if renaming and swap is not None else self.free_backup_name()
        table, migrating, old = (self.get_table(name) for name in (self.table, self.migrating, backup))
        details: dict[str, Any] = {"backup": backup}
        if old is None:
            # Nothing renamed yet: TABLE is the source and no writer runs, so it is still.
            if table is None or migrating is None:
                missing = self.table if table is None else self.migrating
                raise InvalidMigration(f"cannot swap: {self._id(missing)} does not exist")
            self.journal.record("swap", "running", {**details, "phase": "checking"})
            details["caught_up_rows"] = self.catch_up()
            figures, differences = self.compare(None)
            if differences:
                raise self.fail(differences, {**details, "phase": "checking", "figures": figures})
            details["figures"] = figures
            self.journal.record("swap", "running", {**details, "phase": "renaming"})
            self.rename(self.table, backup)
            self.rename(self.migrating, self.table)
        elif migrating is not None:
            if table is not None:
                details["interloper_rows"] = self.absorb_interloper()
            self.rename(self.migrating, self.table)
        elif table is None:
            raise InvalidMigration(
                f"{self.table} and {self.migrating} are both gone while {backup} exists: rename {backup} "
                f"back to {self.table} and ask again"
            )
        details["phase"] = "swapped"
        self.log.info("migration_swapped", backup=backup)
        return details

    def free_backup_name(self) -> str:
        """``TABLE__backup_<timestamp>``, with ``_2``, ``_3``... if an earlier swap took it that second."""
        name = base = backup_table_name(self.table, self.now())
        suffix = 1
        while self.get_table(name) is not None:
            suffix += 1
            name = check_identifier("table", f"{base}_{suffix}")
        return name

    def catch_up(self) -> int:
        """Merge into the copy what writers changed in the source since the copy's snapshot."""
        copy = self.journal.get("copy")
        snapshot = (
            datetime.fromisoformat(str(copy.details["snapshot_at"])) if copy is not None else self.now()
        )
        since = snapshot - timedelta(seconds=catch_up_lookback_seconds(self.settings))
        plan = self.copy_plan()
        change = _CHANGE_COLUMN if plan.source_types.get(_CHANGE_COLUMN) else None
        statement = build_catch_up_merge(
            plan,
            project=self.project,
            dataset=self.dataset,
            source_table=self.table,
            target_table=self.migrating,
            change_column=change,
            since=since,
        )
        job = self.query(
            statement.sql, action="catch up the copy", parameters=statement.parameters, read_only=False
        )
        rows = int(job.num_dml_affected_rows or 0)
        self.log.info("migration_caught_up", rows=rows, since=since.isoformat())
        return rows

    def absorb_interloper(self) -> int:
        """``TABLE`` reappeared between the renames (a writer's ``ensure_tables``): empty, it is
        dropped; with rows (merged by writers since), they are merged into the copy first, newer
        version winning as in every MERGE, then it is dropped."""
        count = int(self.one_row(f"SELECT COUNT(*) AS n FROM `{self._id(self.table)}`", action="count")["n"])
        if count:
            target = self.spec.model_copy(update={"name": self.migrating, "partition_field": None})
            statement = build_merge(
                target, project=self.project, dataset=self.dataset, staging_table=self.table, rows=[]
            )
            self.query(statement.sql, action="merge writes made between the renames", read_only=False)
        self.query(
            build_drop(project=self.project, dataset=self.dataset, table=self.table),
            action="drop the table created between the renames",
            read_only=False,
        )
        self.log.warning("migration_interloper_absorbed", rows=count)
        return count

    def rename(self, table: str, new_name: str) -> None:
        sql = build_rename(project=self.project, dataset=self.dataset, table=table, new_name=new_name)
        self.query(sql, action=f"rename {table} to {new_name}", read_only=False)
        self.log.info("migration_renamed", source=table, target=new_name)


def run_migration(
    *,
    client: bigquery.Client,
    sink: BigQuerySink,
    semaphore: TableSemaphore,
    project: str,
    dataset: str,
    location: str,
    request: MigrationRequest,
    settings: Settings,
    message_id: str | None,
    now: Callable[[], datetime] = _utc_now,
    after_step: Callable[[str], None] | None = None,
) -> MigrationResult:
    """Run, or resume, the migration ``request`` asks for (see the module docstring).

    Args:
        client: the BigQuery client.
        sink: the sink whose ``write`` records the steps in ``_possync_migrations`` (same project
            and dataset).
        semaphore: the per-table semaphore every writer's MERGE holds a permit of.
        project: project id of the dataset.
        dataset: dataset holding the table.
        location: job location.
        request: the migration.
        settings: timeouts, the actor time limit and the price per TiB.
        message_id: the Dramatiq message, recorded with each step.
        now: the clock for recorded times and the backup's name (UTC).
        after_step: called with each step's name once it is recorded done (tests crash here).

    Returns:
        What was done; ``outcome`` is ``succeeded``, ``noop``, ``planned`` or ``stopped``.

    Raises:
        InvalidMigration: the request cannot be carried out (checked before any work).
        MigrationFailed: verify found differences (recorded with them; the source untouched), or
            BigQuery refused a step's work (recorded with the error).
        WarehouseUnavailable: BigQuery failed transiently, or the swap's permits did not come in
            time: retry, and the migration resumes where it was.
    """
    if (sink.project, sink.dataset) != (project, dataset):
        raise ValueError("the sink must write to the dataset being migrated")
    clock = time.monotonic()
    label = request.table if request.table in TABLES else "unknown"
    outcome = "interrupted"
    try:
        spec, migrating = validate_migration(request, project=project, dataset=dataset)
        MIGRATIONS_TOTAL.labels(table=label, outcome="started").inc()
        run = _Run(
            client=client,
            sink=sink,
            semaphore=semaphore,
            project=project,
            dataset=dataset,
            location=location,
            request=request,
            settings=settings,
            message_id=message_id,
            now=now,
            after_step=after_step,
            spec=spec,
            migrating=migrating,
        )
        try:
            result = run.run()
        except MigrationFailed:
            raise
        except PermanentError as exc:
            failure = _record_failure(run, exc)
            if failure is exc:
                raise
            raise failure from exc
        outcome = result.outcome
    except PermanentError as exc:
        outcome = "failed"
        MIGRATIONS_TOTAL.labels(table=label, outcome="failed").inc()
        _log.warning(
            "migration_failed", migration_id=request.migration_id, table=request.table, error=str(exc)[:500]
        )
        raise
    finally:
        seconds = time.monotonic() - clock
        MIGRATION_SECONDS.labels(table=label, outcome=outcome).observe(seconds)
    counted = {"succeeded": "succeeded", "noop": "succeeded", "planned": "planned"}.get(outcome)
    if counted is not None:
        MIGRATIONS_TOTAL.labels(table=label, outcome=counted).inc()
    _log.info(
        "migration_finished",
        migration_id=request.migration_id,
        table=request.table,
        outcome=outcome,
        steps_run=list(result.steps_run),
        seconds=round(seconds, 3),
    )
    return result


def _record_failure(run: _Run, exc: PermanentError) -> PermanentError:
    """Record the step under way as failed with the error; the error to raise.

    Outside a step (a request refused before any work, or ``after_step`` itself) the error is
    returned as it is and nothing is recorded.
    """
    if not run.in_step:
        return exc
    details = {"error": str(exc)[:2000]}
    running = run.journal.get(run.step)
    carried = running.details if running is not None and running.status == "running" else {}
    try:
        run.journal.record(run.step, "failed", {**carried, **details})
    except WorkerError as secondary:  # the original error is the one to report
        _log.warning("migration_failure_not_recorded", step=run.step, error=type(secondary).__name__)
    return _as_failure(run, exc)


def _as_failure(run: _Run, exc: PermanentError) -> MigrationFailed:
    return MigrationFailed(
        f"migration {run.request.migration_id} failed at {run.step}: {exc}",
        migration_id=run.request.migration_id,
        step=run.step,
        differences={},
        result=run.result("failed", time.monotonic()),
    )
