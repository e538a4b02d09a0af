"""One Square payment's state in integer cents, rendered as API JSON and truth, and how it later changes.

A change comes either from the clock (:func:`mutate_payment`, drawn at random) or from an admin
request (:func:`update_payment`, chosen by the caller); both give the same kinds of change.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

from sandbox.square_money import money
from sandbox.square_seed import alnum_id
from sandbox.square_time import format_ms

__all__ = ["PAYMENT_TRANSITIONS", "PaymentState", "mutate_payment", "update_payment"]

_CARD_STATUS = {"COMPLETED": "CAPTURED", "APPROVED": "AUTHORIZED", "CANCELED": "VOIDED", "FAILED": "FAILED"}
_WALLET_STATUS = {"COMPLETED": "CAPTURED", "APPROVED": "AUTHORIZED", "CANCELED": "VOIDED", "FAILED": "FAILED"}
#: The statuses a payment in each status may be updated to: an approved payment is captured or
#: voided; a completed one stays completed and is refunded (in part or in full). The others are final.
PAYMENT_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "APPROVED": ("COMPLETED", "CANCELED"),
    "COMPLETED": ("COMPLETED",),
}


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
            "amount_money": money(self.amount_cents),
        }
        if self.tip_cents:
            payment["tip_money"] = money(self.tip_cents)
        payment["total_money"] = money(self.total_cents)
        if self.refunded_cents:
            payment["refunded_money"] = money(self.refunded_cents)
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
                "buyer_supplied_money": money(supplied),
                "change_back_money": money(supplied - self.total_cents),
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


def mutate_payment(state: PaymentState, rng: random.Random, updated_ms: int) -> PaymentState | None:
    """A later change to ``state`` at ``updated_ms``: a refund, a capture or a void; None if none applies.

    Args:
        state: the payment as it is now.
        rng: the clock advance's random stream (drawn from in a fixed order).
        updated_ms: when the change happens, epoch ms.
    """
    token = alnum_id(rng.getrandbits(144).to_bytes(18, "little"), 24)
    if state.status == "COMPLETED" and state.refunded_cents < state.total_cents:
        remaining = state.total_cents - state.refunded_cents
        amount = remaining if rng.random() < 0.4 else rng.randint(1, remaining)
        refund_id = f"{state.id}_{alnum_id(rng.getrandbits(48).to_bytes(6, 'little'), 8)}"
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


def update_payment(
    state: PaymentState,
    *,
    updated_ms: int,
    version_token: str,
    refund_id: str,
    status: str | None = None,
    refund_cents: int | None = None,
) -> PaymentState:
    """A chosen change to ``state`` at ``updated_ms``: the kinds :func:`mutate_payment` draws, on request.

    With no ``status``, the natural next step is taken: an approved payment is captured in full, a
    completed one is refunded (``refund_cents``, by default half of what is left, at least a cent).

    Args:
        state: the payment as it is now.
        updated_ms: when the change happens, epoch ms; after ``state.updated_ms``.
        version_token: the changed payment's new ``version_token``.
        refund_id: the id a refund gets (unused by a capture or a void).
        status: the status to move to (see :data:`PAYMENT_TRANSITIONS`), or None for the next step.
        refund_cents: how much to refund, cents; only for a completed payment.

    Raises:
        ValueError: for a change the payment's status does not allow, a refund of an amount outside
            one cent to what is left, or ``updated_ms`` not after the payment's last change.
    """
    if updated_ms <= state.updated_ms:
        raise ValueError("a change must come after the payment's updated_at")
    target = status or "COMPLETED"
    allowed = PAYMENT_TRANSITIONS.get(state.status, ())
    if target not in allowed:
        can = f"only to {' or '.join(allowed)}" if allowed else "no longer"
        raise ValueError(f"a {state.status} payment can change {can}, not to {target}")
    if state.status != "COMPLETED":
        if refund_cents is not None:
            raise ValueError(f"only a COMPLETED payment can be refunded, not a {state.status} one")
        return replace(state, status=target, updated_ms=updated_ms, version_token=version_token)
    remaining = state.total_cents - state.refunded_cents
    if remaining == 0:
        raise ValueError("the payment is refunded in full already")
    amount = max(1, remaining // 2) if refund_cents is None else refund_cents
    if not 1 <= amount <= remaining:
        raise ValueError(f"refund_cents must be between 1 and the {remaining} cents left to refund")
    return replace(
        state,
        updated_ms=updated_ms,
        refunded_cents=state.refunded_cents + amount,
        refund_ids=(*state.refund_ids, refund_id),
        version_token=version_token,
    )
