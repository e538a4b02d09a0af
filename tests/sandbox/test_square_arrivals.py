"""New Square payments made on request (``POST /_sandbox/payments/create``): served at once by every
endpoint and the truth, created at the sandbox's "now", stamped with the wall-clock instant they
became visible, and each announced by a signed ``payment.created`` event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from sandbox.process import SandboxProcess
from sandbox.square_changes import MAX_CREATED_PAYMENTS
from tests.sandbox.conftest import EPOCH_BEGIN, client_for, paginate
from tests.sandbox.test_square_webhooks import Receiver


def _create(sandbox: SandboxProcess, **body: Any) -> httpx.Response:
    return httpx.post(f"{sandbox.base_url}/_sandbox/payments/create", json=body, timeout=10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A recording webhook endpoint, closed after the test."""
    started = Receiver()
    yield started
    started.close()


def test_created_payments_are_served_at_once_at_the_sandbox_now(
    make_square: Callable[..., SandboxProcess],
) -> None:
    # Given a sandbox whose newest payment is older than its clock
    sandbox = make_square()
    before = sandbox.admin.info()

    # When three payments are made in one request, then one more
    asked_at = datetime.now(UTC)
    first = _create(sandbox, count=3)
    second = _create(sandbox)
    answered_at = datetime.now(UTC)

    # Then they are created at the clock's "now", which did not move for the first batch
    assert first.status_code == second.status_code == 200
    batch, single = first.json(), second.json()
    created = batch["payments"] + single["payments"]
    assert len(created) == 4
    assert len({payment["id"] for payment in created}) == 4
    assert {payment["created_at"] for payment in batch["payments"]} == {before["now"]}
    assert all(payment["updated_at"] == payment["created_at"] for payment in created)
    assert single["payments"][0]["created_at"] >= before["now"]
    after = sandbox.admin.info()
    assert after["counts"]["payments"] == before["counts"]["payments"] + 4
    assert after["now"] == single["payments"][0]["created_at"]
    # And visible_at is a wall-clock instant within the requests, the first batch's first
    first_visible = datetime.fromisoformat(batch["visible_at"])
    second_visible = datetime.fromisoformat(single["visible_at"])
    assert asked_at <= first_visible <= second_visible <= answered_at
    # And GetPayment, ListPayments by updated_at and the truth serve each as answered
    truth = {row["id"]: row for row in sandbox.admin.truth("payments")}
    with client_for(sandbox) as client:
        for payment in created:
            fetched = client.get(f"/v2/payments/{payment['id']}").json()["payment"]
            assert fetched == payment
            listed = paginate(
                client,
                "GET",
                "/v2/payments",
                "payments",
                params={
                    "location_id": payment["location_id"],
                    "begin_time": EPOCH_BEGIN,
                    "sort_field": "UPDATED_AT",
                    "updated_at_begin_time": before["now"],
                },
            )
            assert payment in listed
            assert truth[payment["id"]]["created_at"] == payment["created_at"]


def test_creation_times_only_grow_and_follow_the_clock(make_square: Callable[..., SandboxProcess]) -> None:
    # Given a sandbox whose clock created a payment at the very end of an advance
    sandbox = make_square()
    advanced = sandbox.admin.advance(1, new_payments=40)

    # When payments are made right after, and again after a further advance
    right_after = _create(sandbox).json()["payments"][0]
    moved = sandbox.admin.advance(60)
    later = _create(sandbox).json()["payments"][0]

    # Then none is created before the payments the advance made, and the later one at the new "now"
    newest = max(
        payment["created_at"]
        for payment in sandbox.admin.truth("payments")
        if payment["id"] in set(advanced["created"])
    )
    assert newest <= advanced["now"]
    expected = _plus_ms(advanced["now"], 1) if newest == advanced["now"] else advanced["now"]
    assert right_after["created_at"] == expected
    assert later["created_at"] == moved["now"]


def _plus_ms(stamp: str, milliseconds: int) -> str:
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00")) + timedelta(milliseconds=milliseconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def test_each_created_payment_publishes_payment_created(
    make_square: Callable[..., SandboxProcess], receiver: Receiver
) -> None:
    # Given a sandbox delivering its webhooks
    sandbox = make_square(webhook_url=receiver.url, webhook_signature_key="arrivals-key")

    # When two payments are made
    answer = _create(sandbox, count=2).json()

    # Then one payment.created per payment arrives, carrying it as answered, and the answer has them
    events = sorted((request.json() for request in receiver.wait_for(2)), key=lambda e: e["data"]["id"])
    assert events == sorted(answer["events"], key=lambda e: e["data"]["id"])
    assert [event["type"] for event in events] == ["payment.created", "payment.created"]
    by_id = {payment["id"]: payment for payment in answer["payments"]}
    for event in events:
        assert event["data"]["object"]["payment"] == by_id[event["data"]["id"]]
        assert event["created_at"] == by_id[event["data"]["id"]]["created_at"]


def test_a_bad_count_is_refused_and_changes_nothing(make_square: Callable[..., SandboxProcess]) -> None:
    # Given a sandbox
    sandbox = make_square()
    before = sandbox.admin.info()

    for count in (0, MAX_CREATED_PAYMENTS + 1, "2", True, 1.5, None):
        # When payments are asked for with a bad count
        response = _create(sandbox, count=count)

        # Then the request is refused
        assert response.status_code == 400, count
        assert "count" in response.json()["error"]
    # And nothing was created, nor did the clock move
    assert sandbox.admin.info() == before
