"""Reading Square request parameters: timestamps, enums, integers and JSON bodies, failing as Square does."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from starlette.requests import Request

from sandbox.square_errors import RequestError
from sandbox.square_time import parse_rfc3339_ms

__all__ = ["parse_enum", "parse_int", "parse_time", "read_json_body"]


def parse_time(value: str | None, name: str) -> int | None:
    """An optional RFC 3339 parameter as epoch ms.

    Raises:
        RequestError: ``INVALID_TIME`` if it is not a timestamp.
    """
    if value is None or value == "":
        return None
    try:
        return parse_rfc3339_ms(value)
    except ValueError:
        raise RequestError("INVALID_TIME", f"Invalid RFC 3339 timestamp for `{name}`.", name) from None


def parse_enum(value: str | None, name: str, allowed: Sequence[str], default: str) -> str:
    """An optional enum parameter, upper-cased; ``default`` when absent.

    Raises:
        RequestError: ``INVALID_ENUM_VALUE`` if it is not one of ``allowed``.
    """
    if value is None or value == "":
        return default
    if value.upper() not in allowed:
        raise RequestError("INVALID_ENUM_VALUE", f"`{name}` must be one of {', '.join(allowed)}.", name)
    return value.upper()


def parse_int(value: Any, name: str) -> int | None:
    """An optional integer parameter (query string or JSON).

    Raises:
        RequestError: ``EXPECTED_INTEGER`` if it is not an integer.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise RequestError("EXPECTED_INTEGER", f"`{name}` must be an integer.", name)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise RequestError("EXPECTED_INTEGER", f"`{name}` must be an integer.", name) from None


async def read_json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object body; an empty body is ``{}``.

    Raises:
        RequestError: the body is not JSON, or not an object.
    """
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise RequestError("EXPECTED_JSON_BODY", "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise RequestError("EXPECTED_OBJECT", "The request body must be a JSON object.")
    return body
