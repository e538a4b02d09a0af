"""Square API client: requests, cursor pagination and error translation at the boundary.

The client speaks Square's Connect v2 over an injected ``httpx.Client`` and returns raw JSON
objects, one list per page; the engine validates them with ``schemas/square.py``. Every httpx or
HTTP failure becomes a :mod:`workers.errors` error here, carrying the status code and Square's error
code and detail, never the access token.
Retries happen at two levels. A request that fails in a way that may pass (timeout, connection
error, 5xx, 429) is retried here a few times (``request_attempts``) with exponential backoff and
full jitter, never sooner than a ``Retry-After``: a backfill window reads dozens of pages, and at a
10% fault rate a window retried only as a whole would almost never finish. When those attempts are
spent (or the source asks for a longer pause than ``max_request_wait_seconds``), the error fails the
whole message, which Dramatiq's retry middleware re-runs, idempotently, with its own backoff.
"""

from __future__ import annotations

import email.utils
import json
import math
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

import httpx
import structlog
from pydantic import SecretStr
from tenacity import Retrying, stop_after_attempt

from workers import metrics
from workers.errors import (
    RateLimited,
    SourceAuthError,
    SourceRejected,
    SourceUnavailable,
    WorkerError,
)
from workers.sources.http_policy import BearerAuth, RetryPolicy
from workers.sources.shared_pause import SharedPause

__all__ = [
    "CATALOG_PAGE_LIMIT",
    "DEFAULT_RETRY_AFTER_SECONDS",
    "PAGE_LIMIT",
    "SYSTEM",
    "SquareClient",
    "rfc3339",
]

#: The ``system`` attribute of every error this client raises.
SYSTEM = "square"
#: Page size for ListPayments, ListCustomers and SearchCustomers: their maximum (and default).
PAGE_LIMIT = 100
#: Page size asked of SearchCatalogObjects: Square's maximum (the value is advisory there).
CATALOG_PAGE_LIMIT = 1000
#: Seconds to wait after a 429 that carries no usable ``Retry-After``: Square does not promise the
#: header, and 30 s is what Airbyte's Square connector waits.
DEFAULT_RETRY_AFTER_SECONDS = 30.0

SortField = Literal["CREATED_AT", "UPDATED_AT", "OFFLINE_CREATED_AT"]

log = structlog.get_logger(__name__)


def rfc3339(moment: datetime) -> str:
    """Format an aware datetime as the RFC 3339 UTC string Square expects (``...Z``).

    Raises:
        ValueError: if ``moment`` is naive (its instant would be a guess).
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment.isoformat()} has no time zone; pass an aware one")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class SquareClient:
    """A Square Connect v2 client over an injected ``httpx.Client``.

    Args:
        http: the connection pool to use; the caller owns it (and closes it).
        base_url: server root without ``/v2``, e.g. ``https://connect.squareup.com``.
        token: the access token, sent as ``Authorization: Bearer``.
        square_version: the ``Square-Version`` header (``YYYY-MM-DD``).
        timeout_seconds: connect, read, write and pool timeout of each request, seconds.
        request_attempts: tries per request for retryable failures (1: no retry here).
        retry_initial_seconds: first backoff between tries, seconds; doubles each time, with jitter.
        max_request_wait_seconds: longest pause between tries, seconds; a source asking for a longer
            one (``Retry-After``) fails the request at once, to be retried as a message.
        pause: the pool-wide pause: a 429 any worker receives makes every worker wait; ``None``
            keeps the pause to this client's own retries.
    """

    def __init__(
        self,
        http: httpx.Client,
        *,
        base_url: str,
        token: SecretStr,
        square_version: str,
        timeout_seconds: float,
        request_attempts: int = 1,
        retry_initial_seconds: float = 0.5,
        max_request_wait_seconds: float = 30.0,
        pause: SharedPause | None = None,
    ) -> None:
        if not isinstance(token, SecretStr):
            raise TypeError("token must be a SecretStr")
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._auth = BearerAuth(token)
        self._headers = {"Square-Version": square_version, "Accept": "application/json"}
        self._timeout = httpx.Timeout(timeout_seconds)
        if request_attempts < 1:
            raise ValueError("request_attempts must be at least 1")
        self._attempts = request_attempts
        self._pause = pause
        self._pacing = RetryPolicy(
            system=SYSTEM, initial_seconds=retry_initial_seconds, max_wait_seconds=max_request_wait_seconds
        )

    def __repr__(self) -> str:
        return (
            f"SquareClient(base_url={self._base_url!r}, square_version={self._headers['Square-Version']!r})"
        )

    def list_locations(self) -> list[dict[str, Any]]:
        """Every location of the seller (ListLocations is not paginated).

        Raises:
            WorkerError: a subclass saying whether to retry (see :mod:`workers.errors`).
        """
        body = self._call("GET", "/v2/locations", endpoint="/v2/locations")
        return _objects(body, "locations")

    def iter_payments(
        self,
        *,
        location_id: str,
        begin_time: datetime,
        end_time: datetime | None = None,
        updated_at_begin_time: datetime | None = None,
        sort_field: SortField = "CREATED_AT",
    ) -> Iterator[list[dict[str, Any]]]:
        """Page through ListPayments of one location, oldest first.

        ``location_id`` and ``begin_time`` are required because Square's defaults (the main location,
        the last year) would silently miss payments.

        Args:
            location_id: the location whose payments to list.
            begin_time: inclusive lower bound on ``created_at``.
            end_time: upper bound on ``created_at`` (Square's default: now).
            updated_at_begin_time: lower bound on ``updated_at``, for incremental reads.
            sort_field: the timestamp the pages are ordered by (ascending).

        Yields:
            The payments of each non-empty page.

        Raises:
            WorkerError: a subclass saying whether to retry (see :mod:`workers.errors`).
        """
        if not location_id:
            raise ValueError("location_id is required: ListPayments defaults to the main location only")
        params: dict[str, str | int] = {
            "location_id": location_id,
            "begin_time": rfc3339(begin_time),
            "sort_field": sort_field,
            "sort_order": "ASC",
            "limit": PAGE_LIMIT,
        }
        if end_time is not None:
            params["end_time"] = rfc3339(end_time)
        if updated_at_begin_time is not None:
            params["updated_at_begin_time"] = rfc3339(updated_at_begin_time)
        return self._paginate("GET", "/v2/payments", items="payments", params=params)

    def get_payment(self, payment_id: str) -> dict[str, Any]:
        """One payment by id.

        Raises:
            SourceRejected: 404 and other refusals; other :class:`WorkerError` subclasses as usual.
        """
        if not payment_id:
            raise ValueError("payment_id is required")
        body = self._call("GET", f"/v2/payments/{quote(payment_id, safe='')}", endpoint="/v2/payments/{id}")
        payment = body.get("payment")
        if not isinstance(payment, dict):
            raise SourceUnavailable(
                "square GET /v2/payments/{id} answered 200 without a payment", system=SYSTEM, status_code=200
            )
        return payment

    def get_customer(self, customer_id: str) -> dict[str, Any]:
        """One customer by id (Square answers 404 for a deleted one).

        Raises:
            SourceRejected: 404 and other refusals; other :class:`WorkerError` subclasses as usual.
        """
        if not customer_id:
            raise ValueError("customer_id is required")
        body = self._call(
            "GET", f"/v2/customers/{quote(customer_id, safe='')}", endpoint="/v2/customers/{id}"
        )
        customer = body.get("customer")
        if not isinstance(customer, dict):
            raise SourceUnavailable(
                "square GET /v2/customers/{id} answered 200 without a customer",
                system=SYSTEM,
                status_code=200,
            )
        return customer

    def iter_catalog(
        self, *, begin_time: datetime | None = None, include_deleted: bool = True
    ) -> Iterator[list[dict[str, Any]]]:
        """Page through SearchCatalogObjects for ITEM objects (variations come nested in ``item_data``).

        Args:
            begin_time: only objects modified after this time (exclusive); ``None`` reads everything.
            include_deleted: also return deleted objects (``is_deleted=true``), so deletions reach the
                warehouse as a flag instead of a missing row.

        Yields:
            The catalog objects of each non-empty page.

        Raises:
            WorkerError: a subclass saying whether to retry (see :mod:`workers.errors`).
        """
        body: dict[str, Any] = {
            "object_types": ["ITEM"],
            "include_deleted_objects": include_deleted,
            "limit": CATALOG_PAGE_LIMIT,
        }
        if begin_time is not None:
            body["begin_time"] = rfc3339(begin_time)
        return self._paginate("POST", "/v2/catalog/search", items="objects", body=body)

    def iter_customers(self, *, updated_since: datetime | None = None) -> Iterator[list[dict[str, Any]]]:
        """Page through customers: SearchCustomers on ``updated_at`` if incremental, else ListCustomers.

        Args:
            updated_since: only customers updated at or after this time; ``None`` reads everything.

        Yields:
            The customers of each non-empty page.

        Raises:
            WorkerError: a subclass saying whether to retry (see :mod:`workers.errors`).
        """
        if updated_since is None:
            params: dict[str, str | int] = {
                "limit": PAGE_LIMIT,
                "sort_field": "CREATED_AT",
                "sort_order": "ASC",
            }
            return self._paginate("GET", "/v2/customers", items="customers", params=params)
        body = {
            "limit": PAGE_LIMIT,
            "query": {
                "filter": {"updated_at": {"start_at": rfc3339(updated_since)}},
                "sort": {"field": "CREATED_AT", "order": "ASC"},
            },
        }
        return self._paginate("POST", "/v2/customers/search", items="customers", body=body)

    def _paginate(
        self,
        method: Literal["GET", "POST"],
        path: str,
        *,
        items: str,
        params: Mapping[str, str | int] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        # A generator: nothing is requested until the caller asks for the first page.
        seen: set[str] = set()
        cursor: str | None = None
        while True:
            page_params = dict(params or {})
            page_body = dict(body) if body is not None else None
            if cursor is not None:
                # Repeat the original request unchanged plus the cursor: query for GET, body for POST.
                if page_body is not None:
                    page_body["cursor"] = cursor
                else:
                    page_params["cursor"] = cursor
            page = self._call(method, path, endpoint=path, params=page_params, body=page_body)
            objects = _objects(page, items)
            if objects:
                yield objects
            # The last page has no cursor (or an empty one; an empty ``{}`` page has none). A short
            # page that still carries a cursor is not the end: Square pages may be short.
            next_cursor = page.get("cursor")
            if not next_cursor:
                return
            if not isinstance(next_cursor, str) or next_cursor in seen:
                raise SourceUnavailable(
                    f"square {method} {path} returned a repeated or invalid cursor", system=SYSTEM
                )
            seen.add(next_cursor)
            cursor = next_cursor

    def _call(
        self,
        method: Literal["GET", "POST"],
        path: str,
        *,
        endpoint: str,
        params: Mapping[str, str | int] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One request, tried up to ``request_attempts`` times while its failures are retryable."""
        retrying = Retrying(
            stop=stop_after_attempt(self._attempts),
            retry=self._pacing.should_retry,
            wait=self._pacing.wait,
            before_sleep=self._pacing.before_sleep,
            reraise=True,
        )
        result: dict[str, Any] = retrying(
            self._call_once, method, path, endpoint=endpoint, params=params, body=body
        )
        return result

    def _call_once(
        self,
        method: Literal["GET", "POST"],
        path: str,
        *,
        endpoint: str,
        params: Mapping[str, str | int] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One request; the parsed JSON object of a 2xx answer, else the translated error."""
        if self._pause is not None:
            self._pause.wait()
        try:
            response = self._http.request(
                method,
                self._base_url + path,
                params=dict(params) if params else None,
                json=body,
                headers=self._headers,
                auth=self._auth,
                timeout=self._timeout,
            )
        except httpx.TimeoutException as exc:
            raise SourceUnavailable(
                f"square {method} {endpoint} timed out ({type(exc).__name__})", system=SYSTEM
            ) from exc
        except httpx.TransportError as exc:
            # Connection refused or reset, DNS, protocol errors: the source could not be reached.
            raise SourceUnavailable(
                f"square {method} {endpoint} failed: {type(exc).__name__}", system=SYSTEM
            ) from exc
        if response.is_success:
            return _json_object(response, method, endpoint)
        error = _error_for(response, method, endpoint)
        if isinstance(error, RateLimited) and self._pause is not None:
            self._pause.pause(error.retry_after_seconds or DEFAULT_RETRY_AFTER_SECONDS)
        raise error


def _objects(body: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise SourceUnavailable(f"square answered a non-list {key!r}", system=SYSTEM)
    return value


def _json_object(response: httpx.Response, method: str, endpoint: str) -> dict[str, Any]:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        # A proxy or load balancer page in place of JSON: transient, like a 5xx.
        raise SourceUnavailable(
            f"square {method} {endpoint} answered {response.status_code} with a body that is not JSON",
            system=SYSTEM,
            status_code=response.status_code,
            request_id=_request_id(response),
        ) from exc
    if not isinstance(body, dict):
        raise SourceUnavailable(
            f"square {method} {endpoint} answered {response.status_code} with JSON that is not an object",
            system=SYSTEM,
            status_code=response.status_code,
            request_id=_request_id(response),
        )
    return body


def _error_for(response: httpx.Response, method: str, endpoint: str) -> WorkerError:
    status = response.status_code
    code, detail = _square_error(response)
    described = f"square {method} {endpoint} answered {status}"
    if code:
        described += f" {code}"
    if detail:
        described += f": {detail}"
    context: dict[str, Any] = {"system": SYSTEM, "status_code": status, "request_id": _request_id(response)}
    if status == 429:
        metrics.SOURCE_RATE_LIMITED.labels(SYSTEM).inc()
        return RateLimited(described, retry_after_seconds=_retry_after_seconds(response), **context)
    if status in (401, 403):
        return SourceAuthError(described, **context)
    if 400 <= status < 500:
        return SourceRejected(described, **context)
    # 5xx, and any other non-2xx status (1xx/3xx are not expected from an API): try again later.
    return SourceUnavailable(described, **context)


#: Longest Square error detail kept in an exception message, characters.
_MAX_DETAIL = 300


def _square_error(response: httpx.Response) -> tuple[str | None, str | None]:
    """Square's first error code and detail, if the body is Square's error JSON."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, None
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return None, None
    first = errors[0]
    code = first.get("code")
    detail = first.get("detail")
    return (
        str(code) if code is not None else None,
        str(detail)[:_MAX_DETAIL] if detail is not None else None,
    )


def _request_id(response: httpx.Response) -> str | None:
    return response.headers.get("x-request-id") or response.headers.get("square-request-id")


def _retry_after_seconds(response: httpx.Response) -> float:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date), or the default when absent or bad."""
    value = response.headers.get("retry-after")
    if value is None or not value.strip():
        return DEFAULT_RETRY_AFTER_SECONDS
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return DEFAULT_RETRY_AFTER_SECONDS
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds) or seconds < 0:
        return DEFAULT_RETRY_AFTER_SECONDS if not math.isfinite(seconds) else 0.0
    return seconds
