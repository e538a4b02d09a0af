"""Schema evolution in the BigQuery sink, against the emulator: a table only ever widens during syncs.

Columns new in ``schemas/tables.py`` are added before the next load, REQUIRED columns the spec has
NULLABLE are relaxed, and a column the code does not know or of another type is refused with a
message that says what to do, never dropped or retyped. A legacy layout keeps loading, with a warning.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.api_core import exceptions as google_exceptions
from google.cloud import bigquery
from structlog.testing import capture_logs

from schemas.square import CustomerRow
from schemas.tables import LIGHTSPEED_TRANSACTIONS, SQUARE_CUSTOMERS, SQUARE_PAYMENTS, TableSpec
from tests.conftest import TEST_PROJECT
from workers.errors import PermanentError, WarehouseRejected
from workers.sinks.bigquery import BigQuerySink, query_rows
from workers.sinks.bigquery_schema import compare_schema, refusal_message, spec_layout

CREATED = datetime(2025, 3, 1, tzinfo=UTC)
SYNCED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def payment(index: int, *, status: str | None = "COMPLETED") -> dict[str, Any]:
    """A ``square_payments`` row as the engine hands it over (JSON-ready)."""
    created = CREATED + timedelta(days=index % 5, minutes=index)
    return {
        "id": f"pay-{index:03d}",
        "created_at": created.isoformat(),
        "updated_at": created.isoformat(),
        "status": status,
        "amount": "19.99",
        "tip_amount": "0",
        "total_amount": "19.99",
        "refunded_amount": "0",
        "currency": "USD",
        "customer_id": f"cust-{index % 3}",
        "location_id": "LOC1",
        "order_id": None,
        "source_type": "CARD",
        "card_brand": "VISA",
        "receipt_url": None,
        "_synced_at": SYNCED_AT.isoformat(),
        "_message_id": "msg-1",
    }


def customer(index: int, *, groups: Sequence[str] = ("GRP1", "GRP2")) -> dict[str, Any]:
    """A ``square_customers`` row as the engine hands it over (JSON-ready)."""
    return CustomerRow(
        id=f"cust-{index}",
        created_at=CREATED,
        updated_at=CREATED + timedelta(days=index),
        version=index,
        creation_source="THIRD_PARTY",
        reference_id=f"ref-{index}",
        group_ids=list(groups),
        synced_at=SYNCED_AT,
        message_id=f"msg-{index}",
    ).model_dump(mode="json", by_alias=True)


def spec_fields(
    spec: TableSpec,
    *,
    drop: Sequence[str] = (),
    replace: dict[str, bigquery.SchemaField] | None = None,
    extra: Sequence[bigquery.SchemaField] = (),
) -> list[bigquery.SchemaField]:
    """``spec``'s schema without ``drop``, with ``replace``d fields, then ``extra`` at the end."""
    replace = replace or {}
    fields = [
        replace.get(column.name, bigquery.SchemaField(column.name, column.type, mode=column.mode))
        for column in spec.columns
        if column.name not in drop
    ]
    return [*fields, *extra]


def create_table(
    client: bigquery.Client,
    dataset: str,
    spec: TableSpec,
    fields: Sequence[bigquery.SchemaField],
    *,
    with_layout: bool = True,
) -> str:
    """Create ``spec``'s table by hand (as an older possync or an operator would), return its id."""
    client.create_dataset(f"{TEST_PROJECT}.{dataset}", exists_ok=True)
    table = bigquery.Table(f"{TEST_PROJECT}.{dataset}.{spec.name}", schema=list(fields))
    if with_layout and spec.partition_field is not None:
        table.time_partitioning = bigquery.TimePartitioning(
            type_=spec.partition_granularity, field=spec.partition_field
        )
    if with_layout and spec.clustering:
        table.clustering_fields = list(spec.clustering)
    client.create_table(table)
    return str(table.reference)


def load_rows(client: bigquery.Client, table: str, rows: Sequence[dict[str, Any]]) -> None:
    """Load ``rows`` into ``table`` with its own schema, as an older writer would have."""
    config = bigquery.LoadJobConfig(schema=client.get_table(table).schema)
    client.load_table_from_json(list(rows), table, job_config=config).result(timeout=60)


def columns_of(client: bigquery.Client, table: str) -> dict[str, tuple[str, str]]:
    """``name -> (type, mode)`` of the table as BigQuery reports it."""
    return {field.name: (field.field_type, field.mode) for field in client.get_table(table).schema}


def rows_of(client: bigquery.Client, table: str, key: str) -> list[dict[str, Any]]:
    return query_rows(client, f"SELECT * FROM `{table}` ORDER BY `{key}`")


def events(logs: Sequence[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


def test_columns_new_in_the_spec_are_added_before_the_load_and_rows_land(
    make_sink: Callable[..., BigQuerySink], bq_client: bigquery.Client, dataset: str
) -> None:
    # Given a customers table made before three of its spec's columns existed (a NULLABLE, a
    # REPEATED and a REQUIRED metadata one), holding a row written then
    table = create_table(
        bq_client,
        dataset,
        SQUARE_CUSTOMERS,
        spec_fields(SQUARE_CUSTOMERS, drop=("reference_id", "group_ids", "_synced_at")),
    )
    old = {key: value for key, value in customer(1).items() if key not in ("reference_id", "group_ids")}
    old.pop("_synced_at")
    load_rows(bq_client, table, [old])

    # When the sink writes full rows
    sink = make_sink()
    with capture_logs() as logs:
        result = sink.write(SQUARE_CUSTOMERS, [customer(2), customer(3)], batch_id="after-upgrade")

    # Then the columns were added (the REQUIRED one as NULLABLE, which BigQuery insists on), each
    # logged, and the new rows landed in full beside the old one
    columns = columns_of(bq_client, table)
    assert columns["reference_id"] == ("STRING", "NULLABLE")
    assert columns["group_ids"] == ("STRING", "REPEATED")
    assert columns["_synced_at"] == ("TIMESTAMP", "NULLABLE")
    assert list(columns) == [
        *(
            name
            for name in SQUARE_CUSTOMERS.column_names
            if name not in ("reference_id", "group_ids", "_synced_at")
        ),
        "reference_id",
        "group_ids",
        "_synced_at",
    ]
    added = {entry["column"]: entry for entry in events(logs, "bigquery_column_added")}
    assert set(added) == {"reference_id", "group_ids", "_synced_at"}
    assert (added["_synced_at"]["mode"], added["_synced_at"]["spec_mode"]) == ("NULLABLE", "REQUIRED")
    assert (added["group_ids"]["mode"], added["group_ids"]["spec_mode"]) == ("REPEATED", "REPEATED")
    assert result.rows_inserted == 2
    stored = {row["id"]: row for row in rows_of(bq_client, table, "id")}
    assert stored["cust-1"]["reference_id"] is None
    assert stored["cust-1"]["group_ids"] == []
    assert stored["cust-1"]["_synced_at"] is None
    assert stored["cust-3"]["reference_id"] == "ref-3"
    assert stored["cust-3"]["group_ids"] == ["GRP1", "GRP2"]
    assert stored["cust-3"]["_synced_at"] == SYNCED_AT

    # And a new process (a new sink) finds nothing to add: the table is not touched again
    etag = bq_client.get_table(table).etag
    with capture_logs() as later:
        make_sink().write(SQUARE_CUSTOMERS, [customer(4)], batch_id="next-process")
    assert events(later, "bigquery_column_added") == []
    assert events(later, "bigquery_column_relaxed") == []
    assert bq_client.get_table(table).etag == etag
    assert len(rows_of(bq_client, table, "id")) == 4


def test_a_column_the_code_does_not_know_is_refused_and_nothing_is_written(
    make_sink: Callable[..., BigQuerySink], bq_client: bigquery.Client, dataset: str
) -> None:
    # Given a payments table with a column the spec does not have (and lacking one it has), holding
    # one row
    table = create_table(
        bq_client,
        dataset,
        SQUARE_PAYMENTS,
        spec_fields(
            SQUARE_PAYMENTS, drop=("receipt_url",), extra=[bigquery.SchemaField("legacy_x", "STRING")]
        ),
    )
    seed = {key: value for key, value in payment(0).items() if key != "receipt_url"}
    load_rows(bq_client, table, [{**seed, "legacy_x": "keep me"}])
    before_rows = rows_of(bq_client, table, "id")
    before_etag = bq_client.get_table(table).etag

    # When the sink writes a batch
    sink = make_sink()
    with pytest.raises(WarehouseRejected) as raised:
        sink.write(SQUARE_PAYMENTS, [payment(1), payment(2)], batch_id="refused")

    # Then it is refused permanently, naming the table and the column and saying what to do
    message = str(raised.value)
    assert isinstance(raised.value, PermanentError)
    assert "square_payments has columns the code does not know: legacy_x" in message
    assert "never drops columns" in message
    assert "schemas/tables.py" in message
    # And nothing changed: no row written, the column kept, the missing one not added either
    assert rows_of(bq_client, table, "id") == before_rows
    assert bq_client.get_table(table).etag == before_etag
    assert "legacy_x" in columns_of(bq_client, table)
    assert "receipt_url" not in columns_of(bq_client, table)

    # And once an operator drops the column by hand, the same sink (same process) writes again
    bq_client.query(f"ALTER TABLE `{table}` DROP COLUMN legacy_x").result(timeout=60)
    result = sink.write(SQUARE_PAYMENTS, [payment(1), payment(2)], batch_id="refused")
    assert result.rows_inserted == 2
    assert columns_of(bq_client, table)["receipt_url"] == ("STRING", "NULLABLE")


@pytest.mark.parametrize(
    ("spec", "column", "table_field", "table_type", "spec_type"),
    [
        (SQUARE_PAYMENTS, "amount", bigquery.SchemaField("amount", "FLOAT64"), "FLOAT64", "NUMERIC"),
        (
            SQUARE_CUSTOMERS,
            "group_ids",
            bigquery.SchemaField("group_ids", "STRING"),
            "STRING",
            "ARRAY<STRING>",
        ),
    ],
    ids=["float-vs-numeric", "scalar-vs-repeated"],
)
def test_a_retyped_column_is_refused_and_left_to_a_migration(
    make_sink: Callable[..., BigQuerySink],
    bq_client: bigquery.Client,
    dataset: str,
    spec: TableSpec,
    column: str,
    table_field: bigquery.SchemaField,
    table_type: str,
    spec_type: str,
) -> None:
    # Given a table whose column has another type than the spec's
    table = create_table(bq_client, dataset, spec, spec_fields(spec, replace={column: table_field}))
    before = columns_of(bq_client, table)
    rows = [payment(1)] if spec is SQUARE_PAYMENTS else [customer(1)]

    # When the sink writes a batch
    with pytest.raises(WarehouseRejected) as raised:
        make_sink().write(spec, rows, batch_id="retyped")

    # Then it is refused, naming the column and both types, and pointing at the migration
    message = str(raised.value)
    assert f"{column} is {table_type} in the table but {spec_type} in schemas/tables.py" in message
    assert f"possync migrate partition {spec.name}" in message
    assert "retyping is a migration's job" in message
    # And the column kept its type, with nothing written
    assert columns_of(bq_client, table) == before
    assert rows_of(bq_client, table, spec.key[0]) == []


def test_a_required_column_the_spec_has_nullable_is_relaxed(
    make_sink: Callable[..., BigQuerySink], bq_client: bigquery.Client, dataset: str
) -> None:
    # Given a payments table whose status column is REQUIRED (the spec has it NULLABLE)
    table = create_table(
        bq_client,
        dataset,
        SQUARE_PAYMENTS,
        spec_fields(
            SQUARE_PAYMENTS, replace={"status": bigquery.SchemaField("status", "STRING", mode="REQUIRED")}
        ),
    )

    # When the sink writes a payment without a status
    with capture_logs() as logs:
        result = make_sink().write(SQUARE_PAYMENTS, [payment(1, status=None)], batch_id="relax")

    # Then the column was relaxed to NULLABLE and logged, and the row landed
    assert columns_of(bq_client, table)["status"] == ("STRING", "NULLABLE")
    assert [entry["column"] for entry in events(logs, "bigquery_column_relaxed")] == ["status"]
    assert events(logs, "bigquery_column_added") == []
    assert result.rows_inserted == 1
    assert rows_of(bq_client, table, "id")[0]["status"] is None


def test_a_ctas_table_with_nullable_required_columns_is_accepted_unchanged(
    make_sink: Callable[..., BigQuerySink], bq_client: bigquery.Client, dataset: str
) -> None:
    # Given a payments table made by CTAS, as a migration makes it: the spec's layout, but every
    # column NULLABLE, including the spec's REQUIRED ones
    source = create_table(
        bq_client,
        dataset,
        SQUARE_PAYMENTS.model_copy(update={"name": "payments_source"}),
        spec_fields(SQUARE_PAYMENTS),
    )
    table = f"{TEST_PROJECT}.{dataset}.{SQUARE_PAYMENTS.name}"
    bq_client.query(
        f"CREATE TABLE `{table}` PARTITION BY DATE(created_at) CLUSTER BY customer_id, status "
        f"AS SELECT * FROM `{source}`"
    ).result(timeout=60)
    assert columns_of(bq_client, table)["id"] == ("STRING", "NULLABLE")
    etag = bq_client.get_table(table).etag

    # When the sink writes a batch
    with capture_logs() as logs:
        result = make_sink().write(SQUARE_PAYMENTS, [payment(1), payment(2)], batch_id="ctas")

    # Then the table is accepted as it is: nothing added, relaxed or warned about, and rows land
    assert result.rows_inserted == 2
    assert bq_client.get_table(table).etag == etag
    assert columns_of(bq_client, table)["id"] == ("STRING", "NULLABLE")
    schema_events = {"bigquery_column_added", "bigquery_column_relaxed", "bigquery_table_layout_differs"}
    assert [entry for entry in logs if entry["event"] in schema_events] == []


def test_a_legacy_unpartitioned_table_keeps_loading_with_a_warning_once_per_process(
    make_sink: Callable[..., BigQuerySink], bq_client: bigquery.Client, dataset: str
) -> None:
    # Given a payments table with the right columns but neither partitioned nor clustered
    table = create_table(bq_client, dataset, SQUARE_PAYMENTS, spec_fields(SQUARE_PAYMENTS), with_layout=False)

    # When one sink writes two batches
    sink = make_sink()
    with capture_logs() as logs:
        first = sink.write(SQUARE_PAYMENTS, [payment(1), payment(2)], batch_id="legacy-1")
        second = sink.write(SQUARE_PAYMENTS, [payment(3)], batch_id="legacy-2")

    # Then both land, and the layout warning was logged once, with what is expected and what is there
    assert (first.rows_inserted, second.rows_inserted) == (2, 1)
    assert len(rows_of(bq_client, table, "id")) == 3
    warnings = events(logs, "bigquery_table_layout_differs")
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert warnings[0]["table"] == "square_payments"
    assert warnings[0]["expected"] == {
        "partition_field": "created_at",
        "partition_granularity": "DAY",
        "clustering": ["customer_id", "status"],
    }
    assert warnings[0]["actual"] == {"partition_field": None, "partition_granularity": None, "clustering": []}
    # And the table was left unpartitioned: that is a migration's job
    assert bq_client.get_table(table).time_partitioning is None


def test_a_concurrent_schema_change_is_detected_by_etag_and_planned_again(
    make_sink: Callable[..., BigQuerySink],
    bq_client: bigquery.Client,
    dataset: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a customers table lacking two columns, and another process (an older release, mid
    # rolling deploy) that adds one of them between this sink's read of the table and its update
    table = create_table(
        bq_client,
        dataset,
        SQUARE_CUSTOMERS,
        spec_fields(SQUARE_CUSTOMERS, drop=("reference_id", "group_ids")),
    )
    outcomes: list[str] = []
    update_table = bq_client.update_table

    def racing_update(stale: bigquery.Table, fields: Sequence[str], **kwargs: Any) -> bigquery.Table:
        if not outcomes:
            outcomes.append("other process adds reference_id")
            fresh = bq_client.get_table(table)
            fresh.schema = [*fresh.schema, bigquery.SchemaField("reference_id", "STRING")]
            update_table(fresh, ["schema"])
        try:
            updated: bigquery.Table = update_table(stale, fields, **kwargs)
        except google_exceptions.PreconditionFailed:
            outcomes.append("precondition failed")
            raise
        outcomes.append("updated")
        return updated

    monkeypatch.setattr(bq_client, "update_table", racing_update)

    # When this sink ensures the table
    sink = make_sink()
    with capture_logs() as logs:
        sink.ensure_tables([SQUARE_CUSTOMERS])

    # Then its stale update was refused on the etag; it re-read the table and added only what was
    # still missing, so each column exists once
    assert outcomes == ["other process adds reference_id", "precondition failed", "updated"]
    assert [entry["column"] for entry in events(logs, "bigquery_column_added")] == ["group_ids"]
    names = [field.name for field in bq_client.get_table(table).schema]
    assert sorted(names) == sorted(SQUARE_CUSTOMERS.column_names)
    assert sink.write(SQUARE_CUSTOMERS, [customer(1)], batch_id="after-race").rows_inserted == 1


def test_names_match_case_insensitively_and_legacy_type_names_are_understood() -> None:
    # Given Lightspeed's fields (camelCase in the spec) named in lower case, with the legacy type
    # names the API may answer with (INTEGER, BOOLEAN)
    legacy = {"INT64": "INTEGER", "BOOL": "BOOLEAN"}
    fields = [
        bigquery.SchemaField(column.name.lower(), legacy.get(column.type, column.type), mode=column.mode)
        for column in LIGHTSPEED_TRANSACTIONS.columns
    ]
    assert {field.field_type for field in fields} >= {"INTEGER", "BOOLEAN"}

    # When they are compared with the spec
    plan = compare_schema(LIGHTSPEED_TRANSACTIONS, fields, spec_layout(LIGHTSPEED_TRANSACTIONS))

    # Then they fit as they are
    assert (plan.add, plan.relax, plan.unknown, plan.retyped) == ((), (), (), ())
    assert not plan.layout_differs
    assert refusal_message(plan) is None
