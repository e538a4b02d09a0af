"""Notion API client: fetch the page an event named, paced pool-wide, with errors translated.

Notion averages 3 requests per second per integration and answers 429 ``rate_limited`` with a
``Retry-After`` (whole seconds) past that. Every worker of the pool shares one schedule in Redis
(:class:`RatePacer`, a generic cell rate algorithm on Redis's clock): each request reserves the
next free slot, ``1 / requests_per_second`` after the previous one, and waits for it, so the pool
together never sends faster than the configured rate however many processes it has; a 429 moves
the schedule past its ``Retry-After`` for everyone. Retryable failures (timeouts, connection errors,
5xx, 429) are retried here a few times (``request_attempts``), never sooner than ``Retry-After``;
a wait longer than ``max_request_wait_seconds`` raises :class:`~workers.errors.RateLimited` at once
so the message is retried later instead. Every httpx or HTTP failure becomes a
:mod:`workers.errors` error here, never carrying the token.
"""

from __future__ import annotations

import json
import math
import random
import time
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx
import redis
import structlog
from pydantic import SecretStr
from tenacity import Retrying, stop_after_attempt

from schemas.settings import Settings
from workers import metrics
from workers.errors import (
    RateLimited,
    SourceAuthError,
    SourceRejected,
    SourceUnavailable,
    WorkerError,
)
from workers.sources.http_policy import BearerAuth, MeteredTransport, RetryPolicy

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_RETRY_AFTER_SECONDS",
    "PAGE_ENDPOINT",
    "SYSTEM",
    "NotionClient",
    "RatePacer",
]

#: The ``system`` of errors, logs and metric labels.
SYSTEM = "notion"
#: Redis key prefix of the pool's shared state.
DEFAULT_KEY_PREFIX = "possync:notion:"
#: The page endpoint, as logs and errors name it (never with the id).
PAGE_ENDPOINT = "GET /v1/pages/{page_id}"
#: Seconds to wait after a 429 without a usable ``Retry-After``.
DEFAULT_RETRY_AFTER_SECONDS = 1.0
#: Longest Notion error message kept in an exception message, characters.
_MAX_DETAIL = 300
#: Random extra wait, seconds, so workers given neighbouring slots do not send in lockstep.
_JITTER_SECONDS = 0.01

log = structlog.get_logger(__name__)

# KEYS[1] the schedule key, holding the theoretical arrival time (TAT) of the next request in Redis
# seconds. ARGV: interval (seconds between requests), burst allowance ((burst - 1) * interval), the
# longest acceptable wait. Reserves the next slot unless it is further away than the longest wait.
# Returns {reserved (1 or 0), wait seconds} as strings (Lua numbers become integers on the way out).
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local allowance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = math.max(0, tat - allowance - now)
if wait > tonumber(ARGV[3]) then
  return {'0', tostring(wait)}
end
local next_tat = tat + interval
redis.call('SET', KEYS[1], tostring(next_tat), 'PX', math.ceil((next_tat - now) * 1000) + 1000)
return {'1', tostring(wait)}
"""

# KEYS[1] the schedule key. ARGV: pause seconds, burst allowance. Nobody's next slot comes sooner
# than the pause's end; the schedule only ever moves later.
_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local wanted = now + tonumber(ARGV[1]) + tonumber(ARGV[2])
if wanted > tat then
  redis.call('SET', KEYS[1], tostring(wanted), 'PX', math.ceil((wanted - now) * 1000) + 1000)
end
return 1
"""


class RatePacer:
    """Spaces one integration's requests across every worker through Redis.

    Args:
        redis_client: the Redis shared by the pool.
        requests_per_second: the pool's rate; requests are spaced ``1 / rate`` apart.
        burst: requests that may go back to back after an idle spell (1: always spaced).
        max_wait_seconds: the longest a request waits for its slot; a longer wait raises
            :class:`RateLimited` without reserving anything.
        key: the Redis key of the schedule.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        *,
        requests_per_second: float,
        burst: int = 1,
        max_wait_seconds: float = 60.0,
        key: str = DEFAULT_KEY_PREFIX + "pacing",
    ) -> None:
        if requests_per_second <= 0:
            raise ValueError("requests_per_second must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.key = key
        self._interval = 1.0 / requests_per_second
        self._allowance = (burst - 1) * self._interval
        self._max_wait_seconds = max_wait_seconds
        self._reserve = redis_client.register_script(_RESERVE)
        self._pause = redis_client.register_script(_PAUSE)

    def __repr__(self) -> str:
        return f"RatePacer(key={self.key!r}, interval={self._interval:.3f})"

    def acquire(self) -> float:
        """Reserve the next slot and wait for it.

        Returns:
            The seconds waited.

        Raises:
            RateLimited: if the next slot is more than ``max_wait_seconds`` away.
        """
        reserved, wait = self._reserve(
            keys=[self.key], args=[self._interval, self._allowance, self._max_wait_seconds]
        )
        seconds = float(wait)
        if int(reserved) != 1:
            raise RateLimited(
                f"notion request schedule is full for {seconds:.1f} s",
                system=SYSTEM,
                retry_after_seconds=seconds,
            )
        if seconds > 0:
            # Waiting is the point: the slot is reserved for this moment.
            time.sleep(seconds + random.uniform(0, _JITTER_SECONDS))
        metrics.SOURCE_THROTTLE_SECONDS.labels(system=SYSTEM).inc(seconds)
        return seconds

    def pause(self, seconds: float) -> None:
        """Keep every worker from sending for ``seconds`` (after a 429)."""
        self._pause(keys=[self.key], args=[max(0.0, seconds), self._allowance])


class NotionClient:
    """Reads Notion pages for one integration.

    Args:
        base_url: API root without ``/v1``, e.g. ``https://api.notion.com``.
        token: the integration token.
        version: the ``Notion-Version`` header, e.g. ``2025-09-03``.
        redis_client: the Redis shared by the pool, for pacing.
        requests_per_second: the whole pool's rate.
        timeout_seconds: connect, read, write and pool timeout of each request, seconds.
        request_attempts: tries per request for retryable failures (1: no retry here).
        max_request_wait_seconds: the longest wait for a slot or a ``Retry-After``, seconds; a
            longer one fails the request at once, to be retried as a message.
        retry_initial_seconds: first backoff between tries, seconds; doubles each time, with jitter.
        burst: requests the pool may send back to back after an idle spell.
        key_prefix: the Redis key prefix of the pool's schedule.
        transport: the httpx transport (tests); default: httpx's own.
    """

    def __init__(
        self,
        *,
        base_url: str,
        token: SecretStr,
        version: str,
        redis_client: redis.Redis,
        requests_per_second: float,
        timeout_seconds: float,
        request_attempts: int = 5,
        max_request_wait_seconds: float = 60.0,
        retry_initial_seconds: float = 0.5,
        burst: int = 1,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if request_attempts < 1:
            raise ValueError("request_attempts must be at least 1")
        if not version:
            raise ValueError("version (the Notion-Version header) is required")
        self._root = base_url.rstrip("/") + "/v1"
        self._attempts = request_attempts
        self.pacer = RatePacer(
            redis_client,
            requests_per_second=requests_per_second,
            burst=burst,
            max_wait_seconds=max_request_wait_seconds,
            key=key_prefix + "pacing",
        )
        self._policy = RetryPolicy(
            system=SYSTEM,
            endpoint=PAGE_ENDPOINT,
            initial_seconds=retry_initial_seconds,
            max_wait_seconds=max_request_wait_seconds,
        )
        self._http = httpx.Client(
            auth=BearerAuth(token),
            headers={"Notion-Version": version, "Accept": "application/json"},
            timeout=httpx.Timeout(timeout_seconds),
            transport=MeteredTransport([(base_url, SYSTEM)], inner=transport),
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, redis_client: redis.Redis, *, transport: httpx.BaseTransport | None = None
    ) -> Self:
        """The client the settings describe (``POSSYNC_NOTION_*``).

        Raises:
            ConfigError: if ``POSSYNC_NOTION_TOKEN`` is not set.
        """
        return cls(
            base_url=settings.notion_base_url,
            token=settings.require_notion(),
            version=settings.notion_version,
            redis_client=redis_client,
            requests_per_second=settings.notion_requests_per_second,
            timeout_seconds=settings.notion_timeout_seconds,
            request_attempts=settings.notion_request_attempts,
            max_request_wait_seconds=settings.notion_max_request_wait_seconds,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"NotionClient(root={self._root!r})"

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def get_page(self, page_id: str) -> dict[str, Any] | None:
        """The page object as Notion serves it now.

        Args:
            page_id: the page's id, with or without dashes.

        Returns:
            The page object, or None when Notion answers 404 ``object_not_found`` (deleted for good,
            or no longer shared with the integration).

        Raises:
            ValueError: for an empty id.
            WorkerError: a subclass saying whether to retry (see :mod:`workers.errors`).
        """
        if not page_id:
            raise ValueError("page_id is required")
        url = f"{self._root}/pages/{quote(page_id, safe='')}"
        retrying = Retrying(
            stop=stop_after_attempt(self._attempts),
            retry=self._policy.should_retry,
            wait=self._policy.wait,
            before_sleep=self._policy.before_sleep,
            reraise=True,
        )
        result: dict[str, Any] | None = retrying(self._get_once, url)
        return result

    def _get_once(self, url: str) -> dict[str, Any] | None:
        self.pacer.acquire()
        try:
            response = self._http.get(url)
        except httpx.TimeoutException as exc:
            raise SourceUnavailable(
                f"notion {PAGE_ENDPOINT} timed out ({type(exc).__name__})", system=SYSTEM
            ) from exc
        except httpx.TransportError as exc:
            raise SourceUnavailable(
                f"notion {PAGE_ENDPOINT} failed: {type(exc).__name__}", system=SYSTEM
            ) from exc
        if response.is_success:
            return _json_object(response)
        error = _error_for(response)
        if error is None:
            return None
        if isinstance(error, RateLimited):
            metrics.SOURCE_RATE_LIMITED.labels(system=SYSTEM).inc()
            self.pacer.pause(error.retry_after_seconds or DEFAULT_RETRY_AFTER_SECONDS)
        raise error


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        # A proxy or load balancer page in place of JSON: transient, like a 5xx.
        raise SourceUnavailable(
            f"notion {PAGE_ENDPOINT} answered {response.status_code} with a body that is not JSON",
            system=SYSTEM,
            status_code=response.status_code,
        ) from exc
    if not isinstance(body, dict):
        raise SourceUnavailable(
            f"notion {PAGE_ENDPOINT} answered {response.status_code} with JSON that is not an object",
            system=SYSTEM,
            status_code=response.status_code,
        )
    return body


def _error_body(response: httpx.Response) -> dict[str, Any]:
    """Notion's error object (``{"object": "error", "code", "message", "request_id"}``), or ``{}``."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


def _error_for(response: httpx.Response) -> WorkerError | None:
    """The error for a non-2xx answer; None for a 404 ``object_not_found`` (the page is gone)."""
    status = response.status_code
    body = _error_body(response)
    code = body.get("code") if isinstance(body.get("code"), str) else None
    if status == 404 and code == "object_not_found":
        return None
    request_id = body.get("request_id") if isinstance(body.get("request_id"), str) else None
    detail = " ".join(str(part) for part in (code, body.get("message")) if part)[:_MAX_DETAIL]
    message = f"notion {PAGE_ENDPOINT} answered {status}" + (f": {detail}" if detail else "")
    context: dict[str, Any] = {"system": SYSTEM, "status_code": status, "request_id": request_id}
    if status == 429:
        return RateLimited(message, retry_after_seconds=_retry_after_seconds(response), **context)
    if status in (401, 403):
        return SourceAuthError(message, **context)
    if status >= 500 or status == 409:
        # 409 conflict_error: Notion asks to try again.
        return SourceUnavailable(message, **context)
    return SourceRejected(message, **context)


def _retry_after_seconds(response: httpx.Response) -> float:
    """``Retry-After`` in seconds (Notion sends whole seconds), else the default."""
    try:
        seconds = float(response.headers.get("retry-after", "").strip())
    except ValueError:
        return DEFAULT_RETRY_AFTER_SECONDS
    if seconds < 0 or not math.isfinite(seconds):
        return DEFAULT_RETRY_AFTER_SECONDS
    return seconds
