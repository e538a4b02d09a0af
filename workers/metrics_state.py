"""The pipeline's state as Prometheus series, read from Redis at scrape time.

Queue and dead-letter depth, live consumers per queue and each stream's sync lag are facts about the
whole system, kept in Redis, not counts a process made. Every possync process (worker pool,
scheduler, webhook receiver) registers :class:`PipelineStateCollector`, so each ``/metrics`` shows
them: the series are identical across processes, and queries aggregate them with ``max by (...)``.

A scrape never fails because Redis does: the state series are left out and ``possync_state_up`` is 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

import redis
import structlog
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from schemas.messages import QUEUES
from workers.metrics import STATE_METRICS, MetricInfo
from workers.queues import live_consumers, oldest_dead_letter_age_seconds, queue_depth
from workers.state import StateStore

__all__ = ["PipelineStateCollector", "process_registry"]

log = structlog.get_logger(__name__)

_INFO = {info.name: info for info in STATE_METRICS}


def _family(name: str) -> GaugeMetricFamily:
    info: MetricInfo = _INFO[name]
    return GaugeMetricFamily(info.name, info.documentation, labels=list(info.labels))


def _counter(name: str) -> CounterMetricFamily:
    info: MetricInfo = _INFO[name]
    return CounterMetricFamily(info.name, info.documentation, labels=list(info.labels))


class PipelineStateCollector(Collector):
    """Collects the state series of :data:`workers.metrics.STATE_METRICS` from Redis on each scrape.

    Args:
        client: the Redis holding the queues and stream states (a short socket timeout keeps a
            scrape quick when Redis is slow).
        heartbeat_timeout_seconds: a consumer whose heartbeat is older is not counted as live.
        queues: the queues to report (default: every possync queue).
        clock: Unix time, for lag.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        heartbeat_timeout_seconds: float,
        queues: Sequence[str] = QUEUES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self._state = StateStore(client)
        self._heartbeat_timeout_seconds = heartbeat_timeout_seconds
        self._queues = tuple(queues)
        self._clock = clock

    def describe(self) -> Iterator[Metric]:
        """The families (without samples), so registering does not read Redis."""
        for name, info in _INFO.items():
            yield _counter(name) if info.kind == "counter" else _family(name)

    def collect(self) -> Iterator[Metric]:
        """Read Redis once and yield every state family, or only ``possync_state_up 0`` if it failed."""
        up = _family("possync_state_up")
        try:
            families = self._read()
        except redis.RedisError as exc:
            log.warning("metrics_state_unreadable", error_type=type(exc).__name__, error=str(exc))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> list[Metric]:
        messages = _family("possync_queue_messages")
        dead = _family("possync_dead_letters")
        oldest = _family("possync_dead_letter_oldest_age_seconds")
        consumers = _family("possync_queue_consumers")
        for queue in self._queues:
            depth = queue_depth(self._redis, queue)
            messages.add_metric([queue, "ready"], depth.ready)
            messages.add_metric([queue, "delayed"], depth.delayed)
            messages.add_metric([queue, "in_flight"], depth.in_flight)
            dead.add_metric([queue], depth.dead)
            oldest.add_metric([queue], oldest_dead_letter_age_seconds(self._redis, queue))
            consumers.add_metric(
                [queue],
                live_consumers(self._redis, queue, heartbeat_timeout_seconds=self._heartbeat_timeout_seconds),
            )
        lag = _family("possync_sync_lag_seconds")
        last = _family("possync_last_successful_sync_timestamp_seconds")
        now = self._clock()
        for stream in self._state.list_streams().values():
            if stream.last_success is None:
                continue  # failed before it ever succeeded: no lag to report yet
            success = stream.last_success.timestamp()
            lag.add_metric([stream.source, stream.stream], max(0.0, now - success))
            last.add_metric([stream.source, stream.stream], success)
        rows = _counter("possync_rows_synced")
        for table, count in sorted(self._state.rows_synced().items()):
            rows.add_metric([table], count)
        return [messages, dead, oldest, consumers, lag, last, rows]


def process_registry(client: redis.Redis, *, heartbeat_timeout_seconds: float) -> CollectorRegistry:
    """What a single-process producer (scheduler, webhook receiver) serves on ``/metrics``.

    Its own metrics (prometheus-client's default registry) and the pipeline state, in one registry
    built per server, so building two in one process (tests) never registers anything twice.
    """
    registry = CollectorRegistry()
    registry.register(REGISTRY)
    registry.register(PipelineStateCollector(client, heartbeat_timeout_seconds=heartbeat_timeout_seconds))
    return registry
