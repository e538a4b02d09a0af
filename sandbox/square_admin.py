"""The Square sandbox's admin endpoints under ``/_sandbox/``: info, clock, faults, settings, stats, truth.

They need no auth and are never faulted: tests and the demo use them to move the clock, inject
failures, count requests and read the ground truth as NDJSON. The payments truth leaves out the
payments the ``malformed_payments`` fault serves broken (no warehouse can load them); the rejects
truth (``/_sandbox/truth/rejects``) lists them instead, one line per record ``_possync_rejects``
should hold: ``{"source", "stream", "record_key", "field", "malformation", "created_at"}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, replace
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from sandbox.square_config import FINAL_PAGE_MODES, SquareSandboxConfig
from sandbox.square_data import AdvanceResult, SquareDataset, format_ms
from sandbox.square_faults import FaultSettings

__all__ = ["SandboxAdmin"]


def _json(body: Any, status: int = 200) -> Response:
    """A plain JSON response (admin answers are not in Square's shape)."""
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


class SandboxAdmin:
    """The admin handlers, over the same dataset, settings and counters the Square endpoints use."""

    def __init__(
        self,
        data: SquareDataset,
        config: SquareSandboxConfig,
        faults: FaultSettings,
        stats: dict[str, dict[str, int]],
        on_advance: Callable[[AdvanceResult], None] | None = None,
    ) -> None:
        """Administer a running sandbox.

        Args:
            data: the dataset (its clock is moved here).
            config: the sandbox configuration (pagination settings are changed in place).
            faults: the fault settings (changed in place).
            stats: request counts by endpoint template and status, kept by the sandbox.
            on_advance: told what each clock advance did (the webhooks publish it).
        """
        self.data = data
        self.config = config
        self.faults = faults
        self.stats = stats
        self.on_advance = on_advance

    def routes(self) -> list[Route]:
        """The ``/_sandbox/*`` routes."""
        admin: list[tuple[str, Callable[[Request], Awaitable[Response]], list[str]]] = [
            ("/_sandbox/info", self.admin_info, ["GET"]),
            ("/_sandbox/clock/advance", self.admin_advance, ["POST"]),
            ("/_sandbox/faults", self.admin_faults, ["GET", "POST"]),
            ("/_sandbox/settings", self.admin_settings, ["GET", "POST"]),
            ("/_sandbox/stats", self.admin_stats, ["GET"]),
            ("/_sandbox/truth/{kind}", self.admin_truth, ["GET"]),
        ]
        return [Route(path, handler, methods=methods) for path, handler, methods in admin]

    async def admin_info(self, request: Request) -> Response:
        """The clock, seed, counts, location ids, and how many payments are served malformed."""
        return _json(
            {
                **self.data.info(),
                "final_page_mode": self.config.final_page_mode,
                "malformed_payments": self.faults.malformed_payments,
            }
        )

    async def admin_advance(self, request: Request) -> Response:
        """Move the clock: ``{"seconds", "new_payments", "changed_payments"}``."""
        try:
            body = orjson.loads(await request.body() or b"{}")
            result = self.data.advance(
                seconds=int(body.get("seconds", 0)),
                new_payments=int(body.get("new_payments", 0)),
                changed_payments=int(body.get("changed_payments", 0)),
            )
        except (ValueError, TypeError, AttributeError) as exc:
            return _json({"error": str(exc)}, status=400)
        if self.on_advance is not None:
            self.on_advance(result)
        return _json(asdict(result))

    async def admin_faults(self, request: Request) -> Response:
        """Read (GET) or change (POST, partial) the fault settings."""
        if request.method == "POST":
            try:
                body = orjson.loads(await request.body() or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("body must be a JSON object")
                # Tried on a copy first: a refused change (a malformed count beyond the payments
                # among them, which only the dataset can tell) leaves every fault as it was.
                trial = replace(self.faults)
                trial.update(body)
                self.data.malformed(trial.malformed_payments)
                self.faults.update(body)
            except ValueError as exc:
                return _json({"error": str(exc)}, status=400)
        return _json(asdict(self.faults))

    async def admin_settings(self, request: Request) -> Response:
        """Read (GET) or change (POST) ``final_page_mode`` and ``short_page_rate``."""
        if request.method == "POST":
            body = orjson.loads(await request.body() or b"{}")
            mode = body.get("final_page_mode", self.config.final_page_mode)
            rate = body.get("short_page_rate", self.config.short_page_rate)
            if mode not in FINAL_PAGE_MODES or not isinstance(rate, int | float) or not 0 <= rate <= 1:
                return _json(
                    {"error": f"final_page_mode in {FINAL_PAGE_MODES}, short_page_rate in [0, 1]"}, 400
                )
            self.config.final_page_mode, self.config.short_page_rate = mode, float(rate)
        return _json(
            {"final_page_mode": self.config.final_page_mode, "short_page_rate": self.config.short_page_rate}
        )

    async def admin_stats(self, request: Request) -> Response:
        """Request counts by endpoint template and status."""
        return _json({"requests": self.stats, "total": sum(sum(s.values()) for s in self.stats.values())})

    async def admin_truth(self, request: Request) -> Response:
        """Ground truth as NDJSON: ``payments`` (malformed ones left out), ``items``, ``customers``
        (deleted ones included) or ``rejects`` (the malformed payments)."""
        kind = request.path_params["kind"]
        if kind == "payments":
            count = self.data.payment_count
            return StreamingResponse(self._payment_lines(count), media_type="application/x-ndjson")
        rows = {
            "items": self.data.item_truth,
            "customers": self.data.customer_truth,
            "rejects": self._reject_truth(),
        }.get(kind)
        if rows is None:
            return _json(
                {"error": f"unknown truth {kind!r}: payments, items, customers or rejects"}, status=404
            )
        return Response(
            b"".join(orjson.dumps(row) + b"\n" for row in rows), media_type="application/x-ndjson"
        )

    def _reject_truth(self) -> list[dict[str, Any]]:
        """One row per record ``_possync_rejects`` should hold: the malformed payments, by index."""
        rows = []
        for index, malformation in self.data.malformed(self.faults.malformed_payments).items():
            state = self.data.payment_state(index)
            rows.append(
                {
                    "source": "square",
                    "stream": "payments",
                    "record_key": state.id,
                    "field": malformation.field,
                    "malformation": malformation.kind,
                    "created_at": format_ms(state.created_ms),
                }
            )
        return rows

    async def _payment_lines(self, count: int) -> AsyncIterator[bytes]:
        # Read once: a stream that straddles a change of the fault stays consistent with itself.
        malformed = self.data.malformed(self.faults.malformed_payments)
        for start in range(0, count, 2000):
            chunk = [
                self.data.payment_state(i).to_truth()
                for i in range(start, min(count, start + 2000))
                if i not in malformed
            ]
            yield b"".join(orjson.dumps(row) + b"\n" for row in chunk)
            # Let other requests in between chunks of a long stream.
            await asyncio.sleep(0)
