"""Notion API pages as we read them, and the ``notion_pages`` and ``notion_events`` rows they become.

A page is validated only as far as the warehouse needs (id, times, parent, properties, flags);
everything else Notion sends is ignored. ``properties`` is kept whole, as JSON text with sorted keys
and no spaces, so one page state always gives the same text (and a replayed MERGE changes nothing).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from schemas.messages import WebhookEvent

__all__ = [
    "PARENT_TYPES",
    "NotionEventRow",
    "NotionPage",
    "NotionPageRow",
    "event_row",
    "page_row",
    "properties_json",
    "title_text",
]

#: The page parent types Notion documents; ``workspace`` alone carries no id.
PARENT_TYPES = ("database_id", "data_source_id", "page_id", "block_id", "workspace")


class NotionPage(BaseModel):
    """A page object (``GET /v1/pages/{id}``): the fields the warehouse keeps.

    ``archived`` and ``in_trash`` are optional: older API versions send only ``archived``, and newer
    ones may drop it in favour of ``in_trash``.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1, max_length=255)
    created_time: AwareDatetime | None = None
    last_edited_time: AwareDatetime
    parent: dict[str, Any]
    properties: dict[str, dict[str, Any]]
    url: str | None = None
    archived: bool | None = None
    in_trash: bool | None = None

    @field_validator("parent")
    @classmethod
    def _known_parent(cls, parent: dict[str, Any]) -> dict[str, Any]:
        kind = parent.get("type")
        if kind not in PARENT_TYPES:
            raise ValueError(f"parent type {kind!r} is not one of {', '.join(PARENT_TYPES)}")
        if kind != "workspace" and not (isinstance(parent.get(kind), str) and parent[kind]):
            raise ValueError(f"parent of type {kind!r} has no {kind!r} id")
        return parent

    @property
    def parent_type(self) -> str:
        """``database_id``, ``data_source_id``, ``page_id``, ``block_id`` or ``workspace``."""
        kind: str = self.parent["type"]
        return kind

    @property
    def parent_id(self) -> str | None:
        """The id under the parent's type key; None for the workspace."""
        kind = self.parent_type
        return None if kind == "workspace" else str(self.parent[kind])


def title_text(properties: dict[str, dict[str, Any]]) -> str | None:
    """The plain text of the title-type property: its rich text items' ``plain_text``, joined.

    Returns:
        The title (``""`` for an empty one), or None when no property has type ``title``.
    """
    for value in properties.values():
        if value.get("type") == "title":
            items = value.get("title") or []
            return "".join(str(item.get("plain_text") or "") for item in items if isinstance(item, dict))
    return None


def properties_json(properties: dict[str, Any]) -> str:
    """``properties`` as stable JSON text: sorted keys, compact separators, non-ASCII kept as is."""
    return json.dumps(properties, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    synced_at: datetime = Field(serialization_alias="_synced_at")
    message_id: str | None = Field(default=None, serialization_alias="_message_id")


class NotionPageRow(_Row):
    """A row of ``notion_pages``."""

    id: str
    parent_type: str
    parent_id: str | None
    title: str | None
    properties: str
    url: str | None
    created_time: datetime | None
    last_edited_time: datetime
    archived: bool | None
    in_trash: bool | None
    is_deleted: bool = False
    deleted_at: datetime | None = None


class NotionEventRow(_Row):
    """A row of ``notion_events``."""

    event_id: str
    type: str
    entity_id: str | None
    entity_type: str | None
    timestamp: datetime
    received_at: datetime
    attempt_number: int | None
    raw: str


def page_row(page: NotionPage, *, synced_at: datetime, message_id: str | None) -> NotionPageRow:
    """The ``notion_pages`` row of a page Notion serves (so not deleted for good)."""
    return NotionPageRow(
        id=page.id,
        parent_type=page.parent_type,
        parent_id=page.parent_id,
        title=title_text(page.properties),
        properties=properties_json(page.properties),
        url=page.url,
        created_time=page.created_time,
        last_edited_time=page.last_edited_time,
        archived=page.archived,
        in_trash=page.in_trash,
        synced_at=synced_at,
        message_id=message_id,
    )


def event_row(event: WebhookEvent, *, synced_at: datetime, message_id: str | None) -> NotionEventRow:
    """The ``notion_events`` row of a received event, its body kept as received."""
    return NotionEventRow(
        event_id=event.event_id,
        type=event.event_type,
        entity_id=event.entity_id,
        entity_type=event.entity_type,
        timestamp=event.timestamp,
        received_at=event.received_at,
        attempt_number=event.attempt_number,
        raw=event.raw,
        synced_at=synced_at,
        message_id=message_id,
    )
