"""The BigQuery sink: idempotent batch writes (staging load job, then MERGE on key, newer version wins).

One ``write`` per batch (ARCHITECTURE.md, guarantee 1 and "Warehouse"):

1. every identifier is checked before any SQL exists (``bigquery_sql.check_identifier``);
2. if the batch's MERGE already ran (a redelivered message), re-attach to it and stop;
3. the rows go by **load job** (never insertAll: real BigQuery will not let DML touch streamed rows
   for up to 30-90 minutes) into a staging table named after the batch, created with an
   expiration so an abandoned one cleans itself up;
4. a **MERGE** into the target, under one permit of the table's Redis semaphore (BigQuery runs 2
   mutating DML per table at once), de-duplicates the staging rows on the key, updates a row only
   when the incoming version is greater, inserts the rest, and bounds the target's partition column
   to the batch's range so BigQuery prunes partitions;
5. the staging table is dropped (best effort; its expiration covers crashes).

Job ids come from what the batch covers (table, batch id, digest of the row contents without
ingestion metadata), so a redelivered batch finds the API answering 409 for a job id it has seen and
re-attaches (``get_job``) instead of running twice. A job id that ended in failure can never be
reused, so a retry of a failed batch moves to the next attempt's id. Google exceptions are
translated at this boundary into ``WarehouseUnavailable`` (retry) or ``WarehouseRejected`` (dead
letter). Every job's bytes billed is recorded (the emulator always reports 0).

Measured on the local emulator (local-bigquery 0.4.0, this 2-core machine kind, 2026-11-28, other
test suites running: load average about 3, so absolute times are up to 2x the idle ones in
ARCHITECTURE.md), 100,000 payment rows (about 440 bytes each as NDJSON, 44 MB in all) written into
an empty, partitioned table, two runs each::

    batch rows   writes   total      load jobs   MERGEs    client (JSON + digest)
    100,000      1        5.8-8.2 s  4.0-6.4 s   0.8 s     1.0 s
     50,000      2        8.6-9.7 s  6.1-6.7 s   1.4-1.7 s 1.1-1.3 s
     10,000      10       10.8-14 s  6.3-8.6 s   3.1-3.7 s 1.4-1.8 s

    replaying one batch that changes nothing (new batch id, so the MERGE runs): 5.3-5.8 s at
    100,000 rows, 3.0-3.5 s at 50,000, 0.9-2.0 s at 10,000; a redelivered batch (same id and
    content) re-attaches in about 0.01 s.

Each write has a fixed cost (staging table, load job, MERGE, drop), so fewer, larger batches win;
going from 50,000 to 100,000 rows saves 10-30 %, while a failed batch redoes twice the work. But
google-cloud-bigquery reads a load's payload whole into memory to upload it, so a batch's bytes are
what an upload holds while it is sent; a sink sends at most ``uploads`` at once. The defaults
(``batch_max_rows=50,000``, ``batch_max_bytes=16 MiB``, 2 uploads per process; docs/benchmarks.md
"Memory") keep a worker of 4 threads near 150 MB whatever the size of a window: the byte bound
binds first (about 28,000 payment rows of ~590 bytes), far below real BigQuery's 1,500 load jobs
per table per day (42 M rows/day).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import structlog
from google.api_core import exceptions as google_exceptions
from google.cloud import bigquery
from google.cloud.bigquery.retry import DEFAULT_RETRY

from schemas.tables import TABLES, TableSpec
from workers.errors import WarehouseRejected, WarehouseUnavailable
from workers.metrics import observe_bigquery_job
from workers.ndjson import EncodedRows, encode_rows
from workers.semaphore import PermitTimeout, TableSemaphore
from workers.sinks.bigquery_client import (
    TRANSLATED_ERRORS,
    make_bigquery_client,
    query_rows,
    translate_error,
)
from workers.sinks.bigquery_schema import (
    SchemaPlan,
    compare_schema,
    evolved_schema,
    refusal_message,
    table_layout,
)
from workers.sinks.bigquery_sql import (
    MAX_JOB_ATTEMPTS,
    BatchRef,
    MergeStatement,
    build_mark_deleted,
    build_merge,
    check_identifier,
    check_spec,
    content_digest,
    job_id,
    staging_table_name,
)

__all__ = ["BigQuerySink", "WriteResult", "make_bigquery_client", "query_rows", "translate_error"]

_log = structlog.get_logger(__name__)
#: Attempts to add a table's columns while other processes change it too (each conditional on the
#: etag read; a lost race re-reads the table and plans again).
_SCHEMA_UPDATE_ATTEMPTS = 5


@dataclass(frozen=True)
class WriteResult:
    """What one :meth:`BigQuerySink.write` did.

    Attributes:
        table: target table name.
        rows_in: rows handed to ``write``.
        rows_loaded: rows the load job wrote to staging (``None`` when re-attached without loading).
        rows_inserted: rows the MERGE inserted, as far as the API reports (``None`` if it does not).
        rows_updated: rows the MERGE updated (a newer version), likewise.
        rows_affected: rows the MERGE inserted or updated, likewise.
        load_job_id: the load job's id (``None`` for an empty batch or a re-attached merge).
        load_attached: the load job had already run (the batch was interrupted before its MERGE).
        merge_job_id: the MERGE job's id (``None`` for an empty batch).
        attached: the MERGE had already run (a redelivered batch): nothing was applied twice.
        bytes_billed: bytes billed for both jobs, bytes.
        seconds: wall time of the write, seconds.
    """

    table: str
    rows_in: int
    rows_loaded: int | None
    rows_inserted: int | None
    rows_updated: int | None
    rows_affected: int | None
    load_job_id: str | None
    load_attached: bool
    merge_job_id: str | None
    attached: bool
    bytes_billed: int
    seconds: float


def _schema(spec: TableSpec) -> list[bigquery.SchemaField]:
    return [
        bigquery.SchemaField(column.name, column.type, mode=column.mode, description=column.description)
        for column in spec.columns
    ]


class BigQuerySink:
    """Writes batches into BigQuery tables idempotently; thread-safe.

    Args:
        client: the BigQuery client (see :func:`make_bigquery_client`).
        project: project id of the dataset.
        dataset: dataset name; created by :meth:`ensure_tables`.
        location: dataset and job location (``US``...).
        semaphore: the per-table semaphore every MERGE holds one permit of.
        uploads: load-job uploads this sink sends at once (one sink per worker process).
        staging_ttl_seconds: staging tables expire this long after creation, seconds.
        timeout_seconds: deadline for each API call, job wait and permit wait, seconds.
        usd_per_tib: on-demand price per TiB billed, dollars, for the cost metric.
        on_written: called with the table and row count of each batch whose MERGE this call ran
            (workers count them in Redis: ``possync_rows_synced_total``).

    Raises:
        InvalidIdentifier: if the project or dataset name is invalid.
    """

    def __init__(
        self,
        client: bigquery.Client,
        *,
        project: str,
        dataset: str,
        location: str,
        semaphore: TableSemaphore,
        uploads: int = 2,
        staging_ttl_seconds: int = 86_400,
        timeout_seconds: float = 300,
        usd_per_tib: float = 6.25,
        on_written: Callable[[str, int], None] | None = None,
    ) -> None:
        self.client = client
        self.usd_per_tib = usd_per_tib
        self.on_written = on_written
        self.project = check_identifier("project", project)
        self.dataset = check_identifier("dataset", dataset)
        self.location = location
        self.semaphore = semaphore
        # google-cloud-bigquery reads a payload whole to send it: the batches this process's
        # threads upload at once are what it holds in memory beyond its steady state.
        self._uploads = threading.BoundedSemaphore(uploads)
        self.staging_ttl_seconds = staging_ttl_seconds
        self.timeout_seconds = timeout_seconds
        self._retry = DEFAULT_RETRY.with_deadline(timeout_seconds)
        self._ensured: set[str] = set()
        self._ensure_lock = threading.Lock()

    def _ref(self, table: str) -> str:
        return f"{self.project}.{self.dataset}.{table}"

    def ensure_tables(self, specs: Iterable[TableSpec] = TABLES.values()) -> None:
        """Create the dataset and these tables if missing; bring existing tables' schemas up to the specs.

        A missing table is created with the spec's schema, modes, partitioning and clustering. An
        existing one is compared with its spec (``bigquery_schema``): missing columns are added
        (NULLABLE or REPEATED; a spec-REQUIRED one NULLABLE, as BigQuery cannot add REQUIRED
        columns), REQUIRED columns the spec has NULLABLE are relaxed, and a partitioning or
        clustering other than the spec's is logged (``bigquery_table_layout_differs``) but left to
        a migration. Columns are never dropped or retyped here.

        Idempotent; remembered per sink (one per process) once a table passes, so later calls cost
        nothing and each table costs one ``get_table`` per process.

        Raises:
            InvalidIdentifier: for an invalid name in a spec (before any API call).
            WarehouseUnavailable: BigQuery failed transiently, or the table kept changing under us.
            WarehouseRejected: BigQuery refused (e.g. no permission), or the table has columns the
                spec does not know or of another type (named in the message; nothing was changed).
        """
        specs = list(specs)
        for spec in specs:
            check_spec(spec)
        with self._ensure_lock:
            try:
                if "" not in self._ensured:
                    dataset = bigquery.Dataset(f"{self.project}.{self.dataset}")
                    dataset.location = self.location
                    self.client.create_dataset(
                        dataset, exists_ok=True, retry=self._retry, timeout=self.timeout_seconds
                    )
                    self._ensured.add("")
                for spec in specs:
                    if spec.name not in self._ensured:
                        self._ensure_table(spec)
                        self._ensured.add(spec.name)
            except TRANSLATED_ERRORS as exc:
                raise translate_error(exc, action="create tables") from exc

    def _ensure_table(self, spec: TableSpec) -> None:
        """Create ``spec``'s table, or check an existing one and add or relax columns to fit it.

        The schema change is conditional on the table's etag: if another process changed the table
        since it was read (412), or dropped it (404), read it again and plan again.

        Raises:
            WarehouseRejected: the table has columns unknown to the spec or of another type.
            WarehouseUnavailable: the table changed under every one of the attempts.
        """
        for _ in range(_SCHEMA_UPDATE_ATTEMPTS):
            try:
                table = self.client.get_table(
                    self._ref(spec.name), retry=self._retry, timeout=self.timeout_seconds
                )
            except google_exceptions.NotFound:
                table = self._create_table(spec)
            plan = compare_schema(spec, table.schema, table_layout(table))
            refusal = refusal_message(plan)
            if refusal is not None:
                raise WarehouseRejected(refusal, system="bigquery")
            if plan.changes_schema:
                try:
                    self._evolve_schema(table, plan)
                except (google_exceptions.PreconditionFailed, google_exceptions.NotFound):
                    continue  # changed or dropped since it was read: plan again from what is there now
            if plan.layout_differs:
                # A legacy layout: still writable, but it needs a migration (CTAS + swap) to prune.
                _log.warning(
                    "bigquery_table_layout_differs",
                    table=spec.name,
                    expected=plan.expected_layout.as_dict(),
                    actual=plan.actual_layout.as_dict(),
                )
            return
        raise WarehouseUnavailable(
            f"{spec.name} changed under each of {_SCHEMA_UPDATE_ATTEMPTS} attempts to add its columns",
            system="bigquery",
        )

    def _create_table(self, spec: TableSpec) -> bigquery.Table:
        """Create ``spec``'s table; a table created meanwhile by another process is returned instead."""
        table = bigquery.Table(self._ref(spec.name), schema=_schema(spec))
        table.description = spec.description or None
        if spec.partition_field is not None:
            table.time_partitioning = bigquery.TimePartitioning(
                type_=spec.partition_granularity, field=spec.partition_field
            )
        if spec.clustering:
            table.clustering_fields = list(spec.clustering)
        created: bigquery.Table = self.client.create_table(
            table, exists_ok=True, retry=self._retry, timeout=self.timeout_seconds
        )
        return created

    def _evolve_schema(self, table: bigquery.Table, plan: SchemaPlan) -> None:
        """Add and relax ``plan``'s columns in one ``update_table``, conditional on ``table.etag``.

        Raises:
            google.api_core.exceptions.PreconditionFailed: the table changed since it was read.
        """
        table.schema = evolved_schema(table.schema, plan)
        self.client.update_table(table, ["schema"], retry=self._retry, timeout=self.timeout_seconds)
        for column in plan.add:
            _log.info(
                "bigquery_column_added",
                table=plan.table,
                column=column.name,
                type=column.type,
                mode=column.mode,
                # BigQuery cannot add a REQUIRED column to an existing table; loads still fill it.
                spec_mode="REQUIRED" if column.name in plan.add_as_nullable else column.mode,
            )
        for name in plan.relax:
            _log.info("bigquery_column_relaxed", table=plan.table, column=name, mode="NULLABLE")

    def write(
        self, spec: TableSpec, rows: EncodedRows | Sequence[Mapping[str, Any]], *, batch_id: str
    ) -> WriteResult:
        """Merge ``rows`` into ``spec``'s table, at most once per batch content.

        Args:
            spec: the target table.
            rows: the batcher's encoded rows, or JSON-ready dicts
                (``row.model_dump(mode="json", by_alias=True)``), which are encoded here.
            batch_id: the engine's stable id for what the batch covers.

        Returns:
            What was done (see :class:`WriteResult`).

        Raises:
            InvalidIdentifier: a name breaks BigQuery's rules (nothing was sent).
            WarehouseRejected: rows that do not fit the schema, or BigQuery refused the job.
            WarehouseUnavailable: BigQuery failed transiently, or no merge permit came in time.
        """
        started = time.monotonic()
        check_spec(spec)
        if not len(rows):
            return WriteResult(spec.name, 0, None, None, None, None, None, False, None, False, 0, 0.0)
        # Rows given as dicts are encoded here, into a file this call removes when it is done.
        with contextlib.ExitStack() as owned:
            if not isinstance(rows, EncodedRows):
                self._check_rows(spec, rows)
                rows = owned.enter_context(contextlib.closing(encode_rows(spec, rows)))
            self.ensure_tables([spec])
            batch = BatchRef(self.project, self.dataset, spec.name, batch_id, rows.contents)
            staging = staging_table_name(batch)
            statement = build_merge(
                spec,
                project=self.project,
                dataset=self.dataset,
                staging_table=staging,
                partition=rows.partition,
            )

            done = self._finished_merge(batch)
            if done is not None:
                return self._result(
                    spec, rows, None, done, load_attached=False, attached=True, started=started
                )

            load, load_attached = self._load(spec, rows, staging, batch)
            merge, attached = self._merge(statement, batch)
            self._drop(staging)
            result = self._result(
                spec, rows, load, merge, load_attached=load_attached, attached=attached, started=started
            )
            _log.info(
                "bigquery_batch_written",
                table=spec.name,
                rows_in=result.rows_in,
                rows_affected=result.rows_affected,
                attached=attached,
                bytes_billed=result.bytes_billed,
                seconds=round(result.seconds, 3),
            )
            if self.on_written is not None:
                self.on_written(spec.name, result.rows_in)
            return result

    def mark_deleted(
        self,
        spec: TableSpec,
        key: Mapping[str, Any],
        *,
        deleted_at: datetime,
        synced_at: datetime,
        message_id: str | None,
    ) -> int:
        """Mark the stored row with this key deleted, if there is one not yet marked.

        For a deletion that arrives without the record's last state. Runs under a merge permit,
        with a job id derived from the key and time, so a redelivery re-attaches.

        Returns:
            Rows marked (0 when the row is absent or already marked).

        Raises:
            InvalidIdentifier, WarehouseRejected, WarehouseUnavailable: as for :meth:`write`.
        """
        statement = build_mark_deleted(
            spec,
            project=self.project,
            dataset=self.dataset,
            key=key,
            deleted_at=deleted_at,
            synced_at=synced_at,
            message_id=message_id,
        )
        self.ensure_tables([spec])
        marker = {**{name: str(key[name]) for name in spec.key}, "deleted_at": deleted_at.isoformat()}
        batch_id = "delete:" + ":".join(str(key[name]) for name in spec.key)
        batch = BatchRef(self.project, self.dataset, spec.name, batch_id, content_digest([marker]))
        job, attached = self._merge(statement, batch)
        marked = int(job.num_dml_affected_rows or 0)
        _log.info("bigquery_row_marked_deleted", table=spec.name, marked=marked, attached=attached)
        return marked

    def _check_rows(self, spec: TableSpec, rows: Sequence[Mapping[str, Any]]) -> None:
        known = set(spec.column_names)
        for index, row in enumerate(rows):
            unknown = row.keys() - known
            if unknown:
                raise WarehouseRejected(
                    f"row {index} of the batch for {spec.name} has columns the table lacks: "
                    f"{sorted(unknown)}",
                    system="bigquery",
                )

    def _finished_merge(self, batch: BatchRef) -> bigquery.QueryJob | None:
        """The batch's MERGE if one already succeeded (a redelivered batch), else ``None``."""
        for attempt in range(MAX_JOB_ATTEMPTS):
            merge_id = job_id("merge", batch, attempt)
            try:
                job = self.client.get_job(
                    merge_id, location=self.location, retry=self._retry, timeout=self.timeout_seconds
                )
            except google_exceptions.NotFound:
                return None
            except TRANSLATED_ERRORS as exc:
                raise translate_error(exc, action="look up merge job", job_id=merge_id) from exc
            if job.state != "DONE":
                return None  # still running elsewhere: _merge re-attaches to it through the 409
            if job.error_result is None and isinstance(job, bigquery.QueryJob):
                return job
        return None

    def _run_job(self, kind: Literal["load", "merge"], batch: BatchRef, create: Any) -> tuple[Any, bool]:
        """Create the job under the first attempt id not spent by a failure; re-attach on 409.

        Returns:
            The finished job, and whether it already existed (re-attached).
        """
        for attempt in range(MAX_JOB_ATTEMPTS):
            current = job_id(kind, batch, attempt)
            attached = False
            started = time.monotonic()
            try:
                job = create(current)
            except google_exceptions.Conflict:
                try:
                    job = self.client.get_job(
                        current, location=self.location, retry=self._retry, timeout=self.timeout_seconds
                    )
                except TRANSLATED_ERRORS as exc:
                    raise translate_error(exc, action=f"re-attach to {kind} job", job_id=current) from exc
                if job.state == "DONE" and job.error_result is not None:
                    continue  # this id is spent by a failed try: the next attempt gets a fresh one
                attached = True
            except TRANSLATED_ERRORS as exc:
                raise translate_error(exc, action=f"start {kind} job", job_id=current) from exc
            try:
                job.result(retry=self._retry, timeout=self.timeout_seconds)
            except TRANSLATED_ERRORS as exc:
                raise translate_error(exc, action=f"{kind} job", job_id=current) from exc
            rows = job.output_rows if kind == "load" else job.num_dml_affected_rows
            observe_bigquery_job(
                kind,
                batch.table,
                seconds=time.monotonic() - started,
                rows=None if attached else rows,
                bytes_billed=None if attached else getattr(job, "total_bytes_billed", None),
                usd_per_tib=self.usd_per_tib,
            )
            return job, attached
        raise WarehouseRejected(
            f"every one of the {MAX_JOB_ATTEMPTS} {kind} job ids of batch {batch.batch_id!r} "
            f"for {batch.table} failed",
            system="bigquery",
        )

    def _load(
        self, spec: TableSpec, rows: EncodedRows, staging: str, batch: BatchRef
    ) -> tuple[bigquery.LoadJob, bool]:
        table = bigquery.Table(self._ref(staging), schema=_schema(spec))
        table.expires = datetime.now(UTC) + timedelta(seconds=self.staging_ttl_seconds)
        table.description = f"possync staging for {spec.name}, batch {batch.batch_id[:200]}"
        try:
            self.client.create_table(table, exists_ok=True, retry=self._retry, timeout=self.timeout_seconds)
        except TRANSLATED_ERRORS as exc:
            raise translate_error(exc, action="create staging table") from exc
        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
            schema=_schema(spec),
            # A retry after a failed attempt reloads from scratch rather than appending twice.
            write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
            create_disposition=bigquery.CreateDisposition.CREATE_NEVER,
            ignore_unknown_values=False,
        )

        def create(load_id: str) -> bigquery.LoadJob:
            with self._uploads:  # returns once the payload is sent and the job exists
                return self.client.load_table_from_file(
                    rows.payload(),
                    self._ref(staging),
                    job_id=load_id,
                    job_config=config,
                    location=self.location,
                    rewind=True,
                    size=rows.size,
                    timeout=self.timeout_seconds,
                )

        job, attached = self._run_job("load", batch, create)
        load_job: bigquery.LoadJob = job
        return load_job, attached

    def _merge(self, statement: MergeStatement, batch: BatchRef) -> tuple[bigquery.QueryJob, bool]:
        config = bigquery.QueryJobConfig(
            query_parameters=[
                bigquery.ScalarQueryParameter(name, kind, value) for name, kind, value in statement.parameters
            ]
        )

        def create(merge_id: str) -> bigquery.QueryJob:
            return self.client.query(
                statement.sql,
                job_config=config,
                job_id=merge_id,
                location=self.location,
                retry=self._retry,
                timeout=self.timeout_seconds,
                job_retry=None,  # a job id is given: a retry must not silently run a new job
            )

        try:
            with self.semaphore.permit(batch.table, timeout_seconds=self.timeout_seconds):
                job, attached = self._run_job("merge", batch, create)
        except PermitTimeout as exc:
            raise translate_error(exc, action="wait for a merge permit") from exc
        merge_job: bigquery.QueryJob = job
        return merge_job, attached

    def _drop(self, staging: str) -> None:
        try:
            self.client.delete_table(
                self._ref(staging), not_found_ok=True, retry=self._retry, timeout=self.timeout_seconds
            )
        except TRANSLATED_ERRORS as exc:
            # The table's expiration removes it anyway; the batch itself is merged.
            _log.warning("bigquery_staging_drop_failed", table=staging, error=type(exc).__name__)

    def _result(
        self,
        spec: TableSpec,
        rows: EncodedRows,
        load: bigquery.LoadJob | None,
        merge: bigquery.QueryJob,
        *,
        load_attached: bool,
        attached: bool,
        started: float,
    ) -> WriteResult:
        stats = merge.dml_stats
        # Load jobs are free on BigQuery; their bytes billed, where reported, is counted all the same.
        billed = (merge.total_bytes_billed or 0) + (getattr(load, "total_bytes_billed", None) or 0)
        return WriteResult(
            table=spec.name,
            rows_in=len(rows),
            rows_loaded=load.output_rows if load is not None else None,
            rows_inserted=stats.inserted_row_count if stats is not None else None,
            rows_updated=stats.updated_row_count if stats is not None else None,
            rows_affected=merge.num_dml_affected_rows,
            load_job_id=load.job_id if load is not None else None,
            load_attached=load_attached,
            merge_job_id=merge.job_id,
            attached=attached,
            bytes_billed=int(billed),
            seconds=time.monotonic() - started,
        )
