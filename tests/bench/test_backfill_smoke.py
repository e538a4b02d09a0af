"""The backfill benchmark runs end to end at a tiny size and writes its JSON; no figure is judged here.

``python -m bench.backfill`` measures speed and memory (docs/benchmarks.md); this only proves that it
still starts the system, the floor and dlt, checks the warehouse, prints its table and writes
``backfill.json`` and ``memory.json`` with the keys the doc describes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import backfill, dlt_pipeline, floor

_REPO = Path(__file__).resolve().parents[2]
#: How long one tiny run may take, seconds (it takes about half a minute).
_DEADLINE_SECONDS = 300
#: Payments in the tiny sandbox: a few pages per location.
_PAYMENTS = 600


def _run(results_dir: Path, *options: str) -> tuple[dict[str, Any], str]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.backfill", "--runs", "1", "--results-dir", str(results_dir), *options],
        cwd=_REPO,
        capture_output=True,
        text=True,
        timeout=_DEADLINE_SECONDS,
        check=False,
    )
    assert done.returncode == 0, f"bench.backfill failed:\n{done.stdout}\n{done.stderr[-4000:]}"
    name = "memory" if "--memory" in options else "backfill"
    assert f"wrote {results_dir / name}.json" in done.stdout
    document: dict[str, Any] = json.loads((results_dir / f"{name}.json").read_text())
    assert document["bench"] == name
    assert {"cpus", "cpu_model", "python", "load_average_1m_5m_15m"} <= set(document["machine"])
    assert document["settings"]["runs"] == 1
    for target in document["targets"]:
        assert isinstance(target["passed"], bool)
        assert ("pass" if target["passed"] else "MISS") in done.stdout
    return document, done.stdout


def test_help_names_the_options() -> None:
    # Given / When: the help of the benchmark and of its two contenders
    texts = [module.build_parser().format_help() for module in (backfill, floor, dlt_pipeline)]

    # Then: the documented options are there
    for option in ("--payments", "--runs", "--processes", "--skip-dlt", "--memory", "--memory-payments"):
        assert option in texts[0]
    for option in ("--results-dir", "--worker-env", "--profile", "--threads"):
        assert option in texts[0]
    for text in texts[1:]:
        assert "--endpoint" in text
        assert "--since" in text


def test_backfill_bench_writes_its_figures(tmp_path: Path) -> None:
    # Given / When: the floor, a one-process pool and dlt at a tiny size
    document, output = _run(
        tmp_path, "--payments", str(_PAYMENTS), "--processes", "1", "--headline-processes", "1"
    )

    # Then: every contender ran once, loaded every payment and passed its check
    runs = {run["contender"]: run for run in document["runs"]}
    assert set(runs) == {"floor", "possync 1x4", "dlt"}
    assert all(run["check_ok"] for run in runs.values()), [run["check"] for run in runs.values()]
    assert runs["floor"]["rows"] == runs["possync 1x4"]["rows"] == runs["dlt"]["rows"] == _PAYMENTS
    assert runs["possync 1x4"]["dead"] == 0
    assert len(runs["possync 1x4"]["worker_peak_rss_bytes"]) == 1
    assert runs["possync 1x4"]["worker_peak_rss_bytes"][0] > 0
    assert {"fetch_seconds", "convert_seconds", "load_seconds", "merge_seconds"} <= set(runs["floor"])
    assert {"extract_seconds", "normalize_seconds", "load_seconds"} <= set(runs["dlt"])
    # And: medians and same-run ratios for each, three targets
    for name in runs:
        figures = document["summary"][name]
        assert figures["counted_runs"] == 1
        assert figures["seconds"] > 0
        assert figures["rows_per_second"] > 0
        assert figures["over_floor"] > 0
        assert figures["dlt_over_this"] > 0
    assert document["summary"]["possync 1x4"]["worker_peak_rss_mb"] > 0
    assert [target["unit"] for target in document["targets"]] == ["x", "x", "MB"]
    assert "backfill, 600 payments" in output


def test_memory_bench_writes_its_figures(tmp_path: Path) -> None:
    # Given / When: the memory mode at two tiny sizes, one worker process
    document, _ = _run(tmp_path, "--memory", "--memory-payments", "300,600", "--headline-processes", "1")

    # Then: one checked run per size, a peak for each and their ratio
    assert [run["payments"] for run in document["runs"]] == [300, 600]
    assert all(run["check_ok"] for run in document["runs"])
    sizes = document["summary"]["sizes"]
    assert set(sizes) == {"300", "600"}
    assert all(size["worker_peak_rss_mb"] > 0 for size in sizes.values())
    assert document["summary"]["peak_ratio"] > 0
    assert [target["unit"] for target in document["targets"]] == ["x", "MB"]
