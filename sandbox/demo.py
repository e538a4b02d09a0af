"""``possync demo``: the whole system on one machine, with no account anywhere, checked against the truth.

It starts a Redis server process, the Square sandbox, the BigQuery emulator and a worker pool
(``possync worker`` in a subprocess, exactly as in production, configured only by environment
variables), backfills the sandbox's full history with a progress display, prints the report and
compares the warehouse with the sandbox's ground truth row by row. Every ``POSSYNC_`` variable in
the caller's environment is ignored for the services it starts, so it never touches a real service.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from schemas.settings import ENV_PREFIX, Settings

__all__ = ["DemoOptions", "run_demo"]

DEMO_PROJECT = "possync-demo"
DEMO_DATASET = "commerce"
#: Payments history the sandbox generates, with a margin: the backfill starts this far back.
HISTORY_DAYS = 2 * 365 + 30


@dataclass(frozen=True)
class DemoOptions:
    """What ``possync demo`` was asked to do."""

    payments: int = 100_184
    customers: int = 1_732
    processes: int = 2
    threads: int = 4
    seed: int = 7
    keep_running: bool = False
    work_dir: str | None = None
    #: Python 3.13 interpreter for the BigQuery emulator (None: look on PATH and in pyenv).
    emulator_python: str | None = None
    #: The fake credential the sandbox accepts; never a real token.
    token: str = "sandbox-demo-token"  # noqa: S105


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextmanager
def _worker_pool(
    env: dict[str, str], options: DemoOptions, log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``possync worker`` as a subprocess, stopped gracefully (then killed) on exit."""
    log_file = log_path.open("ab")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "producers.cli",
            "worker",
            "--queues",
            "square",
            "--processes",
            str(options.processes),
            "--threads",
            str(options.threads),
        ],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        log_file.close()


class _Progress:
    """One status line on stderr: windows done, messages finished, elapsed time."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last_print = 0.0
        self.last_text = ""

    def show(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + text.ljust(len(self.last_text)))
            self.stream.flush()
        elif force or (text != self.last_text and now - self.last_print >= 2.0):
            self.stream.write(text + "\n")
            self.stream.flush()
            self.last_print = now
        self.last_text = text

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def run_demo(options: DemoOptions) -> int:
    """Run the demo; returns 0 when the warehouse equals the ground truth."""
    from sandbox.emulator import BigQueryEmulator
    from sandbox.process import start_square_sandbox
    from sandbox.redis_server import RedisServer

    started = time.monotonic()
    work_dir = Path(options.work_dir or tempfile.mkdtemp(prefix="possync-demo-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    _say(f"possync demo: {options.payments:,} payments; logs and data in {work_dir}")
    with ExitStack() as stack:
        _say("starting Redis ...")
        redis_server = stack.enter_context(RedisServer.start(appendonly=True, data_dir=work_dir / "redis"))
        _say(f"  {redis_server.url}")
        _say("starting the Square sandbox ...")
        sandbox = stack.enter_context(
            start_square_sandbox(
                payments=options.payments, customers=options.customers, seed=options.seed, token=options.token
            )
        )
        _say(f"  {sandbox.base_url}")
        _say("starting the BigQuery emulator (the first run installs it) ...")
        emulator = stack.enter_context(
            BigQueryEmulator.start(
                DEMO_PROJECT, data_dir=work_dir / "bigquery", python=options.emulator_python
            )
        )
        _say(f"  {emulator.endpoint}")

        overrides: dict[str, str] = {
            "redis_url": redis_server.url,
            "square_base_url": sandbox.base_url,
            "square_access_token": options.token,
            "bigquery_project": DEMO_PROJECT,
            "bigquery_dataset": DEMO_DATASET,
            "bigquery_endpoint": emulator.endpoint,
            "bigquery_location": "US",
        }
        # Endpoints and credentials come from the demo only, never from the caller's environment.
        env = {key: value for key, value in os.environ.items() if not key.upper().startswith(ENV_PREFIX)}
        env.update({ENV_PREFIX + key.upper(): value for key, value in overrides.items()})
        env.setdefault("POSSYNC_LOG_FORMAT", "json")
        settings = Settings(**overrides)  # type: ignore[arg-type]

        _say(f"starting {options.processes} worker processes x {options.threads} threads ...")
        workers = stack.enter_context(_worker_pool(env, options, work_dir / "worker.log"))
        sync_started = time.monotonic()
        outcome = _backfill_with_progress(settings, sandbox.base_url, workers)
        sync_seconds = time.monotonic() - sync_started
        if outcome != 0:
            _say(f"backfill failed; worker log: {work_dir / 'worker.log'}")
            return outcome

        status = _report_and_check(settings, sandbox.base_url)
        total = time.monotonic() - started
        rate = options.payments / sync_seconds if sync_seconds else 0.0
        _say(
            f"demo duration: {total:.1f} s in all; backfill of {options.payments:,} payments "
            f"{sync_seconds:.1f} s ({rate:,.0f} payments/s)"
        )
        if options.keep_running:
            _say("still running (Ctrl-C to stop):")
            for name, value in overrides.items():
                if name != "square_access_token":
                    _say(f"  POSSYNC_{name.upper()}={value}")
            _say("  POSSYNC_SQUARE_ACCESS_TOKEN=<the sandbox token: see --sandbox-token>")
            try:
                while workers.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                _say("stopping ...")
        return status


def _backfill_with_progress(settings: Settings, sandbox_url: str, workers: subprocess.Popen[bytes]) -> int:
    import httpx
    import redis

    from producers.enqueue import enqueue, new_request_id
    from producers.waiting import wait_for_request
    from schemas.messages import PLAN_SQUARE_BACKFILL, BackfillRequest
    from workers.broker import build_broker
    from workers.queues import dead_letters
    from workers.state import StateStore

    info = httpx.get(f"{sandbox_url}/_sandbox/info", timeout=10).json()
    now = datetime.fromisoformat(str(info["now"]).replace("Z", "+00:00"))
    broker = build_broker(settings)
    client = redis.Redis.from_url(settings.redis_url)
    state = StateStore(client)
    request_id = new_request_id("backfill")
    request = BackfillRequest(
        request_id=request_id,
        backfill_id=request_id,
        since=now - timedelta(days=HISTORY_DAYS),
        until=now + timedelta(minutes=1),
        window_days=settings.backfill_window_days,
    )
    enqueue(broker, PLAN_SQUARE_BACKFILL, request)
    progress_line = _Progress(sys.stderr)
    started = time.monotonic()

    def show(progress: Any) -> None:
        if workers.poll() is not None:
            raise RuntimeError(f"the worker pool exited with status {workers.returncode}")
        plan = state.get_plan(request_id)
        windows = plan.summary() if plan is not None else {}
        done, total = windows.get("done", 0), windows.get("windows", 0)
        width = 30
        filled = int(width * done / total) if total else 0
        progress_line.show(
            f"backfill [{'#' * filled}{'.' * (width - filled)}] windows {done}/{total}  "
            f"messages {progress.done + progress.dead}/{progress.total}  "
            f"dead {progress.dead}  {time.monotonic() - started:5.1f} s"
        )

    final = wait_for_request(client, request_id, on_progress=show, poll_seconds=0.5)
    show(final)
    progress_line.done()
    if final.dead:
        for letter in dead_letters(client, ["square"]):
            _say(f"  dead letter {letter.message_id} ({letter.actor}): {letter.error_type}: {letter.error}")
        return 1
    return 0


def _report_and_check(settings: Settings, sandbox_url: str) -> int:
    from sandbox.truth_check import check_warehouse, expected_report, fetch_truth
    from workers.report import build_report
    from workers.sinks.bigquery import make_bigquery_client

    project = settings.require_bigquery()
    client = make_bigquery_client(settings)
    now = datetime.now(UTC)
    report = build_report(
        client, project=project, dataset=settings.bigquery_dataset, zone=settings.zone(), now=now
    )
    print(report.model_dump_json(by_alias=True, indent=2))
    truth = fetch_truth(sandbox_url)
    _say("checking the warehouse against the ground truth, row by row ...")
    check = check_warehouse(client, project=project, dataset=settings.bigquery_dataset, truth=truth)
    _say(check.summary())
    expected = expected_report(truth.payments, zone=settings.zone(), now=now)
    if expected != report:
        _say(f"report differs from the truth: expected {expected.model_dump_json(by_alias=True)}")
        return 1
    return 0 if check.ok else 1
