"""Where a worker pool's processes write their Prometheus metrics, set before any of them starts.

Kept apart from :mod:`workers.metrics` on purpose: importing prometheus-client fixes, for that
process and every process it forks, whether metric values live in memory or in the multiprocess
directory, so the parent must set the directory up without importing it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["prepare_worker_metrics"]


def prepare_worker_metrics(directory: Path | None, *, host: str, port: int) -> Path:
    """Point this process and the worker processes it starts at one metrics directory and endpoint.

    Must run in ``possync worker`` before Dramatiq starts its processes (they inherit the
    environment) and before anything imports prometheus-client's value classes there.

    Args:
        directory: where the processes write their metrics; emptied first (stale files of dead
            processes would be summed in). ``None``: a new temporary directory, removed when this
            process exits (the worker processes it forks leave through ``os._exit`` and do not
            remove it), so restarts of a pool leave nothing behind.
        host: interface of the metrics endpoint.
        port: its port.

    Returns:
        The directory used.
    """
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="possync-metrics-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
    else:
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    # Read by dramatiq.middleware.prometheus when it is imported (in the worker processes).
    # Dramatiq spells these in lower case.
    os.environ["dramatiq_prom_db"] = str(directory)  # noqa: SIM112
    os.environ["dramatiq_prom_host"] = host  # noqa: SIM112
    os.environ["dramatiq_prom_port"] = str(port)  # noqa: SIM112
    return directory
