"""The demo's last phase: one incremental sync of every stream, then every process's ``/metrics`` read back.

After the backfill and the webhooks, the demo runs what the scheduler would run every 15 minutes
(an incremental sync of each stream of each source), so each stream has a last successful sync and
therefore a lag. It then fetches each process's ``/metrics`` (the worker pool, both scheduler
replicas, the webhook receiver) and checks that each shows queue depth, sync lag and rows synced.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from producers.enqueue import enqueue, new_request_id
from producers.waiting import wait_for_request
from schemas.messages import SOURCE_STREAMS, SyncRequest, routes_for
from schemas.settings import Settings
from workers.broker import build_broker

__all__ = ["REQUIRED_SERIES", "check_metrics", "sync_every_stream"]

#: What each process's ``/metrics`` must show: queue depth, sync lag and rows synced.
REQUIRED_SERIES = ("possync_queue_messages", "possync_sync_lag_seconds", "possync_rows_synced_total")

#: How long the incremental round may take, seconds.
SYNC_TIMEOUT_SECONDS = 600


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def sync_every_stream(settings: Settings, sources: tuple[str, ...] = ("square", "lightspeed")) -> int:
    """Enqueue an incremental sync of every stream of ``sources`` and wait for them; 0 if none died."""
    broker = build_broker(settings)
    client = redis.Redis.from_url(settings.redis_url)
    try:
        request_id = new_request_id("sync")
        for source in sources:
            for stream in SOURCE_STREAMS[source]:
                enqueue(
                    broker,
                    routes_for(source).sync,
                    SyncRequest(request_id=request_id, source=source, stream=stream),
                )
        started = time.monotonic()
        final = wait_for_request(client, request_id, poll_seconds=0.5, timeout_seconds=SYNC_TIMEOUT_SECONDS)
        _say(
            f"incremental sync of every stream: {final.done} messages done, {final.dead} dead, "
            f"{time.monotonic() - started:.1f} s"
        )
        return 1 if final.dead else 0
    finally:
        broker.close()
        client.close()


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def check_metrics(endpoints: Mapping[str, str], *, timeout_seconds: float = 10) -> bool:
    """Fetch each ``/metrics`` and check it shows :data:`REQUIRED_SERIES`; print what each shows.

    Args:
        endpoints: process description -> ``/metrics`` URL.
        timeout_seconds: per request.

    Returns:
        True if every endpoint answered and showed every required series.
    """
    good = True
    for name, url in endpoints.items():
        try:
            response = httpx.get(url, timeout=timeout_seconds)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            _say(f"  {name} {url}: no answer ({type(exc).__name__}: {exc})")
            good = False
            continue
        samples = _samples(response.text)
        missing = [series for series in REQUIRED_SERIES if not samples.get(series)]
        rows = {labels["table"]: int(value) for labels, value in samples.get("possync_rows_synced_total", [])}
        ready = sum(
            value for labels, value in samples.get("possync_queue_messages", []) if labels["state"] == "ready"
        )
        lag = max((value for _labels, value in samples.get("possync_sync_lag_seconds", [])), default=None)
        shown = (
            f"queue depth (ready {ready:.0f}), max lag {lag:.1f} s, rows synced "
            + ", ".join(f"{table} {count:,}" for table, count in sorted(rows.items()))
            if not missing and lag is not None
            else f"missing {', '.join(missing)}"
        )
        _say(f"  {name} {url}: {shown}")
        good = good and not missing
    return good
