"""The Square sandbox's change and webhook admin endpoints: make changes now, and see them delivered.

Like every ``/_sandbox/`` endpoint they need no auth and are never faulted. Each change happens at
the clock's "now" (see :meth:`sandbox.square_data.SquareDataset.change_instant`), answers with the
new state and the event it published, and delivers that event to the webhook URL when one is set:

- ``POST /_sandbox/payments/create`` ``{"count"?}`` -> one ``payment.created`` per payment
- ``POST /_sandbox/payments/{payment_id}/update`` ``{"status"?, "refund_cents"?}`` -> ``payment.updated``
- ``POST /_sandbox/customers/create`` -> ``customer.created``
- ``POST /_sandbox/customers/{customer_id}/update`` -> ``customer.updated``
- ``POST /_sandbox/customers/{customer_id}/delete`` -> ``customer.deleted``
- ``POST /_sandbox/catalog/touch`` ``{"item_id"?}`` -> ``catalog.version.updated``

Each also takes ``"duplicate": true`` to deliver its event twice. The webhook endpoints:
``GET|POST /_sandbox/webhooks`` (settings), ``GET /_sandbox/webhooks/deliveries`` and
``POST /_sandbox/webhooks/send`` ``{"event": {...}, "bad_signature"?, "duplicate"?}``. Payments the
clock's advance creates or changes are published too, up to :data:`MAX_ADVANCE_EVENTS` per advance.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox.square_data import AdvanceResult, SquareDataset
from sandbox.square_webhooks import (
    WebhookDispatcher,
    catalog_event,
    customer_event,
    payment_event,
)

__all__ = ["MAX_ADVANCE_EVENTS", "MAX_CREATED_PAYMENTS", "ChangeAdmin"]

#: Events one clock advance publishes at most (the rest are counted as skipped): an advance may
#: create or change thousands of payments, and a test's receiver wants a bounded stream.
MAX_ADVANCE_EVENTS = 500
#: Payments one ``/_sandbox/payments/create`` request makes at most.
MAX_CREATED_PAYMENTS = 100


def _json(body: Any, status: int = 200) -> Response:
    """A plain JSON response (admin answers are not in Square's shape)."""
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


class _BadRequest(Exception):
    """An admin request the sandbox refuses, with the status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise _BadRequest("the body is not JSON") from None
    if not isinstance(body, dict):
        raise _BadRequest("the body must be a JSON object")
    return body


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise _BadRequest(f"{name} must be a boolean")
    return value


class ChangeAdmin:
    """Change handlers over the dataset, publishing their events through the dispatcher."""

    def __init__(self, data: SquareDataset, webhooks: WebhookDispatcher) -> None:
        """Change ``data`` on request and deliver the events through ``webhooks``."""
        self.data = data
        self.webhooks = webhooks
        #: Events clock advances did not publish, beyond :data:`MAX_ADVANCE_EVENTS` each.
        self.skipped_events = 0

    def routes(self) -> list[Route]:
        """The change and webhook routes."""
        handlers: list[tuple[str, Callable[[Request], Awaitable[Response]], list[str]]] = [
            ("/_sandbox/payments/create", self.create_payments, ["POST"]),
            ("/_sandbox/payments/{payment_id}/update", self.update_payment, ["POST"]),
            ("/_sandbox/customers/create", self.create_customer, ["POST"]),
            ("/_sandbox/customers/{customer_id}/update", self.update_customer, ["POST"]),
            ("/_sandbox/customers/{customer_id}/delete", self.delete_customer, ["POST"]),
            ("/_sandbox/catalog/touch", self.touch_catalog, ["POST"]),
            ("/_sandbox/webhooks", self.webhook_settings, ["GET", "POST"]),
            ("/_sandbox/webhooks/deliveries", self.webhook_deliveries, ["GET"]),
            ("/_sandbox/webhooks/send", self.webhook_send, ["POST"]),
        ]
        return [Route(path, self._guarded(handler), methods=methods) for path, handler, methods in handlers]

    @staticmethod
    def _guarded(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except _BadRequest as exc:
                return _json({"error": str(exc)}, status=exc.status)

        return endpoint

    def _publish(self, event: dict[str, Any], duplicate: bool) -> dict[str, Any]:
        self.webhooks.publish(event, duplicate=duplicate)
        return event

    # -- changes -------------------------------------------------------------------------------------

    async def create_payments(self, request: Request) -> Response:
        """Make ``count`` new payments now (default 1): ``{"payments", "events", "visible_at"}``.

        They are created at the clock's "now" (ticked past the newest payment if need be), as they
        would be at the end of a clock advance, and each publishes ``payment.created``.
        ``visible_at`` is the wall-clock instant (UTC, microseconds; not the sandbox clock) from
        which the API serves them, for measuring how long they take to reach a warehouse.
        """
        body = await _body(request)
        duplicate = _flag(body, "duplicate")
        count = body.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_CREATED_PAYMENTS:
            raise _BadRequest(f"count must be an integer from 1 to {MAX_CREATED_PAYMENTS}")
        data = self.data
        newest = data.created_ms(data.payment_count - 1) if data.payment_count else data.now_ms - 1
        # Not before the newest payment (creation times only grow), and never moving the clock back.
        at = data.change_instant(max(newest, data.now_ms - 1))
        # A cap just past creation: a payment made now has had no time to change yet.
        for _ in range(count):
            data.add_payment(at, cap_ms=at + 1)
        visible_at = datetime.now(UTC).isoformat()
        payments, events = [], []
        for index in range(data.payment_count - count, data.payment_count):
            state = data.payment_state(index)
            payment = state.to_api()
            event = payment_event(data.merchant_id, "payment.created", payment, state.created_ms)
            payments.append(payment)
            events.append(self._publish(event, duplicate))
        return _json({"payments": payments, "events": events, "visible_at": visible_at})

    async def update_payment(self, request: Request) -> Response:
        """Capture, void or refund a payment now: ``{"payment", "event"}``."""
        body = await _body(request)
        duplicate = _flag(body, "duplicate")
        status, refund = body.get("status"), body.get("refund_cents")
        if status is not None and not isinstance(status, str):
            raise _BadRequest("status must be a string")
        if refund is not None and (isinstance(refund, bool) or not isinstance(refund, int)):
            raise _BadRequest("refund_cents must be an integer")
        payment_id = request.path_params["payment_id"]
        try:
            state = self.data.update_payment(payment_id, status=status, refund_cents=refund)
        except KeyError:
            raise _BadRequest(f"no payment {payment_id!r}", status=404) from None
        except ValueError as exc:
            raise _BadRequest(str(exc), status=409) from None
        payment = state.to_api()
        event = payment_event(self.data.merchant_id, "payment.updated", payment, state.updated_ms)
        return _json({"payment": payment, "event": self._publish(event, duplicate)})

    async def create_customer(self, request: Request) -> Response:
        """Add a customer now: ``{"customer", "event"}``."""
        body = await _body(request)
        duplicate = _flag(body, "duplicate")
        customer = self.data.create_customer()
        event = customer_event(self.data.merchant_id, "customer.created", customer, self.data.now_ms)
        return _json({"customer": customer, "event": self._publish(event, duplicate)})

    async def update_customer(self, request: Request) -> Response:
        """Change a customer now (version, updated_at, reference_id): ``{"customer", "event"}``."""
        body = await _body(request)
        duplicate = _flag(body, "duplicate")
        customer_id = request.path_params["customer_id"]
        try:
            customer = self.data.update_customer(customer_id)
        except KeyError:
            raise _BadRequest(f"no customer {customer_id!r}", status=404) from None
        event = customer_event(self.data.merchant_id, "customer.updated", customer, self.data.now_ms)
        return _json({"customer": customer, "event": self._publish(event, duplicate)})

    async def delete_customer(self, request: Request) -> Response:
        """Delete a customer now: ``{"customer" (as the event carries it), "deleted_at", "event"}``."""
        body = await _body(request)
        duplicate = _flag(body, "duplicate")
        customer_id = request.path_params["customer_id"]
        try:
            customer, at = self.data.delete_customer(customer_id)
        except KeyError:
            raise _BadRequest(f"no customer {customer_id!r}", status=404) from None
        event = customer_event(self.data.merchant_id, "customer.deleted", customer, at)
        return _json(
            {
                "customer": customer,
                "deleted_at": event["created_at"],
                "event": self._publish(event, duplicate),
            }
        )

    async def touch_catalog(self, request: Request) -> Response:
        """Edit an item now (``{"item_id"}`` or the first live one): ``{"item", "event"}``."""
        body = await _body(request)
        duplicate = _flag(body, "duplicate")
        item_id = body.get("item_id")
        if item_id is not None and not isinstance(item_id, str):
            raise _BadRequest("item_id must be a string")
        try:
            item = self.data.touch_item(item_id)
        except KeyError:
            raise _BadRequest(f"no live item {item_id!r}", status=404) from None
        event = catalog_event(self.data.merchant_id, self.data.catalog_latest_ms)
        return _json({"item": item, "event": self._publish(event, duplicate)})

    def publish_advance(self, result: AdvanceResult) -> None:
        """Publish ``payment.created`` and ``payment.updated`` for what a clock advance did (bounded)."""
        if not self.webhooks.configured:
            return
        changes = [("payment.created", payment_id) for payment_id in result.created]
        changes += [("payment.updated", payment_id) for payment_id in result.changed]
        for event_type, payment_id in changes[:MAX_ADVANCE_EVENTS]:
            state = self.data.payment_by_id(payment_id)
            if state is None:
                continue
            at = state.created_ms if event_type == "payment.created" else state.updated_ms
            self.webhooks.publish(payment_event(self.data.merchant_id, event_type, state.to_api(), at))
        self.skipped_events += max(0, len(changes) - MAX_ADVANCE_EVENTS)

    # -- webhooks ------------------------------------------------------------------------------------

    async def webhook_settings(self, request: Request) -> Response:
        """Read (GET) or change (POST, partial; ``"url": null`` stops deliveries) the webhook settings."""
        if request.method == "POST":
            try:
                self.webhooks.settings.update(await _body(request))
            except ValueError as exc:
                raise _BadRequest(str(exc)) from None
        return _json({**self.webhooks.settings.public(), "skipped_events": self.skipped_events})

    async def webhook_deliveries(self, request: Request) -> Response:
        """Every delivery so far, oldest first: ``[{event_id, type, attempts, last_status, delivered}]``."""
        return _json([asdict(delivery) for delivery in self.webhooks.deliveries])

    async def webhook_send(self, request: Request) -> Response:
        """Deliver a given event body, maybe mis-signed or twice: ``{"deliveries": [...]}``."""
        body = await _body(request)
        event = body.get("event")
        if not isinstance(event, dict):
            raise _BadRequest("event must be a JSON object: the body to deliver")
        if not self.webhooks.configured:
            raise _BadRequest('no webhook url is set: POST /_sandbox/webhooks {"url": ...} first', 409)
        started = self.webhooks.publish(
            event, bad_signature=_flag(body, "bad_signature"), duplicate=_flag(body, "duplicate")
        )
        return _json({"deliveries": [asdict(delivery) for delivery in started]})
