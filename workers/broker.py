"""The one Dramatiq broker and its middleware: retries, dead letters, heartbeats, request tracking, logs.

Redis keys (namespace ``dramatiq``, Dramatiq's own layout) hold the queues: ``<q>`` (ready ids),
``<q>.msgs`` (every unacknowledged message), ``<q>.DQ`` (delayed), ``__acks__.<worker>.<q>`` (taken
but not acknowledged: in flight), ``<q>.XQ`` (dead letters). possync adds, under ``possync:``:

- ``dead:<q>``: hash of message id -> the last error of each dead-lettered message (Dramatiq keeps
  the message but not why it died);
- ``request:<request_id>``: hash of message id -> ``pending`` | ``done`` | ``dead`` for every message
  a request caused, children included, so ``--wait`` follows its own messages, not queue lengths.

Why the defaults differ from the replaced system's "3 attempts, 5 minutes": see docs/operations.md.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import dramatiq
import redis
import structlog
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import compute_backoff, current_millis, dq_name
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Middleware,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from schemas.messages import Payload, Route
from schemas.settings import Settings

__all__ = [
    "CONSUMERS_KEY",
    "DEAD_KEY",
    "REQUEST_KEY",
    "DeadLetters",
    "LogContext",
    "Maintenance",
    "PossyncRedisBroker",
    "PossyncRetries",
    "RequestTracking",
    "build_broker",
    "message_request_id",
    "send",
    "send_many",
]

NAMESPACE = "possync"
#: Hash of message id -> last error (JSON), per queue: why each dead letter died.
DEAD_KEY = NAMESPACE + ":dead:{queue}"
#: Hash of message id -> state, per request.
REQUEST_KEY = NAMESPACE + ":request:{request_id}"
#: Sorted set per queue of the worker processes consuming it, scored by their last heartbeat (Unix s).
CONSUMERS_KEY = NAMESPACE + ":consumers:{queue}"
#: How long a request's tracking hash is kept after its last change, seconds.
REQUEST_TTL_SECONDS = 14 * 86_400

log = structlog.get_logger(__name__)


def message_request_id(message: dramatiq.Message[Any] | dramatiq.MessageProxy) -> str | None:
    """The ``request_id`` a possync message carries in its payload, if any."""
    payload = message.kwargs.get("payload") if isinstance(message.kwargs, dict) else None
    if isinstance(payload, dict):
        request_id = payload.get("request_id")
        if isinstance(request_id, str):
            return request_id
    return None


P = TypeVar("P", bound=Payload)


def _message(route: Route[P], payload: P) -> dramatiq.Message[Any]:
    if not isinstance(payload, route.payload):
        raise TypeError(f"{route.actor} takes {route.payload.__name__}, not {type(payload).__name__}")
    return dramatiq.Message(
        queue_name=route.queue,
        actor_name=route.actor,
        args=(),
        kwargs={"payload": payload.model_dump(mode="json")},
        options={},
    )


def send(broker: dramatiq.Broker, route: Route[P], payload: P, *, delay_ms: int | None = None) -> Any:
    """Put one validated payload on its route's queue, by actor name (no actor import needed).

    Args:
        broker: the broker to send through.
        route: queue and actor name, from ``schemas/messages.py``.
        payload: an instance of ``route.payload``.
        delay_ms: deliver no sooner than this many milliseconds from now.

    Returns:
        The enqueued ``dramatiq.Message`` (its ``message_id`` identifies it everywhere).

    Raises:
        TypeError: if the payload is not of the route's type.
    """
    message = _message(route, payload)
    broker.declare_queue(route.queue)
    return broker.enqueue(message, delay=delay_ms)


def send_many(broker: dramatiq.Broker, items: Sequence[tuple[Route[Any], Payload]]) -> list[Any]:
    """Put several validated payloads on their routes' queues: one Redis round trip on possync's broker.

    Args:
        broker: the broker to send through (a :class:`PossyncRedisBroker` pipelines the batch; any
            other broker enqueues one message after another).
        items: (route, payload) pairs, each payload an instance of its ``route.payload``.

    Returns:
        One entry per item, in order: the enqueued ``dramatiq.Message``, or the ``redis.RedisError``
        or ``dramatiq.DramatiqError`` that kept that message off its queue.

    Raises:
        TypeError: if a payload is not of its route's type (then nothing is sent).
        redis.RedisError: if Redis could not be reached or did not answer; some messages may have been
            enqueued all the same.
    """
    messages = [_message(route, payload) for route, payload in items]
    for route, _ in items:
        broker.declare_queue(route.queue)
    if isinstance(broker, PossyncRedisBroker):
        return broker.enqueue_many(messages)
    results: list[Any] = []
    for message in messages:
        try:
            results.append(broker.enqueue(message))
        except (redis.RedisError, dramatiq.DramatiqError) as exc:
            results.append(exc)
    return results


class PossyncRedisBroker(RedisBroker):
    """Dramatiq's RedisBroker plus deliberate maintenance.

    Dramatiq requeues a dead worker's unacknowledged messages only during "maintenance", which runs
    on a random 0.1% of Redis commands; a worker busy with one long message sends no heartbeat at
    all. Both make "when does a killed worker's message come back?" a matter of luck. Here every
    worker process beats and maintains every queue on a timer (see :class:`Maintenance`), so a
    killed worker's messages are back on their queue within ``heartbeat_timeout`` plus one interval.
    """

    _force = threading.local()
    _batch = threading.local()
    #: The longest pause between polls of an empty queue, ms (``POSSYNC_WORKER_IDLE_POLL_MS``).
    idle_poll_ms: int = 1000

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> dramatiq.Consumer:
        """A consumer whose idle backoff stops at :attr:`idle_poll_ms` rather than Dramatiq's 1 s, so
        a message sent to an idle queue (a webhook's upsert, a scheduler tick) is taken sooner."""
        return super().consume(queue_name, prefetch=prefetch, timeout=min(timeout, self.idle_poll_ms))

    @property
    def batch_pipeline(self) -> redis.client.Pipeline | None:
        """The pipeline of the :meth:`enqueue_many` running on this thread, if any.

        A middleware writing to Redis in ``before_enqueue`` adds its commands to it instead of making
        a round trip of its own (see :class:`RequestTracking`).
        """
        batch = getattr(self._batch, "pipeline", None)
        return batch if getattr(self._batch, "broker", None) is self else None

    def enqueue_many(self, messages: Sequence[dramatiq.Message[Any]]) -> list[Any]:
        """Enqueue messages, without delay, in one Redis round trip: :meth:`enqueue` for each, pipelined.

        Each message gets its own Redis id and the middleware's ``before_enqueue`` and
        ``after_enqueue`` hooks, as with :meth:`enqueue`; Redis writes of ``before_enqueue`` hooks go
        into the same pipeline, ahead of the message's own. Dramatiq offers no batch enqueue, so this
        calls its dispatch script as ``RedisBroker.enqueue`` does (dramatiq 2.x).

        Returns:
            Per message, in order: the enqueued message, or the ``redis.RedisError`` its enqueue got.

        Raises:
            redis.RedisError: if the pipeline could not be sent or its answers read; some messages
                may have been enqueued all the same.
        """
        prepared = [message.copy(options={"redis_message_id": str(uuid.uuid4())}) for message in messages]
        pipeline = self.client.pipeline(transaction=False)
        dispatch = self.scripts["dispatch"]
        calls: list[tuple[int, list[Any]]] = []  # (position in the pipeline, EVALSHA arguments)
        self._batch.pipeline, self._batch.broker = pipeline, self
        try:
            for message in prepared:
                self.emit_before("enqueue", message, None)
                arguments = [
                    dispatch.sha,
                    1,
                    self.namespace,
                    "enqueue",
                    current_millis(),
                    message.queue_name,
                    self.broker_id,
                    self.heartbeat_timeout,
                    self.dead_message_ttl,
                    self._should_do_maintenance("enqueue"),
                    self._max_unpack_size(),
                    message.options["redis_message_id"],
                    message.encode(),
                ]
                calls.append((len(pipeline), arguments))
                # EVALSHA directly rather than through the Script: a pipeline given a Script asks
                # Redis whether it is loaded first, a round trip per batch; a NOSCRIPT is rare.
                pipeline.evalsha(*arguments)
        finally:
            self._batch.pipeline = self._batch.broker = None
        replies = pipeline.execute(raise_on_error=False)
        replies = self._reload_and_retry(dispatch, calls, replies)
        results: list[Any] = []
        for message, (position, _) in zip(prepared, calls, strict=True):
            reply = replies[position]
            if isinstance(reply, Exception):
                results.append(reply)
                continue
            self.emit_after("enqueue", message, None)
            results.append(message)
        return results

    def _reload_and_retry(
        self, dispatch: Any, calls: list[tuple[int, list[Any]]], replies: list[Any]
    ) -> list[Any]:
        """Load the dispatch script and send again the EVALSHAs Redis answered NOSCRIPT (after its
        script cache was flushed, e.g. a restart); the other replies stay as they are."""
        missing = [
            (position, arguments)
            for position, arguments in calls
            if isinstance(replies[position], redis.exceptions.NoScriptError)
        ]
        if not missing:
            return replies
        self.client.script_load(dispatch.script)
        retry = self.client.pipeline(transaction=False)
        for _, arguments in missing:
            retry.evalsha(*arguments)
        replies = list(replies)
        for (position, _), reply in zip(missing, retry.execute(raise_on_error=False), strict=True):
            replies[position] = reply
        return replies

    def _should_do_maintenance(self, command: str) -> int:
        if getattr(self._force, "on", False):
            return 1
        return int(super()._should_do_maintenance(command))

    def maintain(self, queues: Iterable[str]) -> None:
        """Beat this process's heartbeat and requeue dead workers' messages on ``queues``."""
        self._force.on = True
        try:
            for queue in queues:
                self.do_qsize(queue)
                self.do_qsize(dq_name(queue))
        finally:
            self._force.on = False


class Maintenance(Middleware):
    """A thread per worker process: heartbeat plus requeue of dead workers' messages, on a timer."""

    def __init__(self, interval_seconds: float) -> None:
        self.interval_seconds = interval_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        if not isinstance(broker, PossyncRedisBroker):
            raise TypeError("Maintenance needs a PossyncRedisBroker")
        self._stop.clear()
        # The queues this process consumes (``--queues``; all declared ones when not given), for the
        # per-queue consumer heartbeats that ``possync_queue_consumers`` counts.
        self._consumed = sorted(
            queue
            for queue in (getattr(worker, "consumer_whitelist", None) or broker.get_declared_queues())
            if not queue.endswith((".DQ", ".XQ"))
        )

        def loop() -> None:
            while True:
                try:
                    self._beat(broker)
                    broker.maintain(broker.get_declared_queues())
                except redis.RedisError as exc:
                    # Redis down: the consumers report it too; keep beating when it returns.
                    log.warning("maintenance_failed", error=str(exc))
                if self._stop.wait(self.interval_seconds):
                    return

        self._thread = threading.Thread(target=loop, name="possync-maintenance", daemon=True)
        self._thread.start()

    def _beat(self, broker: PossyncRedisBroker) -> None:
        pipe = broker.client.pipeline(transaction=False)
        for queue in self._consumed:
            pipe.zadd(CONSUMERS_KEY.format(queue=queue), {broker.broker_id: time.time()})
        pipe.execute()

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self._stop.set()
        # A clean stop leaves the consumer count at once; a killed process ages out of it.
        with contextlib.suppress(redis.RedisError, AttributeError):
            pipe = broker.client.pipeline(transaction=False)
            for queue in getattr(self, "_consumed", ()):
                pipe.zrem(CONSUMERS_KEY.format(queue=queue), broker.broker_id)
            pipe.execute()


class PossyncRetries(Retries):
    """Dramatiq's retries with jittered exponential backoff that honours ``Retry-After``.

    An exception carrying ``retry_after_seconds`` (a 429 from a source) is retried no sooner than
    the source asked; otherwise the usual exponential backoff with jitter applies. Exceptions listed
    in an actor's ``throws`` (``PermanentError``) are never retried.
    """

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        retry_after = getattr(exception, "retry_after_seconds", None)
        if exception is None or retry_after is None or isinstance(exception, dramatiq.Retry):
            super().after_process_message(broker, message, result=result, exception=exception)
            return
        retries = int(message.options.get("retries", 0))
        _, backoff_ms = compute_backoff(retries, factor=self.min_backoff, max_backoff=self.max_backoff)
        # At least what the source asked, plus jitter so that a pool does not come back in lockstep.
        retry_after_ms = float(retry_after) * 1000
        delay_ms = int(max(backoff_ms, retry_after_ms * (1 + random.uniform(0, 0.25))))
        wrapped = dramatiq.Retry(f"{type(exception).__name__}: {exception}", delay=delay_ms)
        super().after_process_message(broker, message, result=result, exception=wrapped)


def _retries_done(
    broker: dramatiq.Broker, message: dramatiq.MessageProxy, exception: BaseException | None
) -> int:
    """How many times the message was retried before it died.

    Dramatiq's Retries counts the failure it is handling before it gives up, except for an
    exception the actor ``throws`` (never retried), which it does not count.
    """
    counted = int(message.options.get("retries", 0))
    if exception is None:
        return counted
    throws = message.options.get("throws") or broker.get_actor(message.actor_name).options.get("throws")
    if throws and isinstance(exception, throws):
        return counted
    return max(0, counted - 1)


def _error_record(
    broker: dramatiq.Broker, message: dramatiq.MessageProxy, exception: BaseException | None
) -> dict[str, Any]:
    return {
        "message_id": message.message_id,
        "actor": message.actor_name,
        "queue": message.queue_name.removesuffix(".DQ"),
        "request_id": message_request_id(message),
        "error_type": type(exception).__name__ if exception else "Skipped",
        "error": str(exception)[:2000] if exception else "message skipped (age limit)",
        "retries": _retries_done(broker, message, exception),
        "failed_at": time.time(),
    }


class DeadLetters(Middleware):
    """Records why each dead-lettered message died, beside Dramatiq's own dead-letter queue."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is not None and message.failed:
            self._record(broker, message, exception)

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        if message.failed:
            self._record(broker, message, None)

    def _record(
        self, broker: dramatiq.Broker, message: dramatiq.MessageProxy, exception: BaseException | None
    ) -> None:
        record = _error_record(broker, message, exception)
        self.client.hset(DEAD_KEY.format(queue=record["queue"]), message.message_id, json.dumps(record))
        log.error(
            "message_dead_lettered",
            actor=record["actor"],
            queue=record["queue"],
            error_type=record["error_type"],
            error=record["error"],
            retries=record["retries"],
        )


class RequestTracking(Middleware):
    """Tracks every message of a request: pending when enqueued, then done or dead.

    A message counts as finished only once the broker has settled it: ``done`` after the
    acknowledgement of a successful run, ``dead`` after it was moved to the dead-letter queue. So
    when ``--wait`` sees a request finished, no message of it is still in flight, and every dead one
    is already listed among the dead letters. A failed run that will be retried stays ``pending``
    (its retry was enqueued, ``pending`` again, before the failed copy was acknowledged).
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._succeeded: set[str] = set()
        self._lock = threading.Lock()

    def _set(
        self,
        message: dramatiq.Message[Any] | dramatiq.MessageProxy,
        state: str,
        broker: dramatiq.Broker | None = None,
    ) -> None:
        request_id = message_request_id(message)
        if request_id is None:
            return
        key = REQUEST_KEY.format(request_id=request_id)
        batch = broker.batch_pipeline if isinstance(broker, PossyncRedisBroker) else None
        pipe = batch if batch is not None else self.client.pipeline()
        pipe.hset(key, message.message_id, state)
        pipe.expire(key, REQUEST_TTL_SECONDS)
        if batch is None:
            pipe.execute()

    def _remember_success(self, message: dramatiq.MessageProxy) -> None:
        with self._lock:
            self._succeeded.add(message.message_id)

    def before_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int) -> None:
        # Before, not after: a fast worker could finish the message before "pending" is written. In
        # a batch (PossyncRedisBroker.enqueue_many) it joins the batch's pipeline, ahead of the message.
        self._set(message, "pending", broker)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None:
            self._remember_success(message)

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        if not message.failed:
            self._remember_success(message)

    def after_ack(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        with self._lock:
            succeeded = message.message_id in self._succeeded
            self._succeeded.discard(message.message_id)
        # Also acknowledged: a failed run whose retry is queued, a delayed copy moved to its queue.
        if succeeded:
            self._set(message, "done")

    def after_nack(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        self._set(message, "dead")


class LogContext(Middleware):
    """Binds message_id, actor, queue and request_id to every log line of a message; one summary line."""

    def __init__(self) -> None:
        self._started = threading.local()

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            message_id=message.message_id,
            actor=message.actor_name,
            queue=message.queue_name,
            request_id=message_request_id(message),
            attempt=int(message.options.get("retries", 0)) + 1,
        )
        # Which source and stream the message is about, where its payload says (syncs, windows,
        # upserts); a payload is validated by the actor, so only plain strings are taken here.
        kwargs = message.kwargs if isinstance(message.kwargs, dict) else {}
        payload = kwargs.get("payload")
        if isinstance(payload, dict):
            structlog.contextvars.bind_contextvars(
                **{name: payload[name] for name in ("source", "stream") if isinstance(payload.get(name), str)}
            )
        self._started.at = time.monotonic()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        seconds = round(time.monotonic() - getattr(self._started, "at", time.monotonic()), 3)
        if exception is None:
            log.info("message_done", seconds=seconds)
        elif message.failed:
            log.error("message_failed", seconds=seconds, error_type=type(exception).__name__)
        else:
            log.warning(
                "message_retrying", seconds=seconds, error_type=type(exception).__name__, error=str(exception)
            )
        structlog.contextvars.clear_contextvars()


def build_broker(settings: Settings, *, client: redis.Redis | None = None) -> PossyncRedisBroker:
    """The broker for this process, from settings. Connects lazily (nothing at import or build time).

    Args:
        settings: possync settings (Redis URL, retry and time-limit knobs).
        client: a Redis client to use instead of one built from ``settings.redis_url``.
    """
    client = client or redis.Redis.from_url(settings.redis_url)
    # Dramatiq calls after_* hooks in reverse order: the middleware that reads ``message.failed``
    # (set by Retries) must come before Retries in this list.
    middleware = [
        LogContext(),
        DeadLetters(client),
        RequestTracking(client),
        AgeLimit(),
        TimeLimit(time_limit=settings.actor_time_limit_seconds * 1000),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        PossyncRetries(
            max_retries=settings.max_retries,
            min_backoff=int(settings.min_backoff_seconds * 1000),
            max_backoff=int(settings.max_backoff_seconds * 1000),
        ),
        CurrentMessage(),
        Maintenance(settings.worker_maintenance_interval_seconds),
    ]
    broker = PossyncRedisBroker(
        client=client,
        middleware=middleware,
        heartbeat_timeout=settings.worker_heartbeat_timeout_seconds * 1000,
        dead_message_ttl=settings.dead_letter_ttl_days * 86_400_000,
    )
    broker.idle_poll_ms = settings.worker_idle_poll_ms
    return broker
