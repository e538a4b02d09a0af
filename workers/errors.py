"""The worker error tree: what is retried and what is not.

::

    WorkerError
    ├── RetryableError            timeouts, connection errors, 429, 5xx, BigQuery transient
    │   ├── SourceUnavailable     a source answered 5xx, timed out or could not be reached
    │   ├── RateLimited           a source answered 429 (carries retry_after_seconds)
    │   └── WarehouseUnavailable  BigQuery (or the emulator) failed transiently
    └── PermanentError            retrying cannot help: dead-letter at once
        ├── SourceRejected        a source answered another 4xx (400, 404, ...)
        │   └── SourceAuthError   401/403: bad, expired or revoked credentials
        ├── InvalidPayload        a message payload failed validation
        └── WarehouseRejected     BigQuery refused the job (bad query, schema mismatch)

Clients translate httpx and google exceptions at their boundary (``raise ... from exc``) and keep
context as attributes, never secrets. Programming mistakes stay ``ValueError``/``TypeError``.
"""

from __future__ import annotations

__all__ = [
    "InvalidPayload",
    "PermanentError",
    "RateLimited",
    "RetryableError",
    "SourceAuthError",
    "SourceRejected",
    "SourceUnavailable",
    "WarehouseRejected",
    "WarehouseUnavailable",
    "WorkerError",
]


class WorkerError(Exception):
    """Root of every error a worker raises on purpose.

    Attributes:
        system: the external system involved (``square``, ``bigquery``...), if any.
        status_code: the HTTP status the system answered, if any.
        request_id: the system's own id for the failed request, if it gave one.
        retry_after_seconds: the least time to wait before trying again, if the system said.
    """

    def __init__(
        self,
        message: str,
        *,
        system: str | None = None,
        status_code: int | None = None,
        request_id: str | None = None,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(message)
        self.system = system
        self.status_code = status_code
        self.request_id = request_id
        self.retry_after_seconds = retry_after_seconds


class RetryableError(WorkerError):
    """Trying again later may succeed."""


class SourceUnavailable(RetryableError):
    """A source answered 5xx, timed out or could not be reached."""


class RateLimited(RetryableError):
    """A source answered 429; wait at least ``retry_after_seconds``."""


class WarehouseUnavailable(RetryableError):
    """BigQuery failed in a way that may pass."""


class PermanentError(WorkerError):
    """Trying again cannot help: the message is dead-lettered with this error."""


class SourceRejected(PermanentError):
    """A source refused the request (a 4xx other than 401, 403 and 429)."""


class SourceAuthError(SourceRejected):
    """A source refused our credentials (401 or 403)."""


class InvalidPayload(PermanentError):
    """A message payload failed validation."""


class WarehouseRejected(PermanentError):
    """BigQuery refused the job for a reason that will not pass."""
