"""Lightspeed Retail (R-Series) API V3 client: requests, cursor pagination and error translation.

The client reads ``Sale.json`` and ``Item.json`` of one account over an injected ``httpx.Client``
and returns raw JSON records, one list per page. Each request first reserves its cost in the
pool-wide :class:`~workers.sources.lightspeed_pacing.Pacer`, then goes out with the pool's current
access token from :class:`~workers.sources.lightspeed_auth.TokenManager`; a 401 gets one refresh
and one retry. Every httpx or HTTP failure becomes a :mod:`workers.errors` error here, never
carrying a token. Retryable failures (timeouts, connection errors, 5xx, 429) are retried here a
few times (``request_attempts``), never sooner than ``Retry-After``; after that the message is
retried by Dramatiq, as for Square.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

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
from workers.sources.lightspeed_auth import SYSTEM, TokenManager
from workers.sources.lightspeed_pacing import Pacer, parse_bucket_level

__all__ = [
    "DEFAULT_RETRY_AFTER_SECONDS",
    "ITEM_COST",
    "PAGE_LIMIT",
    "SALE_COST",
    "LightspeedClient",
    "ls_timestamp",
]

#: Records per page: Lightspeed's maximum (and default).
PAGE_LIMIT = 100
#: Drips one ``Sale.json`` page costs: a plain GET.
SALE_COST = 1.0
#: Drips one ``Item.json`` page with ``Prices`` costs: 1, plus 0.2 for a to-many relation, doubled
#: on query endpoints.
ITEM_COST = 1.4
#: Seconds to wait after a 429 with no usable ``Retry-After`` nor bucket headers.
DEFAULT_RETRY_AFTER_SECONDS = 5.0
#: Longest Lightspeed error message kept in an exception message, characters.
_MAX_DETAIL = 300

log = structlog.get_logger(__name__)


def ls_timestamp(moment: datetime) -> str:
    """Format an aware datetime as Lightspeed's filter time, ``YYYY-MM-DDTHH:MM:SS+00:00`` (UTC).

    Sub-second parts are dropped, which only widens an inclusive lower bound.

    Raises:
        ValueError: if ``moment`` is naive.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment.isoformat()} has no time zone; pass an aware one")
    return moment.astimezone(UTC).replace(microsecond=0).isoformat()


class LightspeedClient:
    """A Lightspeed R-Series API V3 client for one account.

    Args:
        http: the connection pool to use; the caller owns it (and closes it).
        base_url: server root, e.g. ``https://api.lightspeedapp.com``.
        account_id: the Lightspeed account whose data to read.
        tokens: the pool-wide access-token manager.
        pacer: the pool-wide pacer of this account's bucket.
        timeout_seconds: connect, read, write and pool timeout of each request, seconds.
        request_attempts: tries per request for retryable failures (1: no retry here).
        retry_initial_seconds: first backoff between tries, seconds; doubles each time, with jitter.
        max_request_wait_seconds: longest pause between tries, seconds; a longer ``Retry-After``
            fails the request at once, to be retried as a message.
    """

    def __init__(
        self,
        http: httpx.Client,
        *,
        base_url: str,
        account_id: str,
        tokens: TokenManager,
        pacer: Pacer,
        timeout_seconds: float,
        request_attempts: int = 1,
        retry_initial_seconds: float = 0.5,
        max_request_wait_seconds: float = 30.0,
    ) -> None:
        if not account_id:
            raise ValueError("account_id is required")
        if request_attempts < 1:
            raise ValueError("request_attempts must be at least 1")
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._origin = _origin(self._base_url)
        self._account_root = f"{self._base_url}/API/V3/Account/{quote(account_id, safe='')}"
        self._tokens = tokens
        self._pacer = pacer
        self._timeout = httpx.Timeout(timeout_seconds)
        self._attempts = request_attempts
        self._policy = RetryPolicy(
            system=SYSTEM, initial_seconds=retry_initial_seconds, max_wait_seconds=max_request_wait_seconds
        )

    def __repr__(self) -> str:
        return f"LightspeedClient(account_root={self._account_root!r})"

    def iter_sales(
        self,
        *,
        updated_since: datetime | None = None,
        created_in: tuple[datetime, datetime] | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Page through ``Sale.json``, archived sales included.

        Args:
            updated_since: only sales whose ``updatetime`` is at or after this time (inclusive:
                the engine's lookback overlap is deduplicated downstream), read by ``updatetime``.
            created_in: only sales created in ``[start, end)``, read by ``saleID``; both bounds on
                whole seconds (Lightspeed's resolution), as ``createTime=><,start,end-1s``.
            Neither: every sale, by ``updatetime``.

        Yields:
            The sales of each non-empty page.

        Raises:
            ValueError: if both filters are given, or ``created_in`` is empty.
            WorkerError: a subclass saying whether to retry (see :mod:`workers.errors`).
        """
        params: dict[str, str] = {"sort": "updatetime", "limit": str(PAGE_LIMIT), "archived": "true"}
        if updated_since is not None and created_in is not None:
            raise ValueError("pass updated_since or created_in, not both")
        if updated_since is not None:
            params["updatetime"] = ">=," + ls_timestamp(updated_since)
        if created_in is not None:
            start, end = created_in
            last = end - timedelta(seconds=1)
            if last < start:
                raise ValueError("created_in must span at least one second")
            params["sort"] = "saleID"
            params["createTime"] = f"><,{ls_timestamp(start)},{ls_timestamp(last)}"
        return self._paginate("Sale", params, cost=SALE_COST)

    def iter_items(self, *, updated_since: datetime | None) -> Iterator[list[dict[str, Any]]]:
        """Page through ``Item.json`` by ``timeStamp`` (ascending) with their ``Prices``.

        Archived items are included, so an item deleted (archived) at the source reaches the
        warehouse as a flag. ``timeStamp`` does not move when only related records change.

        Args:
            updated_since: only items whose ``timeStamp`` is at or after this time; ``None`` reads all.

        Yields:
            The items of each non-empty page.

        Raises:
            WorkerError: a subclass saying whether to retry (see :mod:`workers.errors`).
        """
        params: dict[str, str] = {
            "sort": "timeStamp",
            "limit": str(PAGE_LIMIT),
            "archived": "true",
            "load_relations": json.dumps(["Prices"]),
        }
        if updated_since is not None:
            params["timeStamp"] = ">=," + ls_timestamp(updated_since)
        return self._paginate("Item", params, cost=ITEM_COST)

    def _paginate(
        self, resource: str, params: Mapping[str, str], *, cost: float
    ) -> Iterator[list[dict[str, Any]]]:
        # A generator: nothing is requested until the caller asks for the first page.
        endpoint = f"/API/V3/Account/{{accountID}}/{resource}.json"
        url = f"{self._account_root}/{resource}.json"
        page_params: Mapping[str, str] | None = params
        seen: set[str] = set()
        while True:
            body = self._call(url, params=page_params, cost=cost, endpoint=endpoint)
            records = _records(body, resource, endpoint)
            if records:
                yield records
            attributes = body.get("@attributes")
            next_url = attributes.get("next") if isinstance(attributes, dict) else None
            # ``next`` is "" on the last page; a missing one ends the read too.
            if not next_url:
                return
            if not isinstance(next_url, str) or next_url in seen:
                raise SourceUnavailable(
                    f"lightspeed GET {endpoint} returned a repeated or invalid next URL", system=SYSTEM
                )
            if _origin(next_url) != self._origin:
                # The bearer token must never be sent to another host.
                raise SourceUnavailable(
                    f"lightspeed GET {endpoint} returned a next URL on another host", system=SYSTEM
                )
            seen.add(next_url)
            # Lightspeed asks for ``next`` to be requested exactly as given: it carries every parameter.
            url, page_params = next_url, None

    def _call(
        self, url: str, *, params: Mapping[str, str] | None, cost: float, endpoint: str
    ) -> dict[str, Any]:
        """One GET, tried up to ``request_attempts`` times while its failures are retryable."""
        retrying = Retrying(
            stop=stop_after_attempt(self._attempts),
            retry=self._policy.should_retry,
            wait=self._policy.wait,
            before_sleep=self._policy.before_sleep,
            reraise=True,
        )
        # Shared by the attempts, so a 401 triggers one refresh per request, not one per attempt.
        refreshed: list[bool] = [False]
        result: dict[str, Any] = retrying(
            self._call_once, url, params=params, cost=cost, endpoint=endpoint, refreshed=refreshed
        )
        return result

    def _call_once(
        self, url: str, *, params: Mapping[str, str] | None, cost: float, endpoint: str, refreshed: list[bool]
    ) -> dict[str, Any]:
        token, response = self._send(url, params=params, token=None, cost=cost, endpoint=endpoint)
        if response.status_code == 401 and not refreshed[0]:
            refreshed[0] = True
            log.info("lightspeed_token_rejected", system=SYSTEM, endpoint=endpoint)
            token = self._tokens.refresh_after_rejection(token)
            _, response = self._send(url, params=params, token=token, cost=cost, endpoint=endpoint)
        if response.is_success:
            return _json_object(response, endpoint)
        raise _error_for(response, endpoint)

    def _send(
        self,
        url: str,
        *,
        params: Mapping[str, str] | None,
        token: SecretStr | None,
        cost: float,
        endpoint: str,
    ) -> tuple[SecretStr, httpx.Response]:
        """Wait for room in the bucket, then send with ``token`` (else the current access token,
        taken after the wait so that it cannot expire while the request waits for its turn)."""
        self._pacer.acquire(cost)
        if token is None:
            token = self._tokens.access_token()
        try:
            response = self._http.get(
                url,
                params=dict(params) if params else None,
                headers={"Accept": "application/json"},
                auth=BearerAuth(token),
                timeout=self._timeout,
            )
        except httpx.TimeoutException as exc:
            raise SourceUnavailable(
                f"lightspeed GET {endpoint} timed out ({type(exc).__name__})", system=SYSTEM
            ) from exc
        except httpx.TransportError as exc:
            raise SourceUnavailable(
                f"lightspeed GET {endpoint} failed: {type(exc).__name__}", system=SYSTEM
            ) from exc
        self._pacer.observe(response.headers)
        return token, response


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _records(body: Mapping[str, Any], resource: str, endpoint: str) -> list[dict[str, Any]]:
    """The page's records: a query matching one record may answer an object instead of an array."""
    value = body.get(resource)
    if value is None:
        return []
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, list) or not all(isinstance(record, dict) for record in value):
        raise SourceUnavailable(
            f"lightspeed GET {endpoint} answered a {resource!r} that is not a list of objects", system=SYSTEM
        )
    return value


def _json_object(response: httpx.Response, endpoint: str) -> dict[str, Any]:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        # A proxy or load balancer page in place of JSON: transient, like a 5xx.
        raise SourceUnavailable(
            f"lightspeed GET {endpoint} answered {response.status_code} with a body that is not JSON",
            system=SYSTEM,
            status_code=response.status_code,
        ) from exc
    if not isinstance(body, dict):
        raise SourceUnavailable(
            f"lightspeed GET {endpoint} answered {response.status_code} with JSON that is not an object",
            system=SYSTEM,
            status_code=response.status_code,
        )
    return body


def _error_for(response: httpx.Response, endpoint: str) -> WorkerError:
    status = response.status_code
    described = f"lightspeed GET {endpoint} answered {status}"
    detail = _error_detail(response)
    if detail:
        described += f": {detail}"
    if status == 429:
        metrics.SOURCE_RATE_LIMITED.labels(SYSTEM).inc()
        return RateLimited(
            described, system=SYSTEM, status_code=status, retry_after_seconds=_retry_after_seconds(response)
        )
    if status in (401, 403):
        return SourceAuthError(described, system=SYSTEM, status_code=status)
    if 400 <= status < 500:
        return SourceRejected(described, system=SYSTEM, status_code=status)
    return SourceUnavailable(described, system=SYSTEM, status_code=status)


def _error_detail(response: httpx.Response) -> str | None:
    """Lightspeed's error message (REST ``message`` or OAuth ``error``/``hint``), if the body has one."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict):
        return None
    parts = [str(body[key]) for key in ("errorClass", "message", "error", "hint") if body.get(key)]
    return " ".join(parts)[:_MAX_DETAIL] or None


def _retry_after_seconds(response: httpx.Response) -> float:
    """``Retry-After`` seconds; else how long the reported bucket needs to drain; else the default."""
    value = response.headers.get("retry-after", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds >= 0 and seconds != float("inf"):
        return seconds
    parsed = parse_bucket_level(response.headers.get("x-ls-api-bucket-level"))
    try:
        drip = float(response.headers.get("x-ls-api-drip-rate", ""))
    except ValueError:
        drip = 0.0
    if parsed is not None and drip > 0:
        level, size = parsed
        return max(1.0, (level - size) / drip)
    return DEFAULT_RETRY_AFTER_SECONDS
