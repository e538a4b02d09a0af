"""The system :mod:`bench.freshness` measures: production's services as subprocesses, on loopback.

:func:`start_system` starts a Redis server, the BigQuery emulator, the Square sandbox (on the wall
clock), ``possync webhooks`` and a ``possync worker`` pool, configured only by ``POSSYNC_*``
variables and logging to files in a work directory, then syncs the payments once so the table and
the checkpoint exist. :class:`System` starts more ``possync`` commands (the scheduler replicas),
restarts the pool and points the sandbox's webhooks at the receiver or at nobody.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from sandbox.local_service import free_port
from sandbox.readiness import wait_until_serving
from sandbox.redis_server import RedisServer

__all__ = [
    "DATASET",
    "PAYMENTS_TABLE",
    "PRIME_SECONDS",
    "PROJECT",
    "STOP_SECONDS",
    "Service",
    "System",
    "say",
    "start_system",
]

PROJECT = "possync-bench"
DATASET = "freshness"
#: The payments table the watcher reads, ``project.dataset.table``.
PAYMENTS_TABLE = f"{PROJECT}.{DATASET}.square_payments"
#: The sandbox's fake credentials.
TOKEN = "sandbox-bench-token"
SIGNATURE_KEY = "sandbox-bench-square-signature-key"
#: Deadlines: a service answering after start, the first full sync, a process stopping; seconds.
READY_SECONDS = 30.0
PRIME_SECONDS = 300.0
STOP_SECONDS = 30.0
_REPO = Path(__file__).resolve().parents[1]


def say(text: str) -> None:
    """A progress line on stderr."""
    print(text, file=sys.stderr, flush=True)


@dataclass
class Service:
    """A ``possync`` subprocess in its own process group, logging to a file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def check(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with status {self.process.returncode}; log: {self.log_path}"
            )

    def stop(self) -> None:
        """SIGTERM to the group (a worker pool's children too), then SIGKILL after a deadline."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_SECONDS)


@dataclass
class System:
    """The running services and how to reach them."""

    env: dict[str, str]
    work_dir: Path
    sandbox_url: str
    receiver_url: str
    redis: redis.Redis
    bigquery: Any
    emulator_pid: int
    services: list[Service] = field(default_factory=list)

    def start(self, name: str, *argv: str, **env: str) -> Service:
        log_path = self.work_dir / f"{name}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "producers.cli", *argv],
            cwd=_REPO,
            env={**self.env, **env},
            stdout=log_path.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        service = Service(name, process, log_path)
        self.services.append(service)
        return service

    def check(self) -> None:
        for service in self.services:
            service.check()

    def start_worker(self, options: argparse.Namespace, *, compared: bool) -> None:
        """(Re)start the worker pool, with ``--compare-worker-env`` on top when ``compared``."""
        for service in [service for service in self.services if service.name == "worker"]:
            service.stop()
            self.services.remove(service)
        env = dict(options.worker_env) | (dict(options.compare_worker_env) if compared else {})
        self.start(
            "worker",
            *("worker", "--queues", "square"),
            *("--processes", str(options.processes), "--threads", str(options.threads)),
            **env,
        )

    def set_webhooks(self, url: str | None) -> None:
        """Have the sandbox deliver its events to ``url`` (signed for it), or to nobody."""
        body: dict[str, Any] = {"url": url}
        if url is not None:
            body |= {"signature_key": SIGNATURE_KEY, "notification_url": url}
        httpx.post(f"{self.sandbox_url}/_sandbox/webhooks", json=body, timeout=10).raise_for_status()


@contextmanager
def start_system(options: argparse.Namespace) -> Iterator[System]:
    """Everything running, the payments synced once; stopped afterwards."""
    from sandbox.emulator import BigQueryEmulator
    from sandbox.process import start_square_sandbox
    from schemas.settings import ENV_PREFIX, Settings
    from workers.sinks.bigquery import make_bigquery_client

    work_dir = Path(tempfile.mkdtemp(prefix="possync-bench-freshness-"))
    say(f"logs in {work_dir}")
    with ExitStack() as stack:
        server = stack.enter_context(RedisServer.start())
        # Its data in a temporary directory of its own, removed when it stops; the logs stay.
        emulator = stack.enter_context(BigQueryEmulator.start(PROJECT, python=options.emulator_python))
        receiver_port = free_port()
        receiver_url = f"http://127.0.0.1:{receiver_port}"
        sandbox = stack.enter_context(
            start_square_sandbox(
                payments=options.history_payments,
                customers=20,
                items=10,
                # On the wall clock to the second, so new payments carry about the real time.
                anchor=datetime.now(UTC).replace(microsecond=0),
                token=TOKEN,
                webhook_signature_key=SIGNATURE_KEY,
                log_path=work_dir / "square-sandbox.log",
            )
        )
        values = {
            "redis_url": server.url,
            "square_base_url": sandbox.base_url,
            "square_access_token": TOKEN,
            "bigquery_project": PROJECT,
            "bigquery_dataset": DATASET,
            "bigquery_endpoint": emulator.endpoint,
            "bigquery_location": "US",
            "webhooks_port": str(receiver_port),
            "square_webhook_signature_key": SIGNATURE_KEY,
            "square_webhook_url": f"{receiver_url}/webhooks/square",
            "worker_metrics_port": "0",
            "scheduler_metrics_port": "0",
        }
        env = {key: value for key, value in os.environ.items() if not key.upper().startswith(ENV_PREFIX)}
        env |= {ENV_PREFIX + key.upper(): value for key, value in values.items()}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO), env.get("PYTHONPATH")]))
        settings = Settings.model_validate(values)
        system = System(
            env=env,
            work_dir=work_dir,
            sandbox_url=sandbox.base_url,
            receiver_url=receiver_url,
            redis=redis.Redis.from_url(server.url),
            bigquery=make_bigquery_client(settings),
            emulator_pid=emulator.pid,
        )
        try:
            receiver = system.start("webhooks", "webhooks")
            system.start_worker(options, compared=False)
            wait_until_serving(
                f"{receiver_url}/readyz",
                receiver.process,
                name=receiver.name,
                timeout_seconds=READY_SECONDS,
                log_path=receiver.log_path,
            )
            say(f"syncing the {options.history_payments} payments of the history once ...")
            primed = subprocess.run(
                [
                    *(sys.executable, "-m", "producers.cli", "sync", "square", "--stream", "payments"),
                    *("--wait", "--timeout", str(PRIME_SECONDS)),
                ],
                cwd=_REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=PRIME_SECONDS + 30,
                check=False,
            )
            if primed.returncode != 0:
                raise RuntimeError(f"the first sync failed:\n{primed.stdout}\n{primed.stderr}")
            yield system
        finally:
            for service in reversed(system.services):
                service.stop()
