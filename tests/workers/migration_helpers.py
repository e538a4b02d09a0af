"""Legacy tables for the migration tests: ``square_payments`` the way the old system kept it.

Unpartitioned, unclustered, money as FLOAT64 (the other columns as in ``SQUARE_PAYMENTS``), loaded
by a load job from generated rows whose amounts are whole cents written as floats that are not
exact (``0.1 + 0.2``), with the exact totals kept beside them in cents.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import redis
from google.cloud import bigquery

from schemas.messages import MigrationRequest
from schemas.tables import SQUARE_PAYMENTS
from tests.conftest import TEST_PROJECT
from workers.migrations import migration_id_for
from workers.semaphore import TableSemaphore
from workers.sinks.bigquery import query_rows

__all__ = [
    "AMOUNTS",
    "LEGACY_SYNCED_AT",
    "TABLE",
    "LegacyTable",
    "ObservedSemaphore",
    "figures",
    "legacy_schema",
    "load_legacy_payments",
    "migration_request",
    "payment_row",
    "table_names",
]

Money = Literal["FLOAT64", "NUMERIC"]

TABLE = SQUARE_PAYMENTS.name
AMOUNTS = ("amount", "tip_amount", "total_amount", "refunded_amount")
#: When the old system last wrote the legacy rows: long before any copy's snapshot and lookback.
LEGACY_SYNCED_AT = datetime(2025, 6, 1, tzinfo=UTC)
_FIRST_CREATED = datetime(2025, 3, 1, tzinfo=UTC)
_STATUSES = ("COMPLETED", "COMPLETED", "COMPLETED", "FAILED", "CANCELED")
#: Tips in cents; as floats 0.1 and 0.2 make totals like 0.30000000000000004.
_TIPS = (0, 10, 20, 5, 99)


@dataclass(frozen=True)
class LegacyTable:
    """What was loaded: row count, exact totals per amount column, first and last ``created_at``."""

    rows: int
    totals: dict[str, Decimal]
    first_created: datetime
    last_created: datetime


def legacy_schema(money: Money = "FLOAT64") -> list[bigquery.SchemaField]:
    """``SQUARE_PAYMENTS``'s columns and modes, with money as ``money``."""
    return [
        bigquery.SchemaField(column.name, money if column.name in AMOUNTS else column.type, mode=column.mode)
        for column in SQUARE_PAYMENTS.columns
    ]


def _legacy_row(index: int, money: Money = "FLOAT64") -> tuple[dict[str, Any], dict[str, int]]:
    created = _FIRST_CREATED + timedelta(days=index % 60, minutes=index % 1440, seconds=index % 59)
    amount_cents = 1 + (index * 7919) % 250_000
    tip_cents = _TIPS[index % len(_TIPS)]
    if index == 0:
        amount_cents, tip_cents = 10, 20  # 0.1 + 0.2
    refunded_cents = amount_cents if index % 17 == 0 else 0
    # Floats as the old system computed them: dollars plus cents, and the total as a float sum.
    amount = amount_cents // 100 + (amount_cents % 100) * 0.01
    tip = tip_cents * 0.01
    cents = {
        "amount": amount_cents,
        "tip_amount": tip_cents,
        "total_amount": amount_cents + tip_cents,
        "refunded_amount": refunded_cents,
    }
    row = {
        "id": f"pay-{index:06d}",
        "created_at": created.isoformat(),
        "updated_at": (created + timedelta(minutes=5)).isoformat(),
        "status": _STATUSES[index % len(_STATUSES)],
        "amount": amount,
        "tip_amount": tip,
        "total_amount": amount + tip,
        "refunded_amount": amount if refunded_cents else 0.0,
        "currency": "USD",
        "customer_id": f"cust-{index % 50:03d}",
        "location_id": f"LOC{index % 3}",
        "order_id": None,
        "source_type": "CARD",
        "card_brand": "VISA",
        "receipt_url": None,
        "_synced_at": LEGACY_SYNCED_AT.isoformat(),
        "_message_id": "legacy",
    }
    if money == "NUMERIC":
        row.update({name: str(Decimal(value) / 100) for name, value in cents.items()})
    return row, cents


def load_legacy_payments(
    client: bigquery.Client, dataset: str, rows: int, *, money: Money = "FLOAT64"
) -> LegacyTable:
    """Create the dataset and a legacy ``square_payments`` with ``rows`` rows, by one load job.

    ``money="NUMERIC"`` keeps the spec's types (only the layout is legacy), which the sink
    still writes into; FLOAT64 money it refuses until the table is migrated.
    """
    client.create_dataset(f"{TEST_PROJECT}.{dataset}", exists_ok=True)
    table_id = f"{TEST_PROJECT}.{dataset}.{TABLE}"
    client.create_table(bigquery.Table(table_id, schema=legacy_schema(money)))
    generated = [_legacy_row(index, money) for index in range(rows)]
    config = bigquery.LoadJobConfig(
        schema=legacy_schema(money), source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON
    )
    client.load_table_from_json([row for row, _ in generated], table_id, job_config=config).result(
        timeout=120
    )
    totals = {name: Decimal(sum(cents[name] for _, cents in generated)) / 100 for name in AMOUNTS}
    created = [datetime.fromisoformat(row["created_at"]) for row, _ in generated]
    return LegacyTable(rows=rows, totals=totals, first_created=min(created), last_created=max(created))


def figures(client: bigquery.Client, dataset: str, table: str) -> dict[str, Any]:
    """Count, distinct ids, created_at range and money totals to the cent (floats summed, rounded once)."""
    sums = ", ".join(f"ROUND(CAST(SUM({name}) AS NUMERIC), 2) AS {name}" for name in AMOUNTS)
    sql = (
        f"SELECT COUNT(*) AS rows, COUNT(DISTINCT id) AS ids, MIN(created_at) AS first, "
        f"MAX(created_at) AS last, {sums} FROM `{TEST_PROJECT}.{dataset}.{table}`"
    )
    return query_rows(client, sql)[0]


def table_names(client: bigquery.Client, dataset: str) -> set[str]:
    return {table.table_id for table in client.list_tables(f"{TEST_PROJECT}.{dataset}")}


def migration_request(
    *,
    table: str = TABLE,
    partition_field: str = "created_at",
    granularity: str = "DAY",
    cluster: tuple[str, ...] = ("customer_id", "status"),
    **options: Any,
) -> MigrationRequest:
    """A request with the id ``migration_id_for`` gives its layout."""
    return MigrationRequest.model_validate(
        {
            "request_id": "req-migrate",
            "migration_id": migration_id_for(table, partition_field, granularity, cluster),
            "table": table,
            "partition_field": partition_field,
            "granularity": granularity,
            "cluster": cluster,
            **options,
        }
    )


def payment_row(index: int, *, amount: str, synced_at: datetime, updated_minutes: int = 5) -> dict[str, Any]:
    """A ``square_payments`` row as the sync engine hands it to ``sink.write``."""
    row, _ = _legacy_row(index)
    created = datetime.fromisoformat(row["created_at"])
    return {
        **row,
        "updated_at": (created + timedelta(minutes=updated_minutes)).isoformat(),
        "amount": amount,
        "tip_amount": "0",
        "total_amount": amount,
        "refunded_amount": "0",
        "_synced_at": synced_at.isoformat(),
        "_message_id": "writer",
    }


class ObservedSemaphore(TableSemaphore):
    """A real semaphore that records, on a monotonic clock, when the swap held every permit of
    ``TABLE`` and when a writer asked for and got one; ``on_hold`` runs once all are held."""

    def __init__(self, client: redis.Redis, *, permits: int, on_hold: Callable[[], None]) -> None:
        super().__init__(client, permits=permits)
        self.on_hold = on_hold
        self.lock = threading.Lock()
        self.events: dict[str, float] = {}
        self.writer_waiting = threading.Event()

    def _mark(self, event: str) -> None:
        with self.lock:
            self.events.setdefault(event, time.monotonic())

    @contextlib.contextmanager
    def _observed_permit(self, table: str, timeout_seconds: float | None) -> Iterator[None]:
        if table == TABLE:
            self._mark("writer_asked")
            self.writer_waiting.set()
        with super().permit(table, timeout_seconds=timeout_seconds):
            if table == TABLE:
                self._mark("writer_permitted")
            yield

    def permit(
        self, table: str, *, timeout_seconds: float | None = None
    ) -> contextlib.AbstractContextManager[None]:
        return self._observed_permit(table, timeout_seconds)

    @contextlib.contextmanager
    def _observed_hold(self, table: str, timeout_seconds: float | None) -> Iterator[None]:
        with super().hold_all(table, timeout_seconds=timeout_seconds):
            self._mark("swap_held")
            self.on_hold()
            yield
            # Still inside: the permits are released only after this line.
            self._mark("swap_finished")

    def hold_all(
        self, table: str, *, timeout_seconds: float | None = None
    ) -> contextlib.AbstractContextManager[None]:
        return self._observed_hold(table, timeout_seconds)
