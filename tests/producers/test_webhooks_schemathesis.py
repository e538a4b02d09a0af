"""Schemathesis against the webhook receiver's OpenAPI document, on a real ``possync webhooks``.

The cases come from the document the receiver serves (the first test checks that it is the one
:func:`producers.webhook_openapi.openapi_document` builds, which schemathesis loads here at import
time, before any receiver runs). Every operation gets schemathesis' three phases: the document's
examples, its coverage cases (boundary values, missing required headers, methods the document does
not declare) and hypothesis fuzzing, valid and invalid data alike; bounded and derandomized.

- As generated (no valid signature: schemathesis cannot compute an HMAC): every built-in check
  passes (no 5xx; every status, content type, header and body declared by the document; invalid
  data refused; missing required headers refused; undeclared methods 405 with ``Allow``), and after
  each request Redis holds no message on any queue and no event claim; the recorded Notion token is
  never replaced by a generated handshake.
- Re-signed correctly by the test: every generated body still gets a declared status and never a
  5xx; a body the receiver accepts is enqueued exactly once, as a payload the worker's schema
  accepts, and anything else leaves the queues untouched.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
import requests
import schemathesis
from hypothesis import HealthCheck, event, settings
from schemathesis.core import NOT_SET
from schemathesis.core.result import Ok
from schemathesis.specs.openapi import checks as openapi_checks

from producers.webhook_intake import EVENT_KEY
from producers.webhook_openapi import NOTION_PATHS, SQUARE_PATH, openapi_document
from producers.webhooks import NOTION_TOKEN_KEY
from sandbox.redis_server import RedisServer
from schemas.messages import ROUTES
from tests.producers.conftest import (
    MAX_BODY_BYTES,
    NOTION_TOKEN,
    Receiver,
    queued,
    record_token,
    sign_notion,
    sign_square,
)

#: Fuzzed cases per operation and test (the examples and coverage phases add their own, about 150
#: per webhook route); about 20 s for the whole module on a 2-core machine.
FUZZED_EXAMPLES = 75
#: Fixed, so that a failure reproduces; the explicit config also keeps a stray schemathesis.toml out.
SEED = 20_251_128
CONFIG = schemathesis.Config.from_dict({"seed": SEED, "generation": {"deterministic": True}})
DOCUMENT = openapi_document(max_body_bytes=MAX_BODY_BYTES)
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)
#: The webhook routes only, for the re-signed cases.
WEBHOOK_SCHEMA = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG).include(
    method="POST", path_regex="^/(webhooks|api)/"
)
CASE_SETTINGS = settings(
    max_examples=FUZZED_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
WEBHOOK_PATHS = (*NOTION_PATHS, SQUARE_PATH)
#: For the re-signed cases: no 5xx, and the status code, content type, headers and body declared.
#: Not the data-acceptance checks: the test itself decides the signature, so schemathesis' idea of
#: which requests are valid no longer applies.
SIGNED_CHECKS = [
    schemathesis.checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.response_schema_conformance,
]
#: Outcomes a request without a valid signature may get: refused, or a handshake (which records
#: nothing here, as a token is recorded already).
UNSIGNED_OUTCOMES = {"bad_signature", "handshake", "malformed", "too_large"}


@pytest.fixture(scope="module")
def store(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """The session's Redis, emptied once for this module, with the Notion token recorded."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    record_token(client)
    yield client
    client.close()


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    """One connection pool for the generated cases (schemathesis sends with requests)."""
    with requests.Session() as client:
        yield client


@pytest.fixture(scope="module")
def http(receiver: Receiver) -> Iterator[httpx.Client]:
    """One connection pool for the re-signed cases."""
    with httpx.Client(base_url=receiver.base_url, timeout=30) as client:
        yield client


def _kept(store: redis.Redis) -> dict[str, Any]:
    """What requests may have left in Redis: any Dramatiq key, any event claim, and the token."""
    return {
        "dramatiq": sorted(store.scan_iter("dramatiq:*")),
        "claims": sorted(store.scan_iter("possync:webhooks:*")),
        "token": store.get(NOTION_TOKEN_KEY),
    }


NOTHING_KEPT = {"dramatiq": [], "claims": [], "token": NOTION_TOKEN.encode()}


def test_the_receiver_serves_the_document_the_cases_come_from(receiver: Receiver) -> None:
    # When the receiver's document is fetched
    response = httpx.get(receiver.base_url + "/openapi.json", timeout=15)

    # Then it is the one the cases below are generated from, and every webhook route is in it
    assert response.status_code == 200
    assert response.json() == json.loads(json.dumps(DOCUMENT))
    # And schemathesis reads every operation of it (none is skipped as invalid)
    results = list(SCHEMA.get_all_operations())
    assert all(isinstance(result, Ok) for result in results), results
    paths = {result.ok().path for result in results if isinstance(result, Ok)}
    assert paths == set(DOCUMENT["paths"])
    assert paths >= set(WEBHOOK_PATHS)


@SCHEMA.parametrize()
@CASE_SETTINGS
def test_generated_requests_get_declared_answers_and_keep_nothing(
    case: schemathesis.Case, receiver: Receiver, store: redis.Redis, session: requests.Session
) -> None:
    # Given the receiver, Square configured and a Notion token recorded, and a generated request
    # (schema-valid or not; its signature, if any, is not the right one)
    # When it is sent
    response = case.call(base_url=receiver.base_url, session=session, timeout=30)
    event(f"{case.method} {case.path} {response.status_code}")

    # Then every schemathesis check passes: no 5xx, and the status, content type, headers and
    # body are the ones the document declares; invalid data and missing headers are refused
    case.validate_response(response)
    assert response.status_code < 500, response.text
    # And a webhook route never accepts it: refused, or a handshake that changes nothing
    if case.method == "POST" and case.path in WEBHOOK_PATHS:
        assert response.json()["outcome"] in UNSIGNED_OUTCOMES, response.text
    # And nothing reached Redis: no message on any queue, no event claim, the same Notion token
    assert _kept(store) == NOTHING_KEPT


def _body_bytes(case: schemathesis.Case) -> bytes:
    """The body as the providers send it: minified JSON (none when the case has no body; raw bytes
    as generated, for the cases that probe other media types)."""
    if case.body is NOT_SET:
        return b""
    if isinstance(case.body, bytes):
        return case.body
    return json.dumps(case.body, separators=(",", ":")).encode()


def _signed(path: str, body: bytes) -> dict[str, str]:
    return sign_square(body) if path == SQUARE_PATH else sign_notion(body)


@WEBHOOK_SCHEMA.parametrize()
@CASE_SETTINGS
def test_generated_bodies_signed_correctly_are_enqueued_once_or_refused(
    case: schemathesis.Case, http: httpx.Client, store: redis.Redis
) -> None:
    # Given an empty Redis but for the recorded Notion token, and a generated body (valid or not)
    # carrying the right signature
    store.flushdb()
    record_token(store)
    body = _body_bytes(case)

    # When it is delivered
    response = http.request(case.method, case.formatted_path, content=body, headers=_signed(case.path, body))
    outcome = response.json()["outcome"] if case.method == "POST" else None
    event(f"{case.path} {response.status_code} {outcome}")

    # Then the answer is declared by the document, and never a 5xx
    case.validate_response(response, checks=SIGNED_CHECKS)
    assert response.status_code < 500, response.text
    # And an accepted event is enqueued exactly once, with its claim, as a payload its actor takes;
    # any other answer enqueues nothing and claims nothing
    queue = "square" if case.path == SQUARE_PATH else "notion"
    messages = queued(store, queue)
    if outcome == "accepted":
        [message] = messages
        route = ROUTES[message["actor_name"]]
        assert route.queue == queue
        route.payload.model_validate(message["kwargs"]["payload"])
        provider = "square" if case.path == SQUARE_PATH else "notion"
        event_id = json.loads(body)["event_id" if provider == "square" else "id"]
        assert (
            store.get(EVENT_KEY.format(provider=provider, event_id=event_id))
            == message["message_id"].encode()
        )
    else:
        assert messages == []
        assert list(store.scan_iter("possync:webhooks:*")) == []
    assert queued(store, "notion" if queue == "square" else "square") == []
