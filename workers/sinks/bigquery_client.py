"""Connecting to BigQuery (Google or an emulator) and translating its errors into the worker tree.

``make_bigquery_client`` is the one place that decides which BigQuery a process talks to: Google
with Application Default Credentials, or the endpoint in ``POSSYNC_BIGQUERY_ENDPOINT`` with anonymous
credentials and retries that give up in seconds. ``translate_error`` maps google and transport
exceptions onto ``WarehouseUnavailable`` (retry) and ``WarehouseRejected`` (dead letter).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Mapping
from typing import Any

import requests
from google.api_core import exceptions as google_exceptions
from google.api_core.client_options import ClientOptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery
from google.cloud.bigquery.retry import DEFAULT_JOB_RETRY, DEFAULT_RETRY

from schemas.settings import Settings
from workers.errors import WarehouseRejected, WarehouseUnavailable, WorkerError
from workers.semaphore import PermitTimeout

__all__ = [
    "EMULATOR_RETRY_DEADLINE_SECONDS",
    "TRANSLATED_ERRORS",
    "make_bigquery_client",
    "query_rows",
    "translate_error",
]

#: Retry deadline for API calls and jobs against an emulator, seconds. The client's default (600 s
#: per call, 1,200 s per query job) spins for ten minutes when an emulator answers an error.
EMULATOR_RETRY_DEADLINE_SECONDS = 20.0
#: Error reasons (``errors[].reason``) that mean "try again later" even on a 4xx.
_RETRYABLE_REASONS = frozenset(
    {
        "rateLimitExceeded",
        "quotaExceeded",
        "backendError",
        "internalError",
        "jobBackendError",
        "jobInternalError",
    }
)


class _EmulatorClient(bigquery.Client):
    """A BigQuery client whose default retries give up after seconds, not minutes.

    Only the defaults change: a caller passing its own ``retry``/``job_retry``/``timeout`` keeps
    it. ``_call_api`` is the one funnel every API call of the client goes through.
    """

    def __init__(
        self, *args: Any, retry_deadline_seconds: float, timeout_seconds: float, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._possync_retry = DEFAULT_RETRY.with_deadline(retry_deadline_seconds)
        self._possync_job_retry = DEFAULT_JOB_RETRY.with_deadline(retry_deadline_seconds)
        self._possync_timeout_seconds = timeout_seconds

    def _call_api(self, retry: Any, *args: Any, **kwargs: Any) -> Any:
        if retry is DEFAULT_RETRY:
            retry = self._possync_retry
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._possync_timeout_seconds
        return super()._call_api(retry, *args, **kwargs)

    def _short_job_retry(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        job_id_given = kwargs.get("job_id") is not None or (len(args) >= 2 and args[1] is not None)
        if not job_id_given and kwargs.get("job_retry", DEFAULT_JOB_RETRY) is DEFAULT_JOB_RETRY:
            kwargs["job_retry"] = self._possync_job_retry

    def query(self, query: str, *args: Any, **kwargs: Any) -> Any:
        self._short_job_retry(args, kwargs)
        return super().query(query, *args, **kwargs)

    def query_and_wait(self, query: str, **kwargs: Any) -> Any:
        if kwargs.get("job_retry", DEFAULT_JOB_RETRY) is DEFAULT_JOB_RETRY:
            kwargs["job_retry"] = self._possync_job_retry
        return super().query_and_wait(query, **kwargs)


def make_bigquery_client(settings: Settings) -> bigquery.Client:
    """The BigQuery client for these settings.

    ``POSSYNC_BIGQUERY_ENDPOINT`` unset: Google, with Application Default Credentials. Set: that
    endpoint (an emulator) with anonymous credentials and retries that give up within
    :data:`EMULATOR_RETRY_DEADLINE_SECONDS`.

    Raises:
        ConfigError: if ``POSSYNC_BIGQUERY_PROJECT`` is missing or invalid.
    """
    project = settings.require_bigquery()
    if not settings.bigquery_endpoint:
        return bigquery.Client(project=project, location=settings.bigquery_location)
    return _EmulatorClient(
        project=project,
        location=settings.bigquery_location,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=settings.bigquery_endpoint),
        retry_deadline_seconds=min(EMULATOR_RETRY_DEADLINE_SECONDS, settings.bigquery_timeout_seconds),
        timeout_seconds=settings.bigquery_timeout_seconds,
    )


#: How a write-write conflict between concurrent transactions reads: BigQuery says "Could not
#: serialize access to table ... due to concurrent update"; the local emulator (DuckLake) says
#: "Failed to commit DuckLake transaction" when two processes create or change tables at once.
#: Either way the transaction lost a race and a retry succeeds.
_CONFLICT_PHRASES = ("concurrent update", "failed to commit ducklake transaction")


def translate_error(exc: BaseException, *, action: str, job_id: str | None = None) -> WorkerError:
    """The worker error for a google/transport exception (the caller raises it ``from exc``).

    Retryable: 5xx, 408, 429, 403 with ``rateLimitExceeded``/``quotaExceeded``, transaction
    conflicts (:data:`_CONFLICT_PHRASES`), connection errors and timeouts. Everything else 4xx is a rejection.

    Args:
        exc: the exception raised by the client.
        action: what was being done, for the message (``load``, ``merge``...).
        job_id: the job concerned, kept as the error's ``request_id``.
    """
    detail = str(exc)[:500]
    if isinstance(exc, google_exceptions.GoogleAPICallError):
        code = int(exc.code) if exc.code is not None else None
        reasons = {str(error.get("reason", "")) for error in (exc.errors or []) if isinstance(error, dict)}
        message = f"BigQuery {action} failed ({code}): {detail}"
        retryable = (
            code is None
            or code >= 500
            or code in (408, 429)
            or bool(reasons & _RETRYABLE_REASONS)
            or any(conflict in detail.lower() for conflict in _CONFLICT_PHRASES)
        )
        kind = WarehouseUnavailable if retryable else WarehouseRejected
        return kind(message, system="bigquery", status_code=code, request_id=job_id)
    if isinstance(
        exc,
        google_exceptions.RetryError
        | requests.ConnectionError
        | requests.Timeout
        | auth_exceptions.TransportError
        | concurrent.futures.TimeoutError
        | TimeoutError
        | PermitTimeout,
    ):
        return WarehouseUnavailable(
            f"BigQuery {action} failed: {type(exc).__name__}: {detail}", system="bigquery", request_id=job_id
        )
    return WarehouseRejected(
        f"BigQuery {action} failed: {type(exc).__name__}: {detail}", system="bigquery", request_id=job_id
    )


#: Exceptions :func:`translate_error` understands; catch these at the boundary.
TRANSLATED_ERRORS = (
    google_exceptions.GoogleAPICallError,
    google_exceptions.RetryError,
    requests.RequestException,
    auth_exceptions.TransportError,
    concurrent.futures.TimeoutError,
    TimeoutError,
)


def query_rows(
    client: bigquery.Client,
    sql: str,
    params: Mapping[str, tuple[str, Any]] | None = None,
    *,
    timeout_seconds: float = 300,
) -> list[dict[str, Any]]:
    """Run a read-only query and return its rows as dicts.

    Args:
        client: the BigQuery client.
        sql: the query; values go in as ``@name`` parameters, never pasted into the text.
        params: ``name -> (BigQuery type, value)``, e.g. ``{"since": ("TIMESTAMP", dt)}``.
        timeout_seconds: deadline for the query, seconds.

    Raises:
        WarehouseUnavailable: BigQuery failed transiently.
        WarehouseRejected: BigQuery refused the query.
    """
    config = bigquery.QueryJobConfig(
        query_parameters=[
            bigquery.ScalarQueryParameter(name, kind, value) for name, (kind, value) in (params or {}).items()
        ]
    )
    try:
        result = client.query(sql, job_config=config, timeout=timeout_seconds).result(timeout=timeout_seconds)
        return [dict(row.items()) for row in result]
    except TRANSLATED_ERRORS as exc:
        raise translate_error(exc, action="query") from exc
