"""Queue payloads and the routes (queue, actor name) they travel on.

Producers send by route with a validated payload and never import actors; workers validate the
payload again before doing any work. Every payload carries ``schema_version`` so that a rolling
upgrade never feeds a worker a shape it would misread, and ``request_id`` so that
``--wait`` can follow every message one request caused, children included.
"""

from __future__ import annotations

from datetime import datetime
from typing import Generic, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

__all__ = [
    "BACKFILL_SQUARE_WINDOW",
    "PLAN_SQUARE_BACKFILL",
    "ROUTES",
    "SQUARE_QUEUE",
    "SYNC_SQUARE_STREAM",
    "BackfillRequest",
    "BackfillWindow",
    "Payload",
    "Route",
    "SquareStream",
    "SyncRequest",
]

SQUARE_QUEUE = "square"

SquareStream = Literal["payments", "items", "customers"]


class Payload(BaseModel):
    """Base of every message payload."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Bumped on any incompatible change to a payload's shape.
    schema_version: Literal[1] = 1
    #: The request (CLI command, scheduler tick, webhook) this message belongs to.
    request_id: str = Field(min_length=1, max_length=128)


class SyncRequest(Payload):
    """Incremental sync of one stream: read what changed since the checkpoint, merge, checkpoint."""

    source: Literal["square"] = "square"
    stream: SquareStream


class BackfillRequest(Payload):
    """Plan a backfill: list locations, split [since, until) into windows, enqueue one per window."""

    source: Literal["square"] = "square"
    backfill_id: str = Field(min_length=1, max_length=128)
    since: AwareDatetime
    until: AwareDatetime
    streams: tuple[SquareStream, ...] = ("payments", "items", "customers")
    window_days: int = Field(default=365, ge=1)


class BackfillWindow(Payload):
    """One window of a backfill: payments of one location created in [start, end), or a whole stream."""

    source: Literal["square"] = "square"
    backfill_id: str = Field(min_length=1, max_length=128)
    window_id: str = Field(min_length=1, max_length=256)
    stream: SquareStream
    location_id: str | None = None
    start: datetime | None = None
    end: datetime | None = None


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

#: Every route by actor name.
ROUTES: dict[str, Route[SyncRequest] | Route[BackfillRequest] | Route[BackfillWindow]] = {
    route.actor: route for route in (SYNC_SQUARE_STREAM, PLAN_SQUARE_BACKFILL, BACKFILL_SQUARE_WINDOW)
}
