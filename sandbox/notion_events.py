"""The Notion sandbox's webhook side: events as Notion shapes them, signed, delivered and redelivered.

An event is a JSON object (``id``, ``timestamp``, ``workspace_id``, ``workspace_name``,
``subscription_id``, ``integration_id``, ``type``, ``authors``, ``attempt_number``, ``entity``,
``data``, ``api_version``) POSTed to the subscription's URL with ``X-Notion-Signature: sha256=<hex
HMAC-SHA256 of the exact body, keyed by the verification token>``. :class:`WebhookDeliverer` sends
each in a background task and redelivers it (``attempt_number`` counting up, re-signed) after each
pause of its schedule until the receiver answers 2xx, and records what happened per delivery. The
one-time verification request (:meth:`WebhookDeliverer.handshake`) carries the token and no signature.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import httpx
import orjson

__all__ = ["Delivery", "SandboxEventError", "WebhookDeliverer", "build_event", "sign", "signed_headers"]

#: Deliveries remembered for ``/_sandbox/deliveries``; the oldest are dropped first.
MAX_RECORDS = 10_000
#: Characters of a receiver's answer kept in a handshake's result.
_MAX_ANSWER = 2_000

DeliveryCopy = Literal["event", "duplicate", "bad_signature"]


class SandboxEventError(Exception):
    """An event the sandbox cannot make (bad type, unknown page, no webhook); ``status`` for the answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def sign(body: bytes, verification_token: str) -> str:
    """``X-Notion-Signature`` for ``body``: ``sha256=`` and the hex HMAC-SHA256 keyed by the token."""
    return "sha256=" + hmac.new(verification_token.encode(), body, hashlib.sha256).hexdigest()


def signed_headers(body: bytes, verification_token: str) -> dict[str, str]:
    """The headers of a Notion delivery of ``body``: JSON content type and :func:`sign`'s signature."""
    return {"Content-Type": "application/json", "X-Notion-Signature": sign(body, verification_token)}


def build_event(
    *,
    event_id: str,
    event_type: str,
    timestamp: str,
    page_id: str,
    data: dict[str, Any],
    author_id: str,
    workspace_id: str,
    workspace_name: str,
    subscription_id: str,
    integration_id: str,
    api_version: str,
) -> dict[str, Any]:
    """An event about a page as Notion sends it on its first attempt (``attempt_number`` 1)."""
    return {
        "id": event_id,
        "timestamp": timestamp,
        "workspace_id": workspace_id,
        "workspace_name": workspace_name,
        "subscription_id": subscription_id,
        "integration_id": integration_id,
        "type": event_type,
        "authors": [{"id": author_id, "type": "person"}],
        "attempt_number": 1,
        "entity": {"id": page_id, "type": "page"},
        "data": data,
        "api_version": api_version,
    }


@dataclass
class Delivery:
    """One copy of an event on its way to the receiver.

    Attributes:
        copy: ``event`` (the signed event), ``duplicate`` (the same event sent again once the first
            copy is settled) or ``bad_signature`` (signed with the wrong key, sent once, first).
        statuses: the receiver's status per attempt, or the transport error's name.
        state: ``pending`` while attempts remain, then ``acknowledged`` (2xx) or ``failed``.
    """

    event_id: str
    type: str
    page_id: str
    copy: DeliveryCopy
    attempts: int = 0
    statuses: list[int | str] = field(default_factory=list)
    state: Literal["pending", "acknowledged", "failed"] = "pending"


class WebhookDeliverer:
    """Delivers events to the subscription's URL in background tasks, with retries, and records them.

    Args:
        url: where events go; None until configured.
        verification_token: the key events are signed with.
        retry_seconds: pauses before each redelivery, seconds (``len + 1`` attempts at most).
        timeout_seconds: deadline of one attempt, seconds.
    """

    def __init__(
        self,
        *,
        url: str | None,
        verification_token: str,
        retry_seconds: Sequence[float],
        timeout_seconds: float,
    ) -> None:
        self.url = url
        self.verification_token = verification_token
        self.retry_seconds = tuple(retry_seconds)
        self.timeout_seconds = timeout_seconds
        self.records: deque[Delivery] = deque(maxlen=MAX_RECORDS)
        #: Pages named by an event a receiver acknowledged with a valid signature.
        self.acknowledged_pages: set[str] = set()
        self.pending = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None

    def _client(self) -> httpx.AsyncClient:
        # Made on first use, inside the server's event loop.
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.timeout_seconds)
        return self._http

    async def close(self) -> None:
        """Cancel deliveries in flight and close the HTTP client."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def handshake(self) -> dict[str, Any]:
        """POST ``{"verification_token": ...}`` once, with no signature header, as Notion does.

        Returns:
            ``{"url", "status", "body"}`` (the receiver's answer, its first 2,000 characters), or
            ``{"url", "error"}`` when it could not be reached.

        Raises:
            ValueError: when no URL is configured.
        """
        if not self.url:
            raise ValueError("no webhook URL configured: POST /_sandbox/webhook first")
        body = orjson.dumps({"verification_token": self.verification_token})
        try:
            response = await self._client().post(
                self.url, content=body, headers={"Content-Type": "application/json"}
            )
        except httpx.HTTPError as exc:
            return {"url": self.url, "error": type(exc).__name__}
        return {"url": self.url, "status": response.status_code, "body": response.text[:_MAX_ANSWER]}

    def send(self, event: dict[str, Any], *, duplicate: bool = False, bad_signature: bool = False) -> None:
        """Deliver ``event`` in the background (a wrongly signed copy first, a duplicate after).

        Raises:
            ValueError: when no URL is configured.
        """
        if not self.url:
            raise ValueError("no webhook URL configured: POST /_sandbox/webhook first")
        copies: list[DeliveryCopy] = ["bad_signature"] if bad_signature else []
        copies.append("event")
        if duplicate:
            copies.append("duplicate")
        deliveries = [
            Delivery(event_id=event["id"], type=event["type"], page_id=event["entity"]["id"], copy=copy)
            for copy in copies
        ]
        self.records.extend(deliveries)
        self.pending += len(deliveries)
        task = asyncio.get_running_loop().create_task(self._deliver_all(self.url, event, deliveries))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver_all(self, url: str, event: dict[str, Any], deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            try:
                await self._deliver(url, event, delivery)
            finally:
                self.pending -= 1

    async def _deliver(self, url: str, event: dict[str, Any], delivery: Delivery) -> None:
        key = self.verification_token
        pauses: tuple[float, ...] = self.retry_seconds
        if delivery.copy == "bad_signature":
            # A forged copy: a receiver must refuse it, so it is sent once and never retried.
            key, pauses = key + "-forged", ()
        for attempt, pause in enumerate((0.0, *pauses), start=1):
            if pause:
                await asyncio.sleep(pause)  # the redelivery schedule, not synchronisation
            body = orjson.dumps({**event, "attempt_number": attempt})
            delivery.attempts = attempt
            try:
                response = await self._client().post(url, content=body, headers=signed_headers(body, key))
            except httpx.HTTPError as exc:
                delivery.statuses.append(type(exc).__name__)
                continue
            delivery.statuses.append(response.status_code)
            if response.is_success:
                delivery.state = "acknowledged"
                if delivery.copy != "bad_signature":
                    self.acknowledged_pages.add(delivery.page_id)
                return
        delivery.state = "failed"

    def summary(self) -> dict[str, Any]:
        """``{"pending", "acknowledged", "failed"}`` counts over the remembered deliveries (pending: all)."""
        states = [record.state for record in self.records]
        return {
            "pending": self.pending,
            "acknowledged": states.count("acknowledged"),
            "failed": states.count("failed"),
        }

    def report(self) -> dict[str, Any]:
        """The summary and every remembered delivery, oldest first."""
        return {**self.summary(), "deliveries": [asdict(record) for record in self.records]}
