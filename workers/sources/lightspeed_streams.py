"""Lightspeed's streams for the sync engine: ``sales`` and ``items`` of one account.

Incremental reads go by the update timestamp (``updatetime`` for sales, ``timeStamp`` for items)
from the checkpoint less the lookback. Backfills split sales into windows of creation time
(``createTime``, which never changes, read in ``saleID`` order so a page boundary cannot move);
items are read whole in one window.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel

from schemas.lightspeed import LightspeedItem, LightspeedSale, product_row, transaction_row
from schemas.messages import BackfillRequest, BackfillWindow
from workers.errors import InvalidPayload
from workers.sources.lightspeed import LightspeedClient, ls_timestamp
from workers.spans import spans

__all__ = ["LightspeedStreams"]


class LightspeedStreams:
    """The engine's view of Lightspeed (see ``workers.sync.StreamSource``)."""

    name: str = "lightspeed"
    streams: tuple[str, ...] = ("sales", "items")

    def __init__(self, client: LightspeedClient) -> None:
        self._client = client

    def convert(
        self, stream: str, raw: dict[str, Any], synced_at: datetime, message_id: str | None
    ) -> list[BaseModel]:
        """One raw record as its row."""
        if stream == "sales":
            sale = LightspeedSale.model_validate(raw)
            return [transaction_row(sale, synced_at=synced_at, message_id=message_id)]
        if stream == "items":
            item = LightspeedItem.model_validate(raw)
            return [product_row(item, synced_at=synced_at, message_id=message_id)]
        raise ValueError(f"unknown lightspeed stream {stream!r}")

    def incremental_pages(self, stream: str, since: datetime | None) -> Iterator[list[dict[str, Any]]]:
        """Pages of what changed since ``since`` (everything when ``None``)."""
        if stream == "sales":
            return self._client.iter_sales(updated_since=since)
        return self._client.iter_items(updated_since=since)

    def plan_windows(self, request: BackfillRequest) -> tuple[list[BackfillWindow], dict[str, Any]]:
        """Sales: windows of ``request.window_days`` of creation time over [since, until), on whole
        seconds (Lightspeed's resolution); items: one whole-stream window."""
        # Whole seconds: each window's inclusive upper bound is its end less one second.
        since = request.since.replace(microsecond=0)
        until = request.until.replace(microsecond=0)
        if request.until.microsecond:
            until += timedelta(seconds=1)
        windows: list[BackfillWindow] = []
        for stream in request.selected_streams:
            base = {
                "request_id": request.request_id,
                "backfill_id": request.backfill_id,
                "source": self.name,
                "stream": stream,
            }
            if stream != "sales":
                windows.append(BackfillWindow(**base, window_id=stream))
                continue
            for start, end in spans(since, until, timedelta(days=request.window_days)):
                window_id = f"sales:{ls_timestamp(start)}:{ls_timestamp(end)}"
                windows.append(BackfillWindow(**base, window_id=window_id, start=start, end=end))
        return windows, {}

    def window_pages(self, window: BackfillWindow) -> Iterator[list[dict[str, Any]]]:
        """Pages of one window: sales created in [start, end), or every item."""
        if window.stream == "sales":
            if window.start is None or window.end is None:
                raise InvalidPayload(f"sales window {window.window_id} needs start and end")
            return self._client.iter_sales(created_in=(window.start, window.end))
        return self._client.iter_items(updated_since=None)
