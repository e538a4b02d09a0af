"""Per-process collaborators of the actors: built on first use, closed when the worker stops.

Nothing connects at import time. Each worker process builds one Redis client, one httpx client,
one BigQuery client and the objects around them the first time an actor needs them, and the
``Resources`` middleware closes them in ``before_worker_shutdown``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import httpx
import redis
from dramatiq.middleware import Middleware

from schemas.settings import Settings
from workers.semaphore import TableSemaphore
from workers.sinks.bigquery import BigQuerySink, make_bigquery_client
from workers.sources.http_policy import MeteredTransport
from workers.sources.lightspeed import LightspeedClient
from workers.sources.lightspeed_auth import TokenManager
from workers.sources.lightspeed_pacing import Pacer
from workers.sources.lightspeed_streams import LightspeedStreams
from workers.sources.notion import NotionClient
from workers.sources.shared_pause import SharedPause
from workers.sources.square import SquareClient
from workers.sources.square_streams import SquareStreams
from workers.state import StateStore
from workers.sync import StreamSource

__all__ = ["Resources", "WorkerResources"]


@dataclass
class WorkerResources:
    """What the actors of one worker process share.

    A source's client is built the first time a message of that source arrives, so a pool that
    consumes only the ``lightspeed`` queue needs no Square credentials, and the other way round.
    """

    settings: Settings
    redis: redis.Redis
    http: httpx.Client
    sink: BigQuerySink
    state: StateStore
    _sources: dict[str, StreamSource] = field(default_factory=dict)
    _notion: NotionClient | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def build(cls, settings: Settings) -> WorkerResources:
        """Build the shared collaborators from settings (validating BigQuery's)."""
        project = settings.require_bigquery()
        client = redis.Redis.from_url(settings.redis_url)
        state = StateStore(client)
        http = httpx.Client(
            timeout=settings.square_timeout_seconds,
            transport=MeteredTransport(
                [
                    (settings.lightspeed_token_url, "lightspeed"),
                    (settings.lightspeed_base_url, "lightspeed"),
                    (settings.square_base_url, "square"),
                ]
            ),
        )
        sink = BigQuerySink(
            make_bigquery_client(settings),
            project=project,
            dataset=settings.bigquery_dataset,
            location=settings.bigquery_location,
            semaphore=TableSemaphore(client, permits=settings.bigquery_merge_permits),
            uploads=settings.bigquery_uploads_per_process,
            staging_ttl_seconds=settings.bigquery_staging_ttl_seconds,
            timeout_seconds=settings.bigquery_timeout_seconds,
            usd_per_tib=settings.bigquery_usd_per_tib,
            on_written=state.add_rows_synced,
        )
        return cls(settings=settings, redis=client, http=http, sink=sink, state=state)

    def source(self, name: str) -> StreamSource:
        """The named source's streams, its client built on first use.

        Raises:
            ConfigError: if the source's credentials are not configured.
            KeyError: for an unknown source.
        """
        with self._lock:
            if name not in self._sources:
                builders: dict[str, Callable[[], StreamSource]] = {
                    "square": self._square,
                    "lightspeed": self._lightspeed,
                }
                self._sources[name] = builders[name]()
            return self._sources[name]

    def square(self) -> SquareStreams:
        """Square's streams (for fetching single records), built on first use.

        Raises:
            ConfigError: if Square's access token is not configured.
        """
        source = self.source("square")
        assert isinstance(source, SquareStreams)
        return source

    def notion(self) -> NotionClient:
        """The Notion client, built on first use.

        Raises:
            ConfigError: if the Notion token is not configured.
        """
        with self._lock:
            if self._notion is None:
                self._notion = NotionClient.from_settings(self.settings, self.redis)
            return self._notion

    def _square(self) -> SquareStreams:
        settings = self.settings
        client = SquareClient(
            self.http,
            base_url=settings.square_base_url,
            token=settings.require_square(),
            square_version=settings.square_version,
            timeout_seconds=settings.square_timeout_seconds,
            request_attempts=settings.square_request_attempts,
            max_request_wait_seconds=settings.square_max_request_wait_seconds,
            pause=SharedPause(
                self.redis,
                key="possync:square:pause",
                max_wait_seconds=settings.square_max_request_wait_seconds,
            ),
        )
        return SquareStreams(client, settings)

    def _lightspeed(self) -> LightspeedStreams:
        settings = self.settings
        account_id, client_id, client_secret, refresh_token = settings.require_lightspeed()
        tokens = TokenManager(
            self.redis,
            self.http,
            token_url=settings.lightspeed_token_url,
            client_id=client_id,
            client_secret=client_secret,
            refresh_token=refresh_token,
            token_file=settings.lightspeed_token_file,
            timeout_seconds=settings.lightspeed_timeout_seconds,
        )
        pacer = Pacer(
            self.redis,
            scope=f"{account_id}:{client_id}",
            max_wait_seconds=settings.lightspeed_max_request_wait_seconds,
        )
        client = LightspeedClient(
            self.http,
            base_url=settings.lightspeed_base_url,
            account_id=account_id,
            tokens=tokens,
            pacer=pacer,
            timeout_seconds=settings.lightspeed_timeout_seconds,
            request_attempts=settings.lightspeed_request_attempts,
            max_request_wait_seconds=settings.lightspeed_max_request_wait_seconds,
        )
        return LightspeedStreams(client)

    def close(self) -> None:
        """Release connections."""
        if self._notion is not None:
            self._notion.close()
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
