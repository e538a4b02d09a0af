"""The revenue report: what ``possync report`` prints and what the demo checks against the truth.

Field names on the wire are the camelCase names the replaced dashboard used (``todayRevenue``,
``avgOrderValue``...). Money is held as :class:`~decimal.Decimal` rounded to the cent and written
to JSON as a number (``1234.5`` for $1,234.50): a float carries any cent amount below 2**53 cents
exactly, and JSON readers expect numbers for money here, as the old dashboard gave them.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    FieldSerializationInfo,
    field_serializer,
    field_validator,
)

__all__ = ["CENT", "Figures", "Report", "to_cents"]

#: One cent: every money field of the report is quantized to it.
CENT = Decimal("0.01")


def to_cents(amount: Decimal) -> Decimal:
    """Round ``amount`` to the cent, halves away from zero (as BigQuery's ``ROUND`` does).

    Args:
        amount: an amount in major units (dollars).

    Returns:
        The amount with exactly two decimal places.
    """
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


class Figures(BaseModel):
    """Revenue and counts over one source's completed transactions.

    Attributes:
        today_revenue: revenue of transactions created today, report time zone (Square: ``amount``
            of COMPLETED payments, tips excluded; Lightspeed: ``calcTotal`` of completed sales).
        week_revenue: the same for the current ISO week (Monday to Sunday).
        month_revenue: the same for the current calendar month.
        year_revenue: the same for the current calendar year.
        total_transactions: number of completed transactions, all time.
        total_customers: distinct non-null customer ids among them.
        avg_order_value: all-time revenue / ``total_transactions``, to the cent; 0 when there are none.
        generated_at: the ``now`` the periods were computed from.
        timezone: IANA name of the report time zone.
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    today_revenue: Decimal = Field(alias="todayRevenue")
    week_revenue: Decimal = Field(alias="weekRevenue")
    month_revenue: Decimal = Field(alias="monthRevenue")
    year_revenue: Decimal = Field(alias="yearRevenue")
    total_transactions: int = Field(alias="totalTransactions", ge=0)
    total_customers: int = Field(alias="totalCustomers", ge=0)
    avg_order_value: Decimal = Field(alias="avgOrderValue")
    generated_at: AwareDatetime = Field(alias="generatedAt")
    timezone: str

    @field_validator("today_revenue", "week_revenue", "month_revenue", "year_revenue", "avg_order_value")
    @classmethod
    def _cents(cls, value: Decimal) -> Decimal:
        return to_cents(value)

    @field_serializer("today_revenue", "week_revenue", "month_revenue", "year_revenue", "avg_order_value")
    def _money(self, value: Decimal, info: FieldSerializationInfo) -> Decimal | float:
        # Python callers keep the exact Decimal; JSON gets a number, not pydantic's default string.
        if info.mode_is_json():
            return float(value)
        return value


class Report(Figures):
    """What ``possync report`` prints: Square's figures at the top level, as the replaced dashboard
    read them (over COMPLETED payments, revenue excluding tips), and Lightspeed's in ``lightspeed``
    with the same keys (over completed sales, revenue = ``calcTotal``).

    Attributes:
        lightspeed: Lightspeed's figures; ``None`` only where a caller did not compute them.
    """

    lightspeed: Figures | None = None
