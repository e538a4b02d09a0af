"""Run the local BigQuery emulator (local-bigquery 0.4.0) as a process, installing it on first use.

Installing (a Python 3.13 environment with offline DuckDB extensions, built once and cached) is
``sandbox/emulator_install.py``'s job; its public names are re-exported here.

The process dies with its parent (``PR_SET_PDEATHSIG`` on Linux, plus an ``atexit`` stop), logs to a
file whose tail is quoted if start-up fails, and keeps its data in a directory that survives
:meth:`BigQueryEmulator.restart`.
"""

from __future__ import annotations

import atexit
import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

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
    log_tail,
)

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
#: How long a graceful stop may take before SIGKILL, seconds.
STOP_TIMEOUT_SECONDS = 10.0
#: ``prctl`` option asking for a signal when the parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: a SIGKILLed test runner must not leave emulators behind.
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class BigQueryEmulator:
    """A local-bigquery process on 127.0.0.1; use :meth:`start` (also a context manager).

    Attributes:
        project: the project id it serves.
        port: the REST port (kept across :meth:`restart`); ``grpc_port`` likewise.
        endpoint: ``http://127.0.0.1:PORT``, for ``ClientOptions(api_endpoint=...)``.
        pid: the running process's id.
        data_dir: where the emulator keeps its tables (survives :meth:`restart`).
        log_path: the emulator's log file.
    """

    def __init__(
        self, *, project: str, port: int, grpc_port: int, data_dir: Path, owns_data_dir: bool, cache_dir: Path
    ) -> None:
        self.project = project
        self.port = port
        self.grpc_port = grpc_port
        self.data_dir = data_dir
        self.log_path = data_dir.with_name(data_dir.name + ".log")
        self.cache_dir = cache_dir
        self._owns_data_dir = owns_data_dir
        self._process: subprocess.Popen[bytes] | None = None
        atexit.register(self.stop)

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
            port=port or _free_port(),
            grpc_port=_free_port(),
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

    @property
    def pid(self) -> int:
        """The running emulator's process id.

        Raises:
            EmulatorError: if it is not running.
        """
        if self._process is None:
            raise EmulatorError("the BigQuery emulator is not running")
        return self._process.pid

    def _launch(self) -> None:
        command = [
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
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=emulator_env(self.cache_dir / "home"),
                # Own session: a Ctrl-C in the terminal reaches the parent, which stops us in order.
                start_new_session=True,
                # Only calls prctl: safe between fork and exec even with threads running.
                preexec_fn=_die_with_parent,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        url = f"{self.endpoint}/bigquery/v2/projects/{self.project}/datasets"
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        last = "no answer yet"
        with httpx.Client(timeout=2.0) as http:
            while True:
                process = self._process
                if process is None or process.poll() is not None:
                    code = None if process is None else process.returncode
                    self._process = None
                    raise EmulatorError(
                        f"the BigQuery emulator exited with status {code}; log {self.log_path}:\n"
                        f"{log_tail(self.log_path)}"
                    )
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

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), SIGKILL after a deadline. Data stays in ``data_dir``."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL the emulator (for fault tests)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.kill()
        process.wait()

    def restart(self) -> BigQueryEmulator:
        """Stop if running, then start again on the same ports with the same data directory."""
        self.stop()
        self._launch()
        return self

    def close(self) -> None:
        """Stop, and remove the data directory if it was a temporary one made by :meth:`start`."""
        self.stop()
        atexit.unregister(self.stop)
        if self._owns_data_dir:
            shutil.rmtree(self.data_dir.parent, ignore_errors=True)

    def __enter__(self) -> BigQueryEmulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
