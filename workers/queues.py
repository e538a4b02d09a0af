"""Reading the queues as Redis holds them: depths, in-flight messages, dead letters, request progress.

Dramatiq's Redis layout (namespace ``dramatiq``): ``<q>`` is the list of ready message ids,
``<q>.msgs`` the hash of every unacknowledged message, ``<q>.DQ``/``<q>.DQ.msgs`` the delayed ones,
``__acks__.<worker>.<q>`` the set of ids a worker has taken and not yet acknowledged, ``<q>.XQ``
(a sorted set scored by death time) and ``<q>.XQ.msgs`` the dead letters. A killed worker's ack
set stays until a live worker's maintenance hands its messages back, so its messages count as
in flight until then, exactly as ``possync status`` promises.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import redis
from dramatiq.message import Message

from workers.broker import CONSUMERS_KEY, DEAD_KEY, REQUEST_KEY

__all__ = [
    "DeadLetter",
    "QueueDepth",
    "RequestProgress",
    "dead_letters",
    "live_consumers",
    "oldest_dead_letter_age_seconds",
    "queue_depth",
    "request_progress",
]

DRAMATIQ_NAMESPACE = "dramatiq"


@dataclass(frozen=True)
class QueueDepth:
    """How many messages a queue holds, by state."""

    ready: int
    delayed: int
    in_flight: int
    dead: int

    def as_dict(self) -> dict[str, int]:
        """The JSON shape ``possync status`` prints."""
        return asdict(self)


def _key(name: str) -> str:
    return f"{DRAMATIQ_NAMESPACE}:{name}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def queue_depth(client: redis.Redis, queue: str) -> QueueDepth:
    """Count a queue's messages by state.

    ``in_flight`` counts messages taken from the queue (or its delay queue, once due) but not yet
    acknowledged, by every worker, live or killed, until the broker hands a killed worker's back.
    ``delayed`` counts messages waiting for their retry time, whether or not a worker prefetched them.
    """
    ready = int(client.llen(_key(queue)))
    delayed = int(client.hlen(_key(f"{queue}.DQ.msgs")))
    in_flight = 0
    for ack_key in client.scan_iter(match=_key(f"__acks__.*.{queue}"), count=500):
        in_flight += int(client.scard(ack_key))
    dead = int(client.zcard(_key(f"{queue}.XQ")))
    return QueueDepth(ready=ready, delayed=delayed, in_flight=in_flight, dead=dead)


@dataclass(frozen=True)
class DeadLetter:
    """A dead-lettered message and why it died."""

    message_id: str
    queue: str
    actor: str
    dead_since: float
    error_type: str | None
    error: str | None
    retries: int | None
    request_id: str | None
    payload: dict[str, Any]

    @property
    def age_seconds(self) -> float:
        """Seconds since the message was dead-lettered."""
        return max(0.0, time.time() - self.dead_since)


def dead_letters(client: redis.Redis, queues: Iterable[str]) -> list[DeadLetter]:
    """Every dead letter of ``queues``, oldest first, with its recorded last error."""
    letters: list[DeadLetter] = []
    for queue in queues:
        entries: list[Any] = list(client.zrange(_key(f"{queue}.XQ"), 0, -1, withscores=True))
        if not entries:
            continue
        redis_ids = [entry[0] for entry in entries]
        bodies = client.hmget(_key(f"{queue}.XQ.msgs"), redis_ids)
        errors = {_text(k): v for k, v in client.hgetall(DEAD_KEY.format(queue=queue)).items()}
        for (_redis_id, score), body in zip(entries, bodies, strict=True):
            if body is None:
                continue
            message = Message.decode(body if isinstance(body, bytes) else body.encode())
            raw_error = errors.get(message.message_id)
            error = json.loads(raw_error) if raw_error else {}
            kwargs = message.kwargs if isinstance(message.kwargs, dict) else {}
            payload = kwargs.get("payload")
            letters.append(
                DeadLetter(
                    message_id=message.message_id,
                    queue=queue,
                    actor=message.actor_name,
                    dead_since=float(score) / 1000,
                    error_type=error.get("error_type"),
                    error=error.get("error"),
                    retries=error.get("retries"),
                    request_id=error.get("request_id"),
                    payload=payload if isinstance(payload, dict) else {},
                )
            )
    letters.sort(key=lambda letter: letter.dead_since)
    return letters


@dataclass(frozen=True)
class RequestProgress:
    """The messages one request caused, by state."""

    request_id: str
    pending: int
    done: int
    dead: int
    dead_message_ids: tuple[str, ...]

    @property
    def total(self) -> int:
        """Every message seen for the request."""
        return self.pending + self.done + self.dead

    @property
    def finished(self) -> bool:
        """True once no message of the request is queued, delayed or in flight."""
        return self.total > 0 and self.pending == 0


def request_progress(client: redis.Redis, request_id: str) -> RequestProgress:
    """Where the messages of one request stand."""
    states = client.hgetall(REQUEST_KEY.format(request_id=request_id))
    counts = {"pending": 0, "done": 0, "dead": 0}
    dead_ids = []
    for message_id, state in states.items():
        name = _text(state)
        counts[name] = counts.get(name, 0) + 1
        if name == "dead":
            dead_ids.append(_text(message_id))
    return RequestProgress(
        request_id=request_id,
        pending=counts["pending"],
        done=counts["done"],
        dead=counts["dead"],
        dead_message_ids=tuple(sorted(dead_ids)),
    )


def oldest_dead_letter_age_seconds(client: redis.Redis, queue: str) -> float:
    """Seconds since the queue's oldest dead letter died, 0 when there is none."""
    oldest: list[Any] = list(client.zrange(_key(f"{queue}.XQ"), 0, 0, withscores=True))
    if not oldest:
        return 0.0
    return max(0.0, time.time() - float(oldest[0][1]) / 1000)


def live_consumers(client: redis.Redis, queue: str, *, heartbeat_timeout_seconds: float) -> int:
    """Worker processes consuming ``queue`` whose last heartbeat is within the timeout.

    Each worker process beats into a sorted set per queue (:class:`workers.broker.Maintenance`);
    members older than the timeout are dead (killed, or their machine gone) and are trimmed here.
    """
    key = CONSUMERS_KEY.format(queue=queue)
    cutoff = time.time() - heartbeat_timeout_seconds
    client.zremrangebyscore(key, "-inf", f"({cutoff}")
    return int(client.zcount(key, cutoff, "+inf"))
