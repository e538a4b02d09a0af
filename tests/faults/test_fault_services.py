"""Fault scenarios that take a dependency away mid-backfill: the BigQuery emulator stopped for 20 s
and started again; the Square token revoked, then restored and its dead letters replayed. Each ends
with the ground-truth check and records its figures (see ``conftest.py``)."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from sandbox.emulator import BigQueryEmulator
from tests.e2e.conftest import System
from tests.faults.conftest import FAULT_PAYMENTS, Figures, check_payments, pool_counter, pool_retries
from tests.faults.scenario import answers, assert_exact, backfill_done, backfill_under_way, plan, quiet
from tests.polling import wait_until

pytestmark = pytest.mark.faults

#: How long the emulator stays down (the issue's figure), seconds.
EMULATOR_OUTAGE_SECONDS = 20.0


def test_the_bigquery_emulator_stopped_for_twenty_seconds(
    make_system: Callable[..., System],
    bigquery_emulator: BigQueryEmulator,
    record_figures: Callable[[Figures], None],
) -> None:
    # Given a backfill in small windows behind a slow sandbox
    system = make_system(payments=FAULT_PAYMENTS, latency_ms=30)
    started = time.monotonic()
    pool = backfill_under_way(system)
    failures_before = pool_counter(pool, "dramatiq_message_errors_total")

    # When the emulator is stopped for 20 s, the workers still fetching and trying to load
    bigquery_emulator.stop()
    down_at = time.monotonic()
    wait_until(
        lambda: (
            time.monotonic() - down_at >= EMULATOR_OUTAGE_SECONDS
            and pool_counter(pool, "dramatiq_message_errors_total") > failures_before
        ),
        timeout_seconds=EMULATOR_OUTAGE_SECONDS + 120,
        message="no message failed while the emulator was down",
    )
    outage_seconds = time.monotonic() - down_at
    assert plan(system)["missing"] > 0, "the backfill finished before the outage ended: nothing was tested"

    # And started again with the same data
    bigquery_emulator.restart()

    # Then the backfill completes on its own, nothing dead-lettered, and the warehouse equals the truth
    wait_until(lambda: backfill_done(system), timeout_seconds=900, message="the backfill never completed")
    figures, summary = check_payments(
        system, scenario="BigQuery emulator stopped 20 s", started=started, retries=pool_retries(pool)
    )
    record_figures(figures)
    assert_exact(figures, summary)
    assert outage_seconds >= EMULATOR_OUTAGE_SECONDS


def test_a_square_token_revoked_mid_run_then_restored_and_the_dead_letters_replayed(
    make_system: Callable[..., System], record_figures: Callable[[Figures], None]
) -> None:
    # Given a backfill in small windows behind a slow sandbox
    system = make_system(payments=FAULT_PAYMENTS, latency_ms=30)
    started = time.monotonic()
    pool = backfill_under_way(system)

    # When the token is revoked mid-run
    system.sandbox.admin.set_faults(token_revoked=True)

    # Then every window still to run is dead-lettered, refused once each: no retries, no hammering
    wait_until(lambda: quiet(system), timeout_seconds=600, message="the square queue never emptied")
    counts = plan(system)
    letters: list[dict[str, Any]] = json.loads(system.cli("dlq", "list", "--json", check=True).stdout)
    assert 0 < len(letters) == counts["failed"] == counts["missing"] < counts["windows"], (letters, counts)
    assert {letter["error_type"] for letter in letters} == {"SourceAuthError"}
    # (A window may have been retried for another reason before the revocation, e.g. a slow load
    # under CI's load: what matters is that none was retried after its 401, counted next.)
    assert all("401" in letter["error"] for letter in letters), letters
    refused = answers(system, "401")
    assert refused == len(letters), f"{refused} requests refused with 401 for {len(letters)} dead letters"

    # And the alert metrics show it: auth failures counted, dead letters present
    assert pool_counter(pool, "possync_source_auth_failures_total") == refused
    assert pool_counter(pool, "possync_dead_letters", queue="square") == len(letters)

    # When the token is restored and every dead letter is replayed, followed to its end
    system.sandbox.admin.set_faults(token_revoked=False)
    replay = system.cli("dlq", "replay", "--all", "--wait", "--timeout", "600", timeout=700)

    # Then no dead letter is left, no more 401s came, and the warehouse equals the truth
    assert replay.returncode == 0, replay.stderr + replay.stdout
    summary_json = json.loads(replay.stdout)
    outcome = (summary_json["messages"], summary_json["done"], summary_json["dead"])
    assert outcome == (len(letters), len(letters), 0)
    assert answers(system, "401") == refused
    assert backfill_done(system), system.status()["backfills"]
    figures, summary = check_payments(
        system,
        scenario="Square token revoked, restored, dead letters replayed",
        started=started,
        retries=pool_retries(pool),
    )
    assert figures.dead_letters == 0, "dead letters were left after the replay"
    # The figure reported is how many messages the revoked token dead-lettered (all replayed).
    figures = dataclasses.replace(figures, dead_letters=len(letters))
    record_figures(figures)
    assert_exact(dataclasses.replace(figures, dead_letters=0), summary)
