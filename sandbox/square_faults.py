"""Fault injection for the Square sandbox: latency, hangs, 429s, 500s and 503s (some of them HTML),
and payments served malformed, the way a broken API would serve a record our model refuses.

Malformed payments are picked deterministically from the seed (:func:`pick_malformed`), one in each of
``count`` equal slices of the generated history, and served broken by ListPayments and GetPayment
alone (:func:`malform`); the dataset, the webhooks and the ground truth keep them whole, and the
truth lists them as the rejects the warehouse should hold instead of rows.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from starlette.responses import Response

from sandbox.square_errors import error_response

__all__ = [
    "MALFORMATIONS",
    "FaultInjector",
    "FaultSettings",
    "Malformation",
    "malform",
    "pick_malformed",
]

#: What a load balancer in front of the API answers when the API is down.
_HTML_503 = (
    b"<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
    b"<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n</body>\r\n</html>\r\n"
)


@dataclass
class FaultSettings:
    """Failures injected into ``/v2/*`` responses; rates are probabilities per request."""

    rate_429: float = 0.0
    retry_after_seconds: int = 1
    rate_500: float = 0.0
    rate_503: float = 0.0
    latency_ms: int = 0
    #: Share of requests that hang for ``timeout_hang_seconds`` (longer than a 2 s client timeout).
    timeout_rate: float = 0.0
    timeout_hang_seconds: float = 5.0
    #: Answer the right token with 401 ``ACCESS_TOKEN_REVOKED``.
    token_revoked: bool = False
    #: How many generated payments the API serves malformed (see :func:`pick_malformed`); at most
    #: the generated payments, which the sandbox checks where it knows their number.
    malformed_payments: int = 0

    def update(self, values: dict[str, Any]) -> None:
        """Set the named fields, checking names and types.

        Raises:
            ValueError: on an unknown name or a value of the wrong type or range.
        """
        kinds = {f.name: f.type for f in fields(self)}
        for name, value in values.items():
            if name not in kinds:
                raise ValueError(f"unknown fault {name!r}; known: {sorted(kinds)}")
            kind = str(kinds[name])
            if kind == "bool":
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be a boolean")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number")
            elif value < 0 or ((name.endswith("rate") or name.startswith("rate_")) and value > 1):
                raise ValueError(f"{name} out of range")
            elif kind == "int" and not float(value).is_integer():
                raise ValueError(f"{name} must be a whole number")
            setattr(self, name, int(value) if kind == "int" else value)


class FaultInjector:
    """Draws, per ``/v2/*`` request, whether and how it fails, from a stream seeded by the sandbox seed."""

    def __init__(self, settings: FaultSettings, seed: int) -> None:
        """Inject the faults ``settings`` names (read live, so changes apply to the next request).

        Args:
            settings: the fault settings, shared with the admin endpoint that changes them.
            seed: the sandbox's data seed; the same seed and request order give the same faults.
        """
        self.settings = settings
        self._rng = random.Random(f"{seed}:faults")

    async def response(self) -> Response | None:
        """Wait as configured, then the failure to answer with, or None to serve the request."""
        faults = self.settings
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        # One draw per request for each decision keeps a run reproducible for a given request order.
        hang, roll, html = self._rng.random(), self._rng.random(), self._rng.random()
        if hang < faults.timeout_rate:
            await asyncio.sleep(faults.timeout_hang_seconds)
        if roll < faults.rate_429:
            response = error_response(
                429, "RATE_LIMIT_ERROR", "RATE_LIMITED", "Rate limit exceeded. Retry later."
            )
            response.headers["Retry-After"] = str(faults.retry_after_seconds)
            return response
        roll -= faults.rate_429
        if roll < faults.rate_500:
            return error_response(500, "API_ERROR", "INTERNAL_SERVER_ERROR", "An internal error occurred.")
        roll -= faults.rate_500
        if roll < faults.rate_503:
            if html < 0.5:
                # What a load balancer in front of the API sends: not JSON at all.
                return Response(_HTML_503, status_code=503, media_type="text/html")
            return error_response(
                503, "API_ERROR", "SERVICE_UNAVAILABLE", "The service is temporarily unavailable."
            )
        return None


@dataclass(frozen=True)
class Malformation:
    """One way of breaking a payment: its name, and the field whose validation then fails.

    Attributes:
        kind: ``amount_money_missing`` or ``amount_not_numeric``.
        field: the field path a rejection's reason names (pydantic's ``loc``, dotted).
    """

    kind: str
    field: str


#: The ways a payment is served malformed, taken in turn by the picked payments.
MALFORMATIONS = (
    Malformation("amount_money_missing", "amount_money"),
    Malformation("amount_not_numeric", "amount_money.amount"),
)


def pick_malformed(seed: int, payments: int, count: int) -> dict[int, Malformation]:
    """Which generated payments are served malformed, and how.

    The history is cut into ``count`` slices of equal length, and one payment is drawn in each, so
    they spread over the whole history (every backfill window of a long run meets some); the
    malformations alternate from slice to slice.

    Args:
        seed: the sandbox's data seed; the same seed, payments and count give the same picks.
        payments: how many payments the generated history holds.
        count: how many to pick.

    Returns:
        The picked payment indices, ascending, each with its malformation.

    Raises:
        ValueError: for a negative count, or more than there are payments.
    """
    if not 0 <= count <= payments:
        raise ValueError(f"malformed_payments must be between 0 and the {payments} generated payments")
    rng = random.Random(f"{seed}:malformed:{payments}:{count}")
    picked: dict[int, Malformation] = {}
    for n in range(count):
        low, high = n * payments // count, (n + 1) * payments // count
        picked[rng.randrange(low, high)] = MALFORMATIONS[n % len(MALFORMATIONS)]
    return picked


def malform(payment: Mapping[str, Any], malformation: Malformation) -> dict[str, Any]:
    """A copy of a payment's API JSON broken as ``malformation`` says.

    ``amount_money_missing`` drops ``amount_money``; ``amount_not_numeric`` sends its amount as a
    string of major units (``"19.99"``), which no integer reading accepts.
    """
    broken = dict(payment)
    if malformation.kind == "amount_money_missing":
        del broken["amount_money"]
    elif malformation.kind == "amount_not_numeric":
        cents = int(payment["amount_money"]["amount"])
        broken["amount_money"] = {**payment["amount_money"], "amount": f"{cents // 100}.{cents % 100:02d}"}
    else:
        raise ValueError(f"unknown malformation {malformation.kind!r}")
    return broken
