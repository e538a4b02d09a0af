"""Backfill benchmark: the whole system against the floor and dlt; worker memory at 100k and 1M payments.

``python -m bench.backfill`` (``--help`` for the options) starts one Redis, one BigQuery emulator
and a Square sandbox, then, ``--runs`` times and in rotating order:

- ``possync P×T``, for each ``--processes`` P: Redis flushed, ``possync worker --queues square``
  started and left to settle (every process booted, CPU idle), then ``possync backfill square
  --stream payments --wait`` over the sandbox's whole history, timed from its start until it
  returns. Afterwards, untimed: each worker process's peak RSS (``VmHWM``) is read before the
  pool stops, and the warehouse is checked row by row against the sandbox's ground truth
  (``sandbox.truth_check``); a run counts only if the check passes and nothing was dead-lettered.
- ``floor``: ``bench/floor.py`` (one HTTP client, one load job, one MERGE; timed inside itself,
  imports excluded). Its first run is truth-checked too.
- ``dlt``: ``bench/dlt_pipeline.py``, dlt's rest_api source paging the same sandbox and merging
  into the same emulator (timed inside itself: extract + normalize + load); its row count is checked.

Each measurement writes to a dataset of its own, dropped afterwards. Ratios are taken per run (the
same round, same machine state) and then their median. ``--memory`` instead runs the backfill at
each ``--memory-payments`` size (default 100,184 and 1,000,000; the sandbox generates payments
lazily) and compares the worker processes' peak RSS. Results: ``bench/results/backfill.json`` or
``memory.json``. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import redis

from bench.processes import child_pids, status_kib, total_cpu_seconds
from bench.reporting import Target, add_common_arguments, median, print_table, print_targets, write_results
from sandbox.emulator import BigQueryEmulator
from sandbox.process import SandboxProcess, free_port, start_square_sandbox
from sandbox.redis_server import RedisServer
from schemas.settings import ENV_PREFIX, Settings
from schemas.tables import SQUARE_PAYMENTS

__all__ = ["build_parser", "main"]

_REPO = Path(__file__).resolve().parents[1]
#: The BigQuery project the emulator serves.
PROJECT = "possync-bench"
#: The fake bearer token the sandbox accepts.
TOKEN = "bench-sandbox-token"
#: The sandbox generates two years of history before its clock; the backfill starts this far back.
HISTORY_DAYS = 2 * 365 + 30
#: Targets of issue 8.
FLOOR_RATIO_TARGET = 1.5
DLT_RATIO_TARGET = 2.0
PEAK_RSS_TARGET_MB = 250.0
FLATNESS_TARGET = 1.2
#: Deadlines, seconds: a pool to boot and settle; one measured command.
POOL_READY_SECONDS = 60.0
COMMAND_SECONDS = 3600.0
#: A pool counts as idle once its processes use less than this CPU over one poll interval.
IDLE_CPU_FRACTION = 0.05
#: What Dramatiq logs once per worker process when it has booted.
_READY_LINE = b"Worker process is ready for action."
_MB = 1024 * 1024


# The system.


@contextmanager
def _worker_pool(env: dict[str, str], *, processes: int, threads: int, log_path: Path) -> Iterator[Any]:
    """``possync worker --queues square`` in its own process group, booted and idle; stopped after."""
    command = f"worker --queues square --processes {processes} --threads {threads}"
    with log_path.open("wb") as log:
        pool = subprocess.Popen(
            [sys.executable, "-m", "producers.cli", *command.split()],
            cwd=_REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + POOL_READY_SECONDS
        while log_path.read_bytes().count(_READY_LINE) < processes:
            if pool.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the worker pool did not boot; log {log_path}:\n{log_path.read_text()[-3000:]}"
                )
            time.sleep(0.1)  # polling interval while the pool boots
        _wait_idle(pool.pid, deadline)
        yield pool
    finally:
        if pool.poll() is None:
            os.killpg(pool.pid, signal.SIGTERM)
            try:
                pool.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(pool.pid, signal.SIGKILL)
                pool.wait(timeout=10)


def _wait_idle(pid: int, deadline: float, interval_seconds: float = 0.5) -> None:
    """Wait until the pool's processes use under :data:`IDLE_CPU_FRACTION` of a core over ``interval``."""
    before = total_cpu_seconds([pid, *child_pids(pid)])
    while time.monotonic() < deadline:
        time.sleep(interval_seconds)  # the measurement window, not synchronisation
        now = total_cpu_seconds([pid, *child_pids(pid)])
        if now - before < IDLE_CPU_FRACTION * interval_seconds:
            return
        before = now
    raise RuntimeError("the worker pool did not settle (still busy) before its deadline")


@contextmanager
def _py_spy(pid: int, output: Path | None) -> Iterator[None]:
    """Record the pool and its children with py-spy (collapsed stacks) while the block runs."""
    if output is None:
        yield
        return
    py_spy = Path(sys.executable).with_name("py-spy")
    if not py_spy.exists():
        raise RuntimeError(f"--profile needs py-spy beside {sys.executable}: pip install py-spy")
    command = f"record --pid {pid} --subprocesses --rate 50 --format raw --output {output}"
    recorder = subprocess.Popen(
        [str(py_spy), *command.split()],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(timeout=60)


class Bench:
    """The services one invocation shares, and how to run each contender against them."""

    def __init__(self, args: argparse.Namespace, stack: ExitStack, work_dir: Path) -> None:
        self.args = args
        self.work_dir = work_dir
        self.redis = stack.enter_context(RedisServer.start(data_dir=work_dir / "redis"))
        self.emulator = stack.enter_context(
            BigQueryEmulator.start(PROJECT, data_dir=work_dir / "bigquery", python=args.emulator_python)
        )
        settings = Settings(bigquery_project=PROJECT, bigquery_endpoint=self.emulator.endpoint)
        from workers.sinks.bigquery import make_bigquery_client

        self.client = make_bigquery_client(settings)
        self.sandbox: SandboxProcess | None = None
        self.payments = 0
        self.since = self.until = ""
        self._truth: Any = None

    @contextmanager
    def sandbox_of(self, payments: int) -> Iterator[None]:
        """A Square sandbox with ``payments`` payments for the block (its history read once, lazily)."""
        log_path = self.work_dir / f"sandbox-{payments}.log"
        with start_square_sandbox(
            payments=payments, seed=self.args.seed, token=TOKEN, log_path=log_path
        ) as box:
            now = datetime.fromisoformat(box.admin.info()["now"].replace("Z", "+00:00"))
            self.sandbox, self.payments, self._truth = box, payments, None
            self.since = (now - timedelta(days=HISTORY_DAYS)).strftime("%Y-%m-%dT%H:%M:%SZ")
            self.until = (now + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
            yield
        self.sandbox = None

    def _env(self, dataset: str) -> dict[str, str]:
        assert self.sandbox is not None
        env = {key: value for key, value in os.environ.items() if not key.upper().startswith(ENV_PREFIX)}
        values = {
            "redis_url": self.redis.url,
            "square_base_url": self.sandbox.base_url,
            "square_access_token": TOKEN,
            "bigquery_project": PROJECT,
            "bigquery_dataset": dataset,
            "bigquery_endpoint": self.emulator.endpoint,
            "worker_metrics_port": str(free_port()),
            "log_format": "json",
        }
        env.update({ENV_PREFIX + key.upper(): value for key, value in values.items()})
        env.update(dict(item.split("=", 1) for item in self.args.worker_env))
        return env

    def _service_cpu(self) -> dict[str, float]:
        """CPU seconds used so far by the sandbox, the emulator and Redis."""
        assert self.sandbox is not None
        pids = {"sandbox": self.sandbox.process.pid, "emulator": self.emulator.pid, "redis": self.redis.pid}
        return {name: total_cpu_seconds([pid]) for name, pid in pids.items()}

    def _cpu_since(self, before: dict[str, float]) -> dict[str, float]:
        return {name: round(seconds - before[name], 2) for name, seconds in self._service_cpu().items()}

    def _dataset(self, label: str) -> str:
        return f"bench_{label}_{uuid.uuid4().hex[:8]}"

    def _drop(self, dataset: str) -> None:
        self.client.delete_dataset(dataset, delete_contents=True, not_found_ok=True)
        self.client.delete_dataset(f"{dataset}_staging", delete_contents=True, not_found_ok=True)

    def _check(self, dataset: str) -> tuple[bool, str]:
        """The ground-truth check of ``square_payments`` (untimed)."""
        from sandbox.truth_check import check_warehouse, fetch_truth

        assert self.sandbox is not None
        if self._truth is None:
            self._truth = fetch_truth(self.sandbox.base_url)
        report = check_warehouse(
            self.client, project=PROJECT, dataset=dataset, truth=self._truth, tables=[SQUARE_PAYMENTS.name]
        )
        return bool(report.ok), report.summary()

    def run_system(self, processes: int, *, profile: Path | None = None) -> dict[str, Any]:
        """One backfill through the whole system with a fresh pool of ``processes`` processes."""
        dataset = self._dataset(f"p{processes}")
        env = self._env(dataset)
        redis.Redis.from_url(self.redis.url).flushdb()
        log_path = self.work_dir / f"worker-{dataset}.log"
        threads = self.args.threads
        with _worker_pool(env, processes=processes, threads=threads, log_path=log_path) as pool:
            pool_pids = [pool.pid, *child_pids(pool.pid)]
            cpu_before = total_cpu_seconds(pool_pids), self._service_cpu()
            with _py_spy(pool.pid, profile):
                started = time.perf_counter()
                command = (
                    f"backfill square --stream payments --since {self.since} --until {self.until} --wait"
                )
                done = subprocess.run(
                    [sys.executable, "-m", "producers.cli", *command.split()],
                    cwd=_REPO,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=COMMAND_SECONDS,
                    check=False,
                )
                seconds = time.perf_counter() - started
            children = child_pids(pool.pid)
            workers, forks = children[:processes], children[processes:]
            peaks = [status_kib(pid, "VmHWM") * 1024 for pid in workers]
            cpu = {
                "workers": round(total_cpu_seconds(pool_pids) - cpu_before[0], 2),
                **self._cpu_since(cpu_before[1]),
            }
            other_peaks = [status_kib(pid, "VmHWM") * 1024 for pid in [pool.pid, *forks]]
        if done.returncode not in (0, 1):
            raise RuntimeError(
                f"possync backfill exited {done.returncode}:\n{done.stdout}\n{done.stderr[-3000:]}"
            )
        summary = json.loads(done.stdout)
        ok, report = self._check(dataset) if not self.args.skip_check else (True, "check skipped")
        self._drop(dataset)
        return {
            "contender": f"possync {processes}x{threads}",
            "processes": processes,
            "threads": threads,
            "seconds": seconds,
            "rows": self.payments,
            "messages": summary["messages"],
            "dead": summary["dead"],
            "worker_peak_rss_bytes": peaks,
            "pool_parent_and_fork_peak_rss_bytes": other_peaks,
            "cpu_seconds": cpu,
            "check_ok": ok and summary["dead"] == 0,
            "check": report,
        }

    def _script(self, module: str, python: str, dataset: str) -> dict[str, Any]:
        assert self.sandbox is not None
        command = (
            f"--base-url {self.sandbox.base_url} --token {TOKEN} --since {self.since} --until {self.until} "
            f"--project {PROJECT} --dataset {dataset} --endpoint {self.emulator.endpoint}"
        )
        done = subprocess.run(
            [python, "-m", module, *command.split()],
            cwd=_REPO,
            capture_output=True,
            text=True,
            timeout=COMMAND_SECONDS,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{module} exited {done.returncode}:\n{done.stdout}\n{done.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    def run_floor(self, *, check: bool) -> dict[str, Any]:
        """``bench/floor.py`` once; truth-checked when ``check``."""
        dataset = self._dataset("floor")
        before = self._service_cpu()
        result = self._script("bench.floor", sys.executable, dataset)
        result["cpu_seconds"] = self._cpu_since(before)
        ok, report = self._check(dataset) if check and not self.args.skip_check else (True, "not checked")
        self._drop(dataset)
        return {"contender": "floor", **result, "check_ok": ok, "check": report}

    def run_dlt(self) -> dict[str, Any]:
        """``bench/dlt_pipeline.py`` once; its distinct payment ids are counted."""
        dataset = self._dataset("dlt")
        before = self._service_cpu()
        result = self._script("bench.dlt_pipeline", self.args.dlt_python, dataset)
        result["cpu_seconds"] = self._cpu_since(before)
        query = f"SELECT COUNT(DISTINCT id) AS n FROM `{PROJECT}.{dataset}.payments`"
        distinct = next(iter(self.client.query(query).result())).n
        self._drop(dataset)
        ok = distinct == self.payments
        return {"contender": "dlt", **result, "check_ok": ok, "check": f"{distinct:,} distinct payment ids"}


# Figures.


def _rate(run: dict[str, Any]) -> float:
    return float(run["rows"]) / float(run["seconds"])


def _peak_mb(run: dict[str, Any]) -> float:
    return max(run["worker_peak_rss_bytes"]) / _MB


def _counted(runs: list[dict[str, Any]], contender: str) -> list[dict[str, Any]]:
    return [run for run in runs if run["contender"] == contender and run["check_ok"]]


def _ratio(runs: list[dict[str, Any]], numerator: str, denominator: str) -> float:
    """Median over rounds of ``numerator``'s wall time / ``denominator``'s in the same round."""
    values = []
    for round_index in sorted({run["round"] for run in runs}):
        top = [r["seconds"] for r in _counted(runs, numerator) if r["round"] == round_index]
        bottom = [r["seconds"] for r in _counted(runs, denominator) if r["round"] == round_index]
        if top and bottom:
            values.append(top[0] / bottom[0])
    return median(values)


def _system_run(bench: Bench, processes: int, profile: Path | None) -> Callable[[int], dict[str, Any]]:
    """A system measurement by round index; the first round is profiled when ``profile`` is set."""

    def run(round_index: int) -> dict[str, Any]:
        return bench.run_system(processes, profile=profile if round_index == 0 else None)

    return run


def _speed(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    """The backfill comparison: every contender, ``--runs`` rounds in rotating order."""
    threads = args.threads
    headline = f"possync {args.headline_processes}x{threads}"
    contenders: list[tuple[str, Callable[[int], dict[str, Any]]]] = [
        ("floor", lambda r: bench.run_floor(check=r == 0))
    ]
    for processes in args.processes:
        profile = args.profile if processes == args.headline_processes else None
        contenders.append((f"possync {processes}x{threads}", _system_run(bench, processes, profile)))
    if not args.skip_dlt:
        contenders.append(("dlt", lambda r: bench.run_dlt()))
    runs: list[dict[str, Any]] = []
    with bench.sandbox_of(args.payments):
        for round_index in range(args.runs):
            shift = round_index % len(contenders)
            for name, run in contenders[shift:] + contenders[:shift]:
                print(f"run {round_index + 1}/{args.runs}: {name} ...", file=sys.stderr, flush=True)
                result = run(round_index)
                result["round"] = round_index
                runs.append(result)
    names = [name for name, _ in contenders]
    summary: dict[str, Any] = {}
    rows = []
    for name in names:
        counted = _counted(runs, name)
        figures: dict[str, Any] = {
            "counted_runs": len(counted),
            "seconds": median([run["seconds"] for run in counted]),
            "rows_per_second": median([_rate(run) for run in counted]),
            "over_floor": _ratio(runs, name, "floor"),
            "dlt_over_this": _ratio(runs, "dlt", name),
        }
        if name.startswith("possync"):
            figures["worker_peak_rss_mb"] = median([_peak_mb(run) for run in counted])
        summary[name] = figures
        rows.append(
            [
                name,
                f"{len(counted)}/{args.runs}",
                figures["seconds"],
                figures["rows_per_second"],
                figures["over_floor"],
                figures["dlt_over_this"],
                figures.get("worker_peak_rss_mb", ""),
            ]
        )
    headers = [f"backfill, {args.payments:,} payments", "counted", "median s", "rows/s", "x floor", "dlt x"]
    print_table([*headers, "worker peak MB"], rows)
    peaks = [summary[name]["worker_peak_rss_mb"] for name in names if name.startswith("possync")]
    targets = [
        Target(f"{headline} wall / floor", summary[headline]["over_floor"], FLOOR_RATIO_TARGET, "x", False),
        Target("worker peak RSS, largest over pools", max(peaks), PEAK_RSS_TARGET_MB, "MB", at_least=False),
    ]
    if not args.skip_dlt:
        dlt_ratio = summary[headline]["dlt_over_this"]
        targets.insert(1, Target(f"dlt wall / {headline} wall", dlt_ratio, DLT_RATIO_TARGET, "x", True))
    return {"runs": runs, "summary": summary, "targets": targets}


def _memory(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    """Worker peak RSS at each ``--memory-payments`` size, ``--headline-processes`` processes."""
    runs: list[dict[str, Any]] = []
    for payments in args.memory_payments:
        with bench.sandbox_of(payments):
            for round_index in range(args.runs):
                print(
                    f"run {round_index + 1}/{args.runs}: {payments:,} payments ...",
                    file=sys.stderr,
                    flush=True,
                )
                result = bench.run_system(args.headline_processes)
                result["round"], result["payments"] = round_index, payments
                runs.append(result)
    sizes: dict[str, Any] = {}
    for payments in args.memory_payments:
        counted = [run for run in runs if run["payments"] == payments and run["check_ok"]]
        sizes[str(payments)] = {
            "counted_runs": len(counted),
            "seconds": median([run["seconds"] for run in counted]),
            "rows_per_second": median([_rate(run) for run in counted]),
            "worker_peak_rss_mb": median([_peak_mb(run) for run in counted]),
        }
    smallest, largest = sizes[str(min(args.memory_payments))], sizes[str(max(args.memory_payments))]
    ratio = largest["worker_peak_rss_mb"] / smallest["worker_peak_rss_mb"]
    print_table(
        ["payments", "counted", "median s", "rows/s", "worker peak MB"],
        [
            [
                f"{int(p):,}",
                f"{s['counted_runs']}/{args.runs}",
                s["seconds"],
                s["rows_per_second"],
                s["worker_peak_rss_mb"],
            ]
            for p, s in sizes.items()
        ],
    )
    peak = max(size["worker_peak_rss_mb"] for size in sizes.values())
    targets = [
        Target(
            f"worker peak RSS {max(args.memory_payments):,} / {min(args.memory_payments):,}",
            ratio,
            FLATNESS_TARGET,
            "x",
            at_least=False,
        ),
        Target("worker peak RSS (largest size)", peak, PEAK_RSS_TARGET_MB, "MB", at_least=False),
    ]
    return {"runs": runs, "summary": {"sizes": sizes, "peak_ratio": ratio}, "targets": targets}


def _assignment(text: str) -> str:
    if "=" not in text or text.startswith("="):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return text


def _process_counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m bench.backfill``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.backfill",
        description="Backfill the Square sandbox's payments through the whole system (Redis, worker "
        "pool, BigQuery emulator) beside the floor and dlt; or, with --memory, compare worker memory "
        "at two sizes. Prints a table with pass/miss per target and writes bench/results/"
        "backfill.json (memory.json with --memory).",
    )
    add_common_arguments(parser, runs=3)
    parser.add_argument(
        "--payments", type=int, default=100_184, help="payments in the sandbox (default: 100,184)"
    )
    parser.add_argument(
        "--processes",
        type=_process_counts,
        default=[1, 2, 4],
        help="worker process counts, comma-separated (default: 1,2,4)",
    )
    parser.add_argument(
        "--headline-processes",
        type=int,
        default=2,
        help="process count the targets are judged at (default: 2, possync worker's default)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=4,
        help="threads per worker process (default: 4, possync worker's default)",
    )
    parser.add_argument("--seed", type=int, default=7, help="the sandbox's data seed")
    parser.add_argument("--skip-dlt", action="store_true", help="leave dlt out")
    parser.add_argument(
        "--dlt-python", default=sys.executable, help="interpreter with dlt installed (default: this one)"
    )
    parser.add_argument(
        "--skip-check", action="store_true", help="skip the ground-truth check (figures then do not count)"
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="memory flatness mode: the backfill at each --memory-payments size",
    )
    parser.add_argument(
        "--memory-payments",
        type=_process_counts,
        default=[100_184, 1_000_000],
        help="sizes for --memory (default: 100184,1000000)",
    )
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        type=_assignment,
        metavar="NAME=VALUE",
        help="extra environment variable for the workers and the backfill command (repeatable), e.g. "
        "POSSYNC_BATCH_MAX_ROWS=10000 or dramatiq_queue_prefetch=4",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy (collapsed stacks) of the headline pool's first run, to this file",
    )
    parser.add_argument("--emulator-python", help="Python 3.13 for the BigQuery emulator (default: found)")
    parser.add_argument("--work-dir", type=Path, help="logs and data (default: a temporary directory)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when it ran (whatever the targets say), 1 when a run failed its check."""
    args = build_parser().parse_args(argv)
    if args.headline_processes not in args.processes:
        args.processes = sorted({*args.processes, args.headline_processes})
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="possync-bench-backfill-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    print(f"logs and data in {work_dir}", file=sys.stderr, flush=True)
    with ExitStack() as stack:
        bench = Bench(args, stack, work_dir)
        outcome = _memory(args, bench) if args.memory else _speed(args, bench)
    print_targets(outcome["targets"])
    settings = {
        key: (str(value) if isinstance(value, Path) else value)
        for key, value in vars(args).items()
        if key not in ("results_dir", "work_dir", "emulator_python", "dlt_python")
    }
    name = "memory" if args.memory else "backfill"
    path = write_results(
        name,
        {
            "settings": settings,
            "runs": outcome["runs"],
            "summary": outcome["summary"],
            "targets": [t.as_dict() for t in outcome["targets"]],
        },
        results_dir=args.results_dir,
    )
    print(f"wrote {path}")
    failed = [run for run in outcome["runs"] if not run["check_ok"]]
    for run in failed:
        print(f"not counted: {run['contender']} run {run['round'] + 1}: {run['check']}", file=sys.stderr)
    if failed or args.work_dir:
        print(f"logs kept in {work_dir}", file=sys.stderr)
    else:
        # The emulator's tables of a million-payment run take hundreds of megabytes.
        shutil.rmtree(work_dir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
