"""What a Square sandbox is started with: data counts, clock anchor, token, pagination, faults, webhooks."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sandbox.square_faults import FaultSettings
from sandbox.square_webhooks import WebhookSettings

__all__ = ["FINAL_PAGE_MODES", "SquareSandboxConfig"]

#: How a last page says it is last: no ``cursor`` key, ``"cursor": ""``, or one more request
#: that returns ``{}``.
FINAL_PAGE_MODES = ("omit", "empty", "empty_page")


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
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
