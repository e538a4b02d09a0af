"""The shapes the webhook receiver accepts and answers: Notion and Square bodies, and its replies.

Bodies are parsed strictly before validation: UTF-8 only, RFC 8259 JSON only (``orjson``: no
``NaN``, no lone surrogates, no byte-order mark), a JSON object at the top, nested at most
:data:`MAX_NESTING` deep. The models then check what routing needs and nothing more, so an event
type or field Notion or Square adds later still passes (``extra="allow"``). Identifiers that end up
in Redis keys and log lines must be printable ASCII (UUIDs, Square ids), timestamps RFC 3339 with
an offset. The same models generate the JSON Schemas of ``GET /openapi.json``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar, get_args

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    WithJsonSchema,
)

__all__ = [
    "MAX_NESTING",
    "OUTCOMES",
    "Health",
    "MalformedBody",
    "NotionEntity",
    "NotionEvent",
    "NotionHandshake",
    "Outcome",
    "SquareEvent",
    "SquareEventData",
    "WebhookAnswer",
    "parse_object",
    "validate",
]

#: How deep a body's JSON may nest (objects and arrays); real events stay under 10.
MAX_NESTING = 64
#: Longest identifier or type name accepted, characters.
MAX_ID_CHARS = 255
#: Longest Notion verification token accepted in a handshake, characters.
MAX_TOKEN_CHARS = 1024

Outcome = Literal[
    "accepted",
    "duplicate",
    "handshake",
    "bad_signature",
    "malformed",
    "too_large",
    "unknown_type",
    "unavailable",
]
#: Every outcome, as counted by ``possync_webhook_events_total``.
OUTCOMES: tuple[str, ...] = get_args(Outcome)

# RFC 3339 date-time (seconds required, fraction optional, an offset or Z required).
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


def _rfc3339(value: object) -> object:
    # pydantic alone also takes "1700000000" (Unix time) or a missing "T"; events never send those.
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError("must be an RFC 3339 date-time with an offset, e.g. 2025-01-01T00:00:00.000Z")
    return value


M = TypeVar("M", bound=BaseModel)

Timestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_rfc3339),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": _RFC3339.pattern}),
]
#: An id or type that becomes part of a Redis key or a log line: printable ASCII, no spaces.
Identifier = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[!-~]+$")]


class MalformedBody(ValueError):
    """The body is not what the route accepts; the message says why (no body content in it)."""


def _too_deep(value: Any, limit: int) -> bool:
    """Whether ``value`` nests objects/arrays more than ``limit`` deep (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def parse_object(body: bytes) -> tuple[str, dict[str, Any]]:
    """Decode a body as UTF-8 JSON holding one object.

    Returns:
        The body as text, and the parsed object.

    Raises:
        MalformedBody: not UTF-8, not RFC 8259 JSON, not an object, or nested too deep.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedBody("the body is not UTF-8") from None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedBody("the body is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise MalformedBody(f"the body must be a JSON object, not {type(parsed).__name__}")
    # Nesting needs an opening bracket per level: most bodies have too few to look any closer.
    if body.count(b"{") + body.count(b"[") > MAX_NESTING and _too_deep(parsed, MAX_NESTING):
        raise MalformedBody(f"the body nests deeper than {MAX_NESTING} levels")
    return text, parsed


def validate(model: type[M], parsed: dict[str, Any]) -> M:
    """Validate a parsed object against ``model``.

    Raises:
        MalformedBody: naming the first few invalid fields (never their values).
    """
    try:
        return model.model_validate(parsed)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)[:3]
        ]
        raise MalformedBody("; ".join(problems)[:500]) from None


class _Lenient(BaseModel):
    """Fields the receiver does not read pass through: providers add fields over time."""

    model_config = ConfigDict(extra="allow", frozen=True)


class NotionHandshake(BaseModel):
    """Notion's one-time verification request; it carries no ``X-Notion-Signature``."""

    model_config = ConfigDict(extra="allow", frozen=True, title="NotionHandshake")

    verification_token: str = Field(min_length=1, max_length=MAX_TOKEN_CHARS)


class NotionEntity(_Lenient):
    """What an event is about."""

    id: Identifier
    type: Identifier


class NotionEvent(_Lenient):
    """A Notion webhook event (developers.notion.com/reference/webhooks-events-delivery)."""

    id: Identifier = Field(description="The event's id (a UUID); deliveries of one event share it.")
    type: Identifier = Field(description="The event type, e.g. page.created.", examples=["page.created"])
    timestamp: Timestamp = Field(description="When the event happened (RFC 3339).")
    entity: NotionEntity | None = None
    attempt_number: StrictInt | None = Field(default=None, ge=1, le=1_000_000)
    workspace_id: str | None = None
    workspace_name: str | None = None
    subscription_id: str | None = None
    integration_id: str | None = None
    api_version: str | None = None
    data: dict[str, Any] | None = None


class SquareEventData(_Lenient):
    """An event's ``data``: the affected object's type and id, and the object unless deleted."""

    type: Identifier
    #: Absent (or empty) on ``catalog.version.updated``.
    id: Annotated[str, Field(max_length=MAX_ID_CHARS, pattern=r"^[!-~]*$")] | None = None
    deleted: StrictBool | None = None
    object: dict[str, Any] | None = None


class SquareEvent(_Lenient):
    """A Square webhook event's envelope (developer.squareup.com, webhooks)."""

    merchant_id: Identifier
    location_id: str | None = None
    type: Identifier = Field(
        description="The event type, e.g. payment.updated.", examples=["payment.updated"]
    )
    event_id: Identifier = Field(description="Unique per event; retries of one event share it.")
    created_at: Timestamp
    data: SquareEventData


class WebhookAnswer(BaseModel):
    """Every answer of the webhook routes."""

    model_config = ConfigDict(frozen=True)

    outcome: Outcome
    detail: str = Field(description="Why, in words (never a secret or the body's content).")


class Health(BaseModel):
    """Answer of ``/healthz`` and ``/readyz``."""

    model_config = ConfigDict(frozen=True)

    status: Literal["ok", "ready", "unavailable"]
    detail: str | None = None
