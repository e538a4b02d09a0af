"""Per-process collaborators of the actors: built on first use, closed when the worker stops.

Nothing connects at import time. Each worker process builds one Redis client, one httpx client,
one BigQuery client and the objects around them the first time an actor needs them, and the
``Resources`` middleware closes them in ``before_worker_shutdown``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import dramatiq
import httpx
import redis
from dramatiq.middleware import Middleware

from schemas.settings import Settings
from workers.semaphore import TableSemaphore
from workers.sinks.bigquery import BigQuerySink, make_bigquery_client
from workers.sources.square import SquareClient
from workers.state import StateStore

__all__ = ["Resources", "WorkerResources"]


@dataclass
class WorkerResources:
    """What the actors of one worker process share."""

    settings: Settings
    redis: redis.Redis
    http: httpx.Client
    square: SquareClient
    sink: BigQuerySink
    state: StateStore

    @classmethod
    def build(cls, settings: Settings) -> WorkerResources:
        """Build every collaborator from settings (validating the credentials each needs)."""
        token = settings.require_square()
        project = settings.require_bigquery()
        client = redis.Redis.from_url(settings.redis_url)
        http = httpx.Client(timeout=settings.square_timeout_seconds)
        square = SquareClient(
            http,
            base_url=settings.square_base_url,
            token=token,
            square_version=settings.square_version,
            timeout_seconds=settings.square_timeout_seconds,
            request_attempts=settings.square_request_attempts,
            max_request_wait_seconds=settings.square_max_request_wait_seconds,
        )
        sink = BigQuerySink(
            make_bigquery_client(settings),
            project=project,
            dataset=settings.bigquery_dataset,
            location=settings.bigquery_location,
            semaphore=TableSemaphore(client, permits=settings.bigquery_merge_permits),
            staging_ttl_seconds=settings.bigquery_staging_ttl_seconds,
            timeout_seconds=settings.bigquery_timeout_seconds,
        )
        return cls(
            settings=settings, redis=client, http=http, square=square, sink=sink, state=StateStore(client)
        )

    def close(self) -> None:
        """Release connections."""
        self.http.close()
        self.redis.close()


class Resources(Middleware):
    """Holds this process's :class:`WorkerResources`, built lazily and thread-safely."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._resources: WorkerResources | None = None

    def get(self) -> WorkerResources:
        """This process's resources, built on first call."""
        with self._lock:
            if self._resources is None:
                self._resources = WorkerResources.build(self.settings)
            return self._resources

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        with self._lock:
            if self._resources is not None:
                self._resources.close()
                self._resources = None
