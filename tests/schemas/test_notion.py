"""Notion page objects become ``notion_pages`` rows, and webhook events ``notion_events`` rows."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.messages import WebhookEvent
from schemas.notion import NotionPage, event_row, page_row, properties_json, title_text
from schemas.tables import NOTION_EVENTS, NOTION_PAGES

SYNCED_AT = datetime(2026, 3, 15, 12, 30, tzinfo=UTC)
PAGE_ID = "59833787-2cf9-4fdf-8782-e53db20768a5"
DATA_SOURCE_ID = "2f26ee68-df30-4251-aad4-8ddc420cba3d"
DATABASE_ID = "842a0286-cef0-46a8-abba-eac4c8ca644e"


def text(content: str, *, bold: bool = False) -> dict[str, Any]:
    return {
        "type": "text",
        "text": {"content": content, "link": None},
        "annotations": {"bold": bold, "italic": False, "code": False, "color": "default"},
        "plain_text": content,
        "href": None,
    }


def page_object(**overrides: Any) -> dict[str, Any]:
    """A page in a database as ``GET /v1/pages/{id}`` answers it under 2025-09-03."""
    page = {
        "object": "page",
        "id": PAGE_ID,
        "created_time": "2025-12-01T09:15:00.000Z",
        "last_edited_time": "2026-03-14T17:42:00.000Z",
        "created_by": {"object": "user", "id": "9b08923d-10c6-4fd9-94b2-b8fda02f34a6"},
        "last_edited_by": {"object": "user", "id": "795b929e-9a9a-40fd-aa7b-5bf55eb561a4"},
        "cover": None,
        "icon": {"type": "emoji", "emoji": "🚀"},
        "parent": {"type": "data_source_id", "data_source_id": DATA_SOURCE_ID, "database_id": DATABASE_ID},
        "archived": False,
        "in_trash": False,
        "properties": {
            "Status": {
                "id": "c%60%3Aa",
                "type": "select",
                "select": {"id": "x", "name": "Doing", "color": "blue"},
            },
            "Name": {
                "id": "title",
                "type": "title",
                "title": [text("Café ", bold=True), text('launch "v2"')],
            },
            "Budget": {"id": "k%60a~", "type": "number", "number": 2.5},
            "Notes": {"id": "QQ%5E%60", "type": "rich_text", "rich_text": []},
        },
        "url": "https://www.notion.so/Caf-launch-v2-598337872cf94fdf8782e53db20768a5",
        "public_url": None,
        "request_id": "133204b2-f3a0-428e-b088-fd46fc5282f6",
    }
    return page | overrides


def test_page_row_holds_the_warehouse_columns() -> None:
    # Given a page object with fields the warehouse does not keep
    page = NotionPage.model_validate(page_object())

    # When it becomes a row
    row = page_row(page, synced_at=SYNCED_AT, message_id="msg-1").model_dump(mode="json", by_alias=True)

    # Then the row has exactly the table's columns, with the page's values
    assert set(row) == set(NOTION_PAGES.column_names)
    assert row == {
        "id": PAGE_ID,
        "parent_type": "data_source_id",
        "parent_id": DATA_SOURCE_ID,
        "title": 'Café launch "v2"',
        "properties": properties_json(page_object()["properties"]),
        "url": "https://www.notion.so/Caf-launch-v2-598337872cf94fdf8782e53db20768a5",
        "created_time": "2025-12-01T09:15:00Z",
        "last_edited_time": "2026-03-14T17:42:00Z",
        "archived": False,
        "in_trash": False,
        "is_deleted": False,
        "deleted_at": None,
        "_synced_at": "2026-03-15T12:30:00Z",
        "_message_id": "msg-1",
    }


def test_properties_are_stable_json_text() -> None:
    # Given the same properties in another key order
    shuffled = page_object()
    shuffled["properties"] = dict(reversed(list(shuffled["properties"].items())))
    shuffled["properties"]["Status"] = dict(reversed(list(shuffled["properties"]["Status"].items())))

    # Then both give the same text: sorted keys, no spaces, non-ASCII kept, the whole object
    rows = [
        page_row(NotionPage.model_validate(p), synced_at=SYNCED_AT, message_id=None)
        for p in (page_object(), shuffled)
    ]
    assert rows[0].properties == rows[1].properties
    text_form = rows[0].properties
    assert json.loads(text_form) == page_object()["properties"]
    assert ", " not in text_form
    assert '": ' not in text_form
    assert "Café" in text_form
    assert text_form.index('"Budget"') < text_form.index('"Name"') < text_form.index('"Notes"')


@pytest.mark.parametrize(
    ("parent", "parent_type", "parent_id"),
    [
        ({"type": "database_id", "database_id": DATABASE_ID}, "database_id", DATABASE_ID),
        (
            {"type": "data_source_id", "data_source_id": DATA_SOURCE_ID, "database_id": DATABASE_ID},
            "data_source_id",
            DATA_SOURCE_ID,
        ),
        ({"type": "page_id", "page_id": PAGE_ID}, "page_id", PAGE_ID),
        ({"type": "block_id", "block_id": PAGE_ID}, "block_id", PAGE_ID),
        ({"type": "workspace", "workspace": True}, "workspace", None),
    ],
)
def test_parent_type_and_id(parent: dict[str, Any], parent_type: str, parent_id: str | None) -> None:
    row = page_row(
        NotionPage.model_validate(page_object(parent=parent)), synced_at=SYNCED_AT, message_id=None
    )
    assert (row.parent_type, row.parent_id) == (parent_type, parent_id)


@pytest.mark.parametrize(
    "broken",
    [
        {"parent": {"type": "team_id", "team_id": "x"}},
        {"parent": {"type": "page_id"}},
        {"parent": {"type": "database_id", "database_id": ""}},
        {"last_edited_time": "2026-03-14T17:42:00"},
        {"properties": None},
        {"id": ""},
    ],
)
def test_invalid_pages_are_refused(broken: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        NotionPage.model_validate(page_object(**broken))


def test_required_fields() -> None:
    for field in ("id", "last_edited_time", "parent", "properties"):
        page = page_object()
        del page[field]
        with pytest.raises(ValidationError):
            NotionPage.model_validate(page)


def test_title_is_the_title_property_joined_or_none() -> None:
    # A page under a page has the title alone; an empty title is ""; no title property gives None
    assert title_text({"title": {"id": "title", "type": "title", "title": [text("a"), text("b")]}}) == "ab"
    assert title_text({"Name": {"id": "title", "type": "title", "title": []}}) == ""
    assert title_text({"Notes": {"id": "n", "type": "rich_text", "rich_text": [text("not a title")]}}) is None


def test_flags_missing_from_older_versions_stay_null() -> None:
    page = page_object()
    del page["in_trash"]
    del page["created_time"]
    row = page_row(NotionPage.model_validate(page), synced_at=SYNCED_AT, message_id=None)
    assert row.in_trash is None
    assert row.created_time is None
    assert row.archived is False


def test_the_page_model_does_not_change_the_properties() -> None:
    raw = page_object()
    kept = copy.deepcopy(raw["properties"])
    page = NotionPage.model_validate(raw)
    assert page.properties == kept
    assert raw["properties"] == kept


def test_event_row_holds_the_event_columns() -> None:
    # Given a received event
    raw = json.dumps(
        {
            "id": "f275db5c-db57-45bb-a048-69ae2328b9cb",
            "timestamp": "2026-03-15T12:29:58.123Z",
            "type": "page.properties_updated",
            "entity": {"id": PAGE_ID, "type": "page"},
            "attempt_number": 2,
        },
        separators=(",", ":"),
    )
    event = WebhookEvent(
        request_id="req-1",
        event_id="f275db5c-db57-45bb-a048-69ae2328b9cb",
        event_type="page.properties_updated",
        entity_id=PAGE_ID,
        entity_type="page",
        timestamp=datetime(2026, 3, 15, 12, 29, 58, 123000, tzinfo=UTC),
        received_at=datetime(2026, 3, 15, 12, 29, 59, tzinfo=UTC),
        attempt_number=2,
        raw=raw,
    )

    # When it becomes a row
    row = event_row(event, synced_at=SYNCED_AT, message_id="msg-2").model_dump(mode="json", by_alias=True)

    # Then the row has exactly the table's columns, the body kept as received
    assert set(row) == set(NOTION_EVENTS.column_names)
    assert row == {
        "event_id": "f275db5c-db57-45bb-a048-69ae2328b9cb",
        "type": "page.properties_updated",
        "entity_id": PAGE_ID,
        "entity_type": "page",
        "timestamp": "2026-03-15T12:29:58.123000Z",
        "received_at": "2026-03-15T12:29:59Z",
        "attempt_number": 2,
        "raw": raw,
        "_synced_at": "2026-03-15T12:30:00Z",
        "_message_id": "msg-2",
    }
