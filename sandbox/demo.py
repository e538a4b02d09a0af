"""``possync demo``: the whole system on one machine, with no account anywhere, checked against the truth.

It starts a Redis server process, the Square and Lightspeed sandboxes, the BigQuery emulator and a
worker pool on both queues (``possync worker`` in a subprocess, exactly as in production,
configured only by environment variables), backfills both sandboxes' full history with a progress
display, prints the report and compares the warehouse with each sandbox's ground truth row by row.
Every ``POSSYNC_`` variable in the caller's environment is ignored for the services it starts, so it
never touches a real service.
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

from schemas.report import Figures, Report
from schemas.settings import ENV_PREFIX, Settings

__all__ = ["DemoOptions", "run_demo"]

DEMO_PROJECT = "possync-demo"
DEMO_DATASET = "commerce"
#: Payments history the sandbox generates, with a margin: the backfill starts this far back.
HISTORY_DAYS = 2 * 365 + 30
#: Lightspeed sales history the sandbox generates (one year), with a margin.
LIGHTSPEED_HISTORY_DAYS = 365 + 35
#: The demo's Lightspeed bucket: the documented size, a faster drip than a one-register account's
#: 1/s so the demo stays short (pacing follows the headers, whatever they say).
LIGHTSPEED_BUCKET_SIZE = 90
LIGHTSPEED_DRIP_RATE = 10.0


@dataclass(frozen=True)
class DemoOptions:
    """What ``possync demo`` was asked to do."""

    payments: int = 100_184
    customers: int = 1_732
    sales: int = 10_000
    items: int = 1_000
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
            "lightspeed",
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
    from sandbox.process import start_lightspeed_sandbox, start_square_sandbox
    from sandbox.redis_server import RedisServer

    started = time.monotonic()
    work_dir = Path(options.work_dir or tempfile.mkdtemp(prefix="possync-demo-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    _say(
        f"possync demo: {options.payments:,} Square payments, {options.sales:,} Lightspeed sales and "
        f"{options.items:,} items; logs and data in {work_dir}"
    )
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
        _say(
            f"starting the Lightspeed sandbox (bucket {LIGHTSPEED_BUCKET_SIZE}, "
            f"drip {LIGHTSPEED_DRIP_RATE:g}/s, rotating refresh tokens) ..."
        )
        # Fake credentials derived from the demo's token, so a sentinel token covers them too.
        ls_secret, ls_refresh = f"{options.token}-client-secret", f"{options.token}-refresh"
        lightspeed = stack.enter_context(
            start_lightspeed_sandbox(
                sales=options.sales,
                items=options.items,
                seed=options.seed,
                client_secret=ls_secret,
                refresh_token=ls_refresh,
                access_token=f"{options.token}-startup",
                rotate_refresh_tokens=True,
                bucket_size=LIGHTSPEED_BUCKET_SIZE,
                drip_rate=LIGHTSPEED_DRIP_RATE,
            )
        )
        _say(f"  {lightspeed.base_url}")
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
            "lightspeed_base_url": lightspeed.base_url,
            "lightspeed_token_url": f"{lightspeed.base_url}/auth/oauth/token",
            "lightspeed_account_id": "123456",
            "lightspeed_client_id": "sandbox-client",
            "lightspeed_client_secret": ls_secret,
            "lightspeed_refresh_token": ls_refresh,
            "lightspeed_token_file": str(work_dir / "lightspeed-refresh-token"),
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
        outcome = _backfill_with_progress(settings, sandbox.base_url, lightspeed.base_url, workers)
        sync_seconds = time.monotonic() - sync_started
        if outcome != 0:
            _say(f"backfill failed; worker log: {work_dir / 'worker.log'}")
            return outcome

        status = _report_and_check(settings, sandbox.base_url, lightspeed.base_url)
        total = time.monotonic() - started
        _say(
            f"demo duration: {total:.1f} s in all; backfill of {options.payments:,} payments, "
            f"{options.sales:,} sales and {options.items:,} items: {sync_seconds:.1f} s"
        )
        if options.keep_running:
            _say("still running (Ctrl-C to stop):")
            secret = ("square_access_token", "lightspeed_client_secret", "lightspeed_refresh_token")
            for name, value in overrides.items():
                if name not in secret:
                    _say(f"  POSSYNC_{name.upper()}={value}")
            _say("  POSSYNC_SQUARE_ACCESS_TOKEN=<the sandbox token: see --sandbox-token>")
            _say("  POSSYNC_LIGHTSPEED_CLIENT_SECRET, _REFRESH_TOKEN: derived from --sandbox-token")
            try:
                while workers.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                _say("stopping ...")
        return status


def _sandbox_now(base_url: str) -> datetime:
    import httpx

    info = httpx.get(f"{base_url}/_sandbox/info", timeout=10).json()
    return datetime.fromisoformat(str(info["now"]).replace("Z", "+00:00"))


def _backfill_with_progress(
    settings: Settings, square_url: str, lightspeed_url: str, workers: subprocess.Popen[bytes]
) -> int:
    import redis

    from producers.enqueue import enqueue, new_request_id
    from producers.waiting import wait_for_request
    from schemas.messages import QUEUES, BackfillRequest, routes_for
    from workers.broker import build_broker
    from workers.queues import dead_letters
    from workers.state import StateStore

    broker = build_broker(settings)
    client = redis.Redis.from_url(settings.redis_url)
    state = StateStore(client)
    # One request, two backfills: --wait-style progress follows both.
    request_id = new_request_id("backfill")
    backfill_ids = []
    for source, url, window_days, history_days in (
        ("square", square_url, settings.backfill_window_days, HISTORY_DAYS),
        ("lightspeed", lightspeed_url, settings.lightspeed_backfill_window_days, LIGHTSPEED_HISTORY_DAYS),
    ):
        now = _sandbox_now(url)
        backfill_id = f"{request_id}-{source}"
        request = BackfillRequest(
            request_id=request_id,
            backfill_id=backfill_id,
            source=source,
            since=now - timedelta(days=history_days),
            until=now + timedelta(minutes=1),
            window_days=window_days,
        )
        enqueue(broker, routes_for(source).plan, request)
        backfill_ids.append(backfill_id)
    progress_line = _Progress(sys.stderr)
    started = time.monotonic()

    def show(progress: Any, *, final: bool = False) -> None:
        if workers.poll() is not None:
            raise RuntimeError(f"the worker pool exited with status {workers.returncode}")
        done = total = 0
        for backfill_id in backfill_ids:
            plan = state.get_plan(backfill_id)
            windows = plan.summary() if plan is not None else {}
            done, total = done + windows.get("done", 0), total + windows.get("windows", 0)
        width = 30
        filled = int(width * done / total) if total else 0
        progress_line.show(
            f"backfill [{'#' * filled}{'.' * (width - filled)}] windows {done}/{total}  "
            f"messages {progress.done + progress.dead}/{progress.total}  "
            f"dead {progress.dead}  {time.monotonic() - started:5.1f} s",
            force=final,
        )

    final = wait_for_request(client, request_id, on_progress=show, poll_seconds=0.5)
    show(final, final=True)
    progress_line.done()
    if final.dead:
        for letter in dead_letters(client, QUEUES):
            _say(f"  dead letter {letter.message_id} ({letter.actor}): {letter.error_type}: {letter.error}")
        return 1
    return 0


def _report_and_check(settings: Settings, square_url: str, lightspeed_url: str) -> int:
    from sandbox.truth_check import check_warehouse, expected_report, fetch_truth
    from sandbox.truth_lightspeed import (
        check_lightspeed_warehouse,
        expected_lightspeed_report,
        fetch_lightspeed_truth,
    )
    from workers.report import build_report
    from workers.sinks.bigquery import make_bigquery_client

    project = settings.require_bigquery()
    dataset = settings.bigquery_dataset
    client = make_bigquery_client(settings)
    now = datetime.now(UTC)
    report = build_report(client, project=project, dataset=dataset, zone=settings.zone(), now=now)
    print(report.model_dump_json(by_alias=True, indent=2))
    _say("checking the warehouse against the Square sandbox's ground truth, row by row ...")
    truth = fetch_truth(square_url)
    square_ok = _verdict(
        "Square",
        check_warehouse(client, project=project, dataset=dataset, truth=truth),
        expected=_figures(expected_report(truth.payments, zone=settings.zone(), now=now)),
        actual=_figures(report),
    )
    _say("checking the warehouse against the Lightspeed sandbox's ground truth, row by row ...")
    ls_truth = fetch_lightspeed_truth(lightspeed_url)
    lightspeed_ok = _verdict(
        "Lightspeed",
        check_lightspeed_warehouse(client, project=project, dataset=dataset, truth=ls_truth),
        expected=_figures(expected_lightspeed_report(ls_truth.sales, zone=settings.zone(), now=now)),
        actual=report.lightspeed,
    )
    return 0 if square_ok and lightspeed_ok else 1


def _verdict(source: str, check: Any, *, expected: Figures, actual: Figures | None) -> bool:
    """Print one source's table check and compare its report figures; whether both hold."""
    _say(check.summary())
    if expected != actual:
        _say(f"{source} report differs from the truth: expected {expected.model_dump_json(by_alias=True)}")
        return False
    return bool(check.ok)


def _figures(report: Report) -> Figures:
    """A report's own figures, without its ``lightspeed`` part."""
    return Figures.model_validate(report.model_dump(exclude={"lightspeed"}))
