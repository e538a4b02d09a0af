"""Square webhooks from the sandbox: event bodies, their signature, and delivery with retries.

Events have Square's envelope (``merchant_id``, ``type``, ``event_id``, ``created_at``, ``data``)
and the ``data`` shapes of Square's ``PaymentUpdatedEvent``, ``CustomerDeletedEvent``,
``CatalogVersionUpdatedEvent`` and friends. Each is POSTed to the configured URL signed as Square
signs: header ``x-square-hmacsha256-signature`` = base64(HMAC-SHA256(key=signature key,
msg=notification URL + raw body)). Delivery runs as a background task on the server's event loop;
a non-2xx answer (3xx included), a timeout or a refused connection is retried after a backoff that
doubles each time (Square waits 1, 2, 4... minutes; the sandbox starts at a fraction of a second),
up to a number of attempts. Every delivery is recorded for ``GET /_sandbox/webhooks/deliveries``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import uuid
from dataclasses import asdict, dataclass, fields
from typing import Any

import httpx
import orjson

from sandbox.square_time import format_ms

__all__ = [
    "SIGNATURE_HEADER",
    "Delivery",
    "WebhookDispatcher",
    "WebhookSettings",
    "catalog_event",
    "customer_event",
    "payment_event",
    "sign",
]

#: The header carrying an event's signature.
SIGNATURE_HEADER = "x-square-hmacsha256-signature"
#: Deliveries in flight at once (further ones wait their turn, without using up attempts).
_CONCURRENT_DELIVERIES = 16


@dataclass
class WebhookSettings:
    """Where and how the sandbox delivers events; no ``url`` means no webhook subscription."""

    url: str | None = None
    #: The sandbox's fake signing key, unless another is set.
    signature_key: str = "sandbox-signature-key"
    #: The URL signed along with the body, as registered with Square; None means ``url``.
    notification_url: str | None = None
    #: The wait before the first retry, seconds; it doubles before each further one.
    retry_seconds: float = 0.2
    #: Attempts per delivery, the first included.
    max_attempts: int = 4
    #: How long the receiver has to answer, seconds (Square allows 10).
    timeout_seconds: float = 10.0

    @property
    def signed_url(self) -> str:
        """The URL the signature covers."""
        return self.notification_url or self.url or ""

    def update(self, values: dict[str, Any]) -> None:
        """Set the named settings, checking names, types and ranges; all are applied or none.

        Raises:
            ValueError: on an unknown name, or a value of the wrong type or range.
        """
        known = {f.name for f in fields(self)}
        checked: dict[str, Any] = {}
        for name, value in values.items():
            if name not in known:
                raise ValueError(f"unknown webhook setting {name!r}; known: {sorted(known)}")
            if name in ("url", "notification_url"):
                if value is not None and not (isinstance(value, str) and value.startswith("http")):
                    raise ValueError(f"{name} must be an http(s) URL or null")
            elif name == "signature_key":
                if not isinstance(value, str) or not value:
                    raise ValueError("signature_key must be a non-empty string")
            elif name == "max_attempts":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError("max_attempts must be an integer of at least 1")
            elif isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds")
            checked[name] = value
        for name, value in checked.items():
            setattr(self, name, value)

    def public(self) -> dict[str, Any]:
        """The settings as ``GET /_sandbox/webhooks`` shows them (whether a key is set, not the key)."""
        shown = {name: value for name, value in asdict(self).items() if name != "signature_key"}
        return {**shown, "signed_url": self.signed_url, "signature_key_set": bool(self.signature_key)}


def sign(signature_key: str, notification_url: str, body: bytes) -> str:
    """Square's signature of an event body: base64(HMAC-SHA256(key, notification_url + body))."""
    digest = hmac.new(signature_key.encode(), notification_url.encode() + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def _event(merchant_id: str, event_type: str, at_ms: int, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "merchant_id": merchant_id,
        "type": event_type,
        "event_id": str(uuid.uuid4()),
        "created_at": format_ms(at_ms),
        "data": data,
    }


def payment_event(merchant_id: str, event_type: str, payment: dict[str, Any], at_ms: int) -> dict[str, Any]:
    """A ``payment.created`` or ``payment.updated`` event carrying the whole payment."""
    data = {"type": "payment", "id": payment["id"], "object": {"payment": payment}}
    return _event(merchant_id, event_type, at_ms, data)


def customer_event(merchant_id: str, event_type: str, customer: dict[str, Any], at_ms: int) -> dict[str, Any]:
    """A ``customer.created``, ``customer.updated`` or ``customer.deleted`` event.

    A deletion's ``data`` has ``deleted: true`` (as Square's own example of the event does) and the
    customer as it was, which the caller passes without ``group_ids`` as Square sends it.
    """
    data: dict[str, Any] = {"type": "customer", "id": customer["id"]}
    if event_type == "customer.deleted":
        data["deleted"] = True
    data["object"] = {"customer": customer}
    return _event(merchant_id, event_type, at_ms, data)


def catalog_event(merchant_id: str, updated_ms: int) -> dict[str, Any]:
    """A ``catalog.version.updated`` event: only the catalog's new ``updated_at``, no object id."""
    data = {"type": "catalog_version", "object": {"catalog_version": {"updated_at": format_ms(updated_ms)}}}
    return _event(merchant_id, "catalog.version.updated", updated_ms, data)


@dataclass
class Delivery:
    """One delivery of one event to the webhook URL, as it stands.

    Attributes:
        event_id: the event's ``event_id`` (a duplicate delivery repeats it).
        type: the event's ``type``.
        attempts: POSTs made so far.
        last_status: the last answer's HTTP status, or None if there was none (timeout, refused).
        delivered: True once the receiver answered 2xx.
        finished: True once delivered or out of attempts.
        bad_signature: True if the event was deliberately mis-signed.
        error: why the last attempt got no answer, if it got none.
    """

    event_id: str
    type: str
    attempts: int = 0
    last_status: int | None = None
    delivered: bool = False
    finished: bool = False
    bad_signature: bool = False
    error: str | None = None


class WebhookDispatcher:
    """Delivers events in the background, retrying failures, and records every delivery."""

    def __init__(self, settings: WebhookSettings) -> None:
        """Deliver as ``settings`` say (read when an event is published, so changes apply to later events)."""
        self.settings = settings
        self.deliveries: list[Delivery] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None
        self._slots = asyncio.Semaphore(_CONCURRENT_DELIVERIES)

    @property
    def configured(self) -> bool:
        """True when there is a URL to deliver to."""
        return self.settings.url is not None

    def publish(
        self, event: dict[str, Any], *, bad_signature: bool = False, duplicate: bool = False
    ) -> list[Delivery]:
        """Start delivering ``event`` (twice with ``duplicate``); nothing happens without a URL.

        Must be called on the server's event loop.

        Args:
            event: the event body (any JSON object; its ``event_id`` and ``type`` are recorded).
            bad_signature: sign with the wrong key, as a forger would.
            duplicate: deliver the very same body twice, as Square may.

        Returns:
            The deliveries started (empty when no URL is configured).
        """
        settings = self.settings
        if settings.url is None:
            return []
        body = orjson.dumps(event)
        key = settings.signature_key + ("-not-the-key" if bad_signature else "")
        headers = {
            "content-type": "application/json",
            "user-agent": "Square Connect v2 (possync sandbox)",
            SIGNATURE_HEADER: sign(key, settings.signed_url, body),
        }
        started = []
        for _ in range(2 if duplicate else 1):
            record = Delivery(
                event_id=str(event.get("event_id", "")),
                type=str(event.get("type", "")),
                bad_signature=bad_signature,
            )
            self.deliveries.append(record)
            task = asyncio.get_running_loop().create_task(
                self._deliver(
                    record,
                    url=settings.url,
                    body=body,
                    headers=headers,
                    attempts=settings.max_attempts,
                    retry_seconds=settings.retry_seconds,
                    timeout_seconds=settings.timeout_seconds,
                )
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started.append(record)
        return started

    async def _deliver(
        self,
        record: Delivery,
        *,
        url: str,
        body: bytes,
        headers: dict[str, str],
        attempts: int,
        retry_seconds: float,
        timeout_seconds: float,
    ) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient()
        delay = retry_seconds
        for attempt in range(1, attempts + 1):
            async with self._slots:
                try:
                    response = await self._client.post(
                        url, content=body, headers=headers, timeout=timeout_seconds
                    )
                except httpx.HTTPError as exc:
                    record.last_status, record.error = None, f"{type(exc).__name__}: {exc}"
                else:
                    record.last_status, record.error = response.status_code, None
                record.attempts = attempt
            if record.last_status is not None and 200 <= record.last_status < 300:
                record.delivered = True
                break
            if attempt < attempts:
                # Square's backoff, scaled down: the wait doubles before each retry.
                await asyncio.sleep(delay)
                delay *= 2
        record.finished = True

    async def aclose(self) -> None:
        """Stop deliveries still in flight and close the HTTP client."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
