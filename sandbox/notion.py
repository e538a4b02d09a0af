"""A local Notion API server (Starlette ASGI app) over a deterministic workspace, with live webhook events.

It serves ``GET /v1/pages/{page_id}`` as Notion does: bearer auth with the integration token, the
``Notion-Version`` header required (the page's ``parent`` follows it: data sources from
2025-09-03), Notion's error objects (``{"object": "error", "status", "code", "message",
"request_id"}``), and a per-integration token bucket (3 requests per second with bursts by default)
past which requests get 429 ``rate_limited`` with ``Retry-After`` in whole seconds. Admin endpoints
under ``/_sandbox/`` inject faults, count requests, serve the ground truth, and make events: each
changes a page, then goes to the webhook URL signed like Notion's. Run it with
``python -m sandbox.notion --help``.

The parts: :mod:`sandbox.notion_cli` (options and config), :mod:`sandbox.notion_data` (pages and
their changes), :mod:`sandbox.notion_events` (event shape, signature, delivery) and
:mod:`sandbox.notion_admin`.
"""

from __future__ import annotations

import asyncio
import math
import random
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox.local_service import serve_app
from sandbox.notion_admin import NotionAdmin, NotionFaults, NotionMeasurements
from sandbox.notion_cli import NotionSandboxConfig, build_parser, config_from_args
from sandbox.notion_data import NotionDataset
from sandbox.notion_events import SandboxEventError, WebhookDeliverer, build_event
from sandbox.notion_pages import PageState, format_time, normalise_id

__all__ = [
    "EVENT_TYPES",
    "KNOWN_VERSIONS",
    "PAGE_ENDPOINT",
    "NotionSandbox",
    "NotionSandboxConfig",
    "SandboxEventError",
    "TokenBucket",
    "build_parser",
    "config_from_args",
    "create_app",
    "main",
    "notion_error",
]

#: ``Notion-Version`` values the API accepts.
KNOWN_VERSIONS = ("2021-05-13", "2021-08-16", "2022-02-22", "2022-06-28", "2025-09-03", "2026-03-11")
#: The page endpoint's template, as stats count it.
PAGE_ENDPOINT = "GET /v1/pages/{page_id}"
#: Page events the sandbox makes.
EVENT_TYPES = (
    "page.created",
    "page.properties_updated",
    "page.content_updated",
    "page.deleted",
    "page.undeleted",
    "page.moved",
)
#: How often each type is drawn for a batch of random events (weights, in ``EVENT_TYPES`` order).
_BATCH_WEIGHTS = (15, 40, 20, 10, 5, 10)


def notion_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """Notion's error object: ``{"object": "error", "status", "code", "message", "request_id"}``."""
    body = {
        "object": "error",
        "status": status,
        "code": code,
        "message": message,
        "request_id": str(uuid.uuid4()),
    }
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


class TokenBucket:
    """The integration's rate limit: ``size`` requests of burst, refilled at ``rate`` per second.

    Args:
        size: the most requests answered back to back, from full.
        rate: requests per second the bucket refills at (Notion: 3 on average).
    """

    def __init__(self, *, size: float, rate: float) -> None:
        if size < 1 or rate <= 0:
            raise ValueError("burst must be at least 1 and requests_per_second positive")
        self.size = size
        self.rate = rate
        self._tokens = size
        self._at = time.monotonic()

    @property
    def tokens(self) -> float:
        """Tokens available now."""
        return min(self.size, self._tokens + (time.monotonic() - self._at) * self.rate)

    def take(self) -> float | None:
        """Take one token: None if there was one, else the seconds until there will be."""
        now = time.monotonic()
        self._tokens = min(self.size, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return None
        return (1 - self._tokens) / self.rate


class NotionSandbox:
    """The sandbox's state (pages, bucket, faults, measurements, webhook) and its API handler."""

    def __init__(self, config: NotionSandboxConfig) -> None:
        """Generate the workspace ``config`` describes.

        Raises:
            ValueError: on bad counts or limits.
        """
        anchor = config.anchor or datetime.now(UTC).replace(second=0, microsecond=0)
        self.config = config
        self.data = NotionDataset(
            seed=config.seed,
            pages=config.pages,
            anchor=anchor,
            precision_seconds=config.edit_time_precision_seconds,
            edit_times_may_tie=config.edit_times_may_tie,
        )
        self.bucket = TokenBucket(size=config.burst, rate=config.requests_per_second)
        self.faults = NotionFaults(
            rate_500=config.rate_500, rate_503=config.rate_503, latency_ms=config.latency_ms
        )
        self._fault_rng = random.Random(f"{config.seed}:faults")
        self.measurements = NotionMeasurements()
        ids = random.Random(f"{config.seed}:subscription")
        self.subscription_id = str(uuid.UUID(int=ids.getrandbits(128), version=4))
        self.integration_id = str(uuid.UUID(int=ids.getrandbits(128), version=4))
        token = config.verification_token or "secret_" + secrets.token_urlsafe(24)
        self.webhook = WebhookDeliverer(
            url=config.webhook_url,
            verification_token=token,
            retry_seconds=config.delivery_retry_seconds,
            timeout_seconds=config.delivery_timeout_seconds,
        )

    async def page(self, request: Request) -> Response:
        """``GET /v1/pages/{page_id}``, counted."""
        arrived = time.monotonic()
        response = await self._serve_page(request)
        self.measurements.count(PAGE_ENDPOINT, response.status_code, arrived)
        return response

    async def _serve_page(self, request: Request) -> Response:
        if request.headers.get("authorization", "") != f"Bearer {self.config.token}":
            return notion_error(401, "unauthorized", "API token is invalid.")
        wait = self.bucket.take()
        if wait is not None:
            return notion_error(
                429,
                "rate_limited",
                "You have been rate limited. Please try again in a few minutes.",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        version = request.headers.get("notion-version")
        if version is None:
            return notion_error(
                400,
                "missing_version",
                "Notion-Version header failed validation: Notion-Version header should be defined, "
                "instead was `undefined`.",
            )
        if version not in KNOWN_VERSIONS:
            return notion_error(
                400,
                "validation_error",
                f"Notion-Version header failed validation: Notion-Version header should be one of "
                f"{', '.join(KNOWN_VERSIONS)}, instead was `{version}`.",
            )
        if self.faults.latency_ms:
            await asyncio.sleep(self.faults.latency_ms / 1000)  # injected latency, by configuration
        failure = self.faults.draw(self._fault_rng)
        if failure == 500:
            return notion_error(500, "internal_server_error", "Unexpected error occurred.")
        if failure == 503:
            return notion_error(503, "service_unavailable", "Notion is unavailable, please try again later.")
        raw_id = request.path_params["page_id"]
        page_id = normalise_id(raw_id)
        if page_id is None:
            return notion_error(
                400,
                "validation_error",
                f'path failed validation: path.page_id should be a valid uuid, instead was `"{raw_id}"`.',
            )
        page = self.data.find(page_id)
        if page is None or page.purged:
            return notion_error(
                404,
                "object_not_found",
                f"Could not find page with ID: {page_id}. Make sure the relevant pages and databases "
                "are shared with your integration.",
            )
        body = {**page.to_api(version), "request_id": str(uuid.uuid4())}
        return Response(orjson.dumps(body), media_type="application/json")

    # -- events --------------------------------------------------------------------------------------

    def make_event(
        self,
        event_type: str,
        page_id: str | None = None,
        *,
        purge: bool = False,
        duplicate: bool = False,
        bad_signature: bool = False,
    ) -> tuple[dict[str, Any], PageState]:
        """Change a page as ``event_type`` says, then deliver the event in the background.

        Args:
            event_type: one of :data:`EVENT_TYPES`.
            page_id: the page to change (not for ``page.created``); None picks one at random.
            purge: with ``page.deleted``, delete the page for good (the API then answers 404).
            duplicate: deliver the event a second time once the first copy is settled.
            bad_signature: deliver a wrongly signed copy first.

        Returns:
            The event as first sent, and the page it changed.

        Raises:
            SandboxEventError: for an unknown type, a page that cannot take the change, or no URL.
        """
        if event_type not in EVENT_TYPES:
            raise SandboxEventError(f"unknown event type {event_type!r}; known: {', '.join(EVENT_TYPES)}")
        if not self.webhook.url:
            raise SandboxEventError("no webhook URL configured: POST /_sandbox/webhook first", status=409)
        if event_type == "page.created" and page_id is not None:
            raise SandboxEventError("page.created makes a new page: give no page_id")
        now_ms = int(time.time() * 1000)
        page = self.data.create(now_ms) if event_type == "page.created" else self._target(event_type, page_id)
        data: dict[str, Any] = {}
        if event_type == "page.properties_updated":
            data["updated_properties"] = self.data.update_properties(page, now_ms)
        elif event_type == "page.content_updated":
            blocks = self.data.update_content(page, now_ms)
            data["updated_blocks"] = [{"id": block, "type": "block"} for block in blocks]
        elif event_type == "page.deleted":
            self.data.delete(page, now_ms, purge=purge)
        elif event_type == "page.undeleted":
            self.data.undelete(page, now_ms)
        elif event_type == "page.moved":
            self.data.move(page, now_ms)
        version = self.config.webhook_api_version
        event = build_event(
            event_id=str(uuid.UUID(int=self.data.rng.getrandbits(128), version=4)),
            event_type=event_type,
            timestamp=format_time(now_ms),
            page_id=page.id,
            data={"parent": page.parent.to_event(version, self.data.workspace_id), **data},
            author_id=page.last_edited_by,
            workspace_id=self.data.workspace_id,
            workspace_name=self.config.workspace_name,
            subscription_id=self.subscription_id,
            integration_id=self.integration_id,
            api_version=version,
        )
        page.events += 1
        self.webhook.send(event, duplicate=duplicate, bad_signature=bad_signature)
        return event, page

    def _target(self, event_type: str, page_id: str | None) -> PageState:
        """The page an event changes: the one named, or a random one that can take the change."""
        wanted: Literal["trashed", "live"] = "trashed" if event_type == "page.undeleted" else "live"
        if page_id is None:
            page = self.data.choose(wanted)
            if page is None:
                raise SandboxEventError(f"no {wanted} page left for {event_type}", status=409)
            return page
        found = self.data.find(page_id)
        if found is None or found.purged:
            raise SandboxEventError(f"no page {page_id!r}", status=404)
        if event_type == "page.undeleted" and not found.in_trash:
            raise SandboxEventError(f"page {page_id} is not in the trash", status=409)
        return found

    def make_batch(self, count: int) -> list[dict[str, Any]]:
        """``count`` random events (never purges), drawn from the seeded generator.

        Returns:
            ``{"id", "type", "page_id"}`` per event.
        """
        made = []
        for _ in range(count):
            event_type = self.data.rng.choices(EVENT_TYPES, weights=_BATCH_WEIGHTS)[0]
            if event_type == "page.undeleted" and self.data.choose("trashed") is None:
                event_type = "page.properties_updated"
            event, page = self.make_event(event_type)
            made.append({"id": event["id"], "type": event_type, "page_id": page.id})
        return made


async def _not_found(request: Request, exc: Exception) -> Response:
    """Starlette's 404 and 405 as Notion's ``invalid_request_url``."""
    return notion_error(400, "invalid_request_url", "Invalid request URL.")


def create_app(config: NotionSandboxConfig) -> Starlette:
    """Build the sandbox ASGI app; its state lives on ``app.state.sandbox``."""
    sandbox = NotionSandbox(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await sandbox.webhook.close()

    routes = [
        Route("/v1/pages/{page_id}", sandbox.page, methods=["GET"]),
        *NotionAdmin(sandbox).routes(),
    ]
    app = Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_found}, lifespan=lifespan)
    app.state.sandbox = sandbox
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Run the sandbox on uvicorn until interrupted."""
    args = build_parser().parse_args(argv)
    serve_app(create_app(config_from_args(args)), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
