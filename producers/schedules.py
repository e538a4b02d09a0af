"""Schedules: which streams the scheduler syncs and when, from ``POSSYNC_SCHEDULES`` (croniter, UTC).

``POSSYNC_SCHEDULES`` is JSON mapping ``source`` (each of its streams) or ``source.stream``
(overriding the source's entry) to a cron expression of five fields, or six with seconds last.
Empty: every stream of each source whose credentials are configured, every 15 minutes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import CroniterError, croniter

from schemas.messages import SOURCE_STREAMS
from schemas.settings import ConfigError, Settings

__all__ = ["DEFAULT_CRON", "MAX_SKIPPED_COUNTED", "Schedule", "parse_schedules"]

#: The schedule of every stream of every source with credentials when ``POSSYNC_SCHEDULES`` is empty.
DEFAULT_CRON = "*/15 * * * *"
#: Missed ticks are counted (for the catch-up log line) up to this many.
MAX_SKIPPED_COUNTED = 10_000

_ENV = "POSSYNC_SCHEDULES"


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Schedule:
    """The cron schedule of one stream, in UTC.

    Attributes:
        source: e.g. ``square``.
        stream: e.g. ``payments``.
        cron: five cron fields, or six with seconds last (croniter's convention).
    """

    source: str
    stream: str
    cron: str

    @property
    def name(self) -> str:
        """``<source>.<stream>``: the schedule's name in logs and Redis keys."""
        return f"{self.source}.{self.stream}"

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after ``moment``."""
        tick: datetime = croniter(self.cron, moment.astimezone(UTC)).get_next(datetime)
        return tick

    def latest_at_or_before(self, moment: datetime) -> datetime:
        """The last tick at or before ``moment``."""
        moment = moment.astimezone(UTC)
        previous: datetime = croniter(self.cron, moment).get_prev(datetime)
        following = self.next_after(previous)
        return following if following <= moment else previous

    def count_between(self, start: datetime, end: datetime, *, limit: int = MAX_SKIPPED_COUNTED) -> int:
        """How many ticks lie in ``[start, end)`` (``start`` being a tick), counting up to ``limit``."""
        count = 0
        iterator = croniter(self.cron, start.astimezone(UTC) - timedelta(seconds=1))
        while count < limit:
            tick: datetime = iterator.get_next(datetime)
            if tick >= end:
                break
            count += 1
        return count


def _check_cron(key: str, cron: str) -> None:
    fields = cron.split()
    if not cron.strip().startswith("@") and len(fields) not in (5, 6):
        raise ConfigError(
            f"{_ENV}: entry {key!r} has {len(fields)} cron fields in {cron!r}: "
            "expected 5 (minute hour day month weekday) or 6 (the same, then seconds)"
        )
    if not croniter.is_valid(cron):
        raise ConfigError(f"{_ENV}: entry {key!r} has an invalid cron expression {cron!r}")
    try:
        croniter(cron, _utc_now()).get_next(datetime)
    except CroniterError as exc:
        raise ConfigError(f"{_ENV}: entry {key!r}: cron expression {cron!r} never fires ({exc})") from None


def _configured_sources(settings: Settings) -> list[str]:
    checks: dict[str, Callable[[], object]] = {
        "square": settings.require_square,
        "lightspeed": settings.require_lightspeed,
    }
    configured = []
    for source, check in checks.items():
        try:
            check()
        except ConfigError:
            continue
        configured.append(source)
    return configured


def parse_schedules(settings: Settings) -> tuple[Schedule, ...]:
    """The schedule of every stream to sync, validated, in ``SOURCE_STREAMS`` order.

    ``POSSYNC_SCHEDULES`` maps ``source`` (each of its streams) or ``source.stream`` (overriding the
    source's entry) to a cron expression. Empty: every stream of each source whose credentials are
    configured, on :data:`DEFAULT_CRON`. Explicit schedules need no credentials: this process only
    enqueues.

    Raises:
        ConfigError: naming ``POSSYNC_SCHEDULES`` and the bad entry (unknown source or stream, bad
            cron expression), or when nothing at all would be scheduled.
    """
    entries = dict(settings.schedules)
    if not entries:
        sources = _configured_sources(settings)
        if not sources:
            raise ConfigError(
                f"{_ENV} is empty and no source has credentials (POSSYNC_SQUARE_ACCESS_TOKEN, or the "
                'POSSYNC_LIGHTSPEED_* ones): nothing to schedule. Set e.g. {"square": "*/15 * * * *"}'
            )
        entries = dict.fromkeys(sources, DEFAULT_CRON)
    crons: dict[tuple[str, str], str] = {}
    # Whole sources first, so that "source.stream" entries override them.
    for key, cron in sorted(entries.items(), key=lambda item: "." in item[0]):
        source, dot, stream = key.partition(".")
        if source not in SOURCE_STREAMS:
            raise ConfigError(
                f"{_ENV}: unknown source {source!r} in entry {key!r}: expected one of "
                f"{', '.join(SOURCE_STREAMS)} (or <source>.<stream>)"
            )
        known = SOURCE_STREAMS[source]
        if dot and stream not in known:
            raise ConfigError(
                f"{_ENV}: {source} has no stream {stream!r} (entry {key!r}): expected one of "
                f"{', '.join(known)}"
            )
        _check_cron(key, cron)
        for name in (stream,) if dot else known:
            crons[(source, name)] = cron.strip()
    return tuple(
        Schedule(source=source, stream=stream, cron=crons[(source, stream)])
        for source, streams in SOURCE_STREAMS.items()
        for stream in streams
        if (source, stream) in crons
    )
