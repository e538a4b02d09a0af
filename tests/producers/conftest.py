"""Webhook receiver fixtures: ``possync webhooks`` as a real process on loopback, and event helpers.

- ``receiver`` (module): one receiver on the session's Redis (flushed per test by ``redis_url``),
  with Square configured and the Notion key taken from Redis (record it with :func:`record_token`).
- ``make_receiver`` (function): factory for a receiver with other settings or another Redis,
  stopped after the test.

The helpers build events as Notion and Square send them, sign them, and read what landed on the
Dramatiq queues (``dramatiq:<queue>`` lists message ids, ``dramatiq:<queue>.msgs`` holds them).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from producers.webhooks import replace_notion_verification_token
from sandbox.local_service import die_with_parent, free_port
from sandbox.notion_events import signed_headers
from sandbox.redis_server import RedisServer
from schemas.settings import ENV_PREFIX
from tests.polling import wait_until

#: The Notion verification token tests record (fake).
NOTION_TOKEN = "secret_notion-test-verification-token"
#: Square's signature key and notification URL in these tests (fake).
SQUARE_KEY = "square-test-signature-key"
SQUARE_URL = "https://hooks.example.test/webhooks/square"
#: The receiver's body limit in these tests: the default, 1 MiB.
MAX_BODY_BYTES = 1024 * 1024
#: How long a receiver may take to answer /healthz after start, seconds.
STARTUP_SECONDS = 30.0
_REPO = Path(__file__).resolve().parents[2]


@dataclass
class Receiver:
    """A ``possync webhooks`` process."""

    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        lines = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after a deadline; returns the exit status."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_receiver(redis_url: str, log_path: Path, **settings: str) -> Receiver:
    """Start ``python -m producers.cli webhooks`` configured by ``POSSYNC_*`` variables only.

    Args:
        redis_url: ``POSSYNC_REDIS_URL``.
        log_path: where its stdout and stderr go.
        settings: more settings by field name, e.g. ``notion_verification_token="..."``.
    """
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith(ENV_PREFIX)}
    values = {"redis_url": redis_url, "webhooks_host": "127.0.0.1", "webhooks_port": str(port), **settings}
    env.update({ENV_PREFIX + name.upper(): value for name, value in values.items()})
    env["POSSYNC_LOG_FORMAT"] = "json"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "producers.cli", "webhooks"],
            cwd=_REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    receiver = Receiver(process, f"http://127.0.0.1:{port}", log_path)

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"possync webhooks exited with {process.returncode}:\n{receiver.log()}")
        try:
            return httpx.get(receiver.base_url + "/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(healthy, timeout_seconds=STARTUP_SECONDS, message="possync webhooks did not start")
    except AssertionError:
        receiver.stop()
        raise
    return receiver


@pytest.fixture(scope="module")
def receiver(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    """One receiver for the module: Square configured, Notion key from Redis."""
    log_path = tmp_path_factory.mktemp("webhooks") / "receiver.log"
    started = start_receiver(
        redis_server.url,
        log_path,
        square_webhook_signature_key=SQUARE_KEY,
        square_webhook_url=SQUARE_URL,
    )
    yield started
    started.stop()


@pytest.fixture
def make_receiver(tmp_path: Path) -> Iterator[Callable[..., Receiver]]:
    """Factory: ``make_receiver(redis_url, **settings)``, stopped after the test."""
    started: list[Receiver] = []

    def make(redis_url: str, **settings: str) -> Receiver:
        started.append(start_receiver(redis_url, tmp_path / f"receiver-{len(started)}.log", **settings))
        return started[-1]

    yield make
    for one in started:
        one.stop()


@pytest.fixture
def http(receiver: Receiver) -> Iterator[httpx.Client]:
    """An HTTP client on the module's receiver."""
    with httpx.Client(base_url=receiver.base_url, timeout=15) as client:
        yield client


# Events and signatures, built independently of the receiver's own code (Notion's by the Notion sandbox).


def notion_event(event_type: str = "page.created", **changes: Any) -> dict[str, Any]:
    """A Notion event as Notion sends it, with a fresh id."""
    event: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "timestamp": "2025-06-01T12:34:56.789Z",
        "workspace_id": str(uuid.uuid4()),
        "workspace_name": "Acme",
        "subscription_id": str(uuid.uuid4()),
        "integration_id": str(uuid.uuid4()),
        "type": event_type,
        "authors": [{"id": str(uuid.uuid4()), "type": "person"}],
        "attempt_number": 1,
        "entity": {"id": str(uuid.uuid4()), "type": "page"},
        "data": {"parent": {"id": str(uuid.uuid4()), "type": "database"}},
        "api_version": "2025-09-03",
    }
    event.update(changes)
    return event


def square_event(event_type: str, data: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A Square event envelope with a fresh event id."""
    event: dict[str, Any] = {
        "merchant_id": "MLEFBHHSJGVHD",
        "type": event_type,
        "event_id": str(uuid.uuid4()),
        "created_at": "2025-06-01T12:34:56.789Z",
        "data": data,
    }
    event.update(changes)
    return event


def encode(event: Any) -> bytes:
    """Minified JSON, as both providers send it."""
    return json.dumps(event, separators=(",", ":")).encode()


def sign_notion(body: bytes, token: str = NOTION_TOKEN) -> dict[str, str]:
    """Headers of a Notion delivery of ``body`` signed with ``token``, as the Notion sandbox signs them."""
    return signed_headers(body, token)


def sign_square(body: bytes, key: str = SQUARE_KEY, url: str = SQUARE_URL) -> dict[str, str]:
    """Headers of a Square delivery of ``body``."""
    digest = hmac.new(key.encode(), url.encode() + body, hashlib.sha256).digest()
    return {
        "Content-Type": "application/json",
        "x-square-hmacsha256-signature": base64.b64encode(digest).decode(),
    }


def record_token(client: redis.Redis, token: str = NOTION_TOKEN) -> None:
    """Record the Notion verification token, as ``--set-notion-verification-token`` does."""
    replace_notion_verification_token(client, token)


def queued(client: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """The messages waiting on a Dramatiq queue, oldest first, decoded."""
    ids = client.lrange(f"dramatiq:{queue}", 0, -1)
    if not ids:
        return []
    messages = client.hmget(f"dramatiq:{queue}.msgs", ids)
    assert all(isinstance(raw, bytes) for raw in messages), f"a queued id of {queue} has no message"
    return [json.loads(raw) for raw in messages if isinstance(raw, bytes)]


def queue_counts(client: redis.Redis) -> tuple[int, ...]:
    """Lengths of both queues' id lists and message hashes (all zero when nothing was enqueued)."""
    pipe = client.pipeline(transaction=False)
    for queue in ("notion", "square"):
        pipe.llen(f"dramatiq:{queue}")
        pipe.hlen(f"dramatiq:{queue}.msgs")
    return tuple(int(count) for count in pipe.execute())
