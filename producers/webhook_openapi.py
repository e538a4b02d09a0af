"""The webhook receiver's OpenAPI 3.1 document (``GET /openapi.json``), built from its models.

Request and answer schemas come from the pydantic models in :mod:`producers.webhook_models`, so the
document and the validation cannot drift apart; paths, headers and status codes are declared here,
beside what each status means. Keep this in step with ``producers/webhooks.py`` (its tests check
that every route is documented and every status it answers is declared).
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from producers.webhook_models import (
    Health,
    NotionEvent,
    NotionHandshake,
    SquareEvent,
    WebhookAnswer,
)
from producers.webhook_signatures import NOTION_SIGNATURE_HEADER, SQUARE_SIGNATURE_HEADER

__all__ = ["NOTION_PATHS", "SQUARE_PATH", "openapi_document"]

#: The Notion route and its older alias.
NOTION_PATHS = ("/webhooks/notion", "/api/notion/webhook")
SQUARE_PATH = "/webhooks/square"

_REF = "#/components/schemas/{model}"
_JSON = "application/json"


def _answer(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {_JSON: {"schema": {"$ref": _REF.format(model="WebhookAnswer")}}},
    }
    if retry_after:
        response["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
    return response


_COMMON_RESPONSES: dict[str, dict[str, Any]] = {
    "400": _answer(
        "A signed body that is not a valid event (or an invalid verification request): not UTF-8,"
        " not JSON, not an object, nested too deep, or a field missing or invalid. Nothing was enqueued."
    ),
    "401": _answer("Signature missing or wrong (or no key to check it with). Nothing was enqueued."),
    "409": _answer(
        "Another delivery of the same event is being enqueued at this moment; retry later.", retry_after=True
    ),
    "413": _answer("The body is larger than POSSYNC_WEBHOOK_MAX_BODY_BYTES. Nothing was enqueued."),
    "503": _answer(
        "Redis is unavailable (or the route is not configured): the event was not kept;"
        " deliver it again later.",
        retry_after=True,
    ),
}


def _notion_operation(*, alias: bool) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": "receiveNotionWebhookAlias" if alias else "receiveNotionWebhook",
        "tags": ["notion"],
        "summary": "Receive a Notion webhook event or the subscription's verification request",
        "description": (
            'An unsigned body `{"verification_token": ...}` is the verification handshake: the token'
            " is recorded in Redis unless one is recorded already or POSSYNC_NOTION_VERIFICATION_TOKEN"
            " is set (200 either way; a recorded token is never overwritten). Anything else must carry"
            " `X-Notion-Signature: sha256=<hex HMAC-SHA256 of the raw body keyed by the verification"
            " token>`; each well-formed signed event is enqueued once per event id (7 days)."
        ),
        "parameters": [
            {
                "name": "X-Notion-Signature",
                "in": "header",
                "required": False,
                "description": "Absent only on the verification request.",
                "schema": {"type": "string", "pattern": "^sha256=[0-9a-f]{64}$"},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                _JSON: {
                    "schema": {
                        "oneOf": [
                            {"$ref": _REF.format(model="NotionEvent")},
                            {"$ref": _REF.format(model="NotionHandshake")},
                        ]
                    }
                }
            },
        },
        "responses": {
            "200": _answer(
                "Enqueued (outcome accepted), already received (duplicate), or a"
                " verification request handled (handshake)."
            ),
            **_COMMON_RESPONSES,
        },
    }
    if alias:
        operation["deprecated"] = True
        operation["summary"] += " (older path, same behaviour as /webhooks/notion)"
    return operation


def _square_operation() -> dict[str, Any]:
    return {
        "operationId": "receiveSquareWebhook",
        "tags": ["square"],
        "summary": "Receive a Square webhook event",
        "description": (
            "Signed with `x-square-hmacsha256-signature: base64(HMAC-SHA256(signature key,"
            " POSSYNC_SQUARE_WEBHOOK_URL + raw body))`. payment.created/updated and"
            " customer.created/updated/deleted enqueue an upsert of the record; catalog.version.updated"
            " an items sync; each event id once (4 days). Other types answer 202 and enqueue nothing."
            " Without POSSYNC_SQUARE_WEBHOOK_SIGNATURE_KEY and POSSYNC_SQUARE_WEBHOOK_URL the route"
            " answers 503."
        ),
        "parameters": [
            {
                "name": SQUARE_SIGNATURE_HEADER,
                "in": "header",
                "required": True,
                "schema": {"type": "string"},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {_JSON: {"schema": {"$ref": _REF.format(model="SquareEvent")}}},
        },
        "responses": {
            "200": _answer("Enqueued (outcome accepted) or already received (duplicate)."),
            "202": _answer("A valid, signed event of a type possync does not process (unknown_type)."),
            **_COMMON_RESPONSES,
        },
    }


def _get(operation_id: str, summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    return {
        "get": {
            "operationId": operation_id,
            "tags": ["operations"],
            "summary": summary,
            "responses": responses,
        }
    }


def _health(description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": {"$ref": _REF.format(model="Health")}}}}


def openapi_document(*, max_body_bytes: int) -> dict[str, Any]:
    """The receiver's OpenAPI 3.1 document.

    Args:
        max_body_bytes: the body size limit in force, bytes (stated in the description).
    """
    _, schemas = models_json_schema(
        [
            (NotionEvent, "validation"),
            (NotionHandshake, "validation"),
            (SquareEvent, "validation"),
            (WebhookAnswer, "serialization"),
            (Health, "serialization"),
        ],
        ref_template=_REF,
    )
    paths: dict[str, Any] = {
        path: {"post": _notion_operation(alias=path != NOTION_PATHS[0])} for path in NOTION_PATHS
    }
    paths[SQUARE_PATH] = {"post": _square_operation()}
    paths["/healthz"] = _get("healthz", "The process is up", {"200": _health("Up.")})
    paths["/readyz"] = _get(
        "readyz",
        "Redis answers PING",
        {
            "200": _health("Ready: Redis answers."),
            "503": {
                **_health("Redis is unavailable."),
                "headers": {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}},
            },
        },
    )
    paths["/metrics"] = _get(
        "metrics",
        "Prometheus metrics (possync_webhook_events_total by provider and outcome, and more)",
        {
            "200": {
                "description": "Prometheus text exposition.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    )
    paths["/openapi.json"] = _get(
        "openapi",
        "This document",
        {"200": {"description": "OpenAPI 3.1 document.", "content": {_JSON: {"schema": {"type": "object"}}}}},
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "possync webhook receiver",
            "version": "1",
            "description": (
                "Receives Notion and Square webhooks, verifies their signatures and enqueues them for"
                f" possync's workers. Bodies over {max_body_bytes} bytes are refused with 413. Header"
                f" names are case-insensitive ({NOTION_SIGNATURE_HEADER}, {SQUARE_SIGNATURE_HEADER})."
            ),
        },
        "tags": [
            {"name": "notion", "description": "Notion integration webhooks"},
            {"name": "square", "description": "Square webhooks"},
            {"name": "operations", "description": "Health, readiness, metrics"},
        ],
        "paths": paths,
        "components": {
            "schemas": schemas["$defs"],
            "headers": {
                "RetryAfter": {
                    "description": "Seconds to wait before delivering again.",
                    "schema": {"type": "integer", "minimum": 0},
                }
            },
        },
    }
