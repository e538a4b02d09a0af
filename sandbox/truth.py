"""The Square sandbox's ground truth: fetching it, and the revenue report it implies.

The sandbox computes its truth from its own integer-cents model and serves it as NDJSON
(``GET /_sandbox/truth/payments|items|customers|rejects``): the payments it serves malformed are not
in ``payments`` (nothing can load them) but in ``rejects``, the records ``_possync_rejects`` should
hold. :func:`expected_report` computes the revenue report from the truth independently of
``workers/report.py``: by local calendar dates rather than the UTC boundaries it uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson

from sandbox.truth_columns import cents, instant
from schemas.report import Report, to_cents
from schemas.tables import REJECTS, SQUARE_CUSTOMERS, SQUARE_ITEMS, SQUARE_PAYMENTS

__all__ = ["Truth", "expected_report", "fetch_truth"]


@dataclass(frozen=True)
class Truth:
    """The sandbox's ground truth, one JSON object per record as its NDJSON endpoints serve it.

    Attributes:
        payments: ``{"id", "created_at", "amount_cents", "status", "location_id", ...}`` per payment
            the API serves whole (the malformed ones are in ``rejects`` instead).
        items: one object per catalog variation, keyed by ``variation_id``.
        customers: one object per customer ever made, keyed by ``id``; a deleted one has
            ``is_deleted`` true and ``deleted_at`` (the ``customer.deleted`` event's ``created_at``).
        rejects: one object per record the API serves malformed, which ``_possync_rejects`` should
            hold: ``{"source", "stream", "record_key", "field", "malformation", "created_at"}``, where
            ``field`` is the field path the rejection's reason names.
    """

    payments: list[dict[str, Any]]
    items: list[dict[str, Any]]
    customers: list[dict[str, Any]]
    rejects: list[dict[str, Any]] = field(default_factory=list)

    def records(self, table: str) -> list[dict[str, Any]]:
        """The truth records for a warehouse table name.

        Raises:
            KeyError: for a table the truth does not cover.
        """
        by_table = {
            SQUARE_PAYMENTS.name: self.payments,
            SQUARE_ITEMS.name: self.items,
            SQUARE_CUSTOMERS.name: self.customers,
            REJECTS.name: self.rejects,
        }
        return by_table[table]


def fetch_truth(
    base_url: str,
    http: httpx.Client | None = None,
    *,
    token: str | None = None,
    timeout_seconds: float = 120.0,
) -> Truth:
    """Load the sandbox's ground truth from ``GET /_sandbox/truth/payments|items|customers|rejects``.

    Args:
        base_url: the sandbox's base URL (``http://127.0.0.1:PORT``).
        http: an httpx client to reuse; a short-lived one is made when omitted.
        token: a bearer token, if the sandbox wants one on its ``/_sandbox`` endpoints.
        timeout_seconds: per-request timeout, seconds.

    Returns:
        The truth for the three Square tables, and the rejects.

    Raises:
        httpx.HTTPError: if the sandbox cannot be reached or answers with an error status.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    own = http is None
    client = httpx.Client(timeout=timeout_seconds) if http is None else http
    try:
        streams = []
        for stream in ("payments", "items", "customers", "rejects"):
            response = client.get(
                f"{base_url.rstrip('/')}/_sandbox/truth/{stream}", headers=headers, timeout=timeout_seconds
            )
            response.raise_for_status()
            streams.append([orjson.loads(line) for line in response.content.splitlines() if line.strip()])
    finally:
        if own:
            client.close()
    payments, items, customers, rejects = streams
    return Truth(payments=payments, items=items, customers=customers, rejects=rejects)


def expected_report(truth_payments: Iterable[Mapping[str, Any]], *, zone: ZoneInfo, now: datetime) -> Report:
    """The revenue report as the truth says it should be (see ``workers.report.build_report``).

    A payment counts in a period when its creation instant, seen in ``zone``, falls on the same
    local date (today), ISO week (Monday to Sunday), month or year as ``now``.

    Args:
        truth_payments: the truth's payment records (``Truth.payments``).
        zone: the report time zone.
        now: the moment the report is for (aware); also the report's ``generatedAt``.

    Returns:
        The report computed from integer cents, exact to the cent.

    Raises:
        ValueError: if ``now`` is naive.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"naive datetime {now.isoformat()} has no time zone; pass an aware one")
    local_now = now.astimezone(zone)
    keys: dict[str, Callable[[datetime], object]] = {
        "today": lambda moment: moment.date(),
        "week": lambda moment: moment.isocalendar()[:2],
        "month": lambda moment: (moment.year, moment.month),
        "year": lambda moment: moment.year,
    }
    current = {name: key(local_now) for name, key in keys.items()}
    period_cents: dict[str, int] = dict.fromkeys(keys, 0)
    total_cents = 0
    transactions = 0
    customers: set[str] = set()
    for payment in truth_payments:
        if payment["status"] != "COMPLETED":
            continue
        amount = int(payment["amount_cents"])
        transactions += 1
        total_cents += amount
        if payment.get("customer_id") is not None:
            customers.add(str(payment["customer_id"]))
        local = instant(str(payment["created_at"])).astimezone(zone)
        for name, key in keys.items():
            if key(local) == current[name]:
                period_cents[name] += amount
    return Report(
        today_revenue=cents(period_cents["today"]),
        week_revenue=cents(period_cents["week"]),
        month_revenue=cents(period_cents["month"]),
        year_revenue=cents(period_cents["year"]),
        total_transactions=transactions,
        total_customers=len(customers),
        avg_order_value=to_cents(cents(total_cents) / transactions) if transactions else Decimal(0),
        generated_at=now,
        timezone=zone.key,
    )
