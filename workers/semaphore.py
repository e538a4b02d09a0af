"""A Redis counting semaphore per table, with leases: bounds how many writers MERGE into a table.

BigQuery runs at most 2 mutating DML statements per table at once (20 more wait, then it refuses),
so every MERGE holds one permit of its table's semaphore and a migration swap takes them all
(ARCHITECTURE.md, guarantee 3). It is written here because redis-py has :class:`redis.lock.Lock`
(one holder) but no counting semaphore, and the usual recipes lack what a worker pool needs: a
killed holder's permit must free itself, and an exclusive taker must not starve behind a stream of
single-permit writers.

How it works, per table:

- ``{namespace}:semaphore:{table}`` is a sorted set of holders, each member a holder token scored
  by its lease expiry in milliseconds of the *Redis server's* clock (``TIME``), so clients' clocks
  never matter. Every acquire first prunes expired members, so a SIGKILLed holder's permit frees
  itself when its lease ends.
- A holder renews its lease from a small daemon thread every third of the lease; if the renewal
  finds the member gone (the lease ran out during a long stall, or Redis lost its data) it logs it.
- :meth:`TableSemaphore.hold_all` takes every permit at once. While it waits it sets
  ``{namespace}:semaphore:{table}:drain`` (short-lived, refreshed by each attempt), which stops new
  single-permit acquisitions, so the holders drain and the taker gets in.

Acquire, renew and release are each one Lua script, so they are atomic. Waiters poll with
exponential backoff and jitter (Redis has no cheap "wake me when a member leaves" for sorted sets).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections.abc import Iterator

import redis
import structlog

__all__ = ["PermitTimeout", "TableSemaphore"]

_log = structlog.get_logger(__name__)

#: First pause between attempts to acquire, seconds; doubles up to :data:`MAX_POLL_SECONDS`.
MIN_POLL_SECONDS = 0.01
#: Longest pause between attempts to acquire, seconds.
MAX_POLL_SECONDS = 0.5
#: Lifetime of a waiting exclusive taker's drain mark, milliseconds; each attempt refreshes it, so
#: a taker that died while waiting blocks writers for at most this long.
DRAIN_MARK_MS = 10_000

# KEYS: holders zset, drain key. ARGV: permits, token, lease_ms, count, drain_ms, exclusive (1/0).
# Returns 1 when `count` permits were taken for `token`, else 0.
_ACQUIRE = """
local holders, drain = KEYS[1], KEYS[2]
local permits, token = tonumber(ARGV[1]), ARGV[2]
local lease_ms, count, drain_ms = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local exclusive = ARGV[6] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', holders, '-inf', now)
local draining = redis.call('GET', drain)
if draining and draining ~= token then
  return 0
end
if exclusive then
  redis.call('SET', drain, token, 'PX', drain_ms)
end
if redis.call('ZCARD', holders) + count > permits then
  return 0
end
for i = 1, count do
  redis.call('ZADD', holders, now + lease_ms, token .. ':' .. i)
end
if exclusive then
  redis.call('DEL', drain)
end
if redis.call('PTTL', holders) < lease_ms then
  redis.call('PEXPIRE', holders, lease_ms)
end
return 1
"""

# KEYS: holders zset. ARGV: token, lease_ms, count. Returns how many members were still held.
_RENEW = """
local holders, token = KEYS[1], ARGV[1]
local lease_ms, count = tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local renewed = 0
for i = 1, count do
  local member = token .. ':' .. i
  local score = redis.call('ZSCORE', holders, member)
  if score and tonumber(score) > now then
    redis.call('ZADD', holders, now + lease_ms, member)
    renewed = renewed + 1
  end
end
if renewed > 0 and redis.call('PTTL', holders) < lease_ms then
  redis.call('PEXPIRE', holders, lease_ms)
end
return renewed
"""

# KEYS: holders zset, drain key. ARGV: token, count. Releases the token's members and drain mark.
_RELEASE = """
local holders, drain, token = KEYS[1], KEYS[2], ARGV[1]
for i = 1, tonumber(ARGV[2]) do
  redis.call('ZREM', holders, token .. ':' .. i)
end
if redis.call('GET', drain) == token then
  redis.call('DEL', drain)
end
return 1
"""


class PermitTimeout(TimeoutError):
    """No permit became free before the caller's deadline.

    Attributes:
        table: the table whose semaphore was full.
        waited_seconds: how long the caller waited, seconds.
    """

    def __init__(self, table: str, waited_seconds: float) -> None:
        super().__init__(f"no permit for table {table!r} within {waited_seconds:.1f} s")
        self.table = table
        self.waited_seconds = waited_seconds


class _Renewer:
    """Renews one holding's lease from a daemon thread until stopped."""

    def __init__(self, semaphore: TableSemaphore, table: str, token: str, count: int) -> None:
        self._semaphore = semaphore
        self._table = table
        self._token = token
        self._count = count
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"possync-lease-{table}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = self._semaphore.lease_seconds / 3
        while not self._stopped.wait(interval):
            try:
                held = self._semaphore._renew(self._table, self._token, self._count)
            except redis.RedisError as exc:
                # The next tick tries again; the lease still has two thirds of its length to run.
                _log.warning("semaphore_renew_failed", table=self._table, error=type(exc).__name__)
                continue
            if held < self._count:
                _log.warning("semaphore_lease_lost", table=self._table, held=held, expected=self._count)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


class TableSemaphore:
    """A counting semaphore per table in Redis, with leases that free a dead holder's permit.

    Args:
        redis: client of the Redis server holding the semaphores (shared with other users; the
            connection pool makes it thread-safe).
        permits: permits per table (2 matches BigQuery's concurrent mutating DML per table).
        lease_seconds: a holder's permit frees itself this long after its last renewal; holders
            renew every third of it while alive. Short, like the worker heartbeat timeout: a killed
            worker's permit must come back well before waiters give up (``PermitTimeout``, 120 s).
        namespace: key prefix.

    Raises:
        ValueError: if ``permits`` < 1 or ``lease_seconds`` <= 0.
    """

    def __init__(
        self,
        redis: redis.Redis,
        *,
        permits: int,
        lease_seconds: float = 45,
        namespace: str = "possync",
    ) -> None:
        if permits < 1:
            raise ValueError("permits must be at least 1")
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        self.redis = redis
        self.permits = permits
        self.lease_seconds = lease_seconds
        self.namespace = namespace
        self._acquire_script = redis.register_script(_ACQUIRE)
        self._renew_script = redis.register_script(_RENEW)
        self._release_script = redis.register_script(_RELEASE)

    def _keys(self, table: str) -> list[str]:
        holders = f"{self.namespace}:semaphore:{table}"
        return [holders, f"{holders}:drain"]

    @property
    def _lease_ms(self) -> int:
        return max(1, int(self.lease_seconds * 1000))

    def holders(self, table: str) -> int:
        """How many permits of ``table`` are held by live (unexpired) leases right now."""
        seconds, micros = self.redis.time()
        now_ms = seconds * 1000 + micros // 1000
        return int(self.redis.zcount(self._keys(table)[0], f"({now_ms}", "+inf"))

    def _try_acquire(self, table: str, token: str, count: int) -> bool:
        exclusive = 1 if count == self.permits else 0
        args: list[str | int] = [self.permits, token, self._lease_ms, count, DRAIN_MARK_MS, exclusive]
        return bool(self._acquire_script(keys=self._keys(table), args=args))

    def _renew(self, table: str, token: str, count: int) -> int:
        return int(self._renew_script(keys=self._keys(table)[:1], args=[token, self._lease_ms, count]))

    def _release(self, table: str, token: str, count: int) -> None:
        self._release_script(keys=self._keys(table), args=[token, count])

    @contextlib.contextmanager
    def _hold(self, table: str, count: int, timeout_seconds: float | None) -> Iterator[None]:
        token = uuid.uuid4().hex
        started = time.monotonic()
        pause = MIN_POLL_SECONDS
        while not self._try_acquire(table, token, count):
            waited = time.monotonic() - started
            if timeout_seconds is not None and waited >= timeout_seconds:
                # A waiting exclusive taker leaves its drain mark behind: clear it.
                self._release(table, token, 0)
                raise PermitTimeout(table, waited)
            sleep = pause * random.uniform(0.5, 1.0)
            if timeout_seconds is not None:
                sleep = min(sleep, max(0.0, timeout_seconds - waited))
            time.sleep(sleep)
            pause = min(pause * 2, MAX_POLL_SECONDS)
        renewer = _Renewer(self, table, token, count)
        try:
            yield
        finally:
            renewer.stop()
            self._release(table, token, count)

    def permit(
        self, table: str, *, timeout_seconds: float | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """Hold one permit of ``table``'s semaphore for the ``with`` block.

        Blocks, polling with backoff, until a permit is free. The lease is renewed while held
        and the permit released on exit, exception or not.

        Args:
            table: the table (the semaphore's name).
            timeout_seconds: give up after this long, seconds; wait forever when ``None``.

        Raises:
            PermitTimeout: if no permit became free in time.
            redis.RedisError: if Redis cannot be reached.
        """
        return self._hold(table, 1, timeout_seconds)

    def hold_all(
        self, table: str, *, timeout_seconds: float | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """Hold every permit of ``table``'s semaphore, so no other writer runs (a migration swap).

        While waiting it stops new permits being handed out, so current holders drain.

        Args:
            table: the table.
            timeout_seconds: give up after this long, seconds; wait forever when ``None``.

        Raises:
            PermitTimeout: if the permits did not all come free in time.
            redis.RedisError: if Redis cannot be reached.
        """
        return self._hold(table, self.permits, timeout_seconds)
