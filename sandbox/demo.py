"""``possync demo``: the whole system on one machine, with no account anywhere, checked against the truth.

It starts a Redis server process, the Square, Lightspeed and Notion sandboxes, the BigQuery emulator,
the webhook receiver, two scheduler replicas and a worker pool on every queue (``possync`` commands in
subprocesses, exactly as in production, configured only by environment variables); backfills both
point-of-sale sandboxes' full history with a progress display; then has the sandboxes send signed
Notion and Square webhooks (page edits, a trash, payment captures and refunds, a customer deleted)
and waits for them to land; prints the report and compares the warehouse with each sandbox's ground
truth row by row, ``notion_pages`` included.
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
#: The worker pool's queues: every source.
QUEUES_CONSUMED = ("square", "lightspeed", "notion")
#: Notion pages the sandbox holds, and events it sends after the backfill.
NOTION_PAGES = 40
NOTION_EVENTS = 8
#: Square payments captured or refunded, and customers deleted, by webhook after the backfill.
SQUARE_PAYMENT_CHANGES = 3
SQUARE_CUSTOMER_DELETIONS = 1
#: How long the webhook receiver may take to answer ``/readyz`` after it starts, seconds.
RECEIVER_READY_SECONDS = 30.0


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
def _service(argv: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``possync ARGV`` as a subprocess, stopped gracefully (then killed) on exit."""
    log_file = log_path.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "producers.cli", *argv], env=env, stdout=log_file, stderr=subprocess.STDOUT
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


def _worker_argv(options: DemoOptions) -> list[str]:
    return [
        "worker",
        "--queues",
        *QUEUES_CONSUMED,
        "--processes",
        str(options.processes),
        "--threads",
        str(options.threads),
    ]


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
    from sandbox.demo_metrics import check_metrics, sync_every_stream
    from sandbox.emulator import BigQueryEmulator
    from sandbox.process import (
        free_port,
        start_lightspeed_sandbox,
        start_notion_sandbox,
        start_square_sandbox,
    )
    from sandbox.readiness import wait_until_serving
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
        # The receiver's port is chosen first: the sandboxes deliver their webhooks to it.
        receiver_port = free_port()
        receiver = f"http://127.0.0.1:{receiver_port}"
        square_signature_key = f"{options.token}-square-signature-key"
        _say("starting the Square sandbox ...")
        sandbox = stack.enter_context(
            start_square_sandbox(
                payments=options.payments,
                customers=options.customers,
                seed=options.seed,
                token=options.token,
                webhook_url=f"{receiver}/webhooks/square",
                webhook_signature_key=square_signature_key,
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
        _say("starting the Notion sandbox (it signs and delivers events to the receiver) ...")
        notion = stack.enter_context(
            start_notion_sandbox(
                pages=NOTION_PAGES,
                seed=options.seed,
                token=f"{options.token}-notion",
                webhook_url=f"{receiver}/webhooks/notion",
            )
        )
        _say(f"  {notion.base_url}")
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
            "notion_base_url": notion.base_url,
            "notion_token": f"{options.token}-notion",
            "webhooks_port": str(receiver_port),
            "square_webhook_signature_key": square_signature_key,
            "square_webhook_url": f"{receiver}/webhooks/square",
            "worker_metrics_port": str(free_port()),
        }
        # Each scheduler replica serves its /metrics on its own port (they share one machine here).
        scheduler_ports = [free_port(), free_port()]
        # Endpoints and credentials come from the demo only, never from the caller's environment.
        env = {key: value for key, value in os.environ.items() if not key.upper().startswith(ENV_PREFIX)}
        env.update({ENV_PREFIX + key.upper(): value for key, value in overrides.items()})
        env.setdefault("POSSYNC_LOG_FORMAT", "json")
        settings = Settings(**overrides)  # type: ignore[arg-type]

        _say(f"starting the webhook receiver on {receiver} and two scheduler replicas ...")
        webhooks = stack.enter_context(_service(["webhooks"], env, work_dir / "webhooks.log"))
        wait_until_serving(
            f"{receiver}/readyz",
            webhooks,
            name="the webhook receiver",
            timeout_seconds=RECEIVER_READY_SECONDS,
            log_path=work_dir / "webhooks.log",
            interval_seconds=0.2,
        )
        for replica, port in enumerate(scheduler_ports, start=1):
            replica_env = {**env, ENV_PREFIX + "SCHEDULER_METRICS_PORT": str(port)}
            stack.enter_context(_service(["scheduler"], replica_env, work_dir / f"scheduler-{replica}.log"))
        metrics_endpoints = {
            "worker pool": f"http://127.0.0.1:{overrides['worker_metrics_port']}/metrics",
            **{
                f"scheduler {replica}": f"http://127.0.0.1:{port}/metrics"
                for replica, port in enumerate(scheduler_ports, start=1)
            },
            "webhook receiver": f"{receiver}/metrics",
        }
        _say(f"starting {options.processes} worker processes x {options.threads} threads ...")
        workers = stack.enter_context(_service(_worker_argv(options), env, work_dir / "worker.log"))
        sync_started = time.monotonic()
        outcome = _backfill_with_progress(settings, sandbox.base_url, lightspeed.base_url, workers)
        sync_seconds = time.monotonic() - sync_started
        if outcome != 0:
            _say(f"backfill failed; worker log: {work_dir / 'worker.log'}")
            return outcome

        events_started = time.monotonic()
        outcome = _send_webhooks(settings, sandbox.base_url, notion.base_url, workers)
        events_seconds = time.monotonic() - events_started
        if outcome != 0:
            _say(f"webhooks failed; logs: {work_dir / 'webhooks.log'}, {work_dir / 'worker.log'}")
            return outcome

        _say("running an incremental sync of every stream (what each scheduler tick sends) ...")
        if sync_every_stream(settings) != 0:
            _say(f"the incremental sync failed; worker log: {work_dir / 'worker.log'}")
            return 1
        _say("reading every process's /metrics (queue depth, sync lag, rows synced) ...")
        if not check_metrics(metrics_endpoints):
            _say("a process's /metrics lacks queue depth, lag or rows synced")
            return 1

        status = _report_and_check(settings, sandbox.base_url, lightspeed.base_url, notion.base_url)
        total = time.monotonic() - started
        _say(
            f"demo duration: {total:.1f} s in all; backfill of {options.payments:,} payments, "
            f"{options.sales:,} sales and {options.items:,} items: {sync_seconds:.1f} s; "
            f"webhooks sent and landed: {events_seconds:.1f} s"
        )
        if options.keep_running:
            _say("still running (Ctrl-C to stop):")
            secret = (
                "square_access_token",
                "lightspeed_client_secret",
                "lightspeed_refresh_token",
                "notion_token",
                "square_webhook_signature_key",
            )
            for name, value in overrides.items():
                if name not in secret:
                    _say(f"  POSSYNC_{name.upper()}={value}")
            _say("  POSSYNC_SQUARE_ACCESS_TOKEN=<the sandbox token: see --sandbox-token>")
            _say("  POSSYNC_LIGHTSPEED_CLIENT_SECRET, _REFRESH_TOKEN, POSSYNC_NOTION_TOKEN,")
            _say("  POSSYNC_SQUARE_WEBHOOK_SIGNATURE_KEY: derived from --sandbox-token")
            _say("metrics (curl them):")
            for name, url in metrics_endpoints.items():
                _say(f"  {name}: {url}")
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


def _send_webhooks(
    settings: Settings, square_url: str, notion_url: str, workers: subprocess.Popen[bytes]
) -> int:
    """Have the sandboxes change records and deliver signed webhooks; wait until every event landed.

    Notion: the one-time verification handshake (the receiver records the token), a batch of page
    events and a page moved to the trash. Square: payments captured or refunded and customers
    deleted. Returns 0 when every event was delivered and its messages finished without a dead letter.
    """
    import httpx
    import redis

    from workers.queues import request_progress

    client = redis.Redis.from_url(settings.redis_url)
    with httpx.Client(timeout=30) as http:
        handshake = http.post(f"{notion_url}/_sandbox/webhook/handshake").json()
        if handshake.get("status") != 200:
            _say(f"the receiver refused Notion's verification handshake: {handshake}")
            return 1
        http.post(f"{notion_url}/_sandbox/events/batch", json={"count": NOTION_EVENTS}).raise_for_status()
        pages = http.get(f"{notion_url}/_sandbox/pages").json()
        trashed = next(page for page in pages if not page["in_trash"] and not page["purged"])
        http.post(
            f"{notion_url}/_sandbox/events", json={"type": "page.deleted", "page_id": trashed["id"]}
        ).raise_for_status()

        # A few of the newest payments and customers, read from the API as any client would.
        token = settings.require_square().get_secret_value()
        headers = {"Authorization": f"Bearer {token}"}
        payments = http.get(
            f"{square_url}/v2/payments", params={"limit": 100, "sort_order": "DESC"}, headers=headers
        ).json()["payments"]
        approved = [p["id"] for p in payments if p["status"] == "APPROVED"]
        completed = [p["id"] for p in payments if p["status"] == "COMPLETED"]
        changed = approved[: SQUARE_PAYMENT_CHANGES // 2 + 1] + completed[: SQUARE_PAYMENT_CHANGES // 2]
        for payment_id in changed:
            http.post(f"{square_url}/_sandbox/payments/{payment_id}/update", json={}).raise_for_status()
        customers = http.get(f"{square_url}/v2/customers", params={"limit": 10}, headers=headers).json()
        deleted = [customer["id"] for customer in customers["customers"]][:SQUARE_CUSTOMER_DELETIONS]
        for customer_id in deleted:
            http.post(f"{square_url}/_sandbox/customers/{customer_id}/delete").raise_for_status()

        progress_line = _Progress(sys.stderr)
        started = time.monotonic()
        while True:
            if workers.poll() is not None:
                raise RuntimeError(f"the worker pool exited with status {workers.returncode}")
            square = http.get(f"{square_url}/_sandbox/webhooks/deliveries").json()
            notion = http.get(f"{notion_url}/_sandbox/deliveries").json()
            events = [("square", d["event_id"]) for d in square] + [
                ("notion", d["event_id"]) for d in notion["deliveries"] if d["copy"] == "event"
            ]
            delivered = sum(1 for d in square if d["delivered"]) + notion["acknowledged"]
            failed = sum(1 for d in square if d["finished"] and not d["delivered"]) + notion["failed"]
            progress = [request_progress(client, f"webhook-{provider}-{event}") for provider, event in events]
            landed = sum(1 for p in progress if p.total and not p.pending)
            dead = sum(p.dead for p in progress)
            progress_line.show(
                f"webhooks: {len(events)} sent, {delivered} acknowledged, {landed} landed, "
                f"{dead} dead  {time.monotonic() - started:5.1f} s"
            )
            if failed or dead:
                progress_line.done()
                _say(f"webhooks: {failed} deliveries failed, {dead} messages dead-lettered")
                return 1
            if landed == len(events) and not notion["pending"]:
                progress_line.show(
                    f"webhooks: {len(events)} sent, acknowledged and landed "
                    f"in {time.monotonic() - started:.1f} s",
                    force=True,
                )
                progress_line.done()
                return 0
            if time.monotonic() - started > 300:
                progress_line.done()
                _say("webhooks: not every event landed within 300 s")
                return 1
            time.sleep(0.25)  # polling interval of the progress display


def _report_and_check(settings: Settings, square_url: str, lightspeed_url: str, notion_url: str) -> int:
    from sandbox.truth_check import check_warehouse, expected_report, fetch_truth
    from sandbox.truth_lightspeed import (
        check_lightspeed_warehouse,
        expected_lightspeed_report,
        fetch_lightspeed_truth,
    )
    from sandbox.truth_notion import check_notion_warehouse, fetch_notion_truth
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
    _say("checking notion_pages against the Notion sandbox's ground truth, row by row ...")
    notion_check = check_notion_warehouse(
        client,
        project=project,
        dataset=dataset,
        truth=fetch_notion_truth(notion_url, notion_version=settings.notion_version),
    )
    _say(notion_check.summary())
    return 0 if square_ok and lightspeed_ok and notion_check.ok else 1


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
