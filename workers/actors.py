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
    BACKFILL_SQUARE_WINDOW,
    PLAN_SQUARE_BACKFILL,
    SYNC_SQUARE_STREAM,
    BackfillRequest,
    BackfillWindow,
    Payload,
    SyncRequest,
)
from schemas.settings import Settings
from workers.broker import send
from workers.errors import InvalidPayload, PermanentError
from workers.resources import Resources
from workers.sync import plan_backfill, run_incremental, run_window

__all__ = ["register_actors"]

P = TypeVar("P", bound=Payload)

log = structlog.get_logger(__name__)


def _validate(model: type[P], payload: Any) -> P:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        # Name the fields, not their values: a payload may carry anything.
        fields = ", ".join(".".join(str(part) for part in err["loc"]) or "payload" for err in exc.errors())
        raise InvalidPayload(f"invalid {model.__name__} payload: {fields}") from None


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

    # The engine logs one summary line per run; the actors add nothing but the plan's.
    def sync_square_stream(payload: dict[str, Any]) -> None:
        request = _validate(SyncRequest, payload)
        context = resources.get()
        run_incremental(
            client=context.square,
            sink=context.sink,
            state=context.state,
            stream=request.stream,
            settings=context.settings,
            message_id=_message_id(),
        )

    def plan_square_backfill(payload: dict[str, Any]) -> None:
        request = _validate(BackfillRequest, payload)
        context = resources.get()
        windows = plan_backfill(
            client=context.square, state=context.state, request=request, settings=settings
        )
        for window in windows:
            send(broker, BACKFILL_SQUARE_WINDOW, window)
        log.info("backfill_planned", backfill_id=request.backfill_id, windows=len(windows))

    def backfill_square_window(payload: dict[str, Any]) -> None:
        window = _validate(BackfillWindow, payload)
        context = resources.get()
        run_window(
            client=context.square,
            sink=context.sink,
            state=context.state,
            window=window,
            settings=context.settings,
            message_id=_message_id(),
        )

    actors: dict[str, dramatiq.Actor[Any, Any]] = {}
    for route, fn in (
        (SYNC_SQUARE_STREAM, sync_square_stream),
        (PLAN_SQUARE_BACKFILL, plan_square_backfill),
        (BACKFILL_SQUARE_WINDOW, backfill_square_window),
    ):
        declare = dramatiq.actor(
            actor_name=route.actor, queue_name=route.queue, broker=broker, throws=(PermanentError,)
        )
        actors[route.actor] = declare(fn)
    return actors
