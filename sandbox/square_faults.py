"""Fault injection for the Square sandbox: latency, hangs, 429s, 500s and 503s (some of them HTML)."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, fields
from typing import Any

from starlette.responses import Response

from sandbox.square_errors import error_response

__all__ = ["FaultInjector", "FaultSettings"]

#: What a load balancer in front of the API answers when the API is down.
_HTML_503 = (
    b"<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
    b"<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n</body>\r\n</html>\r\n"
)


@dataclass
class FaultSettings:
    """Failures injected into ``/v2/*`` responses; rates are probabilities per request."""

    rate_429: float = 0.0
    retry_after_seconds: int = 1
    rate_500: float = 0.0
    rate_503: float = 0.0
    latency_ms: int = 0
    #: Share of requests that hang for ``timeout_hang_seconds`` (longer than a 2 s client timeout).
    timeout_rate: float = 0.0
    timeout_hang_seconds: float = 5.0
    #: Answer the right token with 401 ``ACCESS_TOKEN_REVOKED``.
    token_revoked: bool = False

    def update(self, values: dict[str, Any]) -> None:
        """Set the named fields, checking names and types.

        Raises:
            ValueError: on an unknown name or a value of the wrong type or range.
        """
        kinds = {f.name: f.type for f in fields(self)}
        for name, value in values.items():
            if name not in kinds:
                raise ValueError(f"unknown fault {name!r}; known: {sorted(kinds)}")
            kind = str(kinds[name])
            if kind == "bool":
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be a boolean")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number")
            elif value < 0 or ((name.endswith("rate") or name.startswith("rate_")) and value > 1):
                raise ValueError(f"{name} out of range")
            setattr(self, name, int(value) if kind == "int" else value)


class FaultInjector:
    """Draws, per ``/v2/*`` request, whether and how it fails, from a stream seeded by the sandbox seed."""

    def __init__(self, settings: FaultSettings, seed: int) -> None:
        """Inject the faults ``settings`` names (read live, so changes apply to the next request).

        Args:
            settings: the fault settings, shared with the admin endpoint that changes them.
            seed: the sandbox's data seed; the same seed and request order give the same faults.
        """
        self.settings = settings
        self._rng = random.Random(f"{seed}:faults")

    async def response(self) -> Response | None:
        """Wait as configured, then the failure to answer with, or None to serve the request."""
        faults = self.settings
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        # One draw per request for each decision keeps a run reproducible for a given request order.
        hang, roll, html = self._rng.random(), self._rng.random(), self._rng.random()
        if hang < faults.timeout_rate:
            await asyncio.sleep(faults.timeout_hang_seconds)
        if roll < faults.rate_429:
            response = error_response(
                429, "RATE_LIMIT_ERROR", "RATE_LIMITED", "Rate limit exceeded. Retry later."
            )
            response.headers["Retry-After"] = str(faults.retry_after_seconds)
            return response
        roll -= faults.rate_429
        if roll < faults.rate_500:
            return error_response(500, "API_ERROR", "INTERNAL_SERVER_ERROR", "An internal error occurred.")
        roll -= faults.rate_500
        if roll < faults.rate_503:
            if html < 0.5:
                # What a load balancer in front of the API sends: not JSON at all.
                return Response(_HTML_503, status_code=503, media_type="text/html")
            return error_response(
                503, "API_ERROR", "SERVICE_UNAVAILABLE", "The service is temporarily unavailable."
            )
        return None
