"""Lightspeed records as the API writes them (every scalar a string) and the rows they become."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.lightspeed import LightspeedItem, LightspeedSale, product_row, transaction_row
from schemas.tables import LIGHTSPEED_PRODUCTS, LIGHTSPEED_TRANSACTIONS

SYNCED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

SALE: dict[str, Any] = {
    "saleID": "27",
    "timeStamp": "2025-05-02T10:00:00+00:00",
    "completed": "true",
    "archived": "false",
    "voided": "false",
    "createTime": "2025-05-02T09:30:00+00:00",
    "updatetime": "2025-05-02T10:00:00+00:00",
    "completeTime": "2025-05-02T10:00:00+00:00",
    "calcDiscount": "0",
    "calcSubtotal": "317.1",
    "calcTax1": "22.99",
    "calcTax2": "0",
    "calcTotal": "340.09",
    "customerID": "0",
    "employeeID": "3",
    "registerID": "1",
    "shopID": "1",
}

ITEM: dict[str, Any] = {
    "itemID": "9",
    "systemSku": "210000000009",
    "defaultCost": "10.1",
    "avgCost": "10.05",
    "archived": "false",
    "description": 'Cheese "Aged" 9',
    "manufacturerSku": "AB12",
    "createTime": "2024-01-01T00:00:00+00:00",
    "timeStamp": "2024-02-01T00:00:00+00:00",
    "categoryID": "4",
    "Prices": {
        "ItemPrice": [
            {"amount": "30", "useTypeID": "1", "useType": "Default"},
            {"amount": "33", "useTypeID": "2", "useType": "MSRP"},
        ]
    },
}


def test_a_sale_becomes_a_row_with_exact_money_and_no_customer_for_zero() -> None:
    row = transaction_row(LightspeedSale.model_validate(SALE), synced_at=SYNCED, message_id="m-1")
    data = row.model_dump(mode="json", by_alias=True)

    assert set(data) == set(LIGHTSPEED_TRANSACTIONS.column_names)
    assert row.calc_subtotal == Decimal("317.1")
    assert row.calc_total == Decimal("340.09")
    assert row.customer_id is None
    assert (row.sale_id, row.shop_id, row.employee_id) == (27, 1, 3)
    assert row.completed is True
    assert row.create_time == datetime(2025, 5, 2, 9, 30, tzinfo=UTC)
    assert data["_message_id"] == "m-1"


def test_an_item_is_priced_by_its_default_price_even_when_one_price_arrives_as_an_object() -> None:
    row = product_row(LightspeedItem.model_validate(ITEM), synced_at=SYNCED, message_id=None)
    assert set(row.model_dump(by_alias=True)) == set(LIGHTSPEED_PRODUCTS.column_names)
    assert row.price == Decimal("30")
    assert row.default_cost == Decimal("10.1")

    single = {**ITEM, "Prices": {"ItemPrice": {"amount": "12.5", "useType": "Default"}}}
    assert product_row(LightspeedItem.model_validate(single), synced_at=SYNCED, message_id=None).price == (
        Decimal("12.5")
    )
    no_default = {**ITEM, "Prices": {"ItemPrice": [{"amount": "33", "useType": "MSRP"}]}}
    assert LightspeedItem.model_validate(no_default).default_price() is None


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("calcTotal", 340.09, "binary float"),
        ("calcTotal", "3,40", "not a decimal number"),
        ("calcTotal", "NaN", "not finite"),
        ("completed", "yes", "'true' or 'false'"),
        ("saleID", "0", "positive integer"),
        ("shopID", "1.5", "not an integer id"),
        ("createTime", "2025-05-02T09:30:00", "timezone"),
    ],
)
def test_a_malformed_sale_is_refused_naming_the_field(field: str, value: Any, reason: str) -> None:
    with pytest.raises(ValidationError) as caught:
        LightspeedSale.model_validate({**SALE, field: value})
    assert field in str(caught.value)
    assert reason in str(caught.value)


def test_a_sale_without_its_key_or_total_is_refused() -> None:
    for field in ("saleID", "calcTotal", "updatetime"):
        broken = {key: value for key, value in SALE.items() if key != field}
        with pytest.raises(ValidationError, match=field):
            LightspeedSale.model_validate(broken)
