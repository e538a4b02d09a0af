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
    "StoredDeadLetter",
    "dead_letter_present",
    "dead_letters",
    "live_consumers",
    "oldest_dead_letter_age_seconds",
    "queue_depth",
    "remove_dead_letters",
    "remove_orphan_dead_letter_errors",
    "request_progress",
    "stored_dead_letters",
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


@dataclass(frozen=True)
class StoredDeadLetter:
    """A dead letter as Redis holds it, for the tools that replay or remove it.

    Dramatiq files each dead letter under its *Redis* entry id (a fresh uuid per enqueue, in the
    message's ``redis_message_id`` option), not under the message id people see; ``redis_id`` is
    that entry id, which removing the letter needs.
    """

    redis_id: str
    queue: str
    message: Message[Any]
    #: When Dramatiq dead-lettered it (its score in ``<q>.XQ``), Unix seconds.
    dead_since: float
    #: possync's record of the last error (``possync:dead:<q>``), ``{}`` if none was recorded.
    error: dict[str, Any]

    @property
    def message_id(self) -> str:
        """The message id (Dramatiq's), as logs, ``possync status`` and ``--wait`` show it."""
        return self.message.message_id


def stored_dead_letters(client: redis.Redis, queue: str) -> list[StoredDeadLetter]:
    """Every dead letter of ``queue`` with its Redis entry id and recorded error, oldest first."""
    entries: list[Any] = list(client.zrange(_key(f"{queue}.XQ"), 0, -1, withscores=True))
    if not entries:
        return []
    bodies = client.hmget(_key(f"{queue}.XQ.msgs"), [entry[0] for entry in entries])
    errors = {_text(k): v for k, v in client.hgetall(DEAD_KEY.format(queue=queue)).items()}
    letters = []
    for (redis_id, score), body in zip(entries, bodies, strict=True):
        if body is None:  # expired between the two reads
            continue
        message = Message.decode(body if isinstance(body, bytes) else body.encode())
        raw_error = errors.get(message.message_id)
        error = json.loads(raw_error) if raw_error else {}
        letters.append(
            StoredDeadLetter(
                redis_id=_text(redis_id),
                queue=queue,
                message=message,
                dead_since=float(score) / 1000,
                error=error if isinstance(error, dict) else {},
            )
        )
    return letters


def dead_letter_present(client: redis.Redis, letter: StoredDeadLetter) -> bool:
    """True while ``letter`` is still among its queue's dead letters (not replayed, purged or expired)."""
    return client.zscore(_key(f"{letter.queue}.XQ"), letter.redis_id) is not None


def remove_dead_letters(client: redis.Redis, letters: Iterable[StoredDeadLetter]) -> int:
    """Remove dead letters and their recorded errors, in one transaction per queue.

    A letter already gone (replayed, purged or expired meanwhile) is skipped.

    Returns:
        How many of ``letters`` were still there and are now removed.
    """
    by_queue: dict[str, list[StoredDeadLetter]] = {}
    for letter in letters:
        by_queue.setdefault(letter.queue, []).append(letter)
    removed = 0
    for queue, group in by_queue.items():
        pipe = client.pipeline(transaction=True)
        pipe.zrem(_key(f"{queue}.XQ"), *[letter.redis_id for letter in group])
        pipe.hdel(_key(f"{queue}.XQ.msgs"), *[letter.redis_id for letter in group])
        pipe.hdel(DEAD_KEY.format(queue=queue), *[letter.message_id for letter in group])
        removed += int(pipe.execute()[0])
    return removed


def remove_orphan_dead_letter_errors(client: redis.Redis, queue: str, *, failed_before: float) -> int:
    """Drop recorded errors whose dead letter is gone (Dramatiq expired it) and that are older than
    ``failed_before`` (Unix seconds).

    The error is recorded a moment *before* Dramatiq moves the message to the dead letters, so only
    old records are ever taken for orphans; a record without a time is kept.

    Returns:
        How many records were removed.
    """
    key = DEAD_KEY.format(queue=queue)
    present = {letter.message_id for letter in stored_dead_letters(client, queue)}
    orphans = []
    for message_id, raw in client.hgetall(key).items():
        if _text(message_id) in present:
            continue
        try:
            failed_at = float(json.loads(raw).get("failed_at"))
        except (ValueError, TypeError, AttributeError):
            continue
        if failed_at < failed_before:
            orphans.append(_text(message_id))
    return int(client.hdel(key, *orphans)) if orphans else 0
