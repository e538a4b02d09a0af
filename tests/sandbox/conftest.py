"""Square sandbox fixtures: real sandbox processes on loopback, and a correct paginator to read them.

- ``square`` (session): a small sandbox (3,000 payments) nobody changes; read-only tests share it.
- ``square_default`` (session): the default dataset (100,184 payments), for tests about its shape.
- ``make_square`` (function): factory for a private small sandbox a test may change (faults, clock).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from sandbox.process import SandboxProcess, start_lightspeed_sandbox, start_square_sandbox

#: The fixed clock start: every test sees the same data for the same seed.
ANCHOR = "2026-03-15T12:00:00+00:00"
TOKEN = "sandbox-test-token"
#: The small dataset shared by read-only tests.
SMALL: dict[str, Any] = {
    "payments": 3_000,
    "customers": 250,
    "items": 120,
    "seed": 11,
    "anchor": ANCHOR,
    "token": TOKEN,
}
#: Well before any generated payment, to read the full history.
EPOCH_BEGIN = "2000-01-01T00:00:00Z"


def client_for(sandbox: SandboxProcess, **headers: str) -> httpx.Client:
    """An httpx client sending the sandbox's bearer token."""
    return httpx.Client(
        base_url=sandbox.base_url,
        headers={"Authorization": f"Bearer {sandbox.token}", **headers},
        timeout=30.0,
    )


def paginate(
    client: httpx.Client,
    method: str,
    path: str,
    key: str,
    *,
    params: dict[str, Any] | None = None,
    body: dict[str, Any] | None = None,
    pages: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Read every page the way a correct Square client does.

    It follows ``cursor`` until the key is absent or empty, never takes a short page for the last
    one, and accepts an empty ``{}`` page. Every raw page body is appended to ``pages`` if given.
    """
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(100_000):
        if method == "GET":
            query = dict(params or {})
            if cursor:
                query["cursor"] = cursor
            response = client.get(path, params=query)
        else:
            payload = dict(body or {})
            if cursor:
                payload["cursor"] = cursor
            response = client.post(path, json=payload)
        assert response.status_code == 200, response.text
        page = response.json()
        if pages is not None:
            pages.append(page)
        found.extend(page.get(key, []))
        cursor = page.get("cursor")
        if not cursor:
            return found
    raise AssertionError("pagination never ended")


def all_payments(client: httpx.Client, locations: list[str], **params: Any) -> list[dict[str, Any]]:
    """Every payment of every location, full history."""
    found: list[dict[str, Any]] = []
    for location in locations:
        query = {"location_id": location, "begin_time": EPOCH_BEGIN, **params}
        found += paginate(client, "GET", "/v2/payments", "payments", params=query)
    return found


@pytest.fixture(scope="session")
def square() -> Iterator[SandboxProcess]:
    """The shared small sandbox; tests must not change it."""
    with start_square_sandbox(**SMALL) as sandbox:
        yield sandbox


@pytest.fixture(scope="session")
def square_default() -> Iterator[SandboxProcess]:
    """The default-size dataset (100,184 payments, 3 locations), read-only."""
    with start_square_sandbox(anchor=ANCHOR, token=TOKEN) as sandbox:
        yield sandbox


@pytest.fixture
def make_square() -> Iterator[Callable[..., SandboxProcess]]:
    """Factory: ``make_square(**options)`` starts a private small sandbox, stopped after the test."""
    started: list[SandboxProcess] = []

    def make(**options: Any) -> SandboxProcess:
        sandbox = start_square_sandbox(**{**SMALL, **options})
        started.append(sandbox)
        return sandbox

    yield make
    for sandbox in started:
        sandbox.stop()


#: A small Lightspeed dataset: the sandbox starts in a fraction of a second.
LIGHTSPEED_SMALL: dict[str, Any] = {
    "sales": 700,
    "items": 60,
    "seed": 5,
    "anchor": "2026-03-15T12:00:00+00:00",
}


@pytest.fixture
def make_lightspeed() -> Iterator[Callable[..., SandboxProcess]]:
    """Factory: ``make_lightspeed(**options)`` starts a private small Lightspeed sandbox, stopped after
    the test."""
    started: list[SandboxProcess] = []

    def make(**options: Any) -> SandboxProcess:
        sandbox = start_lightspeed_sandbox(**{**LIGHTSPEED_SMALL, **options})
        started.append(sandbox)
        return sandbox

    yield make
    for sandbox in started:
        sandbox.stop()


def lightspeed_client_for(sandbox: SandboxProcess, token: str | None = None) -> httpx.Client:
    """An httpx client for a Lightspeed sandbox sending a bearer token (the start-up one by default)."""
    headers = {"Authorization": f"Bearer {token or sandbox.token}"}
    return httpx.Client(base_url=sandbox.base_url, headers=headers, timeout=30.0)
