"""Small Square-to-BigQuery loaders, one correct and six each with one classic bug, for testing the check.

Each loader pages the real sandbox over HTTP with httpx and loads what it read into the real
emulator, so the ground-truth check is shown to catch what these bugs do to a real warehouse:

- :class:`SkipsListLocations` reads ListPayments without ``location_id`` (only the main location);
- :class:`OmitsBeginTime` reads without ``begin_time`` (only the last year);
- :class:`StopsAtShortPage` takes a page shorter than ``limit`` for the last one;
- :class:`FloatCents` converts cents to dollars through ``float`` and back with ``int()``;
- :class:`AppendsOnly` appends an incremental read's rows instead of merging them;
- :class:`DropsDeletedCustomers` deletes a customer's row on ``customer.deleted`` instead of marking it.

:class:`CorrectLoader` does all of it right, also loads the catalog and customers, and applies a
``customer.deleted`` event by writing the customer it carries marked deleted at the event's time.
Rows are built with the project's converters (``schemas/square.py``); the check never uses them, so
agreement between the two is itself evidence.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

import httpx
from google.cloud import bigquery

from schemas.square import (
    SquareCatalogObject,
    SquareCustomer,
    SquarePayment,
    customer_row,
    item_rows,
    payment_row,
)
from schemas.tables import SQUARE_CUSTOMERS, SQUARE_ITEMS, SQUARE_PAYMENTS, TableSpec
from workers.sinks.bigquery import BigQuerySink

__all__ = [
    "HISTORY_BEGIN",
    "AppendsOnly",
    "CorrectLoader",
    "DropsDeletedCustomers",
    "FloatCents",
    "OmitsBeginTime",
    "SkipsListLocations",
    "StopsAtShortPage",
    "truth_payment_rows",
]

#: ``begin_time`` early enough to cover the sandbox's two years of history.
HISTORY_BEGIN = "2000-01-01T00:00:00Z"
#: ListPayments' and ListCustomers' page size.
PAGE_LIMIT = 100
#: When the rows were synced, for ``_synced_at`` (the check ignores it).
SYNCED_AT = datetime(2026, 1, 1, tzinfo=UTC)


def truth_payment_rows(truth_payments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``square_payments`` rows exactly as the truth has them (cents to exact dollars), JSON-ready.

    For loading a known-good warehouse without paging the API (the report tests, the 100k timing).
    """
    money = {"amount_cents": "amount", "tip_cents": "tip_amount", "total_cents": "total_amount"}
    money["refunded_cents"] = "refunded_amount"
    return [
        {
            **{key: value for key, value in payment.items() if key not in money},
            **{column: str(Decimal(payment[field]).scaleb(-2)) for field, column in money.items()},
            "_synced_at": SYNCED_AT.isoformat(),
        }
        for payment in truth_payments
    ]


class CorrectLoader:
    """Reads every location's payments over the full history, and the catalog and customers."""

    #: Does this loader set ``location_id`` and list locations first?
    per_location: ClassVar[bool] = True

    def __init__(self, http: httpx.Client, *, base_url: str, token: str, sink: BigQuerySink) -> None:
        """Read from the sandbox at ``base_url`` through ``http``; write through ``sink``.

        Args:
            http: the client every request goes through.
            base_url: the sandbox's base URL.
            token: the sandbox's bearer token.
            sink: the warehouse's sink (its tables already exist).
        """
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}", "Square-Version": "2025-08-20"}
        self.sink = sink
        self._batches = 0

    # -- HTTP ----------------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        response = self._http.request(
            method, self._base_url + path, params=params, json=body, headers=self._headers, timeout=30
        )
        response.raise_for_status()
        page: dict[str, Any] = response.json()
        return page

    def _is_last(self, page: Mapping[str, Any], objects: list[dict[str, Any]]) -> bool:
        # No cursor, an empty cursor and an empty ``{}`` page all end the list; a short page does not.
        return not page.get("cursor")

    def _pages(
        self,
        method: str,
        path: str,
        key: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        cursor: str | None = None
        while True:
            page_params = dict(params or {})
            page_body = dict(body) if body is not None else None
            if cursor is not None:
                if page_body is not None:
                    page_body["cursor"] = cursor
                else:
                    page_params["cursor"] = cursor
            page = self._request(method, path, params=page_params, body=page_body)
            objects: list[dict[str, Any]] = page.get(key, [])
            yield objects
            if self._is_last(page, objects):
                return
            cursor = str(page["cursor"])

    # -- reading -------------------------------------------------------------------------------------

    def payment_params(self) -> dict[str, str]:
        """Query parameters every ListPayments call of this loader carries."""
        return {"begin_time": HISTORY_BEGIN, "sort_order": "ASC", "limit": str(PAGE_LIMIT)}

    def fetch_payments(self, *, updated_since: str | None = None) -> list[dict[str, Any]]:
        """Raw payments, every location (or only the default one), optionally changed since a time."""
        params = self.payment_params()
        if updated_since is not None:
            params["updated_at_begin_time"] = updated_since
        locations: list[str | None] = [None]
        if self.per_location:
            body = self._request("GET", "/v2/locations")
            locations = [str(location["id"]) for location in body["locations"]]
        payments: list[dict[str, Any]] = []
        for location in locations:
            location_params = params if location is None else {**params, "location_id": location}
            for page in self._pages("GET", "/v2/payments", "payments", params=location_params):
                payments.extend(page)
        return payments

    def fetch_items(self) -> list[dict[str, Any]]:
        """Every ITEM catalog object, deleted ones included."""
        body = {"object_types": ["ITEM"], "include_deleted_objects": True, "limit": 1000}
        return [
            obj for page in self._pages("POST", "/v2/catalog/search", "objects", body=body) for obj in page
        ]

    def fetch_customers(self) -> list[dict[str, Any]]:
        """Every customer."""
        params = {"limit": str(PAGE_LIMIT)}
        return [c for page in self._pages("GET", "/v2/customers", "customers", params=params) for c in page]

    # -- converting and writing ------------------------------------------------------------------------

    def payment_rows(self, payments: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Warehouse rows for raw payments, JSON-ready."""
        return [
            payment_row(SquarePayment.model_validate(p), synced_at=SYNCED_AT, message_id=None).model_dump(
                mode="json", by_alias=True
            )
            for p in payments
        ]

    def write(self, spec: TableSpec, rows: list[dict[str, Any]]) -> None:
        """Merge rows into the table through the sink (staging load, MERGE on key, newer wins)."""
        self._batches += 1
        self.sink.write(spec, rows, batch_id=f"{type(self).__name__.lower()}-{self._batches}")

    def sync_payments(self, *, updated_since: str | None = None) -> int:
        """Read payments (all, or changed since ``updated_since``) and write them; returns rows written."""
        rows = self.payment_rows(self.fetch_payments(updated_since=updated_since))
        self.write(SQUARE_PAYMENTS, rows)
        return len(rows)

    def sync_customers(self) -> None:
        """Every customer Square serves, in full (deleted ones are not served, so not touched)."""
        customers = [
            customer_row(SquareCustomer.model_validate(c), synced_at=SYNCED_AT, message_id=None).model_dump(
                mode="json", by_alias=True
            )
            for c in self.fetch_customers()
        ]
        self.write(SQUARE_CUSTOMERS, customers)

    def apply_customer_deleted(self, event: Mapping[str, Any]) -> None:
        """Apply a ``customer.deleted`` event: its customer, marked deleted at the event's ``created_at``."""
        customer = SquareCustomer.model_validate(event["data"]["object"]["customer"])
        deleted_at = datetime.fromisoformat(str(event["created_at"]))
        row = customer_row(customer, synced_at=SYNCED_AT, message_id=None, deleted_at=deleted_at)
        self.write(SQUARE_CUSTOMERS, [row.model_dump(mode="json", by_alias=True)])

    def sync_all(self) -> None:
        """Payments, catalog items and customers, in full."""
        self.sync_payments()
        items = [SquareCatalogObject.model_validate(obj) for obj in self.fetch_items()]
        item_dicts = [
            row.model_dump(mode="json", by_alias=True)
            for item in items
            for row in item_rows(item, synced_at=SYNCED_AT, message_id=None)
        ]
        self.write(SQUARE_ITEMS, item_dicts)
        self.sync_customers()


class SkipsListLocations(CorrectLoader):
    """Bug: never lists locations, so ListPayments returns the main location's payments only."""

    per_location = False


class OmitsBeginTime(CorrectLoader):
    """Bug: no ``begin_time``, so ListPayments returns only the last year."""

    def payment_params(self) -> dict[str, str]:
        """Query parameters without ``begin_time``."""
        params = super().payment_params()
        del params["begin_time"]
        return params


class StopsAtShortPage(CorrectLoader):
    """Bug: treats a page with fewer than ``limit`` payments as the last, though it carries a cursor."""

    def _is_last(self, page: Mapping[str, Any], objects: list[dict[str, Any]]) -> bool:
        return len(objects) < PAGE_LIMIT or not page.get("cursor")


class FloatCents(CorrectLoader):
    """Bug: ``amount / 100`` as float (as the replaced system did), then ``int(dollars * 100)`` cents."""

    def payment_rows(self, payments: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows whose money went through binary floating point."""
        rows = []
        for payment in payments:
            row = payment_row(SquarePayment.model_validate(payment), synced_at=SYNCED_AT, message_id=None)
            data = row.model_dump(mode="json", by_alias=True)
            for column in ("amount", "tip_amount", "total_amount", "refunded_amount"):
                cents = int(getattr(row, column).scaleb(2))
                dollars = cents / 100
                data[column] = str(Decimal(int(dollars * 100)) / 100)
            rows.append(data)
        return rows


class AppendsOnly(CorrectLoader):
    """Bug: loads every batch with WRITE_APPEND, so a changed payment read again becomes a second row."""

    def write(self, spec: TableSpec, rows: list[dict[str, Any]]) -> None:
        """Append rows with a plain load job: no staging, no MERGE."""
        if not rows:
            return
        schema = [bigquery.SchemaField(c.name, c.type, mode=c.mode) for c in spec.columns]
        config = bigquery.LoadJobConfig(schema=schema, write_disposition="WRITE_APPEND")
        table = f"{self.sink.project}.{self.sink.dataset}.{spec.name}"
        self.sink.client.load_table_from_json(rows, table, job_config=config).result(timeout=120)


class DropsDeletedCustomers(CorrectLoader):
    """Bug: deletes a customer's row on ``customer.deleted``, so the warehouse forgets the customer."""

    def apply_customer_deleted(self, event: Mapping[str, Any]) -> None:
        """Delete the event's customer from the table."""
        table = f"{self.sink.project}.{self.sink.dataset}.{SQUARE_CUSTOMERS.name}"
        config = bigquery.QueryJobConfig(
            query_parameters=[bigquery.ScalarQueryParameter("id", "STRING", str(event["data"]["id"]))]
        )
        self.sink.client.query(f"DELETE FROM `{table}` WHERE id = @id", job_config=config).result(timeout=60)
