"""The Lightspeed ground-truth check: does the warehouse hold exactly what the Lightspeed sandbox holds?

The sandbox computes its truth from its integer-cents model and serves it as NDJSON
(``GET /_sandbox/truth/sales|items``; see ``SaleState.to_truth`` and ``ItemState.to_truth``).
:func:`check_lightspeed_warehouse` reads ``lightspeed_transactions`` and ``lightspeed_products`` with
one query each and compares them row by row exactly as the Square check (:mod:`sandbox.truth_check`)
does: every truth key present exactly once, no other key, every column equal (money as exact decimals
of the truth's cents, timestamps as instants to the microsecond, NULL only where the truth has null),
plus the sum of ``calcTotal`` by ``completed`` to the cent. Like the Square check it is written
independently of the sync code (it does not reuse the row converters in ``schemas/lightspeed.py``).

Only what is Lightspeed's own lives here: its tables as the check compares them (their columns, keys in
numeric order, the sale sums by ``completed``) and fetching its truth; reading, comparing and reporting
are the Square check's (:func:`sandbox.truth_check.check_tables`). :func:`expected_lightspeed_report` is
the revenue report the truth implies, over completed sales.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
from google.cloud import bigquery

from sandbox.truth import expected_report
from sandbox.truth_check import check_tables
from sandbox.truth_columns import CheckedColumn, CheckedTable
from sandbox.truth_report import CheckReport
from schemas.report import Report
from schemas.tables import LIGHTSPEED_PRODUCTS, LIGHTSPEED_TRANSACTIONS

__all__ = [
    "LIGHTSPEED_COLUMNS",
    "LIGHTSPEED_TABLE_NAMES",
    "SALE_SUM_COLUMNS",
    "CheckReport",
    "LightspeedTruth",
    "check_lightspeed_warehouse",
    "expected_lightspeed_report",
    "fetch_lightspeed_truth",
]

#: Tables the check covers, in report order.
LIGHTSPEED_TABLE_NAMES = (LIGHTSPEED_TRANSACTIONS.name, LIGHTSPEED_PRODUCTS.name)

#: Per table: warehouse column -> (truth field, how to compare). The first column is the key.
LIGHTSPEED_COLUMNS: dict[str, tuple[CheckedColumn, ...]] = {
    LIGHTSPEED_TRANSACTIONS.name: (
        ("saleID", "sale_id", "int"),
        ("completed", "completed", "bool"),
        ("calcSubtotal", "subtotal_cents", "cents"),
        ("calcDiscount", "discount_cents", "cents"),
        ("calcTax1", "tax1_cents", "cents"),
        ("calcTax2", "tax2_cents", "cents"),
        ("calcTotal", "total_cents", "cents"),
        ("customerID", "customer_id", "int"),
        ("employeeID", "employee_id", "int"),
        ("shopID", "shop_id", "int"),
        ("registerID", "register_id", "int"),
        ("archived", "archived", "bool"),
        ("voided", "voided", "bool"),
        ("createTime", "create_time", "timestamp"),
        ("updatetime", "update_time", "timestamp"),
        ("completeTime", "complete_time", "timestamp"),
    ),
    LIGHTSPEED_PRODUCTS.name: (
        ("itemID", "item_id", "int"),
        ("description", "description", "str"),
        ("defaultCost", "default_cost_cents", "cents"),
        ("avgCost", "avg_cost_cents", "cents"),
        ("categoryID", "category_id", "int"),
        ("manufacturerSku", "manufacturer_sku", "str"),
        ("systemSku", "system_sku", "str"),
        ("price", "price_cents", "cents"),
        ("archived", "archived", "bool"),
        ("createTime", "create_time", "timestamp"),
        ("timeStamp", "time_stamp", "timestamp"),
    ),
}
#: Sale money columns whose sums by ``completed`` must match to the cent.
SALE_SUM_COLUMNS = ("calcTotal",)


def _key_order(key: str) -> tuple[int, str]:
    """Numeric ids in numeric order (``2`` before ``10``), anything else after them."""
    return (int(key), "") if key.isdigit() else (1 << 62, key)


#: The tables as the check compares them, in report order.
_TABLES = (
    CheckedTable(
        LIGHTSPEED_TRANSACTIONS,
        LIGHTSPEED_COLUMNS[LIGHTSPEED_TRANSACTIONS.name],
        key_order=_key_order,
        sum_columns=SALE_SUM_COLUMNS,
        sum_dimensions=("completed",),
    ),
    CheckedTable(LIGHTSPEED_PRODUCTS, LIGHTSPEED_COLUMNS[LIGHTSPEED_PRODUCTS.name], key_order=_key_order),
)


@dataclass(frozen=True)
class LightspeedTruth:
    """The Lightspeed sandbox's ground truth, one JSON object per record as its NDJSON endpoints serve it.

    Attributes:
        sales: ``{"sale_id", "completed", "total_cents", "customer_id", "create_time", ...}`` per sale.
        items: ``{"item_id", "description", "price_cents", "prices_cents", ...}`` per item.
    """

    sales: list[dict[str, Any]]
    items: list[dict[str, Any]]

    def records(self, table: str) -> list[dict[str, Any]]:
        """The truth records for a warehouse table name.

        Raises:
            KeyError: for a table the truth does not cover.
        """
        return {LIGHTSPEED_TRANSACTIONS.name: self.sales, LIGHTSPEED_PRODUCTS.name: self.items}[table]


def fetch_lightspeed_truth(
    base_url: str, http: httpx.Client | None = None, *, timeout_seconds: float = 120.0
) -> LightspeedTruth:
    """Load the sandbox's ground truth from ``GET /_sandbox/truth/sales`` and ``/items``.

    Args:
        base_url: the sandbox's base URL (``http://127.0.0.1:PORT``).
        http: an httpx client to reuse; a short-lived one is made when omitted.
        timeout_seconds: per-request timeout, seconds.

    Returns:
        The truth for both Lightspeed tables.

    Raises:
        httpx.HTTPError: if the sandbox cannot be reached or answers with an error status.
    """
    client = httpx.Client(timeout=timeout_seconds) if http is None else http
    try:
        streams = []
        for stream in ("sales", "items"):
            url = f"{base_url.rstrip('/')}/_sandbox/truth/{stream}"
            response = client.get(url, timeout=timeout_seconds)
            response.raise_for_status()
            streams.append([orjson.loads(line) for line in response.content.splitlines() if line.strip()])
    finally:
        if http is None:
            client.close()
    sales, items = streams
    return LightspeedTruth(sales=sales, items=items)


def check_lightspeed_warehouse(
    client: bigquery.Client,
    *,
    project: str,
    dataset: str,
    truth: LightspeedTruth,
    timeout_seconds: float = 300.0,
) -> CheckReport:
    """Compare the Lightspeed tables with the sandbox's truth, row by row, one query per table.

    Args:
        client: a BigQuery client (the emulator or real BigQuery).
        project: BigQuery project id.
        dataset: the dataset holding the Lightspeed tables.
        truth: the sandbox's truth (see :func:`fetch_lightspeed_truth`).
        timeout_seconds: deadline for each table's query, seconds.

    Returns:
        The report; ``report.ok`` is True only if both tables equal the truth.

    Raises:
        ValueError: for an invalid project or dataset id, or a key the truth holds twice.
        google.api_core.exceptions.GoogleAPICallError: if BigQuery fails for a reason other than a
            missing table (a missing table is reported as a difference instead).
    """
    return check_tables(
        client,
        project=project,
        dataset=dataset,
        tables=_TABLES,
        records=truth.records,
        timeout_seconds=timeout_seconds,
    )


def expected_lightspeed_report(
    truth_sales: Iterable[Mapping[str, Any]], *, zone: ZoneInfo, now: datetime
) -> Report:
    """The Lightspeed revenue report as the truth says it should be (``Report.lightspeed``'s figures).

    Over completed sales: revenue is ``calcTotal`` (``total_cents``), a sale counts in a period when
    its ``createTime`` seen in ``zone`` falls on the same local date, ISO week, month or year as
    ``now``; transactions are the completed sales, customers the distinct non-null customer ids among
    them, and the average order value all-time revenue / transactions, to the cent.

    Args:
        truth_sales: the truth's sale records (``LightspeedTruth.sales``).
        zone: the report time zone.
        now: the moment the report is for (aware); also the report's ``generatedAt``.

    Returns:
        The figures as a :class:`~schemas.report.Report` (``lightspeed`` left ``None``), exact to the cent.

    Raises:
        ValueError: if ``now`` is naive.
    """
    # The Square computation over the sales seen as payments: the same periods, sums and rounding.
    as_payments = (
        {
            "status": "COMPLETED" if sale["completed"] else "OPEN",
            "amount_cents": sale["total_cents"],
            "customer_id": sale["customer_id"],
            "created_at": sale["create_time"],
        }
        for sale in truth_sales
    )
    return expected_report(as_payments, zone=zone, now=now)
