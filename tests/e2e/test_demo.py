"""``possync demo``: the embedded default runs end to end, checks itself, and never logs its secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from schemas.settings import ENV_PREFIX

SENTINEL = "sentinel-token-7f3a9c"


def test_demo_runs_checks_itself_and_logs_no_secret(tmp_path: Path) -> None:
    # Given a caller environment pointing at services that must be ignored
    env = {key: value for key, value in os.environ.items() if not key.upper().startswith(ENV_PREFIX)}
    env["POSSYNC_SQUARE_BASE_URL"] = "http://127.0.0.1:9"  # nothing listens: must never be used
    env["POSSYNC_BIGQUERY_ENDPOINT"] = "http://127.0.0.1:9"
    env["POSSYNC_LIGHTSPEED_BASE_URL"] = "http://127.0.0.1:9"
    env["POSSYNC_NOTION_BASE_URL"] = "http://127.0.0.1:9"

    # When the demo runs a small history of both sources with a sentinel token (Lightspeed's fake
    # client secret and refresh token, Notion's token and Square's webhook key are derived from it)
    work_dir = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "producers.cli",
            "demo",
            "--payments",
            "3000",
            "--customers",
            "200",
            "--sales",
            "1500",
            "--items",
            "200",
            "--processes",
            "1",
            "--threads",
            "3",
            "--sandbox-token",
            SENTINEL,
            "--work-dir",
            str(work_dir),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )

    # Then it exits 0 after checking both sources' tables and reports against their truths, reports its
    # duration and the report, Lightspeed's figures included
    assert result.returncode == 0, result.stdout + result.stderr[-5000:]
    assert "demo duration:" in result.stderr
    assert "Square sandbox's ground truth" in result.stderr
    assert "Lightspeed sandbox's ground truth" in result.stderr
    # And the webhooks the sandboxes sent landed, notion_pages checked against the Notion truth
    assert "sent, acknowledged and landed" in result.stderr
    assert "notion_pages against the Notion sandbox's ground truth" in result.stderr
    assert "notion_pages: 0 expected" not in result.stderr
    # And the worker pool's, both schedulers' and the receiver's /metrics showed queue depth, lag and
    # rows synced after the incremental round
    shown = [line for line in result.stderr.splitlines() if "/metrics: queue depth" in line]
    assert len(shown) == 4, result.stderr[-3000:]
    assert all("max lag" in line and "square_payments" in line for line in shown)
    report = json.loads(result.stdout)
    for key in ("todayRevenue", "weekRevenue", "monthRevenue", "yearRevenue", "avgOrderValue"):
        assert key in report
        assert key in report["lightspeed"]
    assert report["totalTransactions"] > 0
    assert report["lightspeed"]["totalTransactions"] > 0
    # And no log line anywhere holds the token
    logs = [result.stdout, result.stderr] + [p.read_text(errors="replace") for p in work_dir.glob("*.log")]
    assert any("message_done" in log for log in logs), "the worker log holds no message summary"
    assert not [log for log in logs if SENTINEL in log]
