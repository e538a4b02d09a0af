"""possync's own Prometheus metrics: every name a dashboard or an alert may use, defined here.

Two kinds:

- **Process metrics** are module-level objects on prometheus-client's default registry, counted by
  the process that did the work. Under ``possync worker`` each Dramatiq process writes them to a
  shared multiprocess directory (set up by :func:`workers.metrics_env.prepare_worker_metrics` in the
  parent, before any process imports prometheus-client), and the pool's one endpoint sums them with
  Dramatiq's own ``dramatiq_*`` message metrics (:mod:`workers.metrics_server`).
- **Pipeline state** (queue and dead-letter depth, live consumers, sync lag, last successful sync,
  rows synced per table) is read from Redis at scrape time by
  :class:`workers.metrics_state.PipelineStateCollector`, which every process registers: the worker
  pools, the scheduler and the webhook receiver all show the same values, so queries take
  ``max by (...)`` across them.

Label values come from small fixed sets (system, endpoint template, status class, table, queue,
stream, outcome); never an id, a URL with ids in it, or a secret. Units are base units: seconds,
bytes, dollars. Dramatiq's exporter keeps its own names and milliseconds (:data:`DRAMATIQ_METRICS`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import Counter, Histogram
from prometheus_client.metrics import MetricWrapperBase

__all__ = [
    "BIGQUERY_BYTES_BILLED",
    "BIGQUERY_COST_DOLLARS",
    "BIGQUERY_JOB_SECONDS",
    "BIGQUERY_ROWS",
    "BYTES_PER_TIB",
    "DRAMATIQ_METRICS",
    "LIGHTSPEED_REFRESH_FAILURES",
    "LIGHTSPEED_REFRESH_REFUSED",
    "LIGHTSPEED_TOKEN_REFRESHES",
    "MIGRATIONS",
    "MIGRATION_SECONDS",
    "ROWS_REJECTED",
    "SCHEDULER_TICKS",
    "SOURCE_AUTH_FAILURES",
    "SOURCE_RATE_LIMITED",
    "SOURCE_REQUEST_SECONDS",
    "SOURCE_SYSTEMS",
    "SOURCE_THROTTLE_SECONDS",
    "STATE_METRICS",
    "WEBHOOK_EVENTS",
    "MetricInfo",
    "exported_series",
    "metric_families",
    "observe_bigquery_job",
]

# Sources.

SOURCE_REQUEST_SECONDS = Histogram(
    "possync_source_request_duration_seconds",
    "Time from sending a request to a source API to its response headers, seconds, by system"
    " (square, lightspeed, notion), endpoint template (ids replaced by {id}) and status class"
    " (2xx, 3xx, 4xx, 5xx, or error when no response came).",
    ["system", "endpoint", "status_class"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
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
SOURCE_AUTH_FAILURES = Counter(
    "possync_source_auth_failures_total",
    "401 and 403 answers from a source API: a revoked or expired credential (messages dead-letter).",
    ["system"],
)
LIGHTSPEED_TOKEN_REFRESHES = Counter(
    "possync_lightspeed_token_refreshes_total",
    "Lightspeed access tokens obtained with the refresh grant (one per expiry for the whole pool).",
)
LIGHTSPEED_REFRESH_REFUSED = Counter(
    "possync_lightspeed_refresh_refused_total",
    "Lightspeed refresh tokens refused for good (invalid_grant): an operator must re-authorise.",
)
LIGHTSPEED_REFRESH_FAILURES = Counter(
    "possync_lightspeed_refresh_failures_total",
    "Lightspeed refresh attempts that failed for any reason (refused, token endpoint down, bad answer).",
)

# The warehouse.

ROWS_REJECTED = Counter(
    "possync_rows_rejected_total",
    "Source records that failed validation and went to _possync_rejects, by the table they were for.",
    ["table"],
)
BIGQUERY_JOB_SECONDS = Histogram(
    "possync_bigquery_job_duration_seconds",
    "Wall time of a BigQuery job from creation to completion, seconds, by kind (load, merge, query)"
    " and table.",
    ["kind", "table"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
BIGQUERY_ROWS = Counter(
    "possync_bigquery_rows_total",
    "Rows a BigQuery job reported: output rows of a load, rows inserted or updated by a merge.",
    ["kind", "table"],
)
BIGQUERY_BYTES_BILLED = Counter(
    "possync_bigquery_bytes_billed_total",
    "Bytes billed by BigQuery jobs, as the API reports them (load jobs are free), bytes.",
    ["kind", "table"],
)
BIGQUERY_COST_DOLLARS = Counter(
    "possync_bigquery_cost_dollars_total",
    "Estimated on-demand cost of BigQuery jobs: bytes billed times POSSYNC_BIGQUERY_USD_PER_TIB, dollars.",
    ["kind", "table"],
)

# Producers.

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

# Migrations.

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


#: Label values created at import, so each series exists at 0 before its first event: ``increase()``
#: cannot see the first increment of a series that appears at 1. (The receiver does the same for its
#: webhook outcomes.)
SOURCE_SYSTEMS = ("square", "lightspeed", "notion")
for _system in SOURCE_SYSTEMS:
    for _metric in (SOURCE_RATE_LIMITED, SOURCE_THROTTLE_SECONDS, SOURCE_AUTH_FAILURES):
        _metric.labels(_system)


@dataclass(frozen=True)
class MetricInfo:
    """A metric family as Prometheus sees it.

    Attributes:
        name: the family name (counters without ``_total``, as prometheus-client names them).
        kind: ``counter``, ``gauge`` or ``histogram``.
        documentation: the HELP text.
        labels: label names.
    """

    name: str
    kind: str
    documentation: str
    labels: tuple[str, ...] = ()

    def series(self) -> frozenset[str]:
        """The series names this family exposes (``_total``, ``_bucket`` and the like)."""
        if self.kind == "counter":
            return frozenset({f"{self.name}_total", f"{self.name}_created"})
        if self.kind == "histogram":
            return frozenset(f"{self.name}{suffix}" for suffix in ("_bucket", "_sum", "_count", "_created"))
        return frozenset({self.name})


#: Read from Redis at scrape time by every process (:mod:`workers.metrics_state`).
STATE_METRICS: tuple[MetricInfo, ...] = (
    MetricInfo(
        "possync_queue_messages",
        "gauge",
        "Messages in a queue by state: ready (waiting for a worker), delayed (waiting for a retry"
        " time), in_flight (taken by a worker, live or killed, and not yet acknowledged).",
        ("queue", "state"),
    ),
    MetricInfo("possync_dead_letters", "gauge", "Dead-lettered messages in a queue.", ("queue",)),
    MetricInfo(
        "possync_dead_letter_oldest_age_seconds",
        "gauge",
        "Age of a queue's oldest dead letter, seconds (0 when there is none).",
        ("queue",),
    ),
    MetricInfo(
        "possync_queue_consumers",
        "gauge",
        "Worker processes consuming a queue whose heartbeat is fresh"
        " (POSSYNC_WORKER_HEARTBEAT_TIMEOUT_SECONDS).",
        ("queue",),
    ),
    MetricInfo(
        "possync_sync_lag_seconds",
        "gauge",
        "Now minus the start of the stream's last successful incremental sync, seconds: the"
        " pipeline's freshness, not how recently the shop sold something.",
        ("source", "stream"),
    ),
    MetricInfo(
        "possync_last_successful_sync_timestamp_seconds",
        "gauge",
        "Start of the stream's last successful incremental sync, Unix seconds.",
        ("source", "stream"),
    ),
    MetricInfo(
        "possync_rows_synced",
        "counter",
        "Rows of load-and-merge batches written to a warehouse table, by table, since Redis was"
        " created: counted in Redis by whichever worker wrote them, so every process shows the same"
        " total and it survives restarts. A redelivered batch whose MERGE had already run is not"
        " counted again.",
        ("table",),
    ),
    MetricInfo(
        "possync_state_up",
        "gauge",
        "1 if this scrape could read the pipeline state from Redis, else 0 (the state series are"
        " then absent).",
    ),
)

#: What Dramatiq's Prometheus middleware exports from every worker process (its names, milliseconds).
DRAMATIQ_METRICS: tuple[MetricInfo, ...] = (
    MetricInfo("dramatiq_messages", "counter", "Messages processed.", ("queue_name", "actor_name")),
    MetricInfo("dramatiq_message_errors", "counter", "Messages that raised.", ("queue_name", "actor_name")),
    MetricInfo("dramatiq_message_retries", "counter", "Messages retried.", ("queue_name", "actor_name")),
    MetricInfo(
        "dramatiq_message_rejects", "counter", "Messages dead-lettered.", ("queue_name", "actor_name")
    ),
    MetricInfo(
        "dramatiq_messages_inprogress", "gauge", "Messages in progress.", ("queue_name", "actor_name")
    ),
    MetricInfo(
        "dramatiq_delayed_messages_inprogress",
        "gauge",
        "Delayed messages held in memory.",
        ("queue_name", "actor_name"),
    ),
    MetricInfo(
        "dramatiq_message_duration_milliseconds",
        "histogram",
        "Time spent processing messages, milliseconds.",
        ("queue_name", "actor_name"),
    ),
)

_PROCESS_METRICS: tuple[MetricWrapperBase, ...] = (
    SOURCE_REQUEST_SECONDS,
    SOURCE_RATE_LIMITED,
    SOURCE_THROTTLE_SECONDS,
    SOURCE_AUTH_FAILURES,
    LIGHTSPEED_TOKEN_REFRESHES,
    LIGHTSPEED_REFRESH_REFUSED,
    LIGHTSPEED_REFRESH_FAILURES,
    ROWS_REJECTED,
    BIGQUERY_JOB_SECONDS,
    BIGQUERY_ROWS,
    BIGQUERY_BYTES_BILLED,
    BIGQUERY_COST_DOLLARS,
    WEBHOOK_EVENTS,
    SCHEDULER_TICKS,
    MIGRATIONS,
    MIGRATION_SECONDS,
)


def metric_families() -> Iterable[MetricInfo]:
    """Every metric family some possync process can expose: ours, the Redis state, Dramatiq's."""
    for metric in _PROCESS_METRICS:
        yield MetricInfo(
            metric._name,
            str(metric._type),
            metric._documentation,
            tuple(metric._labelnames),
        )
    yield from STATE_METRICS
    yield from DRAMATIQ_METRICS


def exported_series() -> frozenset[str]:
    """Every series name some possync process can expose: what dashboards and alerts may query."""
    return frozenset(name for info in metric_families() for name in info.series())


#: Bytes in a tebibyte: on-demand query pricing is per TiB billed.
BYTES_PER_TIB = 2**40


def observe_bigquery_job(
    kind: str,
    table: str,
    *,
    seconds: float,
    rows: int | None,
    bytes_billed: int | None,
    usd_per_tib: float,
) -> None:
    """Count one finished BigQuery job: duration, rows, bytes billed and their estimated cost.

    Args:
        kind: ``load``, ``merge`` or ``query``.
        table: the possync table the job was for (a staging table counts as its target).
        seconds: wall time from creating (or re-attaching to) the job to its completion.
        rows: rows the job reported, if any; a re-attached job passes ``None`` (counted when it ran).
        bytes_billed: bytes billed as the API reports it, if any (likewise).
        usd_per_tib: on-demand price per TiB billed, dollars.
    """
    BIGQUERY_JOB_SECONDS.labels(kind, table).observe(seconds)
    if rows:
        BIGQUERY_ROWS.labels(kind, table).inc(rows)
    if bytes_billed:
        BIGQUERY_BYTES_BILLED.labels(kind, table).inc(bytes_billed)
        BIGQUERY_COST_DOLLARS.labels(kind, table).inc(bytes_billed / BYTES_PER_TIB * usd_per_tib)
