"""Square's error responses: the ``{"errors": [...]}`` JSON body and the request errors handlers raise."""

from __future__ import annotations

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["RequestError", "error_response", "not_found"]


def error_response(
    status: int, category: str, code: str, detail: str, field_name: str | None = None
) -> Response:
    """A Square error response: one error with ``category``, ``code``, ``detail`` and maybe ``field``."""
    error: dict[str, str] = {"category": category, "code": code, "detail": detail}
    if field_name is not None:
        error["field"] = field_name
    return Response(orjson.dumps({"errors": [error]}), status_code=status, media_type="application/json")


class RequestError(Exception):
    """A 400 (or other) Square error raised from inside a handler."""

    def __init__(self, code: str, detail: str, field_name: str | None = None, status: int = 400) -> None:
        super().__init__(detail)
        self.code, self.detail, self.field_name, self.status = code, detail, field_name, status

    def response(self) -> Response:
        """The error as Square's ``INVALID_REQUEST_ERROR`` response."""
        category = "INVALID_REQUEST_ERROR"
        return error_response(self.status, category, self.code, self.detail, self.field_name)


async def not_found(request: Request, exc: Exception) -> Response:
    """Starlette's 404 and 405, answered in Square's error shape."""
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    code = "NOT_FOUND" if status == 404 else "BAD_REQUEST"
    return error_response(
        status, "INVALID_REQUEST_ERROR", code, f"No route for {request.method} {request.url.path}."
    )
