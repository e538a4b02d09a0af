"""A pause shared by every worker of a pool through Redis: one 429 slows the whole pool down.

Square publishes no bucket to pace by (unlike Lightspeed, see ``lightspeed_pacing.py``); what it
does say is a 429, sometimes with ``Retry-After``. When one worker is told to wait, every worker of
the pool waits too, so adding workers never multiplies the requests a rate-limited API receives.
The pause is a Redis key holding its end on Redis's clock (so machines need not agree on time); it
only ever moves later, and expires by itself.

Asking Redis before every request cost a round trip per page (16 % of a backfill worker's CPU), so
a worker that found no pause asks again only after ``recheck_seconds``: a 429 seen by another
worker pauses this one within half a second by default, and a 429 it sees itself at once.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import redis
import structlog

__all__ = ["SharedPause"]

#: Random extra wait, seconds, so the pool does not return in lockstep when the pause ends.
_JITTER_SECONDS = 0.25

# KEYS[1] the pause key. ARGV[1] pause length, milliseconds. Sets the end to now + length unless the
# key already holds a later end; returns the end (Redis clock, ms).
_EXTEND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wanted = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if wanted > current then
  redis.call('SET', KEYS[1], tostring(wanted), 'PX', ARGV[1])
  return wanted
end
return current
"""

# KEYS[1] the pause key. Returns the milliseconds left of the pause (0 if none).
_REMAINING = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = tonumber(redis.call('GET', KEYS[1]) or '0')
return math.max(0, until_ms - now)
"""

log = structlog.get_logger(__name__)


class SharedPause:
    """The pool-wide pause of one API.

    Args:
        redis_client: the Redis shared by the pool.
        key: the Redis key, e.g. ``possync:square:pause``.
        max_wait_seconds: longest :meth:`wait` sleeps in one call, seconds (a longer pause is left
            to the caller's own retry and ``Retry-After`` handling).
        recheck_seconds: after finding no pause, how long :meth:`wait` trusts that without asking
            Redis again, seconds (0: ask every time).
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        *,
        key: str,
        max_wait_seconds: float = 30.0,
        recheck_seconds: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.key = key
        self._max_wait_seconds = max_wait_seconds
        self._recheck_seconds = recheck_seconds
        self._clock = clock
        self._clear_until = 0.0  # clock time until which no pause is assumed
        self._extend = redis_client.register_script(_EXTEND)
        self._remaining = redis_client.register_script(_REMAINING)

    def __repr__(self) -> str:
        return f"SharedPause(key={self.key!r})"

    def pause(self, seconds: float) -> None:
        """Make the whole pool wait ``seconds`` from now (never shortens a longer pause)."""
        if seconds > 0:
            self._clear_until = 0.0
            self._extend(keys=[self.key], args=[int(seconds * 1000)])

    def wait(self) -> float:
        """Sleep while the pool is paused (at most ``max_wait_seconds``); return the seconds slept."""
        now = self._clock()
        if now < self._clear_until:
            return 0.0
        remaining = int(self._remaining(keys=[self.key])) / 1000
        if remaining <= 0:
            self._clear_until = now + self._recheck_seconds
            return 0.0
        slept = min(remaining, self._max_wait_seconds) + random.uniform(0, _JITTER_SECONDS)
        log.info("source_pool_paused", key=self.key, wait_seconds=round(slept, 2))
        # Waiting is the point: the API asked the pool to slow down.
        time.sleep(slept)
        return slept
