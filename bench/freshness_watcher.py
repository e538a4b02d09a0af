"""Payments arriving in the Square sandbox, and the watcher that sees them land in the warehouse.

:func:`create_payment` makes one payment visible in the sandbox now and records the sandbox's own
wall-clock instant for it (an :class:`Arrival`). :class:`Watcher`, a thread, reads the payments
table's metadata every poll and, when it changed (or :data:`REQUERY_SECONDS` passed), queries for
every payment not yet seen, all in one query; a payment is seen at the end of the first query
returning it. :func:`polling_cost` measures what that polling costs the emulator.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from bench.freshness_system import STOP_SECONDS
from bench.processes import cpu_seconds

__all__ = ["REQUERY_SECONDS", "Arrival", "Watcher", "create_payment", "polling_cost"]

#: The watcher queries the ids at least this often, seconds, even when the metadata seems unchanged
#: (a safeguard: the emulator changes it with every write).
REQUERY_SECONDS = 5.0
#: Queries the polling cost is measured over.
_COST_QUERIES = 20
_PAYMENT_ID = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass
class Arrival:
    """A new payment: when the sandbox made it visible, and when the watcher first saw it."""

    payment_id: str
    #: Wall-clock instants, epoch seconds: made visible by the sandbox, first seen in the warehouse.
    visible_at: float
    seen_at: float | None = None

    @property
    def freshness_seconds(self) -> float:
        return math.inf if self.seen_at is None else self.seen_at - self.visible_at


class Watcher(threading.Thread):
    """Polls the warehouse for the payments not yet seen, one query for all of them."""

    def __init__(self, client: Any, table: str, poll_seconds: float) -> None:
        super().__init__(name="freshness-watcher", daemon=True)
        self._client = client
        self._poll_seconds = poll_seconds
        #: The payments table, ``project.dataset.table``.
        self.table = table
        self._pending: dict[str, Arrival] = {}
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        #: How long each query for the ids took (the metadata read before it included), seconds.
        self.cycles_seconds: list[float] = []
        #: Metadata reads and id queries made.
        self.reads = 0
        self.error: Exception | None = None
        self._rows: int | None = None
        self._queried = -math.inf

    def add(self, arrival: Arrival) -> None:
        if not _PAYMENT_ID.match(arrival.payment_id):
            raise ValueError(f"unexpected payment id {arrival.payment_id!r}")
        with self._lock:
            self._pending[arrival.payment_id] = arrival

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=STOP_SECONDS)

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                started = time.monotonic()
                self._poll()
                elapsed = time.monotonic() - started
                self._stop_event.wait(max(0.0, self._poll_seconds - elapsed))
        except Exception as exc:
            # The phase waiting on this thread fails with it; the thread's own traceback goes to stderr.
            self.error = exc
            raise

    def query(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the warehouse holds now."""
        # Ids are checked to be plain tokens (add), so they are inlined: no emulator feature needed.
        listed = ", ".join(f"'{payment_id}'" for payment_id in ids)
        rows = self._client.query_and_wait(f"SELECT id FROM `{self.table}` WHERE id IN ({listed})")
        return {str(row["id"]) for row in rows}

    def _poll(self) -> None:
        with self._lock:
            ids = list(self._pending)
        if not ids:
            return
        started = time.monotonic()
        self.reads += 1
        # The table's metadata is about a sixth of a query's cost to the emulator and changes with
        # every write: the ids are only queried after one (or 5 s after the last query).
        rows = self._client.get_table(self.table).num_rows
        if rows == self._rows and started - self._queried < REQUERY_SECONDS:
            return
        self._rows, self._queried = rows, time.monotonic()
        found = self.query(ids)
        seen_at = time.time()
        self.cycles_seconds.append(time.monotonic() - started)
        with self._lock:
            for payment_id in found:
                arrival = self._pending.pop(payment_id, None)
                if arrival is not None:
                    arrival.seen_at = seen_at


def create_payment(http: httpx.Client) -> Arrival:
    """One new payment in the sandbox now, its clock first moved on to the wall clock's second."""
    now = http.get("/_sandbox/info").json()["now"]
    lag_seconds = int(time.time() - datetime.fromisoformat(now.replace("Z", "+00:00")).timestamp())
    if lag_seconds >= 1:
        http.post("/_sandbox/clock/advance", json={"seconds": lag_seconds}).raise_for_status()
    answer = http.post("/_sandbox/payments/create", json={"count": 1})
    answer.raise_for_status()
    body = answer.json()
    return Arrival(body["payments"][0]["id"], datetime.fromisoformat(body["visible_at"]).timestamp())


def polling_cost(client: Any, table: str, emulator_pid: int) -> dict[str, float]:
    """What the watcher's metadata read and id query each cost the emulator, measured alone, ms.

    Returns:
        ``emulator_cpu_ms_per_read``, ``wall_ms_per_read``, ``emulator_cpu_ms_per_query`` and
        ``wall_ms_per_query``.
    """
    watcher = Watcher(client, table, 0)
    ids = [f"bench-absent-{n}" for n in range(60)]
    cost: dict[str, float] = {}
    for name, read in (
        ("read", lambda: client.get_table(table)),
        ("query", lambda: watcher.query(ids)),
    ):
        read()  # the first one warms the emulator's caches
        cpu, started = cpu_seconds(emulator_pid), time.monotonic()
        for _ in range(_COST_QUERIES):
            read()
        cost[f"emulator_cpu_ms_per_{name}"] = (cpu_seconds(emulator_pid) - cpu) / _COST_QUERIES * 1000
        cost[f"wall_ms_per_{name}"] = (time.monotonic() - started) / _COST_QUERIES * 1000
    return cost
