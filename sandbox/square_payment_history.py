"""The Square sandbox's payments by index: generated from the seed, changed by the clock, listed.

Payment *i* is computed on demand from ``(seed, i)``, so memory stays flat however many payments
there are; only payments changed or created by the clock are stored. ``created_at`` is strictly
increasing in *i*, except that a few blocks of :data:`TIE_BLOCK` consecutive payments share one
``created_at`` (and one location) so that ties can straddle a page boundary; a few payments sit
exactly at midnight UTC. Base payments that were changed after creation (refunds, late captures,
voids) have ``updated_at`` at most :data:`MAX_LIFECYCLE_MS` after ``created_at``, which lets
``updated_at`` queries look at a bounded window of indices plus the stored overrides.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass

from sandbox.square_money import FLOAT_TRAP_CENTS
from sandbox.square_payment_state import PaymentState
from sandbox.square_seed import B62_ALPHABET, SeedHash, alnum_id, base62
from sandbox.square_time import DAY_MS, HISTORY_MS

__all__ = ["MAX_LIFECYCLE_MS", "TIE_BLOCK", "PaymentHistory", "PaymentQuery"]

#: A generated payment's ``updated_at`` is at most this long after its ``created_at``.
MAX_LIFECYCLE_MS = 10 * DAY_MS
#: Payments come in blocks of this many indices; a few blocks share one ``created_at``.
TIE_BLOCK = 4
#: One block in this many is a tie block.
TIE_ONE_IN = 40
#: Tip percentages applied to tipped card payments.
_TIP_PERCENT = (10, 15, 18, 20)
#: Payment ids end in the index, bijectively scrambled modulo 2**40, so GetPayment is O(1).
_PERM_BITS = 40
_PERM_MOD = 1 << _PERM_BITS
_PERM_MUL = 0x9E3779B97F & (_PERM_MOD - 1) | 1
_PERM_INV = pow(_PERM_MUL, -1, _PERM_MOD)
_CARD_BRANDS = (
    (115, "VISA"),
    (192, "MASTERCARD"),
    (223, "AMERICAN_EXPRESS"),
    (243, "DISCOVER"),
    (250, "JCB"),
    (256, "SQUARE_GIFT_CARD"),
)
_ENTRY_METHODS = ("EMV", "CONTACTLESS", "SWIPED", "KEYED")


@dataclass(frozen=True)
class PaymentQuery:
    """A ListPayments filter with defaults already applied; times are epoch ms, ends exclusive."""

    location_id: str
    begin_ms: int | None = None
    end_ms: int | None = None
    updated_begin_ms: int | None = None
    updated_end_ms: int | None = None
    sort_by_updated: bool = False
    descending: bool = True


class PaymentHistory:
    """Every payment of a seller, by index: the generated history plus the clock's additions and changes."""

    def __init__(
        self,
        seeds: SeedHash,
        *,
        anchor_ms: int,
        payments: int,
        location_ids: list[str],
        customer_ids: list[str],
    ) -> None:
        """Set up the history; nothing is generated until asked for.

        Args:
            seeds: the dataset's seed hash.
            anchor_ms: the clock's start, epoch ms; the generated history lies in the two years before.
            payments: how many payments the generated history holds.
            location_ids: the seller's locations, the main (busiest) one first.
            customer_ids: the customers a payment may name.
        """
        self.seed = seeds.seed
        self.anchor_ms = anchor_ms
        self.base_payments = payments
        # Bound once: these run several times per payment listed.
        self._digest = seeds.digest
        self._mix = seeds.mix
        self._start_ms = anchor_ms - HISTORY_MS
        self._step_ms = max(1, HISTORY_MS // max(1, payments))
        self._extra_created: list[int] = []
        self._extra_cap: list[int] = []
        self._overrides: dict[int, PaymentState] = {}
        #: Location per payment, filled on first use (255 = not yet): one byte each, so listings by
        #: location skip other locations' payments without hashing them again.
        self._location_cache = bytearray(b"\xff") * payments
        #: Bumped on every change so cached query results are never served stale.
        self.generation = 0
        self._materialized: dict[tuple[PaymentQuery, int], list[tuple[int, int]]] = {}
        self.location_ids = location_ids
        self._customer_ids = customer_ids

    # -- payments: time and place ------------------------------------------------------------------

    @property
    def payment_count(self) -> int:
        """Every payment ever made, the clock's new ones included."""
        return self.base_payments + len(self._extra_created)

    def _raw_created(self, i: int) -> int:
        # Strictly increasing: the jitter stays below the minimum gap between slots.
        return self._start_ms + (i * HISTORY_MS) // self.base_payments + self._mix(1, i) % self._step_ms

    def _adjusted_created(self, i: int) -> int:
        raw = self._raw_created(i)
        # The first payment after a midnight may be moved back to exactly that midnight: still after
        # its predecessor, so the order holds.
        if i > 0 and self._raw_created(i - 1) // DAY_MS != raw // DAY_MS and self._mix(2, i) & 1:
            return raw - raw % DAY_MS
        return raw

    def _leader(self, i: int) -> int:
        if i >= self.base_payments:
            return i
        block = i // TIE_BLOCK
        if self._mix(3, block) % TIE_ONE_IN == 0:
            return block * TIE_BLOCK
        return i

    def created_ms(self, i: int) -> int:
        """Payment *i*'s ``created_at`` in epoch ms; non-decreasing in *i*."""
        if i >= self.base_payments:
            return self._extra_created[i - self.base_payments]
        return self._adjusted_created(self._leader(i))

    def location_index(self, i: int) -> int:
        """Which location payment *i* belongs to: 0 (the main one, busiest), 1 or 2."""
        cached = self._location_cache[i]
        if cached != 255:
            return cached
        roll = self._digest(b"l", self._leader(i), 1)[0]
        index = 0 if roll < 140 else 1 if roll < 217 else 2
        self._location_cache[i] = index
        return index

    def first_index_at_or_after(self, ms: int) -> int:
        """The first payment index whose ``created_at`` is at or after ``ms``."""
        return bisect.bisect_left(range(self.payment_count), ms, key=self.created_ms)

    def _tie_order(self, i: int) -> tuple[int, list[int]] | None:
        """For a slot in a tie block: the block's first slot and its members ordered by payment id.

        Payments sharing a ``created_at`` are ordered by id, as Square's ``(created_at, id)`` sort
        does, so the member shown at each slot of a tie block is the one whose id ranks there.
        """
        if i >= self.base_payments:
            return None
        start = (i // TIE_BLOCK) * TIE_BLOCK
        if self._mix(3, i // TIE_BLOCK) % TIE_ONE_IN != 0:
            return None
        members = range(start, min(start + TIE_BLOCK, self.base_payments))
        return start, sorted(members, key=self._member_id)

    def _member(self, i: int) -> int:
        order = self._tie_order(i)
        return i if order is None else order[1][i - order[0]]

    def _member_id(self, member: int) -> str:
        return self._payment_id(member, self._digest(b"i", member, 64))

    def payment_id(self, i: int) -> str:
        """The id of the payment at slot *i*: 22 scrambled characters, then its member index in 7."""
        return self._member_id(self._member(i))

    def _payment_id(self, member: int, ids: bytes) -> str:
        return alnum_id(ids[:18], 22) + base62((member * _PERM_MUL + self.seed) % _PERM_MOD, 7)

    def index_of(self, payment_id: str) -> int | None:
        """The index of ``payment_id``, or None if no such payment exists."""
        if len(payment_id) != 29 or any(char not in B62_ALPHABET for char in payment_id):
            return None
        tail = 0
        for char in payment_id[22:]:
            tail = tail * 62 + B62_ALPHABET.index(char)
        member = ((tail - self.seed) * _PERM_INV) % _PERM_MOD
        if member >= self.payment_count:
            return None
        order = self._tie_order(member)
        i = member if order is None else order[0] + order[1].index(member)
        return i if self.payment_id(i) == payment_id else None

    # -- payments: state ---------------------------------------------------------------------------

    def payment_state(self, i: int) -> PaymentState:
        """Payment *i* as it is now (clock changes included)."""
        override = self._overrides.get(i)
        return override if override is not None else self._base_state(i)

    def _base_state(self, i: int) -> PaymentState:
        member = self._member(i)
        d = self._digest(b"a", member, 32)
        created = self.created_ms(i)
        cap = self.anchor_ms if i < self.base_payments else self._extra_cap[i - self.base_payments]
        ids = self._digest(b"i", member, 64)
        payment_id = self._payment_id(member, ids)
        source = "CARD" if d[10] < 179 else "CASH" if d[10] < 217 else "WALLET" if d[10] < 243 else "EXTERNAL"
        roll = int.from_bytes(d[12:15], "little")
        if roll % 5 == 0:
            amount = FLOAT_TRAP_CENTS[(roll // 5) % len(FLOAT_TRAP_CENTS)]
        else:
            amount = 150 + (roll // 5) % 12_000
        tip = 0
        if source == "CARD" and d[11] < 115:
            tip = max(1, amount * _TIP_PERCENT[d[24] % 4] // 100)
        status_roll = int.from_bytes(d[8:10], "little") % 1000
        card = source in ("CARD", "WALLET")
        small = 200 + d[21] * 12
        spread = int.from_bytes(d[25:29], "little")
        delta, refunded = small, 0
        refund_ids: tuple[str, ...] = ()
        if status_roll < 15 and card:
            status = "FAILED"
        elif status_roll < 40 and card:
            status = "CANCELED"
            delta = 60_000 + spread % (6 * DAY_MS)
        elif status_roll < 60 and source == "CARD":
            status = "APPROVED"
        else:
            status = "COMPLETED"
            if d[22] < 10:
                delta = 3_600_000 + spread % (MAX_LIFECYCLE_MS - 3_600_000)
                refunded = amount + tip if d[23] & 1 else 1 + spread % (amount + tip)
                refund_ids = (f"{payment_id}_{alnum_id(d[25:31], 8)}",)
            elif d[22] < 18:
                delta = 60_000 + spread % (3 * DAY_MS)
        if created + delta >= cap:
            # Too recent for a later change to have happened yet: it stays as created.
            delta, refunded, refund_ids = min(small, max(0, cap - 1 - created)), 0, ()
        customer = None
        if d[15] >= 77 and self._customer_ids:
            customer = self._customer_ids[int.from_bytes(d[16:18], "little") % len(self._customer_ids)]
        brand = last_4 = None
        if source == "CARD":
            brand = next(name for limit, name in _CARD_BRANDS if d[18] < limit)
            last_4 = f"{int.from_bytes(d[19:21], 'little') % 10_000:04d}"
        return PaymentState(
            index=i,
            id=payment_id,
            created_ms=created,
            updated_ms=created + delta,
            status=status,
            amount_cents=amount,
            tip_cents=tip,
            refunded_cents=refunded,
            refund_ids=refund_ids,
            location_id=self.location_ids[self.location_index(i)],
            customer_id=customer,
            source_type=source,
            card_brand=brand,
            last_4=last_4,
            entry_method=_ENTRY_METHODS[d[29] % 4],
            order_id=alnum_id(ids[18:39], 27),
            version_token=alnum_id(ids[39:57], 24),
        )

    def payment_by_id(self, payment_id: str) -> PaymentState | None:
        """The payment with this id, or None."""
        i = self.index_of(payment_id)
        return None if i is None else self.payment_state(i)

    # -- payments: listing -------------------------------------------------------------------------

    def _created_bounds(self, query: PaymentQuery) -> tuple[int, int]:
        lo = 0 if query.begin_ms is None else self.first_index_at_or_after(query.begin_ms)
        hi = self.payment_count if query.end_ms is None else self.first_index_at_or_after(query.end_ms)
        return lo, hi

    def list_payments(
        self, query: PaymentQuery, position: tuple[int, int] | None, size: int
    ) -> tuple[list[PaymentState], tuple[int, int] | None]:
        """One page of payments.

        Args:
            query: the filter, defaults applied.
            position: sort key ``(ms, index)`` of the first payment to return, from the previous
                page, or None for the first page.
            size: how many payments to return at most.

        Returns:
            The page and the sort key of the payment after it (None if there is none).
        """
        if query.sort_by_updated or query.updated_begin_ms is not None or query.updated_end_ms is not None:
            return self._list_materialized(query, position, size)
        lo, hi = self._created_bounds(query)
        wanted = self.location_ids.index(query.location_id) if query.location_id in self.location_ids else -1
        page: list[PaymentState] = []
        if not query.descending:
            i = lo if position is None else max(lo, position[1])
            while i < hi and len(page) < size:
                if self.location_index(i) == wanted:
                    page.append(self.payment_state(i))
                i += 1
            while i < hi and self.location_index(i) != wanted:
                i += 1
            return page, ((self.created_ms(i), i) if i < hi else None)
        i = hi - 1 if position is None else min(hi - 1, position[1])
        while i >= lo and len(page) < size:
            if self.location_index(i) == wanted:
                page.append(self.payment_state(i))
            i -= 1
        while i >= lo and self.location_index(i) != wanted:
            i -= 1
        return page, ((self.created_ms(i), i) if i >= lo else None)

    def _keys(self, query: PaymentQuery) -> list[tuple[int, int]]:
        cached = self._materialized.get((query, self.generation))
        if cached is not None:
            return cached
        lo, hi = self._created_bounds(query)
        if query.updated_begin_ms is not None:
            lo = max(lo, self.first_index_at_or_after(query.updated_begin_ms - MAX_LIFECYCLE_MS))
        if query.updated_end_ms is not None:
            hi = min(hi, self.first_index_at_or_after(query.updated_end_ms))
        wanted = self.location_ids.index(query.location_id) if query.location_id in self.location_ids else -1
        keys: list[tuple[int, int]] = []

        def consider(state: PaymentState) -> None:
            if state.location_id != query.location_id:
                return
            if query.begin_ms is not None and state.created_ms < query.begin_ms:
                return
            if query.end_ms is not None and state.created_ms >= query.end_ms:
                return
            if query.updated_begin_ms is not None and state.updated_ms < query.updated_begin_ms:
                return
            if query.updated_end_ms is not None and state.updated_ms >= query.updated_end_ms:
                return
            keys.append((state.updated_ms if query.sort_by_updated else state.created_ms, state.index))

        for i in range(lo, hi):
            if i not in self._overrides and self.location_index(i) == wanted:
                consider(self._base_state(i))
        for state in self._overrides.values():
            consider(state)
        keys.sort()
        if len(self._materialized) > 8:
            self._materialized.clear()
        self._materialized[(query, self.generation)] = keys
        return keys

    def _list_materialized(
        self, query: PaymentQuery, position: tuple[int, int] | None, size: int
    ) -> tuple[list[PaymentState], tuple[int, int] | None]:
        keys = self._keys(query)
        if not query.descending:
            start = 0 if position is None else bisect.bisect_left(keys, position)
            chosen = keys[start : start + size]
            after = start + size
            following = keys[after] if after < len(keys) else None
        else:
            end = len(keys) if position is None else bisect.bisect_right(keys, position)
            chosen = keys[max(0, end - size) : end][::-1]
            following = keys[end - size - 1] if end - size - 1 >= 0 else None
        return [self.payment_state(i) for _, i in chosen], following

    def iter_payments(self) -> Iterator[PaymentState]:
        """Every payment, in index order, as it is now."""
        for i in range(self.payment_count):
            yield self.payment_state(i)

    # -- payments: changes ---------------------------------------------------------------------------

    def add_payment(self, created_ms: int, *, cap_ms: int) -> str:
        """Append a new payment created at ``created_ms`` and return its id.

        Args:
            created_ms: its ``created_at``, epoch ms, not before the last payment's.
            cap_ms: the clock after the advance that creates it; later changes stay before this.
        """
        self._extra_created.append(created_ms)
        self._extra_cap.append(cap_ms)
        self._location_cache.append(255)
        self.generation += 1
        return self.payment_id(self.payment_count - 1)

    def change_payment(self, state: PaymentState) -> None:
        """Replace payment ``state.index`` with ``state`` from now on."""
        self._overrides[state.index] = state
        self.generation += 1
