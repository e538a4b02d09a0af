"""Webhooks to BigQuery end to end: the producers issue's acceptance, through the real processes.

A Redis server, the BigQuery emulator, the Square and Notion sandboxes (which sign and deliver
events like the real services), ``possync webhooks``, ``possync scheduler`` and ``possync worker``
pools run as subprocesses configured only by ``POSSYNC_*`` variables; the tests read the warehouse.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis

from producers.waiting import wait_for_request
from sandbox.process import SandboxProcess, free_port, start_notion_sandbox
from sandbox.truth import fetch_truth
from sandbox.truth_check import check_warehouse
from sandbox.truth_notion import check_notion_warehouse, fetch_notion_truth
from tests.e2e.conftest import System
from tests.e2e.test_square_pipeline import _since
from tests.polling import wait_until
from workers.broker import REQUEST_KEY
from workers.queues import request_progress
from workers.sinks.bigquery import make_bigquery_client

SQUARE_KEY = "e2e-square-signature-key"


def _rows(system: System, table: str, where: str = "TRUE") -> list[dict[str, Any]]:
    client = make_bigquery_client(system.settings)
    ref = f"`{system.settings.bigquery_project}.{system.settings.bigquery_dataset}.{table}`"
    try:
        return [dict(row.items()) for row in client.query(f"SELECT * FROM {ref} WHERE {where}").result()]
    except Exception as exc:  # the table appears with the first write
        if "not found" in str(exc).lower():
            return []
        raise


def _start_receiver(system: System, **env: str) -> str:
    """``possync webhooks`` on a free port; returns its base URL once ``/readyz`` answers 200."""
    port = free_port()
    system.start_command("webhooks", "webhooks", POSSYNC_WEBHOOKS_PORT=str(port), **env)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout_seconds=30, interval_seconds=0.2, message="the receiver never became ready")
    return base


def _request_messages(client: redis.Redis, request_id: str) -> set[str]:
    found: dict[bytes, bytes] = client.hgetall(REQUEST_KEY.format(request_id=request_id))  # type: ignore[assignment]
    return {key.decode() for key in found}


@pytest.fixture
def notion_sandbox() -> Iterator[list[SandboxProcess]]:
    started: list[SandboxProcess] = []
    yield started
    for sandbox in started:
        sandbox.stop()


@pytest.mark.slow
def test_a_square_payment_update_lands_by_webhook_before_the_next_tick(make_system: Any) -> None:
    # Given a backfilled warehouse, the receiver, two schedulers on the default 15-minute schedule
    # and a worker pool
    system = make_system(payments=3_000, customers=60, items=40)
    notification_url = "https://shop.example/webhooks/square"
    base = _start_receiver(
        system, POSSYNC_SQUARE_WEBHOOK_SIGNATURE_KEY=SQUARE_KEY, POSSYNC_SQUARE_WEBHOOK_URL=notification_url
    )
    # Hourly at a minute well ahead, so the next tick is known to be minutes away.
    next_tick = (datetime.now(UTC) + timedelta(minutes=10)).replace(second=0, microsecond=0)
    schedules = json.dumps({"square": f"{next_tick.minute} * * * *"})
    for _ in range(2):
        system.start_command(
            "scheduler", "scheduler", POSSYNC_SCHEDULER_METRICS_PORT="0", POSSYNC_SCHEDULES=schedules
        )
    system.start_worker(processes=1, threads=4)
    system.cli("backfill", "square", "--since", _since(system), "--wait", "--timeout", "300", check=True)
    # Square signs the URL registered for the subscription, which a proxy forwards to the receiver.
    httpx.post(
        f"{system.sandbox.base_url}/_sandbox/webhooks",
        json={
            "url": f"{base}/webhooks/square",
            "signature_key": SQUARE_KEY,
            "notification_url": notification_url,
        },
        timeout=10,
    ).raise_for_status()
    approved = next(p for p in fetch_truth(system.sandbox.base_url).payments if p["status"] == "APPROVED")

    # When the payment is captured at Square, which sends payment.updated
    started = time.monotonic()
    answer = httpx.post(
        f"{system.sandbox.base_url}/_sandbox/payments/{approved['id']}/update",
        json={"status": "COMPLETED"},
        timeout=10,
    )
    answer.raise_for_status()
    event_id = answer.json()["event"]["event_id"]

    # Then its new status is in the warehouse within seconds, written by the webhook's own message
    rows = wait_until(
        lambda: _rows(system, "square_payments", f"id = '{approved['id']}' AND status = 'COMPLETED'"),
        timeout_seconds=60,
        interval_seconds=0.25,
        message="the captured payment never reached the warehouse",
    )
    landed = time.monotonic() - started
    client = redis.Redis.from_url(system.settings.redis_url)
    assert rows[0]["_message_id"] in _request_messages(client, f"webhook-square-{event_id}")
    assert datetime.now(UTC) < next_tick
    assert landed < 60, f"landed after {landed:.1f} s"
    print(f"payment.updated visible in the warehouse {landed:.2f} s after the change")

    # And a deleted customer is kept, marked, and a catalog change syncs the catalog
    customer = fetch_truth(system.sandbox.base_url).customers[0]["id"]
    deleted = httpx.post(f"{system.sandbox.base_url}/_sandbox/customers/{customer}/delete", timeout=10)
    deleted.raise_for_status()
    touched = httpx.post(f"{system.sandbox.base_url}/_sandbox/catalog/touch", json={}, timeout=10)
    touched.raise_for_status()
    for event in (deleted.json()["event"], touched.json()["event"]):
        request_id = f"webhook-square-{event['event_id']}"

        def enqueued(request_id: str = request_id) -> set[str]:
            return _request_messages(client, request_id)

        wait_until(enqueued, timeout_seconds=30, message=f"no message for {request_id}")
        assert wait_for_request(client, request_id, timeout_seconds=120).dead == 0
    marked = _rows(system, "square_customers", f"id = '{customer}'")
    assert [row["is_deleted"] for row in marked] == [True]

    # And the whole warehouse equals the sandbox's truth, with no scheduled tick claimed meanwhile
    check = check_warehouse(
        make_bigquery_client(system.settings),
        project=system.settings.require_bigquery(),
        dataset=system.settings.bigquery_dataset,
        truth=fetch_truth(system.sandbox.base_url),
    )
    assert check.ok, check.summary()
    assert not list(client.scan_iter("possync:scheduler:tick:*"))


@pytest.mark.slow
def test_signed_notion_events_reach_both_tables_once_and_unsigned_ones_nothing(
    make_system: Any, notion_sandbox: list[SandboxProcess]
) -> None:
    # Given the receiver with no verification token configured, a Notion sandbox delivering to it,
    # and a worker pool on the notion queue
    system = make_system(payments=100)
    base = _start_receiver(system)
    notion = start_notion_sandbox(webhook_url=f"{base}/webhooks/notion", pages=30)
    notion_sandbox.append(notion)
    assert notion.token is not None
    system.start_worker(
        processes=1,
        threads=4,
        queues=("notion",),
        POSSYNC_NOTION_TOKEN=notion.token,
        POSSYNC_NOTION_BASE_URL=notion.base_url,
    )
    client = redis.Redis.from_url(system.settings.redis_url)
    admin = notion.base_url + "/_sandbox"

    # When Notion's one-time handshake arrives, the token is recorded
    handshake = httpx.post(f"{admin}/webhook/handshake", timeout=10).json()
    assert handshake["status"] == 200, handshake
    token = httpx.get(f"{admin}/webhook", timeout=10).json()["verification_token"]

    # And a signed page.created event is delivered twice (Notion retries)
    created = httpx.post(
        f"{admin}/events", json={"type": "page.created", "duplicate": True}, timeout=10
    ).json()
    page_id = created["page"]["id"]
    event_id = created["event"]["id"]

    # Then the event is in notion_events once and its page in notion_pages
    wait_until(
        lambda: _rows(system, "notion_pages", f"id = '{page_id}'"),
        timeout_seconds=60,
        interval_seconds=0.25,
        message="the created page never reached notion_pages",
    )

    def deliveries_settled() -> dict[str, Any]:
        deliveries: dict[str, Any] = httpx.get(f"{admin}/deliveries", timeout=10).json()
        return deliveries if deliveries["pending"] == 0 else {}

    settled = wait_until(deliveries_settled, timeout_seconds=60, message="deliveries never settled")
    assert settled["failed"] == 0, settled
    assert wait_for_request(client, f"webhook-notion-{event_id}", timeout_seconds=60).done == 1
    assert len(_rows(system, "notion_events", f"event_id = '{event_id}'")) == 1

    # And an event signed with another key gets 401 and puts nothing in Redis
    forged = json.dumps({**json.loads(json.dumps(created["event"])), "id": "forged-event-1"}).encode()
    queued_before = client.llen("dramatiq:notion")
    for key in (b"not-the-token", None):
        headers = {"content-type": "application/json"}
        if key is not None:
            headers["X-Notion-Signature"] = "sha256=" + hmac.new(key, forged, hashlib.sha256).hexdigest()
        refused = httpx.post(f"{base}/webhooks/notion", content=forged, headers=headers, timeout=10)
        assert refused.status_code == 401
    assert client.llen("dramatiq:notion") == queued_before
    assert not client.exists(REQUEST_KEY.format(request_id="webhook-notion-forged-event-1"))
    assert not [key for key in client.scan_iter("*forged-event-1*")]

    # And the same body signed with the recorded token is accepted (the key was the only fault)
    signed = "sha256=" + hmac.new(token.encode(), forged, hashlib.sha256).hexdigest()
    accepted = httpx.post(
        f"{base}/webhooks/notion",
        content=forged,
        headers={"content-type": "application/json", "X-Notion-Signature": signed},
        timeout=10,
    )
    assert accepted.status_code == 200

    # And edits, a trash and a purge end with notion_pages equal to the sandbox's truth
    httpx.post(f"{admin}/events/batch", json={"count": 8}, timeout=10).raise_for_status()
    for body in (
        {"type": "page.properties_updated", "page_id": page_id},
        {"type": "page.deleted", "page_id": page_id},
    ):
        httpx.post(f"{admin}/events", json=body, timeout=10).raise_for_status()
    other = wait_until(
        lambda: _rows(system, "notion_pages", f"id != '{page_id}'"),
        timeout_seconds=60,
        message="no other page reached notion_pages",
    )[0]["id"]
    purged = httpx.post(
        f"{admin}/events", json={"type": "page.deleted", "page_id": other, "purge": True}, timeout=10
    )
    purged.raise_for_status()

    def drained() -> bool:
        deliveries = httpx.get(f"{admin}/deliveries", timeout=10).json()
        if deliveries["pending"]:
            return False
        progress = [
            request_progress(client, f"webhook-notion-{delivery['event_id']}")
            for delivery in deliveries["deliveries"]
            if delivery["copy"] == "event"
        ]
        return all(p.total and not p.pending and not p.dead for p in progress)

    wait_until(drained, timeout_seconds=120, interval_seconds=0.5, message="Notion events never drained")
    verdict = check_notion_warehouse(
        make_bigquery_client(system.settings),
        project=system.settings.require_bigquery(),
        dataset=system.settings.bigquery_dataset,
        truth=fetch_notion_truth(notion.base_url),
    )
    assert verdict.ok, verdict.summary()
    trashed = _rows(system, "notion_pages", f"id = '{page_id}'")[0]
    assert trashed["in_trash"] is True
    assert _rows(system, "notion_pages", f"id = '{other}'")[0]["is_deleted"] is True
    events = _rows(system, "notion_events")
    assert len(events) == len({row["event_id"] for row in events})
    assert timedelta(0) <= events[0]["received_at"] - events[0]["timestamp"] < timedelta(minutes=5)
