"""The Square sandbox's customer directory: live profiles, the deleted ones, and their ground truth.

Customers are generated once at start-up (:func:`sandbox.square_catalog.make_customers`) and then
change only through the admin endpoints: created, updated (``version`` and ``updated_at`` bumped,
``reference_id`` changed) or deleted. A deleted customer leaves ListCustomers, SearchCustomers and
RetrieveCustomer at once but stays in the truth with ``is_deleted`` and ``deleted_at``, holding what
its ``customer.deleted`` event carried: Square's event omits ``group_ids`` (and ``segment_ids``), so
a warehouse that writes the event's customer keeps none, and neither does the truth.
"""

from __future__ import annotations

from typing import Any

from sandbox.square_seed import SeedHash, upper_id
from sandbox.square_time import format_ms, parse_rfc3339_ms

__all__ = ["EVENT_OMITTED_FIELDS", "CustomerBook"]

#: Customer fields a ``customer.deleted`` event leaves out (Square's CustomerDeletedEvent).
EVENT_OMITTED_FIELDS = ("group_ids", "segment_ids")


class CustomerBook:
    """Every customer of the seller, live or deleted, as API JSON and as truth rows."""

    def __init__(self, seeds: SeedHash, customers: list[dict[str, Any]], truth: list[dict[str, Any]]) -> None:
        """Keep the generated customers and their truth rows (same order, same ids).

        Args:
            seeds: the dataset's seed hash (new customers' ids come from it).
            customers: the customers as Square's ``Customer`` JSON.
            truth: one truth row per customer, in the same order.
        """
        self._seeds = seeds
        self._live: dict[str, dict[str, Any]] = {customer["id"]: customer for customer in customers}
        # Insertion-ordered: the truth lists customers in the order they were made.
        self._truth: dict[str, dict[str, Any]] = {row["id"]: row for row in truth}
        self._made = len(customers)

    @property
    def live(self) -> list[dict[str, Any]]:
        """The customers Square serves now, in the order they were made."""
        return list(self._live.values())

    @property
    def deleted_count(self) -> int:
        """How many customers have been deleted."""
        return len(self._truth) - len(self._live)

    def truth(self) -> list[dict[str, Any]]:
        """One truth row per customer ever made, deleted ones included (``is_deleted``, ``deleted_at``)."""
        return list(self._truth.values())

    def get(self, customer_id: str) -> dict[str, Any] | None:
        """The live customer with this id, or None (unknown or deleted)."""
        return self._live.get(customer_id)

    def updated_ms(self, customer_id: str) -> int:
        """A live customer's ``updated_at``, epoch ms.

        Raises:
            KeyError: if no live customer has this id.
        """
        return parse_rfc3339_ms(self._live[customer_id]["updated_at"])

    def create(self, at_ms: int) -> dict[str, Any]:
        """Add a customer created at ``at_ms`` (epoch ms) and return it."""
        n = self._made
        self._made += 1
        customer_id = upper_id(self._seeds.digest(b"customer", n, 16), 26)
        stamp = format_ms(at_ms)
        customer: dict[str, Any] = {
            "id": customer_id,
            "created_at": stamp,
            "updated_at": stamp,
            "given_name": "Nova",
            "family_name": f"Synthetic{n:05d}",
            "email_address": f"nova.synthetic{n:05d}@example.com",
            "phone_number": f"+1-555-01{n % 100:02d}",
            "preferences": {"email_unsubscribed": False},
            "creation_source": "THIRD_PARTY",
            "version": 0,
        }
        self._live[customer_id] = customer
        self._truth[customer_id] = {
            "id": customer_id,
            "created_at": stamp,
            "updated_at": stamp,
            "version": 0,
            "creation_source": "THIRD_PARTY",
            "reference_id": None,
            "group_ids": [],
            "is_deleted": False,
            "deleted_at": None,
        }
        return customer

    def update(self, customer_id: str, at_ms: int) -> dict[str, Any]:
        """Change a live customer at ``at_ms``: next ``version``, new ``updated_at`` and ``reference_id``.

        Raises:
            KeyError: if no live customer has this id.
            ValueError: if ``at_ms`` is not after the customer's ``updated_at``.
        """
        if at_ms <= self.updated_ms(customer_id):
            raise ValueError("a change must come after the customer's updated_at")
        current = self._live[customer_id]
        version = int(current["version"]) + 1
        reference = f"REF-{customer_id[:6]}-V{version}"
        stamp = format_ms(at_ms)
        changed = {**current, "updated_at": stamp, "version": version, "reference_id": reference}
        self._live[customer_id] = changed
        self._truth[customer_id] = {
            **self._truth[customer_id],
            "updated_at": stamp,
            "version": version,
            "reference_id": reference,
        }
        return changed

    def delete(self, customer_id: str, at_ms: int) -> dict[str, Any]:
        """Delete a live customer at ``at_ms``; returns it as its ``customer.deleted`` event carries it.

        Raises:
            KeyError: if no live customer has this id.
        """
        current = self._live.pop(customer_id)
        carried = {key: value for key, value in current.items() if key not in EVENT_OMITTED_FIELDS}
        self._truth[customer_id] = {
            **self._truth[customer_id],
            # What the event carried: no group ids.
            "group_ids": [],
            "is_deleted": True,
            "deleted_at": format_ms(at_ms),
        }
        return carried
