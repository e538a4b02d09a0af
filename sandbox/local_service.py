"""Child service processes on loopback (Redis, the BigQuery emulator): ports, lifecycle, no orphans.

A service is started in its own session (a Ctrl-C in the terminal reaches the parent, which stops
it in order), logs to a file whose tail is quoted when start-up fails, and dies with its parent:
on Linux it asks the kernel for SIGKILL when the parent goes (``PR_SET_PDEATHSIG``), and an
``atexit`` hook stops it on a normal exit, so a crashed test session leaves nothing behind. Start
services from a long-lived thread (the main thread in practice): the kernel's signal fires when the
*thread* that started the child exits.
"""

from __future__ import annotations

import atexit
import ctypes
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = ["STOP_TIMEOUT_SECONDS", "LocalService", "die_with_parent", "free_port", "log_tail", "serve_app"]

#: How long a graceful stop may take before SIGKILL, seconds.
STOP_TIMEOUT_SECONDS = 10.0
#: ``prctl`` option asking for a signal when the parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def serve_app(app: Any, *, host: str, port: int) -> None:
    """Serve a sandbox's ASGI app on uvicorn until interrupted: quiet, no access log, quick to stop."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=1)


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; a no-op elsewhere).

    Meant as ``preexec_fn``: it only calls ``prctl``, which is safe between fork and exec even while
    the parent runs threads.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def log_tail(path: Path, *, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class LocalService:
    """Lifecycle shared by local service processes: stop, kill, restart, close, ``with``.

    A subclass sets its own attributes, then calls :meth:`_launch`; it implements :meth:`_command`
    (and :meth:`_env` if it needs one) and :meth:`_wait_ready`, which polls to a deadline.

    Attributes:
        log_path: the process's log file (appended to across restarts).
    """

    #: The error a subclass raises when it is not running or does not come up.
    error: type[Exception] = RuntimeError
    #: What the error messages call the service.
    label = "service"

    def __init__(self, *, log_path: Path, scratch_dir: Path | None) -> None:
        self.log_path = log_path
        # A temporary directory this object made, removed by close(); None for the caller's own.
        self._scratch_dir = scratch_dir
        self._process: subprocess.Popen[bytes] | None = None
        atexit.register(self.stop)

    def _command(self) -> Sequence[str]:
        raise NotImplementedError

    def _env(self) -> Mapping[str, str] | None:
        return None

    def _wait_ready(self) -> None:
        raise NotImplementedError

    def _launch(self) -> None:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                list(self._command()),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=None if self._env() is None else dict(self._env() or {}),
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        self._wait_ready()

    def _check_alive(self) -> None:
        """Raise :attr:`error` with the log's tail if the process has exited."""
        process = self._process
        if process is None or process.poll() is not None:
            code = None if process is None else process.returncode
            self._process = None
            raise self.error(
                f"{self.label} exited with status {code}; log {self.log_path}:\n{log_tail(self.log_path)}"
            )

    @property
    def pid(self) -> int:
        """The running process's id.

        Raises:
            Exception: :attr:`error`, if it is not running.
        """
        if self._process is None:
            raise self.error(f"{self.label} is not running")
        return self._process.pid

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), SIGKILL after a deadline. Data stays where it is."""
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
        """SIGKILL the process: no shutdown, no final flush (for fault tests)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.kill()
        process.wait()

    def restart(self) -> Self:
        """Stop if running, then start again on the same ports with the same data."""
        self.stop()
        self._launch()
        return self

    def close(self) -> None:
        """Stop, and remove the temporary directory this object made, if any."""
        self.stop()
        atexit.unregister(self.stop)
        if self._scratch_dir is not None:
            shutil.rmtree(self._scratch_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
