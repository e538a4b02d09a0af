"""What every source client shares: bearer auth that keeps the token secret, the in-place retry
policy of one request (tenacity), and a transport that times every request for Prometheus.

The policy waits exponentially with full jitter (so a pool does not retry in lockstep) and never
less than the ``Retry-After`` the source sent; it retries only :class:`~workers.errors.RetryableError`
whose asked pause fits within ``max_wait_seconds``: a longer pause is better spent with the message
back on the queue, where Dramatiq's own backoff takes over.
"""

from __future__ import annotations

import re
import time
from collections.abc import Generator, Sequence

import httpx
import structlog
from pydantic import SecretStr
from tenacity import RetryCallState, wait_exponential_jitter

from workers import metrics
from workers.errors import RetryableError

__all__ = ["BearerAuth", "MeteredTransport", "RetryPolicy", "endpoint_template"]

log = structlog.get_logger(__name__)


class BearerAuth(httpx.Auth):
    """Adds ``Authorization: Bearer`` to each request without keeping the token in a plain string."""

    def __init__(self, token: SecretStr) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = "Bearer " + self._token.get_secret_value()
        yield request

    def __repr__(self) -> str:
        return "BearerAuth(token=SecretStr('**********'))"


class RetryPolicy:
    """Tenacity's ``retry``, ``wait`` and ``before_sleep`` for one source's requests.

    Args:
        system: the source's name, for the retry log line.
        initial_seconds: first backoff between tries, seconds; doubles each time, with jitter.
        max_wait_seconds: longest pause between tries; a longer ``Retry-After`` is not waited here.
        endpoint: the endpoint template, for the log line, when the client calls only one.
    """

    def __init__(
        self, *, system: str, initial_seconds: float, max_wait_seconds: float, endpoint: str | None = None
    ) -> None:
        self._system = system
        self._endpoint = endpoint
        self._backoff = wait_exponential_jitter(
            multiplier=initial_seconds, max=max_wait_seconds, jitter=initial_seconds
        )
        self._max_wait_seconds = max_wait_seconds

    @staticmethod
    def _error(state: RetryCallState) -> BaseException | None:
        return state.outcome.exception() if state.outcome is not None else None

    def should_retry(self, state: RetryCallState) -> bool:
        """Retry a retryable error whose ``Retry-After`` fits within ``max_wait_seconds``."""
        error = self._error(state)
        if not isinstance(error, RetryableError):
            return False
        return (error.retry_after_seconds or 0.0) <= self._max_wait_seconds

    def wait(self, state: RetryCallState) -> float:
        """The backoff, and never less than the ``Retry-After`` asked."""
        asked = getattr(self._error(state), "retry_after_seconds", None) or 0.0
        return max(float(self._backoff(state)), asked)

    def before_sleep(self, state: RetryCallState) -> None:
        """Log the retry: system, attempt, wait and the error's type and status, never its body."""
        error = self._error(state)
        log.warning(
            "source_request_retry",
            system=self._system,
            endpoint=self._endpoint,
            attempt=state.attempt_number,
            wait_seconds=round(state.upcoming_sleep, 2),
            error_type=type(error).__name__,
            status_code=getattr(error, "status_code", None),
        )


_NUMBERED = re.compile(r"\d")
#: A path segment this long is an id (Square's ids carry no digit at times), never a resource name.
_ID_CHARS = 20


def endpoint_template(path: str) -> str:
    """The path with its ids replaced by ``{id}``: a bounded label value.

    A segment is an id when it is all digits, has a digit and is 8 characters or longer (UUIDs,
    Lightspeed account ids), or is 20 characters or longer; ``/v2``, ``V3`` and ``Sale.json`` stay.
    """
    segments = []
    for segment in path.split("/"):
        is_id = (
            segment.isdigit()
            or (len(segment) >= 8 and _NUMBERED.search(segment) is not None)
            or len(segment) >= _ID_CHARS
        )
        segments.append("{id}" if is_id and segment else segment)
    return "/".join(segments)


class MeteredTransport(httpx.BaseTransport):
    """Times each request to its response headers, by system, endpoint template and status class.

    Counts ``possync_source_request_duration_seconds`` and, for 401 and 403 answers,
    ``possync_source_auth_failures_total``. One client may reach several systems (Square and
    Lightspeed share the workers' client): the system is the first ``systems`` prefix the URL starts
    with, else ``other``.

    Args:
        systems: ``(base URL, system name)`` pairs.
        inner: the transport that sends (default: httpx's own).
    """

    def __init__(self, systems: Sequence[tuple[str, str]], inner: httpx.BaseTransport | None = None) -> None:
        self._systems = tuple((base.rstrip("/"), name) for base, name in systems if base)
        self._inner = inner if inner is not None else httpx.HTTPTransport()

    def _system(self, url: httpx.URL) -> str:
        text = str(url.copy_with(query=None, fragment=None))
        for base, name in self._systems:
            if text == base or text.startswith(base + "/"):
                return name
        return "other"

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        system = self._system(request.url)
        endpoint = endpoint_template(request.url.path)
        started = time.perf_counter()
        try:
            response = self._inner.handle_request(request)
        except BaseException:
            metrics.SOURCE_REQUEST_SECONDS.labels(system, endpoint, "error").observe(
                time.perf_counter() - started
            )
            raise
        metrics.SOURCE_REQUEST_SECONDS.labels(system, endpoint, f"{response.status_code // 100}xx").observe(
            time.perf_counter() - started
        )
        if response.status_code in (401, 403):
            metrics.SOURCE_AUTH_FAILURES.labels(system).inc()
        return response

    def close(self) -> None:
        self._inner.close()
