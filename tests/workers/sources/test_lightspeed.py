"""The Lightspeed client against the real sandbox subprocess: pagination, filters, tokens, pacing, errors."""

from __future__ import annotations

import itertools
import threading
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import redis
from pydantic import SecretStr

from sandbox.process import SandboxProcess, start_lightspeed_sandbox
from schemas.messages import BackfillRequest
from workers.errors import SourceAuthError
from workers.sources.lightspeed import PAGE_LIMIT, LightspeedClient
from workers.sources.lightspeed_auth import TokenManager
from workers.sources.lightspeed_pacing import Pacer
from workers.sources.lightspeed_streams import LightspeedStreams

ACCOUNT_ID = "4242"
CLIENT_ID = "possync-sandbox-client"
CLIENT_SECRET = "ls-sandbox-secret-a81f"
REFRESH_TOKEN = "ls-sandbox-refresh-3c07"
ANCHOR = datetime(2025, 6, 1, tzinfo=UTC)


def _start(**options: Any) -> SandboxProcess:
    defaults: dict[str, Any] = {
        "seed": 7,
        "anchor": ANCHOR,
        "sales": 450,
        "items": 230,
        "account_id": ACCOUNT_ID,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "refresh_token": REFRESH_TOKEN,
        "rotate_refresh_tokens": True,
    }
    return start_lightspeed_sandbox(**(defaults | options))


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    # No rotation here: Redis is flushed per test, and with it the rotated refresh token.
    with _start(bucket_size=1000, drip_rate=1000, rotate_refresh_tokens=False) as process:
        yield process


class Recorder:
    """Every request an ``httpx.Client`` made and each response's status."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.statuses: list[int] = []
        self._lock = threading.Lock()

    def on_request(self, request: httpx.Request) -> None:
        with self._lock:
            self.requests.append(request)

    def on_response(self, response: httpx.Response) -> None:
        with self._lock:
            self.statuses.append(response.status_code)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make_client(redis_url: str, recorder: Recorder) -> Iterator[Callable[..., LightspeedClient]]:
    """Factory: a client as one worker process builds it (own HTTP and Redis clients, shared Redis)."""
    closers: list[Callable[[], None]] = []

    def make(sandbox: SandboxProcess, *, request_attempts: int = 1) -> LightspeedClient:
        http = httpx.Client(
            event_hooks={"request": [recorder.on_request], "response": [recorder.on_response]}
        )
        client = redis.Redis.from_url(redis_url)
        closers.extend([http.close, client.close])
        tokens = TokenManager(
            client,
            http,
            token_url=sandbox.base_url + "/auth/oauth/token",
            client_id=CLIENT_ID,
            client_secret=SecretStr(CLIENT_SECRET),
            refresh_token=SecretStr(REFRESH_TOKEN),
            timeout_seconds=10,
        )
        return LightspeedClient(
            http,
            base_url=sandbox.base_url,
            account_id=ACCOUNT_ID,
            tokens=tokens,
            pacer=Pacer(client, scope=f"{ACCOUNT_ID}:{CLIENT_ID}", max_wait_seconds=30),
            timeout_seconds=10,
            request_attempts=request_attempts,
            retry_initial_seconds=0.01,
        )

    yield make
    for close in closers:
        close()


def _truth(sandbox: SandboxProcess, kind: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{sandbox.base_url}/_sandbox/truth/{kind}", timeout=30)
    response.raise_for_status()
    return [orjson.loads(line) for line in response.content.splitlines() if line]


def _stats(sandbox: SandboxProcess) -> dict[str, Any]:
    response = httpx.get(f"{sandbox.base_url}/_sandbox/stats", timeout=30)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def _advance(sandbox: SandboxProcess, **body: int) -> None:
    httpx.post(f"{sandbox.base_url}/_sandbox/clock/advance", json=body, timeout=30).raise_for_status()


def test_every_sale_and_item_is_read_once_following_next_until_it_is_empty(
    sandbox: SandboxProcess, make_client: Callable[..., LightspeedClient], recorder: Recorder
) -> None:
    # Given a client on the sandbox
    client = make_client(sandbox)

    # When every sale and every item is paged
    sales = [sale for page in client.iter_sales(updated_since=None) for sale in page]
    items = [item for page in client.iter_items(updated_since=None) for item in page]

    # Then each was read exactly once, and items came with their prices
    sale_ids = [int(sale["saleID"]) for sale in sales]
    assert len(sale_ids) == len(set(sale_ids))
    assert sorted(sale_ids) == sorted(row["sale_id"] for row in _truth(sandbox, "sales"))
    item_ids = [int(item["itemID"]) for item in items]
    assert sorted(item_ids) == sorted(row["item_id"] for row in _truth(sandbox, "items"))
    assert all(item["Prices"]["ItemPrice"] for item in items)

    # And the first requests carried sort and limit, and later ones were the next URLs as given
    sale_requests = [r for r in recorder.requests if r.url.path.endswith("/Sale.json")]
    assert len(sale_requests) == -(-len(sales) // PAGE_LIMIT) + (len(sales) % PAGE_LIMIT == 0)
    assert sale_requests[0].url.params["sort"] == "updatetime"
    assert all(r.url.params["limit"] == str(PAGE_LIMIT) for r in sale_requests)
    assert all("after" in r.url.params for r in sale_requests[1:])
    item_requests = [r for r in recorder.requests if r.url.path.endswith("/Item.json")]
    assert all(r.url.params["load_relations"] == '["Prices"]' for r in item_requests)


def test_updated_since_reads_only_what_changed_at_or_after_it(
    sandbox: SandboxProcess, make_client: Callable[..., LightspeedClient]
) -> None:
    # Given a moment within the sandbox's year of sales
    truth = _truth(sandbox, "sales")
    times = sorted(row["update_time"] for row in truth)
    since_text = times[len(times) // 2]
    since = datetime.fromisoformat(since_text)
    client = make_client(sandbox)

    # When sales updated since then are read
    sales = [sale for page in client.iter_sales(updated_since=since) for sale in page]

    # Then exactly those at or after it came, in updatetime order
    expected = {row["sale_id"] for row in truth if row["update_time"] >= since_text}
    assert {int(sale["saleID"]) for sale in sales} == expected
    assert [sale["updatetime"] for sale in sales] == sorted(sale["updatetime"] for sale in sales)


def test_an_expired_token_gets_one_refresh_for_the_pool_and_the_read_goes_on(
    make_client: Callable[..., LightspeedClient], redis_client: redis.Redis
) -> None:
    # Given a sandbox whose tokens live 10 minutes and rotate, and four workers holding a token
    with _start(access_token_lifetime_seconds=600, bucket_size=1000, drip_rate=1000) as sandbox:
        clients = [make_client(sandbox) for _ in range(4)]
        next(iter(clients[0].iter_items(updated_since=None)))
        assert _stats(sandbox)["refreshes"] == 1

        # When the token expires and all four read at once
        _advance(sandbox, seconds=601)
        barrier = threading.Barrier(len(clients))

        def read(client: LightspeedClient) -> int:
            barrier.wait()
            return sum(len(page) for page in client.iter_sales(updated_since=None))

        with ThreadPoolExecutor(len(clients)) as pool:
            counts = list(pool.map(read, clients))

        # Then every read finished after exactly one more refresh, and the rotated token is stored
        assert counts == [len(_truth(sandbox, "sales"))] * 4
        assert _stats(sandbox)["refreshes"] == 2
        stored = redis_client.get(f"possync:lightspeed:{CLIENT_ID}:refresh_token")
        assert stored is not None
        assert stored != REFRESH_TOKEN.encode()


def test_a_revoked_refresh_token_fails_permanently_without_leaking_secrets(
    make_client: Callable[..., LightspeedClient],
) -> None:
    # Given a sandbox that has revoked every refresh token
    with _start(bucket_size=1000, drip_rate=1000) as sandbox:
        httpx.post(
            f"{sandbox.base_url}/_sandbox/faults", json={"revoke_refresh_token": True}, timeout=10
        ).raise_for_status()
        client = make_client(sandbox, request_attempts=3)

        # When a read starts
        with pytest.raises(SourceAuthError) as caught:
            next(iter(client.iter_sales(updated_since=None)))

        # Then it fails permanently, naming the fix, with no secret anywhere in it
        assert "POSSYNC_LIGHTSPEED_REFRESH_TOKEN" in str(caught.value)
        text = "".join(traceback.format_exception(caught.value)) + repr(caught.value)
        for secret in (REFRESH_TOKEN, CLIENT_SECRET):
            assert secret not in text


def test_a_refused_refresh_token_is_not_offered_again_until_a_new_one_is_configured(
    make_client: Callable[..., LightspeedClient], redis_client: redis.Redis
) -> None:
    # Given a sandbox that revoked the refresh token, and one worker that met the refusal
    with _start(bucket_size=1000, drip_rate=1000) as sandbox:
        httpx.post(
            f"{sandbox.base_url}/_sandbox/faults", json={"revoke_refresh_token": True}, timeout=10
        ).raise_for_status()
        with pytest.raises(SourceAuthError):
            next(iter(make_client(sandbox).iter_sales(updated_since=None)))

        def token_requests() -> int:
            return sum(_stats(sandbox)["requests"].get("POST /auth/oauth/token", {}).values())

        assert token_requests() == 1

        # When three more workers (fresh processes) try, with several attempts each
        for _ in range(3):
            with pytest.raises(SourceAuthError) as caught:
                next(iter(make_client(sandbox, request_attempts=3).iter_items(updated_since=None)))
            assert "not asking again" in str(caught.value)

        # Then none of them asked the token endpoint: the pool remembers the refusal (as a digest)
        assert token_requests() == 1
        refused = redis_client.get(f"possync:lightspeed:{CLIENT_ID}:refused_refresh_token")
        assert refused is not None
        assert REFRESH_TOKEN.encode() not in refused

        # When an operator configures a new refresh token
        with httpx.Client() as http:
            tokens = TokenManager(
                redis_client,
                http,
                token_url=sandbox.base_url + "/auth/oauth/token",
                client_id=CLIENT_ID,
                client_secret=SecretStr(CLIENT_SECRET),
                refresh_token=SecretStr("a-newly-authorised-refresh-token"),
                timeout_seconds=10,
            )
            # Then it is offered (this sandbox refuses it too, but it was asked)
            with pytest.raises(SourceAuthError):
                tokens.access_token()
        assert token_requests() == 2


def test_backfill_windows_tile_the_history_and_each_sale_is_read_once(
    sandbox: SandboxProcess, make_client: Callable[..., LightspeedClient]
) -> None:
    # Given a backfill whose second window starts exactly at a sale's creation second
    truth = _truth(sandbox, "sales")
    boundary_sale = truth[len(truth) // 2]
    boundary = datetime.fromisoformat(boundary_sale["create_time"])
    request = BackfillRequest(
        request_id="r",
        backfill_id="b",
        source="lightspeed",
        since=boundary - timedelta(days=10),
        until=boundary + timedelta(days=25, microseconds=500),
        window_days=10,
    )
    streams = LightspeedStreams(make_client(sandbox))

    # When it is planned and every window read
    windows, _ = streams.plan_windows(request)
    sales_windows = [window for window in windows if window.stream == "sales"]
    read = {
        window.window_id: [int(sale["saleID"]) for page in streams.window_pages(window) for sale in page]
        for window in sales_windows
    }

    # Then the windows tile [since, until) on whole seconds, items get one window of their own
    assert [window.stream for window in windows].count("items") == 1
    assert sales_windows[0].start == request.since
    assert sales_windows[1].start == boundary
    assert all(a.end == b.start for a, b in itertools.pairwise(sales_windows))
    assert sales_windows[-1].end == boundary + timedelta(days=25, seconds=1)

    # And every sale created in the range is read exactly once, the boundary one in the second window
    ids = [sale_id for window_ids in read.values() for sale_id in window_ids]
    last = boundary + timedelta(days=25, seconds=1)
    expected = {
        row["sale_id"] for row in truth if request.since <= datetime.fromisoformat(row["create_time"]) < last
    }
    assert sorted(ids) == sorted(expected)
    assert len(ids) == len(set(ids))
    assert boundary_sale["sale_id"] in read[sales_windows[1].window_id]


def test_a_pool_of_workers_sharing_a_small_bucket_gets_no_429(
    make_client: Callable[..., LightspeedClient],
) -> None:
    # Given a bucket of 15 drips draining 30 per second, and six workers
    with _start(bucket_size=15, drip_rate=30) as sandbox:
        clients = [make_client(sandbox) for _ in range(6)]
        barrier = threading.Barrier(len(clients))

        def read(client: LightspeedClient) -> int:
            barrier.wait()
            return sum(len(page) for page in client.iter_items(updated_since=None)) + sum(
                len(page) for page in client.iter_sales(updated_since=None)
            )

        # When they all read everything at once (about three bucketfuls of requests)
        with ThreadPoolExecutor(len(clients)) as pool:
            totals = list(pool.map(read, clients))

        # Then all reads finished and the sandbox never had to answer 429
        stats = _stats(sandbox)
        assert totals == [totals[0]] * len(clients)
        assert stats["total"] > 3 * 15
        assert stats["rate_limited"] == 0


def test_server_errors_are_retried_within_the_request(
    make_client: Callable[..., LightspeedClient], recorder: Recorder
) -> None:
    # Given a sandbox answering a third of API requests with 500
    with _start(bucket_size=1000, drip_rate=1000, rate_500=0.3) as sandbox:
        client = make_client(sandbox, request_attempts=8)

        # When every sale is read
        sales = [sale for page in client.iter_sales(updated_since=None) for sale in page]

        # Then the read completed despite the 500s
        assert 500 in recorder.statuses
        assert len(sales) == len(_truth(sandbox, "sales"))
