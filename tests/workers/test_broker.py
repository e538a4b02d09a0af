"""The broker's middleware against a real Redis server and a real Dramatiq worker."""

from __future__ import annotations

import threading
import time
from typing import Any

import dramatiq
import pytest
import redis

from schemas.messages import HANDLE_NOTION_EVENT, SYNC_LIGHTSPEED_STREAM, SYNC_SQUARE_STREAM, SyncRequest
from schemas.settings import Settings
from tests.polling import wait_until
from tests.workers.conftest import TEST_QUEUE
from workers.broker import PossyncRedisBroker, build_broker, send_many
from workers.errors import PermanentError, RateLimited, SourceUnavailable
from workers.queues import RequestProgress, dead_letters, queue_depth, request_progress

QUEUE = TEST_QUEUE


def _finished(client: redis.Redis, request_id: str) -> RequestProgress | None:
    progress = request_progress(client, request_id)
    return progress if progress.finished else None


def _payload(request_id: str, **extra: Any) -> dict[str, Any]:
    return {"payload": {"request_id": request_id, **extra}}


def test_request_tracking_follows_done_and_dead_messages(broker: PossyncRedisBroker, run_worker: Any) -> None:
    # Given an actor that succeeds and one that fails permanently
    calls: dict[str, int] = {"ok": 0, "bad": 0}

    @dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name="ok_actor", throws=(PermanentError,))
    def ok_actor(payload: dict[str, Any]) -> None:
        calls["ok"] += 1

    @dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name="bad_actor", throws=(PermanentError,))
    def bad_actor(payload: dict[str, Any]) -> None:
        calls["bad"] += 1
        raise PermanentError("source said 401: token revoked", system="square", status_code=401)

    # When both are sent under one request and a worker runs
    ok_actor.send_with_options(kwargs=_payload("req-1"))
    bad = bad_actor.send_with_options(kwargs=_payload("req-1"))
    run_worker()

    # Then the request finishes with one done and one dead message
    progress = wait_until(
        lambda: _finished(broker.client, "req-1"),
        timeout_seconds=20,
        message="request req-1 never finished",
    )
    assert progress is not None
    assert (progress.done, progress.dead) == (1, 1)
    assert progress.dead_message_ids == (bad.message_id,)
    # And the permanent error was not retried
    assert calls == {"ok": 1, "bad": 1}
    # And the dead letter carries its last error and is counted
    letters = dead_letters(broker.client, [QUEUE])
    assert [letter.message_id for letter in letters] == [bad.message_id]
    assert letters[0].error_type == "PermanentError"
    assert "token revoked" in (letters[0].error or "")
    assert letters[0].retries == 0
    assert queue_depth(broker.client, QUEUE).dead == 1


def test_retryable_errors_are_retried_then_dead_lettered(broker: PossyncRedisBroker, run_worker: Any) -> None:
    # Given an actor that always fails with a retryable error (max_retries=3)
    attempts: list[float] = []

    @dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name="flaky_actor", throws=(PermanentError,))
    def flaky_actor(payload: dict[str, Any]) -> None:
        attempts.append(time.monotonic())
        raise SourceUnavailable("503 from square", system="square", status_code=503)

    # When it runs
    message = flaky_actor.send_with_options(kwargs=_payload("req-2"))
    run_worker()

    # Then it is tried 1 + 3 times and ends dead-lettered with its last error
    progress = wait_until(
        lambda: _finished(broker.client, "req-2"),
        timeout_seconds=30,
        message="request req-2 never finished",
    )
    assert progress is not None
    assert progress.dead_message_ids == (message.message_id,)
    assert len(attempts) == 4
    letter = dead_letters(broker.client, [QUEUE])[0]
    assert letter.error_type == "SourceUnavailable"
    assert letter.retries == 3


def test_retry_after_is_honoured(broker: PossyncRedisBroker, run_worker: Any) -> None:
    # Given an actor rate-limited once with Retry-After: 1 s, far above the 0.05 s minimum backoff
    attempts: list[float] = []

    @dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name="limited_actor", throws=(PermanentError,))
    def limited_actor(payload: dict[str, Any]) -> None:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise RateLimited("429 from square", system="square", status_code=429, retry_after_seconds=1.0)

    # When it runs
    limited_actor.send_with_options(kwargs=_payload("req-3"))
    run_worker()

    # Then the second attempt came no sooner than the source asked
    wait_until(
        lambda: request_progress(broker.client, "req-3").finished,
        timeout_seconds=20,
        message="request req-3 never finished",
    )
    assert len(attempts) == 2
    assert attempts[1] - attempts[0] >= 1.0


def test_a_dead_workers_messages_come_back_after_the_heartbeat_timeout(redis_url: str) -> None:
    # Given a "worker" (its own broker id) that took a message and then died without acknowledging
    client = redis.Redis.from_url(redis_url)
    settings = Settings(
        redis_url=redis_url, worker_heartbeat_timeout_seconds=5, worker_maintenance_interval_seconds=0.5
    )
    doomed = build_broker(settings)
    doomed.declare_queue(QUEUE)
    doomed.enqueue(dramatiq.Message(queue_name=QUEUE, actor_name="x", args=(), kwargs={}, options={}))
    consumer = doomed.consume(QUEUE, prefetch=1, timeout=100)
    taken = wait_until(lambda: next(consumer), timeout_seconds=5, message="message never fetched")
    assert taken is not None
    # Then the message shows as in flight, not ready
    assert queue_depth(client, QUEUE).as_dict() == {"ready": 0, "delayed": 0, "in_flight": 1, "dead": 0}

    # When a live worker process keeps beating and maintaining (its Maintenance thread's loop)
    survivor = build_broker(settings)
    survivor.declare_queue(QUEUE)
    stop = threading.Event()

    def maintain() -> None:
        while not stop.wait(0.5):
            survivor.maintain([QUEUE])

    thread = threading.Thread(target=maintain, daemon=True)
    started = time.monotonic()
    thread.start()
    try:
        # Then after the heartbeat timeout (5 s here) the message is back on the queue
        wait_until(
            lambda: queue_depth(client, QUEUE).ready == 1,
            timeout_seconds=15,
            message="the dead worker's message was never requeued",
        )
    finally:
        stop.set()
        thread.join()
    assert time.monotonic() - started >= 4.0
    assert queue_depth(client, QUEUE).in_flight == 0


def test_send_many_enqueues_a_batch_in_order_with_each_message_tracked(
    broker: PossyncRedisBroker, run_worker: Any
) -> None:
    # Given payloads for two queues, under two requests
    items: list[tuple[Any, Any]] = [
        (SYNC_SQUARE_STREAM, SyncRequest(request_id="req-b1", stream="payments")),
        (SYNC_LIGHTSPEED_STREAM, SyncRequest(request_id="req-b1", source="lightspeed", stream="sales")),
        (SYNC_SQUARE_STREAM, SyncRequest(request_id="req-b2", stream="items")),
    ]

    # When they are sent as one batch
    results = send_many(broker, items)

    # Then each is on its queue, in order, and pending for its request
    assert all(isinstance(result, dramatiq.Message) for result in results)
    square = [m.kwargs["payload"]["stream"] for m in _queued(broker.client, "square")]
    assert square == ["payments", "items"]
    assert [m.kwargs["payload"]["stream"] for m in _queued(broker.client, "lightspeed")] == ["sales"]
    progress = request_progress(broker.client, "req-b1")
    assert (progress.total, progress.pending) == (2, 2)
    # And a worker running them marks them done
    done: list[str] = []
    for route in (SYNC_SQUARE_STREAM, SYNC_LIGHTSPEED_STREAM):
        dramatiq.actor(broker=broker, queue_name=route.queue, actor_name=route.actor)(
            lambda payload: done.append(payload["stream"])
        )
    run_worker("square")
    run_worker("lightspeed")
    assert wait_until(
        lambda: _finished(broker.client, "req-b2"), timeout_seconds=20, message="req-b2 never finished"
    )
    assert wait_until(
        lambda: _finished(broker.client, "req-b1"), timeout_seconds=20, message="req-b1 never finished"
    )
    assert sorted(done) == ["items", "payments", "sales"]


def test_send_many_refuses_a_wrong_payload_before_sending_anything(broker: PossyncRedisBroker) -> None:
    # Given a batch whose second payload does not fit its route
    items: list[tuple[Any, Any]] = [
        (SYNC_SQUARE_STREAM, SyncRequest(request_id="req-b3", stream="payments")),
        (HANDLE_NOTION_EVENT, SyncRequest(request_id="req-b3", stream="payments")),
    ]

    # When it is sent, then TypeError, and nothing was enqueued or tracked
    with pytest.raises(TypeError, match="handle_notion_event takes WebhookEvent"):
        send_many(broker, items)
    assert broker.client.llen("dramatiq:square") == 0
    assert request_progress(broker.client, "req-b3").total == 0


def test_send_many_reports_each_message_redis_refused(broker: PossyncRedisBroker) -> None:
    # Given a Redis that refuses writes (as when it is out of memory under noeviction)
    broker.client.config_set("maxmemory", "1")
    try:
        # When a batch is sent
        results = send_many(broker, [(SYNC_SQUARE_STREAM, SyncRequest(request_id="req-b4", stream="items"))])
    finally:
        broker.client.config_set("maxmemory", "0")

    # Then the message's own error comes back in its place
    assert len(results) == 1
    assert isinstance(results[0], redis.ResponseError)


def test_send_many_reloads_the_dispatch_script_after_redis_forgot_it(broker: PossyncRedisBroker) -> None:
    # Given a broker that has enqueued before, and a Redis whose script cache was flushed since
    send_many(broker, [(SYNC_SQUARE_STREAM, SyncRequest(request_id="req-b5", stream="items"))])
    broker.client.script_flush()

    # When a batch is sent
    results = send_many(broker, [(SYNC_SQUARE_STREAM, SyncRequest(request_id="req-b5", stream="payments"))])

    # Then it was enqueued all the same
    assert isinstance(results[0], dramatiq.Message)
    assert [m.kwargs["payload"]["stream"] for m in _queued(broker.client, "square")] == ["items", "payments"]


def test_an_idle_queue_is_polled_at_most_the_setting_apart(redis_url: str) -> None:
    # Given a broker built with POSSYNC_WORKER_IDLE_POLL_MS=50
    broker = build_broker(Settings(redis_url=redis_url, worker_idle_poll_ms=50))
    broker.declare_queue(TEST_QUEUE)
    try:
        # When a worker's consumer is made with Dramatiq's own 1 s idle timeout, and a sync by default
        consumer = broker.consume(TEST_QUEUE, prefetch=1, timeout=1000)
        default = build_broker(Settings(redis_url=redis_url)).consume(TEST_QUEUE, prefetch=1, timeout=1000)

        # Then its backoff between polls of the empty queue stops at 50 ms (100 ms by default), not 1 s
        assert (consumer.timeout, default.timeout) == (50, 100)  # type: ignore[attr-defined]
        assert broker.consume(TEST_QUEUE, timeout=20).timeout == 20  # type: ignore[attr-defined]

        # And a message sent after a run of empty polls is still taken
        for _ in range(10):
            assert next(consumer) is None
        broker.enqueue(
            dramatiq.Message(queue_name=TEST_QUEUE, actor_name="a", args=(), kwargs={}, options={})
        )
        taken = wait_until(lambda: next(consumer), timeout_seconds=10, message="the message was never taken")
        assert taken is not None
        consumer.ack(taken)
        consumer.close()
        default.close()
    finally:
        broker.close()


def _queued(client: redis.Redis, queue: str) -> list[dramatiq.Message[Any]]:
    ids = client.lrange(f"dramatiq:{queue}", 0, -1)
    raw = client.hmget(f"dramatiq:{queue}.msgs", ids) if ids else []
    return [dramatiq.Message.decode(data) for data in raw if isinstance(data, bytes)]
