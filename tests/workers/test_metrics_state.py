"""The pipeline-state collector against a real Redis server and a real Dramatiq worker."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
import redis
from dramatiq import Worker
from prometheus_client import CollectorRegistry
from redis.backoff import NoBackoff
from redis.retry import Retry

from schemas.messages import QUEUES
from tests.polling import wait_until
from tests.workers.conftest import TEST_QUEUE
from workers.broker import CONSUMERS_KEY, PossyncRedisBroker
from workers.errors import PermanentError
from workers.metrics import STATE_METRICS
from workers.metrics_state import PipelineStateCollector, process_registry
from workers.queues import live_consumers
from workers.state import StateStore

NOW = 1_800_000_000.0


def _registry(client: redis.Redis, **kwargs: Any) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(PipelineStateCollector(client, heartbeat_timeout_seconds=5, **kwargs))
    return registry


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_queue_depth_dead_letters_and_consumers_follow_the_queue(
    broker: PossyncRedisBroker, run_worker: Callable[..., Worker]
) -> None:
    # Given an actor that always fails for good, and three messages for it with no worker yet
    @dramatiq.actor(broker=broker, queue_name=TEST_QUEUE, actor_name="doomed", throws=(PermanentError,))
    def doomed(payload: dict[str, Any]) -> None:
        raise PermanentError("refused", system="square")

    for _ in range(3):
        doomed.send_with_options(kwargs={"payload": {}})
    registry = _registry(broker.client, queues=[TEST_QUEUE])

    # Then the three are ready, none dead, and nobody consumes the queue
    assert _value(registry, "possync_state_up") == 1
    assert _value(registry, "possync_queue_messages", queue=TEST_QUEUE, state="ready") == 3
    assert _value(registry, "possync_queue_messages", queue=TEST_QUEUE, state="in_flight") == 0
    assert _value(registry, "possync_dead_letters", queue=TEST_QUEUE) == 0
    assert _value(registry, "possync_dead_letter_oldest_age_seconds", queue=TEST_QUEUE) == 0
    assert _value(registry, "possync_queue_consumers", queue=TEST_QUEUE) == 0

    # When a worker consumes the queue
    worker = run_worker()

    # Then it counts as a consumer, and the messages end as dead letters whose age grows
    wait_until(
        lambda: _value(registry, "possync_dead_letters", queue=TEST_QUEUE) == 3,
        timeout_seconds=30,
        message="the three messages never reached the dead letters",
    )
    assert _value(registry, "possync_queue_messages", queue=TEST_QUEUE, state="ready") == 0
    assert _value(registry, "possync_queue_consumers", queue=TEST_QUEUE) == 1
    first = _value(registry, "possync_dead_letter_oldest_age_seconds", queue=TEST_QUEUE)
    assert first is not None
    assert 0 <= first < 30
    wait_until(
        lambda: (_value(registry, "possync_dead_letter_oldest_age_seconds", queue=TEST_QUEUE) or 0) > first,
        timeout_seconds=10,
        message="the oldest dead letter's age did not grow",
    )

    # When the worker stops cleanly, Then it leaves the consumer count at once
    worker.stop()
    assert _value(registry, "possync_queue_consumers", queue=TEST_QUEUE) == 0


def test_a_consumer_whose_heartbeat_is_stale_is_not_live(redis_client: redis.Redis) -> None:
    # Given one fresh heartbeat and one from a process that stopped beating a minute ago
    key = CONSUMERS_KEY.format(queue="square")
    redis_client.zadd(key, {"live": time.time(), "killed": time.time() - 60})

    # Then only the fresh one counts, and the stale one is trimmed
    assert live_consumers(redis_client, "square", heartbeat_timeout_seconds=30) == 1
    assert redis_client.zrange(key, 0, -1) == [b"live"]


def test_sync_lag_is_now_minus_the_start_of_the_last_successful_sync(redis_client: redis.Redis) -> None:
    # Given a stream whose last successful sync started 120 s ago, and one that only ever failed
    state = StateStore(redis_client)
    started = datetime.fromtimestamp(NOW, UTC) - timedelta(seconds=120)
    state.commit_checkpoint("square", "payments", checkpoint=started, started_at=started)
    state.record_error("square", "customers", error="SourceAuthError: 401", at=started)

    # When the collector reads them at NOW
    registry = _registry(redis_client, clock=lambda: NOW)

    # Then the synced stream's lag is 120 s and its last success is that start; the other has none
    assert _value(registry, "possync_sync_lag_seconds", source="square", stream="payments") == 120
    assert _value(
        registry, "possync_last_successful_sync_timestamp_seconds", source="square", stream="payments"
    ) == (NOW - 120)
    assert _value(registry, "possync_sync_lag_seconds", source="square", stream="customers") is None
    # And rows counted by any worker show as one total per table
    state.add_rows_synced("square_payments", 30)
    state.add_rows_synced("square_payments", 12)
    assert _value(registry, "possync_rows_synced_total", table="square_payments") == 42
    # And every possync queue is reported
    for queue in QUEUES:
        assert _value(registry, "possync_queue_messages", queue=queue, state="ready") == 0


def test_an_unreachable_redis_leaves_the_scrape_working_with_state_up_0() -> None:
    # Given a collector whose Redis does not answer (nothing listens on port 1)
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    registry = _registry(client)

    # Then the scrape succeeds, says the state is unreadable, and reports no stale state
    assert _value(registry, "possync_state_up") == 0
    assert _value(registry, "possync_queue_messages", queue="square", state="ready") is None


def test_a_producer_registry_serves_process_metrics_and_state_and_can_be_built_twice(
    redis_client: redis.Redis,
) -> None:
    # Given two producer registries built in one process (as tests and app factories do)
    first = process_registry(redis_client, heartbeat_timeout_seconds=5)
    second = process_registry(redis_client, heartbeat_timeout_seconds=5)

    # Then each shows the process metrics and every state family
    for registry in (first, second):
        names = {metric.name for metric in registry.collect()}
        assert "possync_webhook_events" in names
        assert {info.name for info in STATE_METRICS} <= names
