"""The actors: validate the payload, then hand the work to the engine with this process's collaborators.

Actors stay thin: the work lives in ``workers/sync.py``. A payload that fails validation is a
``PermanentError`` (dead-lettered at once with the validation error, never retried); so is every
other ``PermanentError`` (a 401, a 400, a refused BigQuery job), through ``throws=``.
"""

from __future__ import annotations

from typing import Any, TypeVar

import dramatiq
import structlog
from dramatiq.middleware import CurrentMessage
from pydantic import ValidationError

from schemas.messages import (
    HANDLE_NOTION_EVENT,
    RUN_MIGRATION,
    UPSERT_SQUARE_RECORD,
    BackfillRequest,
    BackfillWindow,
    MigrationRequest,
    Payload,
    RecordUpsert,
    SyncRequest,
    WebhookEvent,
    routes_for,
)
from schemas.settings import Settings
from workers.broker import send
from workers.errors import InvalidPayload, PermanentError
from workers.migrations import run_migration
from workers.resources import Resources
from workers.sync import plan_backfill, run_incremental, run_window
from workers.webhook_work import handle_notion_event, run_square_upsert

__all__ = ["register_actors"]

P = TypeVar("P", bound=Payload)

log = structlog.get_logger(__name__)


def _validate(model: type[P], payload: Any) -> P:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        # Name each field and the rule it breaks (the dead letter says why it died), never the value
        # given: a payload may carry anything. Pydantic's messages do not repeat the input; a check
        # of the whole payload (loc "payload") names at most a stream. Bounded, as it is logged.
        problems = [
            f"{'.'.join(str(part) for part in err['loc']) or 'payload'}: {err['msg']}"[:200]
            for err in exc.errors(include_url=False, include_input=False)[:5]
        ]
        raise InvalidPayload(f"invalid {model.__name__} payload: {'; '.join(problems)}") from None


def _message_id() -> str | None:
    message = CurrentMessage.get_current_message()
    return message.message_id if message is not None else None


def register_actors(broker: dramatiq.Broker, settings: Settings) -> dict[str, dramatiq.Actor[Any, Any]]:
    """Declare possync's actors on ``broker`` and return them by name.

    The actors' collaborators are built once per worker process, on first use, by the
    :class:`~workers.resources.Resources` middleware added here.
    """
    resources = Resources(settings)
    broker.add_middleware(resources)

    actors: dict[str, dramatiq.Actor[Any, Any]] = {}
    for source in ("square", "lightspeed"):
        actors.update(_source_actors(broker, resources, source))
    actors.update(_webhook_actors(broker, resources))
    actors.update(_migration_actor(broker, resources, settings))
    return actors


def _migration_actor(
    broker: dramatiq.Broker, resources: Resources, settings: Settings
) -> dict[str, dramatiq.Actor[Any, Any]]:
    """The migration actor, on its own queue with a longer time limit (a CTAS takes a while)."""

    def migrate(payload: dict[str, Any]) -> None:
        request = _validate(MigrationRequest, payload)
        context = resources.get()
        sink = context.sink
        run_migration(
            client=sink.client,
            sink=sink,
            semaphore=sink.semaphore,
            project=sink.project,
            dataset=sink.dataset,
            location=sink.location,
            request=request,
            settings=context.settings,
            message_id=_message_id(),
        )

    declare = dramatiq.actor(
        actor_name=RUN_MIGRATION.actor,
        queue_name=RUN_MIGRATION.queue,
        broker=broker,
        throws=(PermanentError,),
        time_limit=settings.migration_time_limit_seconds * 1000,
    )
    return {RUN_MIGRATION.actor: declare(migrate)}


def _webhook_actors(broker: dramatiq.Broker, resources: Resources) -> dict[str, dramatiq.Actor[Any, Any]]:
    """The actors of webhook-driven messages: a Square record's upsert, a Notion event."""

    def upsert_square_record(payload: dict[str, Any]) -> None:
        request = _validate(RecordUpsert, payload)
        context = resources.get()
        run_square_upsert(
            source=context.square(),
            sink=context.sink,
            request=request,
            settings=context.settings,
            message_id=_message_id(),
        )

    def notion_event(payload: dict[str, Any]) -> None:
        event = _validate(WebhookEvent, payload)
        context = resources.get()
        handle_notion_event(client=context.notion(), sink=context.sink, event=event, message_id=_message_id())

    actors: dict[str, dramatiq.Actor[Any, Any]] = {}
    for route, fn in ((UPSERT_SQUARE_RECORD, upsert_square_record), (HANDLE_NOTION_EVENT, notion_event)):
        declare = dramatiq.actor(
            actor_name=route.actor, queue_name=route.queue, broker=broker, throws=(PermanentError,)
        )
        actors[route.actor] = declare(fn)
    return actors


def _source_actors(
    broker: dramatiq.Broker, resources: Resources, source: str
) -> dict[str, dramatiq.Actor[Any, Any]]:
    """The sync, plan and window actors of one source, on its queue."""
    routes = routes_for(source)

    def _check(payload_source: str) -> None:
        if payload_source != source:
            raise InvalidPayload(f"a {payload_source} payload on the {source} queue")

    # The engine logs one summary line per run; the actors add nothing but the plan's.
    def sync_stream(payload: dict[str, Any]) -> None:
        request = _validate(SyncRequest, payload)
        _check(request.source)
        context = resources.get()
        run_incremental(
            source=context.source(source),
            sink=context.sink,
            state=context.state,
            stream=request.stream,
            settings=context.settings,
            message_id=_message_id(),
        )

    def plan_backfill_windows(payload: dict[str, Any]) -> None:
        request = _validate(BackfillRequest, payload)
        _check(request.source)
        context = resources.get()
        windows = plan_backfill(
            source=context.source(source), state=context.state, request=request, settings=context.settings
        )
        for window in windows:
            send(broker, routes.window, window)

    def backfill_window(payload: dict[str, Any]) -> None:
        window = _validate(BackfillWindow, payload)
        _check(window.source)
        context = resources.get()
        run_window(
            source=context.source(source),
            sink=context.sink,
            state=context.state,
            window=window,
            settings=context.settings,
            message_id=_message_id(),
        )

    actors: dict[str, dramatiq.Actor[Any, Any]] = {}
    for route, fn in (
        (routes.sync, sync_stream),
        (routes.plan, plan_backfill_windows),
        (routes.window, backfill_window),
    ):
        declare = dramatiq.actor(
            actor_name=route.actor, queue_name=route.queue, broker=broker, throws=(PermanentError,)
        )
        actors[route.actor] = declare(fn)
    return actors
