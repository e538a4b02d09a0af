"""Square records become warehouse rows exactly: money through Decimal, never float."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.square import SquareCatalogObject, SquarePayment, item_rows, major_units, payment_row

SYNCED = datetime(2026, 1, 1, tzinfo=UTC)


def _payment(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "P1",
        "created_at": "2025-03-01T00:00:00.000Z",
        "updated_at": "2025-03-02T10:00:00.123Z",
        "status": "COMPLETED",
        "amount_money": {"amount": 29, "currency": "USD"},
        "tip_money": {"amount": 100, "currency": "USD"},
        "total_money": {"amount": 129, "currency": "USD"},
        "location_id": "L1",
        "source_type": "CARD",
        "card_details": {"card": {"card_brand": "VISA", "last_4": "1111", "fingerprint": "fp"}},
        "buyer_email_address": "someone@example.com",
    }
    base.update(extra)
    return base


@pytest.mark.parametrize(("cents", "expected"), [(29, "0.29"), (57, "0.57"), (1999, "19.99"), (115, "1.15")])
def test_cents_convert_exactly(cents: int, expected: str) -> None:
    # float would give 0.28999999999999998 for 29 cents
    assert major_units(cents, "USD") == Decimal(expected)
    assert str(major_units(cents, "USD")) == expected


def test_zero_decimal_currencies_are_not_divided() -> None:
    assert major_units(500, "JPY") == Decimal(500)


def test_payment_row_keeps_tip_apart_and_copies_no_personal_data() -> None:
    row = payment_row(SquarePayment.model_validate(_payment()), synced_at=SYNCED, message_id="m1")
    data = row.model_dump(mode="json", by_alias=True)
    assert data["amount"] == "0.29"
    assert data["tip_amount"] == "1.00"
    assert data["total_amount"] == "1.29"
    assert data["refunded_amount"] == "0.00"
    assert data["card_brand"] == "VISA"
    assert data["customer_id"] is None
    assert data["_synced_at"].startswith("2026-01-01T00:00:00")
    assert data["_message_id"] == "m1"
    assert "someone@example.com" not in str(data)
    assert "fp" not in data.values()


def test_a_payment_without_its_key_fields_is_refused() -> None:
    with pytest.raises(ValidationError):
        SquarePayment.model_validate(_payment(amount_money=None))
    with pytest.raises(ValidationError):
        SquarePayment.model_validate(_payment(created_at="yesterday"))


def test_item_rows_one_per_variation_with_variable_pricing_as_null() -> None:
    item = SquareCatalogObject.model_validate(
        {
            "type": "ITEM",
            "id": "I1",
            "updated_at": "2025-01-01T00:00:00Z",
            "version": 5,
            "is_deleted": False,
            "present_at_all_locations": True,
            "item_data": {
                "name": "Coffee",
                "category_id": "C1",
                "variations": [
                    {
                        "type": "ITEM_VARIATION",
                        "id": "V1",
                        "updated_at": "2025-01-01T00:00:00Z",
                        "version": 5,
                        "present_at_all_locations": True,
                        "item_variation_data": {
                            "item_id": "I1",
                            "name": "Small",
                            "sku": "S1",
                            "pricing_type": "FIXED_PRICING",
                            "price_money": {"amount": 350, "currency": "USD"},
                        },
                    },
                    {
                        "type": "ITEM_VARIATION",
                        "id": "V2",
                        "updated_at": "2025-01-01T00:00:00Z",
                        "version": 5,
                        "present_at_all_locations": True,
                        "item_variation_data": {
                            "item_id": "I1",
                            "name": "Custom",
                            "pricing_type": "VARIABLE_PRICING",
                        },
                    },
                ],
            },
        }
    )
    rows = item_rows(item, synced_at=SYNCED, message_id=None)
    assert [(r.variation_id, r.price, r.available) for r in rows] == [
        ("V1", Decimal("3.50"), True),
        ("V2", None, True),
    ]
