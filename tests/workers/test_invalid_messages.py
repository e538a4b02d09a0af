"""Invalid messages reaching the real actors: dead-lettered at once with the validation error, no work.

A real Dramatiq worker runs possync's real actors (``register_actors``) on possync's broker over the
session's Redis server, every queue consumed. Messages are put on the queues raw, as a buggy or
older producer (or a hand-edited replay) could, bypassing the payload models producers use.

"No work" is observed from outside: every system the actors could reach (Square, Lightspeed and
its token endpoint, Notion, BigQuery) is configured to one loopback HTTP server that records
whatever reaches it, and Redis must hold nothing but the broker's own bookkeeping (no lock,
checkpoint, plan, pause or semaphore key). A valid message sent the same way does reach that server
(the control case), so its silence means something.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Worker

from schemas.messages import QUEUES, ROUTES
from schemas.settings import Settings
from tests.polling import wait_until
from tests.tripwire import Tripwire, serve_tripwire
from workers.actors import register_actors
from workers.broker import PossyncRedisBroker, build_broker
from workers.queues import DeadLetter, dead_letters, queue_depth

#: Retries a retryable failure would get here: an invalid message must use none of them.
MAX_RETRIES = 3
#: Redis keys the broker itself writes; any other key means an actor did some work.
BOOKKEEPING_PREFIXES = ("dramatiq:", "possync:dead:", "possync:request:", "possync:consumers:")
#: How long a message may take to be dead-lettered, seconds.
DEAD_LETTER_SECONDS = 20.0
WHEN = "2025-06-01T00:00:00Z"
LATER = "2025-07-01T00:00:00Z"


@pytest.fixture
def tripwire() -> Iterator[Tripwire]:
    """The recording server, answering 401 in Square's error shape, stopped after the test."""
    with serve_tripwire(b'{"errors": [{"code": "UNAUTHORIZED", "detail": "tripwire"}]}') as wire:
        yield wire


@pytest.fixture
def broker(redis_url: str, tripwire: Tripwire) -> Iterator[PossyncRedisBroker]:
    """possync's broker with the real actors, every system pointed at the tripwire, and a worker
    consuming every queue (stopped after the test)."""
    settings = Settings(
        redis_url=redis_url,
        square_base_url=tripwire.url,
        square_access_token="tripwire-square-token",
        square_request_attempts=1,
        lightspeed_base_url=tripwire.url,
        lightspeed_token_url=tripwire.url + "/auth/oauth/token",
        lightspeed_account_id="123456",
        lightspeed_client_id="tripwire-client",
        lightspeed_client_secret="tripwire-secret",
        lightspeed_refresh_token="tripwire-refresh",
        lightspeed_request_attempts=1,
        notion_base_url=tripwire.url,
        notion_token="tripwire-notion-token",
        notion_request_attempts=1,
        bigquery_project="possync-test",
        bigquery_endpoint=tripwire.url,
        bigquery_timeout_seconds=5,
        max_retries=MAX_RETRIES,
        min_backoff_seconds=0.05,
        max_backoff_seconds=0.2,
        worker_heartbeat_timeout_seconds=5,
        worker_maintenance_interval_seconds=0.5,
    )
    broker = build_broker(settings)
    register_actors(broker, settings)
    worker = Worker(broker, queues=set(QUEUES), worker_threads=2, worker_timeout=100)
    worker.start()
    yield broker
    worker.stop()
    broker.close()


def _send_raw(broker: PossyncRedisBroker, actor: str, payload: Any) -> str:
    """Put ``payload`` on the actor's queue as it is, unvalidated; returns the message id."""
    queue = ROUTES[actor].queue
    broker.declare_queue(queue)
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=queue, actor_name=actor, args=(), kwargs={"payload": payload}, options={}
    )
    return str(broker.enqueue(message).message_id)


def _dead_letter(client: redis.Redis, message_id: str) -> DeadLetter:
    def found() -> DeadLetter | None:
        return next((x for x in dead_letters(client, QUEUES) if x.message_id == message_id), None)

    letter = wait_until(
        found, timeout_seconds=DEAD_LETTER_SECONDS, message=f"{message_id} never dead-lettered"
    )
    assert letter is not None
    return letter


def _work_keys(client: redis.Redis) -> list[str]:
    """Redis keys other than the broker's bookkeeping."""
    keys = (key.decode() for key in client.scan_iter("*"))
    return sorted(key for key in keys if not key.startswith(BOOKKEEPING_PREFIXES))


def _sync(source: str, stream: str, **changes: Any) -> dict[str, Any]:
    return {"request_id": "req-invalid", "source": source, "stream": stream, **changes}


def _window(source: str, stream: str, **changes: Any) -> dict[str, Any]:
    return {
        "request_id": "req-invalid",
        "source": source,
        "backfill_id": "bf-1",
        "window_id": "w-1",
        "stream": stream,
        **changes,
    }


def _backfill(source: str, **changes: Any) -> dict[str, Any]:
    return {
        "request_id": "req-invalid",
        "source": source,
        "backfill_id": "bf-1",
        "since": WHEN,
        "until": LATER,
    } | (changes)


def _notion_event(**changes: Any) -> dict[str, Any]:
    return {
        "request_id": "req-invalid",
        "event_id": str(uuid.uuid4()),
        "event_type": "page.created",
        "timestamp": WHEN,
        "received_at": WHEN,
        "raw": "{}",
        **changes,
    }


def _migration(**changes: Any) -> dict[str, Any]:
    return {
        "request_id": "req-invalid",
        "migration_id": "square_payments-created_at-DAY",
        "table": "square_payments",
        "partition_field": "created_at",
        **changes,
    }


def _without(payload: dict[str, Any], name: str) -> dict[str, Any]:
    return {key: value for key, value in payload.items() if key != name}


#: (actor, raw payload, words the recorded error must contain: field names, or the rule broken).
INVALID: list[Any] = [
    pytest.param("sync_square_stream", _sync("square", "orders"), ["stream", "orders"], id="unknown-stream"),
    pytest.param(
        "sync_lightspeed_stream",
        _sync("lightspeed", "payments"),
        ["stream", "payments"],
        id="other-source-stream",
    ),
    pytest.param(
        "sync_square_stream", _sync("lightspeed", "sales"), ["lightspeed", "square queue"], id="wrong-queue"
    ),
    pytest.param(
        "sync_square_stream", _sync("square", "items", surprise=1), ["surprise"], id="unknown-field"
    ),
    pytest.param(
        "sync_square_stream",
        _sync("square", "items", schema_version=2),
        ["schema_version"],
        id="newer-schema",
    ),
    pytest.param(
        "sync_square_stream", _sync("square", "items", request_id=""), ["request_id"], id="empty-id"
    ),
    pytest.param("sync_lightspeed_stream", "sync everything", ["payload"], id="not-an-object"),
    pytest.param(
        "backfill_square_window",
        _window("square", "payments", location_id="L1", start=LATER, end=WHEN),
        ["end", "start"],
        id="window-ends-before-it-starts",
    ),
    pytest.param(
        "backfill_lightspeed_window",
        _window("lightspeed", "sales", start="2025-06-01T00:00:00", end="2025-07-01T00:00:00"),
        ["time zone"],
        id="window-without-time-zone",
    ),
    pytest.param(
        "backfill_lightspeed_window",
        _window("lightspeed", "sales", start=WHEN),
        ["start", "end"],
        id="window-half-open",
    ),
    pytest.param(
        "backfill_square_window",
        _without(_window("square", "items"), "window_id"),
        ["window_id"],
        id="no-window-id",
    ),
    pytest.param(
        "plan_square_backfill", _without(_backfill("square"), "since"), ["since"], id="backfill-no-since"
    ),
    pytest.param(
        "plan_lightspeed_backfill",
        _backfill("lightspeed", since=LATER, until=WHEN),
        ["until", "since"],
        id="backfill-reversed",
    ),
    pytest.param(
        "plan_square_backfill", _backfill("square", window_days=0), ["window_days"], id="backfill-zero-days"
    ),
    pytest.param(
        "upsert_square_record",
        {"request_id": "req-invalid", "kind": "refund", "record_id": "R1"},
        ["kind"],
        id="upsert-unknown-kind",
    ),
    pytest.param(
        "upsert_square_record",
        {"request_id": "req-invalid", "kind": "payment", "record_id": "x" * 256},
        ["record_id"],
        id="upsert-id-too-long",
    ),
    pytest.param(
        "handle_notion_event",
        _notion_event(timestamp="2025-06-01T00:00:00"),
        ["timestamp"],
        id="notion-naive-time",
    ),
    pytest.param("handle_notion_event", _without(_notion_event(), "raw"), ["raw"], id="notion-no-body"),
    pytest.param(
        "run_migration",
        _migration(granularity="WEEK", cluster=["a", "b", "c", "d", "e"]),
        ["granularity", "cluster"],
        id="migration-bad-layout",
    ),
]


@pytest.mark.parametrize(("actor", "payload", "named"), INVALID)
def test_an_invalid_message_is_dead_lettered_at_once_without_doing_any_work(
    broker: PossyncRedisBroker, tripwire: Tripwire, actor: str, payload: Any, named: list[str]
) -> None:
    # Given the real actors consuming every queue, and a payload its actor's schema refuses
    client = broker.client

    # When it is put on the actor's queue as it is
    message_id = _send_raw(broker, actor, payload)

    # Then it is dead-lettered once, not retried, with InvalidPayload and what is wrong with it
    letter = _dead_letter(client, message_id)
    assert (letter.actor, letter.queue) == (actor, ROUTES[actor].queue)
    assert letter.error_type == "InvalidPayload", letter
    assert letter.retries == 0, letter
    assert letter.error is not None
    for word in named:
        assert word in letter.error, (word, letter.error)
    depth = queue_depth(client, ROUTES[actor].queue)
    assert (depth.ready, depth.delayed, depth.dead) == (0, 0, 1), depth
    # And the actor did no work: no request reached any system, no state was written
    assert tripwire.requests == []
    assert _work_keys(client) == []


def test_a_valid_message_does_reach_the_systems(broker: PossyncRedisBroker, tripwire: Tripwire) -> None:
    # Given the same worker and a valid sync of Square's items, sent the same raw way
    # When it runs
    message_id = _send_raw(broker, "sync_square_stream", _sync("square", "items"))

    # Then it reached the stand-in systems (which refuse it: 401, a permanent error), so the
    # silence above is the actors' doing
    letter = _dead_letter(broker.client, message_id)
    assert letter.error_type != "InvalidPayload", letter
    assert tripwire.requests, "the valid message made no request"


def test_every_actor_is_covered() -> None:
    # Given the invalid cases above, then every actor possync declares gets at least one
    covered = {case.values[0] for case in INVALID}
    assert covered == set(ROUTES), set(ROUTES) - covered
