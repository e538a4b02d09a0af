"""Lightspeed's OAuth2 refresh grant and leaky-bucket rate limit, on one clock the admin can move.

:class:`TokenStore` issues access tokens that expire after a set lifetime and answers the refresh
grant (``POST /auth/oauth/token``), optionally rotating refresh tokens so the old one turns
``invalid_grant``. :class:`LeakyBucket` is the documented limiter: each request adds its cost, the
level drains at the drip rate, the first request that pushes the level above the size passes and
later ones get 429 until it falls back. Both read :class:`SandboxClock`: real monotonic time plus
any seconds the admin skipped, so tests expire tokens and drain the bucket without waiting.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["LeakyBucket", "SandboxClock", "TokenStore", "oauth_error"]


class SandboxClock:
    """Monotonic seconds, plus whatever :meth:`skip` added."""

    def __init__(self) -> None:
        self.skipped_seconds = 0.0

    def now(self) -> float:
        """The current reading, seconds."""
        return time.monotonic() + self.skipped_seconds

    def skip(self, seconds: float) -> None:
        """Jump ahead ``seconds`` (tokens age, the bucket drains)."""
        self.skipped_seconds += seconds


def oauth_error(status: int, error: str, description: str, hint: str = "") -> Response:
    """An OAuth error body: ``{"error", "error_description", "hint"}``."""
    body = {"error": error, "error_description": description, "hint": hint}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@dataclass
class LeakyBucket:
    """One account-and-client bucket: ``size`` drips, draining ``drip_rate`` per second."""

    size: float
    drip_rate: float
    clock: SandboxClock
    level: float = 0.0
    _last: float | None = field(default=None, repr=False)

    def _drain(self) -> None:
        now = self.clock.now()
        if self._last is not None:
            self.level = max(0.0, self.level - (now - self._last) * self.drip_rate)
        self._last = now

    def take(self, cost: float) -> float | None:
        """Add ``cost`` if the level is not above the size; else the seconds to wait (for Retry-After)."""
        self._drain()
        if self.level > self.size:
            return (self.level - self.size) / self.drip_rate
        self.level += cost
        return None

    def headers(self, cost: float) -> dict[str, str]:
        """The ``X-LS-API-*`` headers every response carries."""
        self._drain()
        return {
            "X-LS-API-Bucket-Level": f"{_number(self.level)}/{_number(self.size)}",
            "X-LS-API-Drip-Rate": _number(self.drip_rate),
            "X-LS-API-Request-Cost": _number(cost),
        }

    @staticmethod
    def retry_after(wait_seconds: float) -> str:
        """Whole seconds for ``Retry-After``, at least one."""
        return str(max(1, math.ceil(wait_seconds)))


def _number(value: float) -> str:
    """``92.57``, ``90``: up to two decimals, no trailing zeros."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


@dataclass
class TokenStore:
    """The client's credentials and the tokens issued to it."""

    client_id: str
    client_secret: str
    refresh_token: str
    lifetime_seconds: float
    rotate: bool
    clock: SandboxClock
    scope: str = "employee:all"
    #: Access token -> when it expires, on :attr:`clock`.
    access: dict[str, float] = field(default_factory=dict)
    valid_refresh: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.valid_refresh.add(self.refresh_token)

    def issue(self, token: str | None = None) -> str:
        """Issue an access token (``token`` if given) valid for :attr:`lifetime_seconds`."""
        token = token or secrets.token_urlsafe(32)
        self.access[token] = self.clock.now() + self.lifetime_seconds
        return token

    def revoke_refresh_tokens(self) -> None:
        """Invalidate every refresh token issued so far (a user disconnected the app)."""
        self.valid_refresh.clear()

    def check(self, request: Request) -> Response | None:
        """None if the bearer token is valid now, else the 401 to answer."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        expires = self.access.get(token.strip()) if scheme.lower() == "bearer" else None
        if expires is None or expires <= self.clock.now():
            return oauth_error(
                401,
                "access_denied",
                "The resource owner or authorization server denied the request.",
                "Access token could not be verified",
            )
        return None

    async def token_endpoint(self, request: Request) -> Response:
        """``POST /auth/oauth/token``: the refresh grant, from a form or JSON body."""
        form: dict[str, Any]
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                loaded = orjson.loads(await request.body() or b"{}")
            except orjson.JSONDecodeError:
                loaded = None
            form = loaded if isinstance(loaded, dict) else {}
        else:
            # Form bodies are parsed here: Starlette's ``request.form()`` needs python-multipart.
            form = dict(parse_qsl((await request.body()).decode(errors="replace")))
        if form.get("grant_type") != "refresh_token":
            return oauth_error(
                400, "unsupported_grant_type", "The authorization grant type is not supported."
            )
        if form.get("client_id") != self.client_id or form.get("client_secret", "") not in (
            self.client_secret,
            "",
        ):
            return oauth_error(401, "invalid_client", "Client authentication failed")
        refresh = form.get("refresh_token")
        if not refresh:
            return oauth_error(
                400,
                "invalid_request",
                "The request is missing a required parameter.",
                'Check the "refresh_token" parameter',
            )
        if refresh not in self.valid_refresh:
            return oauth_error(
                400,
                "invalid_grant",
                "The refresh token is invalid.",
                "Token has been revoked",
            )
        if self.rotate:
            self.valid_refresh.discard(refresh)
            refresh = secrets.token_urlsafe(32)
            self.valid_refresh.add(refresh)
        body = {
            "access_token": self.issue(),
            "expires_in": int(self.lifetime_seconds),
            "token_type": "bearer",
            "scope": self.scope,
            "refresh_token": refresh,
        }
        return Response(orjson.dumps(body), media_type="application/json")
