"""The ``possync`` command as a user meets it: help that teaches, errors that name the variable."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sandbox.process import free_port
from schemas.settings import ENV_PREFIX


def _possync(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.upper().startswith(ENV_PREFIX)}
    return subprocess.run(
        [sys.executable, "-m", "producers.cli", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_lists_every_command() -> None:
    result = _possync("--help")
    assert result.returncode == 0
    for command in ("worker", "sync", "backfill", "status", "report", "demo"):
        assert command in result.stdout
    backfill = _possync("backfill", "--help")
    assert "{square,lightspeed}" in backfill.stdout
    assert "--since" in backfill.stdout
    assert "--resume" in backfill.stdout
    assert "--wait" in backfill.stdout


def test_a_worker_without_credentials_fails_at_start_naming_the_variable() -> None:
    # Given no Square token in the environment
    result = _possync("worker", "--queues", "square", POSSYNC_BIGQUERY_PROJECT="p-123456")

    # Then it exits 2 at once, naming the variable, before any worker process starts
    assert result.returncode == 2
    assert "POSSYNC_SQUARE_ACCESS_TOKEN" in result.stderr


def test_a_lightspeed_worker_needs_lightspeed_credentials_and_not_square_ones() -> None:
    # Given BigQuery and a Lightspeed account id, but no Lightspeed OAuth client and no Square token
    result = _possync(
        "worker",
        "--queues",
        "lightspeed",
        POSSYNC_BIGQUERY_PROJECT="p-123456",
        POSSYNC_LIGHTSPEED_ACCOUNT_ID="1",
    )

    # Then it exits 2 naming the first missing Lightspeed variable; Square's token is not asked for
    assert result.returncode == 2
    assert "POSSYNC_LIGHTSPEED_CLIENT_ID" in result.stderr
    assert "SQUARE" not in result.stderr


def test_a_stream_of_another_source_is_refused_naming_the_right_ones() -> None:
    result = _possync("sync", "lightspeed", "--stream", "payments")
    assert result.returncode == 2
    assert "lightspeed has no stream 'payments'" in result.stderr
    assert "sales, items" in result.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [("POSSYNC_REPORT_TIMEZONE", "Nowhere/Never"), ("POSSYNC_REDIS_URL", "localhost:6379")],
)
def test_an_invalid_setting_fails_naming_the_variable(variable: str, value: str) -> None:
    result = _possync("status", **{variable: value})
    assert result.returncode == 2
    assert variable in result.stderr


def test_a_backfill_needs_a_start() -> None:
    result = _possync("backfill", "square")
    assert result.returncode == 2
    assert "--since is required" in result.stderr


def test_a_bad_date_is_refused_by_the_parser() -> None:
    result = _possync("backfill", "square", "--since", "last tuesday")
    assert result.returncode == 2
    assert "is not a date" in result.stderr


def test_status_json_has_the_promised_shape(redis_url: str) -> None:
    # Given an empty system
    result = _possync("status", "--json", POSSYNC_REDIS_URL=redis_url)

    # Then the exact keys are there
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    empty = {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}
    assert status["queues"] == {"square": empty, "lightspeed": empty, "notion": empty, "migrations": empty}
    assert status["lightspeed"] == {"buckets": {}, "clients": {}}
    assert status["streams"] == {}
    assert status["backfills"] == {}
    assert status["dead_letters"] == []


def test_status_text_is_readable(redis_url: str) -> None:
    result = _possync("status", POSSYNC_REDIS_URL=redis_url)
    assert result.returncode == 0, result.stderr
    assert "queues:" in result.stdout
    assert "square" in result.stdout


def test_an_unreachable_redis_is_a_clear_error() -> None:
    # Given a Redis URL where nothing listens
    result = _possync("status", POSSYNC_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")

    # Then the command names what it could not reach, without a traceback
    assert result.returncode == 2
    assert "cannot reach Redis (POSSYNC_REDIS_URL)" in result.stderr
    assert "Traceback" not in result.stderr
