"""The Notion sandbox's admin endpoints under ``/_sandbox/``: faults, stats, truth, webhook and events.

They need no auth and are never limited or faulted. Tests and the demo use them to inject failures,
count requests (and check that a client pool kept to the rate limit), point the webhook at a
receiver and run its verification handshake, make events (each changes a page, then is delivered
signed), follow the deliveries, and read the ground truth of ``notion_pages``.
"""

from __future__ import annotations

import random
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox.notion_events import SandboxEventError
from sandbox.notion_pages import DATA_SOURCE_VERSION

if TYPE_CHECKING:
    from sandbox.notion import NotionSandbox

__all__ = ["FIRST_SECOND", "LOG_ENTRIES", "NotionAdmin", "NotionFaults", "NotionMeasurements"]

#: The most API requests the measurements remember; the oldest are dropped first.
LOG_ENTRIES = 1_000_000
#: 429s within this many seconds of the first API request are expected while a pool finds its pace.
FIRST_SECOND = 1.0
#: The most events one batch may make.
MAX_BATCH = 10_000
_FAULT_NAMES = ("rate_500", "rate_503", "latency_ms", "fail_next", "fail_status")


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def _object(request: Request) -> dict[str, Any]:
    """The request's JSON object body (``{}`` when empty).

    Raises:
        ValueError: when the body is not a JSON object.
    """
    body = orjson.loads(await request.body() or b"{}")
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    return body


@dataclass
class NotionFaults:
    """Failures injected into API responses after auth and the rate limit.

    Attributes:
        rate_500: probability a request is answered 500 ``internal_server_error``.
        rate_503: probability a request is answered 503 ``service_unavailable``.
        latency_ms: delay added to every API answer, milliseconds.
        fail_next: the next this many requests fail with ``fail_status``, whatever the rates.
        fail_status: 500 or 503.
    """

    rate_500: float = 0.0
    rate_503: float = 0.0
    latency_ms: int = 0
    fail_next: int = 0
    fail_status: int = 503

    def update(self, values: dict[str, Any]) -> None:
        """Set the named fields, checking names, types and ranges.

        Raises:
            ValueError: on an unknown name or a bad value.
        """
        for name, value in values.items():
            if name not in _FAULT_NAMES:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(_FAULT_NAMES)}")
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a non-negative number")
            if name.startswith("rate_") and value > 1:
                raise ValueError(f"{name} must be at most 1")
            if name == "fail_status" and value not in (500, 503):
                raise ValueError("fail_status must be 500 or 503")
        for name, value in values.items():
            setattr(self, name, float(value) if name.startswith("rate_") else int(value))

    def draw(self, rng: random.Random) -> int | None:
        """The status this request fails with, or None (one draw per request keeps runs reproducible)."""
        if self.fail_next > 0:
            self.fail_next -= 1
            return self.fail_status
        draw = rng.random()
        if draw < self.rate_500:
            return 500
        if draw < self.rate_500 + self.rate_503:
            return 503
        return None


class NotionMeasurements:
    """What the sandbox counted since start-up or the last :meth:`reset`.

    Attributes:
        counts: answers by endpoint template and status, ``{"GET /v1/pages/{page_id}": {"200": n}}``.
        rate_limited: API requests answered 429.
        requests: per API request, ``(monotonic seconds when it arrived, status)``, in answer order.
    """

    def __init__(self, *, max_entries: int = LOG_ENTRIES) -> None:
        """Start empty; the log keeps at most ``max_entries`` entries."""
        self.counts: dict[str, dict[str, int]] = {}
        self.rate_limited = 0
        self.requests: deque[tuple[float, int]] = deque(maxlen=max_entries)

    def count(self, template: str, status: int, arrived: float) -> None:
        """Count one API answer under its endpoint template and status, and log its arrival."""
        by_status = self.counts.setdefault(template, {})
        by_status[str(status)] = by_status.get(str(status), 0) + 1
        self.requests.append((arrived, status))
        if status == 429:
            self.rate_limited += 1

    def reset(self) -> None:
        """Forget everything counted."""
        self.counts.clear()
        self.rate_limited = 0
        self.requests.clear()

    def pacing(self, *, burst: float) -> dict[str, Any]:
        """How the clients paced themselves (see :meth:`NotionAdmin.stats`)."""
        entries = list(self.requests)
        first = entries[0][0] if entries else None
        late_429s = (
            0
            if first is None
            else sum(1 for at, status in entries if status == 429 and at - first > FIRST_SECOND)
        )
        accepted = [at for at, status in entries if status != 429]
        # After the first ``burst`` accepted requests the bucket is empty; from then on only the
        # refill rate lets requests through.
        after = accepted[int(burst) :]
        seconds = after[-1] - after[0] if len(after) > 1 else 0.0
        return {
            "requests": len(entries),
            "rate_limited_after_first_second": late_429s,
            "accepted_after_burst": len(after),
            "accepted_per_second_after_burst": (len(after) - 1) / seconds if seconds > 0 else None,
        }


class NotionAdmin:
    """The admin handlers over a running sandbox's pages, faults, counters and webhook."""

    def __init__(self, sandbox: NotionSandbox) -> None:
        """Administer ``sandbox``."""
        self.sandbox = sandbox

    def routes(self) -> list[Route]:
        """The ``/_sandbox/*`` routes."""
        admin: list[tuple[str, Callable[[Request], Awaitable[Response]], list[str]]] = [
            ("/_sandbox/info", self.info, ["GET"]),
            ("/_sandbox/pages", self.pages, ["GET"]),
            ("/_sandbox/faults", self.faults, ["GET", "POST"]),
            ("/_sandbox/stats", self.stats, ["GET"]),
            ("/_sandbox/stats/reset", self.reset_stats, ["POST"]),
            ("/_sandbox/truth/{kind}", self.truth, ["GET"]),
            ("/_sandbox/webhook", self.webhook, ["GET", "POST"]),
            ("/_sandbox/webhook/handshake", self.handshake, ["POST"]),
            ("/_sandbox/events", self.events, ["POST"]),
            ("/_sandbox/events/batch", self.batch, ["POST"]),
            ("/_sandbox/deliveries", self.deliveries, ["GET"]),
        ]
        return [Route(path, handler, methods=methods) for path, handler, methods in admin]

    async def info(self, request: Request) -> Response:
        """Readiness, seed, page counts, databases, limits, webhook and delivery counts."""
        s = self.sandbox
        return _json(
            {
                "ready": True,
                "seed": s.config.seed,
                "pages": s.data.counts(),
                "workspace_id": s.data.workspace_id,
                "databases": [
                    {"id": d.id, "data_source_id": d.data_source_id, "title": d.title}
                    for d in s.data.databases
                ],
                "api_base": "/v1/",
                "rate_limit": {
                    "requests_per_second": s.bucket.rate,
                    "burst": s.bucket.size,
                    "tokens": s.bucket.tokens,
                },
                "webhook": {"url": s.webhook.url, "api_version": s.config.webhook_api_version},
                "deliveries": s.webhook.summary(),
            }
        )

    async def pages(self, request: Request) -> Response:
        """Every page in creation order: ``[{"id", "parent_type", "title", "in_trash", "purged", "events"}]``.

        ``parent_type`` is ``database``, ``page`` or ``workspace``; ``events`` counts events about it.
        """
        return _json(
            [
                {
                    "id": page.id,
                    "parent_type": page.parent.kind,
                    "title": page.plain_title,
                    "in_trash": page.in_trash,
                    "purged": page.purged,
                    "events": page.events,
                }
                for page in self.sandbox.data.pages.values()
            ]
        )

    async def faults(self, request: Request) -> Response:
        """Read (GET) or change (POST, partial) the faults: ``rate_500``, ``rate_503``, ``latency_ms``,
        ``fail_next``, ``fail_status``."""
        faults = self.sandbox.faults
        if request.method == "POST":
            try:
                faults.update(await _object(request))
            except ValueError as exc:
                return _json({"error": str(exc)}, status=400)
        return _json(asdict(faults))

    async def stats(self, request: Request) -> Response:
        """Counts since start-up or the last reset.

        Keys:

        - ``requests``: API answers by endpoint template and status,
          ``{"GET /v1/pages/{page_id}": {"200": n}}``.
        - ``total``: every answer counted in ``requests``.
        - ``rate_limited``: API requests answered 429.
        - ``pacing``: ``requests`` (logged), ``rate_limited_after_first_second`` (429s to requests
          arriving more than a second after the first), ``accepted_after_burst`` (requests not
          answered 429, after the first ``burst`` of them) and ``accepted_per_second_after_burst``
          (their rate, from the first to the last of them; null with fewer than two).
        """
        s = self.sandbox
        measured = s.measurements
        return _json(
            {
                "requests": measured.counts,
                "total": sum(sum(by_status.values()) for by_status in measured.counts.values()),
                "rate_limited": measured.rate_limited,
                "pacing": measured.pacing(burst=s.bucket.size),
            }
        )

    async def reset_stats(self, request: Request) -> Response:
        """Forget the counts and the request log (not the pages or the bucket); answers the stats."""
        self.sandbox.measurements.reset()
        return await self.stats(request)

    async def truth(self, request: Request) -> Response:
        """``notion_pages`` as a correct sync holds it, NDJSON in creation order.

        Only pages named by an event a receiver acknowledged (with a valid signature) are expected:
        the worker fetches only the pages events name. Each row is the page's current state (a purged
        one: its last served state with ``is_deleted``). ``?notion_version=`` (default 2025-09-03)
        is the version the worker reads with, which decides ``parent_type``.
        """
        if request.path_params["kind"] != "pages":
            return _json({"error": "unknown truth: pages"}, status=404)
        version = request.query_params.get("notion_version", DATA_SOURCE_VERSION)
        named = self.sandbox.webhook.acknowledged_pages
        rows = [page.to_truth(version) for page in self.sandbox.data.pages.values() if page.id in named]
        return Response(
            b"".join(orjson.dumps(row) + b"\n" for row in rows), media_type="application/x-ndjson"
        )

    async def webhook(self, request: Request) -> Response:
        """Read (GET) or set (POST ``{"url", "verification_token"}``) the subscription.

        A null or absent ``verification_token`` makes a new one. Answers ``{"url",
        "verification_token", "subscription_id", "api_version"}``.
        """
        hook = self.sandbox.webhook
        if request.method == "POST":
            try:
                body = await _object(request)
                url = body.get("url")
                token = body.get("verification_token")
                if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                    raise ValueError("url must be an http(s) URL")
                if token is not None and (not isinstance(token, str) or not token):
                    raise ValueError("verification_token must be a non-empty string or null")
            except ValueError as exc:
                return _json({"error": str(exc)}, status=400)
            hook.url = url
            hook.verification_token = token or "secret_" + secrets.token_urlsafe(24)
        return _json(
            {
                "url": hook.url,
                "verification_token": hook.verification_token,
                "subscription_id": self.sandbox.subscription_id,
                "api_version": self.sandbox.config.webhook_api_version,
            }
        )

    async def handshake(self, request: Request) -> Response:
        """Send the verification request; answers ``{"url", "status", "body"}`` or ``{"url", "error"}``."""
        try:
            result = await self.sandbox.webhook.handshake()
        except ValueError as exc:
            return _json({"error": str(exc)}, status=409)
        return _json(result)

    async def events(self, request: Request) -> Response:
        """Make one event: ``{"type", "page_id"?, "purge"?, "duplicate"?, "bad_signature"?}``.

        Answers ``{"event": <as first sent>, "page": <the page object now, or null once purged>}``;
        delivery goes on in the background (see ``/_sandbox/deliveries``).
        """
        try:
            body = await _object(request)
            event, page = self.sandbox.make_event(
                str(body.get("type", "")),
                body.get("page_id"),
                purge=body.get("purge") is True,
                duplicate=body.get("duplicate") is True,
                bad_signature=body.get("bad_signature") is True,
            )
        except SandboxEventError as exc:
            return _json({"error": str(exc)}, status=exc.status)
        except ValueError as exc:
            return _json({"error": str(exc)}, status=400)
        version = request.query_params.get("notion_version", DATA_SOURCE_VERSION)
        return _json({"event": event, "page": None if page.purged else page.to_api(version)})

    async def batch(self, request: Request) -> Response:
        """Make ``{"count": N}`` random events (never purges).

        Answers ``{"events": [{"id", "type", "page_id"}]}``.
        """
        try:
            count = (await _object(request)).get("count", 1)
            if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_BATCH:
                raise ValueError(f"count must be an integer from 0 to {MAX_BATCH}")
            made = self.sandbox.make_batch(count)
        except SandboxEventError as exc:
            return _json({"error": str(exc)}, status=exc.status)
        except ValueError as exc:
            return _json({"error": str(exc)}, status=400)
        return _json({"events": made})

    async def deliveries(self, request: Request) -> Response:
        """``{"pending", "acknowledged", "failed", "deliveries": [{"event_id", "type", "page_id",
        "copy", "attempts", "statuses", "state"}]}``, oldest first."""
        return _json(self.sandbox.webhook.report())
