"""The Notion sandbox's workspace: deterministic databases and pages, and the changes events make.

The workspace has two databases (each with one data source and a property schema: a title plus
select, number, checkbox, date and rich text properties), a few top-level pages and sub-pages under
them. Everything is drawn from one ``random.Random(seed)``, so the same seed, anchor and page count
give the same workspace; changes (:meth:`NotionDataset.create`, :meth:`~NotionDataset.update_properties`
and the rest) draw from the same generator, so the same sequence of changes gives the same results.
How a page renders is :mod:`sandbox.notion_pages`.

Times are epoch milliseconds. Generated pages have whole-minute times before the anchor; changes are
stamped with the wall-clock time the caller passes, floored to the configured precision.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from sandbox.notion_pages import (
    TITLE_ONLY,
    NotionDatabase,
    PageParent,
    PageState,
    PropertySpec,
    PropertyType,
    normalise_id,
)

__all__ = ["HISTORY_DAYS", "NotionDataset"]

#: Generated pages were created within this many days before the anchor.
HISTORY_DAYS = 180
_MINUTE_MS = 60_000
_DAY_MS = 86_400_000
_WORDS = (
    "Roadmap", "Launch", "Café", "Budget", "Review", "Hiring", "Q3", "Offsite", "Design", "Notes",
    "Inventory", "Pricing", 'the "big" one', "Retro", "Onboarding", "Vendor", "Audit", "Menu",
)  # fmt: skip
_COLORS = ("default", "gray", "brown", "orange", "yellow", "green", "blue", "purple", "pink", "red")
_ICONS = ("📘", "🗂️", "✅", "🚀", None, None, None)
#: What property ids are made of: letters and URL-encoded punctuation.
_ID_PARTS = ("a", "B", "c", "D", "k", "p", "Q", "x", "Z", "%3A", "%3B", "%5E", "%60", "~")


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


class NotionDataset:
    """The workspace's databases and pages, and the changes events make to them.

    Args:
        seed: the generator's seed.
        pages: how many pages to generate (at least 2: the top-level pages).
        anchor: generated times lie before it.
        precision_seconds: ``last_edited_time`` of a change is floored to this many seconds.
        edit_times_may_tie: whether a change may keep the previous ``last_edited_time``.

    Raises:
        ValueError: on fewer than 2 pages or a precision under one second.
    """

    def __init__(
        self,
        *,
        seed: int,
        pages: int,
        anchor: datetime,
        precision_seconds: int = 1,
        edit_times_may_tie: bool = False,
    ) -> None:
        if pages < 2:
            raise ValueError("pages must be at least 2")
        if precision_seconds < 1:
            raise ValueError("precision_seconds must be at least 1")
        self.seed = seed
        self.rng = random.Random(seed)
        self._precision_ms = precision_seconds * 1000
        self._may_tie = edit_times_may_tie
        self.workspace_id = _uuid(self.rng)
        self.users = [_uuid(self.rng) for _ in range(4)]
        self.databases = [self._database("Tasks"), self._database("Projects")]
        self.pages: dict[str, PageState] = {}
        anchor_ms = int(anchor.timestamp() * 1000) // _MINUTE_MS * _MINUTE_MS
        for index in range(pages):
            created = anchor_ms - self.rng.randrange(1, HISTORY_DAYS * 1440) * _MINUTE_MS
            edited = created + self.rng.randrange(0, (anchor_ms - created) // _MINUTE_MS + 1) * _MINUTE_MS
            parent = PageParent("workspace") if index < 2 else self._random_parent(new=True)
            self._add(self._new_page(parent, created, edited))

    def _database(self, title: str) -> NotionDatabase:
        rng = self.rng

        def short_id() -> str:
            # Notion's property ids are a few URL-encoded characters, such as ``%3AUPp``.
            return "".join(rng.choice(_ID_PARTS) for _ in range(4))

        options = tuple(
            (_uuid(rng), name, rng.choice(_COLORS)) for name in ("Backlog", "Doing", "Done", "Blocked")
        )
        names = {
            "Tasks": ("Name", "Status", "Priority", "Done", "Due", "Notes"),
            "Projects": ("Project", "Stage", "Budget", "Active", "Launch", "Summary"),
        }[title]
        types: tuple[PropertyType, ...] = ("title", "select", "number", "checkbox", "date", "rich_text")
        schema = tuple(
            PropertySpec(
                name,
                "title" if kind == "title" else short_id(),
                kind,
                options if kind == "select" else (),
            )
            for name, kind in zip(names, types, strict=True)
        )
        return NotionDatabase(id=_uuid(rng), data_source_id=_uuid(rng), title=title, schema=schema)

    def _add(self, page: PageState) -> None:
        self.pages[page.id] = page

    def _title(self) -> list[tuple[str, bool]]:
        words = self.rng.sample(_WORDS, self.rng.randint(1, 3))
        if len(words) > 1 and self.rng.random() < 0.3:
            # A title in two runs, one bold: its plain text is the runs joined.
            return [(words[0] + " ", True), (" ".join(words[1:]), False)]
        return [(" ".join(words), False)]

    def _value(self, spec: PropertySpec, anchor_ms: int) -> Any:
        rng = self.rng
        if spec.type == "select":
            return rng.choice(spec.options)[0] if rng.random() < 0.9 else None
        if spec.type == "number":
            return rng.choice([None, rng.randint(0, 100), rng.randint(0, 2000) / 4])
        if spec.type == "checkbox":
            return rng.random() < 0.4
        if spec.type == "date":
            if rng.random() < 0.3:
                return None
            day = (anchor_ms + rng.randint(-60, 60) * _DAY_MS) // 1000
            return datetime.fromtimestamp(day, UTC).date().isoformat()
        if spec.type == "rich_text":
            return " ".join(rng.sample(_WORDS, rng.randint(0, 4)))
        raise ValueError(f"no generator for {spec.type}")

    def _new_page(self, parent: PageParent, created: int, edited: int) -> PageState:
        schema = self._schema(parent)
        author = self.rng.choice(self.users)
        return PageState(
            id=_uuid(self.rng),
            parent=parent,
            schema=schema,
            title=self._title(),
            values={spec.name: self._value(spec, created) for spec in schema if spec.type != "title"},
            created_time=created,
            last_edited_time=edited,
            created_by=author,
            last_edited_by=self.rng.choice([author, *self.users]),
            icon=self.rng.choice(_ICONS),
        )

    def _schema(self, parent: PageParent) -> tuple[PropertySpec, ...]:
        for database in self.databases:
            if parent.kind == "database" and database.id == parent.id:
                return database.schema
        return TITLE_ONLY

    def _random_parent(self, *, new: bool, exclude: set[str] | None = None) -> PageParent:
        """A database (two in three when ``new``), else a page outside ``exclude``, else the root."""
        rng = self.rng
        if new and rng.random() < 2 / 3:
            database = rng.choice(self.databases)
            return PageParent("database", database.id, database.data_source_id)
        candidates = [pid for pid, p in self.pages.items() if not p.purged and pid not in (exclude or set())]
        if candidates and rng.random() < 0.85:
            return PageParent("page", rng.choice(candidates))
        return PageParent("workspace")

    def _edited(self, page: PageState, now_ms: int) -> None:
        """Stamp a change made at ``now_ms`` by one of the users."""
        stamp = now_ms - now_ms % self._precision_ms
        if not self._may_tie:
            stamp = max(stamp, page.last_edited_time + self._precision_ms)
        page.last_edited_time = max(stamp, page.last_edited_time)
        page.last_edited_by = self.rng.choice(self.users)

    # -- lookups -----------------------------------------------------------------------------------

    def find(self, page_id: str) -> PageState | None:
        """The page with this id (dashed or not), purged or not; None if there is none."""
        normal = normalise_id(page_id)
        return None if normal is None else self.pages.get(normal)

    def choose(self, kind: Literal["live", "trashed", "any"]) -> PageState | None:
        """A random page: not purged (``any``), not in the trash (``live``) or in it (``trashed``)."""
        candidates = [
            p
            for p in self.pages.values()
            if not p.purged and (kind == "any" or p.in_trash == (kind == "trashed"))
        ]
        return self.rng.choice(candidates) if candidates else None

    def counts(self) -> dict[str, int]:
        """``{"total", "live", "in_trash", "purged"}``."""
        pages = list(self.pages.values())
        return {
            "total": len(pages),
            "live": sum(1 for p in pages if not p.purged and not p.in_trash),
            "in_trash": sum(1 for p in pages if not p.purged and p.in_trash),
            "purged": sum(1 for p in pages if p.purged),
        }

    # -- changes -------------------------------------------------------------------------------------

    def create(self, now_ms: int) -> PageState:
        """A new page, in a database, under a page or at the root, created at ``now_ms``."""
        parent = self._random_parent(new=True)
        stamp = now_ms - now_ms % self._precision_ms
        page = self._new_page(parent, stamp, stamp)
        page.last_edited_by = page.created_by
        self._add(page)
        return page

    def update_properties(self, page: PageState, now_ms: int) -> list[str]:
        """Change one or two properties (the title among the candidates); returns their ids."""
        candidates = list(page.schema)
        changed = self.rng.sample(candidates, min(len(candidates), self.rng.randint(1, 2)))
        for spec in changed:
            if spec.type == "title":
                before = page.plain_title
                page.title = self._title()
                if page.plain_title == before:
                    page.title = [*page.title, (" (edited)", False)]
                continue
            before_value = page.values.get(spec.name)
            for _ in range(20):
                page.values[spec.name] = self._value(spec, page.created_time)
                if page.values[spec.name] != before_value:
                    break
            if page.values[spec.name] == before_value and spec.type == "checkbox":
                page.values[spec.name] = not before_value
        self._edited(page, now_ms)
        return [spec.id for spec in changed]

    def update_content(self, page: PageState, now_ms: int) -> list[str]:
        """Edit some blocks of the page (not modelled beyond their ids); returns the block ids."""
        self._edited(page, now_ms)
        return [_uuid(self.rng) for _ in range(self.rng.randint(1, 3))]

    def delete(self, page: PageState, now_ms: int, *, purge: bool = False) -> None:
        """Move the page to the trash; ``purge`` deletes it for good instead (the API then 404s,
        and its truth row keeps the state it was last served in)."""
        if purge:
            page.purged = True
            return
        page.in_trash = page.archived = True
        self._edited(page, now_ms)

    def undelete(self, page: PageState, now_ms: int) -> None:
        """Restore the page from the trash."""
        page.in_trash = page.archived = False
        self._edited(page, now_ms)

    def move(self, page: PageState, now_ms: int) -> None:
        """Move the page under another page or to the root; a database page keeps only its title."""
        descendants = self._descendants(page.id)
        current = {page.parent.id} if page.parent.id else set()
        page.parent = self._random_parent(new=False, exclude=descendants | current)
        page.schema = TITLE_ONLY
        page.values = {}
        self._edited(page, now_ms)

    def _descendants(self, page_id: str) -> set[str]:
        """The page and every page under it, at any depth."""
        found = {page_id}
        grew = True
        while grew:
            grew = False
            for candidate in self.pages.values():
                if (
                    candidate.parent.kind == "page"
                    and candidate.parent.id in found
                    and candidate.id not in found
                ):
                    found.add(candidate.id)
                    grew = True
        return found
