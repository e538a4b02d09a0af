"""The Notion ground-truth check: does ``notion_pages`` hold exactly what the Notion sandbox holds?

The sandbox serves, as NDJSON (``GET /_sandbox/truth/pages``), one row per page that some
acknowledged event named (the worker fetches only those), in the page's current state: a page in
the trash keeps its row with ``in_trash``, one purged for good is ``is_deleted``.
:func:`check_notion_warehouse` reads the table with one query and compares it row by row with the
machinery of the Square and Lightspeed checks (:func:`sandbox.truth_check.check_tables`): every
truth page present exactly once, no other page, every checked column equal (timestamps as instants
to the microsecond, ``properties`` as the exact JSON text: sorted keys, no spaces). Like those
checks it is written independently of the sync code: the sandbox renders its truth with its own
JSON encoder, not with ``schemas/notion.py``.

The check is exact once every event has been delivered and processed: wait for
``/_sandbox/deliveries`` to report nothing pending (and the worker's queue to drain) first. A
purged page's row is expected as it was last served, so purge a page only once the events before
the purge have been processed.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from google.cloud import bigquery

from sandbox.truth_check import check_tables
from sandbox.truth_columns import CheckedColumn, CheckedTable
from sandbox.truth_report import CheckReport
from schemas.tables import NOTION_PAGES

__all__ = [
    "DEFAULT_NOTION_VERSION",
    "NOTION_PAGE_COLUMNS",
    "CheckReport",
    "check_notion_warehouse",
    "fetch_notion_truth",
]

#: The ``Notion-Version`` the worker reads with by default (``POSSYNC_NOTION_VERSION``); it decides
#: whether a database page's parent is its ``database_id`` or its ``data_source_id``.
DEFAULT_NOTION_VERSION = "2025-09-03"

#: Warehouse column -> (truth field, how to compare). The first column is the key.
NOTION_PAGE_COLUMNS: tuple[CheckedColumn, ...] = (
    ("id", "id", "str"),
    ("parent_type", "parent_type", "str"),
    ("parent_id", "parent_id", "str"),
    ("title", "title", "str"),
    ("properties", "properties", "str"),
    ("url", "url", "str"),
    ("created_time", "created_time", "timestamp"),
    ("last_edited_time", "last_edited_time", "timestamp"),
    ("archived", "archived", "bool"),
    ("in_trash", "in_trash", "bool"),
    ("is_deleted", "is_deleted", "bool"),
)

_TABLE = CheckedTable(NOTION_PAGES, NOTION_PAGE_COLUMNS)


def fetch_notion_truth(
    admin_base_url: str,
    http: httpx.Client | None = None,
    *,
    notion_version: str = DEFAULT_NOTION_VERSION,
    timeout_seconds: float = 60.0,
) -> list[dict[str, Any]]:
    """Load the expected ``notion_pages`` rows from ``GET /_sandbox/truth/pages``.

    Args:
        admin_base_url: the sandbox's base URL (``http://127.0.0.1:PORT``).
        http: an httpx client to reuse; a short-lived one is made when omitted.
        notion_version: the ``Notion-Version`` the worker reads pages with.
        timeout_seconds: request timeout, seconds.

    Returns:
        One row per expected page (``id``, ``parent_type``, ``parent_id``, ``title``,
        ``properties``, ``url``, ``created_time``, ``last_edited_time``, ``archived``,
        ``in_trash``, ``is_deleted``), without ``_synced_at`` and ``_message_id``.

    Raises:
        httpx.HTTPError: if the sandbox cannot be reached or answers with an error status.
    """
    client = httpx.Client(timeout=timeout_seconds) if http is None else http
    try:
        response = client.get(
            f"{admin_base_url.rstrip('/')}/_sandbox/truth/pages",
            params={"notion_version": notion_version},
            timeout=timeout_seconds,
        )
        response.raise_for_status()
    finally:
        if http is None:
            client.close()
    return [orjson.loads(line) for line in response.content.splitlines() if line.strip()]


def check_notion_warehouse(
    client: bigquery.Client,
    *,
    project: str,
    dataset: str,
    truth: list[dict[str, Any]],
    timeout_seconds: float = 300.0,
) -> CheckReport:
    """Compare ``notion_pages`` with the sandbox's truth, row by row, with one query.

    Args:
        client: a BigQuery client (the emulator or real BigQuery).
        project: BigQuery project id.
        dataset: the dataset holding ``notion_pages``.
        truth: the expected rows (see :func:`fetch_notion_truth`).
        timeout_seconds: deadline for the query, seconds.

    Returns:
        The report; ``report.ok`` is True only if the table equals the truth.

    Raises:
        ValueError: for an invalid project or dataset id, or a page the truth holds twice.
        google.api_core.exceptions.GoogleAPICallError: if BigQuery fails for a reason other than a
            missing table (a missing table is reported as a difference instead).
    """
    return check_tables(
        client,
        project=project,
        dataset=dataset,
        tables=(_TABLE,),
        records=lambda _name: truth,
        timeout_seconds=timeout_seconds,
    )
