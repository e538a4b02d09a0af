"""A real Prometheus server scrapes a worker pool, the scheduler and the webhook receiver during a sync.

The system runs as in production (Redis, the BigQuery emulator, the Square sandbox, ``possync
worker``, ``possync scheduler``, ``possync webhooks``), and a ``prometheus`` process (Debian's
``apt-get install prometheus``) scrapes the three every second. Everything is read back through
Prometheus's HTTP API, from samples scraped after the step they check, as a dashboard would.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import redis

from producers.waiting import wait_for_request
from producers.webhook_models import OUTCOMES
from sandbox.process import free_port
from sandbox.prometheus_server import PrometheusServer, Sample, ScrapeJob
from tests.e2e.conftest import System
from tests.e2e.test_producers_pipeline import _start_receiver
from tests.e2e.test_square_pipeline import _since
from tests.polling import wait_until
from workers.broker import REQUEST_KEY

WORKERS = "possync-workers"
SCHEDULER = "possync-scheduler"
WEBHOOKS = "possync-webhooks"
JOBS = (WORKERS, SCHEDULER, WEBHOOKS)
#: Deadline of each wait on Prometheus or the system, seconds: generous, for a loaded 2-core machine.
DEADLINE_SECONDS = 120.0
#: How far ahead the scheduler's one tick is set, seconds: it must still be ahead once the scheduler
#: is up (a few seconds of start-up, more under load).
TICK_AHEAD_SECONDS = 20
#: A Square endpoint template: ``/v2/...`` path segments, with ids replaced by ``{id}``.
ENDPOINT_TEMPLATE = re.compile(r"/v2(/([a-z_]+|\{id\}))+")

StartPrometheus = Callable[[Sequence[ScrapeJob]], PrometheusServer]


@pytest.fixture
def start_prometheus() -> Iterator[StartPrometheus]:
    """Factory: a Prometheus server scraping these jobs every second; stopped after the test."""
    servers: list[PrometheusServer] = []

    def start(jobs: Sequence[ScrapeJob]) -> PrometheusServer:
        server = PrometheusServer.start(jobs, scrape_interval_seconds=1.0)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def _fresh(
    server: PrometheusServer, selector: str, *, after: float, jobs: Collection[str] = JOBS
) -> list[Sample]:
    """The series ``selector`` matches, once each of ``jobs`` shows them from a scrape after ``after``.

    Only freshness is waited for; the values are the caller's to assert, so a wrong value fails at
    once instead of being polled away.
    """

    def scraped() -> list[Sample]:
        samples = server.client.scraped(selector)
        shown = {sample.labels.get("job") for sample in samples}
        if set(jobs) <= shown and all(sample.timestamp > after for sample in samples):
            return samples
        return []

    return wait_until(
        scraped,
        timeout_seconds=DEADLINE_SECONDS,
        interval_seconds=0.25,
        message=f"Prometheus never had {selector} from {sorted(jobs)} scraped after the step it checks",
    )


def _by_job(samples: Sequence[Sample], *label_names: str) -> dict[tuple[str, ...], float]:
    """Values keyed by ``(job, *label values)``."""
    return {
        (sample.labels["job"], *(sample.labels[name] for name in label_names)): sample.value
        for sample in samples
    }


def _one_tick_cron(at: datetime) -> str:
    """Six cron fields (seconds last) that fire once, at ``at`` (to the second), this year."""
    return f"{at.minute} {at.hour} {at.day} {at.month} * {at.second}"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _host_port(url: str) -> str:
    parsed = httpx.URL(url)
    return f"{parsed.host}:{parsed.port}"


def test_prometheus_scrapes_pool_scheduler_and_receiver_during_a_sync(
    make_system: Callable[..., System], start_prometheus: StartPrometheus
) -> None:
    # Given a Square sandbox, and a scheduler whose only schedule (customers) ticks once, soon
    system = make_system(payments=2_000, customers=60, items=40)
    payments = len(system.sandbox.admin.truth("payments"))
    tick = (datetime.now(UTC) + timedelta(seconds=TICK_AHEAD_SECONDS)).replace(microsecond=0)
    scheduler_port = free_port()
    system.start_command(
        "scheduler",
        "scheduler",
        POSSYNC_SCHEDULER_METRICS_PORT=str(scheduler_port),
        POSSYNC_SCHEDULES=json.dumps({"square.customers": _one_tick_cron(tick)}),
    )
    # It serves /metrics just before its first look at the clock: once that answers, the tick is
    # known to be ahead of it, or it never comes (a first start begins at the next tick).
    wait_until(
        lambda: _answers(f"http://127.0.0.1:{scheduler_port}/metrics"),
        timeout_seconds=DEADLINE_SECONDS,
        interval_seconds=0.2,
        message="the scheduler never served /metrics",
    )
    assert datetime.now(UTC) < tick - timedelta(seconds=1), "the scheduler came up after its tick"
    # And the webhook receiver (Square configured), and a worker pool of two processes
    receiver = _start_receiver(
        system,
        POSSYNC_SQUARE_WEBHOOK_SIGNATURE_KEY="e2e-square-signature-key",
        POSSYNC_SQUARE_WEBHOOK_URL="https://shop.example/webhooks/square",
    )
    pool = system.start_worker(processes=2, threads=4)
    # And Prometheus scraping the three every second
    prometheus = start_prometheus(
        [
            ScrapeJob(WORKERS, (_host_port(pool.metrics_url),), labels={"pool": "square"}),
            ScrapeJob(SCHEDULER, (f"127.0.0.1:{scheduler_port}",)),
            ScrapeJob(WEBHOOKS, (_host_port(receiver),)),
        ]
    )
    prometheus.client.wait_for_targets_up(JOBS, timeout_seconds=DEADLINE_SECONDS)

    # When a forged Square webhook arrives (refused), and the full history is backfilled
    forged = httpx.post(
        f"{receiver}/webhooks/square",
        content=b'{"type": "payment.updated"}',
        headers={"x-square-hmacsha256-signature": "forged"},
        timeout=10,
    )
    assert forged.status_code == 401, forged.text
    backfill = system.cli("backfill", "square", "--since", _since(system), "--wait", "--timeout", "300")
    assert backfill.returncode == 0, backfill.stderr + backfill.stdout
    backfilled = time.time()

    # Then every job shows exactly the sandbox's payments as rows synced: the count lives in Redis,
    # so the pool, the scheduler and the receiver show the same total (queries take max, not sum)
    rows = _fresh(prometheus, 'possync_rows_synced_total{table="square_payments"}', after=backfilled)
    assert _by_job(rows) == {(job,): payments for job in JOBS}

    # When an incremental sync runs, and the scheduler's tick has come and its sync finished
    synced = system.cli("sync", "square", "--wait", "--timeout", "300")
    assert synced.returncode == 0, synced.stderr + synced.stdout
    tick_request = f"tick-square.customers-{tick.strftime('%Y%m%dT%H%M%SZ')}"
    client = redis.Redis.from_url(system.settings.redis_url)
    wait_until(
        lambda: client.exists(REQUEST_KEY.format(request_id=tick_request)),
        timeout_seconds=DEADLINE_SECONDS,
        interval_seconds=0.25,
        message=f"the scheduler never enqueued {tick_request}",
    )
    assert wait_for_request(client, tick_request, timeout_seconds=DEADLINE_SECONDS).dead == 0
    client.close()
    ended = time.time()

    # Then all three targets are up and scraped since
    prometheus.client.wait_for_targets_up(JOBS, timeout_seconds=DEADLINE_SECONDS, scraped_after=ended)

    # And rows synced doubled: a backfill sets no checkpoint, so the first incremental reads the
    # whole history again (every payment, once more)
    rows = _fresh(prometheus, 'possync_rows_synced_total{table="square_payments"}', after=ended)
    assert _by_job(rows) == {(job,): 2 * payments for job in JOBS}
    assert prometheus.client.query('max(possync_rows_synced_total{table="square_payments"})')[0].value == (
        2 * payments
    )

    # And each synced stream's lag is shown by every job, and small
    lag = _by_job(_fresh(prometheus, 'possync_sync_lag_seconds{source="square"}', after=ended), "stream")
    assert set(lag) == {(job, stream) for job in JOBS for stream in ("payments", "items", "customers")}
    assert all(0 <= seconds < 60 for seconds in lag.values()), lag
    last = _fresh(prometheus, 'possync_last_successful_sync_timestamp_seconds{source="square"}', after=ended)
    assert all(ended - 60 < sample.value <= ended for sample in last), last

    # And the square queue is drained, as every job reports, with live consumers and no dead letters
    depth = _by_job(_fresh(prometheus, 'possync_queue_messages{queue="square"}', after=ended), "state")
    assert set(depth) == {(job, state) for job in JOBS for state in ("ready", "delayed", "in_flight")}
    assert all(depth[(job, "ready")] == 0 and depth[(job, "delayed")] == 0 for job in JOBS), depth
    consumers = _by_job(_fresh(prometheus, 'possync_queue_consumers{queue="square"}', after=ended))
    assert set(consumers) == {(job,) for job in JOBS}
    assert all(count >= 1 for count in consumers.values()), consumers
    dead = _by_job(_fresh(prometheus, 'possync_dead_letters{queue="square"}', after=ended))
    assert dead == {(job,): 0 for job in JOBS}
    state_up = _by_job(_fresh(prometheus, "possync_state_up", after=ended))
    assert state_up == {(job,): 1 for job in JOBS}

    # And the pool's processes counted Dramatiq's messages for each square actor, under pool="square"
    messages = _fresh(prometheus, 'dramatiq_messages_total{queue_name="square"}', after=ended, jobs=[WORKERS])
    assert {sample.labels["pool"] for sample in messages} == {"square"}
    counted = {sample.labels["actor_name"]: sample.value for sample in messages}
    backfill_messages = json.loads(backfill.stdout)["messages"]
    assert counted.get("plan_square_backfill", 0) >= 1, counted
    assert counted.get("backfill_square_window", 0) >= backfill_messages - 1, counted
    assert counted.get("sync_square_stream", 0) >= json.loads(synced.stdout)["messages"] + 1, counted

    # And the requests to Square, by endpoint template, all answered 2xx
    requests = _fresh(
        prometheus,
        'possync_source_request_duration_seconds_count{system="square"}',
        after=ended,
        jobs=[WORKERS],
    )
    endpoints = {sample.labels["endpoint"] for sample in requests}
    assert {"/v2/locations", "/v2/payments", "/v2/customers", "/v2/catalog/search"} <= endpoints
    assert all(ENDPOINT_TEMPLATE.fullmatch(endpoint) for endpoint in endpoints), endpoints
    assert {sample.labels["status_class"] for sample in requests} == {"2xx"}
    assert sum(sample.value for sample in requests) > 0

    # And BigQuery merges were timed
    merges = _fresh(
        prometheus,
        'possync_bigquery_job_duration_seconds_count{kind="merge",table="square_payments"}',
        after=ended,
        jobs=[WORKERS],
    )
    assert sum(sample.value for sample in merges) > 0

    # And the scheduler counted its one tick, and the receiver the forged webhook
    ticks = _by_job(
        _fresh(prometheus, "possync_scheduler_ticks_total", after=ended, jobs=[SCHEDULER]),
        "source",
        "stream",
        "outcome",
    )
    assert ticks == {
        (SCHEDULER, "square", "customers", "enqueued"): 1,
        (SCHEDULER, "square", "customers", "coalesced"): 0,
        (SCHEDULER, "square", "customers", "taken"): 0,
    }
    events = _by_job(
        _fresh(prometheus, "possync_webhook_events_total", after=ended, jobs=[WEBHOOKS]),
        "provider",
        "outcome",
    )
    # (every provider and outcome exists from the start, at 0, so a first event is seen by increase())
    assert {key: value for key, value in events.items() if key[0] == WEBHOOKS} == {
        (WEBHOOKS, provider, outcome): 1 if (provider, outcome) == ("square", "bad_signature") else 0
        for provider in ("notion", "square")
        for outcome in OUTCOMES
    }
