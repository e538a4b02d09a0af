"""A local Square Connect v2 server (Starlette ASGI app) over the deterministic sandbox dataset.

It serves, faithfully enough for possync's Square client and the official ``squareup`` SDK:
``GET /v2/locations``, ``GET /v2/payments``, ``GET /v2/payments/{payment_id}``,
``GET /v2/catalog/list``, ``POST /v2/catalog/search``, ``GET /v2/customers`` and
``POST /v2/customers/search``, with Square's bearer auth, ``Square-Version`` handling, error shape
and cursor pagination, including its traps: ListPayments defaults to the main location and the
last year, pages may come back short, and the last page can be marked three different ways.

Admin endpoints under ``/_sandbox/`` (no auth, never faulted) move the clock, inject faults, count
requests and serve the ground truth as NDJSON. Run it with ``python -m sandbox.square --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import os
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, date, datetime
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from sandbox.square_data import LOOKBACK_MS, PaymentQuery, SquareDataset, format_ms, parse_rfc3339_ms

__all__ = [
    "FINAL_PAGE_MODES",
    "FaultSettings",
    "SquareSandbox",
    "SquareSandboxConfig",
    "build_parser",
    "config_from_args",
    "create_app",
    "main",
]

#: How a last page says it is last: no ``cursor`` key, ``"cursor": ""``, or one more request
#: that returns ``{}``.
FINAL_PAGE_MODES = ("omit", "empty", "empty_page")
#: The ``Square-Version`` answered when the request names none (the release of our OpenAPI spec).
DEFAULT_SQUARE_VERSION = "2025-08-20"
#: Payment and customer pages: default and maximum ``limit``.
PAGE_LIMIT = 100
#: ListCatalog's fixed page size.
CATALOG_PAGE = 100
#: SearchCatalogObjects' largest honoured ``limit``.
CATALOG_SEARCH_MAX = 1000
#: Catalog types returned when the request names none (the top-level ones we model).
TOP_LEVEL_TYPES = frozenset({"ITEM", "CATEGORY"})
#: Catalog types the sandbox has objects of.
KNOWN_TYPES = frozenset({"ITEM", "CATEGORY", "ITEM_VARIATION"})
_VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ENV_PREFIX = "POSSYNC_SQUARE_SANDBOX_"
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


@dataclass
class SquareSandboxConfig:
    """Everything a Square sandbox is started with."""

    seed: int = 7
    payments: int = 100_184
    customers: int = 1_732
    items: int = 500
    #: The clock's start; None means now, floored to the minute.
    anchor: datetime | None = None
    token: str = "sandbox-token"  # noqa: S105 - the sandbox's fake credential
    final_page_mode: str = "omit"
    #: Share of pages deliberately returned short (fewer than ``limit``) while carrying a cursor.
    short_page_rate: float = 0.05
    faults: FaultSettings = field(default_factory=FaultSettings)


def _error(status: int, category: str, code: str, detail: str, field_name: str | None = None) -> Response:
    error: dict[str, str] = {"category": category, "code": code, "detail": detail}
    if field_name is not None:
        error["field"] = field_name
    return Response(orjson.dumps({"errors": [error]}), status_code=status, media_type="application/json")


class _RequestError(Exception):
    """A 400 (or other) Square error raised from inside a handler."""

    def __init__(self, code: str, detail: str, field_name: str | None = None, status: int = 400) -> None:
        super().__init__(detail)
        self.code, self.detail, self.field_name, self.status = code, detail, field_name, status

    def response(self) -> Response:
        category = "INVALID_REQUEST_ERROR"
        return _error(self.status, category, self.code, self.detail, self.field_name)


def _bad_cursor() -> _RequestError:
    return _RequestError(
        "INVALID_CURSOR", "The pagination cursor is invalid or was used with other parameters.", "cursor"
    )


def _parse_time(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return parse_rfc3339_ms(value)
    except ValueError:
        raise _RequestError("INVALID_TIME", f"Invalid RFC 3339 timestamp for `{name}`.", name) from None


def _enum(value: str | None, name: str, allowed: Sequence[str], default: str) -> str:
    if value is None or value == "":
        return default
    if value.upper() not in allowed:
        raise _RequestError("INVALID_ENUM_VALUE", f"`{name}` must be one of {', '.join(allowed)}.", name)
    return value.upper()


def _int(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise _RequestError("EXPECTED_INTEGER", f"`{name}` must be an integer.", name)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _RequestError("EXPECTED_INTEGER", f"`{name}` must be an integer.", name) from None


def _in_range(name: str, start: int | None, end: int | None) -> Callable[[dict[str, Any]], bool]:
    """A customer predicate: ``start <= customer[name] < end`` (either bound optional)."""

    def check(customer: dict[str, Any]) -> bool:
        moment = parse_rfc3339_ms(customer[name])
        return (start is None or moment >= start) and (end is None or moment < end)

    return check


def _customer_limit(value: Any) -> int:
    limit = _int(value, "limit")
    if limit is None:
        return PAGE_LIMIT
    if limit < 1:
        raise _RequestError("VALUE_TOO_LOW", "`limit` must be at least 1.", "limit")
    if limit > PAGE_LIMIT:
        raise _RequestError("VALUE_TOO_HIGH", f"`limit` must be at most {PAGE_LIMIT}.", "limit")
    return limit


class SquareSandbox:
    """The sandbox's state (dataset, faults, counters) and its HTTP handlers."""

    def __init__(self, config: SquareSandboxConfig) -> None:
        if config.final_page_mode not in FINAL_PAGE_MODES:
            raise ValueError(f"final_page_mode must be one of {FINAL_PAGE_MODES}")
        anchor = config.anchor or datetime.now(UTC).replace(second=0, microsecond=0)
        self.config = config
        self.faults = config.faults
        self.data = SquareDataset(
            seed=config.seed,
            anchor=anchor,
            payments=config.payments,
            customers=config.customers,
            items=config.items,
        )
        self._fault_rng = random.Random(f"{config.seed}:faults")
        self.stats: dict[str, dict[str, int]] = {}

    # -- plumbing ----------------------------------------------------------------------------------

    def _count(self, template: str, status: int) -> None:
        by_status = self.stats.setdefault(template, {})
        by_status[str(status)] = by_status.get(str(status), 0) + 1

    def v2(self, method: str, path: str, handler: Callable[[Request], Awaitable[dict[str, Any]]]) -> Route:
        """Wrap a Square handler with auth, version checks, faults, counting and JSON encoding."""
        template = f"{method} {path}"

        async def endpoint(request: Request) -> Response:
            response = await self._serve(request, handler)
            self._count(template, response.status_code)
            return response

        return Route(path, endpoint, methods=[method])

    async def _serve(
        self, request: Request, handler: Callable[[Request], Awaitable[dict[str, Any]]]
    ) -> Response:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.config.token.encode()
        ):
            return _error(
                401, "AUTHENTICATION_ERROR", "UNAUTHORIZED", "This request could not be authorized."
            )
        if self.faults.token_revoked:
            return _error(
                401, "AUTHENTICATION_ERROR", "ACCESS_TOKEN_REVOKED", "The access token has been revoked."
            )
        version = request.headers.get("square-version", DEFAULT_SQUARE_VERSION)
        try:
            if not _VERSION_RE.match(version):
                raise ValueError(version)
            date.fromisoformat(version)
        except ValueError:
            return _error(
                400,
                "INVALID_REQUEST_ERROR",
                "INVALID_SQUARE_VERSION_FORMAT",
                "Square-Version must be a date formatted YYYY-MM-DD.",
            )
        fault = await self._fault()
        if fault is not None:
            return fault
        try:
            body = await handler(request)
        except _RequestError as exc:
            return exc.response()
        return Response(
            orjson.dumps(body), media_type="application/json", headers={"Square-Version": version}
        )

    async def _fault(self) -> Response | None:
        faults = self.faults
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        # One draw per request for each decision keeps a run reproducible for a given request order.
        hang, roll, html = self._fault_rng.random(), self._fault_rng.random(), self._fault_rng.random()
        if hang < faults.timeout_rate:
            await asyncio.sleep(faults.timeout_hang_seconds)
        if roll < faults.rate_429:
            response = _error(429, "RATE_LIMIT_ERROR", "RATE_LIMITED", "Rate limit exceeded. Retry later.")
            response.headers["Retry-After"] = str(faults.retry_after_seconds)
            return response
        roll -= faults.rate_429
        if roll < faults.rate_500:
            return _error(500, "API_ERROR", "INTERNAL_SERVER_ERROR", "An internal error occurred.")
        roll -= faults.rate_500
        if roll < faults.rate_503:
            if html < 0.5:
                # What a load balancer in front of the API sends: not JSON at all.
                return Response(_HTML_503, status_code=503, media_type="text/html")
            return _error(503, "API_ERROR", "SERVICE_UNAVAILABLE", "The service is temporarily unavailable.")
        return None

    @staticmethod
    def _digest(params: Any) -> str:
        return hashlib.sha256(orjson.dumps(params, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]

    @staticmethod
    def _encode_cursor(position: Any, digest: str) -> str:
        raw = orjson.dumps({"p": position, "d": digest})
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @staticmethod
    def _decode_cursor(cursor: str | None, digest: str) -> tuple[bool, Any]:
        """``(False, None)`` for no cursor, else ``(True, position)``; position None means exhausted."""
        if cursor is None or cursor == "":
            return False, None
        try:
            payload = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        except (ValueError, TypeError):
            raise _bad_cursor() from None
        if not isinstance(payload, dict) or payload.get("d") != digest or "p" not in payload:
            raise _bad_cursor()
        return True, payload["p"]

    def _page_size(self, digest: str, position: Any, limit: int) -> int:
        """``limit``, or deterministically less on a share of pages (Square pages may be short)."""
        if limit < 2 or self.config.short_page_rate <= 0:
            return limit
        mark = hashlib.blake2b(f"{self.config.seed}:{digest}:{position}".encode(), digest_size=8).digest()
        value = int.from_bytes(mark, "little")
        if (value % 1_000_000) / 1_000_000 < self.config.short_page_rate:
            return 1 + (value >> 20) % (limit - 1)
        return limit

    def _page(
        self, key: str, items: list[Any], next_position: Any, digest: str, **extra: Any
    ) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if items:
            body[key] = items
        if next_position is not None:
            body["cursor"] = self._encode_cursor(next_position, digest)
        elif items and self.config.final_page_mode == "empty":
            body["cursor"] = ""
        elif items and self.config.final_page_mode == "empty_page":
            body["cursor"] = self._encode_cursor(None, digest)
        body.update(extra)
        return body

    def _offset_page(
        self, key: str, objects: list[Any], cursor: str | None, digest: str, limit: int, **extra: Any
    ) -> dict[str, Any]:
        """Paginate an in-memory list by offset."""
        given, position = self._decode_cursor(cursor, digest)
        if given and position is None:
            # The page after an ``empty_page``-mode last page: Square's empty answer, nothing else.
            return {}
        start = 0
        if given:
            if (
                not isinstance(position, int)
                or isinstance(position, bool)
                or not 0 <= position <= len(objects)
            ):
                raise _bad_cursor()
            start = position
        end = start + self._page_size(digest, start, limit)
        return self._page(key, objects[start:end], end if end < len(objects) else None, digest, **extra)

    # -- Square endpoints --------------------------------------------------------------------------

    async def list_locations(self, request: Request) -> dict[str, Any]:
        """ListLocations: every location, the main one first."""
        return {"locations": self.data.locations}

    async def list_payments(self, request: Request) -> dict[str, Any]:
        """ListPayments, with Square's defaults: main location, last year, DESC, 100 a page."""
        params = request.query_params
        names = ("begin_time", "end_time", "sort_order", "sort_field", "location_id")
        digest = self._digest(
            {name: params.get(name) for name in (*names, "updated_at_begin_time", "updated_at_end_time")}
        )
        given, position = self._decode_cursor(params.get("cursor"), digest)
        if given and position is None:
            return {}
        if given and not (
            isinstance(position, list)
            and len(position) == 2
            and all(type(value) is int for value in position)
        ):
            raise _bad_cursor()
        limit = _int(params.get("limit"), "limit")
        if limit is not None and limit < 1:
            raise _RequestError("VALUE_TOO_LOW", "`limit` must be at least 1.", "limit")
        limit = PAGE_LIMIT if limit is None else min(limit, PAGE_LIMIT)
        begin = _parse_time(params.get("begin_time"), "begin_time")
        query = PaymentQuery(
            location_id=params.get("location_id") or self.data.location_ids[0],
            begin_ms=self.data.now_ms - LOOKBACK_MS if begin is None else begin,
            end_ms=_parse_time(params.get("end_time"), "end_time"),
            updated_begin_ms=_parse_time(params.get("updated_at_begin_time"), "updated_at_begin_time"),
            updated_end_ms=_parse_time(params.get("updated_at_end_time"), "updated_at_end_time"),
            sort_by_updated=_enum(
                params.get("sort_field"), "sort_field", ("CREATED_AT", "UPDATED_AT"), "CREATED_AT"
            )
            == "UPDATED_AT",
            descending=_enum(params.get("sort_order"), "sort_order", ("ASC", "DESC"), "DESC") == "DESC",
        )
        start = None if position is None else (position[0], position[1])
        page, following = self.data.list_payments(query, start, self._page_size(digest, position, limit))
        next_position = None if following is None else list(following)
        return self._page("payments", [state.to_api() for state in page], next_position, digest)

    async def get_payment(self, request: Request) -> dict[str, Any]:
        """GetPayment by id."""
        state = self.data.payment_by_id(request.path_params["payment_id"])
        if state is None:
            raise _RequestError("NOT_FOUND", "Could not find payment.", status=404)
        return {"payment": state.to_api()}

    @staticmethod
    def _types(values: Any, name: str) -> set[str]:
        if values is None:
            return set(TOP_LEVEL_TYPES)
        if isinstance(values, str):
            values = [value for value in values.split(",") if value.strip()]
        if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
            raise _RequestError(
                "INVALID_ARRAY_VALUE", f"`{name}` must be a list of catalog object types.", name
            )
        return {value.strip().upper() for value in values}

    async def list_catalog(self, request: Request) -> dict[str, Any]:
        """ListCatalog: 100 a page, never deleted objects."""
        params = request.query_params
        types = self._types(params.get("types"), "types")
        digest = self._digest({"types": sorted(types), "catalog_version": params.get("catalog_version")})
        objects = self.data.catalog_objects(types, include_deleted=False)
        return self._offset_page("objects", objects, params.get("cursor"), digest, CATALOG_PAGE)

    async def _json_body(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        if not raw.strip():
            return {}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _RequestError("EXPECTED_JSON_BODY", "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise _RequestError("EXPECTED_OBJECT", "The request body must be a JSON object.")
        return body

    async def search_catalog(self, request: Request) -> dict[str, Any]:
        """SearchCatalogObjects: types, deleted objects on request, ``begin_time`` exclusive."""
        body = await self._json_body(request)
        types = self._types(body.get("object_types"), "object_types")
        include_deleted = bool(body.get("include_deleted_objects", False))
        after = _parse_time(body.get("begin_time"), "begin_time")
        limit = _int(body.get("limit"), "limit")
        # Square ignores a limit that is negative, zero or above the maximum.
        if limit is None or limit <= 0 or limit > CATALOG_SEARCH_MAX:
            limit = PAGE_LIMIT
        digest = self._digest(
            {"types": sorted(types), "deleted": include_deleted, "begin_time": body.get("begin_time")}
        )
        objects = self.data.catalog_objects(types, include_deleted=include_deleted, updated_after_ms=after)
        latest = format_ms(self.data.catalog_latest_ms)
        return self._offset_page("objects", objects, body.get("cursor"), digest, limit, latest_time=latest)

    def _sorted_customers(self, field_name: str, order: str) -> list[dict[str, Any]]:
        if field_name == "CREATED_AT":
            ordered = sorted(self.data.customers, key=lambda c: (c["created_at"], c["id"]))
        else:
            ordered = sorted(self.data.customers, key=lambda c: (c["given_name"], c["family_name"], c["id"]))
        return ordered[::-1] if order == "DESC" else ordered

    async def list_customers(self, request: Request) -> dict[str, Any]:
        """ListCustomers: ``limit`` 1-100, sort by name (DEFAULT) or CREATED_AT, optional count."""
        params = request.query_params
        limit = _customer_limit(params.get("limit"))
        sort_field = _enum(params.get("sort_field"), "sort_field", ("DEFAULT", "CREATED_AT"), "DEFAULT")
        sort_order = _enum(params.get("sort_order"), "sort_order", ("ASC", "DESC"), "ASC")
        count = (params.get("count") or "false").lower() == "true"
        digest = self._digest({"field": sort_field, "order": sort_order, "count": count})
        customers = self._sorted_customers(sort_field, sort_order)
        extra = {"count": len(customers)} if count else {}
        return self._offset_page("customers", customers, params.get("cursor"), digest, limit, **extra)

    async def search_customers(self, request: Request) -> dict[str, Any]:
        """SearchCustomers: created_at/updated_at ranges (start inclusive, end exclusive) and more."""
        body = await self._json_body(request)
        limit = _customer_limit(body.get("limit"))
        query = body.get("query") or {}
        if not isinstance(query, dict):
            raise _RequestError("EXPECTED_OBJECT", "`query` must be an object.", "query")
        filters = query.get("filter") or {}
        sort = query.get("sort") or {}
        if not isinstance(filters, dict) or not isinstance(sort, dict):
            raise _RequestError(
                "EXPECTED_OBJECT", "`query.filter` and `query.sort` must be objects.", "query"
            )
        sort_field = _enum(sort.get("field"), "query.sort.field", ("DEFAULT", "CREATED_AT"), "DEFAULT")
        sort_order = _enum(sort.get("order"), "query.sort.order", ("ASC", "DESC"), "ASC")
        digest = self._digest({"query": query, "count": bool(body.get("count"))})
        predicates: list[Callable[[dict[str, Any]], bool]] = []
        for name in ("created_at", "updated_at"):
            span = filters.get(name)
            if span is None:
                continue
            if not isinstance(span, dict):
                raise _RequestError("EXPECTED_OBJECT", f"`query.filter.{name}` must be a time range.", name)
            start = _parse_time(span.get("start_at"), f"query.filter.{name}.start_at")
            end = _parse_time(span.get("end_at"), f"query.filter.{name}.end_at")
            predicates.append(_in_range(name, start, end))
        source = filters.get("creation_source")
        if isinstance(source, dict):
            values = set(source.get("values") or [])
            include = (source.get("rule") or "INCLUDE").upper() == "INCLUDE"
            predicates.append(lambda c: (c["creation_source"] in values) == include)
        reference = filters.get("reference_id")
        if isinstance(reference, dict):
            exact, fuzzy = reference.get("exact"), reference.get("fuzzy")
            if exact is not None:
                predicates.append(lambda c: c.get("reference_id") == exact)
            if fuzzy is not None:
                predicates.append(lambda c: str(fuzzy).lower() in str(c.get("reference_id", "")).lower())
        customers = [
            c for c in self._sorted_customers(sort_field, sort_order) if all(p(c) for p in predicates)
        ]
        extra = {"count": len(customers)} if body.get("count") else {}
        return self._offset_page("customers", customers, body.get("cursor"), digest, limit, **extra)

    # -- admin endpoints ---------------------------------------------------------------------------

    async def admin_info(self, request: Request) -> Response:
        """The clock, seed, counts and location ids."""
        return _json({**self.data.info(), "final_page_mode": self.config.final_page_mode})

    async def admin_advance(self, request: Request) -> Response:
        """Move the clock: ``{"seconds", "new_payments", "changed_payments"}``."""
        try:
            body = orjson.loads(await request.body() or b"{}")
            result = self.data.advance(
                seconds=int(body.get("seconds", 0)),
                new_payments=int(body.get("new_payments", 0)),
                changed_payments=int(body.get("changed_payments", 0)),
            )
        except (ValueError, TypeError, AttributeError) as exc:
            return _json({"error": str(exc)}, status=400)
        return _json(asdict(result))

    async def admin_faults(self, request: Request) -> Response:
        """Read (GET) or change (POST, partial) the fault settings."""
        if request.method == "POST":
            try:
                body = orjson.loads(await request.body() or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("body must be a JSON object")
                self.faults.update(body)
            except ValueError as exc:
                return _json({"error": str(exc)}, status=400)
        return _json(asdict(self.faults))

    async def admin_settings(self, request: Request) -> Response:
        """Read (GET) or change (POST) ``final_page_mode`` and ``short_page_rate``."""
        if request.method == "POST":
            body = orjson.loads(await request.body() or b"{}")
            mode = body.get("final_page_mode", self.config.final_page_mode)
            rate = body.get("short_page_rate", self.config.short_page_rate)
            if mode not in FINAL_PAGE_MODES or not isinstance(rate, int | float) or not 0 <= rate <= 1:
                return _json(
                    {"error": f"final_page_mode in {FINAL_PAGE_MODES}, short_page_rate in [0, 1]"}, 400
                )
            self.config.final_page_mode, self.config.short_page_rate = mode, float(rate)
        return _json(
            {"final_page_mode": self.config.final_page_mode, "short_page_rate": self.config.short_page_rate}
        )

    async def admin_stats(self, request: Request) -> Response:
        """Request counts by endpoint template and status."""
        return _json({"requests": self.stats, "total": sum(sum(s.values()) for s in self.stats.values())})

    async def admin_truth(self, request: Request) -> Response:
        """Ground truth as NDJSON: ``payments``, ``items`` or ``customers``."""
        kind = request.path_params["kind"]
        if kind == "payments":
            count = self.data.payment_count
            return StreamingResponse(self._payment_lines(count), media_type="application/x-ndjson")
        rows = {"items": self.data.item_truth, "customers": self.data.customer_truth}.get(kind)
        if rows is None:
            return _json({"error": f"unknown truth {kind!r}: payments, items or customers"}, status=404)
        return Response(
            b"".join(orjson.dumps(row) + b"\n" for row in rows), media_type="application/x-ndjson"
        )

    async def _payment_lines(self, count: int) -> AsyncIterator[bytes]:
        for start in range(0, count, 2000):
            chunk = [self.data.payment_state(i).to_truth() for i in range(start, min(count, start + 2000))]
            yield b"".join(orjson.dumps(row) + b"\n" for row in chunk)
            # Let other requests in between chunks of a long stream.
            await asyncio.sleep(0)


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def _not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    code = "NOT_FOUND" if status == 404 else "BAD_REQUEST"
    return _error(status, "INVALID_REQUEST_ERROR", code, f"No route for {request.method} {request.url.path}.")


def create_app(config: SquareSandboxConfig) -> Starlette:
    """Build the sandbox ASGI app; its state lives on ``app.state.sandbox``."""
    sandbox = SquareSandbox(config)
    admin: list[tuple[str, Callable[[Request], Awaitable[Response]], list[str]]] = [
        ("/_sandbox/info", sandbox.admin_info, ["GET"]),
        ("/_sandbox/clock/advance", sandbox.admin_advance, ["POST"]),
        ("/_sandbox/faults", sandbox.admin_faults, ["GET", "POST"]),
        ("/_sandbox/settings", sandbox.admin_settings, ["GET", "POST"]),
        ("/_sandbox/stats", sandbox.admin_stats, ["GET"]),
        ("/_sandbox/truth/{kind}", sandbox.admin_truth, ["GET"]),
    ]
    routes = [
        sandbox.v2("GET", "/v2/locations", sandbox.list_locations),
        sandbox.v2("GET", "/v2/payments", sandbox.list_payments),
        sandbox.v2("GET", "/v2/payments/{payment_id}", sandbox.get_payment),
        sandbox.v2("GET", "/v2/catalog/list", sandbox.list_catalog),
        sandbox.v2("POST", "/v2/catalog/search", sandbox.search_catalog),
        sandbox.v2("GET", "/v2/customers", sandbox.list_customers),
        sandbox.v2("POST", "/v2/customers/search", sandbox.search_customers),
        *(Route(path, handler, methods=methods) for path, handler, methods in admin),
    ]
    app = Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_found})
    app.state.sandbox = sandbox
    return app


def _env(name: str, default: Any) -> Any:
    return os.environ.get(_ENV_PREFIX + name.upper(), default)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m sandbox.square``."""
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.square",
        description=(
            "Serve a fake Square Connect v2 API (locations, payments, catalog, customers) over HTTP\n"
            "from a deterministic dataset. Admin endpoints under /_sandbox/ (no auth): info,\n"
            "clock/advance, faults, settings, stats, truth/{payments,items,customers}.\n"
            "Every option can also be set by an "
            f"environment variable {_ENV_PREFIX}<OPTION> (e.g. {_ENV_PREFIX}RATE_429=0.1)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "example: python -m sandbox.square --port 8765 --payments 20000 --rate-429 0.1 "
            "--final-page-mode empty"
        ),
    )
    parser.add_argument(
        "--host", default=_env("host", "127.0.0.1"), help="interface to bind (default %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=int(_env("port", 8765)), help="port (default %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=int(_env("seed", 7)), help="data seed (default %(default)s)"
    )
    parser.add_argument(
        "--payments", type=int, default=int(_env("payments", 100_184)), help="payments over 2 years"
    )
    parser.add_argument(
        "--customers", type=int, default=int(_env("customers", 1_732)), help="customer profiles"
    )
    parser.add_argument("--items", type=int, default=int(_env("items", 500)), help="catalog items")
    parser.add_argument(
        "--anchor", default=_env("anchor", None), help="the clock's start, ISO 8601 (default: now)"
    )
    parser.add_argument("--token", default=_env("token", "sandbox-token"), help="the bearer token accepted")
    parser.add_argument(
        "--final-page-mode",
        choices=FINAL_PAGE_MODES,
        default=_env("final_page_mode", "omit"),
        help="how the last page ends: no cursor key, an empty cursor, or one more request returning {}",
    )
    parser.add_argument(
        "--short-page-rate",
        type=float,
        default=float(_env("short_page_rate", 0.05)),
        help="share of short pages",
    )
    parser.add_argument(
        "--rate-429", type=float, default=float(_env("rate_429", 0)), help="share of 429 answers"
    )
    parser.add_argument(
        "--retry-after-seconds",
        type=int,
        default=int(_env("retry_after_seconds", 1)),
        help="Retry-After of a 429",
    )
    parser.add_argument(
        "--rate-500", type=float, default=float(_env("rate_500", 0)), help="share of 500 answers"
    )
    parser.add_argument(
        "--rate-503", type=float, default=float(_env("rate_503", 0)), help="share of 503 answers"
    )
    parser.add_argument(
        "--latency-ms", type=int, default=int(_env("latency_ms", 0)), help="added to every answer"
    )
    parser.add_argument(
        "--timeout-rate", type=float, default=float(_env("timeout_rate", 0)), help="share that hang"
    )
    parser.add_argument(
        "--token-revoked",
        action="store_true",
        default=str(_env("token_revoked", "")).lower() in ("1", "true", "yes"),
        help="answer 401 ACCESS_TOKEN_REVOKED",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> SquareSandboxConfig:
    """The sandbox configuration named by parsed command-line arguments."""
    anchor = None
    if args.anchor:
        anchor = datetime.fromisoformat(args.anchor.replace("Z", "+00:00"))
        anchor = anchor if anchor.tzinfo else anchor.replace(tzinfo=UTC)
    faults = FaultSettings(
        rate_429=args.rate_429,
        retry_after_seconds=args.retry_after_seconds,
        rate_500=args.rate_500,
        rate_503=args.rate_503,
        latency_ms=args.latency_ms,
        timeout_rate=args.timeout_rate,
        token_revoked=args.token_revoked,
    )
    return SquareSandboxConfig(
        seed=args.seed,
        payments=args.payments,
        customers=args.customers,
        items=args.items,
        anchor=anchor,
        token=args.token,
        final_page_mode=args.final_page_mode,
        short_page_rate=args.short_page_rate,
        faults=faults,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run the sandbox on uvicorn until interrupted."""
    import uvicorn

    args = build_parser().parse_args(argv)
    app = create_app(config_from_args(args))
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
    )


if __name__ == "__main__":
    main()
