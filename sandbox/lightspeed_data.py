"""The Lightspeed sandbox's dataset: deterministic sales and items in integer cents, and a mutation clock.

Sale *i* and item *j* are computed from ``(seed, index)`` alone (like the Square sandbox's payments);
:meth:`LightspeedDataset.advance` then creates and changes records, and only those are stored as
overrides. Money is integer cents throughout: the API JSON (every scalar a string, amounts written
the way Lightspeed writes them, ``"317.1"``) and the ground truth are both rendered from that model.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sandbox.square_money import FLOAT_TRAP_CENTS
from sandbox.square_seed import SeedHash, upper_id

__all__ = ["ItemState", "LightspeedDataset", "SaleState", "format_amount", "format_time", "parse_time"]

#: Sales lie in the year before the clock's start; items in the two years before it (seconds).
SALE_HISTORY_SECONDS = 365 * 86_400
ITEM_HISTORY_SECONDS = 730 * 86_400
#: Tax 1 is 7.25 % everywhere; tax 2 (1 %) applies in shop 2 only; both in basis points.
TAX1_BP = 725
TAX2_BP = 100
#: Shops, employees, customers and categories ids are drawn from these ranges (inclusive).
SHOPS = 3
EMPLOYEES = 12
CUSTOMERS = 400
CATEGORIES = 15
_ADJECTIVES = ("Red", "Large", "Organic", "Classic", "Vintage", "Deluxe", "Mini", "Smoked", "Café")
_NOUNS = ("Mug", "Bagel", "T-Shirt", "Candle", "Notebook", "Tea", "Lamp", "Scarf", 'Cheese "Aged"')
#: Hash tags keeping each derived value's stream separate.
_T_SALE, _T_MONEY, _T_WHO, _T_TIME, _T_ITEM, _T_PRICE = 11, 12, 13, 14, 21, 22


def format_time(epoch_seconds: int) -> str:
    """Lightspeed's timestamp: ``YYYY-MM-DDTHH:MM:SS+00:00`` (UTC)."""
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def parse_time(text: str) -> int:
    """Epoch seconds of a Lightspeed timestamp; no offset means UTC.

    Raises:
        ValueError: if ``text`` is not an ISO 8601 timestamp.
    """
    # An unencoded ``+`` in a query string arrives as a space.
    moment = datetime.fromisoformat(text.strip().replace(" ", "+").replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def format_amount(cents: int) -> str:
    """Cents as Lightspeed writes amounts: decimal, no trailing zeros (``"317.1"``, ``"100"``)."""
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(cents), 100)
    return f"{sign}{whole}" if part == 0 else f"{sign}{whole}.{part:02d}".rstrip("0")


def _percent(cents: int, basis_points: int) -> int:
    """``cents * basis_points / 10000`` rounded half up, in whole cents."""
    return (cents * basis_points + 5_000) // 10_000


@dataclass(frozen=True, slots=True)
class SaleState:
    """One sale in integer cents and epoch seconds: the source of both its API JSON and its truth."""

    sale_id: int
    completed: bool
    subtotal_cents: int
    discount_cents: int
    customer_id: int
    employee_id: int
    shop_id: int
    create_time: int
    update_time: int
    complete_time: int | None

    @property
    def taxable_cents(self) -> int:
        """What tax is charged on: the subtotal less the discount."""
        return self.subtotal_cents - self.discount_cents

    @property
    def tax1_cents(self) -> int:
        """Tax 1, rounded half up."""
        return _percent(self.taxable_cents, TAX1_BP)

    @property
    def tax2_cents(self) -> int:
        """Tax 2 (shop 2 only), rounded half up."""
        return _percent(self.taxable_cents, TAX2_BP) if self.shop_id == 2 else 0

    @property
    def total_cents(self) -> int:
        """``subtotal - discount + tax1 + tax2``."""
        return self.taxable_cents + self.tax1_cents + self.tax2_cents

    @property
    def register_id(self) -> int:
        """The register rung up on: each shop has one, numbered like the shop."""
        return self.shop_id

    def to_api(self) -> dict[str, Any]:
        """The sale as Lightspeed's ``Sale`` JSON object: every scalar a string."""
        total = format_amount(self.total_cents)
        sale: dict[str, Any] = {
            "saleID": str(self.sale_id),
            "timeStamp": format_time(self.update_time),
            "discountPercent": "0",
            "completed": "true" if self.completed else "false",
            "archived": "false",
            "voided": "false",
            "enablePromotions": "true",
            "isTaxInclusive": "false",
            "createTime": format_time(self.create_time),
            "updatetime": format_time(self.update_time),
            "referenceNumber": "",
            "tax1Rate": "0.0725",
            "tax2Rate": "0.01" if self.shop_id == 2 else "0",
            "ticketNumber": f"22{self.sale_id:010d}",
            "calcDiscount": format_amount(self.discount_cents),
            "calcTotal": total,
            "calcSubtotal": format_amount(self.subtotal_cents),
            "calcTaxable": format_amount(self.taxable_cents),
            "calcNonTaxable": "0",
            "calcTax1": format_amount(self.tax1_cents),
            "calcTax2": format_amount(self.tax2_cents),
            "calcPayments": total if self.completed else "0",
            "calcTips": "0",
            "total": total,
            "totalDue": total,
            "balance": "0" if self.completed else total,
            "taxTotal": format_amount(self.tax1_cents + self.tax2_cents),
            "customerID": str(self.customer_id),
            "discountID": "0",
            "employeeID": str(self.employee_id),
            "quoteID": "0",
            "registerID": str(self.register_id),
            "shipToID": "0",
            "shopID": str(self.shop_id),
            "taxCategoryID": "1",
        }
        if self.complete_time is not None:
            sale["completeTime"] = format_time(self.complete_time)
        return sale

    def to_truth(self) -> dict[str, Any]:
        """The ground-truth row, from the integer model (never from the API JSON)."""
        return {
            "sale_id": self.sale_id,
            "completed": self.completed,
            "subtotal_cents": self.subtotal_cents,
            "discount_cents": self.discount_cents,
            "tax1_cents": self.tax1_cents,
            "tax2_cents": self.tax2_cents,
            "total_cents": self.total_cents,
            "customer_id": self.customer_id or None,
            "employee_id": self.employee_id,
            "shop_id": self.shop_id,
            "register_id": self.register_id,
            # The sandbox never archives or voids a sale.
            "archived": False,
            "voided": False,
            "create_time": format_time(self.create_time),
            "update_time": format_time(self.update_time),
            "complete_time": None if self.complete_time is None else format_time(self.complete_time),
        }


@dataclass(frozen=True, slots=True)
class ItemState:
    """One item and its three prices in integer cents."""

    item_id: int
    description: str
    default_cost_cents: int
    avg_cost_cents: int
    category_id: int
    manufacturer_sku: str
    create_time: int
    time_stamp: int
    #: Prices by use type: ``Default``, ``MSRP``, ``Online``.
    prices: tuple[tuple[str, int], ...]

    @property
    def system_sku(self) -> str:
        """Lightspeed's own SKU: ``210000000000`` plus the item id, as a string."""
        return f"{210000000000 + self.item_id}"

    def to_api(self) -> dict[str, Any]:
        """The item as Lightspeed's ``Item`` JSON object, ``Prices`` included."""
        return {
            "itemID": str(self.item_id),
            "systemSku": self.system_sku,
            "defaultCost": format_amount(self.default_cost_cents),
            "avgCost": format_amount(self.avg_cost_cents),
            "discountable": "true",
            "tax": "true",
            "archived": "false",
            "itemType": "default",
            "serialized": "false",
            "description": self.description,
            "upc": "",
            "ean": "",
            "customSku": "",
            "manufacturerSku": self.manufacturer_sku,
            "createTime": format_time(self.create_time),
            "timeStamp": format_time(self.time_stamp),
            "categoryID": str(self.category_id),
            "taxClassID": "1",
            "manufacturerID": "0",
            "Prices": {
                "ItemPrice": [
                    {"amount": format_amount(cents), "useTypeID": str(n), "useType": use_type}
                    for n, (use_type, cents) in enumerate(self.prices, start=1)
                ]
            },
        }

    def to_truth(self) -> dict[str, Any]:
        """The ground-truth row, from the integer model."""
        return {
            "item_id": self.item_id,
            "description": self.description,
            "default_cost_cents": self.default_cost_cents,
            "avg_cost_cents": self.avg_cost_cents,
            "category_id": self.category_id,
            "manufacturer_sku": self.manufacturer_sku,
            "system_sku": self.system_sku,
            # The sandbox never archives an item.
            "archived": False,
            "create_time": format_time(self.create_time),
            "time_stamp": format_time(self.time_stamp),
            "prices_cents": dict(self.prices),
            # What the warehouse's ``price`` holds: the ``Default`` price, None without one.
            "price_cents": dict(self.prices).get("Default"),
        }


class LightspeedDataset:
    """An account's sales and items, generated from a seed and changed only by :meth:`advance`."""

    def __init__(self, *, seed: int, anchor: datetime, sales: int, items: int) -> None:
        """Generate the dataset.

        Args:
            seed: any integer; the same seed, anchor and counts give the same data.
            anchor: the clock's start (timezone-aware); history lies before it.
            sales: sales over the year before the anchor.
            items: items over the two years before the anchor.

        Raises:
            ValueError: on negative counts or a naive anchor.
        """
        if sales < 0 or items < 0:
            raise ValueError("counts must not be negative")
        if anchor.tzinfo is None:
            raise ValueError("anchor must be timezone-aware")
        self.seed = seed
        self._hash = SeedHash(seed)
        self.anchor = int(anchor.timestamp())
        self.now = self.anchor
        self._base_sales = sales
        self.sales = [self._sale(i) for i in range(sales)]
        self.items = [self._item(j) for j in range(items)]
        self._advances = 0

    def _sale(self, i: int) -> SaleState:
        """Sale ``i`` as generated from ``(seed, i)``."""
        mix = self._hash.mix
        step = max(1, SALE_HISTORY_SECONDS // max(1, self._base_sales))
        created = self.anchor - SALE_HISTORY_SECONDS + i * step + mix(_T_TIME, i) % step
        money = mix(_T_MONEY, i)
        subtotal = 50 + money % 30_000
        if money % 17 == 0:
            # Amounts binary floats cannot hold exactly, to catch float arithmetic downstream.
            subtotal = FLOAT_TRAP_CENTS[(money >> 8) % len(FLOAT_TRAP_CENTS)]
        discount = _percent(subtotal, 500) if (money >> 20) % 10 == 0 else 0
        who = mix(_T_WHO, i)
        completed = who % 25 != 0
        # Most sales are settled within the hour; a few are edited days later.
        late = (who >> 12) % 20 == 0
        settle = 60 + (who >> 16) % (5 * 86_400 if late else 3_600)
        updated = min(created + settle, self.anchor) if completed else created
        return SaleState(
            sale_id=i + 1,
            completed=completed,
            subtotal_cents=subtotal,
            discount_cents=discount,
            customer_id=0 if (who >> 24) % 4 == 0 else 1 + (who >> 28) % CUSTOMERS,
            employee_id=1 + (who >> 36) % EMPLOYEES,
            shop_id=1 + (who >> 44) % SHOPS,
            create_time=created,
            update_time=updated,
            complete_time=updated if completed else None,
        )

    def _item(self, j: int) -> ItemState:
        """Item ``j`` as generated from ``(seed, j)``."""
        mix = self._hash.mix(_T_ITEM, j)
        cost = 25 + mix % 5_000
        default = cost * (150 + (mix >> 16) % 150) // 100
        created = self.anchor - ITEM_HISTORY_SECONDS + (mix >> 24) % (ITEM_HISTORY_SECONDS - 86_400)
        changed = min(self.anchor, created + (mix >> 40) % (90 * 86_400))
        return ItemState(
            item_id=j + 1,
            description=f"{_ADJECTIVES[mix % 9]} {_NOUNS[(mix >> 8) % 9]} {j + 1}",
            default_cost_cents=cost,
            avg_cost_cents=cost + (mix >> 32) % 50 - 25 if cost > 50 else cost,
            category_id=1 + (mix >> 48) % CATEGORIES,
            manufacturer_sku=upper_id(self._hash.digest(b"item-sku", j, 5), 8),
            create_time=created,
            time_stamp=changed,
            prices=(("Default", default), ("MSRP", _percent(default, 11_000)), ("Online", default)),
        )

    def info(self) -> dict[str, Any]:
        """The clock and the counts."""
        return {
            "now": format_time(self.now),
            "seed": self.seed,
            "counts": {"sales": len(self.sales), "items": len(self.items)},
        }

    def advance(
        self, *, seconds: int, new_sales: int = 0, changed_sales: int = 0, changed_items: int = 0
    ) -> dict[str, Any]:
        """Move the clock forward, then create and change records stamped with the new time.

        Args:
            seconds: how far to move the clock (not negative).
            new_sales: sales created in the interval just passed.
            changed_sales: existing sales changed now: open ones are completed, completed ones
                gain a 1.00 line.
            changed_items: existing items whose ``Default`` price rises by 1 % now.

        Returns:
            ``{"now", "created": [saleID], "changed": [saleID], "changed_items": [itemID]}``.

        Raises:
            ValueError: on negative numbers, or more changes than records.
        """
        if min(seconds, new_sales, changed_sales, changed_items) < 0:
            raise ValueError("seconds and counts must not be negative")
        if changed_sales > len(self.sales) or changed_items > len(self.items):
            raise ValueError("more changes than records")
        self._advances += 1
        rng = random.Random(f"{self.seed}:advance:{self._advances}")
        start, self.now = self.now, self.now + seconds
        changed = sorted(rng.sample(range(len(self.sales)), changed_sales))
        for index in changed:
            sale = self.sales[index]
            if sale.completed:
                sale = replace(sale, subtotal_cents=sale.subtotal_cents + 100)
            self.sales[index] = replace(sale, completed=True, update_time=self.now, complete_time=self.now)
        created = []
        for n in range(new_sales):
            base = self._sale(len(self.sales))
            moment = start + (seconds * (n + 1)) // (new_sales + 1)
            self.sales.append(
                replace(
                    base,
                    create_time=moment,
                    update_time=moment,
                    complete_time=moment if base.completed else None,
                )
            )
            created.append(base.sale_id)
        touched = sorted(rng.sample(range(len(self.items)), changed_items))
        for index in touched:
            item = self.items[index]
            prices = tuple(
                (kind, _percent(cents, 10_100) if kind == "Default" else cents) for kind, cents in item.prices
            )
            self.items[index] = replace(item, prices=prices, time_stamp=self.now)
        return {
            "now": format_time(self.now),
            "created": created,
            "changed": [self.sales[i].sale_id for i in changed],
            "changed_items": [self.items[j].item_id for j in touched],
        }
