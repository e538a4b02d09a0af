"""Money in the Square sandbox: integer cents, Square's ``Money`` objects and the float-trap amounts."""

from __future__ import annotations

from typing import Any

__all__ = ["FLOAT_TRAP_CENTS", "money"]

#: Amounts whose dollar value binary floating point cannot hold: ``int(cents / 100 * 100) != cents``.
FLOAT_TRAP_CENTS = (29, 57, 58, 113, 115, 201, 435, 1005, 1999, 2001, 4035)


def money(cents: int) -> dict[str, Any]:
    """Square's ``Money`` object for ``cents`` US cents."""
    return {"amount": cents, "currency": "USD"}
