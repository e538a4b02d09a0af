"""End-to-end fixtures: the real system as a user runs it.

A Redis server process, the BigQuery emulator process and a Square or Lightspeed sandbox process, with
``possync`` commands and ``possync worker`` pools run as subprocesses configured only by
``POSSYNC_*`` environment variables, exactly as in production.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sandbox.process import free_port, start_lightspeed_sandbox, start_square_sandbox
from schemas.settings import ENV_PREFIX, Settings

TOKEN = "e2e-sandbox-token"
#: The Lightspeed sandbox's OAuth client secret and first refresh token in these tests (fake).
LIGHTSPEED_SECRET = "e2e-lightspeed-secret"
LIGHTSPEED_REFRESH = "e2e-lightspeed-refresh"


@dataclass
class WorkerPool:
    """A ``possync worker`` subprocess in its own process group (so a kill reaches its children)."""

    process: subprocess.Popen[bytes]
    log_path: Path
    #: Where the pool serves its processes' Prometheus metrics.
    metrics_url: str

    def kill(self) -> None:
        """SIGKILL the pool and every worker process it forked: no graceful requeue."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), then kill if needed."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class System:
    """One running possync system: services, settings, and ways to drive it like a user."""

    sandbox: Any
    settings: Settings
    env: dict[str, str]
    work_dir: Path
    pools: list[WorkerPool] = field(default_factory=list)

    def cli(self, *args: str, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run ``possync ARGS`` as a subprocess with this system's environment."""
        result = subprocess.run(
            [sys.executable, "-m", "producers.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"possync {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
            )
        return result

    def status(self) -> dict[str, Any]:
        """``possync status --json``."""
        result = self.cli("status", "--json", check=True)
        status: dict[str, Any] = json.loads(result.stdout)
        return status

    def start_worker(
        self, *, processes: int = 1, threads: int = 4, queues: tuple[str, ...] = ("square",), **env: str
    ) -> WorkerPool:
        """Start ``possync worker --queues QUEUES``; extra keyword arguments become env variables."""
        log_path = self.work_dir / f"worker-{len(self.pools)}.log"
        port = free_port()
        env = {"POSSYNC_WORKER_METRICS_PORT": str(port), **env}
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "producers.cli",
                "worker",
                "--queues",
                *queues,
                "--processes",
                str(processes),
                "--threads",
                str(threads),
            ],
            env={**self.env, **env},
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        pool = WorkerPool(process=process, log_path=log_path, metrics_url=f"http://127.0.0.1:{port}/metrics")
        self.pools.append(pool)
        return pool

    def start_command(self, label: str, *args: str, **env: str) -> WorkerPool:
        """Start a long-running ``possync ARGS`` (``scheduler``, ``webhooks``); stopped with the pools."""
        log_path = self.work_dir / f"{label}-{len(self.pools)}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "producers.cli", *args],
            env={**self.env, **env},
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        service = WorkerPool(process=process, log_path=log_path, metrics_url="")
        self.pools.append(service)
        return service

    def logs(self) -> str:
        """Every worker pool's log so far."""
        return "\n".join(pool.log() for pool in self.pools)


@pytest.fixture
def make_system(
    redis_url: str, bigquery_emulator: Any, dataset: str, tmp_path: Path
) -> Iterator[Callable[..., System]]:
    """Factory: ``make_system(payments=20_000, **sandbox_options)`` starts a Square sandbox and wires
    it up; ``make_system(source="lightspeed", sales=..., **options)`` a Lightspeed one."""
    systems: list[System] = []
    sandboxes: list[Any] = []

    def make(
        *,
        token: str = TOKEN,
        worker_token: str | None = None,
        source: str = "square",
        **sandbox_options: Any,
    ) -> System:
        values: dict[str, str] = {}
        if source == "lightspeed":
            sandbox = start_lightspeed_sandbox(
                client_secret=LIGHTSPEED_SECRET, refresh_token=LIGHTSPEED_REFRESH, **sandbox_options
            )
            values = {
                "lightspeed_base_url": sandbox.base_url,
                "lightspeed_token_url": f"{sandbox.base_url}/auth/oauth/token",
                "lightspeed_account_id": "123456",
                "lightspeed_client_id": "sandbox-client",
                "lightspeed_client_secret": LIGHTSPEED_SECRET,
                "lightspeed_refresh_token": LIGHTSPEED_REFRESH,
                "lightspeed_token_file": str(tmp_path / "lightspeed-refresh-token"),
            }
        else:
            sandbox = start_square_sandbox(token=token, **sandbox_options)
            values = {"square_base_url": sandbox.base_url, "square_access_token": worker_token or token}
        sandboxes.append(sandbox)
        values |= {
            "redis_url": redis_url,
            "bigquery_project": bigquery_emulator.project,
            "bigquery_dataset": dataset,
            "bigquery_endpoint": bigquery_emulator.endpoint,
            "min_backoff_seconds": "0.2",
            "max_backoff_seconds": "5",
            "bigquery_timeout_seconds": "120",
        }
        env = {key: value for key, value in os.environ.items() if not key.upper().startswith(ENV_PREFIX)}
        env.update({ENV_PREFIX + key.upper(): value for key, value in values.items()})
        system = System(
            sandbox=sandbox,
            settings=Settings.model_validate(values),
            env=env,
            work_dir=tmp_path,
        )
        systems.append(system)
        return system

    yield make
    for system in systems:
        for pool in system.pools:
            pool.stop()
    for sandbox in sandboxes:
        sandbox.stop()
