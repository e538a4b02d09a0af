"""Dead-letter tools behind ``possync dlq``: list, show, replay and purge dead-lettered messages.

Reads and changes Redis only (Dramatiq's dead-letter queues and possync's recorded errors, see
:mod:`workers.queues`), so it works while a source or BigQuery is down.

A replay is a *new* message: same queue, actor and payload, a fresh message id, no retries spent
(the full ``POSSYNC_MAX_RETRIES`` again) and the replay's own request id in its payload, so that
``--wait`` follows exactly the replayed messages and whatever they enqueue. It is enqueued *before*
the dead letter and its recorded error are removed: a crash in between leaves the dead letter in
place, and replaying it again only runs the work twice, which every actor tolerates (each write is
an idempotent MERGE on the record's key). A fresh message id also keeps a replay that dies again at
once from being confused with the letter it replaces.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dramatiq
import redis
import structlog
from dramatiq.common import q_name
from pydantic import ValidationError

from schemas.messages import ROUTES
from workers.queues import (
    StoredDeadLetter,
    dead_letter_present,
    remove_dead_letters,
    remove_orphan_dead_letter_errors,
    stored_dead_letters,
)

__all__ = [
    "CLAIM_KEY",
    "REPLAY_OF_OPTION",
    "DeadLetterNotFound",
    "NotReplayed",
    "ReplayResult",
    "Replayed",
    "Unreplayable",
    "find_dead_letters",
    "format_age",
    "format_detail",
    "format_table",
    "letter_view",
    "letters_phrase",
    "list_dead_letters",
    "parse_duration",
    "purge_dead_letters",
    "replay_dead_letters",
    "replay_message",
]

#: Message option naming the dead letter a replayed message replaces (shown by ``dlq show``).
REPLAY_OF_OPTION = "possync_replay_of"
#: Options that describe one delivery, not the work: a replay starts without them.
_DELIVERY_OPTIONS = frozenset({"redis_message_id", "eta", "retries", "traceback", "requeue_timestamp"})
#: Claimed while one process replays a letter, so two concurrent replays do not both enqueue it.
CLAIM_KEY = "possync:dlq:replaying:{queue}:{redis_id}"
#: How long a claim outlives a crashed replayer, milliseconds.
CLAIM_TTL_MS = 60_000
#: Recorded errors whose dead letter is gone are dropped by a purge only when at least this old,
#: seconds: a record is written a moment before its message reaches the dead letters.
ORPHAN_MIN_AGE_SECONDS = 3600.0
#: The least room a table gives the last error, however narrow the terminal, characters.
_MIN_ERROR_WIDTH = 30

_DURATION_PART = re.compile(r"(\d+)([wdhms])")
_UNIT_SECONDS = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}

log = structlog.get_logger(__name__)


class DeadLetterNotFound(LookupError):
    """No dead letter has that id (or the prefix names several)."""


class Unreplayable(Exception):
    """The dead letter cannot be replayed as it is; the message says why."""


def parse_duration(text: str) -> float:
    """``7d``, ``12h``, ``30m``, ``45s``, ``2w`` or combinations (``1d12h``) as seconds.

    Raises:
        ValueError: for anything else, with a message that shows the accepted forms.
    """
    compact = text.strip().lower()
    parts = _DURATION_PART.findall(compact)
    if not parts or "".join(number + unit for number, unit in parts) != compact:
        raise ValueError(f"{text!r} is not a duration: use e.g. 7d, 12h, 30m, 45s, 2w or 1d12h")
    return float(sum(int(number) * _UNIT_SECONDS[unit] for number, unit in parts))


def format_age(seconds: float) -> str:
    """A duration for people, its two largest units: ``3d 4h``, ``12m 5s``, ``45s``."""
    remaining = max(0, int(seconds))
    parts: list[str] = []
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if remaining >= size or (unit == "s" and not parts):
            parts.append(f"{remaining // size}{unit}")
            remaining %= size
    return " ".join(parts[:2])


def letters_phrase(count: int) -> str:
    """``1 dead letter``, ``3 dead letters``."""
    return f"{count} dead letter" + ("" if count == 1 else "s")


def list_dead_letters(client: redis.Redis, queues: Iterable[str]) -> list[StoredDeadLetter]:
    """Every dead letter of ``queues``, oldest first."""
    letters = [letter for queue in queues for letter in stored_dead_letters(client, queue)]
    letters.sort(key=lambda letter: letter.dead_since)
    return letters


def find_dead_letters(
    client: redis.Redis, queues: Iterable[str], message_ids: Sequence[str]
) -> list[StoredDeadLetter]:
    """The dead letters with these message ids (or unique prefixes of them), in the order given.

    Raises:
        DeadLetterNotFound: for an id no dead letter has, or a prefix several share; names it.
    """
    letters = list_dead_letters(client, queues)
    found: list[StoredDeadLetter] = []
    for wanted in message_ids:
        exact = [letter for letter in letters if letter.message_id == wanted]
        matches = exact or [letter for letter in letters if letter.message_id.startswith(wanted)]
        if not matches:
            raise DeadLetterNotFound(
                f"no dead letter {wanted!r}: it was replayed, purged or expired, or is on another queue "
                "(`possync dlq list` shows them)"
            )
        if len({letter.message_id for letter in matches}) > 1:
            raise DeadLetterNotFound(f"{wanted!r} starts {len(matches)} dead letters' ids: give more of it")
        found.extend(letter for letter in matches if letter not in found)
    return found


def letter_view(letter: StoredDeadLetter, *, ttl_seconds: float, now: float | None = None) -> dict[str, Any]:
    """What ``dlq list --json`` and ``dlq show --json`` print for one dead letter.

    Args:
        letter: the dead letter.
        ttl_seconds: how long Dramatiq keeps dead letters (``POSSYNC_DEAD_LETTER_TTL_DAYS``), seconds.
        now: Unix seconds to measure the age to (default: now).
    """
    now = time.time() if now is None else now
    message = letter.message
    kwargs = message.kwargs if isinstance(message.kwargs, dict) else {}
    payload = kwargs.get("payload")
    request_id = letter.error.get("request_id")
    if request_id is None and isinstance(payload, dict):
        request_id = payload.get("request_id")
    return {
        "message_id": letter.message_id,
        "queue": letter.queue,
        "actor": message.actor_name,
        "request_id": request_id,
        "enqueued_at": _iso(message.message_timestamp / 1000),
        "dead_since": _iso(letter.dead_since),
        "age_seconds": round(max(0.0, now - letter.dead_since), 1),
        "expires_at": _iso(letter.dead_since + ttl_seconds),
        "retries": letter.error.get("retries"),
        "error_type": letter.error.get("error_type"),
        "error": letter.error.get("error"),
        "replay_of": message.options.get(REPLAY_OF_OPTION),
        "payload": payload if isinstance(payload, dict) else kwargs,
    }


def _iso(unix_seconds: float) -> str:
    return datetime.fromtimestamp(unix_seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def format_table(views: Sequence[dict[str, Any]], *, width: int | None = None) -> str:
    """``letter_view`` rows as an aligned table, the last error cut to the terminal's width."""
    width = width or shutil.get_terminal_size((160, 24)).columns
    header = ("ID", "QUEUE", "ACTOR", "AGE", "RETRIES", "LAST ERROR")
    rows = [
        (
            view["message_id"],
            view["queue"],
            view["actor"],
            format_age(view["age_seconds"]),
            "-" if view["retries"] is None else str(view["retries"]),
            _error_line(view),
        )
        for view in views
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(5)]
    error_width = max(_MIN_ERROR_WIDTH, width - sum(widths) - 2 * 5)
    lines = []
    for row in (header, *rows):
        error = row[5] if len(row[5]) <= error_width else row[5][: error_width - 1] + "…"
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].ljust(widths[2])]
        cells += [row[3].rjust(widths[3]), row[4].rjust(widths[4]), error]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _error_line(view: dict[str, Any]) -> str:
    if view["error_type"] is None and view["error"] is None:
        return "(no error recorded)"
    return " ".join(f"{view['error_type'] or 'Error'}: {view['error'] or ''}".split())


def format_detail(view: dict[str, Any], *, ttl_days: int) -> str:
    """One ``letter_view`` in full, for ``dlq show``."""
    lines = [
        f"message id   {view['message_id']}",
        f"queue        {view['queue']}",
        f"actor        {view['actor']}",
        f"request id   {view['request_id'] or '-'}",
        f"enqueued at  {view['enqueued_at']}",
        f"dead since   {view['dead_since']} ({format_age(view['age_seconds'])} ago)",
        f"expires at   {view['expires_at']} (POSSYNC_DEAD_LETTER_TTL_DAYS={ttl_days})",
        f"retries      {'-' if view['retries'] is None else view['retries']}",
    ]
    if view["replay_of"]:
        lines.append(f"replay of    {view['replay_of']}")
    lines.append(f"error type   {view['error_type'] or '-'}")
    lines.append("error")
    lines.extend(f"  {line}" for line in (view["error"] or "(no error recorded)").splitlines())
    lines.append("payload")
    lines.extend(f"  {line}" for line in json.dumps(view["payload"], indent=2, sort_keys=True).splitlines())
    return "\n".join(lines)


@dataclass(frozen=True)
class Replayed:
    """A dead letter put back on its queue as a new message."""

    message_id: str
    replayed_as: str
    queue: str
    actor: str


@dataclass(frozen=True)
class NotReplayed:
    """A dead letter left where it was, and why."""

    message_id: str
    queue: str
    actor: str
    reason: str


@dataclass(frozen=True)
class ReplayResult:
    """What one replay did; ``request_id`` is the one ``--wait`` follows."""

    request_id: str
    replayed: tuple[Replayed, ...]
    not_replayed: tuple[NotReplayed, ...]

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape ``dlq replay --json`` prints."""
        return {
            "request_id": self.request_id,
            "replayed": [vars(one) for one in self.replayed],
            "not_replayed": [vars(one) for one in self.not_replayed],
        }


def replay_message(letter: StoredDeadLetter, *, request_id: str) -> dramatiq.Message[Any]:
    """The new message that replays ``letter``: same queue, actor, arguments and payload, except the
    payload's ``request_id``; a fresh message id and timestamp; no retries, delay or traceback.

    Raises:
        Unreplayable: when no possync route has the actor on that queue, or the payload no longer
            validates against the route's model (a worker would refuse it at once).
    """
    message = letter.message
    queue = q_name(message.queue_name)
    route = ROUTES.get(message.actor_name)
    if route is None or route.queue != queue:
        raise Unreplayable(
            f"no possync actor {message.actor_name!r} on queue {queue!r} (renamed or removed?): purge it"
        )
    kwargs = dict(message.kwargs) if isinstance(message.kwargs, dict) else {}
    payload = kwargs.get("payload")
    if not isinstance(payload, dict):
        raise Unreplayable("it carries no payload object: purge it")
    payload = {**payload, "request_id": request_id}
    try:
        route.payload.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "payload"
        raise Unreplayable(f"its payload is no longer valid ({where}: {first['msg']}): purge it") from None
    options = {key: value for key, value in message.options.items() if key not in _DELIVERY_OPTIONS}
    options[REPLAY_OF_OPTION] = message.message_id
    return dramatiq.Message(
        queue_name=queue,
        actor_name=message.actor_name,
        args=tuple(message.args),
        kwargs={**kwargs, "payload": payload},
        options=options,
    )


def replay_dead_letters(
    client: redis.Redis,
    broker: dramatiq.Broker,
    letters: Iterable[StoredDeadLetter],
    *,
    request_id: str,
) -> ReplayResult:
    """Put each dead letter back on its queue as a new message of request ``request_id``, then remove
    it and its recorded error.

    Enqueue first, remove second: a crash in between leaves the letter to be replayed again (the work
    then runs twice, which idempotent actors make harmless), never a lost message. A short-lived claim
    per letter keeps two concurrent replays from both enqueuing it.

    Args:
        client: Redis client of the dead letters.
        broker: the broker to enqueue through (its middleware tracks the request for ``--wait``).
        letters: what to replay, e.g. from :func:`find_dead_letters`.
        request_id: the request the replayed messages belong to.
    """
    replayed: list[Replayed] = []
    skipped: list[NotReplayed] = []
    for letter in letters:
        actor = letter.message.actor_name
        try:
            message = replay_message(letter, request_id=request_id)
        except Unreplayable as exc:
            skipped.append(NotReplayed(letter.message_id, letter.queue, actor, str(exc)))
            continue
        claim = CLAIM_KEY.format(queue=letter.queue, redis_id=letter.redis_id)
        if not client.set(claim, request_id, nx=True, px=CLAIM_TTL_MS):
            skipped.append(NotReplayed(letter.message_id, letter.queue, actor, "another replay holds it"))
            continue
        try:
            if not dead_letter_present(client, letter):
                reason = "gone meanwhile (replayed, purged or expired)"
                skipped.append(NotReplayed(letter.message_id, letter.queue, actor, reason))
                continue
            broker.declare_queue(message.queue_name)
            sent = broker.enqueue(message)
            remove_dead_letters(client, [letter])
        finally:
            client.delete(claim)
        replayed.append(Replayed(letter.message_id, sent.message_id, letter.queue, actor))
        log.info(
            "dead_letter_replayed",
            queue=letter.queue,
            actor=actor,
            message_id=letter.message_id,
            replayed_as=sent.message_id,
            request_id=request_id,
        )
    return ReplayResult(request_id=request_id, replayed=tuple(replayed), not_replayed=tuple(skipped))


def purge_dead_letters(
    client: redis.Redis,
    letters: Sequence[StoredDeadLetter],
    *,
    queues: Iterable[str],
    older_than_seconds: float,
    now: float | None = None,
) -> int:
    """Remove ``letters`` and their recorded errors for good; also drop the errors recorded for dead
    letters Dramatiq already expired, when older than ``older_than_seconds`` (and an hour).

    Returns:
        How many of ``letters`` were removed (one already gone is not counted).
    """
    now = time.time() if now is None else now
    removed = remove_dead_letters(client, letters)
    failed_before = now - max(older_than_seconds, ORPHAN_MIN_AGE_SECONDS)
    orphans = sum(
        remove_orphan_dead_letter_errors(client, queue, failed_before=failed_before) for queue in queues
    )
    log.info("dead_letters_purged", removed=removed, orphan_errors_removed=orphans)
    return removed
