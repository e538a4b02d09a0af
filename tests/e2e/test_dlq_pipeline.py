"""Dead letters end to end: a revoked Square token dead-letters a backfill's windows; once the token
is restored, ``possync dlq replay --all --wait`` brings the warehouse to exactly the sandbox's
ground truth, and replaying the same work again changes nothing.

Real processes throughout: a Redis server, the BigQuery emulator, the Square sandbox, a ``possync
worker`` pool, and ``possync`` commands run as a user runs them.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import redis

from sandbox.truth_check import check_warehouse, fetch_truth
from tests.e2e.conftest import System
from workers.broker import DEAD_KEY
from workers.sinks.bigquery import make_bigquery_client

#: The tables a Square backfill writes, with their keys.
TABLE_KEYS = (("square_payments", "id"), ("square_items", "variation_id"), ("square_customers", "id"))


def _since(system: System) -> str:
    now = datetime.fromisoformat(str(system.sandbox.admin.info()["now"]).replace("Z", "+00:00"))
    return (now - timedelta(days=2 * 365 + 30)).isoformat()


def _check(system: System) -> Any:
    return check_warehouse(
        make_bigquery_client(system.settings),
        project=system.settings.require_bigquery(),
        dataset=system.settings.bigquery_dataset,
        truth=fetch_truth(system.sandbox.base_url),
    )


def _snapshot(system: System) -> dict[str, list[dict[str, Any]]]:
    client = make_bigquery_client(system.settings)
    prefix = f"{system.settings.bigquery_project}.{system.settings.bigquery_dataset}"
    return {
        table: [
            dict(row.items())
            for row in client.query(f"SELECT * FROM `{prefix}.{table}` ORDER BY {key}").result()
        ]
        for table, key in TABLE_KEYS
    }


def _dead_letters(system: System) -> list[dict[str, Any]]:
    letters: list[dict[str, Any]] = json.loads(system.cli("dlq", "list", "--json", check=True).stdout)
    return letters


def _raw_dead_letters(client: redis.Redis) -> dict[str, Any]:
    """The square queue's dead letters exactly as Redis holds them (Dramatiq's and possync's keys)."""
    entries: list[Any] = list(client.zrange("dramatiq:square.XQ", 0, -1, withscores=True))
    return {
        "scores": {member: score for member, score in entries},
        "bodies": client.hgetall("dramatiq:square.XQ.msgs"),
        "errors": client.hgetall(DEAD_KEY.format(queue="square")),
    }


def _put_back(client: redis.Redis, raw: dict[str, Any]) -> None:
    """Leave the dead letters as a replayer that crashed after enqueuing, before removing, would."""
    client.zadd("dramatiq:square.XQ", raw["scores"])
    client.hset("dramatiq:square.XQ.msgs", mapping=raw["bodies"])
    client.hset(DEAD_KEY.format(queue="square"), mapping=raw["errors"])


def test_a_revoked_token_s_dead_letters_are_replayed_and_the_warehouse_ends_exact(make_system: Any) -> None:
    # Given 3,000 payments, a revoked token at the sandbox, and a pool told the location ids (so the
    # plan itself asks Square nothing and every window of the backfill meets the 401)
    system = make_system(payments=3_000)
    locations = system.sandbox.admin.info()["locations"]
    system.sandbox.admin.set_faults(token_revoked=True)
    system.start_worker(processes=1, threads=4, POSSYNC_SQUARE_LOCATION_IDS=",".join(locations))

    # When the full history is backfilled
    backfill = system.cli("backfill", "square", "--since", _since(system), "--wait", "--timeout", "120")

    # Then the backfill fails and every window is a dead letter, refused once with the 401
    assert backfill.returncode == 1, backfill.stderr + backfill.stdout
    plan = next(iter(system.status()["backfills"].values()))
    letters = _dead_letters(system)
    assert len(letters) == plan["windows"] == plan["failed"] > len(locations)
    assert {letter["actor"] for letter in letters} == {"backfill_square_window"}
    assert {letter["error_type"] for letter in letters} == {"SourceAuthError"}
    assert all("401" in letter["error"] and letter["retries"] == 0 for letter in letters)
    shown = system.cli("dlq", "show", letters[0]["message_id"], check=True).stdout
    assert '"window_id": ' in shown
    assert system.settings.require_square().get_secret_value() not in shown

    # When the token is restored and every dead letter is replayed, followed to its end
    client = redis.Redis.from_url(system.settings.redis_url)
    raw = _raw_dead_letters(client)
    system.sandbox.admin.set_faults(token_revoked=False)
    replay = system.cli("dlq", "replay", "--all", "--wait", "--timeout", "180")

    # Then every replayed window is done, no dead letter is left, and the warehouse equals the truth
    assert replay.returncode == 0, replay.stderr + replay.stdout
    summary = json.loads(replay.stdout)
    assert (summary["messages"], summary["done"], summary["dead"]) == (len(letters), len(letters), 0)
    assert _dead_letters(system) == []
    assert system.status()["queues"]["square"]["dead"] == 0
    plan = next(iter(system.status()["backfills"].values()))
    assert (plan["missing"], plan["failed"]) == (0, 0)
    report = _check(system)
    assert report.ok, report.summary()
    before = _snapshot(system)

    # When the same ids are replayed again
    again = system.cli("dlq", "replay", *[letter["message_id"] for letter in letters])

    # Then it is a clear error and nothing is enqueued
    assert again.returncode == 2
    assert "no dead letter" in again.stderr
    assert system.status()["queues"]["square"] == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}

    # When a replay had crashed between enqueuing and removing (the dead letters still there), and
    # they are replayed once more: every window runs a second time
    _put_back(client, raw)
    assert len(_dead_letters(system)) == len(letters)
    twice = system.cli("dlq", "replay", "--all", "--wait", "--timeout", "180")

    # Then the warehouse is still exact, every row byte-identical (_synced_at included), none left
    assert twice.returncode == 0, twice.stderr + twice.stdout
    assert json.loads(twice.stdout)["done"] == len(letters)
    assert _dead_letters(system) == []
    report = _check(system)
    assert report.ok, report.summary()
    after = _snapshot(system)
    for table, _ in TABLE_KEYS:
        assert len(after[table]) == len(before[table]) > 0
        assert after[table] == before[table], f"{table} changed when replayed twice"
    assert system.settings.require_square().get_secret_value() not in system.logs()
