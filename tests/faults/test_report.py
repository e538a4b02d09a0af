"""The reliability table is generated from the suite's JSON figures, never typed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.faults.report import BEGIN, END, main, render

FIGURES = {
    "scenarios": {
        "worker SIGKILLed 3 times": {
            "scenario": "worker SIGKILLed 3 times",
            "payments": 10000,
            "rows_expected": 10000,
            "rows_in_warehouse": 10000,
            "duplicates": 0,
            "lost": 0,
            "sums_difference": "0",
            "retries": 4,
            "failed_requests": 31,
            "dead_letters": 0,
            "wall_seconds": 61.2,
            "exact": True,
            "measured_at": "2026-11-28T21:00:00+00:00",
        },
        "a record failing validation": {
            "scenario": "a record failing validation",
            "payments": 10000,
            "rows_expected": 9975,
            "rows_in_warehouse": 9975,
            "rejected": 25,
            "duplicates": 0,
            "lost": 0,
            "sums_difference": "0",
            "retries": 0,
            "failed_requests": 0,
            "dead_letters": 0,
            "wall_seconds": 20.5,
            "exact": True,
            "measured_at": "2026-11-29T10:00:00+00:00",
        },
    }
}


def test_the_table_between_the_markers_is_rewritten_and_the_rest_kept(tmp_path: Path) -> None:
    # Given a page with prose around a stale table, and the suite's figures
    page = tmp_path / "reliability.md"
    page.write_text(
        f"# Reliability\n\nProse.\n\n{BEGIN}\n| stale |\n{END}\n\nMore prose.\n", encoding="utf-8"
    )
    figures = tmp_path / "reliability.json"
    figures.write_text(json.dumps(FIGURES), encoding="utf-8")

    # When the report is generated
    assert main([str(figures), str(page)]) == 0

    # Then the table holds the figures and the prose is untouched
    text = page.read_text(encoding="utf-8")
    assert "| stale |" not in text
    assert "| rows in warehouse | records rejected | duplicates |" in text
    assert "| a record failing validation | 10000 | 9975 | 9975 | 25 | 0 | 0 | 0 | 0 | 0 | 0 | 20.5 |" in text
    # And a scenario measured before the rejects column existed shows none rejected
    assert "| worker SIGKILLed 3 times | 10000 | 10000 | 10000 | 0 | 0 | 0 | 0 | 4 | 31 | 0 | 61.2 |" in text
    assert text.startswith("# Reliability\n\nProse.")
    assert text.endswith("More prose.\n")


def test_a_page_without_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="markers"):
        render("# no markers here\n", FIGURES)
