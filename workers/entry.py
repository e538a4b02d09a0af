"""What each worker process runs first: ``dramatiq workers.entry:setup`` (started by ``possync worker``).

Settings are loaded from the environment here, once per process, and passed down.
"""

from __future__ import annotations

import os

import dramatiq

from schemas.settings import load_settings
from workers.actors import register_actors
from workers.broker import build_broker
from workers.logs import configure_logging

__all__ = ["setup"]


def setup() -> None:
    """Configure logging, build the broker, make it Dramatiq's global broker and declare the actors."""
    settings = load_settings()
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    broker = build_broker(settings)
    if os.environ.get("dramatiq_prom_db"):  # noqa: SIM112 (Dramatiq's spelling)
        # Set up by ``possync worker`` (workers/metrics_env.py): serve every process's metrics and
        # the pipeline's state from one endpoint.
        from workers.metrics_server import PoolPrometheus

        broker.add_middleware(PoolPrometheus())
    dramatiq.set_broker(broker)
    register_actors(broker, settings)
