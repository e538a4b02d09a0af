"""What the workers do with webhook-driven messages: targeted Square upserts and Notion events.

Both run beside the streams' syncs, never coalesced with them: a webhook names one record, which
is fetched by id (so the warehouse gets its state now rather than the event's possibly stale copy)
and merged through the same conversion, rejects and newer-version MERGE as a sync. Deletions are
kept as a flag and a time, never as a missing row.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import structlog
from pydantic import ValidationError

from schemas.messages import RecordUpsert, WebhookEvent
from schemas.notion import NotionPage, event_row, page_row
from schemas.settings import Settings
from schemas.square import SquareCustomer, customer_row
from schemas.tables import NOTION_EVENTS, NOTION_PAGES, REJECTS, SQUARE_CUSTOMERS, TableSpec
from workers.batching import Sink, reject_row
from workers.errors import InvalidPayload
from workers.metrics import ROWS_REJECTED
from workers.sources.square_streams import SquareStreams
from workers.sync import run_records

__all__ = ["NotionOutcome", "handle_notion_event", "run_square_upsert"]

log = structlog.get_logger(__name__)

_STREAMS = {"payment": "payments", "customer": "customers"}


def _utcnow() -> datetime:
    return datetime.now(UTC)


class DeletingSink(Sink, Protocol):
    """A sink that can also mark one stored row deleted (``BigQuerySink``)."""

    def mark_deleted(
        self,
        spec: TableSpec,
        key: dict[str, Any],
        *,
        deleted_at: datetime,
        synced_at: datetime,
        message_id: str | None,
    ) -> int:
        """Mark the row with ``key`` deleted unless it is already; returns rows marked."""
        ...


class PageFetcher(Protocol):
    """The Notion client (``workers/sources/notion.py``), as the handler uses it."""

    def get_page(self, page_id: str) -> dict[str, Any] | None:
        """The page, or ``None`` when Notion no longer serves it (404)."""
        ...


def run_square_upsert(
    *,
    source: SquareStreams,
    sink: DeletingSink,
    request: RecordUpsert,
    settings: Settings,
    message_id: str | None,
    now: Callable[[], datetime] = _utcnow,
) -> str:
    """Upsert the payment or customer a Square webhook named, or mark a deleted customer.

    Returns:
        What was done: ``upserted``, ``rejected`` (the fetched record failed validation and is in
        the rejects table), ``skipped`` (a payment of a location not in
        ``POSSYNC_SQUARE_LOCATION_IDS``), ``deleted``, or ``marked`` (a deletion without the
        customer's last state, applied to the stored row).

    Raises:
        InvalidPayload: a deletion of something other than a customer.
        WorkerError: from the source (a 404 for a payment is permanent) or the sink.
    """
    stream = _STREAMS[request.kind]
    clock = time.monotonic()
    if request.deleted_at is None:
        record = source.fetch(stream, request.record_id)
        locations = settings.square_location_ids
        if stream == "payments" and locations and record.get("location_id") not in locations:
            # The syncs read only the configured locations; a webhook must not add others.
            log.info(
                "webhook_record_skipped",
                kind=request.kind,
                record_id=request.record_id,
                event_id=request.event_id,
                reason="location not in POSSYNC_SQUARE_LOCATION_IDS",
            )
            return "skipped"
        result = run_records(
            source=source,
            sink=sink,
            stream=stream,
            records=[record],
            scope=f"upsert:{request.kind}:{request.record_id}",
            settings=settings,
            message_id=message_id,
            now=now,
        )
        outcome = "rejected" if result.rows_rejected else "upserted"
    else:
        if request.kind != "customer":
            raise InvalidPayload(f"a {request.kind} cannot be marked deleted by a webhook")
        outcome = _delete_customer(sink, request, request.deleted_at, now(), message_id)
    log.info(
        "webhook_record_done",
        kind=request.kind,
        record_id=request.record_id,
        event_id=request.event_id,
        outcome=outcome,
        seconds=round(time.monotonic() - clock, 3),
    )
    return outcome


def _delete_customer(
    sink: DeletingSink,
    request: RecordUpsert,
    deleted_at: datetime,
    synced_at: datetime,
    message_id: str | None,
) -> str:
    """The customer's last state marked deleted, or, without a usable one, the stored row marked."""
    customer: SquareCustomer | None = None
    if request.record is not None:
        try:
            customer = SquareCustomer.model_validate(request.record)
        except ValidationError as exc:
            log.warning(
                "deleted_customer_state_unusable",
                record_id=request.record_id,
                fields=[".".join(str(part) for part in error["loc"]) for error in exc.errors()],
            )
        if customer is not None and customer.id != request.record_id:
            raise InvalidPayload(f"customer.deleted for {request.record_id} carries customer {customer.id}")
    if customer is None:
        marked = sink.mark_deleted(
            SQUARE_CUSTOMERS,
            {"id": request.record_id},
            deleted_at=deleted_at,
            synced_at=synced_at,
            message_id=message_id,
        )
        return "marked" if marked else "absent"
    row = customer_row(customer, synced_at=synced_at, message_id=message_id, deleted_at=deleted_at)
    sink.write(
        SQUARE_CUSTOMERS,
        [row.model_dump(mode="json", by_alias=True)],
        batch_id=f"delete:customer:{request.record_id}",
    )
    return "deleted"


@dataclass(frozen=True)
class NotionOutcome:
    """What one Notion event did: the event row, and what became of the page it named."""

    event_id: str
    page: Literal["upserted", "marked", "absent", "rejected", "none"]


def handle_notion_event(
    *,
    client: PageFetcher,
    sink: DeletingSink,
    event: WebhookEvent,
    message_id: str | None,
    now: Callable[[], datetime] = _utcnow,
) -> NotionOutcome:
    """Append the event to ``notion_events`` (once per event id) and, for a page event, upsert the
    page as Notion serves it now; a page Notion no longer serves (404) is marked deleted.

    Raises:
        WorkerError: from the client (rate limits, 5xx: retryable) or the sink.
    """
    clock = time.monotonic()
    synced_at = now()
    row = event_row(event, synced_at=synced_at, message_id=message_id)
    sink.write(
        NOTION_EVENTS, [row.model_dump(mode="json", by_alias=True)], batch_id=f"event:{event.event_id}"
    )
    page_outcome: Literal["upserted", "marked", "absent", "rejected", "none"] = "none"
    if event.entity_type == "page" and event.entity_id:
        page_outcome = _sync_page(client, sink, event, event.entity_id, synced_at, message_id)
    log.info(
        "notion_event_done",
        event_id=event.event_id,
        event_type=event.event_type,
        page=page_outcome,
        seconds=round(time.monotonic() - clock, 3),
    )
    return NotionOutcome(event_id=event.event_id, page=page_outcome)


def _sync_page(
    client: PageFetcher,
    sink: DeletingSink,
    event: WebhookEvent,
    page_id: str,
    synced_at: datetime,
    message_id: str | None,
) -> Literal["upserted", "marked", "absent", "rejected"]:
    raw = client.get_page(page_id)
    if raw is None:
        marked = sink.mark_deleted(
            NOTION_PAGES,
            {"id": page_id},
            deleted_at=event.timestamp,
            synced_at=synced_at,
            message_id=message_id,
        )
        return "marked" if marked else "absent"
    try:
        page = NotionPage.model_validate(raw)
    except ValidationError as exc:
        reject = reject_row("notion", "pages", raw, exc, synced_at, message_id)
        sink.write(REJECTS, [reject], batch_id=f"reject:page:{page_id}")
        ROWS_REJECTED.labels(NOTION_PAGES.name).inc()
        return "rejected"
    row = page_row(page, synced_at=synced_at, message_id=message_id)
    sink.write(NOTION_PAGES, [row.model_dump(mode="json", by_alias=True)], batch_id=f"page:{page_id}")
    return "upserted"
