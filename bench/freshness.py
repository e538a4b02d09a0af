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
writes ``freshness.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.common import (
    Target,
    add_common_arguments,
    median,
    percentile,
    print_table,
    print_targets,
    redis_server,
    write_results,
)
from sandbox.local_service import free_port

__all__ = ["build_parser", "cron_for", "main"]

#: The targets (issue 8): p50 freshness of the webhook path, and the scheduled path's slack over
#: one interval, seconds.
WEBHOOK_TARGET_SECONDS = 2.0
SCHEDULED_SLACK_SECONDS = 2.0
PATHS = ("scheduled", "webhook")
#: Appended to a path's name for its phases under ``--compare-worker-env``.
COMPARED_SUFFIX = "+env"
PROJECT = "possync-bench"
DATASET = "freshness"
#: The sandbox's fake credentials.
TOKEN = "sandbox-bench-token"
SIGNATURE_KEY = "sandbox-bench-square-signature-key"
#: How long a payment may take after the last arrival before it counts as never seen, seconds:
#: beyond a scheduled interval or two, this much.
DRAIN_SECONDS = 60.0
#: Deadlines: a service answering after start, the first full sync, a process stopping; seconds.
READY_SECONDS = 30.0
PRIME_SECONDS = 300.0
STOP_SECONDS = 30.0
_PAYMENT_ID = re.compile(r"^[A-Za-z0-9_-]+$")
_REPO = Path(__file__).resolve().parents[1]
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: Queries the polling cost is measured over, before the runs.
_COST_QUERIES = 20
#: The watcher queries the ids at least this often, seconds, even when the metadata seems unchanged
#: (a safeguard: the emulator changes it with every write).
_REQUERY_SECONDS = 5.0


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


# The system under test.


@dataclass
class _Service:
    """A ``possync`` subprocess in its own process group, logging to a file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def check(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with status {self.process.returncode}; log: {self.log_path}"
            )

    def stop(self) -> None:
        """SIGTERM to the group (a worker pool's children too), then SIGKILL after a deadline."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_SECONDS)


@dataclass
class _System:
    """The running services and how to reach them."""

    env: dict[str, str]
    work_dir: Path
    sandbox_url: str
    receiver_url: str
    redis: redis.Redis
    bigquery: Any
    emulator_pid: int
    services: list[_Service] = field(default_factory=list)

    def start(self, name: str, *argv: str, **env: str) -> _Service:
        log_path = self.work_dir / f"{name}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "producers.cli", *argv],
            cwd=_REPO,
            env={**self.env, **env},
            stdout=log_path.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        service = _Service(name, process, log_path)
        self.services.append(service)
        return service

    def check(self) -> None:
        for service in self.services:
            service.check()

    def start_worker(self, options: argparse.Namespace, *, compared: bool) -> None:
        """(Re)start the worker pool, with ``--compare-worker-env`` on top when ``compared``."""
        for service in [service for service in self.services if service.name == "worker"]:
            service.stop()
            self.services.remove(service)
        env = dict(options.worker_env) | (dict(options.compare_worker_env) if compared else {})
        self.start(
            "worker",
            *("worker", "--queues", "square"),
            *("--processes", str(options.processes), "--threads", str(options.threads)),
            **env,
        )

    def set_webhooks(self, url: str | None) -> None:
        """Have the sandbox deliver its events to ``url`` (signed for it), or to nobody."""
        body: dict[str, Any] = {"url": url}
        if url is not None:
            body |= {"signature_key": SIGNATURE_KEY, "notification_url": url}
        httpx.post(f"{self.sandbox_url}/_sandbox/webhooks", json=body, timeout=10).raise_for_status()


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU a process has used so far, seconds (from ``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


@contextmanager
def _system(options: argparse.Namespace) -> Iterator[_System]:
    """Everything running, the payments synced once; stopped afterwards."""
    from sandbox.emulator import BigQueryEmulator
    from sandbox.process import start_square_sandbox
    from schemas.settings import ENV_PREFIX, Settings
    from workers.sinks.bigquery import make_bigquery_client

    work_dir = Path(tempfile.mkdtemp(prefix="possync-bench-freshness-"))
    _say(f"logs in {work_dir}")
    with ExitStack() as stack:
        server = stack.enter_context(redis_server())
        # Its data in a temporary directory of its own, removed when it stops; the logs stay.
        emulator = stack.enter_context(BigQueryEmulator.start(PROJECT, python=options.emulator_python))
        receiver_port = free_port()
        receiver_url = f"http://127.0.0.1:{receiver_port}"
        sandbox = stack.enter_context(
            start_square_sandbox(
                payments=options.history_payments,
                customers=20,
                items=10,
                # On the wall clock to the second, so new payments carry about the real time.
                anchor=datetime.now(UTC).replace(microsecond=0),
                token=TOKEN,
                webhook_signature_key=SIGNATURE_KEY,
                log_path=work_dir / "square-sandbox.log",
            )
        )
        values = {
            "redis_url": server.url,
            "square_base_url": sandbox.base_url,
            "square_access_token": TOKEN,
            "bigquery_project": PROJECT,
            "bigquery_dataset": DATASET,
            "bigquery_endpoint": emulator.endpoint,
            "bigquery_location": "US",
            "webhooks_port": str(receiver_port),
            "square_webhook_signature_key": SIGNATURE_KEY,
            "square_webhook_url": f"{receiver_url}/webhooks/square",
            "worker_metrics_port": "0",
            "scheduler_metrics_port": "0",
        }
        env = {key: value for key, value in os.environ.items() if not key.upper().startswith(ENV_PREFIX)}
        env |= {ENV_PREFIX + key.upper(): value for key, value in values.items()}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO), env.get("PYTHONPATH")]))
        settings = Settings.model_validate(values)
        system = _System(
            env=env,
            work_dir=work_dir,
            sandbox_url=sandbox.base_url,
            receiver_url=receiver_url,
            redis=redis.Redis.from_url(server.url),
            bigquery=make_bigquery_client(settings),
            emulator_pid=emulator.pid,
        )
        try:
            receiver = system.start("webhooks", "webhooks")
            system.start_worker(options, compared=False)
            _wait_ready(f"{receiver_url}/readyz", receiver)
            _say(f"syncing the {options.history_payments} payments of the history once ...")
            primed = subprocess.run(
                [
                    *(sys.executable, "-m", "producers.cli", "sync", "square", "--stream", "payments"),
                    *("--wait", "--timeout", str(PRIME_SECONDS)),
                ],
                cwd=_REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=PRIME_SECONDS + 30,
                check=False,
            )
            if primed.returncode != 0:
                raise RuntimeError(f"the first sync failed:\n{primed.stdout}\n{primed.stderr}")
            yield system
        finally:
            for service in reversed(system.services):
                service.stop()


def _wait_ready(url: str, service: _Service) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        service.check()
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)  # polling interval while the server starts
    raise RuntimeError(f"{url} did not answer 200 within {READY_SECONDS:.0f} s; log: {service.log_path}")


# Arrivals and the watcher.


@dataclass
class _Arrival:
    payment_id: str
    #: Wall-clock instants, epoch seconds: made visible by the sandbox, first seen in the warehouse.
    visible_at: float
    seen_at: float | None = None

    @property
    def freshness_seconds(self) -> float:
        return math.inf if self.seen_at is None else self.seen_at - self.visible_at


class _Watcher(threading.Thread):
    """Polls the warehouse for the payments not yet seen, one query for all of them."""

    def __init__(self, client: Any, poll_seconds: float) -> None:
        super().__init__(name="freshness-watcher", daemon=True)
        self._client = client
        self._poll_seconds = poll_seconds
        #: The payments table, ``project.dataset.table``.
        self.table = f"{PROJECT}.{DATASET}.square_payments"
        self._pending: dict[str, _Arrival] = {}
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        #: How long each query for the ids took (the metadata read before it included), seconds.
        self.cycles_seconds: list[float] = []
        #: Metadata reads and id queries made.
        self.reads = 0
        self.error: Exception | None = None
        self._rows: int | None = None
        self._queried = -math.inf

    def add(self, arrival: _Arrival) -> None:
        if not _PAYMENT_ID.match(arrival.payment_id):
            raise ValueError(f"unexpected payment id {arrival.payment_id!r}")
        with self._lock:
            self._pending[arrival.payment_id] = arrival

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=STOP_SECONDS)

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                started = time.monotonic()
                self._poll()
                elapsed = time.monotonic() - started
                self._stop_event.wait(max(0.0, self._poll_seconds - elapsed))
        except Exception as exc:
            # The phase waiting on this thread fails with it; the thread's own traceback goes to stderr.
            self.error = exc
            raise

    def query(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the warehouse holds now."""
        # Ids are checked to be plain tokens (add), so they are inlined: no emulator feature needed.
        listed = ", ".join(f"'{payment_id}'" for payment_id in ids)
        rows = self._client.query_and_wait(f"SELECT id FROM `{self.table}` WHERE id IN ({listed})")
        return {str(row["id"]) for row in rows}

    def _poll(self) -> None:
        with self._lock:
            ids = list(self._pending)
        if not ids:
            return
        started = time.monotonic()
        self.reads += 1
        # The table's metadata is about a sixth of a query's cost to the emulator and changes with
        # every write: the ids are only queried after one (or 5 s after the last query).
        rows = self._client.get_table(self.table).num_rows
        if rows == self._rows and started - self._queried < _REQUERY_SECONDS:
            return
        self._rows, self._queried = rows, time.monotonic()
        found = self.query(ids)
        seen_at = time.time()
        self.cycles_seconds.append(time.monotonic() - started)
        with self._lock:
            for payment_id in found:
                arrival = self._pending.pop(payment_id, None)
                if arrival is not None:
                    arrival.seen_at = seen_at


def _create_payment(http: httpx.Client) -> _Arrival:
    """One new payment in the sandbox now, its clock first moved on to the wall clock's second."""
    now = http.get("/_sandbox/info").json()["now"]
    lag_seconds = int(time.time() - datetime.fromisoformat(now.replace("Z", "+00:00")).timestamp())
    if lag_seconds >= 1:
        http.post("/_sandbox/clock/advance", json={"seconds": lag_seconds}).raise_for_status()
    answer = http.post("/_sandbox/payments/create", json={"count": 1})
    answer.raise_for_status()
    body = answer.json()
    return _Arrival(body["payments"][0]["id"], datetime.fromisoformat(body["visible_at"]).timestamp())


def _arrivals(system: _System, watcher: _Watcher, options: argparse.Namespace) -> list[_Arrival]:
    """Payments arriving at a steady pace for the duration; each handed to the watcher."""
    count = max(1, round(options.duration_seconds / options.payment_every_seconds))
    arrivals = []
    started = time.monotonic()
    with httpx.Client(base_url=system.sandbox_url, timeout=10) as http:
        for index in range(count):
            # Pacing the arrivals (open loop: a slow request does not delay the next one's slot).
            time.sleep(max(0.0, started + index * options.payment_every_seconds - time.monotonic()))
            arrival = _create_payment(http)
            watcher.add(arrival)
            arrivals.append(arrival)
            system.check()
    return arrivals


def _drain(system: _System, watcher: _Watcher, deadline_seconds: float) -> None:
    """Wait until the watcher has seen every payment, or the deadline passes."""
    deadline = time.monotonic() + deadline_seconds
    while watcher.pending and time.monotonic() < deadline:
        if watcher.error is not None:
            raise RuntimeError("the warehouse watcher failed") from watcher.error
        system.check()
        time.sleep(0.1)  # polling interval of the wait, not a synchronisation


# One phase: one path, measured.


def _idle(system: _System) -> None:
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


def _polling_cost(system: _System) -> dict[str, float]:
    """What the watcher's metadata read and id query each cost the emulator, measured alone, ms."""
    watcher = _Watcher(system.bigquery, 0)
    ids = [f"bench-absent-{n}" for n in range(60)]
    table = watcher.table
    cost: dict[str, float] = {}
    for name, read in (
        ("read", lambda: system.bigquery.get_table(table)),
        ("query", lambda: watcher.query(ids)),
    ):
        read()  # the first one warms the emulator's caches
        cpu, started = _cpu_seconds(system.emulator_pid), time.monotonic()
        for _ in range(_COST_QUERIES):
            read()
        cost[f"emulator_cpu_ms_per_{name}"] = (_cpu_seconds(system.emulator_pid) - cpu) / _COST_QUERIES * 1000
        cost[f"wall_ms_per_{name}"] = (time.monotonic() - started) / _COST_QUERIES * 1000
    return cost


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


def _stages(path: str, system: _System, arrivals: list[_Arrival], since: float) -> dict[str, float]:
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


def _phase(path: str, system: _System, options: argparse.Namespace) -> dict[str, Any]:
    watcher = _Watcher(system.bigquery, options.poll_ms / 1000)
    cpu, started, wall_started = _cpu_seconds(system.emulator_pid), time.monotonic(), time.time()
    load = os.getloadavg()[0]
    watcher.start()
    schedulers: list[_Service] = []
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
        emulator_cpu, wall = _cpu_seconds(system.emulator_pid) - cpu, time.monotonic() - started
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
    with _system(options) as system:
        options.polling_cost = _polling_cost(system)
        for run in range(options.runs):
            # Alternating order, so no phase always runs on a warmer (or more loaded) system.
            order = phases if run % 2 == 0 else phases[::-1]
            results: dict[str, Any] = {"run": run + 1, "order": [_label(*phase) for phase in order]}
            for path, compared in order:
                label = _label(path, compared)
                _say(f"run {run + 1}/{options.runs}: {label}, {options.duration_seconds:g} s ...")
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
