"""The benchmarks run end to end at a tiny size and write their JSON; no figure is judged here.

Speed targets are measured by ``python -m bench.<name>`` (docs/benchmarks.md), never in tests: these
only prove each command still starts its processes, measures, prints and writes what the doc says.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import queue_overhead, webhooks

_REPO = Path(__file__).resolve().parents[2]
#: How long one tiny benchmark may take, seconds (it takes a few).
_DEADLINE_SECONDS = 120


def _run(module: str, results_dir: Path, *options: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", module, "--runs", "1", "--results-dir", str(results_dir), *options],
        cwd=_REPO,
        capture_output=True,
        text=True,
        timeout=_DEADLINE_SECONDS,
        check=False,
    )
    assert done.returncode == 0, f"{module} failed:\n{done.stdout}\n{done.stderr}"
    name = module.removeprefix("bench.")
    assert f"wrote {results_dir / name}.json" in done.stdout
    document: dict[str, Any] = json.loads((results_dir / f"{name}.json").read_text())
    assert document["bench"] == name
    assert {"cpus", "cpu_model", "python", "load_average_1m_5m_15m"} <= set(document["machine"])
    assert document["settings"]["runs"] == 1
    assert len(document["runs"]) == 1
    return document


def test_help_names_the_options() -> None:
    # Given / When: each benchmark's help text
    webhooks_help = webhooks.build_parser().format_help()
    queue_help = queue_overhead.build_parser().format_help()

    # Then: the documented options are there, the internal ones are not
    for option in ("--runs", "--duration-seconds", "--rate", "--connections", "--results-dir"):
        assert option in webhooks_help
    for option in ("--runs", "--messages", "--threads", "--results-dir"):
        assert option in queue_help
    assert "--role" not in webhooks_help
    assert "--role" not in queue_help


def test_webhooks_bench_writes_its_figures(tmp_path: Path) -> None:
    # Given / When: the webhook benchmark at a tiny size
    document = _run(
        "bench.webhooks",
        tmp_path,
        *("--duration-seconds", "0.5", "--warmup-seconds", "0.2", "--rate", "40", "--connections", "4"),
    )

    # Then: both servers, both phases, medians and both targets are written
    for server in ("receiver", "ceiling"):
        for mode in ("full", "rate"):
            figures = document["summary"][server][mode]
            assert {"ok_per_second", "p50_ms", "p99_ms", "server_cpu_ms_per_request"} <= set(figures)
            assert figures["ok_per_second"] > 0
    assert document["summary"]["receiver_to_ceiling_full_speed"] > 0
    assert document["summary"]["receiver_one_core_events_per_second"] > 0
    assert "load_average_1m" in document["runs"][0]
    assert [target["unit"] for target in document["targets"]] == ["events/s", "ms"]
    assert all(isinstance(target["passed"], bool) for target in document["targets"])
    # And: every event the receiver answered 200 is a message on the notion queue
    assert document["enqueued_matches_accepted"] is True


def test_queue_overhead_bench_writes_its_figures(tmp_path: Path) -> None:
    # Given / When: the queue benchmark at a tiny size
    document = _run("bench.queue_overhead", tmp_path, "--messages", "30", "--threads", "2")

    # Then: both variants' rates and their ratios are written, and nothing was dead-lettered
    summary = document["summary"]
    for variant in ("possync", "noop"):
        assert summary[variant]["enqueue_per_second"] > 0
        assert summary[variant]["drain_per_second"] > 0
        assert {"enqueue_cpu_ms_per_message", "drain_cpu_ms_per_message"} <= set(summary[variant])
    assert summary["enqueue_per_second_ratio"] > 0
    assert summary["drain_per_second_ratio"] > 0
    assert document["runs"][0]["possync"]["dead_lettered"] == 0


def test_sample_payloads_cover_every_route() -> None:
    # Given / When: one sample payload per route
    samples = queue_overhead.sample_payloads(9)

    # Then: every route of schemas/messages.py appears once, with a payload of its type
    from schemas.messages import ROUTES

    assert sorted(route.actor for route, _ in samples) == sorted(ROUTES)
    assert all(isinstance(payload, route.payload) for route, payload in samples)
