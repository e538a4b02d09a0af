"""Hostile bodies at the webhook receiver, beyond what ``test_webhooks.py`` already covers.

Already covered there (not repeated here): bodies one byte over the limit by Content-Length and
chunked, for both routes; a 2 GB announcement on the Notion route; a body exactly at the limit;
signed Latin-1 bodies on both routes; bare ``{``/``not json`` bodies. Added here, for both routes
unless said otherwise: the 2 GB announcement on the Square route; a Content-Length that lies low
with a chunked body over the limit; a body cut short in transfer (the client announces more than it
sends, then goes away); valid events cut short (truncated JSON), signed as sent and signed as they
were before the cut; and bodies in other encodings (UTF-16, UTF-32, a UTF-8 byte-order mark,
overlong and surrogate UTF-8 sequences). Each is answered 4xx (or gets no answer, when the client
left) and nothing reaches Redis: no message, no event claim; the receiver keeps serving.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from typing import Any

import httpx
import pytest
import redis

from tests.producers.conftest import (
    MAX_BODY_BYTES,
    Receiver,
    encode,
    notion_event,
    queue_counts,
    record_token,
    sign_notion,
    sign_square,
    square_event,
)

NOTION = "/webhooks/notion"
SQUARE = "/webhooks/square"
NOTHING_QUEUED = (0, 0, 0, 0)
#: How long a raw-socket exchange may take before the test fails, seconds.
EXCHANGE_SECONDS = 15.0


def _event(path: str) -> dict[str, Any]:
    """A valid event for the route: a Notion page event, or a Square payment update."""
    if path == NOTION:
        return notion_event()
    payment = {"type": "payment", "id": "PAY_1", "object": {"payment": {"id": "PAY_1"}}}
    return square_event("payment.updated", payment)


def _sign(path: str, body: bytes) -> dict[str, str]:
    return sign_notion(body) if path == NOTION else sign_square(body)


def _port(receiver: Receiver) -> int:
    return int(receiver.base_url.rsplit(":", 1)[1])


def _exchange(receiver: Receiver, request: bytes, *, close_write: bool = False) -> bytes:
    """Send raw bytes on a fresh connection; return what the receiver answered before closing or
    before its status line and headers were complete (b"" if it closed without answering).

    Args:
        receiver: the receiver to talk to.
        request: the bytes to send, exactly.
        close_write: shut our sending side afterwards, as a client that gives up mid-body does.
    """
    deadline = time.monotonic() + EXCHANGE_SECONDS
    answer = b""
    with socket.create_connection(("127.0.0.1", _port(receiver)), timeout=EXCHANGE_SECONDS) as sock:
        # The receiver may answer and close before taking all of it: then read its answer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        while b"\r\n\r\n" not in answer:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                raise AssertionError(
                    f"no answer within {EXCHANGE_SECONDS:g} s; got {answer[:200]!r}"
                ) from None
            if not chunk:
                break
            answer += chunk
    return answer


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _assert_still_serving(http: httpx.Client) -> None:
    assert http.get("/healthz").status_code == 200


@pytest.fixture
def token(redis_client: redis.Redis) -> None:
    """The Notion verification token recorded, so only the body decides."""
    record_token(redis_client)


def test_an_oversized_announcement_on_the_square_route_is_refused_before_the_body(
    receiver: Receiver, http: httpx.Client, redis_client: redis.Redis
) -> None:
    # Given a Square delivery announcing a 2 GB body, correctly "signed" for an empty one, of
    # which nothing is sent
    headers = "".join(f"{name}: {value}\r\n" for name, value in sign_square(b"").items())
    request = f"POST {SQUARE} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: 2000000000\r\n\r\n".encode()

    # When the receiver answers
    answer = _exchange(receiver, request)

    # Then it is 413 at once (it did not wait for the body), and nothing was kept
    assert _status(answer) == 413, answer[:300]
    assert queue_counts(redis_client) == NOTHING_QUEUED
    _assert_still_serving(http)


@pytest.mark.parametrize("path", [NOTION, SQUARE])
def test_a_content_length_lying_low_does_not_let_a_chunked_body_over_the_limit(
    receiver: Receiver, http: httpx.Client, redis_client: redis.Redis, token: None, path: str
) -> None:
    # Given a request that announces 10 bytes but sends a chunked body over the limit (both
    # headers: a smuggling attempt), the body a valid event padded past the limit and signed
    event = _event(path)
    event["data"] = {**event["data"], "pad": "p" * MAX_BODY_BYTES}
    body = encode(event)
    assert len(body) > MAX_BODY_BYTES
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(part), part)
        for part in (body[i : i + 65536] for i in range(0, len(body), 65536))
    )
    headers = "".join(f"{name}: {value}\r\n" for name, value in _sign(path, body).items())
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: 10\r\nTransfer-Encoding: chunked\r\n"
    request = head.encode() + b"\r\n" + chunks + b"0\r\n\r\n"

    # When it is sent
    answer = _exchange(receiver, request)

    # Then it is refused (by the HTTP parser, or as too large) and nothing was kept
    assert 400 <= _status(answer) < 500, answer[:300]
    assert queue_counts(redis_client) == NOTHING_QUEUED
    assert list(redis_client.scan_iter("possync:webhooks:*")) == []
    _assert_still_serving(http)


@pytest.mark.parametrize("path", [NOTION, SQUARE])
def test_a_body_cut_short_in_transfer_is_never_enqueued(
    receiver: Receiver, http: httpx.Client, redis_client: redis.Redis, token: None, path: str
) -> None:
    # Given a valid event, signed, whose client announces the whole body but sends half and leaves
    body = encode(_event(path))
    headers = "".join(f"{name}: {value}\r\n" for name, value in _sign(path, body).items())
    request = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {len(body)}\r\n\r\n".encode()
        + body[: len(body) // 2]
    )

    # When the connection is closed mid-body
    answer = _exchange(receiver, request, close_write=True)

    # Then nothing is enqueued or claimed (any answer that still came back is a 4xx)
    if answer:
        assert 400 <= _status(answer) < 500, answer[:300]
    assert queue_counts(redis_client) == NOTHING_QUEUED
    assert list(redis_client.scan_iter("possync:webhooks:*")) == []
    # And the receiver serves the next delivery of the same event normally
    response = http.post(path, content=body, headers=_sign(path, body))
    assert response.status_code == 200, response.text
    assert response.json()["outcome"] == "accepted"


@pytest.mark.parametrize("path", [NOTION, SQUARE])
@pytest.mark.parametrize("keep", [1, 0.5, -1], ids=["first-byte", "half", "all-but-last-byte"])
def test_truncated_json_is_refused(
    http: httpx.Client, redis_client: redis.Redis, token: None, path: str, keep: float
) -> None:
    # Given a valid event cut short
    body = encode(_event(path))
    cut = body[: int(len(body) * keep)] if isinstance(keep, float) else body[:keep]
    assert cut != body

    # When it arrives signed as sent (the sender truncated it), then it is malformed: 400
    response = http.post(path, content=cut, headers=_sign(path, cut))
    assert response.status_code == 400, response.text
    assert response.json() == {"outcome": "malformed", "detail": "the body is not valid JSON"}

    # When it arrives with the signature of the whole event (cut on the way), then it is 401
    response = http.post(path, content=cut, headers=_sign(path, body))
    assert response.status_code == 401, response.text
    assert response.json()["outcome"] == "bad_signature"

    # And nothing was kept
    assert queue_counts(redis_client) == NOTHING_QUEUED
    assert list(redis_client.scan_iter("possync:webhooks:*")) == []


def _encoded(path: str, encoding: str) -> bytes:
    text = json.dumps(_event(path), ensure_ascii=False)
    if encoding == "overlong":
        # "/" as the overlong two-byte sequence C0 AF, inside a string value
        return text.replace("Z", "Z\\u002f", 1).encode().replace(b"\\u002f", b"\xc0\xaf", 1)
    if encoding == "surrogate":
        # U+D800 encoded as if it were a character (CESU-8), which UTF-8 forbids
        return text.encode().replace(b'"type"', b'"\xed\xa0\x80type"', 1)
    return text.encode(encoding)


@pytest.mark.parametrize("path", [NOTION, SQUARE])
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "utf-8-sig", "overlong", "surrogate"])
def test_bodies_not_in_utf8_are_refused(
    http: httpx.Client, redis_client: redis.Redis, token: None, path: str, encoding: str
) -> None:
    # Given a valid event encoded otherwise than as plain UTF-8, correctly signed
    body = _encoded(path, encoding)

    # When it is delivered
    response = http.post(path, content=body, headers=_sign(path, body))

    # Then it is refused as malformed and nothing is kept
    assert response.status_code == 400, response.text
    assert response.json()["outcome"] == "malformed"
    assert queue_counts(redis_client) == NOTHING_QUEUED
    assert list(redis_client.scan_iter("possync:webhooks:*")) == []
