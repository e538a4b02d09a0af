"""The Square sandbox's dataset: deterministic payments, catalog and customers, plus a mutation clock.

Everything derives from ``(seed, anchor, counts)`` and, after start-up, from the sequence of
:meth:`SquareDataset.advance` calls. Payment *i* is computed on demand from ``(seed, i)``, so memory
stays flat however many payments there are; only payments changed or created by the clock are stored.
Money is modelled in integer cents throughout and the ground truth (:meth:`PaymentState.to_truth`
and friends) is read from that model, never from the API JSON.

The dataset is put together from modules named for their parts: :mod:`sandbox.square_time`
(timestamps), :mod:`sandbox.square_seed` (hashing and ids), :mod:`sandbox.square_money`,
:mod:`sandbox.square_payment_state` (one payment), :mod:`sandbox.square_payment_history` (all
payments, listing) and :mod:`sandbox.square_catalog` (locations, customers, catalog). Their public
names are re-exported here, the module other code imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sandbox.square_catalog import make_catalog, make_customers, make_locations
from sandbox.square_money import FLOAT_TRAP_CENTS
from sandbox.square_payment_history import MAX_LIFECYCLE_MS, TIE_BLOCK, PaymentHistory, PaymentQuery
from sandbox.square_payment_state import PaymentState, mutate_payment
from sandbox.square_seed import SeedHash
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
        self.customers, self.customer_truth = make_customers(
            seeds, customers, start_ms=start_ms, anchor_ms=anchor_ms
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
        self.catalog, self.item_truth = make_catalog(
            seeds, items, start_ms=start_ms, anchor_ms=anchor_ms, location_ids=location_ids
        )
        self.catalog_latest_ms = max((entry[1] for entry in self.catalog), default=self.anchor_ms)

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
                "items": sum(1 for kind, *_ in self.catalog if kind == "ITEM"),
                "variations": len(self.item_truth),
                "locations": len(self.locations),
            },
            "locations": list(self.location_ids),
            "main_location_id": self.location_ids[0],
        }
