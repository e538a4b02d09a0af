"""The Square sandbox's dataset: deterministic payments, catalog and customers, plus a mutation clock.

Everything derives from ``(seed, anchor, counts)`` and, after start-up, from the sequence of
:meth:`SquareDataset.advance` calls. Payment *i* is computed on demand from ``(seed, i)``, so memory
stays flat however many payments there are; only payments changed or created by the clock are stored.
Money is modelled in integer cents throughout and the ground truth (:meth:`SquareDataset.truth_payments`
and friends) is read from that model, never from the API JSON.

Payment ``created_at`` is strictly increasing in *i*, except that a few blocks of
:data:`TIE_BLOCK` consecutive payments share one ``created_at`` (and one location) so that ties can
straddle a page boundary; a few payments sit exactly at midnight UTC. Base payments that were
changed after creation (refunds, late captures, voids) have ``updated_at`` at most
:data:`MAX_LIFECYCLE_MS` after ``created_at``, which lets ``updated_at`` queries look at a bounded
window of indices plus the stored overrides.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "DAY_MS",
    "FLOAT_TRAP_CENTS",
    "HISTORY_MS",
    "LOOKBACK_MS",
    "MAX_LIFECYCLE_MS",
    "TIE_BLOCK",
    "AdvanceResult",
    "PaymentQuery",
    "PaymentState",
    "SquareDataset",
    "format_ms",
    "parse_rfc3339_ms",
]

#: Milliseconds in a day.
DAY_MS = 86_400_000
#: How far back payments, catalog and customers go from the anchor (two years).
HISTORY_MS = 730 * DAY_MS
#: ListPayments' default ``begin_time`` is the clock minus this (one year).
LOOKBACK_MS = 365 * DAY_MS
#: A generated payment's ``updated_at`` is at most this long after its ``created_at``.
MAX_LIFECYCLE_MS = 10 * DAY_MS
#: Payments come in blocks of this many indices; a few blocks share one ``created_at``.
TIE_BLOCK = 4
#: One block in this many is a tie block.
TIE_ONE_IN = 40
#: Amounts whose dollar value binary floating point cannot hold: ``int(cents / 100 * 100) != cents``.
FLOAT_TRAP_CENTS = (29, 57, 58, 113, 115, 201, 435, 1005, 1999, 2001, 4035)
#: Tip percentages applied to tipped card payments.
_TIP_PERCENT = (10, 15, 18, 20)
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
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
_CARD_STATUS = {"COMPLETED": "CAPTURED", "APPROVED": "AUTHORIZED", "CANCELED": "VOIDED", "FAILED": "FAILED"}
_WALLET_STATUS = {"COMPLETED": "CAPTURED", "APPROVED": "AUTHORIZED", "CANCELED": "VOIDED", "FAILED": "FAILED"}
_ENTRY_METHODS = ("EMV", "CONTACTLESS", "SWIPED", "KEYED")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_M64 = (1 << 64) - 1


_DAY_PREFIX: dict[int, str] = {}
#: base64's two non-alphanumeric characters, mapped to letters so ids stay ``[A-Za-z0-9]``.
_ALNUM = bytes.maketrans(b"+/", b"xQ")


def format_ms(ms: int) -> str:
    """Format epoch milliseconds the way Square does: RFC 3339, UTC, milliseconds, ``Z``."""
    day, rest = divmod(ms, DAY_MS)
    prefix = _DAY_PREFIX.get(day)
    if prefix is None:
        # A date per day, cached: formatting dominates listing otherwise.
        prefix = _DAY_PREFIX[day] = f"{_EPOCH + timedelta(days=day):%Y-%m-%d}T"
    seconds, millis = divmod(rest, 1000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return f"{prefix}{hour:02d}:{minute:02d}:{second:02d}.{millis:03d}Z"


def _alnum(raw: bytes, width: int) -> str:
    """``width`` characters of ``[A-Za-z0-9]`` from hash bytes (enough bytes: 3 per 4 characters)."""
    return base64.b64encode(raw).translate(_ALNUM)[:width].decode()


def _upper(raw: bytes, width: int) -> str:
    """``width`` characters of ``[A-Z2-7]`` from hash bytes (5 per 8 characters)."""
    return base64.b32encode(raw)[:width].decode()


def parse_rfc3339_ms(text: str) -> int:
    """Parse an RFC 3339 timestamp to epoch milliseconds; a value without offset is UTC.

    Raises:
        ValueError: if ``text`` is not a timestamp.
    """
    moment = datetime.fromisoformat(text.strip().replace("z", "Z"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _b62(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        chars.append(_B62[digit])
    return "".join(reversed(chars))


def _money(cents: int) -> dict[str, Any]:
    return {"amount": cents, "currency": "USD"}


@dataclass(frozen=True, slots=True)
class PaymentState:
    """One payment's current state in integer cents: the single source of both API JSON and truth."""

    index: int
    id: str
    created_ms: int
    updated_ms: int
    status: str
    amount_cents: int
    tip_cents: int
    refunded_cents: int
    refund_ids: tuple[str, ...]
    location_id: str
    customer_id: str | None
    source_type: str
    card_brand: str | None
    last_4: str | None
    entry_method: str
    order_id: str
    version_token: str

    @property
    def total_cents(self) -> int:
        """``amount + tip``: Square's ``total_money``."""
        return self.amount_cents + self.tip_cents

    @property
    def receipt_url(self) -> str | None:
        """Square issues no receipt for a failed payment."""
        return None if self.status == "FAILED" else f"https://squareup.com/receipt/preview/{self.id}"

    def to_api(self) -> dict[str, Any]:
        """The payment as Square's ``Payment`` JSON object."""
        payment: dict[str, Any] = {
            "id": self.id,
            "created_at": format_ms(self.created_ms),
            "updated_at": format_ms(self.updated_ms),
            "amount_money": _money(self.amount_cents),
        }
        if self.tip_cents:
            payment["tip_money"] = _money(self.tip_cents)
        payment["total_money"] = _money(self.total_cents)
        if self.refunded_cents:
            payment["refunded_money"] = _money(self.refunded_cents)
        payment["status"] = self.status
        payment["source_type"] = self.source_type
        if self.source_type == "CARD":
            timeline = {"authorized_at": format_ms(self.created_ms)}
            if self.status == "COMPLETED":
                timeline["captured_at"] = format_ms(
                    self.updated_ms if self.refunded_cents == 0 else self.created_ms
                )
            elif self.status == "CANCELED":
                timeline["voided_at"] = format_ms(self.updated_ms)
            payment["card_details"] = {
                "status": _CARD_STATUS[self.status],
                "card": {
                    "card_brand": self.card_brand,
                    "last_4": self.last_4,
                    "exp_month": 1 + self.index % 12,
                    "exp_year": 2027 + self.index % 5,
                    "fingerprint": f"sq-1-{self.id[:20]}",
                    "card_type": "CREDIT" if self.index % 3 else "DEBIT",
                    "prepaid_type": "NOT_PREPAID",
                    "bin": f"4{self.index % 100_000:05d}",
                },
                "entry_method": self.entry_method,
                "cvv_status": "CVV_NOT_CHECKED",
                "avs_status": "AVS_NOT_CHECKED",
                "statement_description": "SQ *POSSYNC SANDBOX",
                "card_payment_timeline": timeline,
            }
        elif self.source_type == "CASH":
            supplied = -(-self.total_cents // 500) * 500
            payment["cash_details"] = {
                "buyer_supplied_money": _money(supplied),
                "change_back_money": _money(supplied - self.total_cents),
            }
        elif self.source_type == "WALLET":
            payment["wallet_details"] = {"status": _WALLET_STATUS[self.status], "brand": "CASH_APP"}
        else:
            payment["external_details"] = {"type": "OTHER", "source": "Sandbox voucher"}
        payment["location_id"] = self.location_id
        payment["order_id"] = self.order_id
        if self.customer_id is not None:
            payment["customer_id"] = self.customer_id
        if self.refund_ids:
            payment["refund_ids"] = list(self.refund_ids)
        payment["receipt_number"] = self.id[:4]
        if self.status != "FAILED":
            payment["receipt_url"] = self.receipt_url
        payment["version_token"] = self.version_token
        return payment

    def to_truth(self) -> dict[str, Any]:
        """The payment's ground-truth row."""
        return {
            "id": self.id,
            "created_at": format_ms(self.created_ms),
            "updated_at": format_ms(self.updated_ms),
            "status": self.status,
            "amount_cents": self.amount_cents,
            "tip_cents": self.tip_cents,
            "total_cents": self.total_cents,
            "refunded_cents": self.refunded_cents,
            "currency": "USD",
            "customer_id": self.customer_id,
            "location_id": self.location_id,
            "order_id": self.order_id,
            "source_type": self.source_type,
            "card_brand": self.card_brand,
            "receipt_url": self.receipt_url,
        }


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


@dataclass(frozen=True)
class AdvanceResult:
    """What one clock advance did."""

    now: str
    created: list[str]
    changed: list[str]


class SquareDataset:
    """A seller's Square data, generated deterministically and changed only by :meth:`advance`."""

    def __init__(
        self,
        *,
        seed: int = 7,
        anchor: datetime,
        payments: int = 100_184,
        customers: int = 1_732,
        items: int = 500,
    ) -> None:
        """Build the dataset.

        Args:
            seed: any integer; the same seed, anchor and counts give the same data.
            anchor: the clock's starting "now" (timezone-aware); history lies before it.
            payments: payments generated over the two years before the anchor.
            customers: customer profiles.
            items: catalog items (each with one to three variations).
        """
        if payments < 0 or customers < 0 or items < 0:
            raise ValueError("counts must not be negative")
        if anchor.tzinfo is None:
            raise ValueError("anchor must be timezone-aware")
        self.seed = seed
        self.anchor_ms = parse_rfc3339_ms(anchor.isoformat())
        self.now_ms = self.anchor_ms
        self.base_payments = payments
        self._key = hashlib.blake2b(f"possync-square:{seed}".encode(), digest_size=32).digest()
        self._salt = int.from_bytes(self._key[:8], "little")
        self._start_ms = self.anchor_ms - HISTORY_MS
        self._step_ms = max(1, HISTORY_MS // max(1, payments))
        self._extra_created: list[int] = []
        self._extra_cap: list[int] = []
        self._overrides: dict[int, PaymentState] = {}
        #: Location per payment, filled on first use (255 = not yet): one byte each, so listings by
        #: location skip other locations' payments without hashing them again.
        self._location_cache = bytearray(b"\xff") * payments
        self._advances = 0
        #: Bumped on every change so cached query results are never served stale.
        self.generation = 0
        self._materialized: dict[tuple[PaymentQuery, int], list[tuple[int, int]]] = {}
        self.locations = self._make_locations()
        self.location_ids = [location["id"] for location in self.locations]
        self.customers, self.customer_truth = self._make_customers(customers)
        self._customer_ids = [customer["id"] for customer in self.customers]
        self.catalog, self.item_truth = self._make_catalog(items)
        self.catalog_latest_ms = max((entry[1] for entry in self.catalog), default=self.anchor_ms)

    # -- hashing -----------------------------------------------------------------------------------

    def _digest(self, tag: bytes, i: int, size: int = 8) -> bytes:
        return hashlib.blake2b(tag + i.to_bytes(8, "little"), key=self._key, digest_size=size).digest()

    def _h(self, tag: bytes, i: int) -> int:
        return int.from_bytes(self._digest(tag, i), "little")

    def _mix(self, tag: int, i: int) -> int:
        """A cheap 64-bit hash (splitmix64's finaliser) for the hot per-index decisions."""
        x = (i * 0x9E3779B97F4A7C15 + self._salt + tag * 0xD1B54A32D192ED03) & _M64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
        return x ^ (x >> 31)

    def _rng(self, tag: str) -> random.Random:
        return random.Random(f"{self.seed}:{tag}")

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
        return _alnum(ids[:18], 22) + _b62((member * _PERM_MUL + self.seed) % _PERM_MOD, 7)

    def index_of(self, payment_id: str) -> int | None:
        """The index of ``payment_id``, or None if no such payment exists."""
        if len(payment_id) != 29 or any(char not in _B62 for char in payment_id):
            return None
        tail = 0
        for char in payment_id[22:]:
            tail = tail * 62 + _B62.index(char)
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
                refund_ids = (f"{payment_id}_{_alnum(d[25:31], 8)}",)
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
            order_id=_alnum(ids[18:39], 27),
            version_token=_alnum(ids[39:57], 24),
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

    # -- the clock ---------------------------------------------------------------------------------

    def advance(self, *, seconds: int, new_payments: int = 0, changed_payments: int = 0) -> AdvanceResult:
        """Move the clock forward, creating payments and changing existing ones inside the interval.

        About a third of the changed payments (at least one) were created over a year ago, which a
        ListPayments call without ``begin_time`` never shows.

        Raises:
            ValueError: on negative arguments, or changes asked for in an empty interval.
        """
        if seconds < 0 or new_payments < 0 or changed_payments < 0:
            raise ValueError("seconds, new_payments and changed_payments must not be negative")
        if seconds < 1 and (new_payments or changed_payments):
            raise ValueError("creating or changing payments needs at least one second")
        rng = self._rng(f"advance:{self._advances}")
        self._advances += 1
        old, new = self.now_ms, self.now_ms + seconds * 1000
        existing = self.payment_count
        floor = self.created_ms(existing - 1) if existing else old
        created_ids: list[str] = []
        for moment in sorted(rng.randint(old + 1, new) for _ in range(new_payments)):
            self._extra_created.append(max(moment, floor))
            self._extra_cap.append(new)
            self._location_cache.append(255)
            created_ids.append(self.payment_id(self.payment_count - 1))
        changed_ids: list[str] = []
        if changed_payments and existing:
            cut = self.first_index_at_or_after(old - LOOKBACK_MS)
            old_quota = min(cut, max(1, changed_payments // 3))
            chosen: set[int] = set()
            attempts = 0
            while len(chosen) < changed_payments and attempts < 200 * changed_payments:
                attempts += 1
                pool_hi = cut if len(chosen) < old_quota and cut > 0 else existing
                i = rng.randrange(pool_hi)
                if i in chosen:
                    continue
                mutated = self._mutate(self.payment_state(i), rng, rng.randint(old + 1, new))
                if mutated is None:
                    continue
                chosen.add(i)
                self._overrides[i] = mutated
                changed_ids.append(mutated.id)
        self.now_ms = new
        self.generation += 1
        return AdvanceResult(now=format_ms(new), created=created_ids, changed=changed_ids)

    @staticmethod
    def _mutate(state: PaymentState, rng: random.Random, updated_ms: int) -> PaymentState | None:
        token = _alnum(rng.getrandbits(144).to_bytes(18, "little"), 24)
        if state.status == "COMPLETED" and state.refunded_cents < state.total_cents:
            remaining = state.total_cents - state.refunded_cents
            amount = remaining if rng.random() < 0.4 else rng.randint(1, remaining)
            refund_id = f"{state.id}_{_alnum(rng.getrandbits(48).to_bytes(6, 'little'), 8)}"
            return replace(
                state,
                updated_ms=updated_ms,
                refunded_cents=state.refunded_cents + amount,
                refund_ids=(*state.refund_ids, refund_id),
                version_token=token,
            )
        if state.status == "APPROVED":
            if rng.random() < 0.7:
                # A capture for less than was authorised changes amount_money.
                captured = max(1, state.amount_cents - rng.randint(1, max(1, state.amount_cents // 10)))
                return replace(
                    state,
                    status="COMPLETED",
                    amount_cents=captured,
                    updated_ms=updated_ms,
                    version_token=token,
                )
            return replace(state, status="CANCELED", updated_ms=updated_ms, version_token=token)
        return None

    # -- other resources ---------------------------------------------------------------------------

    def _make_locations(self) -> list[dict[str, Any]]:
        names = ("Main Street", "Harbour Kiosk", "Airport Stand")
        merchant = "M" + _upper(self._digest(b"merchant", 0, 16), 12)
        locations = []
        for n, name in enumerate(names):
            locations.append(
                {
                    "id": "L" + _upper(self._digest(b"location", n, 16), 12),
                    "name": f"Sandbox {name}",
                    "address": {
                        "address_line_1": f"{100 + n} Example Road",
                        "locality": "Springfield",
                        "administrative_district_level_1": "OR",
                        "postal_code": "97477",
                        "country": "US",
                    },
                    "timezone": "America/Los_Angeles",
                    "capabilities": ["CREDIT_CARD_PROCESSING"],
                    "status": "ACTIVE",
                    "created_at": format_ms(self._start_ms - (3 - n) * 30 * DAY_MS),
                    "merchant_id": merchant,
                    "country": "US",
                    "language_code": "en-US",
                    "currency": "USD",
                    "business_name": "Possync Sandbox Goods",
                    "type": "PHYSICAL",
                }
            )
        return locations

    def _make_customers(self, count: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        rng = self._rng("customers")
        given = ("Ada", "Bo", "Cy", "Dee", "Eli", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kit", "Lou")
        sources = ("THIRD_PARTY", "DIRECTORY", "INSTANT_PROFILE", "IMPORT", "LOYALTY", "APPOINTMENTS")
        groups = ["GRP" + _upper(self._digest(b"group", n, 16), 10) for n in range(3)]
        customers, truth = [], []
        for n in range(count):
            created = (
                self._start_ms
                + (n * HISTORY_MS) // max(1, count)
                + rng.randrange(HISTORY_MS // max(1, count))
            )
            updates = 0 if rng.random() < 0.5 else rng.randint(1, 5)
            updated = (
                created if updates == 0 else min(self.anchor_ms - 1, created + rng.randrange(200 * DAY_MS))
            )
            updated = max(updated, created)
            customer_id = _upper(self._digest(b"customer", n, 16), 26)
            first = given[rng.randrange(len(given))]
            family = f"Synthetic{n:05d}"
            customer: dict[str, Any] = {
                "id": customer_id,
                "created_at": format_ms(created),
                "updated_at": format_ms(updated),
                "given_name": first,
                "family_name": family,
                "email_address": f"{first.lower()}.{family.lower()}@example.com",
                "phone_number": f"+1-555-01{n % 100:02d}",
                "preferences": {"email_unsubscribed": rng.random() < 0.1},
                "creation_source": sources[rng.randrange(len(sources))],
                "version": updates,
            }
            if rng.random() < 0.4:
                customer["reference_id"] = f"REF-{n:06d}"
            group_ids = [groups[rng.randrange(3)]] if rng.random() < 0.2 else []
            if group_ids:
                customer["group_ids"] = group_ids
            customers.append(customer)
            truth.append(
                {
                    "id": customer_id,
                    "created_at": customer["created_at"],
                    "updated_at": customer["updated_at"],
                    "version": updates,
                    "creation_source": customer["creation_source"],
                    "reference_id": customer.get("reference_id"),
                    "group_ids": group_ids,
                }
            )
        return customers, truth

    def _presence(self, rng: random.Random) -> dict[str, Any]:
        roll = rng.random()
        if roll < 0.85:
            return {"present_at_all_locations": True}
        if roll < 0.93:
            return {
                "present_at_all_locations": True,
                "absent_at_location_ids": [rng.choice(self.location_ids)],
            }
        if roll < 0.98:
            return {
                "present_at_all_locations": False,
                "present_at_location_ids": [rng.choice(self.location_ids)],
            }
        return {"present_at_all_locations": False}

    def _make_catalog(
        self, count: int
    ) -> tuple[list[tuple[str, int, bool, dict[str, Any]]], list[dict[str, Any]]]:
        """Catalog objects as ``(type, updated_ms, is_deleted, json)`` in list order, and the item truth."""
        rng = self._rng("catalog")
        adjectives = ("Plain", "Roasted", "Iced", "Spiced", "Tiny", "Grand", "Smoked", "Golden", "Wild")
        nouns = ("Mug", "Bagel", "Tote", "Candle", "Notebook", "Scarf", "Teapot", "Cookie", "Lamp", "Soap")
        sizes = ("Regular", "Large", "Small")
        objects: list[tuple[str, int, bool, dict[str, Any]]] = []
        categories = []
        for n in range(12 if count else 0):
            updated = self._start_ms + rng.randrange(30 * DAY_MS)
            category_id = _upper(self._digest(b"category", n, 16), 24)
            categories.append(category_id)
            category = {
                "type": "CATEGORY",
                "id": category_id,
                "updated_at": format_ms(updated),
                "version": updated,
                "is_deleted": False,
                "present_at_all_locations": True,
                "category_data": {"name": f"Sandbox category {n + 1}", "is_top_level": True},
            }
            objects.append(("CATEGORY", updated, False, category))
        truth: list[dict[str, Any]] = []
        variation_entries: list[tuple[str, int, bool, dict[str, Any]]] = []
        for n in range(count):
            item_id = _upper(self._digest(b"item", n, 16), 24)
            updated = self._start_ms + rng.randrange(HISTORY_MS - DAY_MS)
            deleted = rng.random() < 0.06
            if deleted:
                updated = updated + rng.randrange(max(1, self.anchor_ms - 1 - updated))
            presence = self._presence(rng)
            category_id = categories[rng.randrange(len(categories))]
            variable = rng.random() < 0.08
            name = f"{adjectives[rng.randrange(len(adjectives))]} {nouns[rng.randrange(len(nouns))]} {n + 1}"
            stamp = {"updated_at": format_ms(updated), "version": updated, "is_deleted": deleted, **presence}
            variations = []
            for v in range(rng.randint(1, 3)):
                variation_id = _upper(self._digest(b"variation", n * 4 + v, 16), 24)
                price = None
                if not variable:
                    roll = rng.random()
                    price = (
                        FLOAT_TRAP_CENTS[rng.randrange(len(FLOAT_TRAP_CENTS))]
                        if roll < 0.3
                        else rng.randint(99, 9999)
                    )
                data: dict[str, Any] = {
                    "item_id": item_id,
                    "name": sizes[v],
                    "sku": f"SBX-{n + 1:05d}-{v + 1}",
                    "ordinal": v,
                    "pricing_type": "VARIABLE_PRICING" if variable else "FIXED_PRICING",
                }
                if price is not None:
                    data["price_money"] = _money(price)
                data["sellable"] = True
                data["stockable"] = True
                variation = {
                    "type": "ITEM_VARIATION",
                    "id": variation_id,
                    **stamp,
                    "item_variation_data": data,
                }
                variations.append(variation)
                variation_entries.append(("ITEM_VARIATION", updated, deleted, variation))
                available = not deleted and (
                    bool(presence["present_at_all_locations"])
                    or bool(presence.get("present_at_location_ids"))
                )
                truth.append(
                    {
                        "variation_id": variation_id,
                        "item_id": item_id,
                        "name": name,
                        "variation_name": sizes[v],
                        "category_id": category_id,
                        "sku": data["sku"],
                        "price_cents": price,
                        # Only a price has a currency: a variable-priced variation has neither.
                        "currency": "USD" if price is not None else None,
                        "available": available,
                        "is_deleted": deleted,
                        "version": updated,
                        "updated_at": format_ms(updated),
                    }
                )
            item = {
                "type": "ITEM",
                "id": item_id,
                **stamp,
                "item_data": {
                    "name": name,
                    "category_id": category_id,
                    "categories": [{"id": category_id, "ordinal": 0}],
                    "reporting_category": {"id": category_id, "ordinal": 0},
                    "variations": variations,
                    "product_type": "REGULAR",
                    "is_archived": False,
                },
            }
            objects.append(("ITEM", updated, deleted, item))
        return objects + variation_entries, truth

    def catalog_objects(
        self, types: set[str], *, include_deleted: bool, updated_after_ms: int | None = None
    ) -> list[dict[str, Any]]:
        """Catalog objects of the given types, in a stable order."""
        return [
            obj
            for kind, updated, deleted, obj in self.catalog
            if kind in types
            and (include_deleted or not deleted)
            and (updated_after_ms is None or updated > updated_after_ms)
        ]

    def info(self) -> dict[str, Any]:
        """The clock, seed, counts and locations, for ``/_sandbox/info``."""
        return {
            "now": format_ms(self.now_ms),
            "anchor": format_ms(self.anchor_ms),
            "seed": self.seed,
            "counts": {
                "payments": self.payment_count,
                "customers": len(self.customers),
                "items": sum(1 for kind, *_ in self.catalog if kind == "ITEM"),
                "variations": len(self.item_truth),
                "locations": len(self.locations),
            },
            "locations": list(self.location_ids),
            "main_location_id": self.location_ids[0],
        }
