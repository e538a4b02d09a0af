"""Run the local BigQuery emulator (local-bigquery 0.4.0) as a process, installing it on first use.

Installing (a Python 3.13 environment with offline DuckDB extensions, built once and cached) is
``sandbox/emulator_install.py``'s job; its public names are re-exported here.

The process dies with its parent (``PR_SET_PDEATHSIG`` on Linux, plus an ``atexit`` stop), logs to a
file whose tail is quoted if start-up fails, and keeps its data in a directory that survives
:meth:`BigQueryEmulator.restart`.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from sandbox.emulator_install import (
    DUCKDB_EXTENSIONS,
    DUCKDB_VERSION,
    LOCAL_BIGQUERY_VERSION,
    EmulatorError,
    default_cache_dir,
    emulator_env,
    ensure_emulator_installed,
    find_python313,
)
from sandbox.local_service import LocalService, free_port, log_tail

__all__ = [
    "DUCKDB_EXTENSIONS",
    "DUCKDB_VERSION",
    "LOCAL_BIGQUERY_VERSION",
    "BigQueryEmulator",
    "EmulatorError",
    "default_cache_dir",
    "ensure_emulator_installed",
    "find_python313",
]

#: How long the emulator may take to answer its REST API after start, seconds (1-2 s is usual).
STARTUP_TIMEOUT_SECONDS = 60.0


class BigQueryEmulator(LocalService):
    """A local-bigquery process on 127.0.0.1; use :meth:`start` (also a context manager).

    Attributes:
        project: the project id it serves.
        port: the REST port (kept across :meth:`restart`); ``grpc_port`` likewise.
        endpoint: ``http://127.0.0.1:PORT``, for ``ClientOptions(api_endpoint=...)``.
        pid: the running process's id.
        data_dir: where the emulator keeps its tables (survives :meth:`restart`).
        log_path: the emulator's log file.
    """

    error = EmulatorError
    label = "the BigQuery emulator"

    def __init__(
        self, *, project: str, port: int, grpc_port: int, data_dir: Path, owns_data_dir: bool, cache_dir: Path
    ) -> None:
        super().__init__(
            log_path=data_dir.with_name(data_dir.name + ".log"),
            # start() makes <tmp>/data for a temporary directory: remove the whole <tmp>.
            scratch_dir=data_dir.parent if owns_data_dir else None,
        )
        self.project = project
        self.port = port
        self.grpc_port = grpc_port
        self.data_dir = data_dir
        self.cache_dir = cache_dir

    @classmethod
    def start(
        cls,
        project: str,
        *,
        port: int | None = None,
        data_dir: Path | None = None,
        python: str | None = None,
        cache_dir: Path | None = None,
    ) -> BigQueryEmulator:
        """Install if needed, start the emulator and wait until its REST API answers.

        Args:
            project: project id to serve.
            port: REST port; a free one when ``None``.
            data_dir: where tables live; a fresh temporary directory (removed on exit) when ``None``.
            python: Python 3.13 interpreter path (``POSSYNC_EMULATOR_PYTHON``, read by the caller).
            cache_dir: the environment's cache directory (see :func:`ensure_emulator_installed`).

        Raises:
            EmulatorError: if it cannot be installed, or does not answer within
                :data:`STARTUP_TIMEOUT_SECONDS` (with the log's tail).
        """
        cache = ensure_emulator_installed(python, cache_dir=cache_dir)
        owns = data_dir is None
        if data_dir is None:
            data_dir = Path(tempfile.mkdtemp(prefix="possync-bigquery-")) / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        emulator = cls(
            project=project,
            port=port or free_port(),
            grpc_port=free_port(),
            data_dir=data_dir,
            owns_data_dir=owns,
            cache_dir=cache,
        )
        emulator._launch()
        return emulator

    @property
    def endpoint(self) -> str:
        """The REST endpoint root."""
        return f"http://127.0.0.1:{self.port}"

    def _command(self) -> Sequence[str]:
        return [
            str(self.cache_dir / "venv" / "bin" / "local-bigquery"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--grpc-port",
            str(self.grpc_port),
            "--project",
            self.project,
            "--data-dir",
            str(self.data_dir),
        ]

    def _env(self) -> Mapping[str, str]:
        return emulator_env(self.cache_dir / "home")

    def _wait_ready(self) -> None:
        url = f"{self.endpoint}/bigquery/v2/projects/{self.project}/datasets"
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        last = "no answer yet"
        with httpx.Client(timeout=2.0) as http:
            while True:
                self._check_alive()
                try:
                    response = http.get(url)
                    if response.status_code == 200:
                        return
                    last = f"HTTP {response.status_code}: {response.text[:200]}"
                except httpx.TransportError as exc:
                    last = type(exc).__name__
                if time.monotonic() >= deadline:
                    self.kill()
                    raise EmulatorError(
                        f"the BigQuery emulator did not answer GET {url} within "
                        f"{STARTUP_TIMEOUT_SECONDS:g} s (last: {last}); log {self.log_path}:\n"
                        f"{log_tail(self.log_path)}"
                    )
                time.sleep(0.1)
