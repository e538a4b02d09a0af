"""Deterministic randomness for the Square sandbox: keyed digests, a fast mix, named RNG streams, ids.

Every generated value derives from the seed through :class:`SeedHash`, so the same seed always
gives the same data; the id helpers turn digest bytes into Square-looking identifiers.
"""

from __future__ import annotations

import base64
import hashlib
import random

__all__ = ["B62_ALPHABET", "SeedHash", "alnum_id", "base62", "upper_id"]

#: The digits of :func:`base62`, in value order.
B62_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_M64 = (1 << 64) - 1
#: base64's two non-alphanumeric characters, mapped to letters so ids stay ``[A-Za-z0-9]``.
_ALNUM = bytes.maketrans(b"+/", b"xQ")


class SeedHash:
    """Hashes and random streams keyed by one integer seed."""

    __slots__ = ("_key", "_salt", "seed")

    def __init__(self, seed: int) -> None:
        """Derive the hashing key from ``seed`` (any integer)."""
        self.seed = seed
        self._key = hashlib.blake2b(f"possync-square:{seed}".encode(), digest_size=32).digest()
        self._salt = int.from_bytes(self._key[:8], "little")

    def digest(self, tag: bytes, i: int, size: int = 8) -> bytes:
        """``size`` bytes of keyed BLAKE2b over ``tag`` and the index ``i``."""
        return hashlib.blake2b(tag + i.to_bytes(8, "little"), key=self._key, digest_size=size).digest()

    def mix(self, tag: int, i: int) -> int:
        """A cheap 64-bit hash (splitmix64's finaliser) for the hot per-index decisions."""
        x = (i * 0x9E3779B97F4A7C15 + self._salt + tag * 0xD1B54A32D192ED03) & _M64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
        return x ^ (x >> 31)

    def rng(self, tag: str) -> random.Random:
        """A random stream of its own for ``tag``, independent of every other stream's use."""
        return random.Random(f"{self.seed}:{tag}")


def alnum_id(raw: bytes, width: int) -> str:
    """``width`` characters of ``[A-Za-z0-9]`` from hash bytes (enough bytes: 3 per 4 characters)."""
    return base64.b64encode(raw).translate(_ALNUM)[:width].decode()


def upper_id(raw: bytes, width: int) -> str:
    """``width`` characters of ``[A-Z2-7]`` from hash bytes (5 per 8 characters)."""
    return base64.b32encode(raw)[:width].decode()


def base62(value: int, width: int) -> str:
    """The low ``width`` base-62 digits of ``value``, most significant first."""
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        chars.append(B62_ALPHABET[digit])
    return "".join(reversed(chars))
