"""Splitting a time range into consecutive windows, shared by every source's backfill planner."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

__all__ = ["spans"]


def spans(since: datetime, until: datetime, width: timedelta) -> Iterator[tuple[datetime, datetime]]:
    """Consecutive ``[start, end)`` windows of ``width`` covering ``[since, until)``; the last may be short.

    Raises:
        ValueError: if ``width`` is not positive.
    """
    if width <= timedelta(0):
        raise ValueError("width must be positive")
    start = since
    while start < until:
        end = min(start + width, until)
        yield start, end
        start = end
