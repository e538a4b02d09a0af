"""Which truth field each checked warehouse column holds, and the one canonical form its values compare in.

The truth serves integer cents and RFC 3339 strings; the warehouse holds NUMERIC and TIMESTAMP. Both
sides are brought to the same Python values here (money as exact decimals of the truth's cents,
timestamps as UTC strings to the microsecond, NULL lists as empty lists), so the comparison is plain
equality. Written independently of the row converters in ``schemas/square.py`` and
``schemas/lightspeed.py``, on purpose.

A :class:`CheckedTable` describes one table to the check (its columns, key order and money sums);
the Square tables are :data:`SQUARE_TABLES`, the Lightspeed ones live in :mod:`sandbox.truth_lightspeed`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from schemas.tables import SQUARE_CUSTOMERS, SQUARE_ITEMS, SQUARE_PAYMENTS, TableSpec

__all__ = [
    "COLUMNS",
    "PAYMENT_SUM_COLUMNS",
    "SQUARE_TABLES",
    "TABLE_NAMES",
    "CheckedColumn",
    "CheckedTable",
    "ColumnKind",
    "cents",
    "instant",
    "shown",
    "timestamp_text",
    "truth_value",
]

#: Tables the check covers, in report order.
TABLE_NAMES = (SQUARE_PAYMENTS.name, SQUARE_ITEMS.name, SQUARE_CUSTOMERS.name)

#: How a column's values are compared (and read back from the warehouse).
ColumnKind = Literal["str", "timestamp", "cents", "int", "bool", "list"]
#: One checked column: (warehouse column, truth field, how to compare).
CheckedColumn = tuple[str, str, ColumnKind]


@dataclass(frozen=True)
class CheckedTable:
    """A warehouse table as the check compares it with the truth.

    Attributes:
        spec: the table as ``schemas/tables.py`` declares it (its column types are checked against it).
        columns: the checked columns, in report order; the first is the key.
        key_order: sort key for the keys a report lists; ``None`` sorts them as strings.
        sum_columns: money columns whose sums by each of ``sum_dimensions`` must match to the cent.
        sum_dimensions: columns those sums are grouped by, one set of sums each.
    """

    spec: TableSpec
    columns: tuple[CheckedColumn, ...]
    key_order: Callable[[str], Any] | None = None
    sum_columns: tuple[str, ...] = ()
    sum_dimensions: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The table name."""
        return self.spec.name


#: Per table: warehouse column -> (truth field, how to compare). The first column is the key.
COLUMNS: dict[str, tuple[CheckedColumn, ...]] = {
    SQUARE_PAYMENTS.name: (
        ("id", "id", "str"),
        ("created_at", "created_at", "timestamp"),
        ("updated_at", "updated_at", "timestamp"),
        ("status", "status", "str"),
        ("amount", "amount_cents", "cents"),
        ("tip_amount", "tip_cents", "cents"),
        ("total_amount", "total_cents", "cents"),
        ("refunded_amount", "refunded_cents", "cents"),
        ("currency", "currency", "str"),
        ("customer_id", "customer_id", "str"),
        ("location_id", "location_id", "str"),
        ("order_id", "order_id", "str"),
        ("source_type", "source_type", "str"),
        ("card_brand", "card_brand", "str"),
        ("receipt_url", "receipt_url", "str"),
    ),
    SQUARE_ITEMS.name: (
        ("variation_id", "variation_id", "str"),
        ("item_id", "item_id", "str"),
        ("name", "name", "str"),
        ("variation_name", "variation_name", "str"),
        ("category_id", "category_id", "str"),
        ("sku", "sku", "str"),
        ("price", "price_cents", "cents"),
        ("currency", "currency", "str"),
        ("available", "available", "bool"),
        ("is_deleted", "is_deleted", "bool"),
        ("version", "version", "int"),
        ("updated_at", "updated_at", "timestamp"),
    ),
    SQUARE_CUSTOMERS.name: (
        ("id", "id", "str"),
        ("created_at", "created_at", "timestamp"),
        ("updated_at", "updated_at", "timestamp"),
        ("version", "version", "int"),
        ("creation_source", "creation_source", "str"),
        ("reference_id", "reference_id", "str"),
        ("group_ids", "group_ids", "list"),
        # False and NULL for a customer Square still serves; set by its customer.deleted event.
        ("is_deleted", "is_deleted", "bool"),
        ("deleted_at", "deleted_at", "timestamp"),
    ),
}
#: Payment money columns whose sums by status and by location must match to the cent.
PAYMENT_SUM_COLUMNS = ("amount", "tip_amount", "total_amount", "refunded_amount")

#: The Square tables as the check compares them, by name, in report order.
SQUARE_TABLES: dict[str, CheckedTable] = {
    SQUARE_PAYMENTS.name: CheckedTable(
        SQUARE_PAYMENTS,
        COLUMNS[SQUARE_PAYMENTS.name],
        sum_columns=PAYMENT_SUM_COLUMNS,
        sum_dimensions=("status", "location_id"),
    ),
    SQUARE_ITEMS.name: CheckedTable(SQUARE_ITEMS, COLUMNS[SQUARE_ITEMS.name]),
    SQUARE_CUSTOMERS.name: CheckedTable(SQUARE_CUSTOMERS, COLUMNS[SQUARE_CUSTOMERS.name]),
}


def instant(value: str) -> datetime:
    """Parse an RFC 3339 timestamp into an aware UTC datetime.

    Raises:
        ValueError: if ``value`` is not ISO 8601 or has no offset.
    """
    # Python 3.11 parses "Z" and drops digits past the microsecond, which is BigQuery's precision.
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError(f"truth timestamp {value!r} has no offset")
    return moment.astimezone(UTC)


@functools.lru_cache(maxsize=65_536)
def cents(value: int) -> Decimal:
    """Integer cents as an exact decimal of major units (``1999`` -> ``Decimal("19.99")``)."""
    # Cached: prices repeat across payments, and this conversion is a large share of a 100k-row check.
    return Decimal(value).scaleb(-2)


def timestamp_text(value: str) -> str:
    """``value`` as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC: one spelling per instant, so strings compare."""
    if len(value) == 27 and value[19] == "." and value[26] == "Z":
        return value
    if len(value) == 24 and value[19] == "." and value[23] == "Z":
        # Square's (and the truth's) milliseconds: skip parsing, it dominates a 100k-row check.
        return value[:23] + "000Z"
    return f"{instant(value):%Y-%m-%dT%H:%M:%S.%f}Z"


def truth_value(kind: ColumnKind, value: Any) -> Any:
    """A truth record's field in the canonical form of its column ``kind``."""
    if value is None:
        return [] if kind == "list" else None
    if kind == "timestamp":
        return timestamp_text(value)
    if kind == "cents":
        return cents(int(value))
    if kind == "list":
        return list(value)
    return value


def shown(kind: ColumnKind, value: Any) -> Any:
    """A canonical value as a report shows it."""
    # Timestamps are compared as canonical strings but reported as instants.
    return instant(value) if kind == "timestamp" and isinstance(value, str) else value
