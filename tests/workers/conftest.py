"""Fixtures for the workers' tests: a broker on the session's Redis and real Dramatiq workers."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from dramatiq import Worker

from schemas.settings import Settings
from workers.broker import PossyncRedisBroker, build_broker

#: The queue the broker tests' actors use.
TEST_QUEUE = "brokertest"


@pytest.fixture
def broker(redis_url: str) -> Iterator[PossyncRedisBroker]:
    """possync's broker on the test's Redis, with quick retries, heartbeats and maintenance."""
    settings = Settings(
        redis_url=redis_url,
        max_retries=3,
        min_backoff_seconds=0.05,
        max_backoff_seconds=0.2,
        worker_heartbeat_timeout_seconds=5,
        worker_maintenance_interval_seconds=0.5,
    )
    broker = build_broker(settings)
    yield broker
    broker.close()


@pytest.fixture
def run_worker(broker: PossyncRedisBroker) -> Iterator[Callable[..., Worker]]:
    """Factory of started Dramatiq workers on one queue (2 threads), stopped after the test."""
    workers: list[Worker] = []

    def start(queue: str = TEST_QUEUE) -> Worker:
        worker = Worker(broker, queues={queue}, worker_threads=2, worker_timeout=100)
        worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
