"""Deletions in the warehouse: a deletion snapshot wins over a stored row not yet marked, and a bare
deletion marks the stored row once; replays change nothing. Against the BigQuery emulator."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud import bigquery

from schemas.square import CustomerRow
from schemas.tables import SQUARE_CUSTOMERS
from tests.conftest import TEST_PROJECT
from workers.sinks.bigquery import BigQuerySink, query_rows

CREATED = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
DELETED = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)


def customer(
    customer_id: str, *, version: int, deleted_at: datetime | None = None, reference: str = "ref"
) -> dict[str, Any]:
    return CustomerRow(
        id=customer_id,
        created_at=CREATED,
        updated_at=CREATED + timedelta(days=version),
        version=version,
        creation_source="THIRD_PARTY",
        reference_id=reference,
        group_ids=[],
        is_deleted=deleted_at is not None,
        deleted_at=deleted_at,
        synced_at=CREATED + timedelta(days=version),
        message_id=f"msg-{customer_id}-{version}",
    ).model_dump(mode="json", by_alias=True)


def rows(client: bigquery.Client, dataset: str) -> dict[str, dict[str, Any]]:
    found = query_rows(client, f"SELECT * FROM `{TEST_PROJECT}.{dataset}.square_customers`")
    return {row["id"]: row for row in found}


def test_a_deletion_snapshot_with_the_stored_version_still_marks_the_row(
    make_sink: Callable[..., BigQuerySink], bq_client: bigquery.Client, dataset: str
) -> None:
    # Given a customer stored at version 3, and another stored already deleted
    sink = make_sink()
    sink.write(
        SQUARE_CUSTOMERS,
        [customer("c1", version=3), customer("c2", version=2, deleted_at=DELETED)],
        batch_id="sync",
    )

    # When deletion snapshots arrive with the versions already stored (Square's customer.deleted
    # carries the customer as it was), one of them for a customer never synced
    later = DELETED + timedelta(hours=1)
    deletions = [
        customer("c1", version=3, deleted_at=DELETED),
        customer("c2", version=2, deleted_at=later, reference="changed"),
        customer("c3", version=1, deleted_at=DELETED),
    ]
    sink.write(SQUARE_CUSTOMERS, deletions, batch_id="deletions")
    after = rows(bq_client, dataset)

    # Then c1 is marked, c2 keeps its first deletion untouched, c3 is kept as a deleted row
    assert after["c1"]["is_deleted"] is True
    assert after["c1"]["deleted_at"] == DELETED
    assert after["c2"]["deleted_at"] == DELETED
    assert after["c2"]["reference_id"] == "ref"
    assert after["c3"]["is_deleted"] is True
    assert len(after) == 3

    # And an older version arriving later (a sync's overlap) does not resurrect c1
    sink.write(SQUARE_CUSTOMERS, [customer("c1", version=2)], batch_id="late")
    assert rows(bq_client, dataset)["c1"]["is_deleted"] is True


def test_a_bare_deletion_marks_the_stored_row_once(
    make_sink: Callable[..., BigQuerySink], bq_client: bigquery.Client, dataset: str
) -> None:
    # Given a stored customer
    sink = make_sink()
    sink.write(SQUARE_CUSTOMERS, [customer("c1", version=1)], batch_id="sync")
    synced = datetime(2026, 3, 2, tzinfo=UTC)

    # When it is marked deleted without its last state, twice (a redelivery), and an absent one too
    first = sink.mark_deleted(
        SQUARE_CUSTOMERS, {"id": "c1"}, deleted_at=DELETED, synced_at=synced, message_id="m1"
    )
    again = sink.mark_deleted(
        SQUARE_CUSTOMERS,
        {"id": "c1"},
        deleted_at=DELETED + timedelta(hours=2),
        synced_at=synced + timedelta(hours=2),
        message_id="m2",
    )
    absent = sink.mark_deleted(
        SQUARE_CUSTOMERS, {"id": "nobody"}, deleted_at=DELETED, synced_at=synced, message_id="m3"
    )
    after = rows(bq_client, dataset)

    # Then the row is marked once, with the first deletion's time; nothing is inserted
    assert (first, again, absent) == (1, 0, 0)
    assert after["c1"]["is_deleted"] is True
    assert after["c1"]["deleted_at"] == DELETED
    assert after["c1"]["_message_id"] == "m1"
    assert after["c1"]["reference_id"] == "ref"
    assert set(after) == {"c1"}
