"""Lightspeed V3 list queries: operator filters, ``sort``, ``load_relations``, cursors and the envelope.

A query is read from the request's parameters against a :class:`Resource` (its fields, their kinds
and which may sort), run over the records' integer model, and answered in the V3 envelope:
``{"@attributes": {"next", "previous"}, "<Resource>": [...]}`` whose ``next``/``previous`` are
complete URLs carrying every original parameter (defaults for ``limit`` and ``sort`` added) plus an
opaque ``after=``/``before=`` cursor. Cursors hold the last sort key and id (keyset pagination), so
records created while a client pages appear in order rather than shifting pages.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.responses import Response

from sandbox.lightspeed_data import parse_time

__all__ = ["MAX_LIMIT", "LightspeedError", "ListQuery", "Resource", "error_response", "run_query"]

#: ``limit``'s default and maximum.
MAX_LIMIT = 100
#: The operators a filter value may start with (``param=<op>,<value>``), longest first.
OPERATORS = ("><", ">=", "<=", "!=", "!~", "IN", ">", "<", "=", "~")
#: Cost of a ``count=1`` query in drips.
COUNT_COST = 10.0
#: Extra drips per loaded relation on a query endpoint (to-many, doubled for queries).
RELATION_COST = 0.4
_HTTP_MESSAGES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}
_HTTP_MESSAGES |= {429: "Too Many Requests", 500: "Internal Server Error"}


def error_response(status: int, message: str, error_class: str = "Exception") -> Response:
    """A Lightspeed REST error body: ``httpCode``, ``httpMessage``, ``message``, ``errorClass``."""
    body = {
        "httpCode": str(status),
        "httpMessage": _HTTP_MESSAGES.get(status, "Error"),
        "message": message,
        "errorClass": error_class,
    }
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


class LightspeedError(Exception):
    """An error a handler raises; the wrapper answers it with :func:`error_response`."""

    def __init__(self, status: int, message: str, error_class: str = "InvalidArgumentException") -> None:
        super().__init__(message)
        self.status, self.message, self.error_class = status, message, error_class

    def response(self) -> Response:
        """The error as a Lightspeed error response."""
        return error_response(self.status, self.message, self.error_class)


@dataclass(frozen=True)
class Resource:
    """What a list endpoint serves and how its records may be filtered and sorted.

    Attributes:
        name: the entity, also the envelope's key (``Sale``).
        id_field: the primary key, the default sort.
        fields: filterable field -> (kind: ``int``, ``time``, ``bool`` or ``str``; getter on a record).
        sortable: the fields ``sort`` accepts.
        relations: the names ``load_relations`` accepts.
    """

    name: str
    id_field: str
    fields: dict[str, tuple[str, Callable[[Any], Any]]]
    sortable: tuple[str, ...]
    relations: tuple[str, ...]


@dataclass(frozen=True)
class ListQuery:
    """A parsed list query."""

    limit: int
    sort_field: str
    descending: bool
    filters: list[Callable[[Any], bool]]
    after: tuple[Any, int] | None
    before: tuple[Any, int] | None
    relations: list[str]
    count: bool

    @property
    def cost(self) -> float:
        """Drips the query costs."""
        return COUNT_COST if self.count else 1.0 + RELATION_COST * len(self.relations)


def _bad(message: str) -> LightspeedError:
    return LightspeedError(400, message)


def _convert(kind: str, name: str, text: str) -> Any:
    try:
        if kind == "int":
            return int(text)
        if kind == "time":
            return parse_time(text)
    except ValueError:
        raise _bad(f"Invalid value {text!r} for {name}.") from None
    if kind == "bool":
        if text not in ("true", "false"):
            raise _bad(f"Invalid value {text!r} for {name}: true or false.")
        return text == "true"
    return text


def _like(pattern: str) -> re.Pattern[str]:
    """A case-insensitive regex for a Lightspeed ``~`` pattern (``%`` is the wildcard)."""
    return re.compile("^" + ".*".join(re.escape(part) for part in pattern.split("%")) + "$", re.I)


def _filter(resource: Resource, name: str, raw: str) -> Callable[[Any], bool]:
    """The predicate for ``name=raw`` (``raw`` may start with an operator and a comma)."""
    kind, get = resource.fields[name]
    op, value = "=", raw
    head, comma, rest = raw.partition(",")
    if comma and head in OPERATORS:
        op, value = head, rest
    if op == "><":
        low_text, comma, high_text = value.partition(",")
        if not comma:
            raise _bad(f"{name}=><,low,high needs two values.")
        low, high = _convert(kind, name, low_text), _convert(kind, name, high_text)
        return lambda record: (v := get(record)) is not None and low <= v <= high
    if op == "IN":
        try:
            listed = orjson.loads(value)
        except orjson.JSONDecodeError:
            listed = value.strip("[]").split(",")
        if not isinstance(listed, list) or len(listed) > 100:
            raise _bad(f"{name}=IN,[...] takes a list of at most 100 values.")
        wanted = {_convert(kind, name, str(item)) for item in listed}
        return lambda record: get(record) in wanted
    if op in ("~", "!~"):
        pattern, negate = _like(value), op == "!~"
        return lambda record: bool(pattern.match(str(get(record)))) != negate
    target = _convert(kind, name, value)
    compare: dict[str, Callable[[Any], bool]] = {
        "=": lambda v: v == target,
        "!=": lambda v: v != target,
        ">": lambda v: v is not None and v > target,
        ">=": lambda v: v is not None and v >= target,
        "<": lambda v: v is not None and v < target,
        "<=": lambda v: v is not None and v <= target,
    }
    test = compare[op]
    return lambda record: test(get(record))


def _decode_cursor(token: str) -> tuple[Any, int]:
    try:
        value = orjson.loads(base64.b64decode(token + "=" * (-len(token) % 4), validate=True))
    except (ValueError, TypeError):
        raise _bad("Invalid cursor.") from None
    if not isinstance(value, list) or len(value) != 2 or not isinstance(value[1], int):
        raise _bad("Invalid cursor.")
    return value[0], value[1]


def _encode_cursor(key: tuple[Any, int]) -> str:
    return base64.b64encode(orjson.dumps(list(key))).decode()


def parse_query(resource: Resource, params: Sequence[tuple[str, str]]) -> ListQuery:
    """Read a list query from the request's parameters.

    Raises:
        LightspeedError: 400 on a bad limit, sort field, filter, relation or cursor.
    """
    query = dict(params)
    reserved = {"limit", "sort", "after", "before", "load_relations", "count", "archived", "or"}
    try:
        limit = int(query.get("limit", MAX_LIMIT))
    except ValueError:
        raise _bad("limit must be an integer from 0 to 100.") from None
    if not 0 <= limit <= MAX_LIMIT:
        raise _bad("limit must be an integer from 0 to 100.")
    sort = query.get("sort", resource.id_field)
    field = sort.removeprefix("-")
    if field not in resource.sortable:
        raise _bad(f"Invalid sort field {field!r}. Allowed sort fields: {', '.join(resource.sortable)}.")
    relations: list[str] = []
    if "load_relations" in query:
        text = query["load_relations"]
        if text == "all":
            relations = list(resource.relations)
        else:
            try:
                relations = orjson.loads(text)
            except orjson.JSONDecodeError:
                raise _bad('load_relations must be a JSON array such as ["Prices"], or all.') from None
            unknown = (
                [r for r in relations if r not in resource.relations] if isinstance(relations, list) else 0
            )
            if not isinstance(relations, list) or unknown:
                raise _bad(f"Invalid relation(s) {unknown}. Allowed: {', '.join(resource.relations)}.")
    filters = []
    for name, raw in params:
        if name in reserved:
            continue
        if name not in resource.fields:
            raise _bad(f"Invalid field {name!r} for {resource.name}.")
        filters.append(_filter(resource, name, raw))
    count = query.get("count") == "1"
    if count and ({"limit", "sort", "after", "before"} & query.keys()):
        raise _bad("count cannot be combined with limit, sort, after or before.")
    return ListQuery(
        limit=limit,
        sort_field=field,
        descending=sort.startswith("-"),
        filters=filters,
        after=_decode_cursor(query["after"]) if "after" in query else None,
        before=_decode_cursor(query["before"]) if "before" in query else None,
        relations=relations,
        count=count,
    )


def run_query(
    resource: Resource,
    records: Sequence[Any],
    query: ListQuery,
    params: Sequence[tuple[str, str]],
    url: str,
    render: Callable[[Any], dict[str, Any]],
) -> dict[str, Any]:
    """The V3 envelope for one page of ``records`` matching ``query``.

    Args:
        resource: the resource served.
        records: every record (state objects the resource's getters read).
        query: the parsed query.
        params: the request's parameters, copied into ``next`` and ``previous``.
        url: the request URL without its query string.
        render: a record to its API JSON.
    """
    matched = [r for r in records if all(test(r) for test in query.filters)]
    if query.count:
        return {"@attributes": {"count": str(len(matched))}}
    get_sort = resource.fields[query.sort_field][1]
    get_id = resource.fields[resource.id_field][1]

    def key(record: Any) -> tuple[Any, int]:
        value = get_sort(record)
        return (-1 if value is None else value), get_id(record)

    keyed = sorted(((key(r), r) for r in matched), key=lambda pair: pair[0], reverse=query.descending)

    def beyond(k: tuple[Any, int], cursor: tuple[Any, int]) -> bool:
        """Whether ``k`` comes after ``cursor`` in the query's order."""
        return k < cursor if query.descending else k > cursor

    start = 0
    try:
        if query.after is not None:
            after = query.after
            keyed = [pair for pair in keyed if beyond(pair[0], after)]
        elif query.before is not None:
            before = query.before
            keyed = [pair for pair in keyed if beyond(before, pair[0])]
            start = max(0, len(keyed) - query.limit)
    except TypeError:
        # A cursor made for another sort field holds a value of another type.
        raise _bad("Invalid cursor.") from None
    page = keyed[start : start + query.limit]
    base = [(k, v) for k, v in params if k not in ("after", "before")]
    names = {k for k, _ in base}
    base += [(k, v) for k, v in (("limit", str(query.limit)), ("sort", query.sort_field)) if k not in names]

    def link(direction: str, cursor_key: tuple[Any, int]) -> str:
        return f"{url}?{urlencode([*base, (direction, _encode_cursor(cursor_key))])}"

    # Paging backwards, the cursor's own record still lies ahead; forwards, the one before it.
    more_after = bool(page) and (start + len(page) < len(keyed) or query.before is not None)
    more_before = bool(page) and (start > 0 or query.after is not None)
    body: dict[str, Any] = {
        "@attributes": {
            "next": link("after", page[-1][0]) if more_after else "",
            "previous": link("before", page[0][0]) if more_before else "",
        }
    }
    if page:
        body[resource.name] = [render(record) for _, record in page]
    return body
