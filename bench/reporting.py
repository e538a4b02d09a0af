"""Benchmark figures and how they are reported: medians, targets with pass/miss, a printed table, JSON.

A benchmark runs its measurement several times in one invocation, alternating what it compares,
and reports medians and same-run ratios (machines are shared and noisy). Typical use::

    with RedisServer.start() as server:
        runs = [measure(server.url) for _ in range(args.runs)]
    print_table(["what", "events/s"], rows)
    targets = [Target("accepted events/s", median(rates), 1500, "events/s", at_least=True)]
    print_targets(targets)
    write_results("webhooks", {"runs": runs, "targets": [t.as_dict() for t in targets]})

Results go to ``bench/results/<name>.json`` (or ``--results-dir``), with the machine described.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "RESULTS_DIR",
    "Target",
    "add_common_arguments",
    "machine",
    "median",
    "percentile",
    "print_table",
    "print_targets",
    "write_results",
]

#: Where results are written unless ``--results-dir`` says otherwise.
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (NaN when empty, so a missing figure shows instead of failing)."""
    return float(statistics.median(values)) if values else math.nan


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile: the smallest value with at least ``fraction`` of them at or below.

    Args:
        values: samples, in any order.
        fraction: between 0 and 1 (0.99 for p99).

    Returns:
        The percentile, or NaN when there are no samples.
    """
    if not 0 <= fraction <= 1:
        raise ValueError("fraction must be between 0 and 1")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return float(ordered[rank - 1])


@dataclass(frozen=True)
class Target:
    """A figure and the target it must meet.

    Attributes:
        name: what is measured, e.g. ``"verified events/s at full speed"``.
        measured: the figure (usually a median over runs).
        limit: the target.
        unit: the figure's unit, e.g. ``"events/s"`` or ``"ms"``.
        at_least: True when the figure must be at least ``limit``, False when at most.
    """

    name: str
    measured: float
    limit: float
    unit: str
    at_least: bool

    @property
    def passed(self) -> bool:
        if math.isnan(self.measured):
            return False
        return self.measured >= self.limit if self.at_least else self.measured <= self.limit

    def line(self) -> str:
        """One printed line: ``pass``/``MISS``, the figure and the target."""
        relation = ">=" if self.at_least else "<="
        verdict = "pass" if self.passed else "MISS"
        figure = f"{_number(self.measured)} {self.unit}"
        return f"{verdict}  {self.name}: {figure} (target {relation} {_number(self.limit)})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "measured": _finite(self.measured),
            "limit": self.limit,
            "unit": self.unit,
            "at_least": self.at_least,
            "passed": self.passed,
        }


def _number(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def _finite(value: Any) -> Any:
    """JSON has no NaN: write null instead."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def print_targets(targets: Sequence[Target]) -> None:
    """Print one pass/miss line per target."""
    for target in targets:
        print(target.line())


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print an aligned text table; floats get a sensible number of decimals."""
    cells = [[str(h) for h in headers]]
    for row in rows:
        cells.append([_number(v) if isinstance(v, float) else str(v) for v in row])
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        # The first column (labels) left-aligned, figures right-aligned.
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if index == 0:
            print("  ".join("-" * w for w in widths))


def machine() -> dict[str, Any]:
    """The machine the figures come from: CPU model and count, memory, Python, load average now."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_gib: float | None = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024**2, 1)
                break
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return {
        "cpu_model": model or platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_1m_5m_15m": [round(value, 2) for value in load],
    }


def write_results(name: str, data: dict[str, Any], *, results_dir: Path | None = None) -> Path:
    """Write ``<results_dir>/<name>.json``: ``data`` plus ``bench``, ``written_at`` and ``machine``.

    Args:
        name: the benchmark's name, e.g. ``"webhooks"``.
        data: JSON-serialisable results; NaN floats are written as null.
        results_dir: where to write (created if missing); :data:`RESULTS_DIR` when ``None``.

    Returns:
        The path written.
    """
    directory = results_dir or RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    document = {
        "bench": name,
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **data,
    }
    path = directory / f"{name}.json"
    path.write_text(json.dumps(_clean(document), indent=2) + "\n")
    return path


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return _finite(value)


def add_common_arguments(parser: argparse.ArgumentParser, *, runs: int = 3) -> None:
    """Add ``--runs`` (default ``runs``) and ``--results-dir`` to a benchmark's parser."""
    parser.add_argument(
        "--runs", type=int, default=runs, help=f"measurements to take the median of (default: {runs})"
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        help="where to write <bench>.json (default: bench/results/)",
    )
