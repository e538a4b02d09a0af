"""What each worker process runs first: ``dramatiq workers.entry:setup`` (started by ``possync worker``).

Settings are loaded from the environment here, once per process, and passed down.
"""

from __future__ import annotations

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
    dramatiq.set_broker(broker)
    register_actors(broker, settings)
