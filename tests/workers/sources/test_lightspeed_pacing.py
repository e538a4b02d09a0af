"""The Lightspeed pacer against real Redis: many workers share one bucket and never overflow it.

A reference leaky bucket with Lightspeed's documented rule (a request is refused while the level
is above the size) stands in for the server, so the test counts the 429s the pool would have got.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from workers.errors import RateLimited
from workers.sources.lightspeed_pacing import Pacer, parse_bucket_level

SCOPE = "12345:possync-test-client"


class ReferenceBucket:
    """Lightspeed's limiter: the level drains at ``drip_rate``; a request is refused while above ``size``."""

    def __init__(self, *, size: float, drip_rate: float) -> None:
        self.size, self.drip_rate = size, drip_rate
        self.level, self.refused, self.accepted = 0.0, 0, 0
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def take(self, cost: float) -> None:
        with self._lock:
            now = time.monotonic()
            self.level = max(0.0, self.level - (now - self._last) * self.drip_rate)
            self._last = now
            if self.level > self.size:
                self.refused += 1
            else:
                self.level += cost
                self.accepted += 1

    def headers(self) -> dict[str, str]:
        with self._lock:
            return {"x-ls-api-bucket-level": f"{self.level:.2f}/{self.size:g}", "x-ls-api-drip-rate": "20"}


@pytest.fixture
def make_pacer(redis_url: str) -> Iterator[Callable[..., Pacer]]:
    clients: list[redis.Redis] = []

    def make(**options: float) -> Pacer:
        client = redis.Redis.from_url(redis_url)
        clients.append(client)
        return Pacer(client, scope=SCOPE, **options)  # type: ignore[arg-type]

    yield make
    for client in clients:
        client.close()


def test_many_workers_never_overflow_the_shared_bucket(make_pacer: Callable[..., Pacer]) -> None:
    # Given a bucket of 10 drips draining 20 per second, known from one response's headers
    server = ReferenceBucket(size=10, drip_rate=20)
    make_pacer().observe({"X-LS-API-Bucket-Level": "0/10", "X-LS-API-Drip-Rate": "20"})
    workers = [make_pacer() for _ in range(8)]
    per_worker = 10
    barrier = threading.Barrier(len(workers))

    def run(pacer: Pacer) -> None:
        barrier.wait()
        for _ in range(per_worker):
            pacer.acquire(1.0)
            server.take(1.0)
            pacer.observe(server.headers())

    # When 8 workers each send 10 requests as fast as the pacer lets them
    started = time.monotonic()
    with ThreadPoolExecutor(len(workers)) as pool:
        list(pool.map(run, workers))
    elapsed = time.monotonic() - started

    # Then the server refused none, and the pool ran at about the drip rate once the bucket filled
    assert server.refused == 0
    assert server.accepted == 80
    assert elapsed >= (80 - 10) / 20 * 0.8


def test_the_same_burst_without_pacing_would_be_refused() -> None:
    # Given the same bucket, When 80 requests go out at once
    server = ReferenceBucket(size=10, drip_rate=20)
    for _ in range(80):
        server.take(1.0)

    # Then most are refused: the pacing test above measures something real
    assert server.refused > 50


def test_a_response_raises_the_model_but_never_lowers_it(make_pacer: Callable[..., Pacer]) -> None:
    # Given a model that counts 5 reserved drips of a 90-drip bucket
    pacer = make_pacer()
    for _ in range(5):
        pacer.acquire(1.0)

    # When a response reports a lower level (requests in flight not yet counted there)
    pacer.observe({"X-LS-API-Bucket-Level": "1/90", "X-LS-API-Drip-Rate": "1"})

    # Then the model keeps its own higher level
    assert pacer.model()["level"] > 4.5

    # When a response reports a higher level (another client of the account, say), a larger bucket
    pacer.observe({"X-LS-API-Bucket-Level": "92.57/100", "X-LS-API-Drip-Rate": "2.5"})

    # Then the model follows it
    model = pacer.model()
    assert model["level"] == pytest.approx(92.57, abs=0.1)
    assert model["size"] == 100
    assert model["drip"] == 2.5


def test_a_wait_longer_than_allowed_raises_rate_limited(make_pacer: Callable[..., Pacer]) -> None:
    # Given a full bucket draining 1 drip per second and a pacer that waits at most 2 s
    pacer = make_pacer(max_wait_seconds=2.0)
    pacer.observe({"X-LS-API-Bucket-Level": "95/90", "X-LS-API-Drip-Rate": "1"})

    # When a request asks for room
    with pytest.raises(RateLimited) as caught:
        pacer.acquire(1.0)

    # Then it is sent back at once with how long the bucket needs
    assert caught.value.retry_after_seconds == pytest.approx(7.0, abs=0.5)


@pytest.mark.parametrize(
    ("header", "parsed"),
    [("1/90", (1.0, 90.0)), ("92.57/90", (92.57, 90.0)), ("", None), ("x/90", None), ("5/0", None)],
)
def test_bucket_level_header_parsing(header: str, parsed: tuple[float, float] | None) -> None:
    # Given a header value, When it is parsed, Then it gives (level, size) or nothing
    assert parse_bucket_level(header) == parsed
