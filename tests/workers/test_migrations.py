"""Table migrations against the emulator and a real Redis: plan, copy, verify, swap, resumed and refused.

The legacy table is ``square_payments`` the way the old system kept it (``migration_helpers``):
unpartitioned, FLOAT money. Crashes are simulated by ``after_step`` raising, or by a client that
loses its connection on the swap's second rename.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import pytest
import redis
import requests
from google.api_core import exceptions as google_exceptions
from google.cloud import bigquery
from prometheus_client import REGISTRY

from schemas.settings import Settings
from schemas.tables import SQUARE_PAYMENTS
from tests.conftest import TEST_PROJECT
from tests.polling import wait_until
from tests.workers.migration_helpers import (
    AMOUNTS,
    TABLE,
    LegacyTable,
    ObservedSemaphore,
    figures,
    load_legacy_payments,
    migration_request,
    payment_row,
    table_names,
)
from workers.errors import PermanentError, WarehouseUnavailable
from workers.migrations import (
    InvalidMigration,
    MigrationFailed,
    MigrationResult,
    list_migrations,
    migration_id_for,
    run_migration,
)
from workers.sinks.bigquery import BigQuerySink, query_rows
from workers.sinks.bigquery_ddl import (
    CopyRefused,
    SourceColumn,
    copy_job_id,
    migrating_table_name,
    partition_expression,
    plan_copy,
)

MIGRATION_ID = migration_id_for(TABLE, "created_at", "DAY", ("customer_id", "status"))
MIGRATING = migrating_table_name(TABLE, MIGRATION_ID)
BACKUP = re.compile(rf"^{TABLE}__backup_(\d{{14}})$")


class Crash(Exception):
    """A worker dying after a step (raised from ``after_step``)."""


def crash_after(step: str, before: Callable[[], None] | None = None) -> Callable[[str], None]:
    def after_step(done: str) -> None:
        if done == step:
            if before is not None:
                before()
            raise Crash(step)

    return after_step


@pytest.fixture
def settings(dataset: str) -> Settings:
    return Settings(bigquery_project=TEST_PROJECT, bigquery_dataset=dataset, bigquery_timeout_seconds=60)


@pytest.fixture
def sink(make_sink: Callable[..., BigQuerySink]) -> BigQuerySink:
    return make_sink()


@pytest.fixture
def migrate(
    bq_client: bigquery.Client, sink: BigQuerySink, dataset: str, settings: Settings
) -> Callable[..., MigrationResult]:
    """Run a migration of the test's dataset; keyword arguments override ``run_migration``'s."""

    def run(**overrides: Any) -> MigrationResult:
        options: dict[str, Any] = {
            "client": bq_client,
            "sink": sink,
            "semaphore": sink.semaphore,
            "project": TEST_PROJECT,
            "dataset": dataset,
            "location": "US",
            "request": migration_request(),
            "settings": settings,
            "message_id": "msg-migrate",
        }
        options.update(overrides)
        return run_migration(**options)

    return run


def ref(dataset: str, table: str) -> str:
    return f"{TEST_PROJECT}.{dataset}.{table}"


def metric(name: str, outcome: str, table: str = TABLE) -> float:
    return REGISTRY.get_sample_value(name, {"table": table, "outcome": outcome}) or 0.0


def counted(outcome: str) -> float:
    return metric("possync_migrations_total", outcome)


def steps_of(bq_client: bigquery.Client, dataset: str) -> dict[str, Any]:
    found = list_migrations(bq_client, project=TEST_PROJECT, dataset=dataset)
    assert [migration.migration_id for migration in found] == [MIGRATION_ID]
    return {step.step: step for step in found[0].steps}


def expected_figures(legacy: LegacyTable) -> dict[str, Any]:
    return {
        "rows": legacy.rows,
        "ids": legacy.rows,
        "first": legacy.first_created,
        "last": legacy.last_created,
        **legacy.totals,
    }


def backups(bq_client: bigquery.Client, dataset: str) -> list[str]:
    return sorted(name for name in table_names(bq_client, dataset) if BACKUP.match(name))


def test_a_legacy_payments_table_is_migrated_to_the_partitioned_clustered_layout(
    bq_client: bigquery.Client, dataset: str, sink: BigQuerySink, migrate: Callable[..., MigrationResult]
) -> None:
    # Given 20,000 payments kept the old way: unpartitioned, FLOAT money that is not exact
    legacy = load_legacy_payments(bq_client, dataset, 20_000)
    assert figures(bq_client, dataset, TABLE) == expected_figures(legacy)
    started, succeeded = counted("started"), counted("succeeded")
    timed = metric("possync_migration_duration_seconds_count", "succeeded")
    before = datetime.now(UTC).replace(microsecond=0)

    # When it is migrated
    result = migrate()

    # Then every step ran once, and the table reports the new layout with the spec's types
    after = datetime.now(UTC)
    assert result.outcome == "succeeded"
    assert result.steps_run == ("plan", "copy", "verify", "swap", "done")
    table = bq_client.get_table(ref(dataset, TABLE))
    assert table.time_partitioning is not None
    assert (table.time_partitioning.type_, table.time_partitioning.field) == ("DAY", "created_at")
    assert table.clustering_fields == ["customer_id", "status"]
    schema = {field.name: (field.field_type, field.mode) for field in table.schema}
    assert schema == {column.name: (column.type, column.mode) for column in SQUARE_PAYMENTS.columns}
    assert {schema[name][0] for name in AMOUNTS} == {"NUMERIC"}

    # And counts, keys, time range and every amount are identical to the cent
    assert figures(bq_client, dataset, TABLE) == expected_figures(legacy)
    exact = query_rows(
        bq_client,
        f"SELECT SUM(amount) AS amount, SUM(total_amount) AS total_amount FROM `{ref(dataset, TABLE)}`",
    )[0]
    assert exact == {"amount": legacy.totals["amount"], "total_amount": legacy.totals["total_amount"]}
    trap = query_rows(bq_client, f"SELECT total_amount FROM `{ref(dataset, TABLE)}` WHERE id = 'pay-000000'")
    assert trap == [{"total_amount": Decimal("0.30")}]

    # And the old table is kept as a timestamped backup with its original rows; no copy is left
    [backup] = backups(bq_client, dataset)
    match = BACKUP.match(backup)
    assert match is not None
    stamp = datetime.strptime(match.group(1), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    assert before <= stamp <= after
    assert result.backup_table == backup
    old = bq_client.get_table(ref(dataset, backup))
    assert old.time_partitioning is None
    assert [field.field_type for field in old.schema if field.name == "amount"] == ["FLOAT"]
    assert figures(bq_client, dataset, backup) == expected_figures(legacy)
    assert MIGRATING not in table_names(bq_client, dataset)

    # And the steps are recorded, with the plan's estimate, and the migration is counted
    steps = steps_of(bq_client, dataset)
    assert {name: step.status for name, step in steps.items()} == dict.fromkeys(
        ("plan", "copy", "verify", "swap", "done"), "done"
    )
    assert steps["plan"].details["bytes"] == result.estimate_bytes
    assert result.estimate_bytes is not None
    assert result.estimate_bytes > 0
    assert steps["swap"].details["backup"] == backup
    assert steps["swap"].details["caught_up_rows"] == 0
    assert (counted("started"), counted("succeeded")) == (started + 1, succeeded + 1)
    assert metric("possync_migration_duration_seconds_count", "succeeded") == timed + 1

    # When a sync merges a new payment and a newer version of an old one afterwards
    now = datetime.now(UTC)
    changed = [
        payment_row(20_000, amount="12.34", synced_at=now),
        payment_row(7, amount="0.07", synced_at=now, updated_minutes=60),
    ]
    sink.write(SQUARE_PAYMENTS, changed, batch_id="after-migration")

    # Then both land in the new table, and the backup is left alone
    rows = query_rows(
        bq_client,
        f"SELECT id, amount FROM `{ref(dataset, TABLE)}` "
        "WHERE id IN ('pay-020000', 'pay-000007') ORDER BY id",
    )
    assert rows == [
        {"id": "pay-000007", "amount": Decimal("0.07")},
        {"id": "pay-020000", "amount": Decimal("12.34")},
    ]
    assert figures(bq_client, dataset, TABLE)["rows"] == 20_001
    assert figures(bq_client, dataset, backup)["rows"] == 20_000

    # When the same migration is asked again
    again = migrate()

    # Then it is a no-op: nothing copied, no second backup, still counted as a success
    assert (again.outcome, again.steps_run) == ("noop", ())
    assert backups(bq_client, dataset) == [backup]
    assert figures(bq_client, dataset, TABLE)["rows"] == 20_001
    assert counted("succeeded") == succeeded + 2


def test_a_crash_after_the_copy_resumes_without_copying_again(
    bq_client: bigquery.Client, dataset: str, migrate: Callable[..., MigrationResult]
) -> None:
    # Given a migration whose worker died right after the copy step was recorded
    legacy = load_legacy_payments(bq_client, dataset, 2_000)
    with pytest.raises(Crash):
        migrate(after_step=crash_after("copy"))
    copied = steps_of(bq_client, dataset)
    assert {name: step.status for name, step in copied.items()} == {"plan": "done", "copy": "done"}
    created = bq_client.get_table(ref(dataset, MIGRATING)).created

    # When the message is delivered again
    result = migrate()

    # Then it resumed at verify: the copy job and table are the first run's, and it succeeded
    assert result.outcome == "succeeded"
    assert result.steps_run == ("verify", "swap", "done")
    done = steps_of(bq_client, dataset)
    assert done["copy"].finished_at == copied["copy"].finished_at
    assert done["copy"].details["job_id"] == copied["copy"].details["job_id"]
    assert done["verify"].status == "done"
    assert bq_client.get_table(ref(dataset, TABLE)).created == created
    second = copy_job_id(
        project=TEST_PROJECT, dataset=dataset, table=TABLE, migration_id=MIGRATION_ID, attempt=1
    )
    with pytest.raises(google_exceptions.NotFound):
        bq_client.get_job(second)
    assert figures(bq_client, dataset, TABLE) == expected_figures(legacy)


def test_a_copy_job_that_already_ran_is_reattached_not_run_twice(
    bq_client: bigquery.Client, dataset: str, migrate: Callable[..., MigrationResult]
) -> None:
    # Given a copy that finished but whose worker died before recording it (only "running" recorded)
    load_legacy_payments(bq_client, dataset, 500)
    migrate(request=migration_request(stop_after="copy"))
    first = steps_of(bq_client, dataset)["copy"]
    created = bq_client.get_table(ref(dataset, MIGRATING)).created
    rows = query_rows(
        bq_client,
        f"SELECT * FROM `{ref(dataset, '_possync_migrations')}` WHERE step = 'copy'",
    )
    bq_client.query(
        f"UPDATE `{ref(dataset, '_possync_migrations')}` SET status = 'running', finished_at = NULL "
        "WHERE step = 'copy'"
    ).result()
    assert len(rows) == 1

    # When the migration runs again
    result = migrate()

    # Then the copy re-attached to its job (same id, same table) instead of copying again
    assert result.outcome == "succeeded"
    assert result.steps_run == ("copy", "verify", "swap", "done")
    again = steps_of(bq_client, dataset)["copy"]
    assert again.details["job_id"] == first.details["job_id"]
    assert again.details["snapshot_at"] == first.details["snapshot_at"]
    assert bq_client.get_table(ref(dataset, TABLE)).created == created


def test_a_verify_mismatch_fails_and_leaves_the_source_in_place(
    bq_client: bigquery.Client, dataset: str, migrate: Callable[..., MigrationResult]
) -> None:
    # Given a copy that lost a row (tampered with after the copy step, then the worker died)
    legacy = load_legacy_payments(bq_client, dataset, 2_000)

    def lose_a_row() -> None:
        bq_client.query(f"DELETE FROM `{ref(dataset, MIGRATING)}` WHERE id = 'pay-000003'").result()

    with pytest.raises(Crash):
        migrate(after_step=crash_after("copy", before=lose_a_row))
    failed = counted("failed")

    # When the migration resumes
    with pytest.raises(MigrationFailed) as raised:
        migrate()

    # Then it fails permanently at verify with the differences, in the error and in the record
    error = raised.value
    assert isinstance(error, PermanentError)
    assert error.step == "verify"
    assert error.differences["rows"] == {"source": 2_000, "copy": 1_999}
    assert error.differences["distinct_keys"] == {"source": 2_000, "copy": 1_999}
    assert "sum(amount)" in error.differences
    assert "rows: source 2000 != copy 1999" in str(error)
    assert error.result.outcome == "failed"
    steps = steps_of(bq_client, dataset)
    assert steps["verify"].status == "failed"
    assert steps["verify"].details["differences"]["rows"] == {"source": 2_000, "copy": 1_999}
    assert "swap" not in steps
    [migration] = list_migrations(bq_client, project=TEST_PROJECT, dataset=dataset)
    assert migration.state == "failed"
    assert "differences" in migration.describe()
    assert counted("failed") == failed + 1

    # And the source is untouched: unpartitioned, FLOAT, every row; the copy is kept, expiring
    source = bq_client.get_table(ref(dataset, TABLE))
    assert source.time_partitioning is None
    assert [field.field_type for field in source.schema if field.name == "amount"] == ["FLOAT"]
    assert figures(bq_client, dataset, TABLE) == expected_figures(legacy)
    assert backups(bq_client, dataset) == []
    kept = bq_client.get_table(ref(dataset, MIGRATING))
    assert kept.expires is not None
    assert kept.expires > datetime.now(UTC)

    # When it is asked again, it starts over from a fresh copy (the next attempt) and succeeds
    result = migrate()
    assert result.outcome == "succeeded"
    assert result.steps_run == ("plan", "copy", "verify", "swap", "done")
    assert steps_of(bq_client, dataset)["copy"].details["attempt"] == 1
    assert figures(bq_client, dataset, TABLE) == expected_figures(legacy)
    assert len(backups(bq_client, dataset)) == 1


def test_a_dry_run_reports_the_estimate_and_changes_nothing(
    bq_client: bigquery.Client, dataset: str, settings: Settings, migrate: Callable[..., MigrationResult]
) -> None:
    # Given a legacy table
    load_legacy_payments(bq_client, dataset, 500)
    tables = table_names(bq_client, dataset)
    planned = counted("planned")

    # When a dry run is asked
    result = migrate(request=migration_request(dry_run=True))

    # Then it reports bytes and dollars at on-demand pricing (the emulator's dry run reports 0 bytes,
    # so the table's size stands in and the plan says so)
    assert (result.outcome, result.steps_run) == ("planned", ("plan",))
    size = bq_client.get_table(ref(dataset, TABLE)).num_bytes
    assert result.estimate_source == "table_metadata"
    assert result.estimate_bytes == size
    assert result.estimate_usd == pytest.approx(size / 2**40 * settings.bigquery_usd_per_tib, abs=1e-6)
    plan = steps_of(bq_client, dataset)["plan"]
    assert plan.status == "done"
    assert plan.details["bytes"] == size
    assert plan.details["casts"]["amount"] == "FLOAT64 -> NUMERIC rounded to cents"
    assert counted("planned") == planned + 1

    # And nothing changed but the record of it: no copy, the table still unpartitioned
    assert table_names(bq_client, dataset) == tables | {"_possync_migrations"}
    assert bq_client.get_table(ref(dataset, TABLE)).time_partitioning is None


def test_a_live_table_keeps_every_write_across_the_migration(
    bq_client: bigquery.Client,
    dataset: str,
    redis_client: redis.Redis,
    make_sink: Callable[..., BigQuerySink],
    migrate: Callable[..., MigrationResult],
) -> None:
    # Given an unpartitioned table with the spec's types, which syncs still write into
    load_legacy_payments(bq_client, dataset, 1_000, money="NUMERIC")

    # And a sync that merges a new payment and a newer version of an old one after the verify
    def sync_meanwhile(step: str) -> None:
        if step == "verify":
            now = datetime.now(UTC)
            changed = [
                payment_row(1_000, amount="5.55", synced_at=now),
                payment_row(11, amount="0.11", synced_at=now, updated_minutes=90),
            ]
            make_sink().write(SQUARE_PAYMENTS, changed, batch_id="between-verify-and-swap")

    # And a writer in another process that starts a batch while the swap holds every permit
    outcome: dict[str, Any] = {}

    def write() -> None:
        try:
            row = payment_row(1_001, amount="9.99", synced_at=datetime.now(UTC))
            outcome["result"] = writer.write(SQUARE_PAYMENTS, [row], batch_id="during-swap")
        except Exception as exc:  # noqa: BLE001 - reported by the assertions below
            outcome["error"] = exc

    thread = threading.Thread(target=write, name="writer")

    def start_writer() -> None:
        thread.start()
        wait_until(
            semaphore.writer_waiting.is_set, timeout_seconds=30, message="the writer never asked for a permit"
        )
        assert thread.is_alive(), outcome

    semaphore = ObservedSemaphore(redis_client, permits=2, on_hold=start_writer)
    writer = make_sink(semaphore=semaphore)
    migrator = make_sink(semaphore=semaphore)

    # When the table is migrated
    result = migrate(sink=migrator, semaphore=semaphore, after_step=sync_meanwhile)
    thread.join(timeout=60)

    # Then the swap carried the sync's two rows over, exactly
    assert result.outcome == "succeeded"
    assert steps_of(bq_client, dataset)["swap"].details["caught_up_rows"] == 2

    # And the writer got its permit only after the swap had finished, so its row is in the new table
    assert not thread.is_alive()
    assert "error" not in outcome, outcome
    events = semaphore.events
    assert events["swap_held"] < events["writer_asked"] < events["swap_finished"] < events["writer_permitted"]
    rows = query_rows(
        bq_client,
        f"SELECT id, amount FROM `{ref(dataset, TABLE)}` "
        "WHERE id IN ('pay-000011', 'pay-001000', 'pay-001001') ORDER BY id",
    )
    assert rows == [
        {"id": "pay-000011", "amount": Decimal("0.11")},
        {"id": "pay-001000", "amount": Decimal("5.55")},
        {"id": "pay-001001", "amount": Decimal("9.99")},
    ]
    assert figures(bq_client, dataset, TABLE)["rows"] == 1_002
    assert bq_client.get_table(ref(dataset, TABLE)).time_partitioning is not None
    [backup] = backups(bq_client, dataset)
    assert figures(bq_client, dataset, backup)["rows"] == 1_001


class LosesConnectionOnRename:
    """A client whose connection drops on the rename of the copy to the table's name, once."""

    def __init__(self, inner: bigquery.Client) -> None:
        self.inner = inner
        self.armed = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def query(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        if self.armed and sql.startswith("ALTER TABLE") and sql.endswith(f"RENAME TO `{TABLE}`"):
            self.armed = False
            raise requests.ConnectionError("connection lost")
        return self.inner.query(sql, *args, **kwargs)


@pytest.mark.parametrize("written", [0, 1], ids=["empty", "with-a-write"])
def test_a_swap_interrupted_between_the_renames_finishes_over_the_table_a_writer_created(
    bq_client: bigquery.Client,
    dataset: str,
    make_sink: Callable[..., BigQuerySink],
    migrate: Callable[..., MigrationResult],
    written: int,
) -> None:
    # Given a swap interrupted after renaming the table to its backup, before renaming the copy
    legacy = load_legacy_payments(bq_client, dataset, 500)
    with pytest.raises(WarehouseUnavailable):
        migrate(client=cast(bigquery.Client, LosesConnectionOnRename(bq_client)))
    assert TABLE not in table_names(bq_client, dataset)
    assert MIGRATING in table_names(bq_client, dataset)
    [backup] = backups(bq_client, dataset)
    assert steps_of(bq_client, dataset)["swap"].status == "running"

    # And a writer in another process that re-created the missing table (and maybe merged a
    # newer version of a payment into it) while the swap's permits had lapsed
    writer = make_sink()
    writer.ensure_tables([SQUARE_PAYMENTS])
    if written:
        newer = payment_row(3, amount="3.33", synced_at=datetime.now(UTC), updated_minutes=30)
        writer.write(SQUARE_PAYMENTS, [newer], batch_id="between-the-renames")
    assert figures(bq_client, dataset, TABLE)["rows"] == written

    # When the message is retried
    result = migrate()

    # Then that table gave way to the copy, its rows merged into it, under the same backup name
    assert result.outcome == "succeeded"
    assert result.steps_run == ("swap", "done")
    assert backups(bq_client, dataset) == [backup]
    assert steps_of(bq_client, dataset)["swap"].details["interloper_rows"] == written
    table = bq_client.get_table(ref(dataset, TABLE))
    assert table.time_partitioning is not None
    assert table.clustering_fields == ["customer_id", "status"]
    assert figures(bq_client, dataset, TABLE)["rows"] == legacy.rows
    amount = query_rows(bq_client, f"SELECT amount FROM `{ref(dataset, TABLE)}` WHERE id = 'pay-000003'")
    original = query_rows(bq_client, f"SELECT amount FROM `{ref(dataset, backup)}` WHERE id = 'pay-000003'")
    expected = Decimal("3.33") if written else Decimal(str(original[0]["amount"])).quantize(Decimal("0.01"))
    assert amount == [{"amount": expected}]
    assert figures(bq_client, dataset, backup) == expected_figures(legacy)


def test_a_required_column_missing_from_the_source_is_refused_in_the_plan(
    bq_client: bigquery.Client, dataset: str, migrate: Callable[..., MigrationResult]
) -> None:
    # Given a legacy table without updated_at, which the spec requires
    load_legacy_payments(bq_client, dataset, 10)
    bq_client.query(f"ALTER TABLE `{ref(dataset, TABLE)}` DROP COLUMN updated_at").result()

    # When it is migrated, then the plan refuses it, saying why, and records the failure
    with pytest.raises(MigrationFailed, match="updated_at: REQUIRED in the spec but missing"):
        migrate()
    plan = steps_of(bq_client, dataset)["plan"]
    assert plan.status == "failed"
    assert "updated_at" in plan.details["error"]
    assert table_names(bq_client, dataset) == {TABLE, "_possync_migrations"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"table": "square_refunds"}, "unknown table 'square_refunds'"),
        ({"table": "_possync_migrations", "partition_field": "updated_at"}, "unknown table"),
        ({"partition_field": "status"}, "partition by a TIMESTAMP or DATE column"),
        ({"partition_field": "refunded_at"}, "no column 'refunded_at' to partition by"),
        ({"cluster": ("customer_id", "nope")}, "no column 'nope' to cluster by"),
        ({"table": "square_customers", "cluster": ("group_ids",)}, "cannot be clustered by"),
        (
            {"table": "square_items", "partition_field": "updated_at", "cluster": ("item_id",)},
            "square_items does not exist",
        ),
        ({"partition_field": "created at"}, "invalid BigQuery column name"),
    ],
)
def test_invalid_requests_are_refused_before_any_work(
    bq_client: bigquery.Client,
    dataset: str,
    migrate: Callable[..., MigrationResult],
    options: dict[str, Any],
    message: str,
) -> None:
    # Given a dataset with a legacy payments table
    load_legacy_payments(bq_client, dataset, 10)

    # When an invalid migration is asked, then it is refused for good with a clear message
    with pytest.raises(InvalidMigration, match=re.escape(message)) as raised:
        migrate(request=migration_request(**options))
    assert isinstance(raised.value, PermanentError)

    # And nothing was done or recorded
    assert list_migrations(bq_client, project=TEST_PROJECT, dataset=dataset) == []
    assert table_names(bq_client, dataset) == {TABLE}


def test_more_than_four_cluster_columns_or_a_foreign_id_are_refused(
    bq_client: bigquery.Client, dataset: str, migrate: Callable[..., MigrationResult]
) -> None:
    # Given a request the payload model would refuse (5 clustering columns), built around it
    cluster = ("customer_id", "status", "location_id", "currency", "source_type")
    with pytest.raises(ValueError, match="at most 4"):
        migration_request(cluster=cluster)
    base = migration_request(cluster=cluster[:4])
    five = base.model_copy(
        update={"cluster": cluster, "migration_id": migration_id_for(TABLE, "created_at", "DAY", cluster)}
    )

    # When either reaches the worker, then each is refused before BigQuery is asked anything
    with pytest.raises(InvalidMigration, match="at most 4 columns, not 5"):
        migrate(request=five)
    with pytest.raises(InvalidMigration, match="does not name its layout"):
        migrate(request=base.model_copy(update={"migration_id": "square_payments:something-else"}))
    assert list_migrations(bq_client, project=TEST_PROJECT, dataset=dataset) == []


def test_migration_ids_are_readable_deterministic_and_bounded() -> None:
    assert MIGRATION_ID == "square_payments:created_at:DAY:customer_id,status"
    assert migration_id_for("notion_pages", "created_time", "month", ()) == "notion_pages:created_time:MONTH"
    long = migration_id_for("t" * 300, "created_at", "DAY", ("a",))
    assert len(long) == 256
    assert long == migration_id_for("t" * 300, "created_at", "DAY", ("a",))
    assert long != migration_id_for("t" * 300, "created_at", "DAY", ("b",))


def test_layouts_can_follow_one_another_each_swap_keeping_its_own_backup(
    bq_client: bigquery.Client, dataset: str, migrate: Callable[..., MigrationResult]
) -> None:
    # Given a legacy table migrated to hourly partitions without clustering
    legacy = load_legacy_payments(bq_client, dataset, 200)
    hourly = migration_request(granularity="HOUR", cluster=())
    assert hourly.migration_id == "square_payments:created_at:HOUR"
    first = migrate(request=hourly)
    assert first.outcome == "succeeded"
    table = bq_client.get_table(ref(dataset, TABLE))
    assert table.time_partitioning is not None
    assert (table.time_partitioning.type_, table.time_partitioning.field) == ("HOUR", "created_at")
    assert not table.clustering_fields

    # When it is migrated to the daily, clustered layout, and back to hourly, within one second
    def clock() -> datetime:
        return datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    daily = migrate(now=clock)
    back = migrate(request=hourly, now=clock)

    # Then the hourly migration, done before, ran again since the layout had changed; each swap
    # kept its own backup, and the rows never changed
    assert (daily.outcome, back.outcome) == ("succeeded", "succeeded")
    assert back.steps_run == ("plan", "copy", "verify", "swap", "done")
    assert daily.backup_table == f"{TABLE}__backup_20260102030405"
    assert back.backup_table == f"{TABLE}__backup_20260102030405_2"
    assert first.backup_table is not None
    assert {first.backup_table, daily.backup_table, back.backup_table} <= table_names(bq_client, dataset)
    table = bq_client.get_table(ref(dataset, TABLE))
    assert table.time_partitioning is not None
    assert table.time_partitioning.type_ == "HOUR"
    assert not table.clustering_fields
    assert figures(bq_client, dataset, TABLE) == expected_figures(legacy)
    assert figures(bq_client, dataset, back.backup_table) == expected_figures(legacy)


@pytest.mark.parametrize(
    ("field_type", "granularity", "expression"),
    [
        ("TIMESTAMP", "DAY", "DATE(`f`)"),
        ("TIMESTAMP", "HOUR", "TIMESTAMP_TRUNC(`f`, HOUR)"),
        ("TIMESTAMP", "MONTH", "TIMESTAMP_TRUNC(`f`, MONTH)"),
        ("DATE", "DAY", "`f`"),
        ("DATE", "YEAR", "DATE_TRUNC(`f`, YEAR)"),
    ],
)
def test_partition_expressions_follow_the_column_type(
    field_type: str, granularity: Any, expression: str
) -> None:
    assert partition_expression("f", field_type, granularity) == expression


def test_a_date_column_cannot_be_partitioned_by_hour() -> None:
    with pytest.raises(ValueError, match="HOUR"):
        partition_expression("f", "DATE", "HOUR")


def test_the_copy_casts_only_where_the_cast_is_exact() -> None:
    # Given a source with FLOAT money, an INT64 money column, a missing nullable column, an extra one
    source = [
        SourceColumn(column.name, column.type, "NULLABLE")
        for column in SQUARE_PAYMENTS.columns
        if column.name not in ("tip_amount", "receipt_url")
    ]
    source = [
        SourceColumn(c.name, "FLOAT64", c.mode) if c.name in ("amount", "total_amount") else c for c in source
    ]
    source += [SourceColumn("tip_amount", "INT64"), SourceColumn("buyer_email", "STRING")]

    # When the copy is planned
    plan = plan_copy(SQUARE_PAYMENTS, source)

    # Then FLOAT money is rounded to cents, INT64 widened, the missing column NULL, the extra left out
    assert plan.expression("amount") == "ROUND(CAST(`amount` AS NUMERIC), 2)"
    assert plan.expression("tip_amount") == "CAST(`tip_amount` AS NUMERIC)"
    assert plan.expression("receipt_url") == "CAST(NULL AS STRING)"
    assert plan.expression("refunded_amount") == "`refunded_amount`"
    assert plan.rounded == ("amount", "total_amount")
    assert (plan.missing, plan.dropped) == (("receipt_url",), ("buyer_email",))

    # And a cast that could change a value is refused, naming every column at fault
    lossy = [SourceColumn(c.name, "FLOAT64" if c.name == "id" else c.type, c.mode) for c in source]
    lossy = [c for c in lossy if c.name != "created_at"]
    with pytest.raises(CopyRefused, match=r"id: no exact cast from FLOAT64 to STRING; created_at: REQUIRED"):
        plan_copy(SQUARE_PAYMENTS, lossy)
