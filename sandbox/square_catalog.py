"""The Square sandbox's slow-changing resources: locations, customers and the catalog.

Each is generated once, at start-up, from the seed: the same seed and anchor give the same
objects. Alongside the API JSON come ground-truth rows for customers and item variations, read
from the same values rather than from the JSON.
"""

from __future__ import annotations

import random
from typing import Any

from sandbox.square_money import FLOAT_TRAP_CENTS, money
from sandbox.square_seed import SeedHash, upper_id
from sandbox.square_time import DAY_MS, HISTORY_MS, format_ms

__all__ = ["CatalogEntry", "make_catalog", "make_customers", "make_locations"]

#: One catalog object: ``(type, updated_ms, is_deleted, json)``.
CatalogEntry = tuple[str, int, bool, dict[str, Any]]


def make_locations(seeds: SeedHash, start_ms: int) -> list[dict[str, Any]]:
    """The seller's three locations, the main (busiest) one first.

    Args:
        seeds: the dataset's seed hash.
        start_ms: when the payment history starts, epoch ms (the locations opened before it).
    """
    names = ("Main Street", "Harbour Kiosk", "Airport Stand")
    merchant = "M" + upper_id(seeds.digest(b"merchant", 0, 16), 12)
    locations = []
    for n, name in enumerate(names):
        locations.append(
            {
                "id": "L" + upper_id(seeds.digest(b"location", n, 16), 12),
                "name": f"Sandbox {name}",
                "address": {
                    "address_line_1": f"{100 + n} Example Road",
                    "locality": "Springfield",
                    "administrative_district_level_1": "OR",
                    "postal_code": "97477",
                    "country": "US",
                },
                "timezone": "America/Los_Angeles",
                "capabilities": ["CREDIT_CARD_PROCESSING"],
                "status": "ACTIVE",
                "created_at": format_ms(start_ms - (3 - n) * 30 * DAY_MS),
                "merchant_id": merchant,
                "country": "US",
                "language_code": "en-US",
                "currency": "USD",
                "business_name": "Possync Sandbox Goods",
                "type": "PHYSICAL",
            }
        )
    return locations


def make_customers(
    seeds: SeedHash, count: int, *, start_ms: int, anchor_ms: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``count`` customer profiles as Square's JSON, and their ground-truth rows.

    Args:
        seeds: the dataset's seed hash.
        count: how many customers.
        start_ms: when the history starts, epoch ms; creation times spread from here.
        anchor_ms: the clock's start, epoch ms; every update lies before it.
    """
    rng = seeds.rng("customers")
    given = ("Ada", "Bo", "Cy", "Dee", "Eli", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kit", "Lou")
    sources = ("THIRD_PARTY", "DIRECTORY", "INSTANT_PROFILE", "IMPORT", "LOYALTY", "APPOINTMENTS")
    groups = ["GRP" + upper_id(seeds.digest(b"group", n, 16), 10) for n in range(3)]
    customers, truth = [], []
    for n in range(count):
        created = start_ms + (n * HISTORY_MS) // max(1, count) + rng.randrange(HISTORY_MS // max(1, count))
        updates = 0 if rng.random() < 0.5 else rng.randint(1, 5)
        updated = created if updates == 0 else min(anchor_ms - 1, created + rng.randrange(200 * DAY_MS))
        updated = max(updated, created)
        customer_id = upper_id(seeds.digest(b"customer", n, 16), 26)
        first = given[rng.randrange(len(given))]
        family = f"Synthetic{n:05d}"
        customer: dict[str, Any] = {
            "id": customer_id,
            "created_at": format_ms(created),
            "updated_at": format_ms(updated),
            "given_name": first,
            "family_name": family,
            "email_address": f"{first.lower()}.{family.lower()}@example.com",
            "phone_number": f"+1-555-01{n % 100:02d}",
            "preferences": {"email_unsubscribed": rng.random() < 0.1},
            "creation_source": sources[rng.randrange(len(sources))],
            "version": updates,
        }
        if rng.random() < 0.4:
            customer["reference_id"] = f"REF-{n:06d}"
        group_ids = [groups[rng.randrange(3)]] if rng.random() < 0.2 else []
        if group_ids:
            customer["group_ids"] = group_ids
        customers.append(customer)
        truth.append(
            {
                "id": customer_id,
                "created_at": customer["created_at"],
                "updated_at": customer["updated_at"],
                "version": updates,
                "creation_source": customer["creation_source"],
                "reference_id": customer.get("reference_id"),
                "group_ids": group_ids,
                "is_deleted": False,
                "deleted_at": None,
            }
        )
    return customers, truth


def _presence(rng: random.Random, location_ids: list[str]) -> dict[str, Any]:
    """Where a catalog object is sold: mostly everywhere, sometimes all but one or only one location."""
    roll = rng.random()
    if roll < 0.85:
        return {"present_at_all_locations": True}
    if roll < 0.93:
        return {
            "present_at_all_locations": True,
            "absent_at_location_ids": [rng.choice(location_ids)],
        }
    if roll < 0.98:
        return {
            "present_at_all_locations": False,
            "present_at_location_ids": [rng.choice(location_ids)],
        }
    return {"present_at_all_locations": False}


def make_catalog(
    seeds: SeedHash, count: int, *, start_ms: int, anchor_ms: int, location_ids: list[str]
) -> tuple[list[CatalogEntry], list[dict[str, Any]]]:
    """Catalog objects as ``(type, updated_ms, is_deleted, json)`` in list order, and the item truth.

    Args:
        seeds: the dataset's seed hash.
        count: how many items (each with one to three variations, plus twelve categories).
        start_ms: when the history starts, epoch ms.
        anchor_ms: the clock's start, epoch ms; every update lies before it.
        location_ids: the seller's locations, for items sold at only some of them.
    """
    rng = seeds.rng("catalog")
    adjectives = ("Plain", "Roasted", "Iced", "Spiced", "Tiny", "Grand", "Smoked", "Golden", "Wild")
    nouns = ("Mug", "Bagel", "Tote", "Candle", "Notebook", "Scarf", "Teapot", "Cookie", "Lamp", "Soap")
    sizes = ("Regular", "Large", "Small")
    objects: list[CatalogEntry] = []
    categories = []
    for n in range(12 if count else 0):
        updated = start_ms + rng.randrange(30 * DAY_MS)
        category_id = upper_id(seeds.digest(b"category", n, 16), 24)
        categories.append(category_id)
        category = {
            "type": "CATEGORY",
            "id": category_id,
            "updated_at": format_ms(updated),
            "version": updated,
            "is_deleted": False,
            "present_at_all_locations": True,
            "category_data": {"name": f"Sandbox category {n + 1}", "is_top_level": True},
        }
        objects.append(("CATEGORY", updated, False, category))
    truth: list[dict[str, Any]] = []
    variation_entries: list[CatalogEntry] = []
    for n in range(count):
        item_id = upper_id(seeds.digest(b"item", n, 16), 24)
        updated = start_ms + rng.randrange(HISTORY_MS - DAY_MS)
        deleted = rng.random() < 0.06
        if deleted:
            updated = updated + rng.randrange(max(1, anchor_ms - 1 - updated))
        presence = _presence(rng, location_ids)
        category_id = categories[rng.randrange(len(categories))]
        variable = rng.random() < 0.08
        name = f"{adjectives[rng.randrange(len(adjectives))]} {nouns[rng.randrange(len(nouns))]} {n + 1}"
        stamp = {"updated_at": format_ms(updated), "version": updated, "is_deleted": deleted, **presence}
        variations = []
        for v in range(rng.randint(1, 3)):
            variation_id = upper_id(seeds.digest(b"variation", n * 4 + v, 16), 24)
            price = None
            if not variable:
                roll = rng.random()
                price = (
                    FLOAT_TRAP_CENTS[rng.randrange(len(FLOAT_TRAP_CENTS))]
                    if roll < 0.3
                    else rng.randint(99, 9999)
                )
            data: dict[str, Any] = {
                "item_id": item_id,
                "name": sizes[v],
                "sku": f"SBX-{n + 1:05d}-{v + 1}",
                "ordinal": v,
                "pricing_type": "VARIABLE_PRICING" if variable else "FIXED_PRICING",
            }
            if price is not None:
                data["price_money"] = money(price)
            data["sellable"] = True
            data["stockable"] = True
            variation = {
                "type": "ITEM_VARIATION",
                "id": variation_id,
                **stamp,
                "item_variation_data": data,
            }
            variations.append(variation)
            variation_entries.append(("ITEM_VARIATION", updated, deleted, variation))
            available = not deleted and (
                bool(presence["present_at_all_locations"]) or bool(presence.get("present_at_location_ids"))
            )
            truth.append(
                {
                    "variation_id": variation_id,
                    "item_id": item_id,
                    "name": name,
                    "variation_name": sizes[v],
                    "category_id": category_id,
                    "sku": data["sku"],
                    "price_cents": price,
                    # Only a price has a currency: a variable-priced variation has neither.
                    "currency": "USD" if price is not None else None,
                    "available": available,
                    "is_deleted": deleted,
                    "version": updated,
                    "updated_at": format_ms(updated),
                }
            )
        item = {
            "type": "ITEM",
            "id": item_id,
            **stamp,
            "item_data": {
                "name": name,
                "category_id": category_id,
                "categories": [{"id": category_id, "ordinal": 0}],
                "reporting_category": {"id": category_id, "ordinal": 0},
                "variations": variations,
                "product_type": "REGULAR",
                "is_archived": False,
            },
        }
        objects.append(("ITEM", updated, deleted, item))
    return objects + variation_entries, truth
