"""The webhook receiver's Redis side: de-duplicate and enqueue deliveries, record Notion's token.

Blocking calls, run in the receiver's sender threads (:mod:`producers.webhook_sender`), which hand
over whole batches of concurrent deliveries so that claims, enqueues (with their request tracking)
and confirmations travel in one pipeline each: three round trips a batch, whatever its size.
Nothing is cached between calls, so a Redis that went away and came back is simply used again
(redis-py reconnects on the next command).

De-duplication survives a failed enqueue: each event id is first claimed for
:data:`PENDING_TTL_SECONDS` (``SET NX``), then its message is enqueued, then the claim is kept for
the provider's retry horizon (valued with the message id). If the enqueue fails, the claim is
deleted (best effort; otherwise it expires soon) and the answer is 503, so the provider delivers
again. A delivery that finds the claim still pending (a concurrent delivery of the same event)
gets 409 with ``Retry-After``; one that finds a message id gets 200 ``duplicate``.

Redis keys:

- ``possync:notion:verification_token``: the Notion subscription's verification token, recorded by
  the first handshake (never overwritten by a later one) or set by
  ``possync webhooks --set-notion-verification-token``. ``POSSYNC_NOTION_VERIFICATION_TOKEN``, when
  set, takes precedence and nothing is recorded.
- ``possync:webhooks:<provider>:event:<event id>``: ``pending``, then the enqueued message's id;
  kept 7 days for Notion (retries span about 24 h) and 4 days for Square (retries span 72 h).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import dramatiq
import redis
import structlog

from producers.enqueue import enqueue_many
from producers.webhook_checks import RETRY_AFTER_SECONDS, Answer, Delivery, unavailable

__all__ = ["EVENT_KEY", "NOTION_TOKEN_KEY", "PENDING_TTL_SECONDS", "WebhookIntake", "token_fingerprint"]

log = structlog.get_logger(__name__)

#: Where the Notion verification token recorded from the handshake is kept.
NOTION_TOKEN_KEY = "possync:notion:verification_token"  # noqa: S105 (a key name, not a secret)
#: De-duplication claim of one event: ``pending``, then the enqueued message id.
EVENT_KEY = "possync:webhooks:{provider}:event:{event_id}"
#: How long an event id stays claimed while its message is being enqueued, seconds.
PENDING_TTL_SECONDS = 30
_PENDING = b"pending"
#: Errors after which Redis is taken to be unreachable: the claims are left to expire, not released.
_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)


def token_fingerprint(token: str) -> str:
    """A short, one-way fingerprint of a token, to tell tokens apart in logs without showing them."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:12]


class WebhookIntake:
    """De-duplicates and enqueues deliveries, records Notion's verification token; blocking, thread-safe.

    Args:
        redis_client: the receiver's Redis client (short socket timeouts, see ``build_redis_client``).
        broker: the Dramatiq broker messages are sent through (on the same Redis).
    """

    def __init__(self, *, redis_client: redis.Redis, broker: dramatiq.Broker) -> None:
        self.redis = redis_client
        self.broker = broker

    def ready(self) -> bool:
        """Whether Redis answers PING."""
        try:
            return bool(self.redis.ping())
        except redis.RedisError:
            return False

    def recorded_token(self) -> str | None:
        """The Notion verification token recorded in Redis, if any.

        Raises:
            redis.RedisError: if Redis is unreachable.
        """
        value = self.redis.get(NOTION_TOKEN_KEY)
        return value.decode("utf-8") if isinstance(value, bytes) else None

    def record_handshake(self, token: str) -> tuple[Answer, bool]:
        """Record a handshake's token unless one is recorded already.

        Returns:
            The answer, and whether ``token`` is now the recorded one.
        """
        try:
            recorded = bool(self.redis.set(NOTION_TOKEN_KEY, token, nx=True))
        except redis.RedisError as exc:
            return unavailable(f"Redis is unavailable: {type(exc).__name__}"), False
        if not recorded:
            log.warning(
                "notion_verification_token_ignored",
                reason="a token is already recorded; replace it with --set-notion-verification-token",
                token_sha256_prefix=token_fingerprint(token),
            )
            return Answer(
                200, "handshake", "verification token received; the recorded one stays in use"
            ), False
        log.info(
            "notion_verification_token_recorded",
            key=NOTION_TOKEN_KEY,
            token_sha256_prefix=token_fingerprint(token),
        )
        return Answer(200, "handshake", "verification token recorded"), True

    def deliver(self, deliveries: Sequence[Delivery]) -> list[Answer]:
        """Enqueue each delivery whose event id was not enqueued before; one answer per delivery."""
        keys = [EVENT_KEY.format(provider=d.provider, event_id=d.event_id) for d in deliveries]
        try:
            pipe = self.redis.pipeline(transaction=False)
            for key in keys:
                pipe.set(key, _PENDING, nx=True, ex=PENDING_TTL_SECONDS)
                pipe.get(key)
            replies = pipe.execute()
        except redis.RedisError as exc:
            return [
                unavailable(
                    f"Redis is unavailable: {type(exc).__name__}",
                    event_type=d.event_type,
                    event_id=d.event_id,
                )
                for d in deliveries
            ]
        answers: dict[int, Answer] = {}
        claimed_now: list[tuple[int, Delivery, str]] = []
        for index, (delivery, key) in enumerate(zip(deliveries, keys, strict=True)):
            claimed, held = replies[2 * index], replies[2 * index + 1]
            if claimed:
                claimed_now.append((index, delivery, key))
            else:
                answers[index] = self._duplicate(
                    held, event_type=delivery.event_type, event_id=delivery.event_id
                )
        confirm: list[tuple[str, str, int]] = []
        release: list[str] = []
        reachable = True
        if claimed_now:
            # One round trip for the whole batch (request tracking and the enqueues, pipelined).
            try:
                results = enqueue_many(self.broker, [(d.route, d.payload) for _, d, _ in claimed_now])
            except (redis.RedisError, dramatiq.DramatiqError) as exc:
                reachable = not isinstance(exc, _UNREACHABLE)
                results = [exc] * len(claimed_now)
            for (index, delivery, key), result in zip(claimed_now, results, strict=True):
                if isinstance(result, Exception):
                    release.append(key)
                    answers[index] = unavailable(
                        f"could not enqueue the event: {type(result).__name__}",
                        event_type=delivery.event_type,
                        event_id=delivery.event_id,
                    )
                    continue
                confirm.append((key, result.message_id, delivery.keep_seconds))
                answers[index] = Answer(
                    200,
                    "accepted",
                    "event enqueued",
                    event_type=delivery.event_type,
                    event_id=delivery.event_id,
                    message_id=result.message_id,
                )
        # Redis unreachable: do not wait out one more timeout to release claims (they expire soon).
        self._settle(confirm, release if reachable else [])
        return [answers[index] for index in range(len(deliveries))]

    @staticmethod
    def _duplicate(held: bytes | None, *, event_type: str, event_id: str) -> Answer:
        if held is None or held == _PENDING:
            # Another delivery of this event is being enqueued right now (or just failed).
            return Answer(
                409,
                "duplicate",
                "this event is being enqueued by another delivery; retry later",
                event_type=event_type,
                event_id=event_id,
                retry_after_seconds=RETRY_AFTER_SECONDS,
            )
        return Answer(200, "duplicate", "event already received", event_type=event_type, event_id=event_id)

    def _settle(self, confirm: list[tuple[str, str, int]], release: list[str]) -> None:
        """Keep the claims of enqueued events for their horizon; drop those of failed ones."""
        if not confirm and not release:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for key, message_id, keep_seconds in confirm:
                pipe.set(key, message_id, ex=keep_seconds)
            if release:
                pipe.delete(*release)
            pipe.execute()
        except redis.RedisError as exc:
            # The messages are queued (answered 200); only the long de-dup window is lost: the
            # pending claims expire within PENDING_TTL_SECONDS, after which a redelivery could be
            # enqueued again (workers are idempotent). Failed claims expire the same way.
            log.warning("webhook_claims_not_settled", error_type=type(exc).__name__, events=len(confirm))
