"""A legacy table migrated end to end: the migrations issue's acceptance, through ``possync`` commands.

The old system's ``square_payments`` (no partitioning, no clustering, FLOAT amounts) is rebuilt
from a real backfill, then ``possync migrate partition`` moves it through a ``possync worker
--queues migrations`` pool that is SIGKILLed after the copy step and restarted; syncs then write
into the new layout, and the warehouse still equals the sandbox's truth.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from google.cloud import bigquery

from tests.e2e.conftest import System
from tests.e2e.test_square_pipeline import _check, _since
from workers.sinks.bigquery import make_bigquery_client, query_rows

AMOUNTS = ("amount", "tip_amount", "total_amount", "refunded_amount")


def _table_id(system: System, table: str) -> str:
    return f"{system.settings.bigquery_project}.{system.settings.bigquery_dataset}.{table}"


def _ref(system: System, table: str) -> str:
    return f"`{_table_id(system, table)}`"


def _figures(client: bigquery.Client, ref: str) -> dict[str, Any]:
    sums = ", ".join(f"ROUND(CAST(SUM({name}) AS NUMERIC), 2) AS {name}" for name in AMOUNTS)
    query = (
        f"SELECT COUNT(*) AS rows, COUNT(DISTINCT id) AS ids, MIN(created_at) AS first, "
        f"MAX(created_at) AS last, {sums} FROM {ref}"
    )
    return query_rows(client, query)[0]


def _tables(client: bigquery.Client, system: System) -> set[str]:
    dataset = f"{system.settings.bigquery_project}.{system.settings.bigquery_dataset}"
    return {table.table_id for table in client.list_tables(dataset)}


def _migration(system: System) -> dict[str, Any]:
    found = json.loads(system.cli("migrate", "status", "--json", check=True).stdout)
    assert len(found) == 1, found
    migration: dict[str, Any] = found[0]
    return migration


def _steps(migration: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["step"]: step for step in migration["steps"]}


def _make_legacy(system: System, client: bigquery.Client) -> None:
    """Rebuild square_payments as the old system kept it: unpartitioned, unclustered, FLOAT amounts."""
    columns = [field.name for field in client.get_table(_table_id(system, "square_payments")).schema]
    select = ", ".join(f"CAST({name} AS FLOAT64) AS {name}" if name in AMOUNTS else name for name in columns)
    source = _ref(system, "square_payments")
    client.query(f"CREATE TABLE {_ref(system, 'legacy_payments')} AS SELECT {select} FROM {source}").result()
    client.query(f"DROP TABLE {_ref(system, 'square_payments')}").result()
    client.query(f"ALTER TABLE {_ref(system, 'legacy_payments')} RENAME TO square_payments").result()


@pytest.mark.slow
def test_a_legacy_payments_table_is_migrated_resumably_and_syncs_write_into_the_new_layout(
    make_system: Any,
) -> None:
    # Given 20,000 payments in a square_payments table the way the old system made it
    system = make_system(payments=20_000, customers=100, items=20)
    square = system.start_worker(processes=1, threads=4)
    system.cli("backfill", "square", "--since", _since(system), "--wait", "--timeout", "600", check=True)
    square.stop()
    client = make_bigquery_client(system.settings)
    _make_legacy(system, client)
    legacy = client.get_table(_table_id(system, "square_payments"))
    assert legacy.time_partitioning is None
    assert not legacy.clustering_fields
    assert [f.field_type for f in legacy.schema if f.name == "amount"] == ["FLOAT"]
    before = _figures(client, _ref(system, "square_payments"))
    assert before["rows"] == 20_000
    tables_before = _tables(client, system)
    migrations = system.start_worker(processes=1, threads=1, queues=("migrations",))

    # When a dry run is asked first
    dry = system.cli("migrate", "partition", "square_payments", "--dry-run", "--wait", check=True)

    # Then it reports the estimate and changes nothing
    plan = _steps(_migration(system))["plan"]
    assert plan["status"] == "done"
    assert plan["details"]["bytes"] > 0
    assert "$" in dry.stdout + dry.stderr or "usd" in json.dumps(plan["details"]).lower()
    assert _tables(client, system) - {"_possync_migrations"} == tables_before - {"_possync_migrations"}

    # When the migration copies, then its worker is killed and a new one resumes it
    system.cli("migrate", "partition", "square_payments", "--stop-after", "copy", "--wait", check=True)
    copied = _steps(_migration(system))
    assert copied["copy"]["status"] == "done"
    assert "swap" not in copied
    migrations.kill()
    system.start_worker(processes=1, threads=1, queues=("migrations",))
    system.cli("migrate", "partition", "square_payments", "--wait", "--timeout", "600", check=True)

    # Then it completed without a second copy and without a verify failure
    done = _steps(_migration(system))
    assert done["copy"]["finished_at"] == copied["copy"]["finished_at"]
    assert done["verify"]["status"] == "done"
    assert done["swap"]["status"] == "done"

    # And the table reports the new layout, with counts and sums identical, and the backup exists
    table = client.get_table(_table_id(system, "square_payments"))
    assert table.time_partitioning is not None
    assert (table.time_partitioning.type_, table.time_partitioning.field) == ("DAY", "created_at")
    assert table.clustering_fields == ["customer_id", "status"]
    assert _figures(client, _ref(system, "square_payments")) == before
    backups = [name for name in _tables(client, system) if name.startswith("square_payments__backup_")]
    assert len(backups) == 1
    assert _figures(client, _ref(system, backups[0])) == before

    # And an incremental sync right after writes into the new table and stays exact
    system.start_worker(processes=1, threads=4)
    advanced = httpx.post(
        f"{system.sandbox.base_url}/_sandbox/clock/advance",
        json={"seconds": 3600, "new_payments": 40, "changed_payments": 25},
        timeout=30,
    )
    advanced.raise_for_status()
    system.cli("sync", "square", "--wait", "--timeout", "300", check=True)
    check = _check(system)
    assert check.ok, check.summary()
    assert _figures(client, _ref(system, "square_payments"))["rows"] == 20_040

    # And the same migration again does nothing
    system.cli("migrate", "partition", "square_payments", "--wait", check=True)
    assert len([n for n in _tables(client, system) if n.startswith("square_payments__backup_")]) == 1
    assert _migration(system)["state"] == "done"
