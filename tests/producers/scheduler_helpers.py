"""Helpers for the scheduler tests: scheduler processes, their metrics, a stub sync consumer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter as Tally
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dramatiq
import httpx
import redis
from dramatiq import Worker
from prometheus_client.parser import text_string_to_metric_families

from producers.scheduler import TICK_KEY
from producers.schedules import Schedule
from sandbox.local_service import die_with_parent
from sandbox.process import REPO_ROOT
from schemas.messages import SQUARE_QUEUE, SYNC_SQUARE_STREAM
from schemas.settings import ENV_PREFIX, Settings
from workers.broker import build_broker

__all__ = [
    "Clock",
    "SchedulerProcess",
    "StubSyncConsumer",
    "claimed_ticks",
    "clock",
    "run_scheduler_once",
    "start_scheduler_process",
]

#: How long a scheduler process may take to stop after SIGTERM, seconds.
STOP_TIMEOUT_SECONDS = 10.0


class Clock:
    """A settable UTC clock for :class:`~producers.scheduler.Scheduler`'s ``now``."""

    def __init__(self, start: datetime) -> None:
        self.moment = start

    def __call__(self) -> datetime:
        return self.moment

    def advance(self, **delta: float) -> datetime:
        """Move forward by ``timedelta(**delta)``; returns the new time."""
        self.moment += timedelta(**delta)
        return self.moment


def clock(start: datetime) -> Clock:
    """A clock standing at ``start`` (aware, UTC)."""
    return Clock(start.astimezone(UTC))


class SchedulerProcess:
    """A ``possync scheduler`` subprocess whose log (JSON lines) goes to a file."""

    def __init__(self, popen: subprocess.Popen[bytes], metrics_port: int, log_path: Path) -> None:
        self.popen = popen
        self.metrics_port = metrics_port
        self.log_path = log_path

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (other lines are skipped)."""
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
        return lines

    def replica_id(self) -> str | None:
        """The replica id from the ``scheduler_started`` line, once written."""
        for line in self.log_lines():
            if line.get("event") == "scheduler_started":
                return str(line["replica_id"])
        return None

    def first_tick(self, schedule: str) -> datetime | None:
        """The first tick this replica handled of ``schedule`` (from its log), if any yet."""
        for line in self.log_lines():
            if line.get("event") == "scheduler_tick" and line.get("schedule") == schedule:
                return datetime.strptime(line["tick"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        return None

    def ticks_metric(self) -> Tally[tuple[str, str]] | None:
        """``possync_scheduler_ticks_total`` by (stream, outcome), or ``None`` if not serving yet."""
        if self.popen.poll() is not None:
            raise AssertionError(f"scheduler exited {self.popen.returncode}:\n{self.log_tail()}")
        try:
            response = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2)
        except httpx.TransportError:
            return None
        counts: Tally[tuple[str, str]] = Tally()
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name == "possync_scheduler_ticks_total":
                    counts[(sample.labels["stream"], sample.labels["outcome"])] += int(sample.value)
        return counts

    def log_tail(self, lines: int = 30) -> str:
        """The end of the log, for failure messages."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> int:
        """SIGTERM, then wait; returns the exit status (SIGKILL and fail if it hangs)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"scheduler ignored SIGTERM:\n{self.log_tail()}") from None


def _environment(redis_url: str, schedules: dict[str, str], metrics_port: int) -> dict[str, str]:
    clean = {key: value for key, value in os.environ.items() if not key.upper().startswith(ENV_PREFIX)}
    return {
        **clean,
        "POSSYNC_REDIS_URL": redis_url,
        "POSSYNC_SCHEDULES": json.dumps(schedules),
        "POSSYNC_SQUARE_ACCESS_TOKEN": "dummy-token",
        "POSSYNC_SCHEDULER_METRICS_PORT": str(metrics_port),
        "POSSYNC_LOG_LEVEL": "INFO",
    }


@contextmanager
def start_scheduler_process(
    redis_url: str, schedules: dict[str, str], *, metrics_port: int, log_path: Path
) -> Iterator[SchedulerProcess]:
    """Run ``python -m producers.cli scheduler`` until the block ends (then SIGTERM, or SIGKILL)."""
    with log_path.open("wb") as log_file:
        popen = subprocess.Popen(
            [sys.executable, "-m", "producers.cli", "scheduler"],
            cwd=REPO_ROOT,
            env=_environment(redis_url, schedules, metrics_port),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    process = SchedulerProcess(popen, metrics_port, log_path)
    try:
        yield process
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait()


def run_scheduler_once(redis_url: str, schedules: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``possync scheduler --once`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "producers.cli", "scheduler", "--once"],
        cwd=REPO_ROOT,
        env=_environment(redis_url, schedules, 0),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def claimed_ticks(client: redis.Redis, schedule: Schedule) -> dict[datetime, str]:
    """Every claimed tick of ``schedule`` in Redis, with the replica that claimed it."""
    prefix = TICK_KEY.format(schedule=schedule.name, tick="")
    claims: dict[datetime, str] = {}
    for key in client.scan_iter(match=prefix + "*", count=1000):
        name = key.decode() if isinstance(key, bytes) else str(key)
        owner = client.get(name)
        tick = datetime.strptime(name.removeprefix(prefix), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        claims[tick] = owner.decode() if isinstance(owner, bytes) else str(owner)
    return claims


class StubSyncConsumer:
    """A real Dramatiq worker on the square queue whose ``sync_square_stream`` acks at once.

    It stands for a worker pool that finishes every sync quickly; it records each request id it saw.
    """

    def __init__(self, redis_url: str) -> None:
        self.broker = build_broker(Settings(redis_url=redis_url))
        self.received: list[str] = []
        self._lock = threading.Lock()
        self._worker: Worker | None = None

        @dramatiq.actor(
            broker=self.broker, queue_name=SQUARE_QUEUE, actor_name=SYNC_SQUARE_STREAM.actor, max_retries=0
        )
        def sync_square_stream(payload: dict[str, Any]) -> None:
            with self._lock:
                self.received.append(str(payload["request_id"]))

    def start(self) -> None:
        """Start consuming."""
        self._worker = Worker(self.broker, queues={SQUARE_QUEUE}, worker_threads=2, worker_timeout=100)
        self._worker.start()

    def seen(self) -> list[str]:
        """The request ids received so far, in order."""
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        """Stop the worker and close the broker."""
        if self._worker is not None:
            self._worker.stop()
        self.broker.close()
