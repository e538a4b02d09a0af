"""The ``possync`` command: the composition root.

Each subcommand imports what it needs inside its own function, so ``possync status`` never loads
the BigQuery client and ``possync worker`` never loads the sandbox. Settings are loaded once here
from ``POSSYNC_*`` variables and passed down; a missing or invalid one fails at start-up, named.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime, time
from typing import Any

import redis

from schemas.messages import QUEUES, SOURCE_STREAMS

__all__ = ["main"]

_STREAMS_HELP = "; ".join(f"{source}: {', '.join(streams)}" for source, streams in SOURCE_STREAMS.items())

_DESCRIPTION = """\
possync keeps a BigQuery warehouse in step with Square, Lightspeed Retail (R-Series) and Notion.

Producers (this command, the scheduler, the webhook receiver) put messages on Redis queues (one
per source: square, lightspeed, notion); worker pools (`possync worker`) consume them, fetch from
the source's API and merge rows into BigQuery.
Everything is configured by POSSYNC_* environment variables (see README.md).

Try `possync demo`: it runs the whole system locally against Square, Lightspeed and Notion
sandboxes and a BigQuery emulator, with no account anywhere, and checks the warehouse against the
ground truth.
"""


class CommandError(Exception):
    """A command cannot run as asked; the message says why. Exit status 2."""


def _parse_when(text: str) -> datetime:
    """A date (midnight UTC) or an ISO 8601 date-time (UTC unless it says otherwise)."""
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(0), tzinfo=UTC)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD) or ISO date-time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _column_list(text: str) -> tuple[str, ...]:
    columns = tuple(part.strip() for part in text.split(",") if part.strip())
    if not columns:
        raise argparse.ArgumentTypeError("give at least one column, e.g. customer_id,status")
    if len(columns) > 4:
        raise argparse.ArgumentTypeError(f"BigQuery clusters by at most 4 columns, not {len(columns)}")
    return columns


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="possync", description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = commands.add_parser(
        "worker",
        help="run a worker pool (Dramatiq processes and threads) on some queues",
        description="Run worker processes that consume the given queues until stopped (SIGTERM/Ctrl-C).",
    )
    worker.add_argument(
        "--queues",
        nargs="+",
        default=["square"],
        choices=list(QUEUES),
        help="queues to consume: square, lightspeed, notion, migrations, or several (default: square)",
    )
    worker.add_argument("--processes", type=_positive_int, default=2, help="worker processes (default: 2)")
    worker.add_argument("--threads", type=_positive_int, default=4, help="threads per process (default: 4)")

    scheduler = commands.add_parser(
        "scheduler",
        help="enqueue incremental syncs on cron schedules (any number of replicas may run)",
        description=(
            "Enqueue an incremental sync of each scheduled stream at each tick of its cron schedule\n"
            "(POSSYNC_SCHEDULES; default every 15 minutes for every source with credentials).\n"
            "Each tick is claimed once through Redis, so replicas never double-fire; a stream whose\n"
            "last sync is still queued or running is not sent another; after downtime each stream\n"
            "gets one catch-up sync. Metrics on POSSYNC_SCHEDULER_METRICS_PORT (/metrics)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scheduler.add_argument(
        "--once",
        action="store_true",
        help="handle the ticks due now (at most one per stream), then exit instead of running on",
    )

    webhooks = commands.add_parser(
        "webhooks",
        help="run the webhook receiver for Notion and Square (an ASGI app on uvicorn)",
        description=(
            "Receive Notion (POST /webhooks/notion) and Square (POST /webhooks/square) webhooks,\n"
            "verify their signatures and enqueue them. Listens on POSSYNC_WEBHOOKS_HOST:PORT;\n"
            "GET /healthz, /readyz, /metrics, /openapi.json."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    webhooks.add_argument(
        "--set-notion-verification-token",
        metavar="TOKEN",
        help="replace the Notion verification token kept in Redis (TOKEN - reads stdin), then exit",
    )

    sync = commands.add_parser(
        "sync",
        help="enqueue an incremental sync of a source",
        description="Enqueue an incremental sync (changes since the checkpoint, with lookback).",
    )
    sync.add_argument("source", choices=list(SOURCE_STREAMS))
    sync.add_argument(
        "--stream",
        choices=sorted({stream for streams in SOURCE_STREAMS.values() for stream in streams}),
        action="append",
        help=f"stream to sync; repeat for several (default: all). {_STREAMS_HELP}",
    )
    _add_wait(sync)

    backfill = commands.add_parser(
        "backfill",
        help="enqueue a backfill of a source's history, split into windows",
        description=(
            "Plan a backfill: records created in [--since, --until) are split into windows (Square\n"
            "payments: per location too), one message each, run in parallel by the workers; Square items\n"
            "and customers and Lightspeed items are read whole. Lightspeed windows share the account's\n"
            "rate-limit bucket, paced through Redis. The plan is kept in Redis: `possync status` shows\n"
            "what is missing and --resume re-enqueues it."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    backfill.add_argument("source", choices=list(SOURCE_STREAMS))
    backfill.add_argument("--since", type=_parse_when, help="start, YYYY-MM-DD or ISO date-time (UTC)")
    backfill.add_argument("--until", type=_parse_when, help="end, exclusive (default: now)")
    backfill.add_argument(
        "--window-days",
        type=_positive_int,
        help="days per window (default: POSSYNC_BACKFILL_WINDOW_DAYS for Square, "
        "POSSYNC_LIGHTSPEED_BACKFILL_WINDOW_DAYS for Lightspeed)",
    )
    backfill.add_argument(
        "--stream",
        choices=sorted({stream for streams in SOURCE_STREAMS.values() for stream in streams}),
        action="append",
        help=f"stream to backfill; repeat for several (default: all). {_STREAMS_HELP}",
    )
    backfill.add_argument(
        "--resume",
        action="store_true",
        help="re-enqueue the windows of the latest (or --backfill-id) backfill that are not done",
    )
    backfill.add_argument(
        "--backfill-id", help="with --resume: which backfill (default: the source's latest)"
    )
    _add_wait(backfill)

    migrate = commands.add_parser(
        "migrate",
        help="move a table to a partitioned and clustered layout; list migrations",
        description=(
            "Migrations run on the migrations queue (`possync worker --queues migrations`) as recorded\n"
            "steps in the _possync_migrations table: plan (a dry-run estimate of bytes and cost), copy\n"
            "(CREATE TABLE ... PARTITION BY ... CLUSTER BY ... AS SELECT with the types of\n"
            "schemas/tables.py: FLOAT amounts become NUMERIC to the cent), verify (counts, sums, min/max\n"
            "of the partition column and distinct keys equal the source's), swap (with every writer of\n"
            "the table held off, TABLE becomes TABLE__backup_<timestamp> and the copy becomes TABLE).\n"
            "A crashed or retried migration resumes at its step; the same migration again does nothing."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    migrations = migrate.add_subparsers(dest="migrate_command", required=True, metavar="ACTION")
    partition = migrations.add_parser(
        "partition",
        help="enqueue a migration of TABLE to a partitioned, clustered layout",
        description="Enqueue a MigrationRequest; the layout defaults to the table's in schemas/tables.py.",
    )
    partition.add_argument("table", help="table to migrate, e.g. square_payments")
    partition.add_argument(
        "--partition-field",
        help="TIMESTAMP or DATE column to partition by (default: the table's in the code)",
    )
    partition.add_argument(
        "--granularity",
        choices=["HOUR", "DAY", "MONTH", "YEAR"],
        help="partition granularity (default: the table's in the code, DAY for square_payments)",
    )
    partition.add_argument(
        "--cluster",
        type=_column_list,
        help="comma-separated clustering columns, at most 4 (default: the table's in the code)",
    )
    partition.add_argument(
        "--dry-run",
        action="store_true",
        help="only plan: report bytes to process and the cost, change nothing",
    )
    partition.add_argument(
        "--stop-after",
        choices=["plan", "copy", "verify"],
        help="stop after this step; the same command without it later resumes at the next step",
    )
    _add_wait(partition)
    migrate_status = migrations.add_parser(
        "status", help="list migrations and their steps", description="List migrations and their steps."
    )
    migrate_status.add_argument("--json", action="store_true", help="print JSON")

    status = commands.add_parser(
        "status", help="show queues, streams, backfills and dead letters", description="Show system state."
    )
    status.add_argument("--json", action="store_true", help="print JSON")

    _add_dlq_parser(commands)

    report = commands.add_parser(
        "report",
        help="print revenue figures from the warehouse",
        description=(
            "Revenue today/this week/month/year (report time zone), transactions, customers and average\n"
            "order value: Square's over COMPLETED payments at the top level, Lightspeed's over completed\n"
            "sales under `lightspeed`, with the same keys."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument("--json", action="store_true", help="print JSON")

    demo = commands.add_parser(
        "demo",
        help="run the whole system locally (sandboxes, Redis, BigQuery emulator) and check it",
        description=(
            "Start a Redis server, the Square, Lightspeed and Notion sandboxes, the BigQuery emulator,\n"
            "the webhook receiver, two scheduler replicas and worker processes (every queue) on this\n"
            "machine, ignoring every POSSYNC_ endpoint and credential in the environment (it never\n"
            "touches a real service). Backfill both point-of-sale sources' full history with a progress\n"
            "display; have the sandboxes send signed Notion and Square webhooks and wait until they land;\n"
            "print the report, then compare the warehouse with each sandbox's ground truth row by row,\n"
            "report and notion_pages included. Exits non-zero on any difference. The first run builds\n"
            "the emulator's environment (about a minute)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--payments", type=_positive_int, default=100_184, help="payments to generate")
    demo.add_argument("--customers", type=_positive_int, default=1_732, help="customers to generate")
    demo.add_argument("--sales", type=_positive_int, default=10_000, help="Lightspeed sales to generate")
    demo.add_argument("--items", type=_positive_int, default=1_000, help="Lightspeed items to generate")
    demo.add_argument("--processes", type=_positive_int, default=2, help="worker processes (default: 2)")
    demo.add_argument("--threads", type=_positive_int, default=4, help="threads per worker process")
    demo.add_argument("--seed", type=int, default=7, help="sandbox data seed")
    demo.add_argument(
        "--keep-running", action="store_true", help="after the check, print the endpoints and stay up"
    )
    demo.add_argument("--work-dir", help="where to keep logs and data (default: a temporary directory)")
    demo.add_argument(
        "--sandbox-token",
        default="sandbox-demo-token",
        help="the fake access token the sandbox accepts and the workers send (tests use a sentinel)",
    )
    return parser


def _add_wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        action="store_true",
        help="block until every message of this request is done; non-zero exit if any was dead-lettered",
    )
    parser.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``possync`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    from schemas.settings import ConfigError

    handlers = {
        "worker": _worker,
        "scheduler": _scheduler,
        "webhooks": _webhooks,
        "sync": _sync,
        "backfill": _backfill,
        "migrate": _migrate,
        "status": _status,
        "dlq": _dlq,
        "report": _report,
        "demo": _demo,
    }
    try:
        return handlers[args.command](args)
    except (ConfigError, CommandError) as exc:
        print(f"possync {args.command}: {exc}", file=sys.stderr)
        return 2
    except redis.ConnectionError as exc:
        print(f"possync {args.command}: cannot reach Redis (POSSYNC_REDIS_URL): {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _settings() -> Any:
    from schemas.settings import load_settings
    from workers.logs import configure_logging

    settings = load_settings()
    configure_logging(level=settings.log_level, fmt=settings.log_format, stream=sys.stderr)
    return settings


def _worker(args: argparse.Namespace) -> int:
    # Dramatiq prefetches 2 x threads messages per queue unless told otherwise; a backfill window
    # takes seconds to minutes, so a process holding more than its threads can run starves the
    # pool's other processes (one process took 8 of 9 windows). Dramatiq reads this when
    # dramatiq.worker is first imported, just below; the forked processes inherit it.
    os.environ.setdefault("dramatiq_queue_prefetch", str(args.threads))
    import dramatiq.cli

    settings = _settings()
    # Fail here, naming the variable, rather than in every forked process on its first message.
    if "square" in args.queues:
        settings.require_square()
    if "lightspeed" in args.queues:
        settings.require_lightspeed()
    if "notion" in args.queues:
        settings.require_notion()
    # The migrations queue needs BigQuery only, like every pool.
    settings.require_bigquery()
    if settings.worker_metrics_port:
        from workers.metrics_env import prepare_worker_metrics

        prepare_worker_metrics(
            settings.worker_metrics_dir, host=settings.worker_metrics_host, port=settings.worker_metrics_port
        )
    dramatiq_args = dramatiq.cli.make_argument_parser().parse_args(
        [
            "workers.entry:setup",
            "--processes",
            str(args.processes),
            "--threads",
            str(args.threads),
            "--skip-logging",
            "--queues",
            *args.queues,
        ]
    )
    return int(dramatiq.cli.main(dramatiq_args) or 0)


def _scheduler(args: argparse.Namespace) -> int:
    from producers.scheduler import run_scheduler

    return run_scheduler(_settings(), once=args.once)


def _webhooks(args: argparse.Namespace) -> int:
    from producers.webhooks import replace_notion_verification_token, run_webhooks

    settings = _settings()
    if args.set_notion_verification_token is not None:
        token = args.set_notion_verification_token
        if token == "-":  # noqa: S105 (the stdin marker, not a password)
            token = sys.stdin.readline().strip()
        if not token:
            raise CommandError("the Notion verification token is empty")
        replace_notion_verification_token(_redis(settings), token)
        print("Notion verification token replaced.")
        return 0
    return run_webhooks(settings)


def _redis(settings: Any) -> Any:
    import redis

    return redis.Redis.from_url(settings.redis_url)


def _wait_and_report(args: argparse.Namespace, settings: Any, request_id: str) -> int:
    """Follow a request to its end, printing progress to stderr and a summary to stdout."""
    import time as clock

    from producers.waiting import RequestTimeout, wait_for_request
    from workers.queues import dead_letters

    client = _redis(settings)
    started = clock.monotonic()
    last_line = ""

    def show(progress: Any) -> None:
        nonlocal last_line
        line = f"  {progress.done + progress.dead}/{progress.total} messages finished"
        if progress.dead:
            line += f", {progress.dead} dead-lettered"
        if line != last_line:
            print(line, file=sys.stderr, flush=True)
            last_line = line

    try:
        progress = wait_for_request(client, request_id, timeout_seconds=args.timeout, on_progress=show)
    except RequestTimeout as exc:
        print(f"possync: {exc}", file=sys.stderr)
        return 3
    seconds = clock.monotonic() - started
    summary: dict[str, Any] = {
        "request_id": request_id,
        "messages": progress.total,
        "done": progress.done,
        "dead": progress.dead,
        "seconds": round(seconds, 1),
    }
    if progress.dead:
        dead = set(progress.dead_message_ids)
        summary["dead_letters"] = [
            {"message_id": letter.message_id, "actor": letter.actor, "error": letter.error}
            for letter in dead_letters(client, QUEUES)
            if letter.message_id in dead
        ]
    print(json.dumps(summary, indent=2))
    return 1 if progress.dead else 0


def _broker(settings: Any) -> Any:
    from workers.broker import build_broker

    return build_broker(settings)


def _streams(source: str, chosen: list[str] | None) -> tuple[str, ...]:
    """The chosen streams of ``source`` (all of them if none was chosen), checked."""
    known = SOURCE_STREAMS[source]
    for stream in chosen or ():
        if stream not in known:
            raise CommandError(f"{source} has no stream {stream!r}: choose from {', '.join(known)}")
    return tuple(dict.fromkeys(chosen)) if chosen else known


def _sync(args: argparse.Namespace) -> int:
    from producers.enqueue import enqueue, new_request_id
    from schemas.messages import SyncRequest, routes_for

    streams = _streams(args.source, args.stream)
    settings = _settings()
    broker = _broker(settings)
    request_id = new_request_id("sync")
    route = routes_for(args.source).sync
    for stream in streams:
        enqueue(broker, route, SyncRequest(request_id=request_id, source=args.source, stream=stream))
    print(f"enqueued {args.source} sync {request_id}: {', '.join(streams)}", file=sys.stderr)
    return _wait_and_report(args, settings, request_id) if args.wait else 0


def _backfill(args: argparse.Namespace) -> int:
    from producers.enqueue import enqueue, new_request_id
    from schemas.messages import BackfillRequest, routes_for
    from workers.state import StateStore

    streams = _streams(args.source, args.stream)
    settings = _settings()
    broker = _broker(settings)
    request_id = new_request_id("backfill")
    if args.resume:
        state = StateStore(_redis(settings))
        plan = state.get_plan(args.backfill_id) if args.backfill_id else state.latest_backfill(args.source)
        if plan is None or plan.meta.get("source", "square") != args.source:
            raise CommandError(
                f"no {args.source} backfill to resume"
                + (f" with id {args.backfill_id}" if args.backfill_id else "")
            )
        missing = state.missing_windows(plan.backfill_id)
        for window in missing:
            route = routes_for(window.source).window
            enqueue(broker, route, window.model_copy(update={"request_id": request_id}))
        print(f"resumed backfill {plan.backfill_id}: {len(missing)} windows re-enqueued", file=sys.stderr)
        if not missing:
            return 0
    else:
        if args.since is None:
            raise CommandError("--since is required (or --resume)")
        until = args.until or datetime.now(UTC)
        if until <= args.since:
            raise CommandError("--until must be after --since")
        default_days = (
            settings.lightspeed_backfill_window_days
            if args.source == "lightspeed"
            else settings.backfill_window_days
        )
        request = BackfillRequest(
            request_id=request_id,
            backfill_id=request_id,
            source=args.source,
            since=args.since,
            until=until,
            streams=streams,
            window_days=args.window_days or default_days,
        )
        enqueue(broker, routes_for(args.source).plan, request)
        print(
            f"enqueued {args.source} backfill {request_id} from {args.since.isoformat()} "
            f"to {until.isoformat()}: {', '.join(streams)}",
            file=sys.stderr,
        )
    return _wait_and_report(args, settings, request_id) if args.wait else 0


def _migrate(args: argparse.Namespace) -> int:
    if args.migrate_command == "status":
        return _migrate_status(args)
    from producers.enqueue import enqueue, new_request_id
    from schemas.messages import RUN_MIGRATION, MigrationRequest
    from schemas.tables import TABLES
    from workers.migrations import InvalidMigration, migration_id_for, validate_migration

    spec = TABLES.get(args.table)
    if spec is None:
        known = ", ".join(sorted(name for name in TABLES if not name.startswith("_")))
        raise CommandError(f"unknown table {args.table!r}: possync manages {known}")
    field = args.partition_field or spec.partition_field
    if field is None:
        raise CommandError(f"{spec.name} has no partition column in the code: give --partition-field")
    granularity = args.granularity or spec.partition_granularity
    cluster = args.cluster if args.cluster is not None else spec.clustering
    settings = _settings()
    request_id = new_request_id("migrate")
    request = MigrationRequest(
        request_id=request_id,
        migration_id=migration_id_for(spec.name, field, granularity, cluster),
        table=spec.name,
        partition_field=field,
        granularity=granularity,
        cluster=tuple(cluster),
        dry_run=args.dry_run,
        stop_after=args.stop_after,
    )
    try:
        # The worker checks again; refusing here keeps a bad layout out of the queue.
        validate_migration(request, project=settings.require_bigquery(), dataset=settings.bigquery_dataset)
    except InvalidMigration as exc:
        raise CommandError(str(exc)) from None
    enqueue(_broker(settings), RUN_MIGRATION, request)
    print(
        f"enqueued migration {request.migration_id} ({'dry run' if args.dry_run else 'partition'}) "
        f"as {request_id}",
        file=sys.stderr,
    )
    if not args.wait:
        return 0
    outcome = _wait_and_report(args, settings, request_id)
    _print_migrations(settings, migration_id=request.migration_id, as_json=False)
    return outcome


def _migrate_status(args: argparse.Namespace) -> int:
    _print_migrations(_settings(), migration_id=None, as_json=args.json)
    return 0


def _print_migrations(settings: Any, *, migration_id: str | None, as_json: bool) -> None:
    from workers.migrations import list_migrations
    from workers.sinks.bigquery import make_bigquery_client

    project = settings.require_bigquery()
    found = list_migrations(
        make_bigquery_client(settings), project=project, dataset=settings.bigquery_dataset
    )
    if migration_id is not None:
        found = [migration for migration in found if migration.migration_id == migration_id]
    if as_json:
        print(json.dumps([migration.as_dict() for migration in found], indent=2, default=str))
        return
    if not found:
        print("no migrations")
    for migration in found:
        print(migration.describe())


def _status(args: argparse.Namespace) -> int:
    from producers.status import collect_status, format_status

    status = collect_status(_redis(_settings()))
    print(json.dumps(status, indent=2, default=str) if args.json else format_status(status))
    return 0


_DLQ_DESCRIPTION = """\
Dead letters are messages that failed for good: a permanent error (400, 401, 403, an invalid payload)
or every retry spent (POSSYNC_MAX_RETRIES). Each keeps its payload and its last error until it is
replayed or purged; Dramatiq drops it by itself POSSYNC_DEAD_LETTER_TTL_DAYS (default 30) after
it died.

Fix the cause first (restore the token, wait out the outage), then replay: a replayed message is a
new message with the same actor and payload, its full retries and a new request id that --wait
follows. Replaying is safe even twice: every write is an idempotent MERGE on the record's key.
"""

_DLQ_EXAMPLES = """\
examples:
  possync dlq list                              # every dead letter: id, queue, actor, age, retries, error
  possync dlq list --queue square --json
  possync dlq show 5d0c4c52                     # one in full (an id or a unique prefix), payload included
  possync dlq replay 5d0c4c52 --wait            # replay one, follow it to its end
  possync dlq replay --all --queue square --wait
  possync dlq purge --older-than 7d             # asks first; --yes to skip the question
"""


def _duration(text: str) -> float:
    from producers.dlq import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_dlq_parser(commands: Any) -> None:
    """``possync dlq list|show|replay|purge``."""
    dlq = commands.add_parser(
        "dlq",
        help="list, show, replay or purge dead-lettered messages",
        description=_DLQ_DESCRIPTION,
        epilog=_DLQ_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    queue_help = f"only this queue's dead letters (default: every queue: {', '.join(QUEUES)})"

    listing = actions.add_parser(
        "list",
        help="list dead letters, oldest first",
        description="List dead letters, oldest first: id, queue, actor, age since death, retries, error.",
        epilog="examples:\n  possync dlq list\n  possync dlq list --queue lightspeed --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listing.add_argument("--queue", choices=list(QUEUES), help=queue_help)
    listing.add_argument("--json", action="store_true", help="print JSON (payloads and expiry included)")

    show = actions.add_parser(
        "show",
        help="show one dead letter in full, payload and last error included",
        description="Show one dead letter in full: ids, times, retries, last error and payload.",
        epilog="examples:\n  possync dlq show 5d0c4c52-8f0e-4d8b-9c55-0a1b2c3d4e5f\n  possync dlq show 5d0c",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument("id", help="the message id, or a prefix only one dead letter's id starts with")
    show.add_argument("--json", action="store_true", help="print JSON")

    replay = actions.add_parser(
        "replay",
        help="put dead letters back on their queues (fix the cause first)",
        description=(
            "Enqueue each chosen dead letter again as a new message (same actor and payload, full\n"
            "retries, a new request id for --wait), then remove it and its recorded error. A crash in\n"
            "between leaves the dead letter in place; replaying it again is harmless, since every\n"
            "write is idempotent. What was replayed goes to stderr; with --wait, stdout is the\n"
            "request's summary as for every --wait."
        ),
        epilog=(
            "examples:\n  possync dlq replay 5d0c4c52 9a1b77e0 --wait\n"
            "  possync dlq replay --all --queue square --wait --timeout 600\n"
            "  possync dlq replay --all --json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    replay.add_argument("ids", nargs="*", metavar="ID", help="message ids (or unique prefixes) to replay")
    replay.add_argument("--all", action="store_true", help="replay every dead letter (of --queue)")
    replay.add_argument("--queue", choices=list(QUEUES), help=queue_help)
    replay.add_argument("--json", action="store_true", help="without --wait: print what was replayed as JSON")
    _add_wait(replay)

    purge = actions.add_parser(
        "purge",
        help="remove dead letters older than a duration, for good (asks first)",
        description=(
            "Remove dead letters that died longer ago than --older-than, with their recorded errors,\n"
            "after listing them and asking (on a terminal; elsewhere pass --yes). Also drops errors\n"
            "still recorded for dead letters Dramatiq already expired."
        ),
        epilog=(
            "examples:\n  possync dlq purge --older-than 7d\n"
            "  possync dlq purge --older-than 12h --queue notion --yes"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    purge.add_argument(
        "--older-than",
        type=_duration,
        required=True,
        metavar="DURATION",
        help="dead for longer than this: 7d, 12h, 30m, 45s, 2w or combined (1d12h)",
    )
    purge.add_argument("--queue", choices=list(QUEUES), help=queue_help)
    purge.add_argument("--yes", action="store_true", help="do not ask (needed when stdin is not a terminal)")
    purge.add_argument("--json", action="store_true", help="print what was removed as JSON")


def _dlq(args: argparse.Namespace) -> int:
    from producers import dlq

    settings = _settings()
    client = _redis(settings)
    queues = (args.queue,) if getattr(args, "queue", None) else QUEUES
    try:
        if args.dlq_command == "list":
            return _dlq_list(args, settings, dlq.list_dead_letters(client, queues))
        if args.dlq_command == "show":
            return _dlq_show(args, settings, dlq.find_dead_letters(client, queues, [args.id]))
        if args.dlq_command == "replay":
            if bool(args.ids) == args.all:
                raise CommandError("give the ids of the dead letters to replay, or --all (not both)")
            if args.ids:
                return _dlq_replay(args, settings, client, dlq.find_dead_letters(client, queues, args.ids))
            return _dlq_replay(args, settings, client, dlq.list_dead_letters(client, queues))
    except dlq.DeadLetterNotFound as exc:
        raise CommandError(str(exc)) from None
    return _dlq_purge(args, settings, client, queues)


def _dlq_views(settings: Any, letters: list[Any]) -> list[dict[str, Any]]:
    from producers.dlq import letter_view

    return [letter_view(letter, ttl_seconds=settings.dead_letter_ttl_days * 86_400) for letter in letters]


def _on_queue(args: argparse.Namespace) -> str:
    return f" on {args.queue}" if args.queue else ""


def _dlq_list(args: argparse.Namespace, settings: Any, letters: list[Any]) -> int:
    from producers.dlq import format_table, letters_phrase

    rows = _dlq_views(settings, letters)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no dead letters" + _on_queue(args))
    else:
        print(format_table(rows))
        print(letters_phrase(len(rows)))
    return 0


def _dlq_show(args: argparse.Namespace, settings: Any, letters: list[Any]) -> int:
    from producers.dlq import format_detail

    view = _dlq_views(settings, letters)[0]
    if args.json:
        print(json.dumps(view, indent=2))
    else:
        print(format_detail(view, ttl_days=settings.dead_letter_ttl_days))
    return 0


def _dlq_replay(args: argparse.Namespace, settings: Any, client: Any, letters: list[Any]) -> int:
    from producers.dlq import letters_phrase, replay_dead_letters
    from producers.enqueue import new_request_id

    if not letters:
        print("no dead letters to replay" + _on_queue(args), file=sys.stderr)
        return 0
    result = replay_dead_letters(client, _broker(settings), letters, request_id=new_request_id("replay"))
    print(f"replayed {letters_phrase(len(result.replayed))} as request {result.request_id}", file=sys.stderr)
    for done in result.replayed:
        print(f"  {done.message_id} -> {done.replayed_as}  {done.queue}  {done.actor}", file=sys.stderr)
    for left in result.not_replayed:
        print(f"  NOT replayed {left.message_id} ({left.actor}): {left.reason}", file=sys.stderr)
    outcome = 1 if result.not_replayed else 0
    if args.wait and result.replayed:
        return max(outcome, _wait_and_report(args, settings, result.request_id))
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    return outcome


def _dlq_purge(args: argparse.Namespace, settings: Any, client: Any, queues: Sequence[str]) -> int:
    import time as clock

    from producers.dlq import format_age, format_table, letters_phrase, list_dead_letters, purge_dead_letters

    now = clock.time()
    letters = [
        letter for letter in list_dead_letters(client, queues) if now - letter.dead_since > args.older_than
    ]
    older = format_age(args.older_than)
    if letters and not args.yes:
        if not sys.stdin.isatty():
            raise CommandError(
                f"{letters_phrase(len(letters))} older than {older} to remove, and stdin is not a "
                "terminal to confirm on: pass --yes to remove them without asking"
            )
        print(format_table(_dlq_views(settings, letters)), file=sys.stderr)
        these = "this" if len(letters) == 1 else "these"
        print(f"Remove {these} {letters_phrase(len(letters))} for good? [y/N] ", end="", file=sys.stderr)
        sys.stderr.flush()
        if sys.stdin.readline().strip().lower() not in {"y", "yes"}:
            print("nothing removed", file=sys.stderr)
            return 1
    removed = _dlq_views(settings, letters)
    count = purge_dead_letters(client, letters, queues=queues, older_than_seconds=args.older_than, now=now)
    if args.json:
        print(json.dumps({"removed": count, "dead_letters": removed}, indent=2))
    elif not letters:
        print(f"no dead letters older than {older}" + _on_queue(args))
    else:
        print(f"removed {letters_phrase(count)} older than {older}:")
        print(format_table(removed))
    return 0


def _report(args: argparse.Namespace) -> int:
    from workers.report import build_report
    from workers.sinks.bigquery import make_bigquery_client

    settings = _settings()
    project = settings.require_bigquery()
    report = build_report(
        make_bigquery_client(settings),
        project=project,
        dataset=settings.bigquery_dataset,
        zone=settings.zone(),
        now=datetime.now(UTC),
    )
    if args.json:
        print(report.model_dump_json(by_alias=True, indent=2))
        return 0
    figures = report.model_dump(by_alias=True, mode="json")
    lightspeed = figures.pop("lightspeed") or {}
    for title, values in (("square", figures), ("lightspeed", lightspeed)):
        print(f"{title}:")
        for key, value in values.items():
            print(f"  {key:>18}: {value}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from sandbox.demo import DemoOptions, run_demo
    from workers.logs import configure_logging

    # The demo talks to people: its own progress lines; workers log JSON to their log file.
    configure_logging(level="WARNING", fmt="console", stream=sys.stderr)
    return run_demo(
        DemoOptions(
            payments=args.payments,
            customers=args.customers,
            sales=args.sales,
            items=args.items,
            processes=args.processes,
            threads=args.threads,
            seed=args.seed,
            keep_running=args.keep_running,
            work_dir=args.work_dir,
            token=args.sandbox_token,
            emulator_python=os.environ.get("POSSYNC_EMULATOR_PYTHON") or None,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
