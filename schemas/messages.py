"""Queue payloads and the routes (queue, actor name) they travel on.

Producers send by route with a validated payload and never import actors; workers validate the
payload again before doing any work. Every payload carries ``schema_version`` so that a rolling
upgrade never feeds a worker a shape it would misread, and ``request_id`` so that
``--wait`` can follow every message one request caused, children included.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "BACKFILL_LIGHTSPEED_WINDOW",
    "BACKFILL_SQUARE_WINDOW",
    "HANDLE_NOTION_EVENT",
    "LIGHTSPEED_QUEUE",
    "MIGRATIONS_QUEUE",
    "NOTION_QUEUE",
    "PLAN_LIGHTSPEED_BACKFILL",
    "PLAN_SQUARE_BACKFILL",
    "QUEUES",
    "ROUTES",
    "RUN_MIGRATION",
    "SOURCE_STREAMS",
    "SQUARE_QUEUE",
    "SYNC_LIGHTSPEED_STREAM",
    "SYNC_SQUARE_STREAM",
    "UPSERT_SQUARE_RECORD",
    "BackfillRequest",
    "BackfillWindow",
    "MigrationRequest",
    "Payload",
    "RecordUpsert",
    "Route",
    "Source",
    "SyncRequest",
    "WebhookEvent",
    "routes_for",
]

SQUARE_QUEUE = "square"
LIGHTSPEED_QUEUE = "lightspeed"
NOTION_QUEUE = "notion"
MIGRATIONS_QUEUE = "migrations"

Source = Literal["square", "lightspeed"]

#: Every source's streams, in sync order.
SOURCE_STREAMS: dict[str, tuple[str, ...]] = {
    "square": ("payments", "items", "customers"),
    "lightspeed": ("sales", "items"),
}
#: Every queue possync uses.
QUEUES: tuple[str, ...] = (SQUARE_QUEUE, LIGHTSPEED_QUEUE, NOTION_QUEUE, MIGRATIONS_QUEUE)


def _check_streams(source: str, streams: tuple[str, ...]) -> None:
    known = SOURCE_STREAMS[source]
    unknown = [stream for stream in streams if stream not in known]
    if unknown:
        raise ValueError(f"unknown {source} stream {unknown[0]!r}: expected one of {', '.join(known)}")


class Payload(BaseModel):
    """Base of every message payload."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Bumped on any incompatible change to a payload's shape.
    schema_version: Literal[1] = 1
    #: The request (CLI command, scheduler tick, webhook) this message belongs to.
    request_id: str = Field(min_length=1, max_length=128)


class SyncRequest(Payload):
    """Incremental sync of one stream: read what changed since the checkpoint, merge, checkpoint."""

    source: Source = "square"
    stream: str

    @model_validator(mode="after")
    def _known_stream(self) -> SyncRequest:
        _check_streams(self.source, (self.stream,))
        return self


class BackfillRequest(Payload):
    """Plan a backfill: split [since, until) into windows (per location for Square), one message each.

    ``streams`` empty (the default) means every stream of the source.
    """

    source: Source = "square"
    backfill_id: str = Field(min_length=1, max_length=128)
    since: AwareDatetime
    until: AwareDatetime
    streams: tuple[str, ...] = ()
    window_days: int = Field(default=365, ge=1)

    @model_validator(mode="after")
    def _known_streams(self) -> BackfillRequest:
        _check_streams(self.source, self.streams)
        return self

    @property
    def selected_streams(self) -> tuple[str, ...]:
        """The streams to backfill: ``streams``, or every stream of the source."""
        return self.streams or SOURCE_STREAMS[self.source]


class BackfillWindow(Payload):
    """One window of a backfill: records created in [start, end) (of one location, for Square
    payments), or a whole stream when ``start`` and ``end`` are absent."""

    source: Source = "square"
    backfill_id: str = Field(min_length=1, max_length=128)
    window_id: str = Field(min_length=1, max_length=256)
    stream: str
    location_id: str | None = None
    start: datetime | None = None
    end: datetime | None = None

    @model_validator(mode="after")
    def _known_stream_and_bounds(self) -> BackfillWindow:
        _check_streams(self.source, (self.stream,))
        # Checked here, so an actor refuses a bad window before it requests anything or marks it.
        if (self.start is None) != (self.end is None):
            raise ValueError("start and end: give both (a time window) or neither (a whole stream)")
        if self.start is not None and self.end is not None:
            if self.start.utcoffset() is None or self.end.utcoffset() is None:
                raise ValueError("start and end must carry a time zone")
            if self.end <= self.start:
                raise ValueError("end must be after start")
        return self


class RecordUpsert(Payload):
    """Upsert one Square record a webhook named, fetched by id so the warehouse gets its latest state.

    Never coalesced with the stream's sync: it runs beside it, and the MERGE's newer-version rule
    keeps both consistent. A ``deleted_at`` marks the record deleted instead of fetching it (Square
    no longer serves a deleted customer); ``record`` is the object the event carried, if any, kept
    as the deleted row's last known state.
    """

    source: Literal["square"] = "square"
    kind: Literal["payment", "customer"]
    record_id: str = Field(min_length=1, max_length=255)
    #: The webhook event that asked for it (Square's ``event_id``), for the logs.
    event_id: str | None = Field(default=None, max_length=255)
    deleted_at: AwareDatetime | None = None
    record: dict[str, Any] | None = None


class WebhookEvent(Payload):
    """A verified Notion webhook event, as received.

    ``raw`` is the request body exactly as signed (UTF-8 JSON); the other fields are read from it
    by the receiver, so a worker need not parse it to route the event.
    """

    provider: Literal["notion"] = "notion"
    event_id: str = Field(min_length=1, max_length=255)
    event_type: str = Field(min_length=1, max_length=255)
    entity_id: str | None = Field(default=None, max_length=255)
    entity_type: str | None = Field(default=None, max_length=255)
    timestamp: AwareDatetime
    received_at: AwareDatetime
    attempt_number: int | None = None
    raw: str = Field(min_length=2)


class MigrationRequest(Payload):
    """Move a table to a partitioned and clustered layout: plan, copy, verify, swap.

    Carried out by ``workers/migrations.py``.

    ``migration_id`` names the table and the target layout, so asking for the same migration again
    finds its recorded steps (and, once done, does nothing).
    """

    migration_id: str = Field(min_length=1, max_length=256)
    table: str = Field(min_length=1, max_length=1024)
    partition_field: str = Field(min_length=1, max_length=300)
    granularity: Literal["HOUR", "DAY", "MONTH", "YEAR"] = "DAY"
    cluster: tuple[str, ...] = Field(default=(), max_length=4)
    #: Stop after the plan: report the estimate, change nothing.
    dry_run: bool = False
    #: Stop after this step (e.g. copy and verify now, swap at a quiet hour); the same migration
    #: asked again later resumes at the next step.
    stop_after: Literal["plan", "copy", "verify"] | None = None


P = TypeVar("P", bound=Payload)


class Route(BaseModel, Generic[P]):
    """Where a payload travels: queue and actor name are on the wire, keep them stable."""

    model_config = ConfigDict(frozen=True)

    queue: str
    actor: str
    payload: type[P]


SYNC_SQUARE_STREAM: Route[SyncRequest] = Route(
    queue=SQUARE_QUEUE, actor="sync_square_stream", payload=SyncRequest
)
PLAN_SQUARE_BACKFILL: Route[BackfillRequest] = Route(
    queue=SQUARE_QUEUE, actor="plan_square_backfill", payload=BackfillRequest
)
BACKFILL_SQUARE_WINDOW: Route[BackfillWindow] = Route(
    queue=SQUARE_QUEUE, actor="backfill_square_window", payload=BackfillWindow
)
SYNC_LIGHTSPEED_STREAM: Route[SyncRequest] = Route(
    queue=LIGHTSPEED_QUEUE, actor="sync_lightspeed_stream", payload=SyncRequest
)
PLAN_LIGHTSPEED_BACKFILL: Route[BackfillRequest] = Route(
    queue=LIGHTSPEED_QUEUE, actor="plan_lightspeed_backfill", payload=BackfillRequest
)
BACKFILL_LIGHTSPEED_WINDOW: Route[BackfillWindow] = Route(
    queue=LIGHTSPEED_QUEUE, actor="backfill_lightspeed_window", payload=BackfillWindow
)


UPSERT_SQUARE_RECORD: Route[RecordUpsert] = Route(
    queue=SQUARE_QUEUE, actor="upsert_square_record", payload=RecordUpsert
)
HANDLE_NOTION_EVENT: Route[WebhookEvent] = Route(
    queue=NOTION_QUEUE, actor="handle_notion_event", payload=WebhookEvent
)
RUN_MIGRATION: Route[MigrationRequest] = Route(
    queue=MIGRATIONS_QUEUE, actor="run_migration", payload=MigrationRequest
)


class SourceRoutes(BaseModel):
    """The three routes of one source."""

    model_config = ConfigDict(frozen=True)

    sync: Route[SyncRequest]
    plan: Route[BackfillRequest]
    window: Route[BackfillWindow]


_SOURCE_ROUTES = {
    "square": SourceRoutes(sync=SYNC_SQUARE_STREAM, plan=PLAN_SQUARE_BACKFILL, window=BACKFILL_SQUARE_WINDOW),
    "lightspeed": SourceRoutes(
        sync=SYNC_LIGHTSPEED_STREAM, plan=PLAN_LIGHTSPEED_BACKFILL, window=BACKFILL_LIGHTSPEED_WINDOW
    ),
}


def routes_for(source: str) -> SourceRoutes:
    """The sync, plan and window routes of ``source``.

    Raises:
        KeyError: for an unknown source.
    """
    return _SOURCE_ROUTES[source]


AnyRoute = (
    Route[SyncRequest]
    | Route[BackfillRequest]
    | Route[BackfillWindow]
    | Route[RecordUpsert]
    | Route[WebhookEvent]
    | Route[MigrationRequest]
)

#: Every route by actor name.
ROUTES: dict[str, AnyRoute] = {
    **{
        route.actor: route
        for routes in _SOURCE_ROUTES.values()
        for route in (routes.sync, routes.plan, routes.window)
    },
    UPSERT_SQUARE_RECORD.actor: UPSERT_SQUARE_RECORD,
    HANDLE_NOTION_EVENT.actor: HANDLE_NOTION_EVENT,
    RUN_MIGRATION.actor: RUN_MIGRATION,
}
