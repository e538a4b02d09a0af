"""The Square sandbox's dataset: deterministic payments, catalog and customers, plus a mutation clock.

Everything derives from ``(seed, anchor, counts)`` and, after start-up, from the sequence of
:meth:`SquareDataset.advance` calls and of changes made on request
(:meth:`SquareDataset.update_payment`, the customer changes, :meth:`SquareDataset.touch_item`), each
at the clock's "now". Payment *i* is computed on demand from ``(seed, i)``, so memory stays flat
however many payments there are; only payments created or changed after start-up are stored.
Money is modelled in integer cents throughout and the ground truth (:meth:`PaymentState.to_truth`
and friends) is read from that model, never from the API JSON.

The dataset is put together from modules named for their parts: :mod:`sandbox.square_time`
(timestamps), :mod:`sandbox.square_seed` (hashing and ids), :mod:`sandbox.square_money`,
:mod:`sandbox.square_payment_state` (one payment), :mod:`sandbox.square_payment_history` (all
payments, listing), :mod:`sandbox.square_catalog` (locations, customers, catalog) and
:mod:`sandbox.square_customers` (customers as they change). Their public
names are re-exported here, the module other code imports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sandbox.square_catalog import make_catalog, make_customers, make_locations
from sandbox.square_customers import CustomerBook
from sandbox.square_faults import Malformation, pick_malformed
from sandbox.square_money import FLOAT_TRAP_CENTS
from sandbox.square_payment_history import MAX_LIFECYCLE_MS, TIE_BLOCK, PaymentHistory, PaymentQuery
from sandbox.square_payment_state import PaymentState, mutate_payment, update_payment
from sandbox.square_seed import SeedHash, alnum_id
from sandbox.square_time import DAY_MS, HISTORY_MS, LOOKBACK_MS, format_ms, parse_rfc3339_ms

__all__ = [
    "DAY_MS",
    "FLOAT_TRAP_CENTS",
    "HISTORY_MS",
    "LOOKBACK_MS",
    "MAX_LIFECYCLE_MS",
    "TIE_BLOCK",
    "AdvanceResult",
    "PaymentQuery",
    "PaymentState",
    "SquareDataset",
    "format_ms",
    "parse_rfc3339_ms",
]


@dataclass(frozen=True)
class AdvanceResult:
    """What one clock advance did."""

    now: str
    created: list[str]
    changed: list[str]


class SquareDataset(PaymentHistory):
    """A seller's Square data, generated deterministically and changed only by :meth:`advance`."""

    def __init__(
        self,
        *,
        seed: int = 7,
        anchor: datetime,
        payments: int = 100_184,
        customers: int = 1_732,
        items: int = 500,
    ) -> None:
        """Build the dataset.

        Args:
            seed: any integer; the same seed, anchor and counts give the same data.
            anchor: the clock's starting "now" (timezone-aware); history lies before it.
            payments: payments generated over the two years before the anchor.
            customers: customer profiles.
            items: catalog items (each with one to three variations).
        """
        if payments < 0 or customers < 0 or items < 0:
            raise ValueError("counts must not be negative")
        if anchor.tzinfo is None:
            raise ValueError("anchor must be timezone-aware")
        seeds = SeedHash(seed)
        anchor_ms = parse_rfc3339_ms(anchor.isoformat())
        start_ms = anchor_ms - HISTORY_MS
        self._seeds = seeds
        self.locations = make_locations(seeds, start_ms)
        location_ids = [location["id"] for location in self.locations]
        self.merchant_id = str(self.locations[0]["merchant_id"])
        self.customer_book = CustomerBook(
            seeds, *make_customers(seeds, customers, start_ms=start_ms, anchor_ms=anchor_ms)
        )
        super().__init__(
            seeds,
            anchor_ms=anchor_ms,
            payments=payments,
            location_ids=location_ids,
            customer_ids=[customer["id"] for customer in self.customers],
        )
        self.now_ms = anchor_ms
        self._advances = 0
        self._changes = 0
        self.catalog, self.item_truth = make_catalog(
            seeds, items, start_ms=start_ms, anchor_ms=anchor_ms, location_ids=location_ids
        )
        self.catalog_latest_ms = max((entry[1] for entry in self.catalog), default=self.anchor_ms)
        self._malformed: tuple[int, dict[int, Malformation]] = (0, {})

    # -- the clock ---------------------------------------------------------------------------------

    def advance(self, *, seconds: int, new_payments: int = 0, changed_payments: int = 0) -> AdvanceResult:
        """Move the clock forward, creating payments and changing existing ones inside the interval.

        About a third of the changed payments (at least one) were created over a year ago, which a
        ListPayments call without ``begin_time`` never shows.

        Raises:
            ValueError: on negative arguments, or changes asked for in an empty interval.
        """
        if seconds < 0 or new_payments < 0 or changed_payments < 0:
            raise ValueError("seconds, new_payments and changed_payments must not be negative")
        if seconds < 1 and (new_payments or changed_payments):
            raise ValueError("creating or changing payments needs at least one second")
        rng = self._seeds.rng(f"advance:{self._advances}")
        self._advances += 1
        old, new = self.now_ms, self.now_ms + seconds * 1000
        existing = self.payment_count
        floor = self.created_ms(existing - 1) if existing else old
        created_ids: list[str] = []
        for moment in sorted(rng.randint(old + 1, new) for _ in range(new_payments)):
            created_ids.append(self.add_payment(max(moment, floor), cap_ms=new))
        changed_ids: list[str] = []
        if changed_payments and existing:
            cut = self.first_index_at_or_after(old - LOOKBACK_MS)
            old_quota = min(cut, max(1, changed_payments // 3))
            chosen: set[int] = set()
            attempts = 0
            while len(chosen) < changed_payments and attempts < 200 * changed_payments:
                attempts += 1
                pool_hi = cut if len(chosen) < old_quota and cut > 0 else existing
                i = rng.randrange(pool_hi)
                if i in chosen:
                    continue
                mutated = mutate_payment(self.payment_state(i), rng, rng.randint(old + 1, new))
                if mutated is None:
                    continue
                chosen.add(i)
                self.change_payment(mutated)
                changed_ids.append(mutated.id)
        self.now_ms = new
        return AdvanceResult(now=format_ms(new), created=created_ids, changed=changed_ids)

    # -- changes on request --------------------------------------------------------------------------

    def change_instant(self, after_ms: int) -> int:
        """The instant of a change made now, epoch ms: the clock, moved on to just after ``after_ms``.

        A change must come strictly after the record's last one, so when that was at the clock's
        "now" already, the clock ticks one millisecond; it never goes back.
        """
        self.now_ms = max(self.now_ms, after_ms + 1)
        return self.now_ms

    def update_payment(
        self, payment_id: str, *, status: str | None = None, refund_cents: int | None = None
    ) -> PaymentState:
        """Change a payment now, as the clock would (capture, void or refund); see ``update_payment``.

        Raises:
            KeyError: for an unknown payment id.
            ValueError: for a change the payment's status or amounts do not allow.
        """
        index = self.index_of(payment_id)
        if index is None:
            raise KeyError(payment_id)
        state = self.payment_state(index)
        rng = self._seeds.rng(f"change:{self._changes}")
        token = alnum_id(rng.getrandbits(144).to_bytes(18, "little"), 24)
        refund_id = f"{state.id}_{alnum_id(rng.getrandbits(48).to_bytes(6, 'little'), 8)}"
        # Checked before anything moves: a refused change leaves the clock and the payment as they were.
        changed = update_payment(
            state,
            updated_ms=max(self.now_ms, state.updated_ms + 1),
            version_token=token,
            refund_id=refund_id,
            status=status,
            refund_cents=refund_cents,
        )
        self._changes += 1
        self.now_ms = changed.updated_ms
        self.change_payment(changed)
        return changed

    def touch_item(self, item_id: str | None = None) -> dict[str, Any]:
        """Edit a catalog item now (new ``updated_at`` and ``version`` on it and its variations).

        Args:
            item_id: the item; by default the first one not deleted.

        Returns:
            The item as ListCatalog serves it now.

        Raises:
            KeyError: for an unknown or deleted item (or no item at all).
        """
        wanted = [
            n
            for n, (kind, _, deleted, obj) in enumerate(self.catalog)
            if kind == "ITEM" and not deleted and (item_id is None or obj["id"] == item_id)
        ]
        if not wanted:
            raise KeyError(item_id)
        _, updated, _, item = self.catalog[wanted[0]]
        at = self.change_instant(max(updated, self.catalog_latest_ms))
        stamp = {"updated_at": format_ms(at), "version": at}
        variation_ids = {variation["id"] for variation in item["item_data"]["variations"]}
        for n, (kind, _, deleted, obj) in enumerate(self.catalog):
            if obj["id"] == item["id"] or (kind == "ITEM_VARIATION" and obj["id"] in variation_ids):
                # Variations are the same objects as the item nests, so each changes once, everywhere.
                obj.update(stamp)
                self.catalog[n] = (kind, at, deleted, obj)
        for row in self.item_truth:
            if row["item_id"] == item["id"]:
                row.update(stamp)
        self.catalog_latest_ms = at
        return item

    # -- customers -----------------------------------------------------------------------------------

    @property
    def customers(self) -> list[dict[str, Any]]:
        """The customers Square serves now (deleted ones are gone)."""
        return self.customer_book.live

    @property
    def customer_truth(self) -> list[dict[str, Any]]:
        """Every customer's truth row, deleted ones included."""
        return self.customer_book.truth()

    def create_customer(self) -> dict[str, Any]:
        """Add a customer now and return it."""
        return self.customer_book.create(self.now_ms)

    def update_customer(self, customer_id: str) -> dict[str, Any]:
        """Change a customer now and return it.

        Raises:
            KeyError: for an unknown or deleted customer.
        """
        return self.customer_book.update(
            customer_id, self.change_instant(self.customer_book.updated_ms(customer_id))
        )

    def delete_customer(self, customer_id: str) -> tuple[dict[str, Any], int]:
        """Delete a customer now.

        Returns:
            The customer as its ``customer.deleted`` event carries it, and when it was deleted, epoch ms.

        Raises:
            KeyError: for an unknown or deleted customer.
        """
        at = self.change_instant(self.customer_book.updated_ms(customer_id))
        return self.customer_book.delete(customer_id, at), at

    # -- malformed payments --------------------------------------------------------------------------

    def malformed(self, count: int) -> Mapping[int, Malformation]:
        """The payments the API serves malformed when ``count`` are asked for, by index.

        They are picked among the generated history from the seed (see
        :func:`sandbox.square_faults.pick_malformed`), so the same count always names the same ones.

        Raises:
            ValueError: for a negative count, or more than the generated payments.
        """
        if self._malformed[0] != count:
            self._malformed = (count, pick_malformed(self.seed, self.base_payments, count))
        return self._malformed[1]

    # -- other resources ---------------------------------------------------------------------------

    def catalog_objects(
        self, types: set[str], *, include_deleted: bool, updated_after_ms: int | None = None
    ) -> list[dict[str, Any]]:
        """Catalog objects of the given types, in a stable order."""
        return [
            obj
            for kind, updated, deleted, obj in self.catalog
            if kind in types
            and (include_deleted or not deleted)
            and (updated_after_ms is None or updated > updated_after_ms)
        ]

    def info(self) -> dict[str, Any]:
        """The clock, seed, counts and locations, for ``/_sandbox/info``."""
        return {
            "now": format_ms(self.now_ms),
            "anchor": format_ms(self.anchor_ms),
            "seed": self.seed,
            "counts": {
                "payments": self.payment_count,
                "customers": len(self.customers),
                "deleted_customers": self.customer_book.deleted_count,
                "items": sum(1 for kind, *_ in self.catalog if kind == "ITEM"),
                "variations": len(self.item_truth),
                "locations": len(self.locations),
            },
            "locations": list(self.location_ids),
            "main_location_id": self.location_ids[0],
        }
