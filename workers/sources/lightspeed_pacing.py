"""Lightspeed leaky-bucket pacing shared by the whole worker pool through Redis.

Lightspeed meters each account-and-client pair with a leaky bucket (``X-LS-API-Bucket-Level:
used/size``, draining ``X-LS-API-Drip-Rate`` per second) and answers 429 once a request finds the
level above the size. Workers on many machines share one Redis-held model of that bucket (level,
size, drip rate, time of the last update, all on Redis's clock so machines need not agree on
time). Before each request a worker reserves its cost atomically (a Lua script): if the bucket has
room the level rises at once, else the worker learns how long the bucket needs to drain and waits.
Every response corrects the model with the level Lightspeed reports, never lowering it: the model
also counts requests still in flight, which the server has not seen yet.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping

import redis
import structlog

from workers import metrics
from workers.errors import RateLimited
from workers.sources.lightspeed_auth import DEFAULT_KEY_PREFIX, SYSTEM

__all__ = ["DEFAULT_BUCKET_SIZE", "DEFAULT_DRIP_RATE", "DRIP_MARGIN", "Pacer", "parse_bucket_level"]

#: Bucket size assumed until a response says otherwise: the documented size for one register.
DEFAULT_BUCKET_SIZE = 90.0
#: Drips per second assumed until a response says otherwise: the documented rate for one register.
DEFAULT_DRIP_RATE = 1.0
#: Drips kept free below the size: the server counts a request when it arrives, a little after we
#: reserve it, and relation costs are fractional.
DEFAULT_HEADROOM = 1.0
#: The model is forgotten after this long without a request, seconds (the bucket has drained).
_MODEL_TTL_SECONDS = 3600
#: The share of the advertised drip rate the model drains at. Slightly under 1, so that the pool
#: stays under the server's rate however the two clocks (Redis's and Lightspeed's) drift and however
#: late a request reaches the server: 429s cost more than the 5 % given up.
DRIP_MARGIN = 0.95
#: Random extra wait, seconds, so workers woken together do not race for the same drip.
_JITTER_SECONDS = 0.05

# KEYS[1] the bucket hash. ARGV: cost, default size, default drip rate, headroom, ttl, drip margin.
# Returns "0" when the cost was reserved, else the seconds until it would fit (as a string: Lua
# numbers become integers on the way out).
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local s = redis.call('HMGET', KEYS[1], 'level', 'size', 'drip', 'at')
local size = tonumber(s[2]) or tonumber(ARGV[2])
local drip = tonumber(s[3]) or tonumber(ARGV[3])
local level = tonumber(s[1]) or 0
local at = tonumber(s[4]) or now
level = math.max(0, level - math.max(0, now - at) * drip * tonumber(ARGV[6]))
local cost = tonumber(ARGV[1])
local limit = size - tonumber(ARGV[4])
local wait = 0
-- An empty bucket always admits one request, even one costing more than the limit.
if level + cost <= limit or level == 0 then
  level = level + cost
else
  wait = (level + cost - limit) / (drip * tonumber(ARGV[6]))
end
redis.call('HSET', KEYS[1], 'level', tostring(level), 'size', tostring(size),
  'drip', tostring(drip), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], ARGV[5])
return tostring(wait)
"""

# KEYS[1] the bucket hash. ARGV: observed level, observed size, observed drip rate ('' if unknown),
# defaults for size and drip rate, ttl, drip margin.
_OBSERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local s = redis.call('HMGET', KEYS[1], 'level', 'size', 'drip', 'at')
local size = tonumber(ARGV[2]) or tonumber(s[2]) or tonumber(ARGV[4])
local drip = tonumber(ARGV[3]) or tonumber(s[3]) or tonumber(ARGV[5])
local level = tonumber(s[1]) or 0
local at = tonumber(s[4]) or now
level = math.max(0, level - math.max(0, now - at) * drip * tonumber(ARGV[7]))
local observed = tonumber(ARGV[1])
if observed and observed > level then
  level = observed
end
redis.call('HSET', KEYS[1], 'level', tostring(level), 'size', tostring(size),
  'drip', tostring(drip), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], ARGV[6])
return tostring(level)
"""

log = structlog.get_logger(__name__)


def parse_bucket_level(value: str | None) -> tuple[float, float] | None:
    """``X-LS-API-Bucket-Level`` (``used/size``, e.g. ``92.57/90``) as ``(level, size)``, if readable."""
    if not value or "/" not in value:
        return None
    used, _, size = value.partition("/")
    try:
        level, total = float(used), float(size)
    except ValueError:
        return None
    if level < 0 or total <= 0:
        return None
    return level, total


class Pacer:
    """Paces one Lightspeed bucket (one account and OAuth client) across every worker.

    Args:
        redis_client: the Redis shared by the pool.
        scope: what the bucket belongs to, e.g. ``"<account id>:<client id>"``; names the Redis key.
        max_wait_seconds: longest a request waits for room, seconds; a longer wait raises
            :class:`RateLimited` so the message goes back to the queue instead.
        headroom: drips kept free below the bucket's size.
        key_prefix: the Redis key prefix.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        *,
        scope: str,
        max_wait_seconds: float = 60.0,
        headroom: float = DEFAULT_HEADROOM,
        key_prefix: str = DEFAULT_KEY_PREFIX,
    ) -> None:
        if not scope:
            raise ValueError("scope is required")
        if headroom < 0:
            raise ValueError("headroom must not be negative")
        self.key = f"{key_prefix}{scope}:bucket"
        self._redis = redis_client
        self._max_wait_seconds = max_wait_seconds
        self._headroom = headroom
        self._reserve = redis_client.register_script(_RESERVE)
        self._observe = redis_client.register_script(_OBSERVE)

    def __repr__(self) -> str:
        return f"Pacer(key={self.key!r})"

    def acquire(self, cost: float = 1.0) -> float:
        """Reserve ``cost`` drips, waiting until the shared bucket has room for them.

        Returns:
            The seconds spent waiting.

        Raises:
            RateLimited: if the bucket would not have room within ``max_wait_seconds``.
        """
        if cost <= 0:
            raise ValueError("cost must be positive")
        started = time.monotonic()
        while True:
            wait = float(
                self._reserve(
                    keys=[self.key],
                    args=[
                        cost,
                        DEFAULT_BUCKET_SIZE,
                        DEFAULT_DRIP_RATE,
                        self._headroom,
                        _MODEL_TTL_SECONDS,
                        DRIP_MARGIN,
                    ],
                )
            )
            waited = time.monotonic() - started
            if wait <= 0:
                metrics.SOURCE_THROTTLE_SECONDS.labels(SYSTEM).inc(waited)
                return waited
            if waited + wait > self._max_wait_seconds:
                raise RateLimited(
                    f"lightspeed bucket has no room for {wait:.1f} s",
                    system=SYSTEM,
                    retry_after_seconds=wait,
                )
            # Waiting is the point here: the bucket drains only with time.
            time.sleep(wait + random.uniform(0, _JITTER_SECONDS))

    def observe(self, headers: Mapping[str, str]) -> None:
        """Correct the shared model with the bucket headers of a response (any status)."""
        # Plain mappings are accepted too, so look names up without regard to case, as HTTP does.
        headers = {name.lower(): value for name, value in headers.items()}
        parsed = parse_bucket_level(headers.get("x-ls-api-bucket-level"))
        if parsed is None:
            return
        level, size = parsed
        drip = headers.get("x-ls-api-drip-rate", "")
        try:
            drip_rate = float(drip)
        except ValueError:
            drip_rate = 0.0
        self._observe(
            keys=[self.key],
            args=[
                level,
                size,
                drip_rate if drip_rate > 0 else "",
                DEFAULT_BUCKET_SIZE,
                DEFAULT_DRIP_RATE,
                _MODEL_TTL_SECONDS,
                DRIP_MARGIN,
            ],
        )

    def model(self) -> dict[str, float]:
        """The stored model (``level``, ``size``, ``drip``, ``at``) as last written, for tests and status."""
        raw = self._redis.hgetall(self.key)
        return {(key.decode() if isinstance(key, bytes) else key): float(value) for key, value in raw.items()}
