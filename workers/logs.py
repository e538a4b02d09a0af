"""Logging: structlog configured once per process, JSON lines on stdout, stdlib logs routed through it.

The processor chain is merge_contextvars -> level -> UTC ISO timestamp -> structured tracebacks ->
renderer (JSON, or the console renderer when ``POSSYNC_LOG_FORMAT=console``). Dramatiq's and httpx's
stdlib loggers go through the same chain via ``ProcessorFormatter``. A last processor scrubs values
that look like bearer tokens, as a second line of defence: secrets are SecretStr and never logged.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog
from structlog.tracebacks import ExceptionDictTransformer

__all__ = ["configure_logging", "redact_secrets"]

_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")


def redact_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """Replace anything shaped like ``Bearer <token>`` in string values."""
    for key, value in event_dict.items():
        if isinstance(value, str) and "earer" in value:
            event_dict[key] = _BEARER.sub(r"\1[redacted]", value)
    return event_dict


def configure_logging(
    *, level: str = "INFO", fmt: Literal["json", "console"] = "json", stream: Any = None
) -> None:
    """Configure structlog and the stdlib root logger for this process.

    Args:
        level: minimum level name.
        fmt: ``json`` for one JSON object per line, ``console`` for people at a terminal.
        stream: where to write (default stdout).
    """
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # Tracebacks without frame locals: a local variable may hold a secret.
        structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
        if fmt == "json"
        else structlog.processors.StackInfoRenderer(),
        redact_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request at INFO with the full URL; keep it at WARNING.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    logging.getLogger("httpcore").setLevel(logging.WARNING)
