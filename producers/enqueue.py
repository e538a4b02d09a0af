"""The one way producers put messages on queues: by route (queue + actor name), with a validated payload.

Producers never import actors: a message names its actor, and whichever worker pool consumes the
route's queue runs it. Every message belongs to a request, whose id the caller can follow.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, TypeVar

import dramatiq
import structlog

from schemas.messages import Payload, Route
from workers.broker import send, send_many

__all__ = ["enqueue", "enqueue_many", "new_request_id"]

P = TypeVar("P", bound=Payload)

log = structlog.get_logger(__name__)


def new_request_id(kind: str) -> str:
    """A fresh request id such as ``backfill-3f2a9c0e1b7d``."""
    return f"{kind}-{uuid.uuid4().hex[:12]}"


def enqueue(broker: dramatiq.Broker, route: Route[P], payload: P, *, delay_ms: int | None = None) -> Any:
    """Send ``payload`` on ``route`` and log it; returns the enqueued ``dramatiq.Message``."""
    message = send(broker, route, payload, delay_ms=delay_ms)
    log.info(
        "message_enqueued",
        queue=route.queue,
        actor=route.actor,
        message_id=message.message_id,
        request_id=payload.request_id,
    )
    return message


def enqueue_many(broker: dramatiq.Broker, items: Sequence[tuple[Route[Any], Payload]]) -> list[Any]:
    """Send several payloads in one Redis round trip (on possync's broker) and log each one sent.

    Returns:
        Per item, in order: the enqueued ``dramatiq.Message``, or the error that kept it off its queue.

    Raises:
        redis.RedisError: if Redis could not be reached; some messages may have been enqueued.
    """
    results = send_many(broker, items)
    for (route, payload), result in zip(items, results, strict=True):
        if not isinstance(result, Exception):
            log.info(
                "message_enqueued",
                queue=route.queue,
                actor=route.actor,
                message_id=result.message_id,
                request_id=payload.request_id,
            )
    return results
