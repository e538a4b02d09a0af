"""The ``malformed_payments`` fault: payments picked from the seed are served broken the way a real API
might break a record our model refuses, the truth leaves them out of the payments and lists them as
the rejects ``_possync_rejects`` should hold, and the rejects check holds the warehouse to that."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from sandbox.process import SandboxProcess, SandboxStartError, start_square_sandbox
from sandbox.square_cli import build_parser, config_from_args
from sandbox.square_faults import MALFORMATIONS, FaultSettings, malform, pick_malformed
from sandbox.square_time import HISTORY_MS
from sandbox.truth_check import Truth, check_rejects
from sandbox.truth_compare import compare_rejects
from schemas.square import SquarePayment
from schemas.tables import REJECTS
from tests.sandbox.conftest import SMALL, all_payments, client_for
from tests.sandbox.test_square_openapi import validator
from workers.sinks.bigquery import BigQuerySink

#: Malformed payments in the sandboxes of this module (of the small dataset's 3,000).
MALFORMED = 12


@pytest.fixture
def sink(make_sink: Callable[..., BigQuerySink]) -> BigQuerySink:
    """A sink on a fresh dataset whose tables exist (empty)."""
    built = make_sink()
    built.ensure_tables()
    return built


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def _refusal(payment: dict[str, Any]) -> str | None:
    """What our model says about a served payment: the failing field paths, or None if it loads."""
    try:
        SquarePayment.model_validate(payment)
    except ValidationError as exc:
        return ",".join(".".join(str(part) for part in error["loc"]) for error in exc.errors())
    return None


def _ms(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)


# -- picking ----------------------------------------------------------------------------------------


def test_the_picks_depend_only_on_seed_payments_and_count_and_spread_over_the_history() -> None:
    # When 25 of 10,000 payments are picked, twice with one seed and once with another
    picked = pick_malformed(7, 10_000, 25)
    again = pick_malformed(7, 10_000, 25)
    other = pick_malformed(8, 10_000, 25)

    # Then the same seed picks the same payments, another seed others
    assert picked == again
    assert set(picked) != set(other)
    # And one payment lies in each 400-payment slice of the history, the malformations alternating
    assert len(picked) == 25
    assert [index // 400 for index in picked] == list(range(25))
    assert [picked[index] for index in sorted(picked)] == [MALFORMATIONS[n % 2] for n in range(25)]
    # And the edges: none, and every payment
    assert pick_malformed(7, 10_000, 0) == {}
    assert sorted(pick_malformed(7, 5, 5)) == [0, 1, 2, 3, 4]


def test_each_malformation_is_refused_by_our_model_naming_its_field() -> None:
    # Given a whole payment as Square serves it
    payment = {
        "id": "P1",
        "created_at": "2026-01-01T10:00:00.000Z",
        "updated_at": "2026-01-01T10:00:00.000Z",
        "amount_money": {"amount": 1999, "currency": "USD"},
        "total_money": {"amount": 1999, "currency": "USD"},
        "status": "COMPLETED",
        "location_id": "L1",
    }
    assert _refusal(payment) is None

    # When it is broken in each way the fault knows
    broken = {malformation.kind: malform(payment, malformation) for malformation in MALFORMATIONS}

    # Then each is refused for the field its malformation names, and the original is untouched
    assert "amount_money" not in broken["amount_money_missing"]
    assert broken["amount_not_numeric"]["amount_money"] == {"amount": "19.99", "currency": "USD"}
    assert {kind: _refusal(body) for kind, body in broken.items()} == {
        malformation.kind: malformation.field for malformation in MALFORMATIONS
    }
    assert payment["amount_money"] == {"amount": 1999, "currency": "USD"}


# -- validating the option --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [(-1, "out of range"), (2.5, "whole number"), (True, "must be a number"), ("3", "must be a number")],
)
def test_a_malformed_count_that_is_not_a_whole_number_of_payments_is_refused(
    value: Any, message: str
) -> None:
    # Given the fault settings
    faults = FaultSettings()

    # When / Then a negative, fractional, boolean or text count is refused, and nothing changes
    with pytest.raises(ValueError, match=message):
        faults.update({"malformed_payments": value})
    assert faults.malformed_payments == 0
    faults.update({"malformed_payments": 4.0})
    assert faults.malformed_payments == 4


def test_the_command_line_refuses_more_malformed_payments_than_payments() -> None:
    # When the option is given on the command line, within and beyond the payments
    within = config_from_args(_parse("--payments", "50", "--malformed-payments", "50"))

    # Then a count up to the payments is taken, and one beyond them or below zero refused
    assert within.faults.malformed_payments == 50
    with pytest.raises(ValueError, match="--malformed-payments"):
        config_from_args(_parse("--payments", "50", "--malformed-payments", "51"))
    with pytest.raises(ValueError, match="--malformed-payments"):
        config_from_args(_parse("--payments", "50", "--malformed-payments", "-1"))
    with pytest.raises(SandboxStartError, match="malformed-payments"):
        start_square_sandbox(payments=10, customers=2, items=2, malformed_payments=11)


# -- serving and truth ------------------------------------------------------------------------------


def test_malformed_payments_are_served_broken_by_list_and_get_and_only_they(
    make_square: Callable[..., SandboxProcess],
) -> None:
    # Given a sandbox serving 12 payments malformed
    sandbox = make_square(malformed_payments=MALFORMED)
    rejects = {row["record_key"]: row for row in sandbox.admin.truth("rejects")}
    info = sandbox.admin.info()

    # When every location's whole history is listed, and the rejected payments fetched one by one
    with client_for(sandbox) as client:
        listed = all_payments(client, info["locations"], sort_order="ASC")
        fetched = {key: client.get(f"/v2/payments/{key}").json()["payment"] for key in rejects}

    # Then exactly the truth's rejects are refused by our model, each for the field it names
    refused = {payment["id"]: _refusal(payment) for payment in listed if _refusal(payment) is not None}
    assert refused == {key: row["field"] for key, row in rejects.items()}
    assert {key: _refusal(payment) for key, payment in fetched.items()} == refused
    assert len(listed) == info["counts"]["payments"] == SMALL["payments"]
    assert info["malformed_payments"] == MALFORMED
    # And both malformations are served
    assert {row["malformation"] for row in rejects.values()} == {m.kind for m in MALFORMATIONS}
    # And strict validation against Square's OpenAPI document flags those payments and no other
    check = validator("Payment")
    flagged = {payment["id"] for payment in listed if any(check.iter_errors(payment))}
    assert flagged == set(rejects)


def test_the_truth_leaves_malformed_payments_out_and_lists_them_as_rejects(
    make_square: Callable[..., SandboxProcess],
) -> None:
    # Given a sandbox serving 12 payments malformed
    sandbox = make_square(malformed_payments=MALFORMED)
    anchor_ms = _ms(str(SMALL["anchor"]))

    # When its truth is read
    payments = sandbox.admin.truth("payments")
    rejects = sandbox.admin.truth("rejects")

    # Then the payments truth holds every other payment, and the rejects the malformed ones
    kept = {payment["id"] for payment in payments}
    rejected = [row["record_key"] for row in rejects]
    assert len(kept) + len(rejected) == SMALL["payments"]
    assert not kept & set(rejected)
    assert len(set(rejected)) == MALFORMED
    assert all(
        (row["source"], row["stream"]) == ("square", "payments")
        and row["field"] in {m.field for m in MALFORMATIONS}
        for row in rejects
    )
    # And they spread over the history: one in each twelfth of the two years, oldest first
    slices = [
        (_ms(row["created_at"]) - (anchor_ms - HISTORY_MS)) * MALFORMED // HISTORY_MS for row in rejects
    ]
    assert slices == list(range(MALFORMED))


def test_the_fault_is_turned_on_and_off_at_run_time_and_a_count_beyond_the_payments_refused(
    make_square: Callable[..., SandboxProcess],
) -> None:
    # Given a sandbox without the fault
    sandbox = make_square()
    assert sandbox.admin.truth("rejects") == []
    assert sandbox.admin.info()["malformed_payments"] == 0

    # When five payments are made malformed at run time
    sandbox.admin.set_faults(malformed_payments=5)
    rejects = sandbox.admin.truth("rejects")
    victim = rejects[0]["record_key"]
    with client_for(sandbox) as client:
        broken = client.get(f"/v2/payments/{victim}").json()["payment"]

        # Then they are served broken and left out of the payments truth
        assert len(rejects) == 5
        assert _refusal(broken) == rejects[0]["field"]
        assert len(sandbox.admin.truth("payments")) == SMALL["payments"] - 5

        # And a count beyond the payments, whole or not, is refused and changes no fault
        beyond = SMALL["payments"] + 1
        for count in (beyond, float(beyond)):
            response = httpx.post(
                f"{sandbox.base_url}/_sandbox/faults",
                json={"rate_500": 0.5, "malformed_payments": count},
                timeout=10,
            )
            assert response.status_code == 400
            assert "malformed_payments" in response.json()["error"]
        faults = sandbox.admin.set_faults()
        assert (faults["rate_500"], faults["malformed_payments"]) == (0.0, 5)

        # And when every fault is cleared, the payment is whole again and nothing is a reject
        sandbox.admin.clear_faults()
        assert _refusal(client.get(f"/v2/payments/{victim}").json()["payment"]) is None
    assert sandbox.admin.truth("rejects") == []
    assert len(sandbox.admin.truth("payments")) == SMALL["payments"]


# -- the rejects check ------------------------------------------------------------------------------


def _truth_rejects(*keys_and_fields: tuple[str, str]) -> list[dict[str, Any]]:
    return [
        {"source": "square", "stream": "payments", "record_key": key, "field": field}
        for key, field in keys_and_fields
    ]


def test_the_rejects_comparison_catches_missing_unexpected_duplicated_and_unexplained_rows() -> None:
    # Given three expected rejects
    truth = _truth_rejects(("A", "amount_money"), ("B", "amount_money.amount"), ("C", "amount_money"))

    # When the rows hold A well, B twice for one message with a reason naming another field, no C,
    # an unexpected D, and another source's row
    rows = [
        ("payments", "A", "amount_money: Field required", "m1"),
        ("payments", "B", "status: Field required", "m1"),
        ("payments", "B", "status: Field required", "m1"),
        ("payments", "D", "amount_money: Field required", "m1"),
    ]
    check = compare_rejects("square", [*truth, {**truth[0], "source": "lightspeed"}], rows)

    # Then each difference is reported
    assert not check.ok
    assert (check.expected_rows, check.warehouse_rows) == (3, 4)
    assert check.missing == ["payments/C"]
    assert check.unexpected == ["payments/D"]
    assert check.duplicates == {"payments/B": 2}
    assert check.unnamed == {"payments/B": "status: Field required"}
    assert "DIFFERS" in check.summary()
    assert check.as_dict()["missing"] == {"count": 1, "examples": ["payments/C"]}


def test_a_record_rejected_by_two_messages_is_not_a_duplicate() -> None:
    # Given one expected reject, read by two syncs
    rows = [
        ("payments", "A", "amount_money.amount: Input should be a valid integer", "m1"),
        ("payments", "A", "amount_money.amount: Input should be a valid integer", "m2"),
    ]

    # When compared
    check = compare_rejects("square", _truth_rejects(("A", "amount_money.amount")), rows)

    # Then it passes
    assert check.ok, check.summary()
    assert check.summary().endswith(": ok")


def test_the_rejects_check_reads_the_emulators_table(sink: BigQuerySink) -> None:
    # Given a warehouse holding two square rejects and a lightspeed one
    now = datetime.now(UTC).isoformat()
    rows = [
        {
            "source": source,
            "stream": "payments" if source == "square" else "sales",
            "record_key": key,
            "reason": reason,
            "raw": "{}",
            "message_id": "m1",
            "rejected_at": now,
        }
        for source, key, reason in (
            ("square", "A", "amount_money: Field required"),
            ("square", "B", "amount_money.amount: Input should be a valid integer"),
            ("lightspeed", "S1", "total: Field required"),
        )
    ]
    sink.write(REJECTS, rows, batch_id="rejects-test")
    truth = Truth(
        payments=[],
        items=[],
        customers=[],
        rejects=_truth_rejects(("A", "amount_money"), ("B", "amount_money.amount")),
    )

    # When the square rejects are checked, and then against a truth expecting another one
    check = check_rejects(sink.client, project=sink.project, dataset=sink.dataset, truth=truth)
    more = Truth(payments=[], items=[], customers=[], rejects=[*truth.rejects, *_truth_rejects(("C", "x"))])
    short = check_rejects(sink.client, project=sink.project, dataset=sink.dataset, truth=more)

    # Then the first passes, the lightspeed row ignored, and the second misses C
    assert check.ok, check.summary()
    assert (check.expected_rows, check.warehouse_rows) == (2, 2)
    assert short.missing == ["payments/C"]


def test_a_missing_rejects_table_is_reported(make_sink: Callable[..., BigQuerySink]) -> None:
    # Given a dataset without tables
    sink = make_sink()
    truth = Truth(payments=[], items=[], customers=[], rejects=_truth_rejects(("A", "amount_money")))

    # When the rejects are checked
    check = check_rejects(sink.client, project=sink.project, dataset=sink.dataset, truth=truth)

    # Then the table is reported missing, with every expected key
    assert not check.ok
    assert check.error is not None
    assert check.error.startswith("not found")
    assert check.missing == ["payments/A"]
