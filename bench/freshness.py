"""Incremental freshness: how long a new Square payment takes to show in the warehouse, by each path.

``python -m bench.freshness`` (``--help`` for the options). It starts what production runs, as
subprocesses configured only by ``POSSYNC_*`` variables: a Redis server, the BigQuery emulator, the
Square sandbox (small history), ``possync webhooks`` and a ``possync worker`` pool, then syncs the
payments once so the table and the checkpoint exist. Each run measures both paths, in alternating
order, while new payments arrive one every ``--payment-every-seconds`` for ``--duration-seconds``:

- scheduled: two ``possync scheduler`` replicas syncing ``square.payments`` every
  ``--interval-seconds`` (a seconds-resolution cron), the sandbox delivering no webhooks;
- webhook: no scheduler, the sandbox delivering each ``payment.created`` to the receiver, whose
  message upserts that one payment.

A payment's creation instant is the sandbox's own wall-clock record of when its API began serving
it (``visible_at`` from ``POST /_sandbox/payments/create``); the sandbox clock is kept on the wall
clock, so the sync's lookback works as in production. A watcher thread reads the table's metadata
every ``--poll-ms`` and, when it changed (or 5 s passed), queries for every payment not yet
seen, all in one query; a payment is visible at the end of the first query returning it, so
freshness is overstated by at most one poll cycle plus a read and a query (the JSON records the
cycles, and what the polling costs the emulator). A payment not seen by the deadline counts as
infinitely late. The services' logs give each phase's stages (delivery, queue wait, processing,
watcher lag; or tick-to-pickup and sync time), a profile of where the time goes.
``--compare-worker-env`` measures each path a second time, in the same runs, with extra worker
environment, for before/after figures of a setting. Prints a table and the targets (pass/miss),
writes ``freshness.json``. The system is started by :mod:`bench.freshness_system`; the payments and
the watcher are in :mod:`bench.freshness_watcher`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench import processes
from bench.freshness_system import PAYMENTS_TABLE, PRIME_SECONDS, Service, System, say, start_system
from bench.freshness_watcher import Arrival, Watcher, create_payment, polling_cost
from bench.reporting import (
    Target,
    add_common_arguments,
    median,
    percentile,
    print_table,
    print_targets,
    write_results,
)

__all__ = ["build_parser", "cron_for", "main"]

#: The targets (issue 8): p50 freshness of the webhook path, and the scheduled path's slack over
#: one interval, seconds.
WEBHOOK_TARGET_SECONDS = 2.0
SCHEDULED_SLACK_SECONDS = 2.0
PATHS = ("scheduled", "webhook")
#: Appended to a path's name for its phases under ``--compare-worker-env``.
COMPARED_SUFFIX = "+env"
#: How long a payment may take after the last arrival before it counts as never seen, seconds:
#: beyond a scheduled interval or two, this much.
DRAIN_SECONDS = 60.0


def cron_for(interval_seconds: int) -> str:
    """The cron expression firing every ``interval_seconds`` on the wall clock (six fields when < 60 s).

    Raises:
        ValueError: for an interval that does not divide a minute or an hour evenly.
    """
    if 0 < interval_seconds < 60 and 60 % interval_seconds == 0:
        return f"* * * * * */{interval_seconds}"
    minutes, rest = divmod(interval_seconds, 60)
    if interval_seconds >= 60 and rest == 0 and 60 % minutes == 0:
        return f"*/{minutes} * * * *"
    raise ValueError(f"{interval_seconds} s does not divide a minute or an hour: cron cannot fire evenly")


def _interval(text: str) -> int:
    try:
        value = int(text)
        cron_for(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _assignment(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


# Arrivals, watched.


def _arrivals(system: System, watcher: Watcher, options: argparse.Namespace) -> list[Arrival]:
    """Payments arriving at a steady pace for the duration; each handed to the watcher."""
    count = max(1, round(options.duration_seconds / options.payment_every_seconds))
    arrivals = []
    started = time.monotonic()
    with httpx.Client(base_url=system.sandbox_url, timeout=10) as http:
        for index in range(count):
            # Pacing the arrivals (open loop: a slow request does not delay the next one's slot).
            time.sleep(max(0.0, started + index * options.payment_every_seconds - time.monotonic()))
            arrival = create_payment(http)
            watcher.add(arrival)
            arrivals.append(arrival)
            system.check()
    return arrivals


def _drain(system: System, watcher: Watcher, deadline_seconds: float) -> None:
    """Wait until the watcher has seen every payment, or the deadline passes."""
    deadline = time.monotonic() + deadline_seconds
    while watcher.pending and time.monotonic() < deadline:
        if watcher.error is not None:
            raise RuntimeError("the warehouse watcher failed") from watcher.error
        system.check()
        time.sleep(0.1)  # polling interval of the wait, not a synchronisation


# One phase: one path, measured.


def _idle(system: System) -> None:
    """Wait until no payments sync is queued or running (a tick may have sent one just before stop)."""
    from producers.scheduler import PENDING_KEY
    from workers.queues import request_progress
    from workers.state import StateStore

    state = StateStore(system.redis)
    deadline = time.monotonic() + PRIME_SECONDS
    while time.monotonic() < deadline:
        pending = system.redis.get(PENDING_KEY.format(schedule="square.payments"))
        if isinstance(pending, bytes):
            pending = pending.decode()
        busy = pending is not None and request_progress(system.redis, pending).pending
        if not busy and not state.is_locked("square", "payments"):
            return
        time.sleep(0.2)  # polling interval of the wait
    raise RuntimeError("the last scheduled sync did not finish")


def _events(log_path: Path, names: set[str], since: float) -> Iterator[dict[str, Any]]:
    """The JSON log lines of ``log_path`` with one of these ``event`` names, from ``since`` (epoch s)."""
    if not log_path.exists():
        return
    for line in log_path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        if event.get("event") in names and _epoch(event["timestamp"]) >= since:
            event["at"] = _epoch(event["timestamp"])
            yield event


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _stages(path: str, system: System, arrivals: list[Arrival], since: float) -> dict[str, float]:
    """Where the time went, medians in ms, from the services' logs: a profile of the path.

    Webhook path, per payment: sandbox to message enqueued by the receiver (``delivery``), enqueued
    to picked up by a worker (``queue_wait``), the upsert (``processing``), done to seen by the
    watcher (``watcher_lag``). Scheduled path, per sync: tick to picked up, and the sync itself.
    """
    done = {
        event["message_id"]: event
        for event in _events(system.work_dir / "worker.log", {"message_done"}, since)
        if event.get("message_id")
    }
    if path == "scheduled":
        syncs = [
            event
            for event in done.values()
            if str(event.get("request_id", "")).startswith("tick-square.payments-")
        ]
        ticks = [
            datetime.strptime(event["request_id"].rsplit("-", 1)[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            for event in syncs
        ]
        return {
            "syncs": len(syncs),
            "queue_wait_p50_ms": median(
                [(e["at"] - e["seconds"] - t.timestamp()) * 1000 for e, t in zip(syncs, ticks, strict=True)]
            ),
            "sync_p50_ms": median([event["seconds"] * 1000 for event in syncs]),
        }
    enqueued = {
        event["message_id"]: event["at"]
        for event in _events(system.work_dir / "webhooks.log", {"message_enqueued"}, since)
    }
    records = {
        event["record_id"]: event
        for event in _events(system.work_dir / "worker.log", {"webhook_record_done"}, since)
    }
    stages: dict[str, list[float]] = {"delivery": [], "queue_wait": [], "processing": [], "watcher_lag": []}
    for arrival in arrivals:
        record = records.get(arrival.payment_id)
        message = done.get(record["message_id"]) if record else None
        if record is None or message is None or record["message_id"] not in enqueued:
            continue
        started = message["at"] - message["seconds"]
        stages["delivery"].append(enqueued[record["message_id"]] - arrival.visible_at)
        stages["queue_wait"].append(started - enqueued[record["message_id"]])
        stages["processing"].append(message["seconds"])
        if arrival.seen_at is not None:
            stages["watcher_lag"].append(arrival.seen_at - message["at"])
    return {f"{name}_p50_ms": median(values) * 1000 for name, values in stages.items()}


def _phase(path: str, system: System, options: argparse.Namespace) -> dict[str, Any]:
    watcher = Watcher(system.bigquery, PAYMENTS_TABLE, options.poll_ms / 1000)
    cpu, started, wall_started = processes.cpu_seconds(system.emulator_pid), time.monotonic(), time.time()
    load = os.getloadavg()[0]
    watcher.start()
    schedulers: list[Service] = []
    try:
        if path == "webhook":
            system.set_webhooks(f"{system.receiver_url}/webhooks/square")
            drain_seconds = DRAIN_SECONDS
        else:
            env = {"POSSYNC_SCHEDULES": json.dumps({"square.payments": cron_for(options.interval_seconds)})}
            schedulers = [system.start(f"scheduler-{n}", "scheduler", **env) for n in (1, 2)]
            drain_seconds = 2 * options.interval_seconds + DRAIN_SECONDS
        arrivals = _arrivals(system, watcher, options)
        _drain(system, watcher, drain_seconds)
    finally:
        watcher.stop()
        emulator_cpu, wall = processes.cpu_seconds(system.emulator_pid) - cpu, time.monotonic() - started
        system.set_webhooks(None)
        for scheduler in schedulers:
            scheduler.stop()
            system.services.remove(scheduler)
    if schedulers:
        _idle(system)
        # The next scheduled phase starts afresh: its first tick is the next one after it starts.
        for key in system.redis.scan_iter("possync:scheduler:*"):
            system.redis.delete(key)
    freshness = [arrival.freshness_seconds for arrival in arrivals]
    return {
        "payments": len(arrivals),
        "missing": sum(1 for arrival in arrivals if arrival.seen_at is None),
        "p50_seconds": round(percentile(freshness, 0.5), 3),
        "p95_seconds": round(percentile(freshness, 0.95), 3),
        "max_seconds": round(max(freshness), 3),
        "seconds": round(wall, 1),
        "load_average_1m": round(load, 2),
        "reads": watcher.reads,
        "queries": len(watcher.cycles_seconds),
        "poll_p50_ms": round(median(watcher.cycles_seconds) * 1000, 1),
        "poll_max_ms": round(max(watcher.cycles_seconds, default=math.nan) * 1000, 1),
        "emulator_cpu_seconds": round(emulator_cpu, 2),
        "stages": {
            name: round(value, 1) for name, value in _stages(path, system, arrivals, wall_started).items()
        },
        "freshness_seconds": [round(value, 3) for value in freshness],
    }


def _measure(options: argparse.Namespace) -> list[dict[str, Any]]:
    variants = (False, True) if options.compare_worker_env else (False,)
    phases = [(path, compared) for path in options.paths for compared in variants]
    runs = []
    with start_system(options) as system:
        options.polling_cost = polling_cost(system.bigquery, PAYMENTS_TABLE, system.emulator_pid)
        for run in range(options.runs):
            # Alternating order, so no phase always runs on a warmer (or more loaded) system.
            order = phases if run % 2 == 0 else phases[::-1]
            results: dict[str, Any] = {"run": run + 1, "order": [_label(*phase) for phase in order]}
            for path, compared in order:
                label = _label(path, compared)
                say(f"run {run + 1}/{options.runs}: {label}, {options.duration_seconds:g} s ...")
                if options.compare_worker_env:
                    # A fresh pool for every phase of a comparison, so each variant starts alike.
                    system.start_worker(options, compared=compared)
                results[label] = _phase(path, system, options)
            runs.append(results)
    return runs


def _label(path: str, compared: bool) -> str:
    """A phase's name in the results: the path, with ``+env`` for the compared worker environment."""
    return f"{path}{COMPARED_SUFFIX}" if compared else path


# The report.


def _targets(summary: dict[str, Any], interval_seconds: int) -> list[Target]:
    """The p50 target of each path measured."""
    limits = {"scheduled": interval_seconds + SCHEDULED_SLACK_SECONDS, "webhook": WEBHOOK_TARGET_SECONDS}
    return [
        Target(f"freshness p50, {path} path", summary[path]["p50_seconds"], limit, "s", at_least=False)
        for path, limit in limits.items()
        if path in summary
    ]


def _polling_share(figures: dict[str, Any], cost: dict[str, float]) -> float:
    """The share of the emulator's CPU in a phase that the watcher's queries account for, percent."""
    spent = (
        figures["reads"] * cost["emulator_cpu_ms_per_read"]
        + figures["queries"] * cost["emulator_cpu_ms_per_query"]
    ) / 1000
    return 100 * spent / figures["emulator_cpu_seconds"] if figures["emulator_cpu_seconds"] else math.nan


def _report(options: argparse.Namespace, runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    rows: list[list[Any]] = []
    labels = [label for label in runs[0] if label not in ("run", "order")]
    for path in labels:
        pooled = [value for run in runs for value in run[path]["freshness_seconds"]]
        summary[path] = {
            "payments": sum(run[path]["payments"] for run in runs),
            "missing": sum(run[path]["missing"] for run in runs),
            "p50_seconds": median([run[path]["p50_seconds"] for run in runs]),
            "p95_seconds": median([run[path]["p95_seconds"] for run in runs]),
            "max_seconds": max(run[path]["max_seconds"] for run in runs),
            "pooled_p50_seconds": percentile(pooled, 0.5),
            "pooled_p95_seconds": percentile(pooled, 0.95),
        }
        for run in runs:
            figures = run[path]
            rows.append(
                [
                    *(path, run["run"], figures["payments"], figures["missing"]),
                    *(figures["p50_seconds"], figures["p95_seconds"], figures["max_seconds"]),
                    *(figures["poll_p50_ms"], _polling_share(figures, options.polling_cost)),
                    figures["load_average_1m"],
                ]
            )
        whole = summary[path]
        rows.append(
            [
                *(path, "median", whole["payments"], whole["missing"]),
                *(whole["p50_seconds"], whole["p95_seconds"], whole["max_seconds"], "", "", ""),
            ]
        )
    ratios = {"scheduled_to_webhook_p50": ("scheduled", "webhook")} | {
        f"{path}{COMPARED_SUFFIX}_to_{path}_p50": (f"{path}{COMPARED_SUFFIX}", path) for path in PATHS
    }
    for name, (numerator, denominator) in ratios.items():
        if {numerator, denominator} <= set(labels):
            values = [run[numerator]["p50_seconds"] / run[denominator]["p50_seconds"] for run in runs]
            summary[name] = median([value for value in values if math.isfinite(value)])
    print(
        f"freshness: a payment every {options.payment_every_seconds:g} s for {options.duration_seconds:g} s "
        f"per path and run; scheduled every {options.interval_seconds} s; {options.runs} runs"
    )
    print_table(
        [
            "path",
            "run",
            "payments",
            "missing",
            "p50 s",
            "p95 s",
            "max s",
            "poll ms",
            "poll % emu CPU",
            "load",
        ],
        rows,
    )
    for run in runs:
        for path in labels:
            stages = ", ".join(
                f"{name.removesuffix('_p50_ms')} {value:,.0f}" for name, value in run[path]["stages"].items()
            )
            print(f"run {run['run']} {path} stages (p50 ms; syncs: count): {stages}")
    for name, (numerator, denominator) in ratios.items():
        if name in summary:
            print(f"{numerator} p50 / {denominator} p50 (same run, median): {summary[name]:.2f}")
    targets = _targets(summary, options.interval_seconds)
    print_targets(targets)
    return {
        "settings": {
            "runs": options.runs,
            "paths": options.paths,
            "interval_seconds": options.interval_seconds,
            "cron": cron_for(options.interval_seconds),
            "duration_seconds": options.duration_seconds,
            "payment_every_seconds": options.payment_every_seconds,
            "poll_ms": options.poll_ms,
            "history_payments": options.history_payments,
            "processes": options.processes,
            "threads": options.threads,
            "worker_env": dict(options.worker_env),
            "compare_worker_env": dict(options.compare_worker_env),
            "scheduler_replicas": 2,
        },
        "polling_cost": options.polling_cost,
        "runs": runs,
        "summary": summary,
        "targets": [target.as_dict() for target in targets],
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.freshness",
        description=(
            "Time from a new Square payment in the sandbox to its row in the warehouse, by the "
            "scheduled path and by the webhook path (p50, p95, max); targets: scheduled p50 at most "
            f"one interval + {SCHEDULED_SLACK_SECONDS:g} s, webhook p50 at most {WEBHOOK_TARGET_SECONDS:g} s."
        ),
    )
    add_common_arguments(parser)
    parser.add_argument(
        "--paths",
        nargs="+",
        choices=PATHS,
        default=list(PATHS),
        help="the paths to measure, e.g. only webhook while profiling (default: both)",
    )
    parser.add_argument(
        "--interval-seconds",
        type=_interval,
        default=30,
        help="the scheduled path's interval, dividing a minute or an hour (default: 30)",
    )
    parser.add_argument(
        "--duration-seconds",
        type=float,
        default=60.0,
        help="how long payments arrive, per path and run (default: 60, two intervals)",
    )
    parser.add_argument(
        "--payment-every-seconds", type=float, default=1.0, help="one new payment this often (default: 1)"
    )
    parser.add_argument(
        "--poll-ms", type=float, default=150.0, help="how often the warehouse is queried (default: 150)"
    )
    parser.add_argument(
        "--history-payments", type=int, default=500, help="payments the sandbox starts with (default: 500)"
    )
    parser.add_argument("--processes", type=int, default=1, help="worker processes (default: 1)")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker process (default: 4)")
    parser.add_argument(
        "--worker-env",
        action="append",
        type=_assignment,
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the worker pool, repeatable: to compare a setting's effect, e.g. "
        "dramatiq_worker_timeout=100 (the idle poll's longest pause, ms)",
    )
    parser.add_argument(
        "--compare-worker-env",
        action="append",
        type=_assignment,
        default=[],
        metavar="NAME=VALUE",
        help="also measure each path with this extra worker environment (repeatable), in the same "
        "runs and alternating, a fresh pool per phase; reported as <path>+env with the same-run ratio",
    )
    parser.add_argument(
        "--emulator-python",
        help="Python 3.13 for the BigQuery emulator (default: found on PATH or in pyenv)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    results = _report(options, _measure(options))
    path = write_results("freshness", results, results_dir=options.results_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
