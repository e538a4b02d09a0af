"""Following a request to its end: ``--wait`` polls the request's messages until none is pending."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from workers.queues import RequestProgress, request_progress

__all__ = ["RequestTimeout", "wait_for_request"]


class RequestTimeout(Exception):
    """The request still had pending messages when the deadline passed."""

    def __init__(self, progress: RequestProgress, timeout_seconds: float) -> None:
        super().__init__(
            f"request {progress.request_id} not finished after {timeout_seconds:.0f} s: "
            f"{progress.pending} pending, {progress.done} done, {progress.dead} dead"
        )
        self.progress = progress


def wait_for_request(
    client: redis.Redis,
    request_id: str,
    *,
    timeout_seconds: float | None = None,
    poll_seconds: float = 0.25,
    on_progress: Callable[[RequestProgress], None] | None = None,
) -> RequestProgress:
    """Block until every message of ``request_id`` is done or dead (none queued, delayed or in flight).

    Args:
        client: Redis client.
        request_id: the request to follow.
        timeout_seconds: give up after this long (``None``: wait for ever).
        poll_seconds: how often to look.
        on_progress: called with the progress after each look.

    Raises:
        RequestTimeout: when ``timeout_seconds`` passes first.
    """
    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    while True:
        progress = request_progress(client, request_id)
        if on_progress is not None:
            on_progress(progress)
        if progress.finished:
            return progress
        if deadline is not None and time.monotonic() >= deadline:
            raise RequestTimeout(progress, timeout_seconds or 0.0)
        time.sleep(poll_seconds)
