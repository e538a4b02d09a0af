"""The webhook receiver (``possync webhooks``): a Starlette app that turns webhooks into messages.

Routes (documented in ``GET /openapi.json``, built by :mod:`producers.webhook_openapi`):

- ``POST /webhooks/notion`` (and the older ``POST /api/notion/webhook``): Notion's verification
  handshake, or a signed event, enqueued as a ``WebhookEvent`` on ``notion``.
- ``POST /webhooks/square``: a signed Square event, enqueued as a ``RecordUpsert`` or an items
  ``SyncRequest`` on ``square`` (see :mod:`producers.webhook_checks` for the routing).
- ``GET /healthz`` (process up), ``GET /readyz`` (Redis answers PING), ``GET /metrics``.

Status codes: 200 accepted, duplicate or handshake; 202 a Square event type possync does not
process; 400 malformed (signed, but not a valid event; non-UTF-8 included); 401 signature missing
or wrong, or no Notion key yet; 409 the same event is being enqueued by a concurrent delivery; 413
body over ``POSSYNC_WEBHOOK_MAX_BODY_BYTES`` (by Content-Length, or while reading a chunked body);
503 with ``Retry-After`` when Redis is unreachable or the Square route is not configured, so an
event is never answered 2xx unless it was kept.

The body is read on the event loop, never more than the limit into memory, and checked there
(signature, then shape: :mod:`producers.webhook_checks`, microseconds). Blocking work (Redis, the
broker) runs in two sender threads that take concurrent deliveries in batches
(:mod:`producers.webhook_sender`, :mod:`producers.webhook_intake`). One log line per request
(``webhook_handled``: provider, outcome, status, event type and id) and one count in
``possync_webhook_events_total``; no signature, key, token or body is ever logged. The receiver
imports the broker's plumbing but no actor, source or sink (and so never the BigQuery client).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import orjson
import redis
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from producers.webhook_checks import (
    RETRY_AFTER_SECONDS,
    Answer,
    Delivery,
    check_notion_event,
    check_notion_unsigned,
    check_square,
    unavailable,
)
from producers.webhook_intake import EVENT_KEY, NOTION_TOKEN_KEY, WebhookIntake, token_fingerprint
from producers.webhook_models import MAX_TOKEN_CHARS, OUTCOMES, NotionHandshake
from producers.webhook_openapi import NOTION_PATHS, SQUARE_PATH, openapi_document
from producers.webhook_sender import BatchSender
from producers.webhook_signatures import NOTION_SIGNATURE_HEADER, SQUARE_SIGNATURE_HEADER
from schemas.messages import NOTION_QUEUE, SQUARE_QUEUE
from schemas.settings import ConfigError, Settings
from workers.broker import build_broker
from workers.metrics import WEBHOOK_EVENTS
from workers.metrics_state import process_registry

__all__ = [
    "EVENT_KEY",
    "NOTION_TOKEN_KEY",
    "REDIS_TIMEOUT_SECONDS",
    "TOKEN_REFRESH_SECONDS",
    "build_redis_client",
    "create_app",
    "replace_notion_verification_token",
    "run_webhooks",
]

log = structlog.get_logger(__name__)

#: Connect and read deadline of the receiver's Redis commands, seconds: a Redis that does not answer
#: turns into a quick 503 (the providers wait 10 s at most) instead of a hung request.
REDIS_TIMEOUT_SECONDS = 2.0
#: How long the Notion token recorded in Redis is reused before it is read again, seconds. A
#: signature that does not match the token in hand makes the receiver read it again at once, so a
#: replaced token works immediately; the previous one keeps working for at most this long.
TOKEN_REFRESH_SECONDS = 1.0
#: How long uvicorn waits for requests in flight at shutdown, seconds.
_GRACEFUL_SHUTDOWN_SECONDS = 10
#: Threads doing the receiver's Redis work, each on a batch of concurrent deliveries.
_SENDER_THREADS = 2


class _TooLarge(Exception):
    """The body is over the limit."""


def build_redis_client(redis_url: str) -> redis.Redis:
    """The receiver's Redis client: short timeouts and no retries, so failures answer 503 quickly.

    redis-py checks a pooled connection before each use and reconnects a dead one, so nothing
    broken outlives a Redis restart.
    """
    return redis.Redis.from_url(
        redis_url,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
    )


def replace_notion_verification_token(redis_client: redis.Redis, token: str) -> None:
    """Record ``token`` as the Notion verification token, replacing any recorded one.

    Used after the subscription was recreated (a later handshake never overwrites the recorded
    token). Running receivers accept events signed with it at once, and stop accepting the previous
    one within :data:`TOKEN_REFRESH_SECONDS`.
    ``POSSYNC_NOTION_VERIFICATION_TOKEN``, when set, still takes precedence.

    Raises:
        ValueError: if the token is empty or longer than 1,024 characters.
        redis.RedisError: if Redis is unreachable.
    """
    if not token or len(token) > MAX_TOKEN_CHARS:
        raise ValueError(f"a Notion verification token has 1 to {MAX_TOKEN_CHARS} characters")
    redis_client.set(NOTION_TOKEN_KEY, token)
    log.info(
        "notion_verification_token_replaced",
        key=NOTION_TOKEN_KEY,
        token_sha256_prefix=token_fingerprint(token),
    )


def _json(status: int, body: dict[str, Any], *, retry_after_seconds: int | None = None) -> Response:
    headers = {"Retry-After": str(retry_after_seconds)} if retry_after_seconds is not None else None
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


async def _read_body(request: Request, limit_bytes: int) -> bytes:
    """The whole body, refusing more than ``limit_bytes`` (announced or received).

    Raises:
        _TooLarge: over the limit; what was read so far is dropped.
        ClientDisconnect: the client went away.
    """
    announced = request.headers.get("content-length")
    if announced is not None and announced.isdigit() and int(announced) > limit_bytes:
        raise _TooLarge
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit_bytes:
            raise _TooLarge
        body += chunk
    return bytes(body)


_LEVELS = {
    "accepted": "info",
    "duplicate": "info",
    "handshake": "info",
    "unknown_type": "info",
    "bad_signature": "warning",
    "malformed": "warning",
    "too_large": "warning",
    "unavailable": "error",
}


def _finish(provider: str, answer: Answer) -> Response:
    """Count, log and render one answer."""
    WEBHOOK_EVENTS.labels(provider=provider, outcome=answer.outcome).inc()
    getattr(log, _LEVELS[answer.outcome])(
        "webhook_handled",
        provider=provider,
        outcome=answer.outcome,
        status=answer.status,
        event_type=answer.event_type,
        event_id=answer.event_id,
        message_id=answer.message_id,
        detail=answer.detail,
    )
    return _json(
        answer.status,
        {"outcome": answer.outcome, "detail": answer.detail},
        retry_after_seconds=answer.retry_after_seconds,
    )


class _Receiver:
    """The endpoints, over one intake and its sender threads."""

    def __init__(self, settings: Settings, intake: WebhookIntake, registry: CollectorRegistry) -> None:
        self.intake = intake
        self.registry = registry
        self.sender: BatchSender[Delivery, Answer] = BatchSender(intake.deliver, threads=_SENDER_THREADS)
        self.limit_bytes = settings.webhook_max_body_bytes
        configured = settings.notion_verification_token
        self.notion_setting = (configured.get_secret_value() if configured else "") or None
        square_key = settings.square_webhook_signature_key
        self.square_key = (square_key.get_secret_value() if square_key else "") or None
        self.square_url = settings.square_webhook_url or None
        # The token recorded in Redis and when it was read (monotonic seconds); event loop only.
        self._recorded: str | None = None
        self._recorded_at: float | None = None

    @property
    def square_configured(self) -> bool:
        return bool(self.square_key) and bool(self.square_url)

    async def _body(self, request: Request) -> bytes | Answer:
        try:
            return await _read_body(request, self.limit_bytes)
        except _TooLarge:
            return Answer(413, "too_large", f"the body is over {self.limit_bytes} bytes")

    async def notion(self, request: Request) -> Response:
        try:
            body = await self._body(request)
        except ClientDisconnect:
            return Response(status_code=400)
        if isinstance(body, Answer):
            return _finish("notion", body)
        signature = request.headers.get(NOTION_SIGNATURE_HEADER)
        if signature is None:
            checked = check_notion_unsigned(body)
            answer = await self._handshake(checked) if isinstance(checked, NotionHandshake) else checked
            return _finish("notion", answer)
        received_at = datetime.now(UTC)
        if self.notion_setting is not None:
            event = check_notion_event(body, signature, self.notion_setting, received_at=received_at)
        else:
            try:
                key = await self._recorded_token(fresh=False)
                event = check_notion_event(body, signature, key, received_at=received_at)
                if isinstance(event, Answer) and event.outcome == "bad_signature":
                    # Perhaps the token was just replaced: read it again before refusing.
                    fresh = await self._recorded_token(fresh=True)
                    if fresh != key:
                        event = check_notion_event(body, signature, fresh, received_at=received_at)
            except redis.RedisError as exc:
                return _finish("notion", unavailable(f"Redis is unavailable: {type(exc).__name__}"))
        return _finish("notion", event if isinstance(event, Answer) else await self.sender.submit(event))

    async def _recorded_token(self, *, fresh: bool) -> str | None:
        """The recorded token: the one read less than TOKEN_REFRESH_SECONDS ago, unless ``fresh``.

        Raises:
            redis.RedisError: if it must be read and Redis is unreachable.
        """
        now = time.monotonic()
        if fresh or self._recorded_at is None or now - self._recorded_at >= TOKEN_REFRESH_SECONDS:
            self._recorded = await self.sender.call(self.intake.recorded_token)
            self._recorded_at = now
        return self._recorded

    async def _handshake(self, handshake: NotionHandshake) -> Answer:
        token = handshake.verification_token
        if self.notion_setting is not None:
            log.warning(
                "notion_verification_token_ignored",
                reason="POSSYNC_NOTION_VERIFICATION_TOKEN is set",
                token_sha256_prefix=token_fingerprint(token),
            )
            return Answer(200, "handshake", "verification token received; the configured one stays in use")
        answer, recorded = await self.sender.call(lambda: self.intake.record_handshake(token))
        if recorded:
            self._recorded, self._recorded_at = token, time.monotonic()
        return answer

    async def square(self, request: Request) -> Response:
        try:
            body = await self._body(request)
        except ClientDisconnect:
            return Response(status_code=400)
        if isinstance(body, Answer):
            return _finish("square", body)
        if not self.square_key or not self.square_url:
            return _finish(
                "square",
                unavailable(
                    "Square webhooks are not configured on this receiver"
                    " (POSSYNC_SQUARE_WEBHOOK_SIGNATURE_KEY and POSSYNC_SQUARE_WEBHOOK_URL)"
                ),
            )
        checked = check_square(
            body, request.headers.get(SQUARE_SIGNATURE_HEADER), self.square_key, self.square_url
        )
        return _finish(
            "square", checked if isinstance(checked, Answer) else await self.sender.submit(checked)
        )

    async def healthz(self, request: Request) -> Response:
        return _json(200, {"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        if await self.sender.call(self.intake.ready):
            return _json(200, {"status": "ready"})
        return _json(
            503,
            {"status": "unavailable", "detail": "Redis does not answer"},
            retry_after_seconds=RETRY_AFTER_SECONDS,
        )

    async def metrics(self, request: Request) -> Response:
        # Off the event loop: the pipeline state is read from Redis.
        body = await self.sender.call(lambda: generate_latest(self.registry))
        return Response(body, media_type=CONTENT_TYPE_LATEST)


def create_app(settings: Settings, *, redis_client: redis.Redis | None = None) -> Starlette:
    """The receiver's ASGI app. Connects lazily: nothing touches Redis until a request needs it.

    Args:
        settings: possync settings (Redis URL, webhook keys, body limit).
        redis_client: the Redis client to use (closed by its owner); default one from
            :func:`build_redis_client`, closed at shutdown.
    """
    owned = redis_client is None
    client = redis_client if redis_client is not None else build_redis_client(settings.redis_url)
    broker = build_broker(settings, client=client)
    # Declared once here, so that concurrent sends never race to declare them.
    for queue in (NOTION_QUEUE, SQUARE_QUEUE):
        broker.declare_queue(queue)
    registry = process_registry(client, heartbeat_timeout_seconds=settings.worker_heartbeat_timeout_seconds)
    # Every provider and outcome at 0 from the start, so increase() sees even the first event.
    for provider in ("notion", "square"):
        for outcome in OUTCOMES:
            WEBHOOK_EVENTS.labels(provider=provider, outcome=outcome)
    receiver = _Receiver(settings, WebhookIntake(redis_client=client, broker=broker), registry)
    document = orjson.dumps(openapi_document(max_body_bytes=settings.webhook_max_body_bytes))

    async def openapi(request: Request) -> Response:
        return Response(document, media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        receiver.sender.close()
        if owned:
            client.close()

    routes = [
        *(Route(path, receiver.notion, methods=["POST"]) for path in NOTION_PATHS),
        Route(SQUARE_PATH, receiver.square, methods=["POST"]),
        Route("/healthz", receiver.healthz, methods=["GET"]),
        Route("/readyz", receiver.readyz, methods=["GET"]),
        Route("/metrics", receiver.metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.receiver = receiver
    return app


@contextlib.contextmanager
def _stop_signals_end_cleanly() -> Iterator[None]:
    """Make SIGTERM and SIGINT a clean stop: uvicorn re-raises the signal it stopped on once it
    has shut down gracefully, which would end the process by the signal instead of returning 0."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _ignore_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ignore_signal(sig: int, frame: FrameType | None) -> None:
    log.info("webhooks_stop_signal", signal=signal.Signals(sig).name)


def run_webhooks(settings: Settings) -> int:
    """Serve the receiver on ``POSSYNC_WEBHOOKS_HOST``:``POSSYNC_WEBHOOKS_PORT`` until stopped.

    Returns:
        0 after a clean shutdown (SIGINT or SIGTERM).

    Raises:
        ConfigError: if ``POSSYNC_REDIS_URL`` is empty.
    """
    import uvicorn

    if not settings.redis_url.strip():
        raise ConfigError("POSSYNC_REDIS_URL is required by the webhook receiver")
    app = create_app(settings)
    if not app.state.receiver.square_configured:
        log.warning(
            "square_webhooks_disabled",
            detail="POSSYNC_SQUARE_WEBHOOK_SIGNATURE_KEY and POSSYNC_SQUARE_WEBHOOK_URL are required;"
            " POST /webhooks/square answers 503",
        )
    log.info(
        "webhooks_starting",
        host=settings.webhooks_host,
        port=settings.webhooks_port,
        notion_key="setting" if settings.notion_verification_token else "recorded in Redis",
        max_body_bytes=settings.webhook_max_body_bytes,
    )
    with _stop_signals_end_cleanly():
        uvicorn.run(
            app,
            host=settings.webhooks_host,
            port=settings.webhooks_port,
            http="httptools",
            lifespan="on",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
        )
    log.info("webhooks_stopped")
    return 0
