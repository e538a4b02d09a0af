"""The BigQuery sink against the real emulator, proving what the emulator would forgive.

The emulator accepts things real BigQuery punishes (unbounded MERGE scans, more than 2 concurrent
DML per table, duplicate job runs), so these tests check the sink's own discipline: job ids,
staging expirations, partition predicates, the semaphore, newer-version-wins and exact types.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis
from google.api_core import exceptions as google_exceptions
from google.cloud import bigquery
from prometheus_client import REGISTRY

from schemas.settings import Settings
from schemas.square import CustomerRow
from schemas.tables import REJECTS, SQUARE_CUSTOMERS, SQUARE_PAYMENTS, Column, TableSpec
from tests.conftest import TEST_PROJECT
from workers.errors import WarehouseRejected, WarehouseUnavailable
from workers.semaphore import TableSemaphore
from workers.sinks.bigquery import BigQuerySink, make_bigquery_client, query_rows, translate_error
from workers.sinks.bigquery_sql import InvalidIdentifier, check_identifier

SYNCED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
PARTITION_PREDICATE = "T.`created_at` BETWEEN @partition_min AND @partition_max"


def payment(
    index: int, *, updated_minutes: int = 0, amount: str = "19.99", synced_at: datetime = SYNCED_AT
) -> dict[str, Any]:
    """A ``square_payments`` row as the engine hands it over (JSON-ready)."""
    created = datetime(2025, 3, 1, tzinfo=UTC) + timedelta(days=index % 40, minutes=index)
    return {
        "id": f"pay-{index:05d}",
        "created_at": created.isoformat(),
        "updated_at": (created + timedelta(minutes=updated_minutes)).isoformat(),
        "status": "COMPLETED",
        "amount": amount,
        "tip_amount": "0.29",
        "total_amount": str(Decimal(amount) + Decimal("0.29")),
        "refunded_amount": "0",
        "currency": "USD",
        "customer_id": f"cust-{index % 7}",
        "location_id": "LOC1",
        "order_id": None,
        "source_type": "CARD",
        "card_brand": "VISA",
        "receipt_url": None,
        "_synced_at": synced_at.isoformat(),
        "_message_id": "msg-1",
    }


class CountingSemaphore(TableSemaphore):
    """A real semaphore that records how many holders were inside ``permit`` at once."""

    def __init__(self, client: redis.Redis, *, permits: int) -> None:
        super().__init__(client, permits=permits)
        self.lock = threading.Lock()
        self.inside = 0
        self.max_inside = 0
        self.bound_reached = threading.Event()

    @contextlib.contextmanager
    def _counted(self, table: str, timeout_seconds: float | None) -> Iterator[None]:
        with super().permit(table, timeout_seconds=timeout_seconds):
            with self.lock:
                self.inside += 1
                self.max_inside = max(self.max_inside, self.inside)
                if self.inside == self.permits:
                    self.bound_reached.set()
            try:
                # Hold until the bound has been reached once, so the test shows it is reached and kept.
                self.bound_reached.wait(timeout=30)
                yield
            finally:
                with self.lock:
                    self.inside -= 1

    def permit(
        self, table: str, *, timeout_seconds: float | None = None
    ) -> contextlib.AbstractContextManager[None]:
        return self._counted(table, timeout_seconds)


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def snapshot(client: bigquery.Client, dataset: str, table: str, key: str) -> list[dict[str, Any]]:
    """Every row of a table, ordered by key."""
    return query_rows(client, f"SELECT * FROM `{TEST_PROJECT}.{dataset}.{table}` ORDER BY {key}")


def jobs_for(client: bigquery.Client, dataset: str, prefix: str) -> list[Any]:
    """The project's jobs whose id starts with ``prefix`` and that touch ``dataset``."""
    found = []
    for listed in client.list_jobs(all_users=True):
        if not listed.job_id.startswith(prefix):
            continue
        job = client.get_job(listed.job_id)
        text = job.query if isinstance(job, bigquery.QueryJob) else str(getattr(job, "destination", ""))
        if f"{dataset}" in text:
            found.append(job)
    return found


def test_tables_are_created_with_partitioning_clustering_and_modes(
    make_sink: Callable[..., BigQuerySink], bq_client: bigquery.Client, dataset: str
) -> None:
    # Given a sink on a dataset that does not exist yet
    sink = make_sink()

    # When the tables are ensured, twice
    sink.ensure_tables()
    sink.ensure_tables()

    # Then payments are DAY-partitioned on created_at and clustered by customer_id, status
    payments = bq_client.get_table(f"{TEST_PROJECT}.{dataset}.square_payments")
    assert payments.time_partitioning is not None
    assert payments.time_partitioning.type_ == "DAY"
    assert payments.time_partitioning.field == "created_at"
    assert payments.clustering_fields == ["customer_id", "status"]
    modes = {field.name: (field.field_type, field.mode) for field in payments.schema}
    assert modes["id"] == ("STRING", "REQUIRED")
    assert modes["amount"] == ("NUMERIC", "NULLABLE")
    assert modes["_synced_at"] == ("TIMESTAMP", "REQUIRED")
    # And customers carry a REPEATED group_ids, the small tables are not partitioned
    customers = bq_client.get_table(f"{TEST_PROJECT}.{dataset}.square_customers")
    assert {field.name: field.mode for field in customers.schema}["group_ids"] == "REPEATED"
    assert customers.time_partitioning is None
    rejects = bq_client.get_table(f"{TEST_PROJECT}.{dataset}._possync_rejects")
    assert rejects.time_partitioning is not None
    assert rejects.time_partitioning.field == "rejected_at"


def test_a_redelivered_batch_reattaches_to_its_job_and_is_not_applied_twice(
    make_sink: Callable[..., BigQuerySink], bq_client: bigquery.Client, dataset: str
) -> None:
    # Given a batch written once
    sink = make_sink()
    rows = [payment(index) for index in range(50)]
    first = sink.write(SQUARE_PAYMENTS, rows, batch_id="payments:window-1")
    before = snapshot(bq_client, dataset, "square_payments", "id")

    # When the same batch is delivered again, rebuilt with a later _synced_at
    again = [payment(index, synced_at=SYNCED_AT + timedelta(hours=1)) for index in range(50)]
    second = sink.write(SQUARE_PAYMENTS, again, batch_id="payments:window-1")

    # Then it re-attached to the MERGE job that already ran, and nothing changed
    assert first.attached is False
    assert first.load_attached is False
    assert first.rows_inserted == 50
    assert second.attached is True
    assert second.merge_job_id == first.merge_job_id
    assert snapshot(bq_client, dataset, "square_payments", "id") == before
    merges = jobs_for(bq_client, dataset, "possync_merge_square_payments_")
    assert [job.job_id for job in merges] == [first.merge_job_id]


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_written_rows_and_jobs_are_counted_once_per_batch(make_sink: Callable[..., BigQuerySink]) -> None:
    # Given a sink that reports written rows, and the job counters before a batch of 40 payments
    written: list[tuple[str, int]] = []
    sink = make_sink(on_written=lambda table, rows: written.append((table, rows)))
    rows = [payment(index) for index in range(40)]
    loads = _sample("possync_bigquery_job_duration_seconds_count", kind="load", table="square_payments")
    merges = _sample("possync_bigquery_job_duration_seconds_count", kind="merge", table="square_payments")
    merged_rows = _sample("possync_bigquery_rows_total", kind="merge", table="square_payments")

    # When it is written, then delivered again
    sink.write(SQUARE_PAYMENTS, rows, batch_id="payments:metrics")
    sink.write(SQUARE_PAYMENTS, rows, batch_id="payments:metrics")

    # Then its rows, its load and its merge were counted once: the redelivery found its MERGE done
    assert written == [("square_payments", 40)]
    assert _sample("possync_bigquery_job_duration_seconds_count", kind="load", table="square_payments") == (
        loads + 1
    )
    assert _sample("possync_bigquery_job_duration_seconds_count", kind="merge", table="square_payments") == (
        merges + 1
    )
    assert _sample("possync_bigquery_rows_total", kind="merge", table="square_payments") == merged_rows + 40


def test_a_batch_interrupted_before_its_merge_reattaches_to_its_load_job(
    make_sink: Callable[..., BigQuerySink],
    bq_client: bigquery.Client,
    dataset: str,
    redis_client: redis.Redis,
) -> None:
    # Given a worker whose MERGE cannot get a permit (a migration holds them all), so the write
    # fails after its load job ran
    semaphore = TableSemaphore(redis_client, permits=2)
    impatient = make_sink(semaphore=semaphore, timeout_seconds=3)
    rows = [payment(index) for index in range(20)]
    with semaphore.hold_all("square_payments"), pytest.raises(WarehouseUnavailable):
        impatient.write(SQUARE_PAYMENTS, rows, batch_id="payments:window-2")
    loads = jobs_for(bq_client, dataset, "possync_load_square_payments_")
    assert len(loads) == 1
    # And the staging table it left behind carries an expiration
    staging = [
        table for table in bq_client.list_tables(dataset) if table.table_id.startswith("_possync_staging_")
    ]
    assert len(staging) == 1
    expires = bq_client.get_table(staging[0].reference).expires
    assert expires is not None
    assert timedelta(minutes=55) < expires - datetime.now(UTC) <= timedelta(hours=1)

    # When the message is redelivered and the permit is free
    result = make_sink().write(SQUARE_PAYMENTS, rows, batch_id="payments:window-2")

    # Then the load job answered 409 and was re-attached (not run again), the MERGE ran once,
    # and the staging table was dropped
    assert result.load_job_id == loads[0].job_id
    assert result.load_attached is True
    assert len(jobs_for(bq_client, dataset, "possync_load_square_payments_")) == 1
    assert result.rows_inserted == 20
    assert [
        table.table_id for table in bq_client.list_tables(dataset) if table.table_id.startswith("_possync_")
    ] == []
    assert len(snapshot(bq_client, dataset, "square_payments", "id")) == 20


def test_every_merge_into_a_partitioned_table_carries_the_partition_predicate(
    make_sink: Callable[..., BigQuerySink], bq_client: bigquery.Client, dataset: str
) -> None:
    # Given several batches into partitioned tables (payments, rejects) and one unpartitioned
    sink = make_sink()
    sink.write(SQUARE_PAYMENTS, [payment(index) for index in range(10)], batch_id="a")
    sink.write(SQUARE_PAYMENTS, [payment(index, updated_minutes=5) for index in range(5, 30)], batch_id="b")
    reject = {
        "source": "square",
        "stream": "payments",
        "record_key": None,
        "reason": "amount_money missing",
        "raw": "{}",
        "message_id": "msg-1",
        "rejected_at": "2026-01-02T03:04:05+00:00",
    }
    sink.write(REJECTS, [reject], batch_id="rejects")

    # When every MERGE job that ran is read back from the API
    payment_merges = jobs_for(bq_client, dataset, "possync_merge_square_payments_")
    reject_merges = jobs_for(bq_client, dataset, "possync_merge__possync_rejects_")

    # Then each carries a predicate on the target's partition column bounded by the batch's range
    assert len(payment_merges) == 2
    for job in payment_merges:
        assert PARTITION_PREDICATE in job.query
        bounds = {param.name: param.value for param in job.query_parameters}
        assert set(bounds) == {"partition_min", "partition_max"}
        assert bounds["partition_min"] <= bounds["partition_max"]
    assert len(reject_merges) == 1
    assert "T.`rejected_at` BETWEEN @partition_min AND @partition_max" in reject_merges[0].query
    # And the bounds are exactly the batch's own created_at range
    first = next(job for job in payment_merges if job.dml_stats.inserted_row_count == 10)
    created = sorted(datetime.fromisoformat(payment(index)["created_at"]) for index in range(10))
    bounds = {param.name: param.value for param in first.query_parameters}
    assert (bounds["partition_min"], bounds["partition_max"]) == (created[0], created[-1])


def test_no_more_merges_than_permits_run_at_once(
    make_sink: Callable[..., BigQuerySink],
    bq_client: bigquery.Client,
    dataset: str,
    redis_client: redis.Redis,
) -> None:
    # Given a semaphore of 2 permits and 5 threads each writing its own batch to one table
    semaphore = CountingSemaphore(redis_client, permits=2)
    sink = make_sink(semaphore=semaphore)
    sink.ensure_tables([SQUARE_PAYMENTS])

    def write(batch: int) -> int | None:
        rows = [payment(batch * 100 + index) for index in range(20)]
        return sink.write(SQUARE_PAYMENTS, rows, batch_id=f"batch-{batch}").rows_inserted

    # When they all write at once
    with ThreadPoolExecutor(max_workers=5) as pool:
        inserted = list(pool.map(write, range(5)))

    # Then exactly 2 MERGEs were ever in flight together, and every batch landed
    assert semaphore.max_inside == 2
    assert inserted == [20] * 5
    assert len(snapshot(bq_client, dataset, "square_payments", "id")) == 100


def test_newer_version_wins_and_a_replay_is_byte_identical(
    make_sink: Callable[..., BigQuerySink], bq_client: bigquery.Client, dataset: str
) -> None:
    # Given payments written at a newer version
    sink = make_sink()
    newer = [payment(index, updated_minutes=10, amount="25.00") for index in range(10)]
    sink.write(SQUARE_PAYMENTS, newer, batch_id="newer")
    before = snapshot(bq_client, dataset, "square_payments", "id")

    # When an older version of the same payments arrives later (late webhook, overlapping window)
    older = [
        payment(index, updated_minutes=1, amount="1.00", synced_at=SYNCED_AT + timedelta(days=1))
        for index in range(10)
    ]
    stale = sink.write(SQUARE_PAYMENTS, older, batch_id="older")

    # Then nothing is overwritten
    assert stale.rows_updated == 0
    assert snapshot(bq_client, dataset, "square_payments", "id") == before

    # When the same versions are replayed under a new batch id with a new _synced_at
    replay = [
        payment(index, updated_minutes=10, amount="25.00", synced_at=SYNCED_AT + timedelta(days=2))
        for index in range(10)
    ]
    replayed = sink.write(SQUARE_PAYMENTS, replay, batch_id="replay")

    # Then the MERGE ran but every row is byte-identical, _synced_at included
    assert replayed.attached is False
    assert replayed.rows_affected == 0
    assert snapshot(bq_client, dataset, "square_payments", "id") == before

    # When a genuinely newer version arrives
    newest = [payment(index, updated_minutes=20, amount="30.00") for index in range(3)]
    updated = sink.write(SQUARE_PAYMENTS, newest, batch_id="newest")

    # Then exactly those rows change
    assert updated.rows_updated == 3
    amounts = {row["id"]: row["amount"] for row in snapshot(bq_client, dataset, "square_payments", "id")}
    assert [amounts[f"pay-{index:05d}"] for index in range(4)] == [Decimal("30.00")] * 3 + [Decimal("25.00")]


def test_duplicates_within_a_batch_keep_the_newest_version(
    make_sink: Callable[..., BigQuerySink], bq_client: bigquery.Client, dataset: str
) -> None:
    # Given a batch holding three versions of one payment (pages overlapped)
    rows = [
        payment(1, updated_minutes=minutes, amount=amount)
        for minutes, amount in ((1, "1.00"), (9, "9.00"), (5, "5.00"))
    ]

    # When it is written
    make_sink().write(SQUARE_PAYMENTS, rows, batch_id="dupes")

    # Then one row remains, at the newest version
    rows_after = snapshot(bq_client, dataset, "square_payments", "id")
    assert [(row["id"], row["amount"]) for row in rows_after] == [("pay-00001", Decimal("9.00"))]


def test_numeric_amounts_are_exact_to_the_cent(
    make_sink: Callable[..., BigQuerySink], bq_client: bigquery.Client, dataset: str
) -> None:
    # Given amounts that binary floating point cannot represent
    amounts = ["0.29", "19.99", "0.10", "0.20", "1234567.89"]
    rows = [payment(index, amount=amount) for index, amount in enumerate(amounts)]

    # When they are written and summed in the warehouse
    make_sink().write(SQUARE_PAYMENTS, rows, batch_id="cents")
    total = query_rows(
        bq_client,
        "SELECT SUM(amount) AS total, SUM(tip_amount) AS tips "
        f"FROM `{TEST_PROJECT}.{dataset}.square_payments`",
    )

    # Then the sums are exact decimals
    assert total == [{"total": Decimal("1234588.47"), "tips": Decimal("1.45")}]


def test_repeated_group_ids_round_trip(
    make_sink: Callable[..., BigQuerySink], bq_client: bigquery.Client, dataset: str
) -> None:
    # Given customers with several groups, and none, as the engine serialises them
    rows = [
        CustomerRow(
            id=f"cust-{index}",
            created_at=SYNCED_AT,
            updated_at=SYNCED_AT,
            version=1,
            creation_source="THIRD_PARTY",
            reference_id=None,
            group_ids=groups,
            synced_at=SYNCED_AT,
            message_id="msg-1",
        ).model_dump(mode="json", by_alias=True)
        for index, groups in enumerate([["gold", "vip"], [], ["gold"]])
    ]

    # When they are written and read back
    make_sink().write(SQUARE_CUSTOMERS, rows, batch_id="customers")
    back = snapshot(bq_client, dataset, "square_customers", "id")

    # Then the arrays come back whole and in order
    assert [row["group_ids"] for row in back] == [["gold", "vip"], [], ["gold"]]


def test_insert_only_tables_never_insert_a_row_twice(
    make_sink: Callable[..., BigQuerySink], bq_client: bigquery.Client, dataset: str
) -> None:
    # Given a reject whose key has a NULL part (no record key could be read)
    reject = {
        "source": "square",
        "stream": "payments",
        "record_key": None,
        "reason": "id missing",
        "raw": "{}",
        "message_id": "msg-7",
        "rejected_at": "2026-01-02T03:04:05+00:00",
    }
    sink = make_sink()

    # When it is written under two different batch ids (two MERGEs run)
    sink.write(REJECTS, [reject], batch_id="r1")
    second = sink.write(REJECTS, [dict(reject, reason="id missing (again)")], batch_id="r2")

    # Then the row exists once, untouched
    assert second.rows_affected == 0
    rows = snapshot(bq_client, dataset, "_possync_rejects", "source")
    assert [row["reason"] for row in rows] == ["id missing"]


@pytest.mark.parametrize(
    ("spec", "dataset_name"),
    [
        (SQUARE_PAYMENTS.model_copy(update={"name": "payments; DROP TABLE x"}), None),
        (
            SQUARE_PAYMENTS.model_copy(
                update={"columns": (*SQUARE_PAYMENTS.columns, Column(name="bad-name", type="STRING"))}
            ),
            None,
        ),
        (
            SQUARE_PAYMENTS.model_copy(
                update={"columns": (*SQUARE_PAYMENTS.columns, Column(name="_PARTITIONTIME", type="STRING"))}
            ),
            None,
        ),
        (
            SQUARE_PAYMENTS.model_copy(
                update={"columns": (*SQUARE_PAYMENTS.columns, Column(name="a`b", type="STRING"))}
            ),
            None,
        ),
        (SQUARE_PAYMENTS, "bad.dataset"),
    ],
    ids=["table-with-sql", "column-with-dash", "reserved-prefix", "column-with-backtick", "dataset-with-dot"],
)
def test_invalid_identifiers_are_refused_before_any_sql(
    make_sink: Callable[..., BigQuerySink],
    bq_client: bigquery.Client,
    dataset: str,
    spec: TableSpec,
    dataset_name: str | None,
) -> None:
    # Given a table spec or dataset name that breaks BigQuery's rules
    # When a sink is built and a batch written
    def build_and_write() -> None:
        sink = make_sink(dataset=dataset_name) if dataset_name else make_sink()
        sink.write(spec, [payment(1)], batch_id="x")

    with pytest.raises(InvalidIdentifier):
        build_and_write()

    # Then it was refused before anything reached BigQuery: not even the dataset exists
    with pytest.raises(google_exceptions.NotFound):
        bq_client.get_dataset(dataset)


def test_identifier_rules() -> None:
    # Given names at and past BigQuery's limits
    # When / Then each is accepted or refused
    assert check_identifier("column", "_synced_at") == "_synced_at"
    assert check_identifier("column", "a" * 300) == "a" * 300
    assert check_identifier("project", "possync-test") == "possync-test"
    assert check_identifier("project", "example.com:my-project") == "example.com:my-project"
    for kind, name in [
        ("column", "a" * 301),
        ("column", "1abc"),
        ("column", "_TABLE_suffix"),
        ("column", ""),
        ("table", "t" * 1025),
        ("dataset", "a-b"),
        ("project", "Upper-Case"),
        ("project", "short"),
    ]:
        with pytest.raises(InvalidIdentifier):
            check_identifier(kind, name)  # type: ignore[arg-type]


def test_rows_that_do_not_fit_the_schema_are_rejected(make_sink: Callable[..., BigQuerySink]) -> None:
    # Given a row with a column the table lacks, and one whose INT64 is not a number
    sink = make_sink()
    unknown = dict(payment(1), surprise="x")
    bad_version = CustomerRow(
        id="c",
        created_at=SYNCED_AT,
        updated_at=SYNCED_AT,
        version=1,
        creation_source=None,
        reference_id=None,
        group_ids=[],
        synced_at=SYNCED_AT,
    ).model_dump(mode="json", by_alias=True) | {"version": "not-a-number"}

    # When they are written
    # Then both are permanent rejections
    with pytest.raises(WarehouseRejected, match="surprise"):
        sink.write(SQUARE_PAYMENTS, [unknown], batch_id="unknown")
    with pytest.raises(WarehouseRejected) as caught:
        sink.write(SQUARE_CUSTOMERS, [bad_version], batch_id="bad-version")
    assert caught.value.system == "bigquery"


def test_an_unreachable_warehouse_is_retryable(redis_client: redis.Redis, unused_port: int) -> None:
    # Given a sink whose endpoint has nothing listening, with a short deadline
    settings = Settings(
        bigquery_project=TEST_PROJECT,
        bigquery_endpoint=f"http://127.0.0.1:{unused_port}",
        bigquery_timeout_seconds=2,
    )
    sink = BigQuerySink(
        make_bigquery_client(settings),
        project=TEST_PROJECT,
        dataset="nowhere",
        location="US",
        semaphore=TableSemaphore(redis_client, permits=2),
        timeout_seconds=2,
    )

    # When a batch is written
    # Then the failure is retryable, and says it was BigQuery
    with pytest.raises(WarehouseUnavailable) as caught:
        sink.write(SQUARE_PAYMENTS, [payment(1)], batch_id="x")
    assert caught.value.system == "bigquery"


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (google_exceptions.InternalServerError("boom"), True),
        (google_exceptions.ServiceUnavailable("later"), True),
        (google_exceptions.Forbidden("slow down", errors=[{"reason": "rateLimitExceeded"}]), True),
        (google_exceptions.Forbidden("no access", errors=[{"reason": "accessDenied"}]), False),
        (
            google_exceptions.BadRequest("Could not serialize access to table t due to concurrent update"),
            True,
        ),
        (google_exceptions.BadRequest("Failed to commit: Failed to commit DuckLake transaction."), True),
        (google_exceptions.BadRequest("Syntax error", errors=[{"reason": "invalidQuery"}]), False),
        (google_exceptions.NotFound("Not found: Table"), False),
        (TimeoutError("job still running"), True),
    ],
)
def test_google_errors_are_translated(exc: BaseException, retryable: bool) -> None:
    # Given an exception the client raised
    # When it is translated at the boundary
    error = translate_error(exc, action="merge", job_id="possync_merge_x_0")

    # Then it lands on the right branch, keeping the job id
    assert isinstance(error, WarehouseUnavailable if retryable else WarehouseRejected)
    assert error.request_id == "possync_merge_x_0"


def test_an_empty_batch_does_nothing(
    make_sink: Callable[..., BigQuerySink], bq_client: bigquery.Client, dataset: str
) -> None:
    # Given an empty batch
    rows: Sequence[dict[str, Any]] = []

    # When it is written
    result = make_sink().write(SQUARE_PAYMENTS, rows, batch_id="empty")

    # Then no job ran and no dataset was created
    assert (result.rows_in, result.load_job_id, result.merge_job_id) == (0, None, None)
    with pytest.raises(google_exceptions.NotFound):
        bq_client.get_dataset(dataset)


def test_the_emulator_client_gives_up_in_seconds_not_minutes(unused_port: int) -> None:
    # Given a client for an emulator endpoint where nothing listens, with a 2 s deadline
    settings = Settings(
        bigquery_project=TEST_PROJECT,
        bigquery_endpoint=f"http://127.0.0.1:{unused_port}",
        bigquery_timeout_seconds=2,
    )
    client = make_bigquery_client(settings)
    started = time.monotonic()

    # When an API call is made with the client's default retry
    with pytest.raises(google_exceptions.RetryError):
        list(client.list_datasets())

    # Then it fails within seconds (the library default would retry for 600 s)
    assert time.monotonic() - started < 15
