"""The Lightspeed sandbox's admin endpoints under ``/_sandbox/``: info, clock, faults, stats, truth.

They need no auth and are never limited or faulted: tests use them to move the clock (which also
ages tokens and drains the bucket), inject failures, count and measure requests, and read the ground
truth as NDJSON computed from the integer-cents model.

:class:`LightspeedMeasurements` is what ``/_sandbox/stats`` reports: answers counted by endpoint and
status, plus a log of every API request (real monotonic time, drip cost, status) and of every
successful refresh grant, from which it computes how a client pool paced itself against the bucket
and whether it refreshed access tokens more often than they expired.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

if TYPE_CHECKING:
    from sandbox.lightspeed import LightspeedSandbox

__all__ = [
    "EARLY_REFRESH_SHARE",
    "FIRST_SECOND",
    "LOG_ENTRIES",
    "LightspeedAdmin",
    "LightspeedFaults",
    "LightspeedMeasurements",
]

#: The most API requests, and refreshes, the measurements remember; the oldest are dropped first
#: (a million entries is about 100 MB, days of requests at the documented drip rates).
LOG_ENTRIES = 1_000_000
#: 429s within this many seconds of the first API request are expected while a pool finds its pace.
FIRST_SECOND = 1.0
#: A refresh while the previously issued access token still had more than this share of its
#: lifetime left was early: a duplicate or needless refresh.
EARLY_REFRESH_SHARE = 0.25
#: Every key of ``pacing.after_first_bucket``, all null until there is enough data.
_AFTER_FIRST_BUCKET_KEYS = (
    "requests",
    "drips",
    "seconds",
    "drips_per_second",
    "requests_per_second",
    "ratio_to_drip_rate",
)


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


class LightspeedMeasurements:
    """What the sandbox measured since start-up or the last :meth:`reset`.

    Recording is an append or an increment; the summaries are computed only when asked for.

    Attributes:
        counts: answers by endpoint template and status, ``{"GET /API/...": {"200": n}}``.
        rate_limited: API requests answered 429.
        refreshes: successful refresh grants.
        requests: per API request answered, ``(monotonic seconds when it arrived, its query's cost in
            drips, status)``, in the order the answers went out.
        refresh_log: per successful refresh grant, ``(monotonic seconds, sandbox clock seconds,
            lifetime of the access token it issued in seconds)``.
    """

    def __init__(self, *, max_entries: int = LOG_ENTRIES) -> None:
        """Start empty; each log keeps at most ``max_entries`` entries."""
        self.counts: dict[str, dict[str, int]] = {}
        self.rate_limited = 0
        self.refreshes = 0
        self.requests: deque[tuple[float, float, int]] = deque(maxlen=max_entries)
        self.refresh_log: deque[tuple[float, float, float]] = deque(maxlen=max_entries)

    def count(self, template: str, status: int) -> None:
        """Count one answer under its endpoint template and status."""
        by_status = self.counts.setdefault(template, {})
        by_status[str(status)] = by_status.get(str(status), 0) + 1

    def api_request(self, arrived: float, cost: float, status: int) -> None:
        """Log one API request: arrival (``time.monotonic()``), the query's drip cost, the status."""
        self.requests.append((arrived, cost, status))
        if status == 429:
            self.rate_limited += 1

    def refreshed(self, at: float, clock_seconds: float, lifetime_seconds: float) -> None:
        """Log a successful refresh grant.

        Args:
            at: when, ``time.monotonic()``.
            clock_seconds: when, on the sandbox clock (the clock tokens expire on).
            lifetime_seconds: the lifetime of the access token it issued.
        """
        self.refreshes += 1
        self.refresh_log.append((at, clock_seconds, lifetime_seconds))

    def reset(self) -> None:
        """Forget every count and log entry."""
        self.counts.clear()
        self.rate_limited = 0
        self.refreshes = 0
        self.requests.clear()
        self.refresh_log.clear()

    def pacing(self, *, now: float, bucket_size: float, drip_rate: float) -> dict[str, Any]:
        """How the API requests paced themselves against the bucket (see :meth:`LightspeedAdmin.stats`).

        Args:
            now: ``time.monotonic()`` at the question.
            bucket_size: the bucket's size, drips.
            drip_rate: the bucket's drain, drips per second.
        """
        # Answers may go out in another order than the requests came in (latency, slow pages).
        entries = sorted(self.requests)
        first = entries[0][0] if entries else None
        late_429s = sum(
            1
            for arrived, _, status in entries
            if status == 429 and first is not None and arrived - first > FIRST_SECOND
        )
        return {
            "requests": len(entries),
            "first_request_seconds_ago": None if first is None else now - first,
            "rate_limited_after_first_second": late_429s,
            "bucket_size": bucket_size,
            "drip_rate": drip_rate,
            "after_first_bucket": _after_first_bucket(entries, bucket_size, drip_rate),
        }

    def refresh_summary(self, *, lifetime_seconds: float) -> dict[str, Any]:
        """How often access tokens were refreshed (see :meth:`LightspeedAdmin.stats`).

        Args:
            lifetime_seconds: the configured access token lifetime, reported as it is.
        """
        intervals = [later[0] - earlier[0] for earlier, later in pairwise(self.refresh_log)]
        # On the sandbox clock, which expires tokens: a skipped clock ages them without waiting.
        early = sum(
            1
            for (_, issued, lifetime), (_, refreshed, _) in pairwise(self.refresh_log)
            if issued + lifetime - refreshed > EARLY_REFRESH_SHARE * lifetime
        )
        return {
            "count": self.refreshes,
            "min_interval_seconds": min(intervals, default=None),
            "access_token_lifetime_seconds": lifetime_seconds,
            "early": early,
        }


def _is_success(status: int) -> bool:
    return 200 <= status < 300


def _after_first_bucket(
    entries: Sequence[tuple[float, float, int]], bucket_size: float, drip_rate: float
) -> dict[str, Any]:
    """The pace after the request whose 2xx costs first filled the bucket (entries in arrival order)."""
    filled = 0.0
    start: int | None = None
    for index, (_, cost, status) in enumerate(entries):
        if _is_success(status):
            filled += cost
            if filled >= bucket_size:
                start = index
                break
    after = entries[start + 1 :] if start is not None else []
    seconds = after[-1][0] - entries[start][0] if start is not None and after else 0.0
    if seconds <= 0:
        return dict.fromkeys(_AFTER_FIRST_BUCKET_KEYS)
    drips = sum(cost for _, cost, status in after if _is_success(status))
    return {
        "requests": len(after),
        "drips": drips,
        "seconds": seconds,
        "drips_per_second": drips / seconds,
        "requests_per_second": len(after) / seconds,
        "ratio_to_drip_rate": drips / seconds / drip_rate,
    }


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
            ("/_sandbox/stats/reset", self.reset_stats, ["POST"]),
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
        """Counts since start-up or the last reset, and the pacing and refresh measurements.

        Keys:

        - ``requests``: answers by endpoint template and status, ``{"GET /API/...": {"200": n}}``.
        - ``total``: every answer counted in ``requests``.
        - ``refreshes``: successful refresh grants.
        - ``rate_limited``: API requests answered 429.
        - ``pacing``: the API requests (``Sale.json``, ``Item.json``; any status) on real monotonic
          time, which the admin's clock skips do not touch:

          - ``requests``: API requests logged (the last :data:`LOG_ENTRIES` at most).
          - ``first_request_seconds_ago``: seconds since the first of them arrived; null if none.
          - ``rate_limited_after_first_second``: 429s answered to requests that arrived more than
            one second (:data:`FIRST_SECOND`) after the first request.
          - ``bucket_size``, ``drip_rate``: the bucket's size (drips) and drain (drips per second).
          - ``after_first_bucket``: the pace once the bucket was full. It starts at the request at
            which the cumulative cost of 2xx-answered requests first reached ``bucket_size`` and
            ends at the last request: ``requests`` (requests of any status strictly after the
            starting one), ``drips`` (the query costs of those answered 2xx), ``seconds`` (from the
            starting request's arrival to the last one's), ``drips_per_second``,
            ``requests_per_second`` and ``ratio_to_drip_rate`` (``drips_per_second / drip_rate``).
            Every value is null until the bucket was filled and a later request arrived.

        - ``refresh``: the successful refresh grants:

          - ``count``: how many (as ``refreshes``).
          - ``min_interval_seconds``: the smallest real-time gap between consecutive ones, seconds;
            null with fewer than two.
          - ``access_token_lifetime_seconds``: the configured access token lifetime.
          - ``early``: refreshes made while the access token the previous refresh issued still had
            more than a quarter (:data:`EARLY_REFRESH_SHARE`) of its lifetime left on the sandbox
            clock: duplicate or needless refreshes. The start-up token is not a refresh's, so the
            first refresh after start-up or a reset is never early.
        """
        s = self.sandbox
        measured = s.measurements
        return _json(
            {
                "requests": measured.counts,
                "total": sum(sum(by_status.values()) for by_status in measured.counts.values()),
                "refreshes": measured.refreshes,
                "rate_limited": measured.rate_limited,
                "pacing": measured.pacing(
                    now=time.monotonic(), bucket_size=s.bucket.size, drip_rate=s.bucket.drip_rate
                ),
                "refresh": measured.refresh_summary(lifetime_seconds=s.tokens.lifetime_seconds),
            }
        )

    async def reset_stats(self, request: Request) -> Response:
        """Forget the counts and the request and refresh logs (not the data, tokens or bucket level).

        So a test can measure one phase alone. Answers the stats as they are after the reset.
        """
        self.sandbox.measurements.reset()
        return await self.stats(request)

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
