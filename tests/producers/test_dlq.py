"""``possync dlq``: dead letters listed, shown, replayed and purged, against a real Redis server and a
real Dramatiq worker running possync's broker and middleware.

The worker runs stand-in actors under the real route names (``sync_square_stream``,
``sync_lightspeed_stream``) whose "source" can be revoked (a permanent 401) or down (a retryable
503); their effect is idempotent, like the real actors': one entry per stream. The command runs as a
subprocess, as people run it.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Worker

from producers import dlq
from schemas.messages import SYNC_LIGHTSPEED_STREAM, SYNC_SQUARE_STREAM, SyncRequest
from schemas.settings import ENV_PREFIX, Settings
from tests.polling import wait_until
from workers.broker import DEAD_KEY, PossyncRedisBroker, build_broker, send
from workers.errors import PermanentError, SourceAuthError, SourceUnavailable
from workers.queues import StoredDeadLetter, queue_depth, stored_dead_letters

#: Retries of a retryable failure in these tests (the default is 12).
MAX_RETRIES = 2
REVOKED = "square answered 401 ACCESS_TOKEN_REVOKED: The access token has been revoked."


class FakeSource:
    """What the stand-in actors read: a source that works, is revoked, or is down."""

    def __init__(self) -> None:
        self.failure: Exception | None = None
        self.lock = threading.Lock()
        #: Every successful run: (queue, stream, request_id).
        self.runs: list[tuple[str, str, str]] = []
        #: The idempotent effect: one "row" per (queue, stream), however often it runs.
        self.rows: dict[tuple[str, str], str] = {}

    def revoke(self) -> None:
        self.failure = SourceAuthError(REVOKED, system="square", status_code=401)

    def go_down(self) -> None:
        self.failure = SourceUnavailable("square answered 503", system="square", status_code=503)

    def restore(self) -> None:
        self.failure = None

    def run(self, queue: str, payload: dict[str, Any]) -> None:
        request = SyncRequest.model_validate(payload)
        if self.failure is not None:
            raise self.failure
        with self.lock:
            self.runs.append((queue, request.stream, request.request_id))
            self.rows[(queue, request.stream)] = "synced"


@pytest.fixture
def broker(redis_url: str) -> Iterator[PossyncRedisBroker]:
    settings = Settings(
        redis_url=redis_url,
        max_retries=MAX_RETRIES,
        min_backoff_seconds=0.05,
        max_backoff_seconds=0.2,
        worker_heartbeat_timeout_seconds=5,
        worker_maintenance_interval_seconds=0.5,
    )
    broker = build_broker(settings)
    yield broker
    broker.close()


@pytest.fixture
def source(broker: PossyncRedisBroker) -> Iterator[FakeSource]:
    """The fake source, and a worker on the square and lightspeed queues running actors over it."""
    fake = FakeSource()
    for route in (SYNC_SQUARE_STREAM, SYNC_LIGHTSPEED_STREAM):

        def run(payload: dict[str, Any], queue: str = route.queue) -> None:
            fake.run(queue, payload)

        declare = dramatiq.actor(
            broker=broker, queue_name=route.queue, actor_name=route.actor, throws=(PermanentError,)
        )
        declare(run)
    worker = Worker(broker, queues={"square", "lightspeed"}, worker_threads=2, worker_timeout=100)
    worker.start()
    yield fake
    worker.stop()


@pytest.fixture
def possync(redis_url: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs ``possync ARGS`` on the test's Redis; ``stdin`` may be a file descriptor (a pty)."""
    env = {key: value for key, value in os.environ.items() if not key.upper().startswith(ENV_PREFIX)}
    env |= {"POSSYNC_REDIS_URL": redis_url, "POSSYNC_LOG_LEVEL": "WARNING"}

    def run(*args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "producers.cli", *args],
            env=env,
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return run


def _dead(client: redis.Redis, queue: str, count: int) -> list[StoredDeadLetter]:
    """Wait until ``queue`` has ``count`` dead letters; returns them, oldest first."""

    def enough() -> list[StoredDeadLetter] | None:
        letters = stored_dead_letters(client, queue)
        return letters if len(letters) >= count else None

    letters = wait_until(enough, timeout_seconds=20, message=f"{count} dead letters never reached {queue}")
    assert letters is not None
    return letters


def _kill(broker: PossyncRedisBroker, *streams: str, queue: str = "square") -> list[StoredDeadLetter]:
    """Send a sync of each stream while the source fails, and wait until they are all dead letters."""
    before = len(stored_dead_letters(broker.client, queue))
    for stream in streams:
        if queue == "square":
            send(broker, SYNC_SQUARE_STREAM, SyncRequest(request_id="sync-original", stream=stream))
        else:
            request = SyncRequest(request_id="sync-original", source="lightspeed", stream=stream)
            send(broker, SYNC_LIGHTSPEED_STREAM, request)
    return _dead(broker.client, queue, before + len(streams))


def test_a_dead_letter_is_listed_with_its_error(
    broker: PossyncRedisBroker, source: FakeSource, possync: Any
) -> None:
    # Given a sync dead-lettered by a revoked token (a 401: permanent, tried once)
    source.revoke()
    [letter] = _kill(broker, "payments")

    # When the dead letters are listed, as a table and as JSON
    table = possync("dlq", "list")
    listed = possync("dlq", "list", "--json")

    # Then both show its id, queue, actor, age, retries and last error
    assert table.returncode == 0, table.stderr
    header, row, *footer = table.stdout.splitlines()
    assert header.split() == ["ID", "QUEUE", "ACTOR", "AGE", "RETRIES", "LAST", "ERROR"]
    assert row.startswith(letter.message_id)
    assert "square  sync_square_stream" in row
    assert "SourceAuthError: square answered 401" in row
    assert footer == ["1 dead letter"]
    assert listed.returncode == 0, listed.stderr
    [view] = json.loads(listed.stdout)
    assert view["message_id"] == letter.message_id
    assert (view["queue"], view["actor"], view["retries"]) == ("square", "sync_square_stream", 0)
    assert (view["error_type"], view["error"]) == ("SourceAuthError", REVOKED)
    assert view["request_id"] == "sync-original"
    assert 0 <= view["age_seconds"] < 60
    assert view["payload"]["stream"] == "payments"


def test_show_prints_everything_and_an_unknown_id_exits_2(
    broker: PossyncRedisBroker, source: FakeSource, possync: Any
) -> None:
    # Given a dead letter
    source.revoke()
    [letter] = _kill(broker, "customers")

    # When it is shown by a prefix of its id, then as JSON by its full id
    shown = possync("dlq", "show", letter.message_id[:8])
    as_json = possync("dlq", "show", letter.message_id, "--json")

    # Then the text has its ids, times, retries, error and payload
    assert shown.returncode == 0, shown.stderr
    for expected in (letter.message_id, "sync_square_stream", "sync-original", "retries      0", REVOKED):
        assert expected in shown.stdout
    assert '"stream": "customers"' in shown.stdout
    assert "POSSYNC_DEAD_LETTER_TTL_DAYS=30" in shown.stdout
    view = json.loads(as_json.stdout)
    assert view["payload"] == {
        "schema_version": 1,
        "request_id": "sync-original",
        "source": "square",
        "stream": "customers",
    }

    # When an id no dead letter has is asked for
    unknown = possync("dlq", "show", "no-such-id")

    # Then it exits 2 saying so
    assert unknown.returncode == 2
    assert "no dead letter 'no-such-id'" in unknown.stderr
    assert unknown.stdout == ""


def test_a_replay_runs_again_and_leaves_no_dead_letter(
    broker: PossyncRedisBroker, source: FakeSource, possync: Any
) -> None:
    # Given a sync dead-lettered by a revoked token, then the token restored
    source.revoke()
    [letter] = _kill(broker, "payments")
    source.restore()

    # When it is replayed and followed to its end
    replayed = possync("dlq", "replay", letter.message_id, "--wait", "--timeout", "30")

    # Then it ran once, under the replay's own request, and --wait saw it done
    assert replayed.returncode == 0, replayed.stderr
    summary = json.loads(replayed.stdout)
    assert (summary["messages"], summary["done"], summary["dead"]) == (1, 1, 0)
    assert summary["request_id"].startswith("replay-")
    assert source.runs == [("square", "payments", summary["request_id"])]
    assert f"{letter.message_id} -> " in replayed.stderr
    # And neither the dead letter nor its recorded error is left
    assert stored_dead_letters(broker.client, "square") == []
    assert broker.client.hlen(DEAD_KEY.format(queue="square")) == 0
    assert possync("dlq", "list").stdout.strip() == "no dead letters"

    # When the same id is replayed again
    again = possync("dlq", "replay", letter.message_id)

    # Then it is a clear error and nothing is enqueued
    assert again.returncode == 2
    assert f"no dead letter {letter.message_id!r}" in again.stderr
    assert queue_depth(broker.client, "square").as_dict() == {
        "ready": 0,
        "delayed": 0,
        "in_flight": 0,
        "dead": 0,
    }
    assert len(source.runs) == 1


def test_a_replayed_message_gets_its_full_retries_again(
    broker: PossyncRedisBroker, source: FakeSource, possync: Any
) -> None:
    # Given a sync that spent every retry on a source that stayed down
    source.go_down()
    [letter] = _kill(broker, "items")
    assert letter.error["retries"] == MAX_RETRIES

    # When it is replayed while the source is still down
    replayed = possync("dlq", "replay", letter.message_id, "--wait", "--timeout", "30")

    # Then the replay was tried 1 + MAX_RETRIES times again and died again, as a new message that
    # names the one it replaced; --wait reports it and exits 1
    assert replayed.returncode == 1, replayed.stderr
    assert json.loads(replayed.stdout)["dead"] == 1
    [again] = stored_dead_letters(broker.client, "square")
    assert again.message_id != letter.message_id
    assert again.error["retries"] == MAX_RETRIES
    assert again.message.options[dlq.REPLAY_OF_OPTION] == letter.message_id
    assert f"replay of    {letter.message_id}" in possync("dlq", "show", again.message_id).stdout

    # When the source is back and the new dead letter is replayed
    source.restore()
    final = possync("dlq", "replay", again.message_id, "--wait", "--timeout", "30")

    # Then it succeeds and no dead letter is left
    assert final.returncode == 0, final.stderr
    assert source.rows == {("square", "items"): "synced"}
    assert stored_dead_letters(broker.client, "square") == []


def test_replay_all_and_the_queue_filter(
    broker: PossyncRedisBroker, source: FakeSource, possync: Any
) -> None:
    # Given two dead letters on the square queue and one on the lightspeed queue
    source.revoke()
    _kill(broker, "payments", "customers")
    [lightspeed] = _kill(broker, "sales", queue="lightspeed")
    source.restore()

    # When only the lightspeed queue's are replayed
    one = possync("dlq", "replay", "--all", "--queue", "lightspeed", "--json")

    # Then exactly that one was replayed, and the square ones are still listed
    assert one.returncode == 0, one.stderr
    result = json.loads(one.stdout)
    assert [entry["message_id"] for entry in result["replayed"]] == [lightspeed.message_id]
    assert result["not_replayed"] == []
    wait_until(
        lambda: ("lightspeed", "sales") in source.rows, timeout_seconds=20, message="the replay never ran"
    )
    square = json.loads(possync("dlq", "list", "--queue", "square", "--json").stdout)
    assert sorted(view["payload"]["stream"] for view in square) == ["customers", "payments"]
    assert json.loads(possync("dlq", "list", "--queue", "lightspeed", "--json").stdout) == []

    # When every other dead letter is replayed
    rest = possync("dlq", "replay", "--all", "--wait", "--timeout", "30")

    # Then both ran, and nothing is left anywhere
    assert rest.returncode == 0, rest.stderr
    assert json.loads(rest.stdout)["done"] == 2
    assert set(source.rows) == {("lightspeed", "sales"), ("square", "payments"), ("square", "customers")}
    assert json.loads(possync("dlq", "list", "--json").stdout) == []
    # And with nothing left, --all says so and succeeds
    empty = possync("dlq", "replay", "--all", "--wait")
    assert empty.returncode == 0
    assert "no dead letters to replay" in empty.stderr


def test_replay_needs_ids_or_all(possync: Any) -> None:
    # Given nothing, and then both
    neither = possync("dlq", "replay")
    both = possync("dlq", "replay", "abc", "--all")

    # Then each is refused with a message saying what to give
    for result in (neither, both):
        assert result.returncode == 2
        assert "give the ids of the dead letters to replay, or --all" in result.stderr


def test_a_letter_whose_payload_no_longer_validates_is_left_with_the_reason(
    broker: PossyncRedisBroker, source: FakeSource, possync: Any
) -> None:
    # Given a dead letter whose payload names a stream no route has (the worker refused it)
    broker.enqueue(
        dramatiq.Message(
            queue_name="square",
            actor_name=SYNC_SQUARE_STREAM.actor,
            args=(),
            kwargs={
                "payload": {"schema_version": 1, "request_id": "old", "source": "square", "stream": "tills"}
            },
            options={},
        )
    )
    [letter] = _dead(broker.client, "square", 1)

    # When it is replayed
    result = possync("dlq", "replay", "--all")

    # Then it is not enqueued, the reason is given, the exit status is 1 and the letter stays
    assert result.returncode == 1
    assert f"NOT replayed {letter.message_id}" in result.stderr
    assert "payload is no longer valid" in result.stderr
    assert "purge it" in result.stderr
    assert [kept.message_id for kept in stored_dead_letters(broker.client, "square")] == [letter.message_id]
    assert source.runs == []


def test_a_crash_between_enqueue_and_removal_loses_nothing(
    broker: PossyncRedisBroker, source: FakeSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a dead letter, the source restored, and a replayer that dies right after enqueuing
    source.revoke()
    [letter] = _kill(broker, "payments")
    source.restore()

    def crash(client: redis.Redis, letters: Any) -> int:
        raise redis.ConnectionError("connection lost")

    with monkeypatch.context() as patch:
        patch.setattr(dlq, "remove_dead_letters", crash)
        with pytest.raises(redis.ConnectionError):
            dlq.replay_dead_letters(broker.client, broker, [letter], request_id="replay-crashed")

    # Then the replay ran, and the dead letter is still there with its error (nothing was lost)
    wait_until(lambda: len(source.runs) == 1, timeout_seconds=20, message="the replay never ran")
    assert [kept.message_id for kept in stored_dead_letters(broker.client, "square")] == [letter.message_id]
    assert broker.client.hexists(DEAD_KEY.format(queue="square"), letter.message_id)
    # And no claim is left behind to block the next replay
    assert not list(broker.client.scan_iter(match="possync:dlq:replaying:*"))

    # When it is replayed again
    result = dlq.replay_dead_letters(broker.client, broker, [letter], request_id="replay-again")

    # Then the work ran a second time, harmlessly (same single row), and no dead letter is left
    assert [one.message_id for one in result.replayed] == [letter.message_id]
    wait_until(lambda: len(source.runs) == 2, timeout_seconds=20, message="the second replay never ran")
    assert source.rows == {("square", "payments"): "synced"}
    assert stored_dead_letters(broker.client, "square") == []


def test_a_letter_another_replay_holds_is_skipped(broker: PossyncRedisBroker, source: FakeSource) -> None:
    # Given a dead letter that another replay has claimed
    source.revoke()
    [letter] = _kill(broker, "payments")
    source.restore()
    broker.client.set(dlq.CLAIM_KEY.format(queue="square", redis_id=letter.redis_id), "replay-other")

    # When this replay gets to it
    result = dlq.replay_dead_letters(broker.client, broker, [letter], request_id="replay-mine")

    # Then it is skipped with the reason, not enqueued a second time
    assert result.replayed == ()
    assert [(one.message_id, one.reason) for one in result.not_replayed] == [
        (letter.message_id, "another replay holds it")
    ]
    assert queue_depth(broker.client, "square").ready == 0


def _age(client: redis.Redis, letter: StoredDeadLetter, days: float) -> None:
    """Move a dead letter's death time ``days`` back, as if it had died then."""
    died_ms = (time.time() - days * 86_400) * 1000
    client.zadd(f"dramatiq:{letter.queue}.XQ", {letter.redis_id: died_ms}, xx=True)


def test_purge_removes_only_what_is_older_and_says_what(
    broker: PossyncRedisBroker, source: FakeSource, possync: Any
) -> None:
    # Given a dead letter that died 8 days ago, one that died just now, and an error recorded 9 days ago
    # for a dead letter Dramatiq already expired
    source.revoke()
    old, new = _kill(broker, "payments", "items")
    _age(broker.client, old, days=8)
    orphan = {"message_id": "expired-1", "error": "x", "failed_at": time.time() - 9 * 86_400}
    broker.client.hset(DEAD_KEY.format(queue="square"), "expired-1", json.dumps(orphan))

    # When dead letters older than 7 days are purged without a terminal and without --yes
    refused = possync("dlq", "purge", "--older-than", "7d")

    # Then it refuses, says how, and removes nothing
    assert refused.returncode == 2
    assert "1 dead letter older than 7d to remove" in refused.stderr
    assert "--yes" in refused.stderr
    assert len(stored_dead_letters(broker.client, "square")) == 2

    # When it is confirmed with --yes
    purged = possync("dlq", "purge", "--older-than", "7d", "--yes")

    # Then only the old one is gone, with its recorded error and the expired letter's, and it was named
    assert purged.returncode == 0, purged.stderr
    assert "removed 1 dead letter older than 7d" in purged.stdout
    assert old.message_id in purged.stdout
    assert new.message_id not in purged.stdout
    assert [kept.message_id for kept in stored_dead_letters(broker.client, "square")] == [new.message_id]
    recorded = broker.client.hgetall(DEAD_KEY.format(queue="square"))
    assert {key.decode() if isinstance(key, bytes) else key for key in recorded} == {new.message_id}


@pytest.mark.parametrize(("answer", "status", "left"), [(b"n\n", 1, 1), (b"y\n", 0, 0)])
def test_purge_asks_on_a_terminal(
    broker: PossyncRedisBroker, source: FakeSource, possync: Any, answer: bytes, status: int, left: int
) -> None:
    # Given a dead letter that died a day ago
    source.revoke()
    [letter] = _kill(broker, "customers")
    _age(broker.client, letter, days=1)

    # When it is purged on a terminal that answers `answer`
    controller, terminal = pty.openpty()
    try:
        os.write(controller, answer)
        result = possync("dlq", "purge", "--older-than", "12h", stdin=terminal)
    finally:
        os.close(controller)
        os.close(terminal)

    # Then it was listed and asked about, and removed only on "y"
    assert result.returncode == status, result.stderr
    assert letter.message_id in result.stderr
    assert "Remove this 1 dead letter for good? [y/N]" in result.stderr
    assert len(stored_dead_letters(broker.client, "square")) == left


def test_purge_with_nothing_old_enough_removes_nothing(
    broker: PossyncRedisBroker, source: FakeSource, possync: Any
) -> None:
    # Given a fresh dead letter on square
    source.revoke()
    _kill(broker, "payments")

    # When dead letters older than 30 minutes are purged, or any on another queue
    result = possync("dlq", "purge", "--older-than", "30m")
    other = possync("dlq", "purge", "--older-than", "0s", "--queue", "notion")

    # Then nothing is asked or removed
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no dead letters older than 30m"
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip() == "no dead letters older than 0s on notion"
    assert len(stored_dead_letters(broker.client, "square")) == 1


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("7d", 604_800.0),
        ("12h", 43_200.0),
        ("30m", 1_800.0),
        ("45s", 45.0),
        ("2w", 1_209_600.0),
        ("1d12h", 129_600.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert dlq.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["7", "d", "7x", "-1d", "7d 2h", ""])
def test_bad_durations_are_refused_by_the_parser(text: str, possync: Any) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        dlq.parse_duration(text)
    if text and not text.startswith("-"):
        result = possync("dlq", "purge", "--older-than", text)
        assert result.returncode == 2
        assert "is not a duration: use e.g. 7d, 12h, 30m" in result.stderr


def test_ages_read_as_people_say_them() -> None:
    assert [dlq.format_age(s) for s in (0, 45, 125, 3 * 3600 + 60, 2 * 86_400 + 5 * 3600 + 7)] == [
        "0s",
        "45s",
        "2m 5s",
        "3h 1m",
        "2d 5h",
    ]


def test_help_teaches_with_examples(possync: Any) -> None:
    top = possync("--help")
    assert "dlq" in top.stdout
    dlq_help = possync("dlq", "--help")
    for action in ("list", "show", "replay", "purge"):
        assert action in dlq_help.stdout
    assert "possync dlq replay --all --queue square --wait" in dlq_help.stdout
    purge_help = possync("dlq", "purge", "--help")
    assert "--older-than DURATION" in purge_help.stdout
    assert "possync dlq purge --older-than 7d" in purge_help.stdout
    replay_help = possync("dlq", "replay", "--help")
    assert "--wait" in replay_help.stdout
    assert "possync dlq replay --all --queue square --wait" in replay_help.stdout
