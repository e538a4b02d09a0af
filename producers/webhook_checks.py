"""What one webhook body asks for, decided without I/O: a refusal, a handshake, or a message to send.

These checks run on the event loop (they only hash and parse, some microseconds), in this order:
signature first (401 when missing or wrong: nothing of an unauthenticated body is looked at), then
the body (400 when malformed), then routing. What passes becomes a :class:`Delivery`, which
:mod:`producers.webhook_intake` de-duplicates by event id and enqueues.

Square routing: ``payment.created``/``payment.updated`` -> ``RecordUpsert(kind="payment")``;
``customer.created``/``customer.updated`` -> ``RecordUpsert(kind="customer")``; ``customer.deleted``
-> the same with ``deleted_at`` (the event's ``created_at``) and ``record`` (``data.object.customer``,
if any); ``catalog.version.updated`` -> ``SyncRequest(stream="items")``; any other type -> 202,
nothing enqueued. Every well-formed signed Notion event is enqueued, whatever its type.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from producers.webhook_models import (
    MalformedBody,
    NotionEvent,
    NotionHandshake,
    Outcome,
    SquareEvent,
    parse_object,
    validate,
)
from producers.webhook_signatures import (
    SQUARE_SIGNATURE_HEADER,
    notion_signature,
    same_signature,
    square_signature,
)
from schemas.messages import (
    HANDLE_NOTION_EVENT,
    SYNC_SQUARE_STREAM,
    UPSERT_SQUARE_RECORD,
    Payload,
    RecordUpsert,
    Route,
    SyncRequest,
    WebhookEvent,
)

__all__ = [
    "NOTION_DEDUP_SECONDS",
    "RETRY_AFTER_SECONDS",
    "SQUARE_DEDUP_SECONDS",
    "Answer",
    "Delivery",
    "check_notion_event",
    "check_notion_unsigned",
    "check_square",
    "unavailable",
]

#: How long a Notion event id is remembered, seconds (Notion retries for about 24 h).
NOTION_DEDUP_SECONDS = 7 * 86_400
#: How long a Square event id is remembered, seconds (Square retries for up to 72 h).
SQUARE_DEDUP_SECONDS = 4 * 86_400
#: ``Retry-After`` on 503 and 409 answers, seconds.
RETRY_AFTER_SECONDS = 5
#: Longest request id a payload takes.
_REQUEST_ID_CHARS = 128

#: Square event type -> the kind of record it names (upserted by id).
_SQUARE_RECORDS = {
    "payment.created": "payment",
    "payment.updated": "payment",
    "customer.created": "customer",
    "customer.updated": "customer",
    "customer.deleted": "customer",
}
#: Square event type -> the stream to sync incrementally.
_SQUARE_STREAMS = {"catalog.version.updated": "items"}


@dataclass(frozen=True)
class Answer:
    """What to answer one request, and what to log and count about it."""

    status: int
    outcome: Outcome
    detail: str
    event_type: str | None = None
    event_id: str | None = None
    message_id: str | None = None
    retry_after_seconds: int | None = None


@dataclass(frozen=True)
class Delivery:
    """A verified, valid event: the message to send once per event id."""

    provider: str
    event_id: str
    event_type: str
    #: How long the event id is remembered after its message was enqueued, seconds.
    keep_seconds: int
    route: Route[Any]
    payload: Payload


def unavailable(detail: str, *, event_type: str | None = None, event_id: str | None = None) -> Answer:
    """503 with ``Retry-After``: the event was not kept."""
    return Answer(
        503,
        "unavailable",
        detail,
        event_type=event_type,
        event_id=event_id,
        retry_after_seconds=RETRY_AFTER_SECONDS,
    )


def _request_id(provider: str, event_id: str) -> str:
    return f"webhook-{provider}-{event_id}"[:_REQUEST_ID_CHARS]


_NO_NOTION_SIGNATURE = Answer(401, "bad_signature", "X-Notion-Signature is missing")


def check_notion_unsigned(body: bytes) -> Answer | NotionHandshake:
    """An unsigned Notion body: the verification handshake, or a refusal."""
    try:
        _, parsed = parse_object(body)
    except MalformedBody:
        return _NO_NOTION_SIGNATURE
    # A handshake has the token and nothing of an event; anything else unsigned is refused.
    if "verification_token" not in parsed or "type" in parsed:
        return _NO_NOTION_SIGNATURE
    try:
        return validate(NotionHandshake, parsed)
    except MalformedBody as exc:
        return Answer(400, "malformed", f"invalid verification request: {exc}")


def check_notion_event(
    body: bytes, signature: str, key: str | None, *, received_at: datetime
) -> Answer | Delivery:
    """A signed Notion body.

    Args:
        body: the raw body.
        signature: the ``X-Notion-Signature`` header.
        key: the verification token (setting, else the recorded one); None if there is none yet.
        received_at: now, UTC.
    """
    if key is None:
        return Answer(
            401,
            "bad_signature",
            "no Notion verification token yet: complete the subscription's verification handshake"
            " or set POSSYNC_NOTION_VERIFICATION_TOKEN",
        )
    if not same_signature(notion_signature(key, body), signature):
        return Answer(401, "bad_signature", "X-Notion-Signature does not match the body")
    try:
        text, parsed = parse_object(body)
        event = validate(NotionEvent, parsed)
    except MalformedBody as exc:
        return Answer(400, "malformed", str(exc))
    payload = WebhookEvent(
        request_id=_request_id("notion", event.id),
        event_id=event.id,
        event_type=event.type,
        entity_id=event.entity.id if event.entity else None,
        entity_type=event.entity.type if event.entity else None,
        timestamp=event.timestamp,
        received_at=received_at,
        attempt_number=event.attempt_number,
        raw=text,
    )
    return Delivery("notion", event.id, event.type, NOTION_DEDUP_SECONDS, HANDLE_NOTION_EVENT, payload)


def check_square(body: bytes, signature: str | None, key: str, url: str) -> Answer | Delivery:
    """A Square body.

    Args:
        body: the raw body.
        signature: the ``x-square-hmacsha256-signature`` header, if any.
        key: the subscription's signature key.
        url: the notification URL exactly as registered (Square signs it with the body).
    """
    if signature is None:
        return Answer(401, "bad_signature", f"{SQUARE_SIGNATURE_HEADER} is missing")
    if not same_signature(square_signature(key, url, body), signature):
        return Answer(401, "bad_signature", f"{SQUARE_SIGNATURE_HEADER} does not match the body")
    try:
        _, parsed = parse_object(body)
        event = validate(SquareEvent, parsed)
        found = _square_message(event)
    except MalformedBody as exc:
        return Answer(400, "malformed", str(exc))
    if found is None:
        return Answer(
            202,
            "unknown_type",
            f"event type {event.type} is not processed",
            event_type=event.type,
            event_id=event.event_id,
        )
    route, payload = found
    return Delivery("square", event.event_id, event.type, SQUARE_DEDUP_SECONDS, route, payload)


def _square_message(event: SquareEvent) -> tuple[Route[Any], Payload] | None:
    """The route and payload for ``event``, or None for a type that is not processed.

    Raises:
        MalformedBody: when the event lacks what its type needs.
    """
    request_id = _request_id("square", event.event_id)
    stream = _SQUARE_STREAMS.get(event.type)
    if stream is not None:
        return SYNC_SQUARE_STREAM, SyncRequest(request_id=request_id, source="square", stream=stream)
    kind = _SQUARE_RECORDS.get(event.type)
    if kind is None:
        return None
    if not event.data.id:
        raise MalformedBody(f"data.id: required for {event.type}")
    deleted_at = record = None
    if event.type == "customer.deleted":
        deleted_at = event.created_at
        found = (event.data.object or {}).get("customer")
        if found is not None and not isinstance(found, dict):
            raise MalformedBody("data.object.customer: must be an object")
        record = found
    upsert = RecordUpsert(
        request_id=request_id,
        kind=kind,
        record_id=event.data.id,
        event_id=event.event_id,
        deleted_at=deleted_at,
        record=record,
    )
    return UPSERT_SQUARE_RECORD, upsert
