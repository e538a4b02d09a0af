"""Deletions and coarse versions in the warehouse: a deletion snapshot wins over a stored row not yet
marked, a bare deletion marks the stored row once, an equal coarse version with new content replaces;
replays change nothing. Against the BigQuery emulator."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud import bigquery

from schemas.notion import NotionPageRow
from schemas.square import CustomerRow
from schemas.tables import NOTION_PAGES, SQUARE_CUSTOMERS
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


def _page(title: str, *, edited: datetime, synced: datetime) -> dict[str, Any]:
    return NotionPageRow(
        id="page-1",
        parent_type="page_id",
        parent_id="parent-1",
        title=title,
        properties="{}",
        url="https://www.notion.so/page-1",
        created_time=CREATED,
        last_edited_time=edited,
        archived=False,
        in_trash=False,
        is_deleted=False,
        deleted_at=None,
        synced_at=synced,
        message_id=f"msg-{title}",
    ).model_dump(mode="json", by_alias=True)


def test_a_coarse_version_replaces_on_equal_time_only_when_the_content_differs(
    make_sink: Callable[..., BigQuerySink], bq_client: bigquery.Client, dataset: str
) -> None:
    # Given a Notion page stored at an edit time rounded to the minute
    sink = make_sink()
    edited = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    sink.write(NOTION_PAGES, [_page("first", edited=edited, synced=edited)], batch_id="a")

    def stored() -> dict[str, Any]:
        found = query_rows(bq_client, f"SELECT * FROM `{TEST_PROJECT}.{dataset}.notion_pages`")
        assert len(found) == 1
        return found[0]

    # When a second edit in the same minute is fetched (same last_edited_time, new title)
    later = edited + timedelta(seconds=40)
    sink.write(NOTION_PAGES, [_page("second", edited=edited, synced=later)], batch_id="b")

    # Then it replaces the stored row
    assert stored()["title"] == "second"

    # And a replay of the same content changes nothing, _synced_at included
    sink.write(
        NOTION_PAGES, [_page("second", edited=edited, synced=later + timedelta(hours=1))], batch_id="c"
    )
    assert stored()["_synced_at"] == later

    # And an older edit time never replaces it
    sink.write(NOTION_PAGES, [_page("old", edited=edited - timedelta(minutes=1), synced=later)], batch_id="d")
    assert stored()["title"] == "second"
