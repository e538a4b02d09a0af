"""Fault scenario: source records that fail validation are kept in ``_possync_rejects`` with their
reason, and everything else loads exactly (see ``conftest.py`` for the figures)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from sandbox.truth_check import check_rejects, fetch_truth
from schemas.tables import REJECTS
from tests.e2e.conftest import System
from tests.faults.conftest import FAULT_PAYMENTS, Figures, check_payments, pool_retries
from tests.faults.scenario import assert_exact, since, start_pool
from workers.sinks.bigquery import make_bigquery_client

pytestmark = pytest.mark.faults

#: Payments the sandbox serves malformed: one in each 25th of the history, so they fall in many windows.
MALFORMED = 25


def test_a_record_failing_validation_is_kept_in_rejects_and_the_rest_loaded(
    make_system: Callable[..., System], record_figures: Callable[[Figures], None]
) -> None:
    # Given a sandbox serving 25 of its payments malformed (without amount_money, or with a
    # non-numeric amount), and a worker pool
    system = make_system(payments=FAULT_PAYMENTS, malformed_payments=MALFORMED)
    started = time.monotonic()
    pool = start_pool(system, processes=2, threads=4)

    # When the full history is backfilled
    result = system.cli("backfill", "square", "--since", since(system), "--wait", timeout=1200)

    # Then it succeeds, and the payments table equals the truth, which leaves the malformed ones out
    assert result.returncode == 0, result.stderr + result.stdout
    figures, summary = check_payments(
        system, scenario="a record failing validation", started=started, retries=pool_retries(pool)
    )
    truth = fetch_truth(system.sandbox.base_url)
    client = make_bigquery_client(system.settings)
    project, dataset = system.settings.require_bigquery(), system.settings.bigquery_dataset
    rejects = check_rejects(client, project=project, dataset=dataset, truth=truth)
    figures = replace(figures, rejected=rejects.warehouse_rows)
    record_figures(figures)
    assert_exact(figures, summary)
    assert figures.rows_expected == len(truth.payments) == FAULT_PAYMENTS - MALFORMED

    # And the rejects table holds exactly the malformed payments, once each, each reason naming the
    # field that broke
    assert rejects.ok, rejects.summary()
    assert rejects.warehouse_rows == rejects.expected_rows == MALFORMED
    rows = list(
        client.query(
            f"SELECT source, stream, record_key, reason, raw, message_id FROM"
            f" `{project}.{dataset}.{REJECTS.name}`",
            timeout=120,
        ).result(timeout=120)
    )
    expected = {row["record_key"]: row["field"] for row in truth.rejects}
    assert sorted(row["record_key"] for row in rows) == sorted(expected)
    for row in rows:
        assert (row["source"], row["stream"]) == ("square", "payments")
        assert expected[row["record_key"]] in row["reason"], row["reason"]
        assert json.loads(row["raw"])["id"] == row["record_key"]
        assert row["message_id"]
    assert set(expected.values()) == {"amount_money", "amount_money.amount"}
