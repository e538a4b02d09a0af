"""Waiting in tests: poll a predicate until it holds or a deadline passes, never sleep blindly."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_until"]

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout_seconds: float,
    interval_seconds: float = 0.05,
    message: str,
) -> T:
    """Call ``predicate`` until it returns a truthy value, and return that value.

    Exceptions raised by the predicate propagate at once: a broken predicate should fail the
    test with its own traceback, not be mistaken for "not yet".

    Args:
        predicate: called repeatedly with no arguments.
        timeout_seconds: how long to keep trying, seconds.
        interval_seconds: pause between calls, seconds.
        message: what did not happen, for the failure.

    Returns:
        The predicate's first truthy result.

    Raises:
        AssertionError: if the deadline passes first; names ``message`` and the last value seen.
    """
    deadline = time.monotonic() + timeout_seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (waited {timeout_seconds:g} s; last value {value!r})")
        time.sleep(interval_seconds)
