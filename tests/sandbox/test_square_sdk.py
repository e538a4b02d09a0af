"""Square's official Python SDK (``squareup``) reads the sandbox: its pagers end and its models parse."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from square import Square
from square.core.api_error import ApiError

from sandbox.process import SandboxProcess
from tests.sandbox.conftest import EPOCH_BEGIN

# The SDK's own models use a pydantic v1 attribute; its warnings are not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def sdk(sandbox: SandboxProcess) -> Square:
    """The SDK pointed at the sandbox (it sends its own Square-Version, 2026-08-19)."""
    return Square(token=sandbox.token, base_url=sandbox.base_url, timeout=30)


def test_sdk_pages_payments_of_every_location_to_the_truth(square: SandboxProcess) -> None:
    # Given the truth, by location
    truth = square.admin.truth("payments")
    expected = Counter(row["location_id"] for row in truth)
    client = sdk(square)

    # When the SDK's pager reads every location's full history
    locations = client.locations.list().locations or []
    seen: dict[str, Any] = {}
    for location in locations:
        assert location.id is not None
        for payment in client.payments.list(location_id=location.id, begin_time=EPOCH_BEGIN, limit=100):
            assert payment.id is not None
            assert payment.id not in seen
            seen[payment.id] = payment

    # Then it read exactly the truth, and every payment parsed into the SDK's model with its money
    assert [location.id for location in locations] == square.admin.info()["locations"]
    assert Counter(p.location_id for p in seen.values()) == expected
    by_id = {row["id"]: row for row in truth}
    for payment_id, payment in seen.items():
        row = by_id[payment_id]
        assert payment.amount_money is not None
        assert payment.total_money is not None
        assert (payment.amount_money.amount, payment.total_money.amount) == (
            row["amount_cents"],
            row["total_cents"],
        )
        assert payment.status == row["status"]
        if payment.source_type == "CARD":
            assert payment.card_details is not None
            assert payment.card_details.card is not None
            assert payment.card_details.card.card_brand == row["card_brand"]
            assert payment.card_details.card.last4 is not None
    # And GetPayment parses too
    some = next(iter(seen))
    got = client.payments.get(payment_id=some).payment
    assert got is not None
    assert got.id == some


@pytest.mark.parametrize("mode", ["empty", "empty_page"])
def test_sdk_pager_ends_on_every_final_page_mode(
    make_square: Callable[..., SandboxProcess], mode: str
) -> None:
    # Given a sandbox ending lists with an empty cursor or one more empty page
    sandbox = make_square(final_page_mode=mode, payments=600)
    main = sandbox.admin.info()["main_location_id"]

    # When the SDK pages the main location's full history
    listed = [p.id for p in sdk(sandbox).payments.list(location_id=main, begin_time=EPOCH_BEGIN)]

    # Then it ends with exactly the truth's payments of that location
    truth = {row["id"] for row in sandbox.admin.truth("payments") if row["location_id"] == main}
    assert len(listed) == len(set(listed))
    assert set(listed) == truth


def test_sdk_reads_the_catalog_to_the_truth(square: SandboxProcess) -> None:
    # Given the items truth (one row per variation)
    truth = {row["variation_id"]: row for row in square.admin.truth("items")}
    client = sdk(square)

    # When the SDK lists the catalog and searches it with deleted objects
    listed = list(client.catalog.list(types="ITEM,CATEGORY"))
    searched: list[Any] = []
    cursor: str | None = None
    while True:
        response = client.catalog.search(
            object_types=["ITEM"],
            include_deleted_objects=True,
            limit=50,
            **({"cursor": cursor} if cursor else {}),
        )
        searched += response.objects or []
        cursor = response.cursor
        if not cursor:
            break

    # Then the search holds every variation of the truth, with its price and deletion
    variations = {}
    for item in searched:
        assert item.type == "ITEM"
        assert item.item_data is not None
        for variation in item.item_data.variations or []:
            assert variation.item_variation_data is not None
            assert variation.id is not None
            price = variation.item_variation_data.price_money
            variations[variation.id] = (price.amount if price else None, variation.is_deleted)
    assert variations == {key: (row["price_cents"], row["is_deleted"]) for key, row in truth.items()}
    # And the listing has the live items and the categories only
    live_items = {row["item_id"] for row in truth.values() if not row["is_deleted"]}
    assert {obj.id for obj in listed if obj.type == "ITEM"} == live_items
    assert any(obj.type == "CATEGORY" for obj in listed)


def test_sdk_reads_customers_to_the_truth(square: SandboxProcess) -> None:
    # Given the customers truth
    truth = {row["id"]: row for row in square.admin.truth("customers")}
    client = sdk(square)

    # When the SDK lists every customer, and searches them all by a wide created_at range
    listed = list(client.customers.list(limit=40, sort_field="CREATED_AT"))
    searched: list[Any] = []
    cursor: str | None = None
    while True:
        response = client.customers.search(
            limit=30,
            query={
                "filter": {"created_at": {"start_at": EPOCH_BEGIN}},
                "sort": {"field": "CREATED_AT", "order": "ASC"},
            },
            **({"cursor": cursor} if cursor else {}),
        )
        searched += response.customers or []
        cursor = response.cursor
        if not cursor:
            break

    # Then both are exactly the truth, with versions and creation sources parsed
    assert {c.id for c in listed} == {c.id for c in searched} == set(truth)
    assert len(listed) == len(searched) == len(truth)
    for customer in listed:
        assert customer.id is not None
        assert customer.version == truth[customer.id]["version"]
        assert customer.creation_source == truth[customer.id]["creation_source"]


def test_sdk_gets_changed_records_and_is_refused_deleted_ones(
    make_square: Callable[..., SandboxProcess],
) -> None:
    # Given a sandbox where a payment was captured, a customer updated and another deleted
    sandbox = make_square()
    approved = next(p["id"] for p in sandbox.admin.truth("payments") if p["status"] == "APPROVED")
    captured = sandbox.admin.update_payment(approved)["payment"]
    first, second = (row["id"] for row in sandbox.admin.truth("customers")[:2])
    updated = sandbox.admin.update_customer(first)["customer"]
    sandbox.admin.delete_customer(second)
    client = sdk(sandbox)

    # When the SDK gets each by id
    payment = client.payments.get(payment_id=approved).payment
    customer = client.customers.get(customer_id=first).customer
    with pytest.raises(ApiError) as refused:
        client.customers.get(customer_id=second)

    # Then the changes parse into its models, and the deleted customer is a 404 NOT_FOUND
    assert payment is not None
    assert (payment.status, payment.updated_at) == ("COMPLETED", captured["updated_at"])
    assert customer is not None
    assert (customer.version, customer.reference_id) == (updated["version"], updated["reference_id"])
    assert refused.value.status_code == 404
    assert [error.code for error in refused.value.errors] == ["NOT_FOUND"]
