"""A local Square Connect v2 server (Starlette ASGI app) over the deterministic sandbox dataset.

It serves, faithfully enough for possync's Square client and the official ``squareup`` SDK:
``GET /v2/locations``, ``GET /v2/payments``, ``GET /v2/payments/{payment_id}``,
``GET /v2/catalog/list``, ``POST /v2/catalog/search``, ``GET /v2/customers``,
``GET /v2/customers/{customer_id}`` and ``POST /v2/customers/search``, with Square's bearer auth,
``Square-Version`` handling, error shape and cursor pagination, including its traps: ListPayments
defaults to the main location and the last year, pages may come back short, and the last page can
be marked three different ways.

Admin endpoints under ``/_sandbox/`` (no auth, never faulted) move the clock, inject faults, count
requests, serve the ground truth as NDJSON, change payments, customers and the catalog now, and
deliver those changes as signed webhook events. Run it with ``python -m sandbox.square --help``.

The parts live in modules named for what they do, re-exported here where other code uses them:
:mod:`sandbox.square_config`, :mod:`sandbox.square_cli` (options), :mod:`sandbox.square_endpoints`
(the v2 handlers), :mod:`sandbox.square_pagination`, :mod:`sandbox.square_params`,
:mod:`sandbox.square_errors`, :mod:`sandbox.square_faults`, :mod:`sandbox.square_admin`,
:mod:`sandbox.square_changes` (changes and webhook admin) and :mod:`sandbox.square_webhooks`.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox.local_service import serve_app
from sandbox.square_admin import SandboxAdmin
from sandbox.square_changes import ChangeAdmin
from sandbox.square_cli import build_parser, config_from_args
from sandbox.square_config import FINAL_PAGE_MODES, SquareSandboxConfig
from sandbox.square_data import SquareDataset
from sandbox.square_endpoints import SquareEndpoints
from sandbox.square_errors import RequestError, error_response, not_found
from sandbox.square_faults import FaultInjector, FaultSettings
from sandbox.square_pagination import Paginator
from sandbox.square_webhooks import WebhookDispatcher, WebhookSettings

__all__ = [
    "FINAL_PAGE_MODES",
    "FaultSettings",
    "SquareSandbox",
    "SquareSandboxConfig",
    "WebhookSettings",
    "build_parser",
    "config_from_args",
    "create_app",
    "main",
]

#: The ``Square-Version`` answered when the request names none (the release of our OpenAPI spec).
DEFAULT_SQUARE_VERSION = "2025-08-20"
_VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class SquareSandbox:
    """The sandbox's state (dataset, faults, counters, webhooks), its handlers and the wrapper around them."""

    def __init__(self, config: SquareSandboxConfig) -> None:
        """Generate the dataset ``config`` describes and wire the handlers to it.

        Raises:
            ValueError: on an unknown ``final_page_mode``.
        """
        if config.final_page_mode not in FINAL_PAGE_MODES:
            raise ValueError(f"final_page_mode must be one of {FINAL_PAGE_MODES}")
        anchor = config.anchor or datetime.now(UTC).replace(second=0, microsecond=0)
        self.config = config
        self.faults = config.faults
        self.data = SquareDataset(
            seed=config.seed,
            anchor=anchor,
            payments=config.payments,
            customers=config.customers,
            items=config.items,
        )
        self.fault_injector = FaultInjector(self.faults, config.seed)
        self.stats: dict[str, dict[str, int]] = {}
        self.api = SquareEndpoints(self.data, Paginator(config))
        self.webhooks = WebhookDispatcher(config.webhooks)
        self.changes = ChangeAdmin(self.data, self.webhooks)
        self.admin = SandboxAdmin(
            self.data, config, self.faults, self.stats, on_advance=self.changes.publish_advance
        )

    # -- plumbing ----------------------------------------------------------------------------------

    def _count(self, template: str, status: int) -> None:
        by_status = self.stats.setdefault(template, {})
        by_status[str(status)] = by_status.get(str(status), 0) + 1

    def v2(self, method: str, path: str, handler: Callable[[Request], Awaitable[dict[str, Any]]]) -> Route:
        """Wrap a Square handler with auth, version checks, faults, counting and JSON encoding."""
        template = f"{method} {path}"

        async def endpoint(request: Request) -> Response:
            response = await self._serve(request, handler)
            self._count(template, response.status_code)
            return response

        return Route(path, endpoint, methods=[method])

    async def _serve(
        self, request: Request, handler: Callable[[Request], Awaitable[dict[str, Any]]]
    ) -> Response:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.config.token.encode()
        ):
            return error_response(
                401, "AUTHENTICATION_ERROR", "UNAUTHORIZED", "This request could not be authorized."
            )
        if self.faults.token_revoked:
            return error_response(
                401, "AUTHENTICATION_ERROR", "ACCESS_TOKEN_REVOKED", "The access token has been revoked."
            )
        version = request.headers.get("square-version", DEFAULT_SQUARE_VERSION)
        try:
            if not _VERSION_RE.match(version):
                raise ValueError(version)
            date.fromisoformat(version)
        except ValueError:
            return error_response(
                400,
                "INVALID_REQUEST_ERROR",
                "INVALID_SQUARE_VERSION_FORMAT",
                "Square-Version must be a date formatted YYYY-MM-DD.",
            )
        fault = await self.fault_injector.response()
        if fault is not None:
            return fault
        try:
            body = await handler(request)
        except RequestError as exc:
            return exc.response()
        return Response(
            orjson.dumps(body), media_type="application/json", headers={"Square-Version": version}
        )


def create_app(config: SquareSandboxConfig) -> Starlette:
    """Build the sandbox ASGI app; its state lives on ``app.state.sandbox``."""
    sandbox = SquareSandbox(config)
    api = sandbox.api
    routes = [
        sandbox.v2("GET", "/v2/locations", api.list_locations),
        sandbox.v2("GET", "/v2/payments", api.list_payments),
        sandbox.v2("GET", "/v2/payments/{payment_id}", api.get_payment),
        sandbox.v2("GET", "/v2/catalog/list", api.list_catalog),
        sandbox.v2("POST", "/v2/catalog/search", api.search_catalog),
        sandbox.v2("GET", "/v2/customers", api.list_customers),
        sandbox.v2("POST", "/v2/customers/search", api.search_customers),
        sandbox.v2("GET", "/v2/customers/{customer_id}", api.get_customer),
        *sandbox.admin.routes(),
        *sandbox.changes.routes(),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        # Deliveries still retrying when the server stops are abandoned, as a process exit would.
        await sandbox.webhooks.aclose()

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found}, lifespan=lifespan)
    app.state.sandbox = sandbox
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Run the sandbox on uvicorn until interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    serve_app(create_app(config), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
