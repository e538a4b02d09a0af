"""The freshness benchmark runs end to end at a tiny size and writes its JSON; no figure is judged.

Freshness targets are measured by ``python -m bench.freshness`` (docs/benchmarks.md), never in tests:
this only proves the command still starts the system, measures both paths, prints and writes what
the doc says.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import freshness

_REPO = Path(__file__).resolve().parents[2]
#: How long the tiny run may take, seconds (it takes well under a minute).
_DEADLINE_SECONDS = 180


def test_help_names_the_options() -> None:
    # Given / When: the help text
    text = freshness.build_parser().format_help()

    # Then: the documented options are there
    for option in (
        "--runs",
        "--results-dir",
        "--paths",
        "--interval-seconds",
        "--duration-seconds",
        "--payment-every-seconds",
        "--poll-ms",
        "--worker-env",
    ):
        assert option in text


@pytest.mark.parametrize(
    ("interval_seconds", "cron"),
    [
        (1, "* * * * * */1"),
        (2, "* * * * * */2"),
        (30, "* * * * * */30"),
        (60, "*/1 * * * *"),
        (900, "*/15 * * * *"),
    ],
)
def test_each_interval_is_a_cron_firing_evenly(interval_seconds: int, cron: str) -> None:
    assert freshness.cron_for(interval_seconds) == cron


@pytest.mark.parametrize("interval_seconds", [0, 7, 45, 90, 7200])
def test_an_interval_cron_cannot_fire_evenly_is_refused(interval_seconds: int) -> None:
    with pytest.raises(ValueError, match="divide"):
        freshness.cron_for(interval_seconds)


def test_a_tiny_run_writes_both_paths(tmp_path: Path) -> None:
    # Given / When: one run, three payments per path, a scheduler ticking every 2 s
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench.freshness", "--runs", "1", "--results-dir", str(tmp_path)),
            *("--interval-seconds", "2", "--duration-seconds", "3", "--payment-every-seconds", "1"),
            *("--history-payments", "50"),
        ],
        cwd=_REPO,
        capture_output=True,
        text=True,
        timeout=_DEADLINE_SECONDS,
        check=False,
    )

    # Then: it printed the table and both targets, and wrote the JSON
    assert done.returncode == 0, f"bench.freshness failed:\n{done.stdout}\n{done.stderr}"
    assert f"wrote {tmp_path / 'freshness.json'}" in done.stdout
    assert "freshness p50, scheduled path" in done.stdout
    assert "freshness p50, webhook path" in done.stdout
    document: dict[str, Any] = json.loads((tmp_path / "freshness.json").read_text())
    assert document["bench"] == "freshness"
    assert {"cpus", "cpu_model", "python", "load_average_1m_5m_15m"} <= set(document["machine"])
    assert document["settings"]["runs"] == 1
    assert document["settings"]["cron"] == "* * * * * */2"
    (run,) = document["runs"]
    # And: every payment of each path reached the warehouse, with its freshness recorded
    for path in ("scheduled", "webhook"):
        figures = run[path]
        assert (figures["payments"], figures["missing"]) == (3, 0)
        assert len(figures["freshness_seconds"]) == 3
        assert all(value > 0 for value in figures["freshness_seconds"])
        assert {
            "p50_seconds",
            "p95_seconds",
            "max_seconds",
            "queries",
            "emulator_cpu_seconds",
            "load_average_1m",
        } <= set(figures)
        summary = document["summary"][path]
        assert summary["payments"] == 3
        assert summary["p50_seconds"] <= summary["p95_seconds"] <= summary["max_seconds"]
    assert document["summary"]["scheduled_to_webhook_p50"] > 0
    assert set(document["polling_cost"]) == {
        "emulator_cpu_ms_per_read",
        "wall_ms_per_read",
        "emulator_cpu_ms_per_query",
        "wall_ms_per_query",
    }
    targets = document["targets"]
    assert [target["name"] for target in targets] == [
        "freshness p50, scheduled path",
        "freshness p50, webhook path",
    ]
    assert [target["limit"] for target in targets] == [4.0, 2.0]
    assert all(isinstance(target["passed"], bool) for target in targets)
