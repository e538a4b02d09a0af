"""Notion sandbox pages as data: property schemas, parents, and each page's API object and truth row.

A :class:`PageState` holds one page in plain values (title runs, property values by name, epoch
millisecond times, flags); :meth:`PageState.to_api` renders it as ``GET /v1/pages/{id}`` answers
under a given ``Notion-Version`` (database pages name their data source as parent from 2025-09-03),
and :meth:`PageState.to_truth` as the ``notion_pages`` row a correct sync holds. The workspace these
pages live in, and how they change, is :mod:`sandbox.notion_data`.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

__all__ = [
    "DATA_SOURCE_VERSION",
    "TITLE_ONLY",
    "NotionDatabase",
    "PageParent",
    "PageState",
    "PropertySpec",
    "PropertyType",
    "format_time",
    "normalise_id",
    "rich_text",
    "uses_data_sources",
]

#: API versions from which pages in a database name their data source as parent.
DATA_SOURCE_VERSION = "2025-09-03"

PropertyType = Literal["title", "rich_text", "number", "select", "checkbox", "date"]


def format_time(epoch_ms: int) -> str:
    """Notion's timestamp: ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (UTC)."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def normalise_id(value: str) -> str | None:
    """A Notion id (a UUID, with or without dashes) in its dashed lowercase form; None if it is not one."""
    try:
        return str(uuid.UUID(hex=value.strip()))
    except ValueError:
        return None


def uses_data_sources(version: str) -> bool:
    """Whether API version ``version`` (``YYYY-MM-DD``) has data sources (2025-09-03 and later)."""
    return version >= DATA_SOURCE_VERSION


def rich_text(text: str, *, bold: bool = False) -> dict[str, Any]:
    return {
        "type": "text",
        "text": {"content": text, "link": None},
        "annotations": {
            "bold": bold,
            "italic": False,
            "strikethrough": False,
            "underline": False,
            "code": False,
            "color": "default",
        },
        "plain_text": text,
        "href": None,
    }


@dataclass(frozen=True)
class PropertySpec:
    """One property of a database's schema: its name, Notion's short id, its type, and select options."""

    name: str
    id: str
    type: PropertyType
    options: tuple[tuple[str, str, str], ...] = ()  # (option id, name, color) for selects


#: The only property of a page outside a database.
TITLE_ONLY = (PropertySpec("title", "title", "title"),)


@dataclass(frozen=True)
class NotionDatabase:
    """A database with its single data source and the schema its pages follow."""

    id: str
    data_source_id: str
    title: str
    schema: tuple[PropertySpec, ...]


@dataclass(frozen=True)
class PageParent:
    """Where a page lives: in a database (and its data source), under a page, or at the workspace root."""

    kind: Literal["database", "page", "workspace"]
    id: str | None = None
    data_source_id: str | None = None

    def to_api(self, version: str) -> dict[str, Any]:
        """The page object's ``parent`` as API version ``version`` renders it."""
        if self.kind == "workspace":
            return {"type": "workspace", "workspace": True}
        if self.kind == "page":
            return {"type": "page_id", "page_id": self.id}
        if uses_data_sources(version):
            return {"type": "data_source_id", "data_source_id": self.data_source_id, "database_id": self.id}
        return {"type": "database_id", "database_id": self.id}

    def to_event(self, api_version: str, workspace_id: str) -> dict[str, Any]:
        """An event's ``data.parent``: ``{id, type}`` with type ``database``, ``page`` or ``space``."""
        if self.kind == "workspace":
            return {"id": workspace_id, "type": "space"}
        if self.kind == "page":
            return {"id": self.id, "type": "page"}
        parent = {"id": self.id, "type": "database"}
        if uses_data_sources(api_version):
            parent["data_source_id"] = self.data_source_id
        return parent


@dataclass
class PageState:
    """One page as the sandbox holds it: the source of both its API object and its truth row.

    Attributes:
        values: the non-title property values by property name (select: option id; date: ISO date).
        purged: deleted for good: the API answers 404 and the truth marks it ``is_deleted``.
    """

    id: str
    parent: PageParent
    schema: tuple[PropertySpec, ...]
    title: list[tuple[str, bool]]  # runs of (text, bold)
    values: dict[str, Any]
    created_time: int
    last_edited_time: int
    created_by: str
    last_edited_by: str
    icon: str | None = None
    archived: bool = False
    in_trash: bool = False
    purged: bool = False
    events: int = field(default=0)

    @property
    def plain_title(self) -> str:
        """The title as plain text: every run's text, joined."""
        return "".join(text for text, _ in self.title)

    @property
    def url(self) -> str:
        """``https://www.notion.so/<title-slug>-<id without dashes>``, as Notion builds it."""
        slug = re.sub(r"[^0-9A-Za-z]+", "-", self.plain_title).strip("-")
        compact = self.id.replace("-", "")
        return f"https://www.notion.so/{slug}-{compact}" if slug else f"https://www.notion.so/{compact}"

    def properties(self) -> dict[str, Any]:
        """The page's ``properties`` object: one value object per schema property, keyed by name."""
        rendered: dict[str, Any] = {}
        for spec in self.schema:
            value: Any
            if spec.type == "title":
                value = [rich_text(text, bold=bold) for text, bold in self.title]
            elif spec.type == "rich_text":
                text = self.values.get(spec.name) or ""
                value = [rich_text(text)] if text else []
            elif spec.type == "select":
                chosen = [o for o in spec.options if o[0] == self.values.get(spec.name)]
                value = {"id": chosen[0][0], "name": chosen[0][1], "color": chosen[0][2]} if chosen else None
            elif spec.type == "date":
                day = self.values.get(spec.name)
                value = {"start": day, "end": None, "time_zone": None} if day else None
            elif spec.type == "checkbox":
                value = bool(self.values.get(spec.name))
            else:
                value = self.values.get(spec.name)
            rendered[spec.name] = {"id": spec.id, "type": spec.type, spec.type: value}
        return rendered

    def to_api(self, version: str) -> dict[str, Any]:
        """The page object as ``GET /v1/pages/{id}`` answers it under API version ``version``."""
        return {
            "object": "page",
            "id": self.id,
            "created_time": format_time(self.created_time),
            "last_edited_time": format_time(self.last_edited_time),
            "created_by": {"object": "user", "id": self.created_by},
            "last_edited_by": {"object": "user", "id": self.last_edited_by},
            "cover": None,
            "icon": {"type": "emoji", "emoji": self.icon} if self.icon else None,
            "parent": self.parent.to_api(version),
            "archived": self.archived,
            "in_trash": self.in_trash,
            "properties": self.properties(),
            "url": self.url,
            "public_url": None,
        }

    def to_truth(self, version: str) -> dict[str, Any]:
        """The ``notion_pages`` row a correct sync holds for this page (API version ``version``).

        ``properties`` is the properties object as JSON text with sorted keys and no spaces; a
        purged page keeps the state it was last served in, with ``is_deleted`` set.
        """
        parent = self.parent.to_api(version)
        return {
            "id": self.id,
            "parent_type": parent["type"],
            "parent_id": None if parent["type"] == "workspace" else parent[parent["type"]],
            "title": self.plain_title,
            "properties": orjson.dumps(self.properties(), option=orjson.OPT_SORT_KEYS).decode(),
            "url": self.url,
            "created_time": format_time(self.created_time),
            "last_edited_time": format_time(self.last_edited_time),
            "archived": self.archived,
            "in_trash": self.in_trash,
            "is_deleted": self.purged,
        }
