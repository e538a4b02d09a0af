"""The local BigQuery emulator process: installed once, started, stopped, restarted with its data."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from google.cloud import bigquery

from sandbox.emulator import BigQueryEmulator, EmulatorError, ensure_emulator_installed, find_python313
from schemas.settings import Settings
from workers.sinks.bigquery import make_bigquery_client

PROJECT = "possync-emulator"


def _client(emulator: BigQueryEmulator) -> bigquery.Client:
    settings = Settings(
        bigquery_project=emulator.project, bigquery_endpoint=emulator.endpoint, bigquery_timeout_seconds=30
    )
    return make_bigquery_client(settings)


def test_a_misconfigured_python_fails_saying_what_to_do() -> None:
    # Given POSSYNC_EMULATOR_PYTHON pointing at an interpreter that is not 3.13 (or not there)
    # When the emulator's interpreter is looked up
    with pytest.raises(EmulatorError) as caught:
        find_python313("/nonexistent/python3.13")

    # Then the error says how to get one, or to use another endpoint
    assert "POSSYNC_EMULATOR_PYTHON" in str(caught.value)
    assert "POSSYNC_BIGQUERY_ENDPOINT" in str(caught.value)


def test_the_installed_environment_is_reused(bigquery_emulator: BigQueryEmulator) -> None:
    # Given the session's emulator, which installed (or found) the cached environment
    # When the install is asked for again
    cache = ensure_emulator_installed(os.environ.get("POSSYNC_EMULATOR_PYTHON") or None)

    # Then it is the same complete cache, with the extensions in its own DuckDB directory
    assert cache == bigquery_emulator.cache_dir
    assert (cache / "complete.json").is_file()
    extensions = {
        path.name for path in (cache / "home" / ".duckdb" / "extensions").rglob("*.duckdb_extension")
    }
    assert extensions == {"icu.duckdb_extension", "ducklake.duckdb_extension", "spatial.duckdb_extension"}


def test_restart_keeps_data_and_port(tmp_path: Path) -> None:
    # Given an emulator of its own with a table holding a row
    with BigQueryEmulator.start(PROJECT, data_dir=tmp_path / "data") as emulator:
        client = _client(emulator)
        client.create_dataset("kept")
        client.query("CREATE TABLE `kept.t` AS SELECT 1 AS n, 'x' AS s").result()
        port, first_pid = emulator.port, emulator.pid

        # When it is restarted
        emulator.restart()

        # Then it serves the same data on the same endpoint from a new process
        assert emulator.port == port
        assert emulator.pid != first_pid
        rows = [dict(row.items()) for row in _client(emulator).query("SELECT n, s FROM `kept.t`").result()]
        assert rows == [{"n": 1, "s": "x"}]
        assert emulator.log_path.is_file()


def test_stop_and_kill_close_the_endpoint(tmp_path: Path) -> None:
    # Given a running emulator
    emulator = BigQueryEmulator.start(PROJECT, data_dir=tmp_path / "data")
    url = f"{emulator.endpoint}/bigquery/v2/projects/{PROJECT}/datasets"
    assert httpx.get(url, timeout=5).status_code == 200

    # When it is stopped
    emulator.stop()

    # Then nothing answers any more
    with pytest.raises(httpx.TransportError):
        httpx.get(url, timeout=2)

    # When it is started again and SIGKILLed
    emulator.restart()
    assert httpx.get(url, timeout=5).status_code == 200
    emulator.kill()

    # Then nothing answers either, and close is still safe
    with pytest.raises(httpx.TransportError):
        httpx.get(url, timeout=2)
    emulator.close()
    with pytest.raises(EmulatorError):
        _ = emulator.pid
