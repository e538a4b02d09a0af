"""Wait for a freshly started HTTP server process to answer 200, to a deadline, failing if it dies first.

``possync demo`` and the benchmarks start ``possync webhooks`` (and the webhook benchmark its bare
uvicorn app) as subprocesses, then poll a health path with :func:`wait_until_serving` before sending
anything: a process that exits, or does not answer in time, fails with its name and log.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx

__all__ = ["wait_until_serving"]


def wait_until_serving(
    url: str,
    process: subprocess.Popen[bytes],
    *,
    name: str,
    timeout_seconds: float,
    log_path: Path | None = None,
    request_timeout_seconds: float = 2.0,
    interval_seconds: float = 0.1,
) -> None:
    """Poll ``url`` until it answers 200.

    Args:
        url: the server's health or readiness URL, e.g. ``http://127.0.0.1:PORT/readyz``.
        process: the server's process, checked before each attempt.
        name: what the error messages call the server.
        timeout_seconds: deadline for the first 200, seconds.
        log_path: the server's log, named in the error messages when given.
        request_timeout_seconds: deadline of each attempt, seconds.
        interval_seconds: pause between attempts, seconds.

    Raises:
        RuntimeError: the process exited, or the deadline passed without a 200.
    """
    log = f"; log: {log_path}" if log_path is not None else ""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with status {process.returncode}{log}")
        try:
            if httpx.get(url, timeout=request_timeout_seconds).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(interval_seconds)  # polling interval while the server starts, not synchronisation
    raise RuntimeError(f"{name} did not answer 200 at {url} within {timeout_seconds:g} s{log}")
