"""What ``possync status`` shows: queue depths, stream checkpoints and lag, backfill plans, dead letters,
and the Lightspeed pool's shared state (rate-limit bucket model, access token, refresh token).

Read from Redis only (never the warehouse), so it answers in milliseconds and works while BigQuery
or a source is down.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import redis

from schemas.messages import ROUTES
from workers.queues import dead_letters, queue_depth
from workers.sources.lightspeed_auth import DEFAULT_KEY_PREFIX
from workers.state import StateStore

__all__ = ["collect_status", "format_status"]


def collect_status(client: redis.Redis, *, now: datetime | None = None) -> dict[str, Any]:
    """The state ``possync status --json`` prints.

    Args:
        client: Redis client.
        now: the time lag is measured to (default: now).
    """
    now = now or datetime.now(UTC)
    queues = sorted({route.queue for route in ROUTES.values()})
    state = StateStore(client)
    streams = {}
    for name, stream in sorted(state.list_streams().items()):
        last_success = stream.last_success
        streams[name] = {
            "checkpoint": stream.checkpoint.isoformat() if stream.checkpoint else None,
            "last_success": last_success.isoformat() if last_success else None,
            "lag_seconds": round((now - last_success).total_seconds(), 1) if last_success else None,
            "last_error": stream.last_error,
        }
    return {
        "queues": {queue: queue_depth(client, queue).as_dict() for queue in queues},
        "lightspeed": lightspeed_state(client),
        "streams": streams,
        "backfills": {
            plan.backfill_id: {"source": plan.meta.get("source", "square"), **plan.summary()}
            for plan in state.list_backfills()
        },
        "dead_letters": [
            {
                "message_id": letter.message_id,
                "queue": letter.queue,
                "actor": letter.actor,
                "age_seconds": round(letter.age_seconds, 1),
                "error_type": letter.error_type,
                "error": letter.error,
                "retries": letter.retries,
            }
            for letter in dead_letters(client, queues)
        ],
    }


def lightspeed_state(client: redis.Redis) -> dict[str, Any]:
    """The Lightspeed state the pool shares in Redis: per bucket (``<account>:<client>``) the model's
    level, size and drip rate; per OAuth client whether an access token is cached (and for how long),
    whether a rotated refresh token is stored and whether one was refused. Never a token itself."""
    buckets: dict[str, dict[str, float]] = {}
    clients: dict[str, dict[str, Any]] = {}
    for raw_key in client.scan_iter(match=DEFAULT_KEY_PREFIX + "*", count=500):
        key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
        name = key[len(DEFAULT_KEY_PREFIX) :]
        if name.endswith(":bucket"):
            model = client.hgetall(key)
            buckets[name.removesuffix(":bucket")] = {
                (field.decode() if isinstance(field, bytes) else str(field)): round(float(value), 3)
                for field, value in model.items()
                if (field.decode() if isinstance(field, bytes) else str(field)) != "at"
            }
            continue
        client_id, _, kind = name.rpartition(":")
        entry = clients.setdefault(
            client_id,
            {"access_token_ttl_seconds": None, "refresh_token_stored": False, "refresh_token_refused": False},
        )
        if kind == "access_token":
            ttl_ms = client.pttl(key)
            entry["access_token_ttl_seconds"] = round(ttl_ms / 1000, 1) if ttl_ms > 0 else None
        elif kind == "refresh_token":
            entry["refresh_token_stored"] = True
        elif kind == "refused_refresh_token":
            entry["refresh_token_refused"] = True
    return {"buckets": buckets, "clients": {k: v for k, v in clients.items() if k}}


def format_status(status: dict[str, Any]) -> str:
    """``collect_status``'s result as text for people."""
    lines = ["queues:"]
    for queue, depth in status["queues"].items():
        lines.append(
            f"  {queue:<12} ready {depth['ready']:>6}  delayed {depth['delayed']:>6}  "
            f"in flight {depth['in_flight']:>6}  dead {depth['dead']:>6}"
        )
    lines.append("streams:")
    if not status["streams"]:
        lines.append("  (none synced yet)")
    for name, stream in status["streams"].items():
        lag = "-" if stream["lag_seconds"] is None else f"{stream['lag_seconds']:.0f} s"
        lines.append(f"  {name:<20} last success {stream['last_success']}  lag {lag}")
        if stream.get("last_error"):
            lines.append(f"  {'':<20} last error: {stream['last_error']}")
    lines.append("backfills:")
    if not status["backfills"]:
        lines.append("  (none)")
    for backfill_id, plan in status["backfills"].items():
        lines.append(
            f"  {backfill_id} ({plan['source']}): {plan['done']}/{plan['windows']} windows done, "
            f"{plan['missing']} missing, {plan['failed']} failed (planned {plan['created_at']})"
        )
    lightspeed = status.get("lightspeed") or {}
    if lightspeed.get("buckets") or lightspeed.get("clients"):
        lines.append("lightspeed:")
        for scope, model in lightspeed["buckets"].items():
            lines.append(
                f"  bucket {scope}: level {model.get('level', 0):g}/{model.get('size', 0):g}, "
                f"drip {model.get('drip', 0):g}/s"
            )
        for client_id, token in lightspeed["clients"].items():
            ttl = token["access_token_ttl_seconds"]
            refused = ""
            if token["refresh_token_refused"]:
                refused = " (REFUSED: re-authorise, see docs/operations.md)"
            lines.append(
                f"  client {client_id}: access token {'cached ' + str(ttl) + ' s' if ttl else 'none'}, "
                f"refresh token {'stored' if token['refresh_token_stored'] else 'as configured'}{refused}"
            )
    if status["dead_letters"]:
        lines.append("dead letters:")
        for letter in status["dead_letters"]:
            lines.append(
                f"  {letter['message_id']} {letter['actor']} ({letter['age_seconds']:.0f} s ago, "
                f"{letter['retries']} retries) {letter['error_type']}: {letter['error']}"
            )
    return "\n".join(lines)
