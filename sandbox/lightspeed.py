"""A local Lightspeed Retail R-Series API V3 server (Starlette ASGI app) over a deterministic dataset.

It serves ``GET /API/V3/Account/{accountID}/Sale.json`` and ``Item.json`` in the V3 envelope with
string scalars, cursor pagination, operator filters, ``sort`` and ``load_relations``; bearer auth
with expiring access tokens and the refresh grant at ``POST /auth/oauth/token`` (optionally
rotating refresh tokens); and the documented leaky-bucket rate limit with its headers on every
response. Admin endpoints under ``/_sandbox/`` move the clock, inject faults, count and measure
requests (pacing against the bucket, refresh intervals) and serve the ground truth. Run it with
``python -m sandbox.lightspeed --help``.

The parts: :mod:`sandbox.lightspeed_cli` (options and config), :mod:`sandbox.lightspeed_data`
(sales, items, clock), :mod:`sandbox.lightspeed_query` (filters, sort, cursors, envelope, errors),
:mod:`sandbox.lightspeed_auth` (tokens, bucket) and :mod:`sandbox.lightspeed_admin`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox.lightspeed_admin import LightspeedAdmin, LightspeedFaults, LightspeedMeasurements
from sandbox.lightspeed_auth import LeakyBucket, SandboxClock, TokenStore
from sandbox.lightspeed_cli import LightspeedSandboxConfig, build_parser, config_from_args
from sandbox.lightspeed_data import ItemState, LightspeedDataset, SaleState
from sandbox.lightspeed_query import (
    LightspeedError,
    ListQuery,
    Resource,
    error_response,
    parse_query,
    run_query,
)
from sandbox.local_service import serve_app

__all__ = [
    "ITEM",
    "SALE",
    "LightspeedSandbox",
    "LightspeedSandboxConfig",
    "build_parser",
    "config_from_args",
    "create_app",
    "main",
]

#: ``Sale.json``: filterable fields, the documented sort fields and relations.
SALE = Resource(
    name="Sale",
    id_field="saleID",
    fields={
        "saleID": ("int", lambda s: s.sale_id),
        "timeStamp": ("time", lambda s: s.update_time),
        "updatetime": ("time", lambda s: s.update_time),
        "createTime": ("time", lambda s: s.create_time),
        "completeTime": ("time", lambda s: s.complete_time),
        "completed": ("bool", lambda s: s.completed),
        "customerID": ("int", lambda s: s.customer_id),
        "employeeID": ("int", lambda s: s.employee_id),
        "shopID": ("int", lambda s: s.shop_id),
    },
    sortable=("saleID", "timeStamp", "completeTime", "updatetime"),
    relations=("SaleLines", "SalePayments", "SalePayments.PaymentType", "Customer", "Customer.Contact"),
)
#: ``Item.json``: filterable fields, the documented sort fields and relations.
ITEM = Resource(
    name="Item",
    id_field="itemID",
    fields={
        "itemID": ("int", lambda i: i.item_id),
        "timeStamp": ("time", lambda i: i.time_stamp),
        "createTime": ("time", lambda i: i.create_time),
        "categoryID": ("int", lambda i: i.category_id),
        "description": ("str", lambda i: i.description),
        "manufacturerSku": ("str", lambda i: i.manufacturer_sku),
    },
    sortable=("itemID", "timeStamp", "description"),
    relations=("Prices", "Category", "Manufacturer", "ItemShops", "Note", "TaxClass", "ItemAttributes"),
)


class LightspeedSandbox:
    """The sandbox's state (dataset, tokens, bucket, faults, measurements) and its API handlers."""

    def __init__(self, config: LightspeedSandboxConfig) -> None:
        """Generate the dataset ``config`` describes and set up tokens and the bucket.

        Raises:
            ValueError: on bad counts or limits.
        """
        if config.bucket_size <= 0 or config.drip_rate <= 0:
            raise ValueError("bucket_size and drip_rate must be positive")
        anchor = config.anchor or datetime.now(UTC).replace(second=0, microsecond=0)
        self.config = config
        self.clock = SandboxClock()
        self.data = LightspeedDataset(seed=config.seed, anchor=anchor, sales=config.sales, items=config.items)
        self.bucket = LeakyBucket(size=config.bucket_size, drip_rate=config.drip_rate, clock=self.clock)
        self.tokens = TokenStore(
            client_id=config.client_id,
            client_secret=config.client_secret,
            refresh_token=config.refresh_token,
            lifetime_seconds=config.access_token_lifetime_seconds,
            rotate=config.rotate_refresh_tokens,
            clock=self.clock,
        )
        if config.access_token:
            self.tokens.issue(config.access_token)
        self.faults = LightspeedFaults(rate_500=config.rate_500, latency_ms=config.latency_ms)
        self._fault_rng = random.Random(f"{config.seed}:faults")
        self.measurements = LightspeedMeasurements()

    def list_route(self, resource: Resource, records: Any) -> Route:
        """The ``GET .../{resource}.json`` route over ``records()`` (called per request)."""
        path = f"/API/V3/Account/{{account_id}}/{resource.name}.json"
        template = f"GET {path}"

        async def endpoint(request: Request) -> Response:
            # Real time, not the skippable clock: pacing is measured as the clients lived it.
            arrived = time.monotonic()
            response, cost = await self._serve(request, resource, records())
            self.measurements.count(template, response.status_code)
            self.measurements.api_request(arrived, cost, response.status_code)
            return response

        return Route(path, endpoint, methods=["GET"])

    async def _serve(
        self, request: Request, resource: Resource, records: Sequence[Any]
    ) -> tuple[Response, float]:
        """The answer and the query's cost in drips (1 when the query was never parsed)."""
        cost = 1.0
        try:
            denied = self.tokens.check(request)
            if denied is not None:
                return self._with_headers(denied, cost), cost
            if request.path_params["account_id"] != str(self.config.account_id):
                raise LightspeedError(403, "Not authorized for this account.", "ForbiddenException")
            params = list(request.query_params.multi_items())
            query: ListQuery = parse_query(resource, params)
            cost = query.cost
            wait = self.bucket.take(cost)
            if wait is not None:
                response = error_response(429, "Rate limit exceeded.", "RateLimitException")
                response.headers["Retry-After"] = self.bucket.retry_after(wait)
                response.headers["X-LS-API-RateLimit-Type"] = "api-leaky-bucket"
                return self._with_headers(response, cost), cost
            if self.faults.latency_ms:
                await asyncio.sleep(self.faults.latency_ms / 1000)
            if self.faults.draw_500(self._fault_rng):
                return self._with_headers(error_response(500, "Internal server error."), cost), cost
            url = str(request.url.replace(query=""))
            body = run_query(resource, records, query, params, url.rstrip("?"), _render)
        except LightspeedError as exc:
            return self._with_headers(exc.response(), cost), cost
        return self._with_headers(Response(orjson.dumps(body), media_type="application/json"), cost), cost

    def _with_headers(self, response: Response, cost: float) -> Response:
        response.headers.update(self.bucket.headers(cost))
        response.headers["X-LS-Acct-Id"] = str(self.config.account_id)
        response.headers["X-LS-OAuth-Client-Id"] = self.config.client_id
        return response

    async def token(self, request: Request) -> Response:
        """``POST /auth/oauth/token``, counted; a successful refresh is logged."""
        response = await self.tokens.token_endpoint(request)
        self.measurements.count("POST /auth/oauth/token", response.status_code)
        if response.status_code == 200:
            self.measurements.refreshed(time.monotonic(), self.clock.now(), self.tokens.lifetime_seconds)
        return response


def _render(record: SaleState | ItemState) -> dict[str, Any]:
    return record.to_api()


async def _not_found(request: Request, exc: Exception) -> Response:
    """Starlette's 404 and 405 in Lightspeed's error shape."""
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    return error_response(status, f"No route for {request.method} {request.url.path}.", "NotFoundException")


def create_app(config: LightspeedSandboxConfig) -> Starlette:
    """Build the sandbox ASGI app; its state lives on ``app.state.sandbox``."""
    sandbox = LightspeedSandbox(config)
    routes = [
        sandbox.list_route(SALE, lambda: sandbox.data.sales),
        sandbox.list_route(ITEM, lambda: sandbox.data.items),
        Route("/auth/oauth/token", sandbox.token, methods=["POST"]),
        *LightspeedAdmin(sandbox).routes(),
    ]
    app = Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_found})
    app.state.sandbox = sandbox
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Run the sandbox on uvicorn until interrupted."""
    args = build_parser().parse_args(argv)
    serve_app(create_app(config_from_args(args)), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
