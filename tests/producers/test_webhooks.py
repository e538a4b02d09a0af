"""The webhook receiver as deployed: ``possync webhooks`` processes on loopback, a real Redis.

What each request did is read from Redis itself: the Dramatiq queues (``dramatiq:<queue>`` and
``dramatiq:<queue>.msgs``), the de-duplication claims and the recorded Notion token.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis
from jsonschema import Draft202012Validator
from openapi_schema_validator import OAS31Validator
from prometheus_client.parser import text_string_to_metric_families

from producers.webhooks import EVENT_KEY, NOTION_TOKEN_KEY, replace_notion_verification_token
from sandbox.redis_server import RedisServer
from schemas.messages import RecordUpsert, SyncRequest, WebhookEvent
from tests.polling import wait_until
from tests.producers.conftest import (
    MAX_BODY_BYTES,
    NOTION_TOKEN,
    SQUARE_KEY,
    SQUARE_URL,
    Receiver,
    encode,
    notion_event,
    queue_counts,
    queued,
    record_token,
    sign_notion,
    sign_square,
    square_event,
)

NOTION = "/webhooks/notion"
SQUARE = "/webhooks/square"
NOTHING_QUEUED = (0, 0, 0, 0)


def _post_notion(
    http: httpx.Client, event: dict[str, Any], *, token: str = NOTION_TOKEN, path: str = NOTION
) -> httpx.Response:
    body = encode(event)
    return http.post(path, content=body, headers=sign_notion(body, token))


def _post_square(http: httpx.Client, event: dict[str, Any]) -> httpx.Response:
    body = encode(event)
    return http.post(SQUARE, content=body, headers=sign_square(body))


def _payloads(client: redis.Redis, queue: str) -> list[dict[str, Any]]:
    return [message["kwargs"]["payload"] for message in queued(client, queue)]


def _event_counts(receiver: Receiver) -> dict[tuple[str, str], float]:
    text = httpx.get(receiver.base_url + "/metrics", timeout=10).text
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "possync_webhook_events":
            for sample in family.samples:
                if sample.name == "possync_webhook_events_total":
                    counts[(sample.labels["provider"], sample.labels["outcome"])] = sample.value
    return counts


# Notion: the verification handshake.


def test_handshake_records_the_token_once_and_never_logs_it(
    receiver: Receiver, http: httpx.Client, redis_client: redis.Redis
) -> None:
    # Given no token recorded
    # When Notion sends its verification request (no signature header)
    first = http.post(NOTION, json={"verification_token": "secret_first"})

    # Then it is answered 200 and the token is recorded
    assert first.status_code == 200, first.text
    assert first.json()["outcome"] == "handshake"
    assert redis_client.get(NOTION_TOKEN_KEY) == b"secret_first"

    # When a second handshake arrives
    second = http.post(NOTION, json={"verification_token": "secret_second"})

    # Then it is answered 200 too, but the recorded token stays
    assert second.status_code == 200, second.text
    assert second.json()["outcome"] == "handshake"
    assert redis_client.get(NOTION_TOKEN_KEY) == b"secret_first"
    # And the log says so, without either token
    wait_until(
        lambda: any(
            line.get("event") == "notion_verification_token_ignored" for line in receiver.log_lines()
        ),
        timeout_seconds=10,
        message="the ignored handshake was not logged",
    )
    assert "secret_first" not in receiver.log()
    assert "secret_second" not in receiver.log()
    assert queue_counts(redis_client) == NOTHING_QUEUED


def test_events_are_verified_with_the_recorded_token(http: httpx.Client, redis_client: redis.Redis) -> None:
    # Given a token recorded by the handshake
    assert http.post(NOTION, json={"verification_token": NOTION_TOKEN}).status_code == 200

    # When an event signed with it arrives
    response = _post_notion(http, notion_event())

    # Then it is accepted
    assert response.status_code == 200, response.text
    assert response.json()["outcome"] == "accepted"


def test_replacing_the_token_switches_the_signing_key(http: httpx.Client, redis_client: redis.Redis) -> None:
    # Given a recorded token, and events already verified with it
    record_token(redis_client, "secret_old")
    assert _post_notion(http, notion_event(), token="secret_old").status_code == 200

    # When the token is replaced (the subscription was recreated)
    replace_notion_verification_token(redis_client, "secret_new")

    # Then events signed with the new token are accepted at once
    assert _post_notion(http, notion_event(), token="secret_new").status_code == 200
    # And events signed with the old one are refused (within a second: the receiver re-reads it)
    wait_until(
        lambda: _post_notion(http, notion_event(), token="secret_old").status_code == 401,
        timeout_seconds=10,
        message="events signed with the replaced token are still accepted",
    )
    assert redis_client.get(NOTION_TOKEN_KEY) == b"secret_new"


def test_replace_refuses_an_empty_token(redis_client: redis.Redis) -> None:
    # Given a recorded token
    record_token(redis_client)
    # When an empty token is given, then it is refused and the recorded one stays
    with pytest.raises(ValueError, match="1 to 1024 characters"):
        replace_notion_verification_token(redis_client, "")
    assert redis_client.get(NOTION_TOKEN_KEY) == NOTION_TOKEN.encode()


def test_setting_takes_precedence_over_handshakes(
    make_receiver: Any, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    # Given a receiver with POSSYNC_NOTION_VERIFICATION_TOKEN set
    configured = make_receiver(redis_server.url, notion_verification_token="secret_configured")
    with httpx.Client(base_url=configured.base_url, timeout=15) as http:
        # When a handshake arrives
        handshake = http.post(NOTION, json={"verification_token": "secret_from_notion"})

        # Then it is answered 200 but nothing is recorded
        assert handshake.status_code == 200, handshake.text
        assert redis_client.get(NOTION_TOKEN_KEY) is None
        # And events are verified with the setting, even if a token is recorded
        record_token(redis_client, "secret_recorded")
        assert _post_notion(http, notion_event(), token="secret_configured").status_code == 200
        assert _post_notion(http, notion_event(), token="secret_recorded").status_code == 401
    assert len(queued(redis_client, "notion")) == 1


# Notion: events.


def test_signed_event_is_enqueued_once(
    receiver: Receiver, http: httpx.Client, redis_client: redis.Redis
) -> None:
    # Given a recorded token and a Notion event
    record_token(redis_client)
    event = notion_event("page.properties_updated", attempt_number=2)
    body = encode(event)
    before = datetime.now(UTC)

    # When it is delivered
    response = http.post(NOTION, content=body, headers=sign_notion(body))

    # Then it is answered 200 and one WebhookEvent waits on the notion queue
    assert response.status_code == 200, response.text
    assert response.json() == {"outcome": "accepted", "detail": "event enqueued"}
    [message] = queued(redis_client, "notion")
    assert message["actor_name"] == "handle_notion_event"
    assert message["queue_name"] == "notion"
    payload = WebhookEvent.model_validate(message["kwargs"]["payload"])
    assert payload.event_id == event["id"]
    assert payload.event_type == "page.properties_updated"
    assert payload.entity_id == event["entity"]["id"]
    assert payload.entity_type == "page"
    assert payload.attempt_number == 2
    assert payload.timestamp == datetime(2025, 6, 1, 12, 34, 56, 789000, tzinfo=UTC)
    assert before - timedelta(seconds=1) <= payload.received_at <= datetime.now(UTC) + timedelta(seconds=1)
    assert payload.raw == body.decode()
    assert payload.request_id == f"webhook-notion-{event['id']}"
    # And the event id is remembered for 7 days, valued with the message id
    key = EVENT_KEY.format(provider="notion", event_id=event["id"])
    assert redis_client.get(key) == message["message_id"].encode()
    assert 6 * 86_400 < redis_client.ttl(key) <= 7 * 86_400

    # When the same event is delivered again (a retry)
    again = http.post(NOTION, content=body, headers=sign_notion(body))

    # Then it is answered 200 as a duplicate and nothing more is enqueued
    assert again.status_code == 200, again.text
    assert again.json()["outcome"] == "duplicate"
    assert len(queued(redis_client, "notion")) == 1

    # And each request is one log line with provider, outcome, type and id, never the signature
    def handled() -> list[dict[str, Any]]:
        lines = [
            line
            for line in receiver.log_lines()
            if line.get("event") == "webhook_handled" and line.get("event_id") == event["id"]
        ]
        return lines if len(lines) == 2 else []

    lines = wait_until(handled, timeout_seconds=10, message="not one log line per request")
    assert [line["outcome"] for line in lines] == ["accepted", "duplicate"]
    assert {line["provider"] for line in lines} == {"notion"}
    assert {line["event_type"] for line in lines} == {"page.properties_updated"}
    log = receiver.log()
    assert sign_notion(body)["X-Notion-Signature"].removeprefix("sha256=") not in log
    assert NOTION_TOKEN not in log


def test_every_event_type_is_enqueued(http: httpx.Client, redis_client: redis.Redis) -> None:
    # Given events of types possync does nothing special with, one without an entity
    record_token(redis_client)
    events = [notion_event("comment.created"), notion_event("data_source.schema_updated")]
    bare = notion_event("page.locked")
    del bare["entity"]
    events.append(bare)

    # When they are delivered, then each is accepted and enqueued (the worker records all events)
    for event in events:
        assert _post_notion(http, event).status_code == 200
    payloads = _payloads(redis_client, "notion")
    assert [p["event_type"] for p in payloads] == [
        "comment.created",
        "data_source.schema_updated",
        "page.locked",
    ]
    assert payloads[2]["entity_id"] is None


def test_older_alias_path_works(http: httpx.Client, redis_client: redis.Redis) -> None:
    # Given a recorded token
    record_token(redis_client)
    event = notion_event()

    # When an event is delivered to the older path
    response = _post_notion(http, event, path="/api/notion/webhook")

    # Then it is handled the same way
    assert response.status_code == 200, response.text
    assert [p["event_id"] for p in _payloads(redis_client, "notion")] == [event["id"]]


@pytest.mark.parametrize(
    "sign",
    [
        pytest.param(lambda body: {}, id="missing"),
        pytest.param(lambda body: sign_notion(body, "secret_someone_else"), id="wrong-key"),
        pytest.param(lambda body: sign_notion(body + b" "), id="other-body"),
        pytest.param(lambda body: {"X-Notion-Signature": "sha256=" + "0" * 64}, id="zeros"),
        pytest.param(lambda body: {"X-Notion-Signature": "sha256=zz"}, id="garbage"),
        pytest.param(lambda body: {"X-Notion-Signature": ""}, id="empty"),
        pytest.param(
            lambda body: {"X-Notion-Signature": sign_notion(body)["X-Notion-Signature"].upper()},
            id="uppercase",
        ),
        pytest.param(
            lambda body: {
                "X-Notion-Signature": sign_notion(body)["X-Notion-Signature"].removeprefix("sha256=")
            },
            id="no-prefix",
        ),
    ],
)
def test_badly_signed_notion_events_are_refused(
    http: httpx.Client, redis_client: redis.Redis, sign: Any
) -> None:
    # Given a recorded token and a well-formed event
    record_token(redis_client)
    event = notion_event()
    body = encode(event)

    # When it is delivered with a missing or wrong signature
    response = http.post(NOTION, content=body, headers=sign(body))

    # Then it is refused and nothing reaches Redis: no message, no claim
    assert response.status_code == 401, response.text
    assert response.json()["outcome"] == "bad_signature"
    assert queue_counts(redis_client) == NOTHING_QUEUED
    assert redis_client.exists(EVENT_KEY.format(provider="notion", event_id=event["id"])) == 0


def test_a_signature_over_another_body_is_refused(http: httpx.Client, redis_client: redis.Redis) -> None:
    # Given a correctly signed event whose body is then changed
    record_token(redis_client)
    body = encode(notion_event())
    headers = sign_notion(body)
    tampered = body.replace(b"page.created", b"page.deleted")

    # When it is delivered, then it is refused and nothing is enqueued
    assert http.post(NOTION, content=tampered, headers=headers).status_code == 401
    assert queue_counts(redis_client) == NOTHING_QUEUED


def test_signed_events_are_refused_before_any_token_is_known(
    http: httpx.Client, redis_client: redis.Redis
) -> None:
    # Given no recorded token and no setting (the receiver may hold a token read less than a
    # second ago, from another test: wait until it notices there is none)
    redis_client.delete(NOTION_TOKEN_KEY)
    wait_until(
        lambda: _post_notion(http, notion_event()).status_code == 401,
        timeout_seconds=10,
        message="signed events are still accepted without a token",
    )
    redis_client.flushdb()

    # When a signed event arrives
    response = _post_notion(http, notion_event())

    # Then it is refused, saying why
    assert response.status_code == 401, response.text
    assert "handshake" in response.json()["detail"]
    assert queue_counts(redis_client) == NOTHING_QUEUED


def _without(event: dict[str, Any], field: str) -> dict[str, Any]:
    return {name: value for name, value in event.items() if name != field}


MALFORMED_NOTION: list[Any] = [
    pytest.param(b"not json", id="not-json"),
    pytest.param(b"", id="empty"),
    pytest.param(b"[]", id="array"),
    pytest.param(b'"page.created"', id="string"),
    pytest.param(b'{"id": NaN}', id="nan"),
    pytest.param(encode(_without(notion_event(), "id")), id="no-id"),
    pytest.param(encode(_without(notion_event(), "type")), id="no-type"),
    pytest.param(encode(_without(notion_event(), "timestamp")), id="no-timestamp"),
    pytest.param(encode(notion_event(timestamp="1700000000")), id="unix-timestamp"),
    pytest.param(encode(notion_event(timestamp="2025-06-01T12:34:56")), id="naive-timestamp"),
    pytest.param(encode(notion_event(timestamp="yesterday")), id="words-timestamp"),
    pytest.param(encode(notion_event(id=42)), id="numeric-id"),
    pytest.param(encode(notion_event(id="has space")), id="id-with-space"),
    pytest.param(encode(notion_event(id="x" * 256)), id="id-too-long"),
    pytest.param(encode(notion_event(entity="page")), id="entity-not-object"),
    pytest.param(encode(notion_event(entity={"type": "page"})), id="entity-without-id"),
    pytest.param(encode(notion_event(attempt_number="1")), id="attempt-as-string"),
    pytest.param(encode(notion_event(data=[1, 2])), id="data-not-object"),
    pytest.param(encode({"event": notion_event()}), id="wrapped"),
    pytest.param(encode(notion_event(data={"deep": json.loads("[" * 80 + "]" * 80)})), id="too-deep"),
    pytest.param(b'{"id": "\\ud800"}', id="lone-surrogate"),
]


@pytest.mark.parametrize("body", MALFORMED_NOTION)
def test_malformed_signed_notion_bodies_are_refused(
    http: httpx.Client, redis_client: redis.Redis, body: bytes
) -> None:
    # Given a recorded token and a correctly signed but malformed body
    record_token(redis_client)

    # When it is delivered
    response = http.post(NOTION, content=body, headers=sign_notion(body))

    # Then it is refused with a reason, and nothing is enqueued
    assert response.status_code == 400, response.text
    assert response.json()["outcome"] == "malformed"
    assert response.json()["detail"]
    assert queue_counts(redis_client) == NOTHING_QUEUED


def test_unsigned_bodies_that_are_not_handshakes_are_refused(
    http: httpx.Client, redis_client: redis.Redis
) -> None:
    # Given unsigned bodies: an event, garbage, an event carrying a verification_token field
    bodies = [
        encode(notion_event()),
        b"\xff\xfe",
        encode({**notion_event(), "verification_token": "secret_x"}),
    ]

    # When they arrive, then each is refused and nothing is recorded or enqueued
    for body in bodies:
        assert http.post(NOTION, content=body).status_code == 401
    assert redis_client.get(NOTION_TOKEN_KEY) is None
    assert queue_counts(redis_client) == NOTHING_QUEUED


def test_an_invalid_handshake_is_refused(http: httpx.Client, redis_client: redis.Redis) -> None:
    # When a handshake carries an empty or non-string token, then it is refused and nothing recorded
    for body in ({"verification_token": ""}, {"verification_token": 42}):
        response = http.post(NOTION, json=body)
        assert response.status_code == 400, response.text
    assert redis_client.get(NOTION_TOKEN_KEY) is None


@pytest.mark.parametrize("path", [NOTION, SQUARE])
def test_non_utf8_bodies_are_refused(http: httpx.Client, redis_client: redis.Redis, path: str) -> None:
    # Given a correctly signed body that is not UTF-8 (Latin-1 JSON)
    record_token(redis_client)
    body = json.dumps(notion_event(workspace_name="Café"), ensure_ascii=False).encode("latin-1")
    headers = sign_notion(body) if path == NOTION else sign_square(body)

    # When it is delivered, then it is refused as malformed
    response = http.post(path, content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["detail"] == "the body is not UTF-8"
    assert queue_counts(redis_client) == NOTHING_QUEUED


# Body size.


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    while total > 0:
        yield b"x" * min(size, total)
        total -= size


@pytest.mark.parametrize("path", [NOTION, SQUARE])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_bodies_over_the_limit_are_refused(
    http: httpx.Client, redis_client: redis.Redis, path: str, chunked: bool
) -> None:
    # Given a body one byte over the limit, announced or streamed
    size = MAX_BODY_BYTES + 1
    content: bytes | Iterator[bytes] = _chunks(size) if chunked else b"x" * size

    # When it is posted
    response = http.post(path, content=content)

    # Then it is refused as too large, and the connection can still be used
    assert response.status_code == 413, response.text
    assert response.json()["outcome"] == "too_large"
    assert http.get("/healthz").status_code == 200
    assert queue_counts(redis_client) == NOTHING_QUEUED


def test_a_body_at_the_limit_is_read(http: httpx.Client) -> None:
    # Given an unsigned body exactly at the limit, streamed in chunks
    # When it is posted, then it is read whole and refused for its signature, not its size
    response = http.post(NOTION, content=_chunks(MAX_BODY_BYTES))
    assert response.status_code == 401, response.text


def test_an_oversized_announcement_is_refused_before_the_body(receiver: Receiver) -> None:
    # Given a request announcing a 2 GB body, of which nothing is sent
    import socket

    port = int(receiver.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /webhooks/notion HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000000\r\n\r\n")

        # When the receiver answers, then it is 413 at once (it did not wait for the body)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


# Square.


def _payment(payment_id: str = "PAY_1") -> dict[str, Any]:
    return {
        "type": "payment",
        "id": payment_id,
        "object": {"payment": {"id": payment_id, "status": "COMPLETED"}},
    }


def test_payment_updated_enqueues_an_upsert(http: httpx.Client, redis_client: redis.Redis) -> None:
    # Given a payment.updated event
    event = square_event("payment.updated", _payment("PAY_42"))

    # When it is delivered
    response = _post_square(http, event)

    # Then one RecordUpsert of the payment waits on the square queue
    assert response.status_code == 200, response.text
    [message] = queued(redis_client, "square")
    assert message["actor_name"] == "upsert_square_record"
    upsert = RecordUpsert.model_validate(message["kwargs"]["payload"])
    assert (upsert.kind, upsert.record_id, upsert.event_id) == ("payment", "PAY_42", event["event_id"])
    assert upsert.deleted_at is None
    assert upsert.record is None
    assert upsert.request_id == f"webhook-square-{event['event_id']}"
    key = EVENT_KEY.format(provider="square", event_id=event["event_id"])
    assert 3 * 86_400 < redis_client.ttl(key) <= 4 * 86_400


@pytest.mark.parametrize("event_type", ["payment.created", "customer.created", "customer.updated"])
def test_record_events_enqueue_an_upsert(
    http: httpx.Client, redis_client: redis.Redis, event_type: str
) -> None:
    # Given a created or updated event of a record
    kind = event_type.split(".")[0]
    data = {"type": kind, "id": "REC_1", "object": {kind: {"id": "REC_1"}}}

    # When it is delivered, then an upsert of that record is enqueued
    assert _post_square(http, square_event(event_type, data)).status_code == 200
    [payload] = _payloads(redis_client, "square")
    assert (payload["kind"], payload["record_id"], payload["deleted_at"]) == (kind, "REC_1", None)


def test_customer_deleted_enqueues_a_deletion(http: httpx.Client, redis_client: redis.Redis) -> None:
    # Given a customer.deleted event carrying the customer as it was
    customer = {"id": "CUST_9", "given_name": "Ada", "version": 3}
    data = {"type": "customer", "id": "CUST_9", "deleted": True, "object": {"customer": customer}}
    event = square_event("customer.deleted", data, created_at="2025-06-02T08:00:00Z")

    # When it is delivered
    assert _post_square(http, event).status_code == 200

    # Then the upsert marks the customer deleted at the event's time and keeps its last state
    [payload] = _payloads(redis_client, "square")
    upsert = RecordUpsert.model_validate(payload)
    assert (upsert.kind, upsert.record_id) == ("customer", "CUST_9")
    assert upsert.deleted_at == datetime(2025, 6, 2, 8, 0, tzinfo=UTC)
    assert upsert.record == customer


def test_customer_deleted_without_the_object(http: httpx.Client, redis_client: redis.Redis) -> None:
    # Given a deletion event without data.object
    event = square_event("customer.deleted", {"type": "customer", "id": "CUST_8", "deleted": True})

    # When it is delivered, then the deletion is enqueued without a record
    assert _post_square(http, event).status_code == 200
    [payload] = _payloads(redis_client, "square")
    assert payload["record"] is None
    assert payload["deleted_at"] is not None


def test_catalog_version_updated_enqueues_an_items_sync(
    http: httpx.Client, redis_client: redis.Redis
) -> None:
    # Given a catalog.version.updated event (it names no object)
    data = {
        "type": "catalog_version",
        "object": {"catalog_version": {"updated_at": "2025-06-01T12:00:00.000Z"}},
    }
    event = square_event("catalog.version.updated", data)

    # When it is delivered, then an incremental sync of the items stream is enqueued
    assert _post_square(http, event).status_code == 200
    [message] = queued(redis_client, "square")
    assert message["actor_name"] == "sync_square_stream"
    sync = SyncRequest.model_validate(message["kwargs"]["payload"])
    assert (sync.source, sync.stream) == ("square", "items")


def test_square_retries_are_enqueued_once(http: httpx.Client, redis_client: redis.Redis) -> None:
    # Given a payment event delivered once
    event = square_event("payment.updated", _payment())
    assert _post_square(http, event).json()["outcome"] == "accepted"

    # When Square delivers it again, then it is a duplicate and nothing more is enqueued
    again = _post_square(http, event)
    assert again.status_code == 200
    assert again.json()["outcome"] == "duplicate"
    assert len(queued(redis_client, "square")) == 1


def test_unknown_square_types_are_acknowledged_but_not_enqueued(
    http: httpx.Client, redis_client: redis.Redis
) -> None:
    # Given a valid, signed event of a type possync does not process
    event = square_event("inventory.count.updated", {"type": "inventory", "id": "INV_1", "object": {}})

    # When it is delivered, then it is answered 202 and nothing is enqueued or remembered
    response = _post_square(http, event)
    assert response.status_code == 202, response.text
    assert response.json()["outcome"] == "unknown_type"
    assert queue_counts(redis_client) == NOTHING_QUEUED
    assert redis_client.exists(EVENT_KEY.format(provider="square", event_id=event["event_id"])) == 0


@pytest.mark.parametrize(
    "sign",
    [
        pytest.param(lambda body: {}, id="missing"),
        pytest.param(lambda body: sign_square(body, key="another-key"), id="wrong-key"),
        pytest.param(lambda body: sign_square(body, url="https://elsewhere.test/hook"), id="other-url"),
        pytest.param(lambda body: sign_square(body + b" "), id="other-body"),
        pytest.param(lambda body: {"x-square-hmacsha256-signature": "não".encode("latin-1")}, id="non-ascii"),
    ],
)
def test_badly_signed_square_events_are_refused(
    http: httpx.Client, redis_client: redis.Redis, sign: Any
) -> None:
    # Given a valid payment event
    body = encode(square_event("payment.updated", _payment()))

    # When it is delivered with a missing or wrong signature
    response = http.post(SQUARE, content=body, headers=sign(body))

    # Then it is refused and nothing is enqueued
    assert response.status_code == 401, response.text
    assert response.json()["outcome"] == "bad_signature"
    assert queue_counts(redis_client) == NOTHING_QUEUED


MALFORMED_SQUARE: list[Any] = [
    pytest.param(b"{", id="not-json"),
    pytest.param(b"[1]", id="array"),
    pytest.param(encode(_without(square_event("payment.updated", _payment()), "event_id")), id="no-event-id"),
    pytest.param(
        encode(_without(square_event("payment.updated", _payment()), "merchant_id")), id="no-merchant"
    ),
    pytest.param(encode(_without(square_event("payment.updated", _payment()), "data")), id="no-data"),
    pytest.param(
        encode(square_event("payment.updated", _payment(), created_at="2025-06-01")), id="date-only"
    ),
    pytest.param(encode(square_event("payment.updated", {"type": "payment"})), id="payment-without-id"),
    pytest.param(
        encode(square_event("payment.updated", {"type": "payment", "id": ""})), id="payment-empty-id"
    ),
    pytest.param(encode(square_event("payment.updated", {"id": "P"})), id="data-without-type"),
    pytest.param(
        encode(square_event("payment.updated", {**_payment(), "deleted": "yes"})), id="deleted-not-bool"
    ),
    pytest.param(
        encode(
            square_event("customer.deleted", {"type": "customer", "id": "C", "object": {"customer": [1]}})
        ),
        id="customer-not-object",
    ),
]


@pytest.mark.parametrize("body", MALFORMED_SQUARE)
def test_malformed_square_events_are_refused(
    http: httpx.Client, redis_client: redis.Redis, body: bytes
) -> None:
    # When a correctly signed but malformed body is delivered, then it is refused and nothing enqueued
    response = http.post(SQUARE, content=body, headers=sign_square(body))
    assert response.status_code == 400, response.text
    assert response.json()["outcome"] == "malformed"
    assert queue_counts(redis_client) == NOTHING_QUEUED


def test_square_route_without_settings_answers_503(
    make_receiver: Any, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    # Given a receiver without POSSYNC_SQUARE_WEBHOOK_SIGNATURE_KEY / _URL
    bare = make_receiver(redis_server.url)
    body = encode(square_event("payment.updated", _payment()))

    # When a Square event arrives
    response = httpx.post(bare.base_url + SQUARE, content=body, headers=sign_square(body), timeout=15)

    # Then it is answered 503 with a reason (Square will retry), and nothing is enqueued
    assert response.status_code == 503, response.text
    assert "POSSYNC_SQUARE_WEBHOOK_SIGNATURE_KEY" in response.json()["detail"]
    assert response.headers["Retry-After"].isdigit()
    assert queue_counts(redis_client) == NOTHING_QUEUED
    # And the start-up log said so
    assert any(line.get("event") == "square_webhooks_disabled" for line in bare.log_lines())


# De-duplication under failures.


def test_a_delivery_racing_an_unfinished_one_is_told_to_retry(
    http: httpx.Client, redis_client: redis.Redis
) -> None:
    # Given an event whose id is claimed by a delivery still being enqueued
    record_token(redis_client)
    event = notion_event()
    key = EVENT_KEY.format(provider="notion", event_id=event["id"])
    redis_client.set(key, "pending", ex=30)

    # When another delivery of it arrives
    response = _post_notion(http, event)

    # Then it is answered 409 with Retry-After, not 200 (the event is not kept yet)
    assert response.status_code == 409, response.text
    assert response.headers["Retry-After"].isdigit()
    assert queue_counts(redis_client) == NOTHING_QUEUED

    # When the claim lapses (the first delivery failed), then a redelivery is accepted
    redis_client.delete(key)
    assert _post_notion(http, event).status_code == 200
    assert len(queued(redis_client, "notion")) == 1


def test_a_failed_enqueue_answers_503_and_releases_the_claim(
    http: httpx.Client, redis_client: redis.Redis
) -> None:
    # Given a queue whose message hash Redis refuses to write (a key of the wrong type)
    record_token(redis_client)
    redis_client.set("dramatiq:notion.msgs", "not a hash")
    event = notion_event()

    # When an event arrives
    response = _post_notion(http, event)

    # Then it is answered 503 and its id is not kept as received
    assert response.status_code == 503, response.text
    assert response.json()["outcome"] == "unavailable"
    assert redis_client.exists(EVENT_KEY.format(provider="notion", event_id=event["id"])) == 0

    # When the queue is writable again, then the redelivery is accepted
    redis_client.delete("dramatiq:notion.msgs")
    assert _post_notion(http, event).json()["outcome"] == "accepted"
    assert len(queued(redis_client, "notion")) == 1


def test_redis_outage_answers_503_and_recovers_without_restart(make_receiver: Any, tmp_path: Any) -> None:
    # Given a receiver on its own Redis, with the Notion key from Redis and Square configured
    server = RedisServer.start(data_dir=tmp_path / "redis")
    try:
        client = redis.Redis.from_url(server.url, socket_timeout=5)
        record_token(client)
        receiver = make_receiver(
            server.url, square_webhook_signature_key=SQUARE_KEY, square_webhook_url=SQUARE_URL
        )
        with httpx.Client(base_url=receiver.base_url, timeout=15) as http:
            assert _post_notion(http, notion_event()).status_code == 200

            # When Redis stops
            server.stop()

            # Then events are answered 503 with Retry-After (never 200: they were not kept)
            during = [notion_event() for _ in range(3)]
            for event in during:
                response = _post_notion(http, event)
                assert response.status_code == 503, response.text
                assert response.headers["Retry-After"].isdigit()
            square = square_event("payment.updated", _payment())
            assert _post_square(http, square).status_code == 503
            assert http.post(NOTION, json={"verification_token": "secret_x"}).status_code == 503
            # And the receiver says it is not ready, though alive
            ready = http.get("/readyz")
            assert ready.status_code == 503
            assert ready.headers["Retry-After"].isdigit()
            assert http.get("/healthz").status_code == 200

            # When Redis comes back on the same port (empty: no AOF in this test)
            server.restart()
            record_token(client)

            # Then the receiver is ready again and the redelivered events are accepted
            wait_until(
                lambda: http.get("/readyz").status_code == 200,
                timeout_seconds=15,
                message="never ready again",
            )
            for event in during:
                assert _post_notion(http, event).json()["outcome"] == "accepted"
            assert _post_square(http, square).json()["outcome"] == "accepted"
            assert [p["event_id"] for p in _payloads(client, "notion")] == [e["id"] for e in during]
            assert len(queued(client, "square")) == 1
        client.close()
    finally:
        server.close()


def test_a_redis_that_does_not_answer_gives_503_within_the_timeout(make_receiver: Any, tmp_path: Any) -> None:
    # Given a receiver on its own Redis, verified events flowing
    server = RedisServer.start(data_dir=tmp_path / "redis")
    try:
        client = redis.Redis.from_url(server.url, socket_timeout=10)
        record_token(client)
        receiver = make_receiver(server.url)
        with httpx.Client(base_url=receiver.base_url, timeout=15) as http:
            assert _post_notion(http, notion_event()).status_code == 200

            # When Redis stops answering for longer than the receiver's 2 s deadline
            client.execute_command("CLIENT", "PAUSE", "3000", "ALL")
            started = time.monotonic()
            response = _post_notion(http, notion_event())
            elapsed = time.monotonic() - started

            # Then the event is answered 503 once the deadline passes, well within Square's 10 s
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"].isdigit()
            assert elapsed < 8, elapsed

            # And once Redis answers again, so does the receiver, without a restart
            wait_until(
                lambda: _post_notion(http, notion_event()).status_code == 200,
                timeout_seconds=20,
                message="events are not accepted after Redis answered again",
            )
        client.close()
    finally:
        server.close()


# Operations.


def test_health_readiness_and_metrics(
    receiver: Receiver, http: httpx.Client, redis_client: redis.Redis
) -> None:
    # Given the counts so far
    before = _event_counts(receiver)
    record_token(redis_client)

    # When an event is accepted and a bad signature refused
    assert _post_notion(http, notion_event()).status_code == 200
    assert (
        http.post(SQUARE, content=b"{}", headers={"x-square-hmacsha256-signature": "AAAA"}).status_code == 401
    )

    # Then /metrics counts both, by provider and outcome
    after = _event_counts(receiver)
    assert after[("notion", "accepted")] == before.get(("notion", "accepted"), 0) + 1
    assert after[("square", "bad_signature")] == before.get(("square", "bad_signature"), 0) + 1
    metrics = http.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    # And the process and Redis are reported up
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").json() == {"status": "ready"}


def test_wrong_methods_and_paths(http: httpx.Client) -> None:
    assert http.get(NOTION).status_code == 405
    assert http.post("/healthz").status_code == 405
    assert http.post("/webhooks/lightspeed", content=b"{}").status_code == 404


def test_openapi_document_describes_every_route(receiver: Receiver, http: httpx.Client) -> None:
    # When the document is fetched
    response = http.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()

    # Then it is an OpenAPI 3.1 document with every route and method the receiver serves
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"]
    paths = document["paths"]
    expected = {
        "/webhooks/notion": "post",
        "/api/notion/webhook": "post",
        "/webhooks/square": "post",
        "/healthz": "get",
        "/readyz": "get",
        "/metrics": "get",
        "/openapi.json": "get",
    }
    assert {path: next(iter(item)) for path, item in paths.items()} == expected
    # And each webhook route declares its body, signature header and every status it answers
    notion_statuses = {"200", "400", "401", "409", "413", "503"}
    for path in ("/webhooks/notion", "/api/notion/webhook"):
        operation = paths[path]["post"]
        assert set(operation["responses"]) == notion_statuses
        assert [p["name"] for p in operation["parameters"]] == ["X-Notion-Signature"]
        assert "application/json" in operation["requestBody"]["content"]
    square = paths["/webhooks/square"]["post"]
    assert set(square["responses"]) == notion_statuses | {"202"}
    assert [(p["name"], p["in"], p["required"]) for p in square["parameters"]] == [
        ("x-square-hmacsha256-signature", "header", True)
    ]
    assert set(paths["/readyz"]["get"]["responses"]) == {"200", "503"}
    for status in ("409", "503"):
        assert "Retry-After" in square["responses"][status]["headers"]
    # And every schema is a valid OpenAPI 3.1 schema, every reference resolves
    for schema in document["components"]["schemas"].values():
        OAS31Validator.check_schema(schema)
    text = json.dumps(document)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        node: Any = document
        for step in ref.removeprefix("#/").split("/"):
            node = node[step]
        assert isinstance(node, dict), ref

    # And the published schemas accept real events and refuse malformed ones, as the receiver does
    def validator(model: str) -> Draft202012Validator:
        return Draft202012Validator(
            {"$ref": f"#/components/schemas/{model}", "components": document["components"]}
        )

    assert validator("NotionEvent").is_valid(notion_event())
    assert not validator("NotionEvent").is_valid(_without(notion_event(), "id"))
    assert not validator("NotionEvent").is_valid(notion_event(timestamp="1700000000"))
    assert validator("NotionHandshake").is_valid({"verification_token": "secret_x"})
    assert validator("SquareEvent").is_valid(square_event("payment.updated", _payment()))
    assert not validator("SquareEvent").is_valid(
        _without(square_event("payment.updated", _payment()), "event_id")
    )
    assert validator("WebhookAnswer").is_valid(http.post(NOTION, content=b"{}").json())


def test_receiver_stops_cleanly(make_receiver: Any, redis_server: RedisServer) -> None:
    # Given a running receiver
    running = make_receiver(redis_server.url)

    # When it is asked to stop (SIGTERM), then it exits with status 0 after a graceful shutdown
    assert running.stop() == 0
    assert any(line.get("event") == "webhooks_stopped" for line in running.log_lines())


@pytest.mark.parametrize("from_stdin", [False, True], ids=["argument", "stdin"])
def test_cli_replaces_the_recorded_token(redis_client: redis.Redis, redis_url: str, from_stdin: bool) -> None:
    # Given a token recorded by a handshake
    record_token(redis_client, "secret_old")
    env = {name: value for name, value in os.environ.items() if not name.startswith("POSSYNC_")}
    env["POSSYNC_REDIS_URL"] = redis_url

    # When an operator replaces it with the command
    token = "-" if from_stdin else "secret_new"
    result = subprocess.run(
        [sys.executable, "-m", "producers.cli", "webhooks", "--set-notion-verification-token", token],
        input="secret_new\n" if from_stdin else None,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )

    # Then the new token is recorded, and never printed
    assert result.returncode == 0, result.stderr
    assert redis_client.get(NOTION_TOKEN_KEY) == b"secret_new"
    assert "secret_new" not in result.stdout + result.stderr


def test_the_receiver_never_loads_bigquery_or_workers() -> None:
    # When the receiver's module is imported, then neither the BigQuery client nor any actor,
    # source or sink is loaded
    code = (
        "import sys, producers.webhooks\n"
        "bad = [m for m in sys.modules if m.startswith(('google.cloud.bigquery', 'workers.actors',"
        " 'workers.sources', 'workers.sinks'))]\n"
        "print(bad)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_request_ids_are_truncated_to_128_characters(http: httpx.Client, redis_client: redis.Redis) -> None:
    # Given an event id of 255 characters (the most accepted)
    record_token(redis_client)
    event = notion_event(id="e" * 255)

    # When it is delivered, then the message's request id is cut to 128 characters
    assert _post_notion(http, event).status_code == 200
    [payload] = _payloads(redis_client, "notion")
    assert payload["event_id"] == "e" * 255
    assert payload["request_id"] == ("webhook-notion-" + "e" * 255)[:128]
