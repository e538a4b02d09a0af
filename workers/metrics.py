"""possync's own Prometheus metrics, and how a worker pool exposes them.

Metrics are module-level objects on prometheus-client's default registry. Under ``possync
worker`` each Dramatiq process writes them to a shared multiprocess directory (set up by
:func:`workers.metrics_env.prepare_worker_metrics` in the parent, before any process imports
prometheus-client), and
Dramatiq's own :class:`~dramatiq.middleware.prometheus.Prometheus` middleware serves every
process's metrics, its message counters included, from one HTTP endpoint
(``POSSYNC_WORKER_METRICS_HOST``:``POSSYNC_WORKER_METRICS_PORT``, path ``/metrics``, any path
really). Label values are bounded sets (source system names); never an id, a URL or a secret.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = [
    "LIGHTSPEED_REFRESH_REFUSED",
    "LIGHTSPEED_TOKEN_REFRESHES",
    "MIGRATIONS",
    "MIGRATION_SECONDS",
    "SCHEDULER_TICKS",
    "SOURCE_RATE_LIMITED",
    "SOURCE_THROTTLE_SECONDS",
    "WEBHOOK_EVENTS",
]

LIGHTSPEED_TOKEN_REFRESHES = Counter(
    "possync_lightspeed_token_refreshes_total",
    "Lightspeed access tokens obtained with the refresh grant (one per expiry for the whole pool).",
)
LIGHTSPEED_REFRESH_REFUSED = Counter(
    "possync_lightspeed_refresh_refused_total",
    "Lightspeed refresh tokens refused for good (invalid_grant): an operator must re-authorise.",
)
SOURCE_RATE_LIMITED = Counter(
    "possync_source_rate_limited_total",
    "429 answers received from a source API.",
    ["system"],
)
SOURCE_THROTTLE_SECONDS = Counter(
    "possync_source_throttle_seconds_total",
    "Seconds requests waited for room in a source's shared rate-limit bucket before being sent.",
    ["system"],
)
WEBHOOK_EVENTS = Counter(
    "possync_webhook_events_total",
    "Webhook requests by provider (notion, square) and outcome: accepted, duplicate, handshake,"
    " bad_signature, malformed, too_large, unknown_type, unavailable.",
    ["provider", "outcome"],
)
SCHEDULER_TICKS = Counter(
    "possync_scheduler_ticks_total",
    "Scheduler ticks by source, stream and outcome: enqueued (this replica claimed the tick and sent"
    " a sync), coalesced (claimed, but the stream's last sync is still queued or running), taken"
    " (another replica claimed it), error (Redis failed during the tick; retried).",
    ["source", "stream", "outcome"],
)
MIGRATIONS = Counter(
    "possync_migrations_total",
    "Table migrations by table and outcome: started, succeeded (swapped, or already in the layout),"
    " failed (verify found differences, or a permanent error), planned (a dry run).",
    ["table", "outcome"],
)
MIGRATION_SECONDS = Histogram(
    "possync_migration_duration_seconds",
    "Wall time of one migration message, seconds, by table and outcome.",
    ["table", "outcome"],
    buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600),
)
