"""Lightspeed to BigQuery end to end: the issue's acceptance, driven only through ``possync`` commands.

Real processes throughout: a Redis server, the BigQuery emulator, the Lightspeed sandbox (its own
leaky bucket, expiring access tokens and rotating refresh tokens) and ``possync worker`` pools on
the ``lightspeed`` queue. Pacing and refreshes are judged by what the sandbox measured, the
warehouse by the sandbox's ground truth.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from sandbox.truth_lightspeed import check_lightspeed_warehouse, fetch_lightspeed_truth
from tests.e2e.conftest import LIGHTSPEED_REFRESH, LIGHTSPEED_SECRET, System
from tests.polling import wait_until
from workers.sinks.bigquery import make_bigquery_client

#: Access tokens live this long in the pacing runs, seconds: several expiries per run.
TOKEN_LIFETIME_SECONDS = 4.0
_TABLE_KEYS = (("lightspeed_transactions", "saleID"), ("lightspeed_products", "itemID"))


def _admin(system: System, path: str, **body: Any) -> dict[str, Any]:
    url = f"{system.sandbox.base_url}/_sandbox/{path}"
    response = httpx.post(url, json=body, timeout=30) if body else httpx.get(url, timeout=30)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def _since(system: System) -> str:
    now = datetime.fromisoformat(str(_admin(system, "info")["now"]).replace("Z", "+00:00"))
    return (now - timedelta(days=400)).isoformat()


def _check(system: System) -> Any:
    return check_lightspeed_warehouse(
        make_bigquery_client(system.settings),
        project=system.settings.require_bigquery(),
        dataset=system.settings.bigquery_dataset,
        truth=fetch_lightspeed_truth(system.sandbox.base_url),
    )


def _snapshot(system: System, table: str, key: str) -> list[dict[str, Any]]:
    client = make_bigquery_client(system.settings)
    ref = f"`{system.settings.bigquery_project}.{system.settings.bigquery_dataset}.{table}`"
    return [dict(row.items()) for row in client.query(f"SELECT * FROM {ref} ORDER BY {key}").result()]


@pytest.mark.slow
@pytest.mark.parametrize("drip_rate", [2.0, 5.0])
def test_a_pool_backfills_paced_by_the_bucket_headers_with_one_refresh_per_expiry(
    make_system: Any, drip_rate: float
) -> None:
    # Given 5,000 sales and 1,000 items behind a small bucket (10 drips, draining drip_rate/s),
    # access tokens that expire every few seconds and refresh tokens that rotate on every refresh
    system = make_system(
        source="lightspeed",
        sales=5_000,
        items=1_000,
        bucket_size=10,
        drip_rate=drip_rate,
        access_token_lifetime_seconds=TOKEN_LIFETIME_SECONDS,
        rotate_refresh_tokens=True,
    )
    system.start_worker(queues=("lightspeed",), processes=2, threads=4)

    # When the whole history is backfilled by 2 processes x 4 threads
    result = system.cli("backfill", "lightspeed", "--since", _since(system), "--wait", timeout=600)

    # Then it succeeds and the warehouse equals the ground truth
    assert result.returncode == 0, result.stderr + result.stdout + system.logs()[-4000:]
    check = _check(system)
    assert check.ok, check.summary()

    # And the sandbox answered no 429 after the first second, and after the first bucket's worth of
    # requests it measured a rate between 80% and 100% of the drip rate
    stats = _admin(system, "stats")
    pacing = stats["pacing"]
    assert pacing["requests"] >= 60  # 50 pages of sales and 10 of items at least
    assert pacing["rate_limited_after_first_second"] == 0, pacing
    after = pacing["after_first_bucket"]
    assert after["seconds"] > 5, pacing
    assert 0.80 <= after["ratio_to_drip_rate"] <= 1.00, pacing

    # And each expiry of the access token caused exactly one refresh for the whole pool: refreshes
    # came one token lifetime apart (none while the last token was still fresh), and there were as
    # many as the run's length needs
    refresh = stats["refresh"]
    assert refresh["early"] == 0, refresh
    assert refresh["min_interval_seconds"] >= 0.75 * TOKEN_LIFETIME_SECONDS, refresh
    assert refresh["count"] >= after["seconds"] // TOKEN_LIFETIME_SECONDS, refresh

    # And `possync status` shows the bucket the pool learnt from the headers, and a rotated refresh
    # token stored, never a token itself
    status = system.status()
    [bucket] = status["lightspeed"]["buckets"].values()
    assert (bucket["size"], bucket["drip"]) == (10, drip_rate)
    assert status["lightspeed"]["clients"]["sandbox-client"]["refresh_token_stored"] is True
    assert LIGHTSPEED_REFRESH not in str(status)


def test_a_revoked_refresh_token_dead_letters_once_with_a_metric_and_spares_the_token_endpoint(
    make_system: Any,
) -> None:
    # Given a pool on the lightspeed queue and a sandbox that revoked the configured refresh token
    system = make_system(source="lightspeed", sales=300, items=50)
    _admin(system, "faults", revoke_refresh_token=True)
    pool = system.start_worker(queues=("lightspeed",), processes=2, threads=2)

    # When both streams are synced
    result = system.cli("sync", "lightspeed", "--wait", "--timeout", "120", timeout=180)

    # Then the command fails, listing a dead letter per stream that says how to re-authorise
    assert result.returncode == 1, result.stderr + result.stdout
    status = system.status()
    letters = [letter for letter in status["dead_letters"] if letter["actor"] == "sync_lightspeed_stream"]
    assert len(letters) == 2, status["dead_letters"]
    assert all("re-authorise" in letter["error"] for letter in letters), letters
    assert status["queues"]["lightspeed"]["dead"] == 2
    assert status["lightspeed"]["clients"]["sandbox-client"]["refresh_token_refused"] is True

    # And the token endpoint was asked once for the whole pool: the refusal is remembered
    stats = _admin(system, "stats")
    assert stats["requests"].get("POST /auth/oauth/token") == {"400": 1}, stats["requests"]
    assert stats["pacing"]["requests"] == 0

    # And the pool's metrics count the refusal and the dead letters
    def refusal_counted() -> str:
        try:
            body = httpx.get(pool.metrics_url, timeout=5).text
        except httpx.TransportError:
            return ""  # the pool's metrics endpoint is still starting
        return body if "possync_lightspeed_refresh_refused_total 1.0" in body else ""

    text = wait_until(refusal_counted, timeout_seconds=30, message="the refusal never reached the metrics")
    assert "possync_lightspeed_refresh_refused_total 1.0" in text
    assert (
        'dramatiq_message_rejects_total{actor_name="sync_lightspeed_stream",queue_name="lightspeed"} 2.0'
        in text
    )

    # And one log line tells the operator what to do, without any secret
    logs = system.logs()
    assert "lightspeed_refresh_token_refused" in logs
    assert LIGHTSPEED_REFRESH not in logs
    assert LIGHTSPEED_SECRET not in logs


def test_a_resync_changes_nothing_and_the_next_sync_brings_a_changed_sale_up_to_date(
    make_system: Any,
) -> None:
    # Given a generous bucket, a pool, and a first full incremental sync
    system = make_system(source="lightspeed", sales=2_000, items=300, bucket_size=90, drip_rate=50)
    system.start_worker(queues=("lightspeed",), processes=1, threads=4)
    first = system.cli("sync", "lightspeed", "--wait", timeout=300)
    assert first.returncode == 0, first.stderr + first.stdout
    assert _check(system).ok

    # When the sync runs again with nothing changed
    before = {table: _snapshot(system, table, key) for table, key in _TABLE_KEYS}
    again = system.cli("sync", "lightspeed", "--wait", timeout=300)
    assert again.returncode == 0, again.stderr + again.stdout

    # Then every row is identical, _synced_at included
    after = {table: _snapshot(system, table, key) for table, key in _TABLE_KEYS}
    for table, _ in _TABLE_KEYS:
        assert len(after[table]) == len(before[table]) > 0
        assert after[table] == before[table], f"{table} changed on a re-run"

    # When sales change, new ones are rung up and prices move at the source
    changes = _admin(system, "clock/advance", seconds=600, new_sales=7, changed_sales=12, changed_items=5)
    assert len(changes["changed"]) == 12
    synced = system.cli("sync", "lightspeed", "--wait", timeout=300)
    assert synced.returncode == 0, synced.stderr + synced.stdout

    # Then the warehouse shows their latest values, exactly the truth's
    check = _check(system)
    assert check.ok, check.summary()
    rows = {row["saleID"]: row for row in _snapshot(system, "lightspeed_transactions", "saleID")}
    assert len(rows) == 2_007
    changed_id = changes["changed"][0]
    assert rows[changed_id]["completed"] is True
    assert rows[changed_id]["_synced_at"] > before["lightspeed_transactions"][0]["_synced_at"]
