"""Webhook signatures: how Notion and Square sign a body, and a constant-time comparison.

- Notion: ``X-Notion-Signature: sha256=<hex HMAC-SHA256(key=verification token, msg=raw body)>``.
- Square: ``x-square-hmacsha256-signature: base64(HMAC-SHA256(key=signature key,
  msg=notification URL + raw body))``, the URL exactly as registered for the subscription.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

__all__ = [
    "NOTION_SIGNATURE_HEADER",
    "SQUARE_SIGNATURE_HEADER",
    "notion_signature",
    "same_signature",
    "square_signature",
]

#: Header carrying Notion's signature (absent on the verification request).
NOTION_SIGNATURE_HEADER = "x-notion-signature"
#: Header carrying Square's signature.
SQUARE_SIGNATURE_HEADER = "x-square-hmacsha256-signature"


def notion_signature(token: str, body: bytes) -> str:
    """The ``X-Notion-Signature`` value Notion sends with ``body``."""
    return "sha256=" + hmac.new(token.encode("utf-8"), body, hashlib.sha256).hexdigest()


def square_signature(signature_key: str, notification_url: str, body: bytes) -> str:
    """The ``x-square-hmacsha256-signature`` value Square sends with ``body``."""
    digest = hmac.new(
        signature_key.encode("utf-8"), notification_url.encode("utf-8") + body, hashlib.sha256
    ).digest()
    return base64.b64encode(digest).decode("ascii")


def same_signature(expected: str, received: str) -> bool:
    """Whether a received signature header equals the expected one (constant time)."""
    # Header values arrive as latin-1 text: compare bytes (compare_digest refuses non-ASCII str).
    return hmac.compare_digest(expected.encode("ascii"), received.encode("latin-1", errors="replace"))
