"""The Square Connect v2 endpoints the sandbox serves: locations, payments, catalog and customers.

Each handler reads its request, answers from the dataset and returns the JSON body; the wrapper in
:mod:`sandbox.square` adds auth, version checks, faults and counting around it. The payment handlers
serve the payments the ``malformed_payments`` fault names broken (:func:`sandbox.square_faults.malform`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from sandbox.square_data import (
    LOOKBACK_MS,
    PaymentQuery,
    PaymentState,
    SquareDataset,
    format_ms,
    parse_rfc3339_ms,
)
from sandbox.square_errors import RequestError
from sandbox.square_faults import FaultSettings, malform
from sandbox.square_pagination import Paginator, bad_cursor
from sandbox.square_params import parse_enum, parse_int, parse_time, read_json_body

__all__ = [
    "CATALOG_PAGE",
    "CATALOG_SEARCH_MAX",
    "KNOWN_TYPES",
    "PAGE_LIMIT",
    "TOP_LEVEL_TYPES",
    "SquareEndpoints",
]

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


def _in_range(name: str, start: int | None, end: int | None) -> Callable[[dict[str, Any]], bool]:
    """A customer predicate: ``start <= customer[name] < end`` (either bound optional)."""

    def check(customer: dict[str, Any]) -> bool:
        moment = parse_rfc3339_ms(customer[name])
        return (start is None or moment >= start) and (end is None or moment < end)

    return check


def _customer_limit(value: Any) -> int:
    """A customer page's ``limit``: 1 to :data:`PAGE_LIMIT`, default :data:`PAGE_LIMIT`."""
    limit = parse_int(value, "limit")
    if limit is None:
        return PAGE_LIMIT
    if limit < 1:
        raise RequestError("VALUE_TOO_LOW", "`limit` must be at least 1.", "limit")
    if limit > PAGE_LIMIT:
        raise RequestError("VALUE_TOO_HIGH", f"`limit` must be at most {PAGE_LIMIT}.", "limit")
    return limit


class SquareEndpoints:
    """Square's v2 handlers over one dataset; each returns the response body as a dict."""

    def __init__(self, data: SquareDataset, pages: Paginator, faults: FaultSettings | None = None) -> None:
        """Answer from ``data``, paginating with ``pages``.

        Args:
            data: the dataset.
            pages: the paginator.
            faults: the fault settings naming the malformed payments, read live; by default those of
                the configuration the paginator reads (the ones ``/_sandbox/faults`` changes).
        """
        self.data = data
        self.pages = pages
        self.faults = pages.config.faults if faults is None else faults

    def _payment_json(self, state: PaymentState) -> dict[str, Any]:
        """A payment as the API serves it: Square's JSON, broken if the fault names it."""
        payment = state.to_api()
        malformation = self.data.malformed(self.faults.malformed_payments).get(state.index)
        return payment if malformation is None else malform(payment, malformation)

    async def list_locations(self, request: Request) -> dict[str, Any]:
        """ListLocations: every location, the main one first."""
        return {"locations": self.data.locations}

    async def list_payments(self, request: Request) -> dict[str, Any]:
        """ListPayments, with Square's defaults: main location, last year, DESC, 100 a page."""
        params = request.query_params
        names = ("begin_time", "end_time", "sort_order", "sort_field", "location_id")
        digest = self.pages.digest(
            {name: params.get(name) for name in (*names, "updated_at_begin_time", "updated_at_end_time")}
        )
        given, position = self.pages.decode_cursor(params.get("cursor"), digest)
        if given and position is None:
            return {}
        if given and not (
            isinstance(position, list)
            and len(position) == 2
            and all(type(value) is int for value in position)
        ):
            raise bad_cursor()
        limit = parse_int(params.get("limit"), "limit")
        if limit is not None and limit < 1:
            raise RequestError("VALUE_TOO_LOW", "`limit` must be at least 1.", "limit")
        limit = PAGE_LIMIT if limit is None else min(limit, PAGE_LIMIT)
        begin = parse_time(params.get("begin_time"), "begin_time")
        query = PaymentQuery(
            location_id=params.get("location_id") or self.data.location_ids[0],
            begin_ms=self.data.now_ms - LOOKBACK_MS if begin is None else begin,
            end_ms=parse_time(params.get("end_time"), "end_time"),
            updated_begin_ms=parse_time(params.get("updated_at_begin_time"), "updated_at_begin_time"),
            updated_end_ms=parse_time(params.get("updated_at_end_time"), "updated_at_end_time"),
            sort_by_updated=parse_enum(
                params.get("sort_field"), "sort_field", ("CREATED_AT", "UPDATED_AT"), "CREATED_AT"
            )
            == "UPDATED_AT",
            descending=parse_enum(params.get("sort_order"), "sort_order", ("ASC", "DESC"), "DESC") == "DESC",
        )
        start = None if position is None else (position[0], position[1])
        page, following = self.data.list_payments(query, start, self.pages.page_size(digest, position, limit))
        next_position = None if following is None else list(following)
        return self.pages.page(
            "payments", [self._payment_json(state) for state in page], next_position, digest
        )

    async def get_payment(self, request: Request) -> dict[str, Any]:
        """GetPayment by id."""
        state = self.data.payment_by_id(request.path_params["payment_id"])
        if state is None:
            raise RequestError("NOT_FOUND", "Could not find payment.", status=404)
        return {"payment": self._payment_json(state)}

    @staticmethod
    def _types(values: Any, name: str) -> set[str]:
        if values is None:
            return set(TOP_LEVEL_TYPES)
        if isinstance(values, str):
            values = [value for value in values.split(",") if value.strip()]
        if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
            raise RequestError(
                "INVALID_ARRAY_VALUE", f"`{name}` must be a list of catalog object types.", name
            )
        return {value.strip().upper() for value in values}

    async def list_catalog(self, request: Request) -> dict[str, Any]:
        """ListCatalog: 100 a page, never deleted objects."""
        params = request.query_params
        types = self._types(params.get("types"), "types")
        digest = self.pages.digest({"types": sorted(types), "catalog_version": params.get("catalog_version")})
        objects = self.data.catalog_objects(types, include_deleted=False)
        return self.pages.offset_page("objects", objects, params.get("cursor"), digest, CATALOG_PAGE)

    async def search_catalog(self, request: Request) -> dict[str, Any]:
        """SearchCatalogObjects: types, deleted objects on request, ``begin_time`` exclusive."""
        body = await read_json_body(request)
        types = self._types(body.get("object_types"), "object_types")
        include_deleted = bool(body.get("include_deleted_objects", False))
        after = parse_time(body.get("begin_time"), "begin_time")
        limit = parse_int(body.get("limit"), "limit")
        # Square ignores a limit that is negative, zero or above the maximum.
        if limit is None or limit <= 0 or limit > CATALOG_SEARCH_MAX:
            limit = PAGE_LIMIT
        digest = self.pages.digest(
            {"types": sorted(types), "deleted": include_deleted, "begin_time": body.get("begin_time")}
        )
        objects = self.data.catalog_objects(types, include_deleted=include_deleted, updated_after_ms=after)
        latest = format_ms(self.data.catalog_latest_ms)
        return self.pages.offset_page(
            "objects", objects, body.get("cursor"), digest, limit, latest_time=latest
        )

    async def get_customer(self, request: Request) -> dict[str, Any]:
        """RetrieveCustomer by id; a deleted customer is not found, as at Square."""
        customer_id = request.path_params["customer_id"]
        customer = self.data.customer_book.get(customer_id)
        if customer is None:
            raise RequestError("NOT_FOUND", f"Customer with ID `{customer_id}` not found.", status=404)
        return {"customer": customer}

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
        sort_field = parse_enum(params.get("sort_field"), "sort_field", ("DEFAULT", "CREATED_AT"), "DEFAULT")
        sort_order = parse_enum(params.get("sort_order"), "sort_order", ("ASC", "DESC"), "ASC")
        count = (params.get("count") or "false").lower() == "true"
        digest = self.pages.digest({"field": sort_field, "order": sort_order, "count": count})
        customers = self._sorted_customers(sort_field, sort_order)
        extra = {"count": len(customers)} if count else {}
        return self.pages.offset_page("customers", customers, params.get("cursor"), digest, limit, **extra)

    async def search_customers(self, request: Request) -> dict[str, Any]:
        """SearchCustomers: created_at/updated_at ranges (start inclusive, end exclusive) and more."""
        body = await read_json_body(request)
        limit = _customer_limit(body.get("limit"))
        query = body.get("query") or {}
        if not isinstance(query, dict):
            raise RequestError("EXPECTED_OBJECT", "`query` must be an object.", "query")
        filters = query.get("filter") or {}
        sort = query.get("sort") or {}
        if not isinstance(filters, dict) or not isinstance(sort, dict):
            raise RequestError("EXPECTED_OBJECT", "`query.filter` and `query.sort` must be objects.", "query")
        sort_field = parse_enum(sort.get("field"), "query.sort.field", ("DEFAULT", "CREATED_AT"), "DEFAULT")
        sort_order = parse_enum(sort.get("order"), "query.sort.order", ("ASC", "DESC"), "ASC")
        digest = self.pages.digest({"query": query, "count": bool(body.get("count"))})
        predicates: list[Callable[[dict[str, Any]], bool]] = []
        for name in ("created_at", "updated_at"):
            span = filters.get(name)
            if span is None:
                continue
            if not isinstance(span, dict):
                raise RequestError("EXPECTED_OBJECT", f"`query.filter.{name}` must be a time range.", name)
            start = parse_time(span.get("start_at"), f"query.filter.{name}.start_at")
            end = parse_time(span.get("end_at"), f"query.filter.{name}.end_at")
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
        return self.pages.offset_page("customers", customers, body.get("cursor"), digest, limit, **extra)
