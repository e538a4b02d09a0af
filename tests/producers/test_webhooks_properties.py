"""Property tests of the webhook receiver: 2,000 generated requests against one running receiver.

Half are correctly signed but malformed in shape or content (missing or mistyped fields, bad
timestamps, bad identifiers, extra nesting, non-objects, invalid UTF-8, empty or oversized bodies);
the other half carry random bodies with a missing or wrong signature. Whatever arrives, the
receiver never answers 5xx, and nothing reaches the queues: after every request, the queues, their
message hashes and the de-duplication claims are checked in Redis itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from producers.webhooks import NOTION_TOKEN_KEY
from sandbox.redis_server import RedisServer
from tests.producers.conftest import (
    MAX_BODY_BYTES,
    NOTION_TOKEN,
    Receiver,
    encode,
    notion_event,
    record_token,
    sign_notion,
    sign_square,
    square_event,
)

#: Examples per test; two tests make the 2,000 requests.
EXAMPLES = 1_000
PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PATHS = {"notion": "/webhooks/notion", "square": "/webhooks/square"}
_RFC3339_START = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]")


@pytest.fixture(scope="module")
def store(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """The session's Redis, emptied once for this module, with the Notion token recorded."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    record_token(client)
    yield client
    client.close()


@pytest.fixture(scope="module")
def http(receiver: Receiver, store: redis.Redis) -> Iterator[httpx.Client]:
    """One client for every example."""
    with httpx.Client(base_url=receiver.base_url, timeout=30) as client:
        yield client


def _assert_nothing_kept(store: redis.Redis) -> None:
    pipe = store.pipeline(transaction=False)
    for queue in ("notion", "square"):
        pipe.llen(f"dramatiq:{queue}")
        pipe.hlen(f"dramatiq:{queue}.msgs")
    pipe.keys("possync:webhooks:*")
    pipe.get(NOTION_TOKEN_KEY)
    *counts, claims, token = pipe.execute()
    assert counts == [0, 0, 0, 0], f"something was enqueued: {counts}"
    assert claims == [], f"event ids were claimed: {claims}"
    assert token == NOTION_TOKEN.encode(), "the recorded Notion token changed"


# Values.

NON_NULL_SCALARS = st.one_of(
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
JSON_SCALARS = st.one_of(st.none(), NON_NULL_SCALARS)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
NOT_A_STRING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(JSON_SCALARS, max_size=3),
    st.dictionaries(st.text(max_size=5), JSON_SCALARS, max_size=3),
)
#: JSON that is neither an object nor null (where an optional object is expected).
NEITHER_OBJECT_NOR_NULL = st.one_of(NON_NULL_SCALARS, st.lists(JSON_VALUES, max_size=4))
NOT_AN_OBJECT = st.one_of(st.none(), NEITHER_OBJECT_NOR_NULL)
BAD_TIMESTAMPS = st.one_of(
    st.sampled_from(
        [
            "",
            "yesterday",
            "1700000000",
            "2025-06-01",
            "2025-06-01T12:34:56",
            "2025-06-01 12:34:56Z",
            "2025-06-01T12:34Z",
            "2025-06-01T12:34:56+0100",
            "2025-13-01T00:00:00Z",
            "2025-02-30T00:00:00Z",
            "2025-06-01T25:00:00Z",
            "2025-06-01T12:34:56.1234567890Z",
            "+2025-06-01T00:00:00Z",
            "01/06/2025 12:00",
        ]
    ),
    st.text(max_size=40).filter(lambda text: not _RFC3339_START.match(text)),
    st.integers(0, 2**40),
    NOT_A_STRING,
)
#: Identifiers the receiver must refuse: empty, with spaces or non-ASCII, or over 255 characters.
BAD_IDS = st.one_of(
    st.just(""),
    st.text(min_size=1, max_size=30).filter(lambda text: not re.fullmatch(r"[!-~]+", text)),
    st.integers(256, 4_000).map(lambda n: "i" * n),
    NOT_A_STRING,
)
#: Bytes that are not UTF-8, to splice into an otherwise valid body.
INVALID_UTF8 = st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"])


def _deep(depth: int) -> Any:
    value: Any = "bottom"
    for level in range(depth):
        value = [value] if level % 2 else {"n": value}
    return value


@st.composite
def _notion_base(draw: st.DrawFn) -> dict[str, Any]:
    event_type = draw(st.sampled_from(["page.created", "page.content_updated", "comment.created", "x.y"]))
    return notion_event(event_type, id=str(draw(st.uuids())))


@st.composite
def _square_base(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(
        st.sampled_from(["payment.updated", "customer.deleted", "catalog.version.updated", "refund.created"])
    )
    record_id = f"ID{draw(st.integers(0, 10**6))}"
    data: dict[str, Any] = {"type": kind.split(".")[0], "id": record_id, "object": {}}
    event = square_event(kind, data)
    event["event_id"] = str(draw(st.uuids()))
    return event


def _set(event: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    changed = json.loads(json.dumps(event))
    node = changed
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return changed


def _drop(event: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    changed = json.loads(json.dumps(event))
    node = changed
    for step in path[:-1]:
        node = node[step]
    del node[path[-1]]
    return changed


@st.composite
def malformed_notion(draw: st.DrawFn) -> bytes:
    """A body that is not a valid Notion event, however it is signed."""
    event = draw(_notion_base())
    required = st.sampled_from([("id",), ("type",), ("timestamp",)])
    mutation = draw(
        st.sampled_from(
            [
                "drop",
                "mistype",
                "timestamp",
                "bad-id",
                "entity",
                "attempt",
                "data",
                "wrap",
                "deep",
                "non-object",
                "utf8",
                "empty",
                "garbage",
                "nan",
                "surrogate",
                "huge",
            ]
        )
    )
    if mutation == "drop":
        return encode(_drop(event, draw(required)))
    if mutation == "mistype":
        return encode(_set(event, draw(required), draw(NOT_A_STRING)))
    if mutation == "timestamp":
        return encode(_set(event, ("timestamp",), draw(BAD_TIMESTAMPS)))
    if mutation == "bad-id":
        path = draw(st.sampled_from([("id",), ("type",), ("entity", "id"), ("entity", "type")]))
        return encode(_set(event, path, draw(BAD_IDS)))
    if mutation == "entity":
        return encode(_set(event, ("entity",), draw(st.one_of(NEITHER_OBJECT_NOR_NULL, st.just({})))))
    if mutation == "attempt":
        bad = st.one_of(
            st.integers(max_value=0),
            st.integers(min_value=1_000_001),
            st.text(max_size=3),
            st.booleans(),
            st.floats(allow_nan=False),
        )
        return encode(_set(event, ("attempt_number",), draw(bad)))
    if mutation == "data":
        return encode(_set(event, ("data",), draw(NEITHER_OBJECT_NOR_NULL)))
    if mutation == "wrap":
        return encode(draw(st.sampled_from([[event], {"event": event}, {"payload": event, "type": 1}])))
    if mutation == "deep":
        return encode(_set(event, ("data",), {"deep": _deep(draw(st.integers(65, 900)))}))
    if mutation == "non-object":
        return encode(draw(NOT_AN_OBJECT))
    if mutation == "utf8":
        body = encode(event)
        at = body.index(b'"Acme"') + 2
        return body[:at] + draw(INVALID_UTF8) + body[at:]
    if mutation == "empty":
        return b""
    if mutation == "garbage":
        return draw(st.binary(max_size=300))
    if mutation == "nan":
        return encode(event).replace(b'"workspace_name":"Acme"', b'"workspace_name":NaN', 1)
    if mutation == "surrogate":
        return (
            encode(event).replace(b'"Acme"', b'"\\udc00Acme"', 1).replace(event["id"].encode(), b"\\ud800", 1)
        )
    # huge: an identifier far over its limit, or a body over the size limit
    if draw(st.booleans()):
        return encode(_set(event, ("id",), "h" * draw(st.integers(256, 200_000))))
    return encode(_set(event, ("data",), {"pad": "p" * (MAX_BODY_BYTES + draw(st.integers(0, 1000)))}))


@st.composite
def malformed_square(draw: st.DrawFn) -> bytes:
    """A body that is not a valid Square event, however it is signed."""
    event = draw(_square_base())
    required = st.sampled_from(
        [("merchant_id",), ("type",), ("event_id",), ("created_at",), ("data",), ("data", "type")]
    )
    mutation = draw(
        st.sampled_from(
            [
                "drop",
                "mistype",
                "timestamp",
                "bad-id",
                "record-id",
                "deleted",
                "customer",
                "data",
                "wrap",
                "deep",
                "non-object",
                "utf8",
                "empty",
                "garbage",
                "huge",
            ]
        )
    )
    if mutation == "drop":
        return encode(_drop(event, draw(required)))
    if mutation == "mistype":
        path = draw(required)
        # A dict in place of ``data`` could be a valid ``data``: only non-objects there.
        return encode(_set(event, path, draw(NOT_AN_OBJECT if path == ("data",) else NOT_A_STRING)))
    if mutation == "timestamp":
        return encode(_set(event, ("created_at",), draw(BAD_TIMESTAMPS)))
    if mutation == "bad-id":
        path = draw(st.sampled_from([("merchant_id",), ("type",), ("event_id",), ("data", "type")]))
        return encode(_set(event, path, draw(BAD_IDS)))
    if mutation == "record-id":
        record = _set(event, ("type",), draw(st.sampled_from(["payment.created", "customer.updated"])))
        if draw(st.booleans()):
            return encode(_drop(record, ("data", "id")))
        return encode(_set(record, ("data", "id"), draw(st.one_of(st.just(""), BAD_IDS))))
    if mutation == "deleted":
        return encode(_set(event, ("data", "deleted"), draw(st.one_of(st.integers(), st.text(max_size=5)))))
    if mutation == "customer":
        deleted = _set(event, ("type",), "customer.deleted")
        return encode(_set(deleted, ("data", "object"), {"customer": draw(NEITHER_OBJECT_NOR_NULL)}))
    if mutation == "data":
        return encode(_set(event, ("data",), draw(NOT_AN_OBJECT)))
    if mutation == "wrap":
        return encode(draw(st.sampled_from([[event], {"event": event}])))
    if mutation == "deep":
        return encode(_set(event, ("data", "object"), {"deep": _deep(draw(st.integers(65, 900)))}))
    if mutation == "non-object":
        return encode(draw(NOT_AN_OBJECT))
    if mutation == "utf8":
        body = encode(event)
        at = body.index(b'"MLEFBHHSJGVHD"') + 2
        return body[:at] + draw(INVALID_UTF8) + body[at:]
    if mutation == "empty":
        return b""
    if mutation == "garbage":
        return draw(st.binary(max_size=300))
    if draw(st.booleans()):
        return encode(_set(event, ("event_id",), "h" * draw(st.integers(256, 200_000))))
    return encode(
        _set(event, ("data", "object"), {"pad": "p" * (MAX_BODY_BYTES + draw(st.integers(0, 1000)))})
    )


@given(provider=st.sampled_from(["notion", "square"]), data=st.data())
@PROPERTY_SETTINGS
def test_signed_malformed_bodies_are_refused(
    http: httpx.Client, store: redis.Redis, provider: str, data: st.DataObject
) -> None:
    # Given a malformed body, signed correctly
    body = data.draw(malformed_notion() if provider == "notion" else malformed_square(), label="body")
    headers = sign_notion(body) if provider == "notion" else sign_square(body)

    # When it is posted
    response = http.post(PATHS[provider], content=body, headers=headers)

    # Then it is refused as malformed (or too large), and nothing is kept
    event(f"{provider} {response.status_code}")
    expected = 413 if len(body) > MAX_BODY_BYTES else 400
    assert response.status_code == expected, (response.status_code, response.text, body[:300])
    assert response.json()["outcome"] == ("too_large" if expected == 413 else "malformed")
    _assert_nothing_kept(store)


@st.composite
def any_body(draw: st.DrawFn, provider: str) -> bytes:
    """A valid event, a malformed body, random bytes, or (for Notion) a handshake-shaped body."""
    choices = ["valid", "malformed", "random", "json"] + (["handshake"] if provider == "notion" else [])
    kind = draw(st.sampled_from(choices))
    if kind == "valid":
        return encode(draw(_notion_base() if provider == "notion" else _square_base()))
    if kind == "malformed":
        return draw(malformed_notion() if provider == "notion" else malformed_square())
    if kind == "random":
        return draw(st.binary(max_size=500))
    if kind == "json":
        return encode(draw(JSON_VALUES))
    token = draw(st.one_of(st.text(max_size=40), NOT_A_STRING))
    return encode(
        {"verification_token": token, **draw(st.dictionaries(st.sampled_from(["x", "type"]), JSON_SCALARS))}
    )


@st.composite
def bad_signature(draw: st.DrawFn, provider: str, body: bytes) -> bytes | None:
    """A signature header value that is not the right one for ``body`` (None: no header)."""
    right = (sign_notion(body) if provider == "notion" else sign_square(body))[
        "X-Notion-Signature" if provider == "notion" else "x-square-hmacsha256-signature"
    ]
    kind = draw(
        st.sampled_from(["none", "random", "wrong-key", "other-body", "flipped", "truncated", "case"])
    )
    if kind == "none":
        return None
    if kind == "random":
        value = draw(
            st.binary(max_size=120).map(lambda raw: bytes(b for b in raw if b >= 0x20 and b != 0x7F))
        )
    elif kind == "wrong-key":
        key = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=30))
        signed = sign_notion(body, key) if provider == "notion" else sign_square(body, key=key)
        value = next(iter(v for k, v in signed.items() if k != "Content-Type")).encode()
    elif kind == "other-body":
        other = body + draw(st.binary(min_size=1, max_size=10))
        signed = sign_notion(other) if provider == "notion" else sign_square(other)
        value = next(iter(v for k, v in signed.items() if k != "Content-Type")).encode()
    elif kind == "flipped":
        at = draw(st.integers(len(right) - 20, len(right) - 1))
        replacement = draw(st.sampled_from("0123456789abcdefABCDEF+/=").filter(lambda c: c != right[at]))
        value = (right[:at] + replacement + right[at + 1 :]).encode()
    elif kind == "truncated":
        value = right[: draw(st.integers(0, len(right) - 1))].encode()
    else:
        value = right.swapcase().encode()
    if value == right.encode():
        value += b"x"
    return value.strip()


def _handshake_shaped(body: bytes) -> bool:
    # RFC 8259 JSON only (orjson): no NaN, no lone surrogates, UTF-8.
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and "verification_token" in parsed and "type" not in parsed


@given(provider=st.sampled_from(["notion", "square"]), data=st.data())
@PROPERTY_SETTINGS
def test_bodies_without_a_valid_signature_are_never_kept(
    http: httpx.Client, store: redis.Redis, provider: str, data: st.DataObject
) -> None:
    # Given any body, with a missing or wrong signature
    body = data.draw(any_body(provider), label="body")
    signature = data.draw(bad_signature(provider, body), label="signature")
    header = "X-Notion-Signature" if provider == "notion" else "x-square-hmacsha256-signature"
    headers = [] if signature is None else [(header.encode(), signature)]

    # When it is posted
    response = http.post(PATHS[provider], content=body, headers=headers)

    event(f"{provider} {response.status_code}")
    # Then it is refused (a Notion handshake aside, which records nothing as one is recorded), never
    # 5xx, and nothing is kept
    assert response.status_code < 500, (response.status_code, response.text)
    if len(body) > MAX_BODY_BYTES:
        assert response.status_code == 413
    elif provider == "notion" and signature is None and _handshake_shaped(body):
        assert response.status_code in (200, 400), response.text
        assert response.json()["outcome"] in ("handshake", "malformed")
    else:
        assert response.status_code == 401, (response.status_code, response.text, body[:300], signature)
        assert response.json()["outcome"] == "bad_signature"
    _assert_nothing_kept(store)
