"""A worker pool's one ``/metrics`` endpoint: every process's metrics plus the pipeline's state.

Dramatiq's :class:`~dramatiq.middleware.prometheus.Prometheus` middleware counts its
``dramatiq_*`` message metrics in each worker process and forks one exposition process per pool;
its own server shows only the multiprocess directory. :class:`PoolPrometheus` keeps the middleware
and swaps the forked server for :func:`serve_pool_metrics`, which adds the state read from Redis
(:class:`~workers.metrics_state.PipelineStateCollector`) to the same exposition.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from dramatiq.middleware.prometheus import Prometheus

__all__ = ["PoolPrometheus", "serve_pool_metrics"]


def serve_pool_metrics() -> int:
    """Serve the pool's metrics until killed (runs in the process Dramatiq forks for it).

    Reads where and what from the environment that ``possync worker`` prepared
    (:func:`workers.metrics_env.prepare_worker_metrics`) and the POSSYNC_* settings.
    """
    # Imported here: prometheus-client must see PROMETHEUS_MULTIPROC_DIR before its first import.
    import redis
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from schemas.settings import load_settings
    from workers.logs import configure_logging
    from workers.metrics_state import PipelineStateCollector

    settings = load_settings()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=os.environ["PROMETHEUS_MULTIPROC_DIR"])
    # One try with short timeouts: a scrape while Redis is down must answer quickly (state_up 0).
    client = redis.Redis.from_url(
        settings.redis_url, socket_timeout=3, socket_connect_timeout=3, retry=Retry(NoBackoff(), 0)
    )
    registry.register(
        PipelineStateCollector(client, heartbeat_timeout_seconds=settings.worker_heartbeat_timeout_seconds)
    )
    host = os.environ["dramatiq_prom_host"]  # noqa: SIM112 (Dramatiq's spelling)
    port = int(os.environ["dramatiq_prom_port"])  # noqa: SIM112
    _server, thread = start_http_server(port, addr=host, registry=registry)
    thread.join()
    return 0


class PoolPrometheus(Prometheus):
    """Dramatiq's Prometheus middleware, whose forked exposition server is :func:`serve_pool_metrics`."""

    @property
    def forks(self) -> list[Callable[[], int]]:
        return [serve_pool_metrics]
