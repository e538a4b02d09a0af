"""The Notion client against the real sandbox: pages, 404s, errors, retries and pool-wide pacing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import redis
from prometheus_client import REGISTRY
from pydantic import SecretStr

from sandbox.process import SandboxProcess, start_notion_sandbox
from schemas.notion import NotionPage, page_row
from schemas.settings import ConfigError, Settings
from workers.errors import RateLimited, SourceAuthError, SourceRejected, SourceUnavailable
from workers.sources.notion import NotionClient

TOKEN = "notion-client-test-token-5d1e"
VERSION = "2025-09-03"
ANCHOR = "2026-03-15T12:00:00+00:00"


def counter(name: str) -> float:
    """A ``system="notion"`` counter of ``workers.metrics`` as it stands (0 before its first use)."""
    return REGISTRY.get_sample_value(name, {"system": "notion"}) or 0.0


@pytest.fixture(scope="module")
def notion() -> Iterator[SandboxProcess]:
    """A sandbox whose rate limit never bites."""
    with start_notion_sandbox(
        pages=20, seed=4, anchor=ANCHOR, token=TOKEN, requests_per_second=1000, burst=1000
    ) as sandbox:
        yield sandbox


@pytest.fixture
def make_notion() -> Iterator[Callable[..., SandboxProcess]]:
    """Factory: a private sandbox with the given limits, stopped after the test."""
    started: list[SandboxProcess] = []

    def make(**options: Any) -> SandboxProcess:
        defaults: dict[str, Any] = {"pages": 10, "seed": 4, "anchor": ANCHOR, "token": TOKEN}
        sandbox = start_notion_sandbox(**(defaults | options))
        started.append(sandbox)
        return sandbox

    yield make
    for sandbox in started:
        sandbox.stop()


@pytest.fixture
def make_client(redis_url: str) -> Iterator[Callable[..., NotionClient]]:
    """Factory: a client as one worker process builds it (own HTTP and Redis clients, shared Redis)."""
    closers: list[Callable[[], None]] = []

    def make(sandbox: SandboxProcess, **overrides: Any) -> NotionClient:
        connection = redis.Redis.from_url(redis_url)
        options: dict[str, Any] = {
            "base_url": sandbox.base_url,
            "token": SecretStr(TOKEN),
            "version": VERSION,
            "redis_client": connection,
            "requests_per_second": 1000.0,
            "timeout_seconds": 10.0,
            "request_attempts": 1,
            "max_request_wait_seconds": 30.0,
            "retry_initial_seconds": 0.01,
        }
        client = NotionClient(**(options | overrides))
        closers.extend([client.close, connection.close])
        return client

    yield make
    for close in closers:
        close()


def admin(sandbox: SandboxProcess, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = httpx.request(method, f"{sandbox.base_url}/_sandbox/{path}", json=body, timeout=10)
    response.raise_for_status()
    return response.json()


def a_page(sandbox: SandboxProcess, parent_type: str = "database") -> str:
    page_id: str = next(p["id"] for p in admin(sandbox, "GET", "pages") if p["parent_type"] == parent_type)
    return page_id


def page_answers(sandbox: SandboxProcess) -> dict[str, int]:
    counts: dict[str, int] = admin(sandbox, "GET", "stats")["requests"].get("GET /v1/pages/{page_id}", {})
    return counts


# -- reading pages ---------------------------------------------------------------------------------


def test_get_page_returns_the_page_in_the_configured_version(
    notion: SandboxProcess, make_client: Callable[..., NotionClient]
) -> None:
    page_id = a_page(notion)

    # When the page is read with the data-source version and with the classic one
    current = make_client(notion).get_page(page_id)
    classic = make_client(notion, version="2022-06-28").get_page(page_id)

    # Then both are the page object, its parent as each version renders it, and it makes a row
    assert current is not None
    assert classic is not None
    assert current["object"] == "page"
    assert current["id"] == page_id
    assert current["parent"]["type"] == "data_source_id"
    assert classic["parent"]["type"] == "database_id"
    row = page_row(NotionPage.model_validate(current), synced_at=datetime.now(UTC), message_id="m-1")
    assert row.parent_id == current["parent"]["data_source_id"]


def test_a_page_notion_does_not_serve_is_none(
    notion: SandboxProcess, make_client: Callable[..., NotionClient]
) -> None:
    assert make_client(notion).get_page(str(uuid.uuid4())) is None


def test_a_404_that_is_not_object_not_found_is_rejected(redis_url: str) -> None:
    # Given a server answering 404 with a page that is not Notion's (a wrong base URL, a proxy)
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, text="<html>Not Found</html>")

    connection = redis.Redis.from_url(redis_url)
    client = NotionClient(
        base_url="http://notion.invalid",
        token=SecretStr(TOKEN),
        version=VERSION,
        redis_client=connection,
        requests_per_second=100,
        timeout_seconds=5,
        request_attempts=1,
        transport=httpx.MockTransport(handler),
    )
    try:
        # Then the page is not taken for deleted: the request is refused for good
        with pytest.raises(SourceRejected) as caught:
            client.get_page(str(uuid.uuid4()))
    finally:
        client.close()
        connection.close()
    assert caught.value.status_code == 404
    assert type(caught.value) is SourceRejected


# -- errors ----------------------------------------------------------------------------------------


def test_auth_failure_is_permanent_and_never_shows_the_token(
    notion: SandboxProcess, make_client: Callable[..., NotionClient]
) -> None:
    wrong = "wrong-notion-token-a9f3c1"
    client = make_client(notion, token=SecretStr(wrong))

    with pytest.raises(SourceAuthError) as caught:
        client.get_page(a_page(notion))

    error = caught.value
    assert error.status_code == 401
    assert error.system == "notion"
    assert error.request_id
    assert "unauthorized" in str(error)
    for text in (str(error), repr(error), repr(client), repr(client.pacer)):
        assert wrong not in text
        assert TOKEN not in text


def test_bad_requests_are_permanent(notion: SandboxProcess, make_client: Callable[..., NotionClient]) -> None:
    # An unknown version and a malformed id are both 400s: rejected, not an auth problem
    with pytest.raises(SourceRejected) as bad_version:
        make_client(notion, version="1999-01-01").get_page(a_page(notion))
    with pytest.raises(SourceRejected) as bad_id:
        make_client(notion).get_page("not-a-page-id")
    for caught in (bad_version, bad_id):
        assert type(caught.value) is SourceRejected
        assert caught.value.status_code == 400
        assert "validation_error" in str(caught.value)


def test_5xx_is_retried_in_place_then_raised_as_retryable(
    notion: SandboxProcess, make_client: Callable[..., NotionClient]
) -> None:
    page_id = a_page(notion, "page")
    admin(notion, "POST", "stats/reset")

    # Given the next two requests fail, a client with three attempts gets the page
    admin(notion, "POST", "faults", {"fail_next": 2, "fail_status": 503})
    page = make_client(notion, request_attempts=3).get_page(page_id)
    assert page is not None
    assert page["id"] == page_id
    assert page_answers(notion) == {"503": 2, "200": 1}

    # Given the next request fails, a client with one attempt raises a retryable error
    admin(notion, "POST", "faults", {"fail_next": 1, "fail_status": 500})
    with pytest.raises(SourceUnavailable) as caught:
        make_client(notion, request_attempts=1).get_page(page_id)
    assert caught.value.status_code == 500
    assert "internal_server_error" in str(caught.value)


def test_429_waits_for_retry_after_then_succeeds(
    make_notion: Callable[..., SandboxProcess], make_client: Callable[..., NotionClient]
) -> None:
    # Given an integration allowed one request per second, and a client that does not pace itself
    sandbox = make_notion(requests_per_second=1, burst=1)
    client = make_client(sandbox, request_attempts=3, max_request_wait_seconds=5)
    page_id = a_page(sandbox)
    assert client.get_page(page_id) is not None
    limited_before = counter("possync_source_rate_limited_total")

    # When it asks again at once
    started = time.monotonic()
    page = client.get_page(page_id)

    # Then it was told to wait, waited at least Retry-After, and got the page
    assert page is not None
    assert time.monotonic() - started >= 1.0
    assert page_answers(sandbox) == {"200": 2, "429": 1}
    assert counter("possync_source_rate_limited_total") == limited_before + 1


def test_retry_after_beyond_the_longest_wait_fails_fast_for_the_whole_pool(
    make_notion: Callable[..., SandboxProcess], make_client: Callable[..., NotionClient]
) -> None:
    # Given an integration allowed one request every ten seconds, and two workers that wait 2 s at most
    sandbox = make_notion(requests_per_second=0.1, burst=1)
    first, second = (make_client(sandbox, request_attempts=3, max_request_wait_seconds=2) for _ in range(2))
    page_id = a_page(sandbox)
    assert first.get_page(page_id) is not None

    # When the first asks again, it is told to come back in 10 s: it raises at once, not retrying
    started = time.monotonic()
    with pytest.raises(RateLimited) as caught:
        first.get_page(page_id)
    assert caught.value.retry_after_seconds is not None
    assert 5 < caught.value.retry_after_seconds <= 10
    assert caught.value.status_code == 429

    # And the other worker now waits for the pool's pause without asking Notion
    with pytest.raises(RateLimited) as paused:
        second.get_page(page_id)
    assert paused.value.retry_after_seconds is not None
    assert paused.value.retry_after_seconds > 5
    assert time.monotonic() - started < 2
    assert page_answers(sandbox) == {"200": 1, "429": 1}


def test_two_workers_share_the_rate_without_429s(
    make_notion: Callable[..., SandboxProcess], make_client: Callable[..., NotionClient]
) -> None:
    # Given an integration allowed 10 requests per second with a burst of 3, and two workers
    # (own HTTP and Redis connections) each configured for the pool's 10 per second
    rate = 10.0
    sandbox = make_notion(pages=12, requests_per_second=rate, burst=3)
    clients = [make_client(sandbox, requests_per_second=rate) for _ in range(2)]
    page_ids = [p["id"] for p in admin(sandbox, "GET", "pages")]
    throttled_before = counter("possync_source_throttle_seconds_total")
    limited_before = counter("possync_source_rate_limited_total")

    def fetch_all(client: NotionClient) -> int:
        # A failure propagates out of ``pool.map`` and fails the test with its own traceback.
        return sum(client.get_page(page_ids[index % len(page_ids)]) is not None for index in range(15))

    # When both fetch 15 pages at once
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        fetched = sum(pool.map(fetch_all, clients))
    elapsed = time.monotonic() - started

    # Then all 30 arrived, spaced to the pool's rate: no 429 after the first second, none at all
    # in fact, and the sandbox saw them no faster than the rate
    assert fetched == 30
    stats = admin(sandbox, "GET", "stats")
    assert stats["pacing"]["rate_limited_after_first_second"] == 0
    assert stats["rate_limited"] == 0
    assert stats["pacing"]["accepted_per_second_after_burst"] <= rate * 1.1
    assert elapsed >= 29 / rate * 0.95
    assert counter("possync_source_throttle_seconds_total") > throttled_before + 1.0
    assert counter("possync_source_rate_limited_total") == limited_before


# -- settings --------------------------------------------------------------------------------------


def test_from_settings(notion: SandboxProcess, redis_client: redis.Redis) -> None:
    settings = Settings(
        notion_base_url=notion.base_url,
        notion_token=SecretStr(TOKEN),
        notion_requests_per_second=100,
        notion_request_attempts=1,
    )
    with NotionClient.from_settings(settings, redis_client) as client:
        page = client.get_page(a_page(notion))
    assert page is not None
    assert page["parent"]["type"] == "data_source_id"  # the default Notion-Version, 2025-09-03

    with pytest.raises(ConfigError, match="POSSYNC_NOTION_TOKEN"):
        NotionClient.from_settings(Settings(notion_token=None), redis_client)
