"""The Square sandbox's changes on request and its webhooks: GetPayment/RetrieveCustomer agree with the
listings, changes show in the API and the truth, and events arrive signed, retried and recorded.

Events are received by a small recording HTTP server on loopback, run in a thread by the test.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from square.utils.webhooks_helper import verify_signature

from sandbox.local_service import free_port
from sandbox.process import SandboxProcess
from tests.polling import wait_until
from tests.sandbox.conftest import EPOCH_BEGIN, client_for, paginate

SIGNATURE_KEY = "whsec-test-key"
#: The URL registered with "Square": signed with each body, and not where the sandbox POSTs.
NOTIFICATION_URL = "https://possync.example.com/webhooks/square"
SIGNATURE_HEADER = "x-square-hmacsha256-signature"
#: The sandbox's first retry waits this long, then twice as long, and so on.
RETRY_SECONDS = 0.05


@dataclass(frozen=True)
class Received:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.body)
        return body


class Receiver:
    """A recording webhook endpoint on 127.0.0.1: answers 200 unless told to answer otherwise."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._statuses: deque[int] = deque()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {name.lower(): value for name, value in self.headers.items()}
                with receiver._lock:
                    receiver.requests.append(Received(self.path, headers, body, time.monotonic()))
                    status = receiver._statuses.popleft() if receiver._statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """Where the sandbox should POST events."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/square"

    def answer_next(self, *statuses: int) -> None:
        """Answer the next requests with these statuses, in order (then 200 again)."""
        with self._lock:
            self._statuses.extend(statuses)

    def wait_for(self, count: int, timeout_seconds: float = 10.0) -> list[Received]:
        """The first ``count`` requests, once they have arrived."""

        def arrived() -> list[Received]:
            with self._lock:
                return list(self.requests) if len(self.requests) >= count else []

        found = wait_until(arrived, timeout_seconds=timeout_seconds, message=f"{count} webhook requests")
        return found[:count]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A running recording receiver, closed after the test."""
    started = Receiver()
    yield started
    started.close()


@pytest.fixture
def hooked(make_square: Callable[..., SandboxProcess], receiver: Receiver) -> SandboxProcess:
    """A private small sandbox delivering its events to ``receiver``, signed for NOTIFICATION_URL."""
    return make_square(
        webhook_url=receiver.url,
        webhook_signature_key=SIGNATURE_KEY,
        webhook_notification_url=NOTIFICATION_URL,
        webhook_retry_seconds=RETRY_SECONDS,
    )


def _expected_signature(body: bytes, *, key: str = SIGNATURE_KEY, url: str = NOTIFICATION_URL) -> str:
    """Square's signature, computed here independently of the sandbox."""
    return base64.b64encode(hmac.new(key.encode(), url.encode() + body, hashlib.sha256).digest()).decode()


def _finished(sandbox: SandboxProcess, count: int) -> list[dict[str, Any]]:
    """The first ``count`` deliveries, once every one of them has finished."""

    def done() -> list[dict[str, Any]]:
        deliveries = sandbox.admin.webhook_deliveries()
        ready = len(deliveries) >= count and all(d["finished"] for d in deliveries[:count])
        return deliveries[:count] if ready else []

    return wait_until(done, timeout_seconds=15, message=f"{count} finished webhook deliveries")


def _payment_with(sandbox: SandboxProcess, status: str) -> dict[str, Any]:
    """The first truth payment in ``status`` (the small dataset has some of each)."""
    return next(
        p for p in sandbox.admin.truth("payments") if p["status"] == status and p["refunded_cents"] == 0
    )


def _listed_by_update(client: httpx.Client, location_id: str, since: str) -> list[dict[str, Any]]:
    params = {
        "location_id": location_id,
        "begin_time": EPOCH_BEGIN,
        "sort_field": "UPDATED_AT",
        "updated_at_begin_time": since,
    }
    return paginate(client, "GET", "/v2/payments", "payments", params=params)


def _error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"errors"}, body
    error: dict[str, Any] = body["errors"][0]
    return error


# -- GetPayment and RetrieveCustomer ---------------------------------------------------------------


def test_get_by_id_equals_the_listing_and_unknown_or_deleted_ids_are_404(
    make_square: Callable[..., SandboxProcess],
) -> None:
    # Given a sandbox, a listed payment and a listed customer, one of them deleted later
    sandbox = make_square()
    with client_for(sandbox) as client:
        payments = client.get("/v2/payments", params={"begin_time": EPOCH_BEGIN, "limit": 100}).json()
        customers = paginate(client, "GET", "/v2/customers", "customers")
        gone = customers[1]["id"]
        sandbox.admin.delete_customer(gone)

        # When each is fetched by id, and unknown or deleted ids are asked for
        singles = [client.get(f"/v2/payments/{p['id']}").json()["payment"] for p in payments["payments"]]
        kept = client.get(f"/v2/customers/{customers[0]['id']}")
        misses = [
            client.get("/v2/payments/" + "x" * 29),
            client.get("/v2/payments/nope"),
            client.get("/v2/customers/NOSUCHCUSTOMER"),
            client.get(f"/v2/customers/{gone}"),
        ]

    # Then GetPayment and RetrieveCustomer answer exactly what the listings hold
    assert singles == payments["payments"]
    assert kept.status_code == 200
    assert kept.json() == {"customer": customers[0]}
    # And the others are Square's 404 NOT_FOUND, counted under the endpoint template
    for miss in misses:
        assert miss.status_code == 404
        assert _error(miss)["category"] == "INVALID_REQUEST_ERROR"
        assert _error(miss)["code"] == "NOT_FOUND"
        assert _error(miss)["detail"]
    requests = sandbox.admin.stats()["requests"]
    assert requests["GET /v2/customers/{customer_id}"] == {"200": 1, "404": 2}
    assert requests["GET /v2/payments/{payment_id}"]["404"] == 2


def test_get_customer_needs_the_token_and_is_faulted_like_the_rest(
    make_square: Callable[..., SandboxProcess],
) -> None:
    # Given a sandbox and one of its customers
    sandbox = make_square()
    customer_id = sandbox.admin.truth("customers")[0]["id"]
    path = f"/v2/customers/{customer_id}"

    # When it is fetched without the token, and while every request fails with a 500
    anonymous = httpx.get(f"{sandbox.base_url}{path}", timeout=10)
    sandbox.admin.set_faults(rate_500=1.0)
    with client_for(sandbox) as client:
        faulted = client.get(path)

    # Then the first is a 401 and the second a 500, both in Square's shape
    assert anonymous.status_code == 401
    assert _error(anonymous)["code"] == "UNAUTHORIZED"
    assert faulted.status_code == 500
    assert _error(faulted)["code"] == "INTERNAL_SERVER_ERROR"


# -- changes on request ----------------------------------------------------------------------------


def test_updating_a_payment_changes_it_everywhere_at_the_sandbox_now(
    make_square: Callable[..., SandboxProcess],
) -> None:
    # Given an approved payment
    sandbox = make_square()
    before = sandbox.admin.info()["now"]
    approved = _payment_with(sandbox, "APPROVED")

    # When it is captured, then refunded in part, then refunded by default
    captured = sandbox.admin.update_payment(approved["id"], status="COMPLETED")["payment"]
    refunded = sandbox.admin.update_payment(approved["id"], refund_cents=7)["payment"]
    again = sandbox.admin.update_payment(approved["id"])["payment"]
    now = sandbox.admin.info()["now"]

    # Then each change happened at the sandbox's now, strictly after the one before
    assert approved["updated_at"] < captured["updated_at"] < refunded["updated_at"] < again["updated_at"]
    assert captured["updated_at"] == before
    assert again["updated_at"] == now
    assert (captured["status"], captured["card_details"]["status"]) == ("COMPLETED", "CAPTURED")
    assert "refunded_money" not in captured
    assert refunded["refunded_money"] == {"amount": 7, "currency": "USD"}
    left = approved["total_cents"] - 7
    assert again["refunded_money"]["amount"] == 7 + left // 2
    assert len(again["refund_ids"]) == 2
    assert len({captured["version_token"], refunded["version_token"], again["version_token"]}) == 3
    # And GetPayment, ListPayments by updated_at and the truth all hold the last state
    with client_for(sandbox) as client:
        fetched = client.get(f"/v2/payments/{approved['id']}").json()["payment"]
        listed = _listed_by_update(client, approved["location_id"], before)
    assert fetched == again
    assert listed == [again]
    truth = next(p for p in sandbox.admin.truth("payments") if p["id"] == approved["id"])
    assert (truth["status"], truth["refunded_cents"], truth["updated_at"]) == (
        "COMPLETED",
        again["refunded_money"]["amount"],
        again["updated_at"],
    )


def test_a_voided_payment_and_refused_changes(make_square: Callable[..., SandboxProcess]) -> None:
    # Given an approved payment and a failed one
    sandbox = make_square()
    approved = _payment_with(sandbox, "APPROVED")
    failed = _payment_with(sandbox, "FAILED")
    url = f"{sandbox.base_url}/_sandbox/payments"

    # When the approved one is voided, and impossible changes are asked for
    voided = sandbox.admin.update_payment(approved["id"], status="CANCELED")["payment"]
    now = sandbox.admin.info()["now"]
    refusals = [
        httpx.post(f"{url}/{approved['id']}/update", json={"status": "COMPLETED"}, timeout=10),
        httpx.post(f"{url}/{failed['id']}/update", json={}, timeout=10),
        httpx.post(f"{url}/{voided['id']}/update", json={"refund_cents": 5}, timeout=10),
        httpx.post(f"{url}/nosuchpayment/update", json={}, timeout=10),
        httpx.post(f"{url}/{failed['id']}/update", json={"refund_cents": "5"}, timeout=10),
        httpx.post(f"{url}/{failed['id']}/update", content=b"[1]", timeout=10),
    ]

    # Then the void shows, and each refusal says why and changes nothing, the clock included
    assert (voided["status"], voided["card_details"]["status"]) == ("CANCELED", "VOIDED")
    assert [r.status_code for r in refusals] == [409, 409, 409, 404, 400, 400]
    assert all(r.json()["error"] for r in refusals)
    assert sandbox.admin.info()["now"] == now
    by_id = {p["id"]: p for p in sandbox.admin.truth("payments")}
    assert by_id[approved["id"]]["status"] == "CANCELED"
    assert by_id[failed["id"]] == failed


def test_refunds_are_bounded_by_what_is_left(make_square: Callable[..., SandboxProcess]) -> None:
    # Given a completed payment with nothing refunded
    sandbox = make_square()
    completed = _payment_with(sandbox, "COMPLETED")
    url = f"{sandbox.base_url}/_sandbox/payments/{completed['id']}/update"

    # When more than its total, nothing, then exactly its total, then one cent more are refunded
    too_much = httpx.post(url, json={"refund_cents": completed["total_cents"] + 1}, timeout=10)
    nothing = httpx.post(url, json={"refund_cents": 0}, timeout=10)
    full = sandbox.admin.update_payment(completed["id"], refund_cents=completed["total_cents"])["payment"]
    beyond = httpx.post(url, json={}, timeout=10)

    # Then only the full refund is made
    assert (too_much.status_code, nothing.status_code, beyond.status_code) == (409, 409, 409)
    assert full["refunded_money"]["amount"] == completed["total_cents"]
    assert "refunded in full" in beyond.json()["error"]


def test_customer_create_update_and_delete_show_in_the_api_and_the_truth(
    make_square: Callable[..., SandboxProcess],
) -> None:
    # Given a sandbox's customers, one with groups and one without
    sandbox = make_square()
    before = sandbox.admin.info()["now"]
    truth = sandbox.admin.truth("customers")
    grouped = next(row for row in truth if row["group_ids"])
    plain = next(row for row in truth if not row["group_ids"] and row["id"] != grouped["id"])

    # When a customer is created, one is updated, and the grouped one is deleted
    created = sandbox.admin.create_customer()
    updated = sandbox.admin.update_customer(plain["id"])["customer"]
    with client_for(sandbox) as client:
        last_state = client.get(f"/v2/customers/{grouped['id']}").json()["customer"]
    deleted = sandbox.admin.delete_customer(grouped["id"])
    now = sandbox.admin.info()["now"]

    # Then the API lists the new and the updated one, and no longer the deleted one
    with client_for(sandbox) as client:
        listed = {c["id"]: c for c in paginate(client, "GET", "/v2/customers", "customers")}
        query = {"filter": {"updated_at": {"start_at": before}}}
        changed = paginate(client, "POST", "/v2/customers/search", "customers", body={"query": query})
        everyone = paginate(
            client,
            "POST",
            "/v2/customers/search",
            "customers",
            body={"query": {"filter": {"created_at": {"start_at": EPOCH_BEGIN}}}},
        )
    assert listed[created["customer"]["id"]] == created["customer"]
    assert listed[plain["id"]] == updated
    assert grouped["id"] not in listed
    assert grouped["id"] not in {c["id"] for c in everyone}
    assert sorted(c["id"] for c in changed) == sorted([created["customer"]["id"], plain["id"]])
    assert updated["version"] == plain["version"] + 1
    # (changes to different records may share an instant; only a record's own changes must advance)
    assert updated["updated_at"] == created["customer"]["created_at"] == now == before
    assert updated["reference_id"] != plain["reference_id"]
    # And the deletion carries the customer as it was, without its groups, deleted now
    assert deleted["deleted_at"] == deleted["event"]["created_at"] == now
    assert deleted["customer"] == {k: v for k, v in last_state.items() if k != "group_ids"}
    # And the truth has every customer ever made: the deleted one marked, the others not
    rows = {row["id"]: row for row in sandbox.admin.truth("customers")}
    assert len(rows) == len(truth) + 1
    assert rows[grouped["id"]] == {
        **grouped,
        "group_ids": [],
        "is_deleted": True,
        "deleted_at": now,
    }
    assert rows[plain["id"]] == {
        **plain,
        "version": updated["version"],
        "updated_at": updated["updated_at"],
        "reference_id": updated["reference_id"],
    }
    live = [row for key, row in rows.items() if key != grouped["id"]]
    assert all(row["is_deleted"] is False and row["deleted_at"] is None for row in live)
    counts = sandbox.admin.info()["counts"]
    assert (counts["customers"], counts["deleted_customers"]) == (len(truth), 1)
    # And a deleted customer can be neither changed nor deleted again
    for action in ("update", "delete"):
        response = httpx.post(f"{sandbox.base_url}/_sandbox/customers/{grouped['id']}/{action}", timeout=10)
        assert response.status_code == 404


# -- delivery ---------------------------------------------------------------------------------------


def test_payment_updated_is_delivered_signed_for_the_notification_url(
    hooked: SandboxProcess, receiver: Receiver
) -> None:
    # Given a sandbox delivering to the receiver, and an approved payment
    approved = _payment_with(hooked, "APPROVED")

    # When the payment is captured
    change = hooked.admin.update_payment(approved["id"])

    # Then one payment.updated event arrives, exactly as the change announced it
    (request,) = receiver.wait_for(1)
    event = request.json()
    assert request.path == "/hooks/square"
    assert request.headers["content-type"] == "application/json"
    assert event == change["event"]
    assert list(event) == ["merchant_id", "type", "event_id", "created_at", "data"]
    assert event["type"] == "payment.updated"
    assert event["created_at"] == change["payment"]["updated_at"]
    assert event["data"] == {
        "type": "payment",
        "id": approved["id"],
        "object": {"payment": change["payment"]},
    }
    with client_for(hooked) as client:
        assert client.get(f"/v2/payments/{approved['id']}").json()["payment"] == change["payment"]
        merchant = client.get("/v2/locations").json()["locations"][0]["merchant_id"]
    assert event["merchant_id"] == merchant
    # And it is signed over the notification URL and the raw body, as Square signs
    signature = request.headers[SIGNATURE_HEADER]
    assert signature == _expected_signature(request.body)
    assert verify_signature(
        request_body=request.body.decode(),
        signature_header=signature,
        signature_key=SIGNATURE_KEY,
        notification_url=NOTIFICATION_URL,
    )
    assert not verify_signature(
        request_body=request.body.decode(),
        signature_header=signature,
        signature_key=SIGNATURE_KEY,
        notification_url=receiver.url,
    )
    # And the delivery is recorded as done at the first attempt
    (delivery,) = _finished(hooked, 1)
    assert delivery == {
        "event_id": event["event_id"],
        "type": "payment.updated",
        "attempts": 1,
        "last_status": 200,
        "delivered": True,
        "finished": True,
        "bad_signature": False,
        "error": None,
    }


def test_a_failed_delivery_is_retried_with_a_doubling_backoff(
    hooked: SandboxProcess, receiver: Receiver
) -> None:
    # Given a receiver that answers 500, then 502, then 200
    receiver.answer_next(500, 502)

    # When a customer is updated
    change = hooked.admin.update_customer(hooked.admin.truth("customers")[0]["id"])

    # Then the event arrives three times, the same body and signature each time
    requests = receiver.wait_for(3)
    assert {r.body for r in requests} == {requests[0].body}
    assert {r.headers[SIGNATURE_HEADER] for r in requests} == {_expected_signature(requests[0].body)}
    assert requests[0].json() == change["event"]
    assert change["event"]["type"] == "customer.updated"
    assert change["event"]["data"]["object"]["customer"] == change["customer"]
    # after waits of at least the backoff, doubled for the second retry
    assert requests[1].at - requests[0].at >= RETRY_SECONDS
    assert requests[2].at - requests[1].at >= 2 * RETRY_SECONDS
    # And the delivery is recorded as delivered at the third attempt
    (delivery,) = _finished(hooked, 1)
    assert (delivery["attempts"], delivery["last_status"], delivery["delivered"]) == (3, 200, True)
    assert delivery["event_id"] == change["event"]["event_id"]


def test_a_delivery_gives_up_after_its_attempts(hooked: SandboxProcess, receiver: Receiver) -> None:
    # Given two attempts per delivery, and a receiver that keeps answering 503
    hooked.admin.set_webhooks(max_attempts=2)
    receiver.answer_next(503, 503)

    # When a customer is created
    change = hooked.admin.create_customer()

    # Then it is tried twice and recorded as not delivered
    (delivery,) = _finished(hooked, 1)
    assert (delivery["attempts"], delivery["last_status"], delivery["delivered"]) == (2, 503, False)
    assert [r.json() for r in receiver.wait_for(2)] == [change["event"]] * 2
    assert change["event"]["type"] == "customer.created"


def test_an_unreachable_receiver_is_recorded_without_a_status(hooked: SandboxProcess) -> None:
    # Given a webhook URL nothing listens on, and two attempts per delivery
    hooked.admin.set_webhooks(url=f"http://127.0.0.1:{free_port('127.0.0.1')}/hooks", max_attempts=2)

    # When a catalog item is edited
    change = hooked.admin.touch_catalog()

    # Then the delivery fails twice without any HTTP status, and says why
    (delivery,) = _finished(hooked, 1)
    assert (delivery["attempts"], delivery["last_status"], delivery["delivered"]) == (2, None, False)
    assert delivery["error"]
    assert delivery["type"] == "catalog.version.updated"
    assert change["event"]["data"]["object"]["catalog_version"]["updated_at"] == change["item"]["updated_at"]


def test_customer_deleted_is_delivered_with_the_customer_as_it_was(
    hooked: SandboxProcess, receiver: Receiver
) -> None:
    # Given a customer with groups, as the API serves it
    customer_id = next(row["id"] for row in hooked.admin.truth("customers") if row["group_ids"])
    with client_for(hooked) as client:
        last_state = client.get(f"/v2/customers/{customer_id}").json()["customer"]

    # When it is deleted
    deleted = hooked.admin.delete_customer(customer_id)

    # Then customer.deleted arrives, signed, with data.deleted and the customer without group_ids
    (request,) = receiver.wait_for(1)
    event = request.json()
    assert request.headers[SIGNATURE_HEADER] == _expected_signature(request.body)
    assert event == deleted["event"]
    assert event["type"] == "customer.deleted"
    assert event["data"] == {
        "type": "customer",
        "id": customer_id,
        "deleted": True,
        "object": {"customer": {k: v for k, v in last_state.items() if k != "group_ids"}},
    }
    # And the truth marks it deleted at the event's created_at
    row = next(row for row in hooked.admin.truth("customers") if row["id"] == customer_id)
    assert (row["is_deleted"], row["deleted_at"], row["group_ids"]) == (True, event["created_at"], [])


def test_clock_advance_publishes_its_created_and_changed_payments(
    hooked: SandboxProcess, receiver: Receiver
) -> None:
    # When the clock creates three payments and changes five
    result = hooked.admin.advance(3600, new_payments=3, changed_payments=5)

    # Then one event per payment arrives, carrying the payment as the API serves it now
    count = len(result["created"]) + len(result["changed"])
    assert (len(result["created"]), len(result["changed"])) == (3, 5)
    events = [request.json() for request in receiver.wait_for(count)]
    assert sorted((e["type"], e["data"]["id"]) for e in events) == sorted(
        [("payment.created", pid) for pid in result["created"]]
        + [("payment.updated", pid) for pid in result["changed"]]
    )
    with client_for(hooked) as client:
        for event in events:
            payment = client.get(f"/v2/payments/{event['data']['id']}").json()["payment"]
            assert event["data"]["object"]["payment"] == payment
            stamp = payment["created_at"] if event["type"] == "payment.created" else payment["updated_at"]
            assert event["created_at"] == stamp
    assert all(delivery["delivered"] for delivery in _finished(hooked, count))
    assert hooked.admin.set_webhooks()["skipped_events"] == 0


def test_send_delivers_any_body_mis_signed_or_twice(hooked: SandboxProcess, receiver: Receiver) -> None:
    # Given an arbitrary event body
    event = {"merchant_id": "M1", "type": "order.updated", "event_id": "evt-1", "data": {"id": "o1"}}

    # When it is sent mis-signed, then sent twice
    forged = hooked.admin.send_webhook(event, bad_signature=True)
    twice = hooked.admin.send_webhook({**event, "event_id": "evt-2"}, duplicate=True)

    # Then all three arrive with that body; only the duplicates carry a valid signature
    requests = receiver.wait_for(3)
    by_event: dict[str, list[Received]] = {}
    for request in requests:
        by_event.setdefault(request.json()["event_id"], []).append(request)
    (bad,) = by_event["evt-1"]
    assert bad.json() == event
    assert bad.headers[SIGNATURE_HEADER] != _expected_signature(bad.body)
    assert len(by_event["evt-2"]) == 2
    assert by_event["evt-2"][0].body == by_event["evt-2"][1].body
    assert all(r.headers[SIGNATURE_HEADER] == _expected_signature(r.body) for r in by_event["evt-2"])
    # And the deliveries say so
    assert [d["bad_signature"] for d in forged] == [True]
    assert [d["event_id"] for d in twice] == ["evt-2", "evt-2"]
    finished = _finished(hooked, 3)
    assert [(d["event_id"], d["delivered"]) for d in finished] == [
        ("evt-1", True),
        ("evt-2", True),
        ("evt-2", True),
    ]


def test_changes_can_deliver_their_event_twice(hooked: SandboxProcess, receiver: Receiver) -> None:
    # When a customer is updated with the duplicate option
    customer_id = hooked.admin.truth("customers")[0]["id"]
    response = httpx.post(
        f"{hooked.base_url}/_sandbox/customers/{customer_id}/update", json={"duplicate": True}, timeout=10
    )

    # Then the very same event arrives twice
    first, second = receiver.wait_for(2)
    assert response.status_code == 200
    assert first.body == second.body
    assert first.json() == response.json()["event"]


def test_webhooks_are_configured_at_run_time_and_settings_are_checked(
    make_square: Callable[..., SandboxProcess], receiver: Receiver
) -> None:
    # Given a sandbox started without a webhook URL
    sandbox = make_square()
    settings_url = f"{sandbox.base_url}/_sandbox/webhooks"

    # When a change is made, then a URL and key are set (the URL then signed), and another change made
    sandbox.admin.create_customer()
    unsent = httpx.post(f"{settings_url}/send", json={"event": {"type": "x"}}, timeout=10)
    settings = sandbox.admin.set_webhooks(url=receiver.url, signature_key="k2")
    change = sandbox.admin.create_customer()
    refused = [
        httpx.post(settings_url, json=body, timeout=10)
        for body in ({"max_attempts": 0}, {"url": "ftp://x"}, {"signature_key": ""}, {"colour": "red"})
    ]

    # Then only the second change is delivered, signed with the new key over the receiver's URL
    (request,) = receiver.wait_for(1)
    assert request.json() == change["event"]
    assert request.headers[SIGNATURE_HEADER] == _expected_signature(request.body, key="k2", url=receiver.url)
    assert len(_finished(sandbox, 1)) == len(sandbox.admin.webhook_deliveries()) == 1
    assert unsent.status_code == 409
    assert settings["url"] == settings["signed_url"] == receiver.url
    assert settings["signature_key_set"] is True
    assert "signature_key" not in settings
    assert [r.status_code for r in refused] == [400, 400, 400, 400]
    assert sandbox.admin.set_webhooks()["max_attempts"] == 4
