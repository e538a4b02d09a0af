"""A worker pool that made its own metrics directory removes it when it stops."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from tests.e2e.conftest import System
from tests.polling import wait_until


def _made(scratch: Path) -> list[Path]:
    return [path for path in scratch.iterdir() if path.name.startswith("possync-metrics-")]


def _serving(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_pool_removes_the_metrics_directory_it_made_when_it_stops(
    make_system: Callable[..., System], tmp_path: Path
) -> None:
    # Given a pool with metrics on and no POSSYNC_WORKER_METRICS_DIR, its temporary files in scratch
    system = make_system(payments=10)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    pool = system.start_worker(processes=2, TMPDIR=str(scratch))
    wait_until(lambda: _serving(pool.metrics_url), timeout_seconds=60, message="no /metrics from the pool")
    [directory] = _made(scratch)
    assert any(directory.iterdir()), "the pool's processes wrote no metrics files"

    # When the pool's main process is stopped as `docker stop` stops it (SIGTERM to it alone; a
    # signal to the whole group reaches the workers twice, and Dramatiq then kills them)
    pool.process.terminate()
    pool.process.wait(timeout=60)

    # Then it exited cleanly and its metrics directory is gone
    assert pool.process.returncode == 0, pool.log()
    assert _made(scratch) == []
