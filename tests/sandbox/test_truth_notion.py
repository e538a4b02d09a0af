"""The Notion ground-truth check passes rows the worker's own conversion makes, and catches each bug.

A sandbox delivers events to a local receiver; the truth then lists the pages they named. Rows for
a correct warehouse are built the way the worker builds them (``NotionClient.get_page`` then
``page_row``; the purged page marked deleted from its last fetched state) and loaded into the real
emulator; each broken build changes what one classic bug changes and must fail with that difference.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import redis
from google.cloud import bigquery
from pydantic import SecretStr

from sandbox.process import SandboxProcess, start_notion_sandbox
from sandbox.truth_notion import CheckReport, check_notion_warehouse, fetch_notion_truth
from schemas.notion import NotionPage, page_row
from schemas.tables import NOTION_PAGES
from tests.polling import wait_until
from tests.sandbox.test_notion_api import Receiver
from workers.sources.notion import NotionClient

TOKEN = "notion-truth-test-token"
SECRET = "secret_notion-truth-test"
SYNCED_AT = datetime(2026, 3, 15, 13, 0, tzinfo=UTC)
PAGES = NOTION_PAGES.name
#: Differences other than the one a bug should cause.
OTHER_KINDS = ("missing", "duplicates", "unexpected", "mismatched", "schema")

Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class Scenario:
    """A sandbox after some delivered events, and what the test needs to know about them."""

    sandbox: SandboxProcess
    edited: str
    trashed: str
    purged: str
    #: The purged page as last served, before the purge (what the worker last fetched).
    purged_last_state: dict[str, Any]


def admin(sandbox: SandboxProcess, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = httpx.request(method, f"{sandbox.base_url}/_sandbox/{path}", json=body, timeout=10)
    response.raise_for_status()
    return response.json()


@pytest.fixture(scope="module")
def scenario() -> Iterator[Scenario]:
    """Events about a few pages, all delivered: an edit, a content change, a trash, a new page and
    a purge of a page edited before."""
    receiver = Receiver()
    with start_notion_sandbox(
        pages=15,
        seed=8,
        token=TOKEN,
        requests_per_second=1000,
        burst=1000,
        webhook_url=receiver.url,
        verification_token=SECRET,
        delivery_retry_seconds=(0.05, 0.1),
    ) as sandbox:
        listed = admin(sandbox, "GET", "pages")
        database = [p["id"] for p in listed if p["parent_type"] == "database"]
        others = [p["id"] for p in listed if p["parent_type"] != "database"]
        admin(sandbox, "POST", "events", {"type": "page.properties_updated", "page_id": database[0]})
        admin(sandbox, "POST", "events", {"type": "page.content_updated", "page_id": others[0]})
        admin(sandbox, "POST", "events", {"type": "page.deleted", "page_id": database[1]})
        admin(sandbox, "POST", "events", {"type": "page.created"})
        before = admin(sandbox, "POST", "events", {"type": "page.properties_updated", "page_id": others[1]})
        admin(sandbox, "POST", "events", {"type": "page.deleted", "page_id": others[1], "purge": True})
        wait_until(
            lambda: admin(sandbox, "GET", "deliveries")["pending"] == 0,
            timeout_seconds=15,
            message="deliveries still pending",
        )
        assert admin(sandbox, "GET", "deliveries")["failed"] == 0
        yield Scenario(sandbox, database[0], database[1], others[1], before["page"])
    receiver.close()


@pytest.fixture(scope="module")
def truth(scenario: Scenario) -> Rows:
    return fetch_notion_truth(scenario.sandbox.base_url)


@pytest.fixture
def worker_rows(scenario: Scenario, truth: Rows, redis_url: str) -> Rows:
    """``notion_pages`` rows built as the worker builds them, for every page the truth expects."""
    connection = redis.Redis.from_url(redis_url)
    client = NotionClient(
        base_url=scenario.sandbox.base_url,
        token=SecretStr(TOKEN),
        version="2025-09-03",
        redis_client=connection,
        requests_per_second=1000,
        timeout_seconds=10,
    )
    rows = []
    try:
        for expected in truth:
            raw = client.get_page(expected["id"])
            if raw is None:
                # Notion no longer serves it: the stored row (its last fetched state) is marked deleted.
                last = NotionPage.model_validate(scenario.purged_last_state)
                row = page_row(last, synced_at=SYNCED_AT, message_id="m").model_copy(
                    update={"is_deleted": True, "deleted_at": SYNCED_AT}
                )
            else:
                row = page_row(NotionPage.model_validate(raw), synced_at=SYNCED_AT, message_id="m")
            rows.append(row.model_dump(mode="json", by_alias=True))
    finally:
        client.close()
        connection.close()
    return rows


@pytest.fixture
def warehouse(bq_client: bigquery.Client, dataset: str, truth: Rows) -> Callable[[Rows], CheckReport]:
    """Factory: load ``notion_pages`` with these rows and return the check's report."""
    bq_client.create_dataset(dataset, exists_ok=True)

    def build(rows: Rows) -> CheckReport:
        table = f"{bq_client.project}.{dataset}.{PAGES}"
        schema = [bigquery.SchemaField(c.name, c.type, mode=c.mode) for c in NOTION_PAGES.columns]
        bq_client.create_table(bigquery.Table(table, schema=schema))
        config = bigquery.LoadJobConfig(schema=schema, write_disposition="WRITE_APPEND")
        bq_client.load_table_from_json(rows, table, job_config=config).result(timeout=120)
        return check_notion_warehouse(bq_client, project=bq_client.project, dataset=dataset, truth=truth)

    return build


def test_the_truth_names_the_pages_events_named(scenario: Scenario, truth: Rows) -> None:
    rows = {row["id"]: row for row in truth}
    # Five pages were named (one of them created by its event), each once
    assert len(rows) == len(truth) == 5
    assert {scenario.edited, scenario.trashed, scenario.purged} <= set(rows)
    assert rows[scenario.trashed]["in_trash"] is True
    assert rows[scenario.purged]["is_deleted"] is True
    assert rows[scenario.edited]["parent_type"] == "data_source_id"
    assert sum(row["is_deleted"] for row in truth) == 1


def test_rows_the_worker_makes_pass(warehouse: Callable[[Rows], CheckReport], worker_rows: Rows) -> None:
    report = warehouse(worker_rows)
    assert report.ok, report.summary()
    assert report[PAGES].expected_rows == report[PAGES].warehouse_rows == 5


def _spaced_properties(rows: Rows, scenario: Scenario) -> Rows:
    """The classic bug: properties written with ``json.dumps`` defaults (spaces, key order as sent)."""
    return [row | {"properties": json.dumps(json.loads(row["properties"]))} for row in rows]


def _classic_parent(rows: Rows, scenario: Scenario) -> Rows:
    """Read with the 2022-06-28 version: the database named instead of its data source."""
    classic = {"parent_type": "database_id", "parent_id": "database-not-data-source"}
    return [row | classic if row["id"] == scenario.edited else row for row in rows]


def _trash_ignored(rows: Rows, scenario: Scenario) -> Rows:
    return [row | {"in_trash": False} if row["id"] == scenario.trashed else row for row in rows]


def _purge_dropped(rows: Rows, scenario: Scenario) -> Rows:
    """A 404 taken as "nothing to do": the purged page's row was never marked (or was removed)."""
    return [row for row in rows if row["id"] != scenario.purged]


def _replayed_twice(rows: Rows, scenario: Scenario) -> Rows:
    """An event replayed without a MERGE on the key: the page twice."""
    return rows + [row for row in rows if row["id"] == scenario.edited]


@pytest.mark.parametrize(
    ("bug", "kind", "expected"),
    [
        (_spaced_properties, "mismatched", {"properties"}),
        (_classic_parent, "mismatched", {"parent_type", "parent_id"}),
        (_trash_ignored, "mismatched", {"in_trash"}),
        (_purge_dropped, "missing", "purged"),
        (_replayed_twice, "duplicates", "edited"),
    ],
)
def test_each_bug_is_caught(
    warehouse: Callable[[Rows], CheckReport],
    worker_rows: Rows,
    scenario: Scenario,
    bug: Callable[[Rows, Scenario], Rows],
    kind: str,
    expected: Any,
) -> None:
    # When the warehouse holds what the bug leaves behind
    check = warehouse(bug(worker_rows, scenario))[PAGES]

    # Then the check fails with exactly that difference
    assert not check.ok
    found = getattr(check, kind)
    if kind == "mismatched":
        assert set(found) == expected
    elif kind == "missing":
        assert found == [getattr(scenario, expected)]
    else:
        assert found == {getattr(scenario, expected): 2}
    for other in OTHER_KINDS:
        if other != kind:
            assert not getattr(check, other), other
