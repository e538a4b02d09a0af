"""Square's streams for the sync engine: how to read each stream and how a record becomes rows.

``payments`` are read per location (configured, else ListLocations) and backfilled in windows of
creation time per location; ``items`` (the catalog) and ``customers`` are read whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel

from schemas.messages import BackfillRequest, BackfillWindow
from schemas.settings import Settings
from schemas.square import (
    SquareCatalogObject,
    SquareCustomer,
    SquarePayment,
    customer_row,
    item_rows,
    payment_row,
)
from workers.errors import InvalidPayload
from workers.sources.square import SquareClient, rfc3339
from workers.spans import spans

__all__ = ["SquareStreams"]


class SquareStreams:
    """The engine's view of Square (see ``workers.sync.StreamSource``)."""

    name: str = "square"
    streams: tuple[str, ...] = ("payments", "items", "customers")

    def __init__(self, client: SquareClient, settings: Settings) -> None:
        self._client = client
        self._settings = settings

    def convert(
        self, stream: str, raw: dict[str, Any], synced_at: datetime, message_id: str | None
    ) -> list[BaseModel]:
        """One raw record as rows; non-ITEM catalog objects and items without variations give none."""
        if stream == "payments":
            payment = SquarePayment.model_validate(raw)
            return [payment_row(payment, synced_at=synced_at, message_id=message_id)]
        if stream == "items":
            catalog_object = SquareCatalogObject.model_validate(raw)
            return list(item_rows(catalog_object, synced_at=synced_at, message_id=message_id))
        if stream == "customers":
            customer = SquareCustomer.model_validate(raw)
            return [customer_row(customer, synced_at=synced_at, message_id=message_id)]
        raise ValueError(f"unknown square stream {stream!r}")

    def fetch(self, stream: str, record_id: str) -> dict[str, Any]:
        """One payment or customer by id, as the API serves it now (for a webhook's upsert).

        Raises:
            ValueError: for the items stream (a catalog change is synced incrementally instead).
            WorkerError: from the client (a 404 is a :class:`~workers.errors.SourceRejected`).
        """
        if stream == "payments":
            return self._client.get_payment(record_id)
        if stream == "customers":
            return self._client.get_customer(record_id)
        raise ValueError(f"square {stream} are not fetched one by one")

    def _locations(self) -> list[str]:
        """Configured location ids, else every location the seller has (inactive ones keep history)."""
        if self._settings.square_location_ids:
            return list(self._settings.square_location_ids)
        return [str(location["id"]) for location in self._client.list_locations() if location.get("id")]

    def incremental_pages(self, stream: str, since: datetime | None) -> Iterator[list[dict[str, Any]]]:
        """Pages of what changed since ``since`` (everything when ``None``)."""
        client = self._client
        if stream == "payments":
            # begin_time (created_at) is explicit: changes to payments created over a year ago count too.
            history_start = datetime.fromisoformat(self._settings.square_history_start)
            for location_id in self._locations():
                yield from client.iter_payments(
                    location_id=location_id,
                    begin_time=history_start,
                    updated_at_begin_time=since,
                    sort_field="UPDATED_AT",
                )
        elif stream == "items":
            yield from client.iter_catalog(begin_time=since)
        else:
            yield from client.iter_customers(updated_since=since)

    def plan_windows(self, request: BackfillRequest) -> tuple[list[BackfillWindow], dict[str, Any]]:
        """Payments: windows of ``request.window_days`` over [since, until) for every location;
        items and customers: one whole-stream window each."""
        streams = request.selected_streams
        locations = self._locations() if "payments" in streams else []
        width = timedelta(days=request.window_days)
        windows: list[BackfillWindow] = []
        for stream in streams:
            base = {
                "request_id": request.request_id,
                "backfill_id": request.backfill_id,
                "source": self.name,
                "stream": stream,
            }
            if stream != "payments":
                windows.append(BackfillWindow(**base, window_id=stream))
                continue
            for location_id in locations:
                for start, end in spans(request.since, request.until, width):
                    window_id = f"payments:{location_id}:{rfc3339(start)}:{rfc3339(end)}"
                    windows.append(
                        BackfillWindow(
                            **base, window_id=window_id, location_id=location_id, start=start, end=end
                        )
                    )
        return windows, {"locations": locations}

    def window_pages(self, window: BackfillWindow) -> Iterator[list[dict[str, Any]]]:
        """Pages of one window: a location's payments created in [start, end), or a whole stream."""
        if window.stream == "payments":
            if not window.location_id or window.start is None or window.end is None:
                raise InvalidPayload(f"payments window {window.window_id} needs location_id, start and end")
            yield from self._client.iter_payments(
                location_id=window.location_id, begin_time=window.start, end_time=window.end
            )
        elif window.stream == "items":
            yield from self._client.iter_catalog()
        else:
            yield from self._client.iter_customers()
