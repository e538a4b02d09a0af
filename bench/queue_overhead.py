"""Queue overhead benchmark: possync's messages through its broker versus a no-op Dramatiq actor.

``python -m bench.queue_overhead`` (``--help`` for the options). Each run, on one Redis and in
alternating order, measures two variants in a fresh process each:

- ``possync``: ``--messages`` payloads of every route in ``schemas/messages.py`` (round robin,
  realistic sizes: a Notion event carries its raw body) sent through ``producers.enqueue.enqueue``
  on the broker of ``workers.broker.build_broker`` (all its middleware: request tracking, dead
  letters, logs, retries, maintenance), then drained by a ``dramatiq.Worker`` on that broker with
  the actors ``workers.actors.register_actors`` declares, as ``possync worker`` runs them. Each
  actor's function is replaced by its first step, validating the payload, so the figure is the
  queue's cost and not the sources' or BigQuery's. Logs are JSON lines to a file, as in production.
- ``noop``: as many messages, without arguments, sent by ``actor.send()`` to no-op actors on a
  plain ``RedisBroker`` (Dramatiq's default middleware, no logging configured), one actor per queue
  in the same queue order (Dramatiq prefetches per queue), drained the same way.

Enqueue rate: messages sent one after another from one thread. Drain rate: from the worker's start
until the last message is acknowledged (and, for possync, marked done for its request). Prints a
table with medians and the possync/noop ratios (each run's ratio, then their median), writes
``queue_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import dramatiq
import redis
from dramatiq.middleware import Middleware

from bench.reporting import add_common_arguments, median, print_table, write_results
from sandbox.redis_server import RedisServer
from schemas.messages import (
    LIGHTSPEED_QUEUE,
    ROUTES,
    BackfillRequest,
    BackfillWindow,
    MigrationRequest,
    Payload,
    RecordUpsert,
    SyncRequest,
    WebhookEvent,
)

__all__ = ["main"]

#: How long a drain may take before the run fails, seconds.
DRAIN_TIMEOUT_SECONDS = 600.0
_REPO = Path(__file__).resolve().parents[1]
_VARIANTS = ("possync", "noop")
#: The raw body a ``WebhookEvent`` carries: a Notion event of typical size.
_NOTION_EVENT = json.dumps(
    {
        "id": "00000000-0000-4000-8000-000000000000",
        "timestamp": "2025-06-01T12:34:56.789Z",
        "workspace_id": "0b3c9a52-5d4c-4a0e-9d55-0f2f7b0f3a11",
        "workspace_name": "Acme",
        "subscription_id": "1d1f6a7e-8c1b-4d7e-a8c2-4b7b2a9c5e21",
        "integration_id": "2e2a7b8f-9d2c-4e8f-b9d3-5c8c3bad6f32",
        "type": "page.created",
        "authors": [{"id": "3f3b8c90-ae3d-4f90-cae4-6d9d4cbe7043", "type": "person"}],
        "attempt_number": 1,
        "entity": {"id": "5b5dae12-c05f-4bb2-ec06-8fbf6ed09265", "type": "page"},
        "data": {"parent": {"id": "4a4c9da1-bf4e-4aa1-dbf5-7eae5dcf8154", "type": "database"}},
        "api_version": "2025-09-03",
    },
    separators=(",", ":"),
)


class _Acknowledged(Middleware):
    """Counts acknowledgements; sets ``done`` at ``expected``. First in the list, so it runs last."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.done = threading.Event()
        self._lock = threading.Lock()

    def after_ack(self, broker: dramatiq.Broker, message: Any) -> None:
        with self._lock:
            self.count += 1
            if self.count >= self.expected:
                self.done.set()


def sample_payloads(count: int) -> list[tuple[Any, Payload]]:
    """``count`` (route, payload) pairs, cycling through every route of ``ROUTES``, each payload distinct."""
    routes = list(ROUTES.values())
    pairs: list[tuple[Any, Payload]] = []
    for index in range(count):
        route = routes[index % len(routes)]
        pairs.append((route, _sample(route.payload, route.queue, index)))
    return pairs


def _sample(model: type[Payload], queue: str, index: int) -> Payload:
    """A realistic payload of ``model`` for a route on ``queue``."""
    since = datetime(2025, 1, 1, tzinfo=UTC)
    source: Literal["square", "lightspeed"] = "lightspeed" if queue == LIGHTSPEED_QUEUE else "square"
    stream = "sales" if source == "lightspeed" else "payments"
    request_id = f"bench-{index}"
    if model is SyncRequest:
        return SyncRequest(request_id=request_id, source=source, stream=stream)
    if model is BackfillRequest:
        return BackfillRequest(
            request_id=request_id,
            source=source,
            backfill_id=f"b-{index}",
            since=since,
            until=since + timedelta(days=365),
        )
    if model is BackfillWindow:
        return BackfillWindow(
            request_id=request_id,
            source=source,
            backfill_id=f"b-{index}",
            window_id=f"w-{index}",
            stream=stream,
            location_id="L8ZSQ0Y4HPJ1T" if source == "square" else None,
            start=since,
            end=since + timedelta(days=30),
        )
    if model is RecordUpsert:
        return RecordUpsert(
            request_id=request_id, kind="payment", record_id=f"p-{index}", event_id=f"e-{index}"
        )
    if model is WebhookEvent:
        return WebhookEvent(
            request_id=request_id,
            event_id=f"e-{index}",
            event_type="page.created",
            entity_id="5b5dae12-c05f-4bb2-ec06-8fbf6ed09265",
            entity_type="page",
            timestamp=since,
            received_at=since,
            attempt_number=1,
            raw=_NOTION_EVENT,
        )
    if model is MigrationRequest:
        return MigrationRequest(
            request_id=request_id,
            migration_id=f"m-{index}",
            table="square_payments",
            partition_field="created_at",
            cluster=("location_id",),
        )
    raise TypeError(f"no sample payload for {model.__name__}: add one to bench/queue_overhead.py")


def _validating(model: type[Payload]) -> Callable[..., None]:
    """An actor function doing only what every possync actor does first: validate its payload."""

    def validate(payload: dict[str, Any]) -> None:
        model.model_validate(payload)

    return validate


def _measure_possync(redis_url: str, messages: int, threads: int, log_path: Path) -> dict[str, Any]:
    from producers.enqueue import enqueue
    from schemas.settings import Settings
    from workers.actors import register_actors
    from workers.broker import DEAD_KEY, LogContext, build_broker
    from workers.logs import configure_logging

    settings = Settings(redis_url=redis_url, log_format="json")
    with log_path.open("a") as log:
        configure_logging(level=settings.log_level, fmt=settings.log_format, stream=log)
        broker = build_broker(settings)
        dramatiq.set_broker(broker)
        for name, actor in register_actors(broker, settings).items():
            actor.fn = _validating(ROUTES[name].payload)
        acknowledged = _Acknowledged(messages)
        broker.add_middleware(acknowledged, before=LogContext)
        payloads = sample_payloads(messages)

        def send() -> None:
            for route, payload in payloads:
                enqueue(broker, route, payload)

        figures = _enqueue_and_drain(broker, acknowledged, threads, send)
        dead = sum(int(broker.client.hlen(DEAD_KEY.format(queue=route.queue))) for route in ROUTES.values())
        broker.close()
    return {**figures, "dead_lettered": dead}


def _measure_noop(redis_url: str, messages: int, threads: int) -> dict[str, Any]:
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(client=redis.Redis.from_url(redis_url))
    dramatiq.set_broker(broker)

    def noop() -> None:
        return None

    # One no-op actor per queue possync's messages use, sent in the same queue order: Dramatiq
    # prefetches per queue, so the drain compares like with like.
    queues = [route.queue for route, _ in sample_payloads(messages)]
    actors = {
        queue: dramatiq.actor(actor_name=f"bench_noop_{queue}", queue_name=queue, broker=broker)(noop)
        for queue in dict.fromkeys(queues)
    }
    acknowledged = _Acknowledged(messages)
    broker.middleware.insert(0, acknowledged)

    def send() -> None:
        for queue in queues:
            actors[queue].send()

    figures = _enqueue_and_drain(broker, acknowledged, threads, send)
    broker.close()
    return {**figures, "dead_lettered": 0}


def _enqueue_and_drain(
    broker: dramatiq.Broker, acknowledged: _Acknowledged, threads: int, send: Callable[[], None]
) -> dict[str, float]:
    """Time ``send`` (every message, one after another), then a worker draining them all.

    The worker starts as ``possync worker`` starts one; the drain lasts from its start until
    ``acknowledged`` has counted every message.

    Returns:
        ``{"enqueue_seconds", "drain_seconds", "enqueue_cpu_seconds", "drain_cpu_seconds"}``: wall
        seconds, and CPU seconds of this process (every thread), of each phase.

    Raises:
        RuntimeError: the drain did not finish within :data:`DRAIN_TIMEOUT_SECONDS`.
    """
    started, cpu_started = time.perf_counter(), time.process_time()
    send()
    enqueue_seconds, enqueue_cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, worker_threads=threads)
    started, cpu_started = time.perf_counter(), time.process_time()
    worker.start()
    finished = acknowledged.done.wait(DRAIN_TIMEOUT_SECONDS)
    drain_seconds, drain_cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    worker.stop()
    if not finished:
        raise RuntimeError(f"only {acknowledged.count} of {acknowledged.expected} messages drained")
    return {
        "enqueue_seconds": enqueue_seconds,
        "drain_seconds": drain_seconds,
        "enqueue_cpu_seconds": enqueue_cpu_seconds,
        "drain_cpu_seconds": drain_cpu_seconds,
    }


def _run_variant(variant: str, redis_url: str, options: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    """One variant in a fresh process (its own broker, actors and logging); its figures."""
    command = [
        sys.executable,
        "-m",
        "bench.queue_overhead",
        "--role",
        "measure",
        "--variant",
        variant,
        "--redis-url",
        redis_url,
        "--messages",
        str(options.messages),
        "--threads",
        str(options.threads),
        "--log-file",
        str(log_dir / f"{variant}.log"),
    ]
    done = subprocess.run(
        command, cwd=_REPO, capture_output=True, timeout=DRAIN_TIMEOUT_SECONDS * 2, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"the {variant} measurement failed ({done.returncode}):\n{done.stderr.decode()[-3000:]}"
        )
    figures: dict[str, Any] = json.loads(done.stdout)
    figures["enqueue_per_second"] = options.messages / figures["enqueue_seconds"]
    figures["drain_per_second"] = options.messages / figures["drain_seconds"]
    for phase in ("enqueue", "drain"):
        figures[f"{phase}_cpu_ms_per_message"] = figures[f"{phase}_cpu_seconds"] * 1000 / options.messages
    return figures


def _measure(options: argparse.Namespace) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    with RedisServer.start() as server, tempfile.TemporaryDirectory(prefix="possync-bench-") as scratch:
        client = redis.Redis.from_url(server.url)
        for index in range(options.runs):
            # Other work on the machine shows here: the figures of a busy run are less telling.
            run: dict[str, Any] = {"run": index + 1, "load_average_1m": round(os.getloadavg()[0], 2)}
            # Alternate who goes first, so drift in the machine's load hits both alike.
            for variant in _VARIANTS if index % 2 == 0 else _VARIANTS[::-1]:
                client.flushdb()
                run[variant] = _run_variant(variant, server.url, options, Path(scratch))
            for rate in ("enqueue_per_second", "drain_per_second"):
                run[f"{rate}_ratio"] = run["possync"][rate] / run["noop"][rate]
            runs.append(run)
            print(f"run {index + 1}/{options.runs} done", file=sys.stderr)
        client.close()
    return runs


_FIGURES = (
    "enqueue_per_second",
    "drain_per_second",
    "enqueue_cpu_ms_per_message",
    "drain_cpu_ms_per_message",
)


def _report(options: argparse.Namespace, runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {
        variant: {figure: median([run[variant][figure] for run in runs]) for figure in _FIGURES}
        for variant in _VARIANTS
    }
    for rate in ("enqueue_per_second", "drain_per_second"):
        summary[f"{rate}_ratio"] = median([run[f"{rate}_ratio"] for run in runs])
    print(f"\nmedians of {len(runs)} runs, {options.messages:,} messages, {options.threads} worker threads")
    print_table(
        ["variant", "enqueued/s", "drained/s", "enqueue CPU ms/msg", "drain CPU ms/msg"],
        [
            ["possync (every route, enqueue.py, our middleware)", *summary["possync"].values()],
            ["no-op actor (plain RedisBroker)", *summary["noop"].values()],
            [
                "possync / no-op (rates)",
                f"{summary['enqueue_per_second_ratio']:.2f}",
                f"{summary['drain_per_second_ratio']:.2f}",
                "",
                "",
            ],
        ],
    )
    loads = ", ".join(f"{run['load_average_1m']:g}" for run in runs)
    print(f"load average (1 min) at each run's start: {loads} on {os.cpu_count()} CPUs")
    dead = sum(run["possync"]["dead_lettered"] for run in runs)
    if dead:
        print(f"WARNING: {dead} messages were dead-lettered: the payloads no longer validate")
    return {
        "settings": {"runs": options.runs, "messages": options.messages, "worker_threads": options.threads},
        "summary": summary,
        "runs": runs,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.queue_overhead",
        description=(
            "Enqueue and drain rates of possync's messages (every route, through its broker and"
            " middleware) against a no-op Dramatiq actor on the same Redis; writes queue_overhead.json."
        ),
    )
    add_common_arguments(parser)
    parser.add_argument(
        "--messages", type=int, default=5000, help="messages per variant and run (default: 5000)"
    )
    parser.add_argument(
        "--threads", type=int, default=4, help="worker threads, as `possync worker --threads` (default: 4)"
    )
    # Internal: the measuring process this benchmark starts.
    parser.add_argument("--role", choices=["bench", "measure"], default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=_VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--log-file", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    if options.role == "measure":
        if options.variant == "possync":
            figures = _measure_possync(options.redis_url, options.messages, options.threads, options.log_file)
        else:
            figures = _measure_noop(options.redis_url, options.messages, options.threads)
        print(json.dumps(figures))
        return 0
    results = _report(options, _measure(options))
    path = write_results("queue_overhead", results, results_dir=options.results_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
