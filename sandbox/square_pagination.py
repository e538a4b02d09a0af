"""Cursor pagination as Square does it: opaque cursors bound to their parameters, short pages, last pages.

Cursors carry a position and a fingerprint of the request's other parameters, so a cursor reused
with different parameters is refused. A share of pages is deliberately short, and the last page
ends in one of :data:`~sandbox.square_config.FINAL_PAGE_MODES`; both settings are read live from
the sandbox configuration, which ``/_sandbox/settings`` changes.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson

from sandbox.square_config import SquareSandboxConfig
from sandbox.square_errors import RequestError

__all__ = ["Paginator", "bad_cursor"]


def bad_cursor() -> RequestError:
    """Square's answer to a cursor it did not issue, or issued for other parameters."""
    return RequestError(
        "INVALID_CURSOR", "The pagination cursor is invalid or was used with other parameters.", "cursor"
    )


class Paginator:
    """Builds and reads page cursors and page bodies under the sandbox's pagination settings."""

    def __init__(self, config: SquareSandboxConfig) -> None:
        """Paginate as ``config`` says (its seed, ``short_page_rate`` and ``final_page_mode``)."""
        self.config = config

    @staticmethod
    def digest(params: Any) -> str:
        """A short fingerprint of the parameters a cursor is valid for."""
        return hashlib.sha256(orjson.dumps(params, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]

    @staticmethod
    def encode_cursor(position: Any, digest: str) -> str:
        """An opaque cursor for ``position`` under parameters with fingerprint ``digest``."""
        raw = orjson.dumps({"p": position, "d": digest})
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @staticmethod
    def decode_cursor(cursor: str | None, digest: str) -> tuple[bool, Any]:
        """``(False, None)`` for no cursor, else ``(True, position)``; position None means exhausted.

        Raises:
            RequestError: ``INVALID_CURSOR`` if it is not ours or was made for other parameters.
        """
        if cursor is None or cursor == "":
            return False, None
        try:
            payload = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        except (ValueError, TypeError):
            raise bad_cursor() from None
        if not isinstance(payload, dict) or payload.get("d") != digest or "p" not in payload:
            raise bad_cursor()
        return True, payload["p"]

    def page_size(self, digest: str, position: Any, limit: int) -> int:
        """``limit``, or deterministically less on a share of pages (Square pages may be short)."""
        if limit < 2 or self.config.short_page_rate <= 0:
            return limit
        mark = hashlib.blake2b(f"{self.config.seed}:{digest}:{position}".encode(), digest_size=8).digest()
        value = int.from_bytes(mark, "little")
        if (value % 1_000_000) / 1_000_000 < self.config.short_page_rate:
            return 1 + (value >> 20) % (limit - 1)
        return limit

    def page(
        self, key: str, items: list[Any], next_position: Any, digest: str, **extra: Any
    ) -> dict[str, Any]:
        """A page body: ``items`` under ``key``, the cursor as the final page mode says, ``extra``."""
        body: dict[str, Any] = {}
        if items:
            body[key] = items
        if next_position is not None:
            body["cursor"] = self.encode_cursor(next_position, digest)
        elif items and self.config.final_page_mode == "empty":
            body["cursor"] = ""
        elif items and self.config.final_page_mode == "empty_page":
            body["cursor"] = self.encode_cursor(None, digest)
        body.update(extra)
        return body

    def offset_page(
        self, key: str, objects: list[Any], cursor: str | None, digest: str, limit: int, **extra: Any
    ) -> dict[str, Any]:
        """Paginate an in-memory list by offset."""
        given, position = self.decode_cursor(cursor, digest)
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
                raise bad_cursor()
            start = position
        end = start + self.page_size(digest, start, limit)
        return self.page(key, objects[start:end], end if end < len(objects) else None, digest, **extra)
