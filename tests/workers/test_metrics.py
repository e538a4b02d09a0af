"""The metric catalogue: names by Prometheus practice, and the cost estimate of BigQuery jobs."""

from __future__ import annotations

import re

from prometheus_client import REGISTRY

from workers.metrics import BYTES_PER_TIB, STATE_METRICS, exported_series, observe_bigquery_job

_NAME = re.compile(r"^(possync|dramatiq)_[a-z0-9_]+$")


def test_every_series_name_is_prefixed_snake_case_and_counters_end_in_total() -> None:
    series = exported_series()
    assert series, "the catalogue is empty"
    for name in series:
        assert _NAME.match(name), name
    possync = {name for name in series if name.startswith("possync_")}
    # Base units only: durations in seconds, sizes in bytes, money in dollars.
    for name in possync:
        assert not re.search(r"_(milliseconds|ms|minutes|hours|kilobytes|cents)(_|$)", name), name
    assert "possync_rows_synced_total" in series
    assert "possync_rows_rejected_total" in series
    assert "possync_bigquery_job_duration_seconds_bucket" in series
    assert frozenset().union(*(info.series() for info in STATE_METRICS)) <= series


def test_a_jobs_bytes_billed_become_dollars_at_the_configured_price() -> None:
    # Given the counters of a query job on some table
    labels = {"kind": "query", "table": "metrics_test"}
    cost = REGISTRY.get_sample_value("possync_bigquery_cost_dollars_total", labels) or 0.0
    billed = REGISTRY.get_sample_value("possync_bigquery_bytes_billed_total", labels) or 0.0

    # When a job billed half a TiB at $6.25 per TiB, and a re-attached one reports nothing
    observe_bigquery_job(
        "query", "metrics_test", seconds=2.0, rows=10, bytes_billed=BYTES_PER_TIB // 2, usd_per_tib=6.25
    )
    observe_bigquery_job("query", "metrics_test", seconds=0.1, rows=None, bytes_billed=None, usd_per_tib=6.25)

    # Then the estimate is $3.125 and the bytes are counted once; both durations are observed
    assert REGISTRY.get_sample_value("possync_bigquery_cost_dollars_total", labels) == cost + 3.125
    assert (
        REGISTRY.get_sample_value("possync_bigquery_bytes_billed_total", labels)
        == billed + BYTES_PER_TIB // 2
    )
    durations = REGISTRY.get_sample_value("possync_bigquery_job_duration_seconds_count", labels)
    assert durations == 2
