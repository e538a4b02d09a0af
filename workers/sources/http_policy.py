"""What every source client shares: bearer auth that keeps the token secret, and the in-place retry
policy of one request (tenacity).

The policy waits exponentially with full jitter (so a pool does not retry in lockstep) and never
less than the ``Retry-After`` the source sent; it retries only :class:`~workers.errors.RetryableError`
whose asked pause fits within ``max_wait_seconds``: a longer pause is better spent with the message
back on the queue, where Dramatiq's own backoff takes over.
"""

from __future__ import annotations

from collections.abc import Generator

import httpx
import structlog
from pydantic import SecretStr
from tenacity import RetryCallState, wait_exponential_jitter

from workers.errors import RetryableError

__all__ = ["BearerAuth", "RetryPolicy"]

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
