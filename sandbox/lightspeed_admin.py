"""The Lightspeed sandbox's admin endpoints under ``/_sandbox/``: info, clock, faults, stats, truth.

They need no auth and are never limited or faulted: tests use them to move the clock (which also
ages tokens and drains the bucket), inject failures, count requests and read the ground truth as
NDJSON computed from the integer-cents model.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

if TYPE_CHECKING:
    from sandbox.lightspeed import LightspeedSandbox

__all__ = ["LightspeedAdmin", "LightspeedFaults"]


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@dataclass
class LightspeedFaults:
    """Failures injected into API responses (rates are probabilities per request)."""

    rate_500: float = 0.0
    latency_ms: int = 0

    def update(self, values: dict[str, Any]) -> None:
        """Set the named fields, checking names, types and ranges.

        Raises:
            ValueError: on an unknown name or a bad value.
        """
        for name, value in values.items():
            if name not in ("rate_500", "latency_ms"):
                raise ValueError(f"unknown fault {name!r}; known: latency_ms, rate_500, revoke_refresh_token")
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a non-negative number")
            if name == "rate_500" and value > 1:
                raise ValueError("rate_500 must be at most 1")
            setattr(self, name, int(value) if name == "latency_ms" else float(value))

    def draw_500(self, rng: random.Random) -> bool:
        """Whether this request fails with a 500 (one draw per request keeps runs reproducible)."""
        return rng.random() < self.rate_500


class LightspeedAdmin:
    """The admin handlers over a running sandbox's dataset, tokens, faults and counters."""

    def __init__(self, sandbox: LightspeedSandbox) -> None:
        """Administer ``sandbox``."""
        self.sandbox = sandbox

    def routes(self) -> list[Route]:
        """The ``/_sandbox/*`` routes."""
        admin: list[tuple[str, Callable[[Request], Awaitable[Response]], list[str]]] = [
            ("/_sandbox/info", self.info, ["GET"]),
            ("/_sandbox/clock/advance", self.advance, ["POST"]),
            ("/_sandbox/faults", self.faults, ["GET", "POST"]),
            ("/_sandbox/stats", self.stats, ["GET"]),
            ("/_sandbox/truth/{kind}", self.truth, ["GET"]),
        ]
        return [Route(path, handler, methods=methods) for path, handler, methods in admin]

    async def info(self, request: Request) -> Response:
        """The clock, seed, counts, account and limits."""
        s = self.sandbox
        return _json(
            {
                **s.data.info(),
                "account_id": s.config.account_id,
                "api_base": f"/API/V3/Account/{s.config.account_id}/",
                "bucket": {"size": s.bucket.size, "drip_rate": s.bucket.drip_rate, "level": s.bucket.level},
                "access_token_lifetime_seconds": s.tokens.lifetime_seconds,
                "rotate_refresh_tokens": s.tokens.rotate,
            }
        )

    async def advance(self, request: Request) -> Response:
        """Move the clock: ``{"seconds", "new_sales", "changed_sales", "changed_items"}``.

        The same seconds age access tokens and drain the bucket.
        """
        try:
            body = orjson.loads(await request.body() or b"{}")
            seconds = int(body.get("seconds", 0))
            result = self.sandbox.data.advance(
                seconds=seconds,
                new_sales=int(body.get("new_sales", 0)),
                changed_sales=int(body.get("changed_sales", 0)),
                changed_items=int(body.get("changed_items", 0)),
            )
        except (ValueError, TypeError, AttributeError) as exc:
            return _json({"error": str(exc)}, status=400)
        self.sandbox.clock.skip(seconds)
        return _json(result)

    async def faults(self, request: Request) -> Response:
        """Read (GET) or change (POST, partial) the faults; ``revoke_refresh_token: true`` revokes."""
        faults = self.sandbox.faults
        if request.method == "POST":
            try:
                body = orjson.loads(await request.body() or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("body must be a JSON object")
                if body.pop("revoke_refresh_token", False) is True:
                    self.sandbox.tokens.revoke_refresh_tokens()
                faults.update(body)
            except ValueError as exc:
                return _json({"error": str(exc)}, status=400)
        return _json(asdict(faults))

    async def stats(self, request: Request) -> Response:
        """Request counts by endpoint template and status, refreshes and 429s."""
        s = self.sandbox
        return _json(
            {
                "requests": s.stats,
                "total": sum(sum(by_status.values()) for by_status in s.stats.values()),
                "refreshes": s.tokens.refreshes,
                "rate_limited": s.rate_limited,
            }
        )

    async def truth(self, request: Request) -> Response:
        """Ground truth as NDJSON: ``sales`` or ``items``, in id order."""
        kind = request.path_params["kind"]
        data = self.sandbox.data
        if kind == "sales":
            rows = [sale.to_truth() for sale in data.sales]
        elif kind == "items":
            rows = [item.to_truth() for item in data.items]
        else:
            return _json({"error": f"unknown truth {kind!r}: sales or items"}, status=404)
        lines = b"".join(orjson.dumps(row) + b"\n" for row in rows)
        return Response(lines, media_type="application/x-ndjson")
