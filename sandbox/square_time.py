"""Time in the Square sandbox: epoch-millisecond spans and Square's RFC 3339 timestamps.

The sandbox keeps every instant as integer epoch milliseconds (UTC) and only formats them at the
edge, the way Square writes them: ``YYYY-MM-DDTHH:MM:SS.mmmZ``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

__all__ = ["DAY_MS", "HISTORY_MS", "LOOKBACK_MS", "format_ms", "parse_rfc3339_ms"]

#: Milliseconds in a day.
DAY_MS = 86_400_000
#: How far back payments, catalog and customers go from the anchor (two years).
HISTORY_MS = 730 * DAY_MS
#: ListPayments' default ``begin_time`` is the clock minus this (one year).
LOOKBACK_MS = 365 * DAY_MS
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: ``YYYY-MM-DDT`` by epoch day, filled on first use.
_DAY_PREFIX: dict[int, str] = {}


def format_ms(ms: int) -> str:
    """Format epoch milliseconds the way Square does: RFC 3339, UTC, milliseconds, ``Z``."""
    day, rest = divmod(ms, DAY_MS)
    prefix = _DAY_PREFIX.get(day)
    if prefix is None:
        # A date per day, cached: formatting dominates listing otherwise.
        prefix = _DAY_PREFIX[day] = f"{_EPOCH + timedelta(days=day):%Y-%m-%d}T"
    seconds, millis = divmod(rest, 1000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return f"{prefix}{hour:02d}:{minute:02d}:{second:02d}.{millis:03d}Z"


def parse_rfc3339_ms(text: str) -> int:
    """Parse an RFC 3339 timestamp to epoch milliseconds; a value without offset is UTC.

    Raises:
        ValueError: if ``text`` is not a timestamp.
    """
    moment = datetime.fromisoformat(text.strip().replace("z", "Z"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
