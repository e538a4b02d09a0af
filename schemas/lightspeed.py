"""Lightspeed Retail (R-Series) API V3 resources as we read them, and the warehouse rows they become.

Lightspeed writes every scalar as a string (``"true"``, ``"317.1"``, ``"12"``) and ids of absent
relations as ``"0"``. The models parse those strings strictly: an amount becomes an exact
:class:`~decimal.Decimal` (never a ``float``), a boolean must be ``"true"`` or ``"false"``, a
timestamp must carry its offset. Only the fields possync keeps are modelled; personal data is never
read (a sale's ``Customer`` relation is not loaded).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

__all__ = [
    "LightspeedItem",
    "LightspeedSale",
    "ProductRow",
    "TransactionRow",
    "product_row",
    "transaction_row",
]


def _decimal(value: Any) -> Decimal:
    """An amount as Lightspeed writes it (``"317.1"``); a JSON number is accepted only if integral."""
    if isinstance(value, bool) or value is None:
        raise ValueError("amount is missing")
    if isinstance(value, float):
        # A float has already lost the cents it may have had: refuse rather than guess.
        raise ValueError(f"amount {value!r} arrived as a binary float")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"amount {value!r} is not a decimal number") from None
    if not amount.is_finite():
        raise ValueError(f"amount {value!r} is not finite")
    return amount


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{value!r} is not 'true' or 'false'")


def _identifier(value: Any) -> int:
    """A positive id (``"12"``)."""
    number = _integer(value)
    if number is None or number <= 0:
        raise ValueError(f"id {value!r} must be a positive integer")
    return number


def _optional_identifier(value: Any) -> int | None:
    """An id where ``"0"``, ``""`` or absence mean "none"."""
    number = _integer(value)
    return number if number else None


def _integer(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, (bool, float)):
        raise ValueError(f"{value!r} is not an integer id")
    text = str(value).strip()
    if not text.isdigit():
        raise ValueError(f"{value!r} is not an integer id")
    return int(text)


def _optional_time(value: Any) -> Any:
    return None if value in (None, "") else value


Amount = Annotated[Decimal, BeforeValidator(_decimal)]
Flag = Annotated[bool, BeforeValidator(_boolean)]
Identifier = Annotated[int, BeforeValidator(_identifier)]
OptionalIdentifier = Annotated[int | None, BeforeValidator(_optional_identifier)]
OptionalTime = Annotated[AwareDatetime | None, BeforeValidator(_optional_time)]


class _Resource(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class LightspeedSale(_Resource):
    """``Sale``: the fields ``lightspeed_transactions`` keeps."""

    sale_id: Identifier = Field(alias="saleID")
    completed: Flag
    calc_subtotal: Amount = Field(alias="calcSubtotal")
    calc_discount: Amount = Field(alias="calcDiscount", default=Decimal(0))
    calc_tax1: Amount = Field(alias="calcTax1", default=Decimal(0))
    calc_tax2: Amount = Field(alias="calcTax2", default=Decimal(0))
    calc_total: Amount = Field(alias="calcTotal")
    customer_id: OptionalIdentifier = Field(alias="customerID", default=None)
    employee_id: OptionalIdentifier = Field(alias="employeeID", default=None)
    shop_id: OptionalIdentifier = Field(alias="shopID", default=None)
    register_id: OptionalIdentifier = Field(alias="registerID", default=None)
    archived: Flag = False
    voided: Flag = False
    create_time: AwareDatetime = Field(alias="createTime")
    updatetime: AwareDatetime
    complete_time: OptionalTime = Field(alias="completeTime", default=None)


class _ItemPrice(_Resource):
    amount: Amount
    use_type: str | None = Field(alias="useType", default=None)


class _Prices(_Resource):
    # One price arrives as an object rather than a one-element list.
    item_price: list[_ItemPrice] | _ItemPrice | None = Field(alias="ItemPrice", default=None)


class LightspeedItem(_Resource):
    """``Item`` with its ``Prices`` relation: the fields ``lightspeed_products`` keeps."""

    item_id: Identifier = Field(alias="itemID")
    description: str | None = None
    default_cost: Amount | None = Field(alias="defaultCost", default=None)
    avg_cost: Amount | None = Field(alias="avgCost", default=None)
    category_id: OptionalIdentifier = Field(alias="categoryID", default=None)
    manufacturer_sku: str | None = Field(alias="manufacturerSku", default=None)
    system_sku: str | None = Field(alias="systemSku", default=None)
    archived: Flag = False
    create_time: OptionalTime = Field(alias="createTime", default=None)
    time_stamp: AwareDatetime = Field(alias="timeStamp")
    prices: _Prices | None = Field(alias="Prices", default=None)

    def default_price(self) -> Decimal | None:
        """The amount of the ``Default`` ItemPrice, or ``None`` if the item has none."""
        if self.prices is None or self.prices.item_price is None:
            return None
        listed = self.prices.item_price
        for price in listed if isinstance(listed, list) else [listed]:
            if price.use_type == "Default":
                return price.amount
        return None


class _Row(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    synced_at: datetime = Field(alias="_synced_at")
    message_id: str | None = Field(alias="_message_id", default=None)


class TransactionRow(_Row):
    """A ``lightspeed_transactions`` row (column names are Lightspeed's, see ``schemas/tables.py``)."""

    sale_id: int = Field(alias="saleID")
    completed: bool
    calc_subtotal: Decimal = Field(alias="calcSubtotal")
    calc_discount: Decimal = Field(alias="calcDiscount")
    calc_tax1: Decimal = Field(alias="calcTax1")
    calc_tax2: Decimal = Field(alias="calcTax2")
    calc_total: Decimal = Field(alias="calcTotal")
    customer_id: int | None = Field(alias="customerID")
    employee_id: int | None = Field(alias="employeeID")
    shop_id: int | None = Field(alias="shopID")
    register_id: int | None = Field(alias="registerID")
    archived: bool
    voided: bool
    create_time: datetime = Field(alias="createTime")
    updatetime: datetime
    complete_time: datetime | None = Field(alias="completeTime")


class ProductRow(_Row):
    """A ``lightspeed_products`` row."""

    item_id: int = Field(alias="itemID")
    description: str | None
    default_cost: Decimal | None = Field(alias="defaultCost")
    avg_cost: Decimal | None = Field(alias="avgCost")
    category_id: int | None = Field(alias="categoryID")
    manufacturer_sku: str | None = Field(alias="manufacturerSku")
    system_sku: str | None = Field(alias="systemSku")
    price: Decimal | None
    archived: bool
    create_time: datetime | None = Field(alias="createTime")
    time_stamp: datetime = Field(alias="timeStamp")


def transaction_row(sale: LightspeedSale, *, synced_at: datetime, message_id: str | None) -> TransactionRow:
    """The warehouse row of one sale (the row has the sale's fields, by the same names)."""
    return TransactionRow(**sale.model_dump(), synced_at=synced_at, message_id=message_id)


def product_row(item: LightspeedItem, *, synced_at: datetime, message_id: str | None) -> ProductRow:
    """The warehouse row of one item, priced by its ``Default`` ItemPrice; empty SKUs become NULL."""
    fields = item.model_dump(exclude={"prices"})
    fields["manufacturer_sku"] = item.manufacturer_sku or None
    fields["system_sku"] = item.system_sku or None
    return ProductRow(**fields, price=item.default_price(), synced_at=synced_at, message_id=message_id)
