"""What workers do with webhook messages, against the Square sandbox (a real HTTP server) and the
BigQuery emulator: a payment upserted by id, one of an unsynced location skipped, deletions marked,
Notion events kept once and their pages upserted, rejected or marked."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from google.cloud import bigquery
from pydantic import SecretStr

from sandbox.process import SandboxProcess, start_square_sandbox
from schemas.messages import RecordUpsert, WebhookEvent
from schemas.settings import Settings
from tests.conftest import TEST_PROJECT
from tests.schemas.test_notion import PAGE_ID, page_object
from workers.errors import InvalidPayload
from workers.sinks.bigquery import BigQuerySink, query_rows
from workers.sources.square import SquareClient
from workers.sources.square_streams import SquareStreams
from workers.webhook_work import handle_notion_event, run_square_upsert

TOKEN = "webhook-work-token"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def square() -> Iterator[SandboxProcess]:
    with start_square_sandbox(payments=40, customers=8, items=4, token=TOKEN) as sandbox:
        yield sandbox


def streams(sandbox: SandboxProcess, http: httpx.Client, settings: Settings) -> SquareStreams:
    client = SquareClient(
        http,
        base_url=sandbox.base_url,
        token=SecretStr(TOKEN),
        square_version=settings.square_version,
        timeout_seconds=10,
    )
    return SquareStreams(client, settings)


def rows(client: bigquery.Client, dataset: str, table: str) -> list[dict[str, Any]]:
    try:
        return query_rows(client, f"SELECT * FROM `{TEST_PROJECT}.{dataset}.{table}`")
    except Exception as exc:
        if "not found" in str(exc).lower():
            return []
        raise


def first_payment(sandbox: SandboxProcess) -> dict[str, Any]:
    answer = httpx.get(
        f"{sandbox.base_url}/v2/payments", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    payment: dict[str, Any] = answer.json()["payments"][0]
    return payment


def test_a_payment_is_upserted_by_id_unless_its_location_is_not_synced(
    square: SandboxProcess,
    make_sink: Callable[..., BigQuerySink],
    bq_client: bigquery.Client,
    dataset: str,
) -> None:
    # Given a payment at Square, and a pool configured for another location only
    payment = first_payment(square)
    request = RecordUpsert(request_id="r1", kind="payment", record_id=payment["id"], event_id="e1")
    sink = make_sink()
    with httpx.Client() as http:
        elsewhere = Settings(square_location_ids=["ANOTHER"])
        # When the webhook's upsert runs there, it is skipped; with every location, upserted
        skipped = run_square_upsert(
            source=streams(square, http, elsewhere),
            sink=sink,
            request=request,
            settings=elsewhere,
            message_id="m",
        )
        assert rows(bq_client, dataset, "square_payments") == []
        everywhere = Settings()
        done = run_square_upsert(
            source=streams(square, http, everywhere),
            sink=sink,
            request=request,
            settings=everywhere,
            message_id="m2",
        )

    # Then only the second wrote the payment, as Square serves it now
    assert (skipped, done) == ("skipped", "upserted")
    stored = rows(bq_client, dataset, "square_payments")
    assert [(row["id"], row["status"], row["_message_id"]) for row in stored] == [
        (payment["id"], payment["status"], "m2")
    ]


def test_deletions_are_marked_and_only_customers_can_be_deleted(
    square: SandboxProcess,
    make_sink: Callable[..., BigQuerySink],
    bq_client: bigquery.Client,
    dataset: str,
) -> None:
    sink = make_sink()
    settings = Settings()
    with httpx.Client() as http:
        source = streams(square, http, settings)
        # Given a customer synced by a webhook's upsert, and another never synced
        listed = http.get(
            f"{square.base_url}/v2/customers", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
        ).json()["customers"]
        synced = RecordUpsert(request_id="r", kind="customer", record_id=listed[0]["id"])
        assert run_square_upsert(
            source=source, sink=sink, request=synced, settings=settings, message_id="m1"
        ) == ("upserted")

        # When deletions arrive without the customer's last state: one stored, one never synced
        def delete(customer_id: str) -> str:
            request = RecordUpsert(request_id="d", kind="customer", record_id=customer_id, deleted_at=NOW)
            return run_square_upsert(
                source=source, sink=sink, request=request, settings=settings, message_id="m2"
            )

        outcomes = (delete(listed[0]["id"]), delete(listed[1]["id"]))

        # And a payment deletion is refused as an invalid payload
        payment = RecordUpsert(request_id="p", kind="payment", record_id="p1", deleted_at=NOW)
        with pytest.raises(InvalidPayload, match="payment"):
            run_square_upsert(source=source, sink=sink, request=payment, settings=settings, message_id="m3")

    # Then the stored one is marked at the event's time and the other stays absent
    assert outcomes == ("marked", "absent")
    stored = rows(bq_client, dataset, "square_customers")
    assert [(row["id"], row["is_deleted"], row["deleted_at"]) for row in stored] == [
        (listed[0]["id"], True, NOW)
    ]


class Pages:
    """Answers ``get_page`` from a dict, as the Notion client would (``None`` for a 404)."""

    def __init__(self, pages: dict[str, dict[str, Any] | None]) -> None:
        self.pages = pages
        self.asked: list[str] = []

    def get_page(self, page_id: str) -> dict[str, Any] | None:
        self.asked.append(page_id)
        return self.pages[page_id]


def event(event_id: str, page_id: str, kind: str = "page.properties_updated") -> WebhookEvent:
    raw = f'{{"id":"{event_id}","type":"{kind}","entity":{{"id":"{page_id}","type":"page"}}}}'
    return WebhookEvent(
        request_id=f"webhook-notion-{event_id}",
        event_id=event_id,
        event_type=kind,
        entity_id=page_id,
        entity_type="page",
        timestamp=NOW,
        received_at=NOW,
        attempt_number=1,
        raw=raw,
    )


def test_notion_events_are_kept_once_and_their_pages_upserted_rejected_or_marked(
    make_sink: Callable[..., BigQuerySink], bq_client: bigquery.Client, dataset: str
) -> None:
    # Given a page Notion serves, one it serves malformed, and one it no longer serves
    sink = make_sink()
    fetcher = Pages({PAGE_ID: page_object(), "broken": {"object": "page", "id": "broken"}, "gone": None})

    # When events name each, the first one twice (a redelivery)
    outcomes = [
        handle_notion_event(client=fetcher, sink=sink, event=event(name, page), message_id=f"m-{name}").page
        for name, page in (("e1", PAGE_ID), ("e1", PAGE_ID), ("e2", "broken"), ("e3", "gone"))
    ]
    # And, once the page is stored, Notion stops serving it (deleted for good)
    fetcher.pages[PAGE_ID] = None
    marked = handle_notion_event(
        client=fetcher, sink=sink, event=event("e4", PAGE_ID, "page.deleted"), message_id="m4"
    )

    # Then every event is kept once, the page upserted then marked, the malformed one rejected
    assert outcomes == ["upserted", "upserted", "rejected", "absent"]
    assert marked.page == "marked"
    events = rows(bq_client, dataset, "notion_events")
    assert sorted(row["event_id"] for row in events) == ["e1", "e2", "e3", "e4"]
    pages = rows(bq_client, dataset, "notion_pages")
    assert [(row["id"], row["is_deleted"], row["deleted_at"]) for row in pages] == [(PAGE_ID, True, NOW)]
    rejects = rows(bq_client, dataset, "_possync_rejects")
    assert [(row["source"], row["stream"], row["record_key"]) for row in rejects] == [
        ("notion", "pages", "broken")
    ]
