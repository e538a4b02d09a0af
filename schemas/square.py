"""Square API resources as we read them, and the warehouse rows they become.

Only the fields possync uses are modelled; everything else Square sends is ignored (and personal
data such as names, e-mails, addresses and card fingerprints is never copied). Money is converted
from the smallest currency unit with exact decimal arithmetic, never through ``float``.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

__all__ = [
    "CustomerRow",
    "ItemRow",
    "PaymentRow",
    "SquareCatalogObject",
    "SquareCustomer",
    "SquareLocation",
    "SquareMoney",
    "SquarePayment",
    "customer_row",
    "item_rows",
    "major_units",
    "payment_row",
]

#: ISO 4217 currencies whose minor unit is not 1/100 (Square sends amounts in the smallest unit).
_MINOR_UNIT_EXPONENT = {"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "BHD": 3, "KWD": 3, "OMR": 3}


def major_units(amount: int, currency: str) -> Decimal:
    """Convert an amount in the smallest currency unit to major units, exactly.

    Args:
        amount: integer amount in the smallest unit (cents for USD).
        currency: ISO 4217 code.

    Returns:
        A Decimal with the currency's number of decimal places (``1999`` USD -> ``Decimal("19.99")``).
    """
    exponent = _MINOR_UNIT_EXPONENT.get(currency.upper(), 2)
    return Decimal(amount).scaleb(-exponent)


class _Resource(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class SquareMoney(_Resource):
    """``Money``: an integer amount in the smallest currency unit."""

    amount: int
    currency: str = Field(min_length=3, max_length=3)


class SquareLocation(_Resource):
    """``Location``, as ListLocations returns it."""

    id: str
    name: str | None = None
    status: str | None = None
    currency: str | None = None


class _Card(_Resource):
    card_brand: str | None = None


class _CardDetails(_Resource):
    card: _Card | None = None


class SquarePayment(_Resource):
    """``Payment``: the fields the warehouse keeps."""

    id: str = Field(min_length=1)
    created_at: AwareDatetime
    updated_at: AwareDatetime
    status: str
    amount_money: SquareMoney
    tip_money: SquareMoney | None = None
    total_money: SquareMoney
    refunded_money: SquareMoney | None = None
    customer_id: str | None = None
    location_id: str
    order_id: str | None = None
    source_type: str | None = None
    card_details: _CardDetails | None = None
    receipt_url: str | None = None


class _ItemVariationData(_Resource):
    item_id: str | None = None
    name: str | None = None
    sku: str | None = None
    pricing_type: str | None = None
    price_money: SquareMoney | None = None


class _CatalogObjectBase(_Resource):
    """Fields every ``CatalogObject`` carries, whatever its type."""

    type: str
    id: str
    updated_at: AwareDatetime
    version: int
    is_deleted: bool = False
    present_at_all_locations: bool | None = None
    present_at_location_ids: list[str] | None = None


class _VariationObject(_CatalogObjectBase):
    item_variation_data: _ItemVariationData | None = None


class _ItemData(_Resource):
    name: str | None = None
    category_id: str | None = None
    variations: list[_VariationObject] = Field(default_factory=list)


class SquareCatalogObject(_CatalogObjectBase):
    """``CatalogObject`` of type ITEM (other types are read past)."""

    item_data: _ItemData | None = None


class SquareCustomer(_Resource):
    """``Customer`` without personal data."""

    id: str = Field(min_length=1)
    created_at: AwareDatetime
    updated_at: AwareDatetime
    version: int = 0
    creation_source: str | None = None
    reference_id: str | None = None
    group_ids: list[str] = Field(default_factory=list)


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    synced_at: datetime = Field(serialization_alias="_synced_at")
    message_id: str | None = Field(default=None, serialization_alias="_message_id")


class PaymentRow(_Row):
    """A row of ``square_payments``."""

    id: str
    created_at: datetime
    updated_at: datetime
    status: str
    amount: Decimal
    tip_amount: Decimal
    total_amount: Decimal
    refunded_amount: Decimal
    currency: str
    customer_id: str | None
    location_id: str
    order_id: str | None
    source_type: str | None
    card_brand: str | None
    receipt_url: str | None


class ItemRow(_Row):
    """A row of ``square_items`` (one per variation)."""

    variation_id: str
    item_id: str
    name: str | None
    variation_name: str | None
    category_id: str | None
    sku: str | None
    price: Decimal | None
    currency: str | None
    available: bool
    is_deleted: bool
    version: int
    updated_at: datetime


class CustomerRow(_Row):
    """A row of ``square_customers``."""

    id: str
    created_at: datetime
    updated_at: datetime
    version: int
    creation_source: str | None
    reference_id: str | None
    group_ids: list[str]
    is_deleted: bool = False
    deleted_at: datetime | None = None


def payment_row(payment: SquarePayment, *, synced_at: datetime, message_id: str | None) -> PaymentRow:
    """The ``square_payments`` row for a payment."""
    currency = payment.amount_money.currency

    def amount(money: SquareMoney | None) -> Decimal:
        return major_units(money.amount if money else 0, currency)

    card_brand = None
    if payment.card_details is not None and payment.card_details.card is not None:
        card_brand = payment.card_details.card.card_brand
    return PaymentRow(
        id=payment.id,
        created_at=payment.created_at,
        updated_at=payment.updated_at,
        status=payment.status,
        amount=amount(payment.amount_money),
        tip_amount=amount(payment.tip_money),
        total_amount=amount(payment.total_money),
        refunded_amount=amount(payment.refunded_money),
        currency=currency,
        customer_id=payment.customer_id or None,
        location_id=payment.location_id,
        order_id=payment.order_id,
        source_type=payment.source_type,
        card_brand=card_brand,
        receipt_url=payment.receipt_url,
        synced_at=synced_at,
        message_id=message_id,
    )


def item_rows(item: SquareCatalogObject, *, synced_at: datetime, message_id: str | None) -> list[ItemRow]:
    """The ``square_items`` rows (one per variation) for an ITEM catalog object."""
    if item.type != "ITEM" or item.item_data is None:
        return []
    rows = []
    for variation in item.item_data.variations:
        data = variation.item_variation_data or _ItemVariationData()
        deleted = item.is_deleted or variation.is_deleted
        present = bool(variation.present_at_all_locations) or bool(variation.present_at_location_ids)
        price = data.price_money if data.pricing_type != "VARIABLE_PRICING" else None
        rows.append(
            ItemRow(
                variation_id=variation.id,
                item_id=data.item_id or item.id,
                name=item.item_data.name,
                variation_name=data.name,
                category_id=item.item_data.category_id,
                sku=data.sku,
                price=major_units(price.amount, price.currency) if price else None,
                currency=price.currency if price else None,
                available=present and not deleted,
                is_deleted=deleted,
                # The item's version moves when a variation or the item changes (e.g. deletion).
                version=max(item.version, variation.version),
                updated_at=max(item.updated_at, variation.updated_at),
                synced_at=synced_at,
                message_id=message_id,
            )
        )
    return rows


def customer_row(
    customer: SquareCustomer,
    *,
    synced_at: datetime,
    message_id: str | None,
    deleted_at: datetime | None = None,
) -> CustomerRow:
    """The ``square_customers`` row for a customer; marked deleted when ``deleted_at`` is given."""
    return CustomerRow(
        id=customer.id,
        created_at=customer.created_at,
        updated_at=customer.updated_at,
        version=customer.version,
        creation_source=customer.creation_source,
        reference_id=customer.reference_id,
        group_ids=list(customer.group_ids),
        is_deleted=deleted_at is not None,
        deleted_at=deleted_at,
        synced_at=synced_at,
        message_id=message_id,
    )
