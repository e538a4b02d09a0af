"""Webhook receiver benchmark: signed Notion events against ``possync webhooks`` and a bare uvicorn app.

``python -m bench.webhooks`` (``--help`` for the options). Each run measures both servers, in
alternating order, in two phases:

- full speed: closed loop, ``--connections`` clients each sending the next event as soon as the
  last is answered; accepted events/s, p50/p99 latency;
- fixed rate: open loop, one event every ``1/--rate`` s whatever the answers, latency counted
  from each event's scheduled time (so a stall is charged to every event it delays).

The ceiling is a bare ASGI app answering 200, served by uvicorn exactly as the receiver is
(httptools, lifespan on, no access log), so the ratio says what the receiver's work costs beside
the HTTP stack on the same machine in the same run. The load comes from a separate process
(``--role load``) using aiohttp's client: httpx's async client costs about 1 ms of CPU per request
here, so it cannot offer the target rate. Every request is a distinct Notion event signed with the
verification token recorded in Redis; after each receiver phase the 200s are checked against the
messages that landed on the ``notion`` queue. Server and Redis CPU per request come from
``/proc/<pid>/stat``. Prints a table and the targets (pass/miss), writes ``webhooks.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis

from bench import processes
from bench.reporting import (
    Target,
    add_common_arguments,
    median,
    percentile,
    print_table,
    print_targets,
    write_results,
)
from producers.webhook_intake import NOTION_TOKEN_KEY
from sandbox.local_service import die_with_parent, free_port
from sandbox.notion_events import signed_headers
from sandbox.readiness import wait_until_serving
from sandbox.redis_server import RedisServer

__all__ = ["main"]

#: The targets (issue 8): verified events/s at full speed, and p99 at the fixed rate, ms.
TARGET_EVENTS_PER_SECOND = 1500.0
TARGET_P99_MS = 25.0
#: The Notion verification token the benchmark records and signs with (fake).
TOKEN = "secret_bench-notion-verification-token"
#: How long a server may take to answer after start, seconds.
STARTUP_SECONDS = 30.0
#: One request's deadline in the load generator, seconds.
REQUEST_TIMEOUT_SECONDS = 10.0
_NOTION_PATH = "/webhooks/notion"
_REPO = Path(__file__).resolve().parents[1]


# The load generator (``--role load``), a process of its own.


def _notion_event() -> bytes:
    """A distinct Notion event, minified as Notion sends it."""
    return orjson.dumps(
        {
            "id": str(uuid.uuid4()),
            "timestamp": "2025-06-01T12:34:56.789Z",
            "workspace_id": "0b3c9a52-5d4c-4a0e-9d55-0f2f7b0f3a11",
            "workspace_name": "Acme",
            "subscription_id": "1d1f6a7e-8c1b-4d7e-a8c2-4b7b2a9c5e21",
            "integration_id": "2e2a7b8f-9d2c-4e8f-b9d3-5c8c3bad6f32",
            "type": "page.created",
            "authors": [{"id": "3f3b8c90-ae3d-4f90-cae4-6d9d4cbe7043", "type": "person"}],
            "attempt_number": 1,
            "entity": {"id": str(uuid.uuid4()), "type": "page"},
            "data": {"parent": {"id": "4a4c9da1-bf4e-4aa1-dbf5-7eae5dcf8154", "type": "database"}},
            "api_version": "2025-09-03",
        }
    )


def _signed(token: str) -> tuple[bytes, dict[str, str]]:
    body = _notion_event()
    return body, signed_headers(body, token)


@dataclass
class _Tally:
    """Answers of one window: status counts and latencies, seconds."""

    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    def add(self, status: str, seconds: float) -> None:
        self.statuses[status] += 1
        self.latencies.append(seconds)


async def _post(session: Any, url: str, token: str) -> str:
    """Send one signed event; its status code, or the error's name."""
    import aiohttp

    body, headers = _signed(token)
    try:
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()
            return str(response.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return type(exc).__name__


async def _full_speed(session: Any, url: str, token: str, options: argparse.Namespace) -> dict[str, _Tally]:
    """Closed loop; answers completed within the measured window count, the warm-up's do not."""
    measure_from = time.perf_counter() + options.warmup_seconds
    end = measure_from + options.duration_seconds
    tallies = {"warmup": _Tally(), "measured": _Tally(), "late": _Tally()}

    async def client() -> None:
        while time.perf_counter() < end:
            start = time.perf_counter()
            status = await _post(session, url, token)
            done = time.perf_counter()
            window = "warmup" if done < measure_from else "measured" if done <= end else "late"
            tallies[window].add(status, done - start)

    await asyncio.gather(*(client() for _ in range(options.connections)))
    return tallies


async def _fixed_rate(session: Any, url: str, token: str, options: argparse.Namespace) -> dict[str, _Tally]:
    """Open loop at ``options.rate``; latency from each event's scheduled time."""
    warmup_count = int(options.rate * options.warmup_seconds)
    total = warmup_count + int(options.rate * options.duration_seconds)
    tallies = {"warmup": _Tally(), "measured": _Tally(), "late": _Tally()}
    tasks: set[asyncio.Task[None]] = set()

    async def one(scheduled: float, window: str) -> None:
        status = await _post(session, url, token)
        tallies[window].add(status, time.perf_counter() - scheduled)

    first = time.perf_counter() + 0.01
    for index in range(total):
        scheduled = first + index / options.rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(scheduled, "warmup" if index < warmup_count else "measured"))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    return tallies


async def _generate(options: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    token = options.token
    connector = aiohttp.TCPConnector(limit=options.connections)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        cpu_before = time.process_time()
        phase = _full_speed if options.mode == "full" else _fixed_rate
        tallies = await phase(session, options.url, token, options)
        cpu_seconds = time.process_time() - cpu_before
    measured = tallies["measured"]
    ok = measured.statuses.get("200", 0)
    latencies_ms = [seconds * 1000 for seconds in measured.latencies]
    return {
        "mode": options.mode,
        "offered_per_second": options.rate if options.mode == "rate" else None,
        "duration_seconds": options.duration_seconds,
        "requests": len(measured.latencies),
        "ok": ok,
        "ok_per_second": ok / options.duration_seconds,
        "statuses": dict(measured.statuses),
        "p50_ms": percentile(latencies_ms, 0.50),
        "p99_ms": percentile(latencies_ms, 0.99),
        "max_ms": max(latencies_ms, default=float("nan")),
        "ok_all_windows": sum(tally.statuses.get("200", 0) for tally in tallies.values()),
        "requests_all_windows": sum(len(tally.latencies) for tally in tallies.values()),
        "client_cpu_seconds": cpu_seconds,
    }


# The ceiling (``--role ceiling``): the HTTP stack alone.


async def _ceiling_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body, answers 200 with a small JSON body; nothing else."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/healthz":
        body = b'{"status":"ok"}'
    else:
        while (await receive()).get("more_body"):
            pass
        body = b'{"outcome":"accepted","detail":"event enqueued"}'
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": body})


def _serve_ceiling(port: int) -> None:
    import uvicorn

    # The receiver's own uvicorn settings (producers/webhooks.py, run_webhooks).
    uvicorn.run(
        _ceiling_app,
        host="127.0.0.1",
        port=port,
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
    )


# The benchmark (default role).


@dataclass
class _Server:
    name: str
    process: subprocess.Popen[bytes]
    url: str

    def cpu_seconds(self) -> float:
        return processes.cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _start(name: str, command: Sequence[str], env: dict[str, str], port: int, log_path: Path) -> _Server:
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            list(command),
            cwd=_REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    server = _Server(name, process, f"http://127.0.0.1:{port}")
    try:
        wait_until_serving(
            server.url + "/healthz",
            process,
            name=name,
            timeout_seconds=STARTUP_SECONDS,
            log_path=log_path,
            request_timeout_seconds=1.0,
            interval_seconds=0.05,
        )
    except RuntimeError:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def _servers(redis_url: str, log_dir: Path) -> Iterator[dict[str, _Server]]:
    """The receiver (``possync webhooks``, Notion key recorded in Redis) and the ceiling app."""
    started: dict[str, _Server] = {}
    try:
        port = free_port()
        env = {name: value for name, value in os.environ.items() if not name.startswith("POSSYNC_")}
        env.update(
            POSSYNC_REDIS_URL=redis_url,
            POSSYNC_WEBHOOKS_HOST="127.0.0.1",
            POSSYNC_WEBHOOKS_PORT=str(port),
            POSSYNC_LOG_FORMAT="json",
        )
        command = [sys.executable, "-m", "producers.cli", "webhooks"]
        started["receiver"] = _start("possync webhooks", command, env, port, log_dir / "receiver.log")
        port = free_port()
        command = [sys.executable, "-m", "bench.webhooks", "--role", "ceiling", "--port", str(port)]
        started["ceiling"] = _start("ceiling app", command, dict(os.environ), port, log_dir / "ceiling.log")
        yield started
    finally:
        for server in started.values():
            server.stop()


def _load(url: str, mode: str, options: argparse.Namespace) -> dict[str, Any]:
    """Run the load generator process for one phase; its JSON result."""
    command = [
        sys.executable,
        "-m",
        "bench.webhooks",
        "--role",
        "load",
        "--url",
        url + _NOTION_PATH,
        "--mode",
        mode,
        "--token",
        TOKEN,
        *("--rate", str(options.rate)),
        *("--connections", str(options.connections)),
        *("--duration-seconds", str(options.duration_seconds)),
        *("--warmup-seconds", str(options.warmup_seconds)),
    ]
    budget = options.warmup_seconds + options.duration_seconds + REQUEST_TIMEOUT_SECONDS + 60
    done = subprocess.run(command, cwd=_REPO, capture_output=True, timeout=budget, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed ({done.returncode}):\n{done.stderr.decode()[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _reset(client: redis.Redis) -> None:
    """An empty database with the verification token recorded (as ``--set-notion-verification-token``)."""
    client.flushdb()
    client.set(NOTION_TOKEN_KEY, TOKEN)


def _phase(
    server: _Server,
    mode: str,
    options: argparse.Namespace,
    client: redis.Redis,
    redis_pid: int,
    *,
    profile: Path | None = None,
) -> dict[str, Any]:
    _reset(client)
    cpu_before, redis_before = server.cpu_seconds(), processes.cpu_seconds(redis_pid)
    with _profiled(server, profile, options.warmup_seconds + options.duration_seconds):
        result = _load(server.url, mode, options)
    requests = max(1, result["requests_all_windows"])
    result["server_cpu_ms_per_request"] = (server.cpu_seconds() - cpu_before) * 1000 / requests
    result["redis_cpu_ms_per_request"] = (processes.cpu_seconds(redis_pid) - redis_before) * 1000 / requests
    # Every 200 from the receiver must be a message on the queue.
    result["enqueued"] = int(client.llen("dramatiq:notion")) if server.name == "possync webhooks" else None
    return result


@contextlib.contextmanager
def _profiled(server: _Server, output: Path | None, seconds: float) -> Iterator[None]:
    """Sample ``server`` with py-spy for ``seconds`` (only the threads holding the GIL) into ``output``.

    The format follows the suffix: ``.svg`` a flame graph, ``.json`` speedscope, anything else
    py-spy's raw collapsed stacks.
    """
    if output is None:
        yield
        return
    formats = {".svg": "flamegraph", ".json": "speedscope"}
    command = [
        str(Path(sys.executable).with_name("py-spy")),
        "record",
        *("--pid", str(server.process.pid)),
        *("--output", str(output)),
        *("--format", formats.get(output.suffix, "raw")),
        *("--duration", str(max(1, round(seconds)))),
        *("--rate", "200"),
        "--gil",
        "--threads",
        "--nonblocking",
    ]
    try:
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise RuntimeError("--profile needs py-spy: pip install -e '.[dev]'") from None
    try:
        yield
    finally:
        _, errors = spy.communicate(timeout=seconds + 60)
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed ({spy.returncode}): {errors.decode()[-2000:]}")


def _measure(options: argparse.Namespace) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    with (
        RedisServer.start() as server,
        tempfile.TemporaryDirectory(prefix="possync-bench-") as scratch,
        _servers(server.url, Path(scratch)) as servers,
    ):
        client = redis.Redis.from_url(server.url)
        for index in range(options.runs):
            # Alternate who goes first, so drift in the machine's load hits both alike.
            order = ["ceiling", "receiver"] if index % 2 == 0 else ["receiver", "ceiling"]
            # Other work on the machine shows here: the figures of a busy run are less telling.
            run: dict[str, Any] = {"run": index + 1, "load_average_1m": round(os.getloadavg()[0], 2)}
            for name in order:
                run[name] = {}
                for mode in ("full", "rate"):
                    # The profile, if asked for, of the first run's receiver at full speed.
                    profile = options.profile if (index, name, mode) == (0, "receiver", "full") else None
                    run[name][mode] = _phase(
                        servers[name], mode, options, client, server.pid, profile=profile
                    )
            run["receiver_to_ceiling_full_speed"] = (
                run["receiver"]["full"]["ok_per_second"] / run["ceiling"]["full"]["ok_per_second"]
                if run["ceiling"]["full"]["ok_per_second"]
                else None
            )
            runs.append(run)
            print(f"run {index + 1}/{options.runs} done", file=sys.stderr)
        client.close()
    return {"runs": runs}


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(server: str, mode: str, key: str) -> float:
        return median([run[server][mode][key] for run in runs if run[server][mode][key] is not None])

    keys = ("ok_per_second", "p50_ms", "p99_ms", "server_cpu_ms_per_request", "redis_cpu_ms_per_request")
    summary: dict[str, Any] = {
        server: {mode: {key: med(server, mode, key) for key in keys} for mode in ("full", "rate")}
        for server in ("receiver", "ceiling")
    }
    ratios = [run["receiver_to_ceiling_full_speed"] for run in runs if run["receiver_to_ceiling_full_speed"]]
    summary["receiver_to_ceiling_full_speed"] = median(ratios)
    # What one process would accept with a core to itself: CPU per event varies far less than
    # throughput when other work shares the machine.
    cpu_ms = summary["receiver"]["full"]["server_cpu_ms_per_request"]
    summary["receiver_one_core_events_per_second"] = 1000 / cpu_ms if cpu_ms else math.nan
    return summary


def _report(options: argparse.Namespace, measured: dict[str, Any]) -> dict[str, Any]:
    runs = measured["runs"]
    summary = _summary(runs)
    rows = []
    for server, label in (("receiver", "possync webhooks"), ("ceiling", "bare uvicorn (ceiling)")):
        for mode, phase in (("full", "full speed"), ("rate", f"{options.rate:g}/s")):
            figures = summary[server][mode]
            rows.append(
                [
                    f"{label}, {phase}",
                    figures["ok_per_second"],
                    figures["p50_ms"],
                    figures["p99_ms"],
                    figures["server_cpu_ms_per_request"],
                ]
            )
    print(
        f"\nmedians of {len(runs)} runs, {options.duration_seconds:g} s a phase,"
        f" {options.connections} connections at full speed"
    )
    print_table(["server, load", "accepted/s", "p50 ms", "p99 ms", "server CPU ms/req"], rows)
    print(f"receiver / ceiling at full speed: {summary['receiver_to_ceiling_full_speed']:.2f}")
    capacity = summary["receiver_one_core_events_per_second"]
    print(
        f"receiver at full speed on one whole core (1000 / CPU ms per event, less sensitive to"
        f" other load): {capacity:,.0f} events/s"
    )
    loads = ", ".join(f"{run['load_average_1m']:g}" for run in runs)
    print(f"load average (1 min) at each run's start: {loads} on {os.cpu_count()} CPUs")
    mismatches = [
        run["run"]
        for run in runs
        for mode in ("full", "rate")
        if run["receiver"][mode]["enqueued"] != run["receiver"][mode]["ok_all_windows"]
    ]
    if mismatches:
        print(f"WARNING: 200s and enqueued messages differ in runs {sorted(set(mismatches))}")
    targets = [
        Target(
            "verified events/s at full speed",
            summary["receiver"]["full"]["ok_per_second"],
            TARGET_EVENTS_PER_SECOND,
            "events/s",
            at_least=True,
        ),
        Target(
            f"p99 at {options.rate:g} events/s",
            summary["receiver"]["rate"]["p99_ms"],
            TARGET_P99_MS,
            "ms",
            at_least=False,
        ),
    ]
    print_targets(targets)
    return {
        "settings": {
            "runs": options.runs,
            "duration_seconds": options.duration_seconds,
            "warmup_seconds": options.warmup_seconds,
            "rate_per_second": options.rate,
            "connections": options.connections,
            "load_generator": "aiohttp client, one process",
        },
        "summary": summary,
        "targets": [target.as_dict() for target in targets],
        "enqueued_matches_accepted": not mismatches,
        "runs": runs,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.webhooks",
        description=(
            "Signed Notion events against `possync webhooks` and a bare uvicorn app (the ceiling),"
            " at full speed and at a fixed rate; prints medians and pass/miss against the targets"
            f" ({TARGET_EVENTS_PER_SECOND:,.0f} events/s; p99 <= {TARGET_P99_MS:g} ms at 500/s),"
            " writes webhooks.json."
        ),
    )
    add_common_arguments(parser)
    parser.add_argument(
        "--duration-seconds", type=float, default=10.0, help="measured time of each phase (default: 10)"
    )
    parser.add_argument(
        "--warmup-seconds", type=float, default=1.0, help="unmeasured lead-in of each phase (default: 1)"
    )
    parser.add_argument(
        "--rate", type=float, default=500.0, help="events/s of the fixed-rate phase (default: 500)"
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=64,
        help="concurrent connections of the load generator (default: 64)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="py-spy the receiver during the first full-speed phase (which it slows) into FILE:"
        " .svg flame graph, .json speedscope, else raw collapsed stacks",
    )
    # Internal: the processes this benchmark starts.
    parser.add_argument(
        "--role", choices=["bench", "load", "ceiling"], default="bench", help=argparse.SUPPRESS
    )
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["full", "rate"], help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    if options.role == "ceiling":
        _serve_ceiling(options.port)
        return 0
    if options.role == "load":
        print(json.dumps(asyncio.run(_generate(options))))
        return 0
    results = _report(options, _measure(options))
    path = write_results("webhooks", results, results_dir=options.results_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
