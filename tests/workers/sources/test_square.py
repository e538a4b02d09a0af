"""The Square client against the real sandbox subprocess: pagination, explicit filters, error translation.

A few shapes the sandbox never produces (an HTTP-date Retry-After, a 200 that is not JSON, a cursor
that repeats) go through ``httpx.MockTransport``.
"""

from __future__ import annotations

import email.utils
import json
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr
from structlog.tracebacks import ExceptionDictTransformer

from sandbox.process import SandboxProcess, start_square_sandbox
from sandbox.square import FINAL_PAGE_MODES
from workers.errors import (
    RateLimited,
    SourceAuthError,
    SourceRejected,
    SourceUnavailable,
    WorkerError,
)
from workers.sources.shared_pause import SharedPause
from workers.sources.square import DEFAULT_RETRY_AFTER_SECONDS, PAGE_LIMIT, SquareClient

TOKEN = "sq-test-token-6f1c0d7e9b"
BEGIN = datetime(2024, 1, 1, tzinfo=UTC)
#: Far enough back to cover the sandbox's two years of history.
HISTORY_START = datetime(2010, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    with start_square_sandbox(
        token=TOKEN, payments=2_500, customers=250, items=120, short_page_rate=0.2
    ) as process:
        yield process


@pytest.fixture(autouse=True)
def _reset(sandbox: SandboxProcess) -> None:
    sandbox.admin.clear_faults()
    sandbox.admin.set_faults(timeout_hang_seconds=5.0, retry_after_seconds=1)
    sandbox.admin.set_settings(final_page_mode="omit", short_page_rate=0.2)


class Recorder:
    """Every request and response an ``httpx.Client`` made, with each response's JSON when it has one."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.responses: list[tuple[httpx.Response, Any]] = []

    def on_request(self, request: httpx.Request) -> None:
        self.requests.append(request)

    def on_response(self, response: httpx.Response) -> None:
        response.read()
        try:
            body = response.json()
        except ValueError:
            body = None
        self.responses.append((response, body))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make_client(sandbox: SandboxProcess, recorder: Recorder) -> Iterator[Callable[..., SquareClient]]:
    clients: list[httpx.Client] = []

    def make(
        *,
        token: str = TOKEN,
        timeout_seconds: float = 10.0,
        square_version: str = "2025-08-20",
        request_attempts: int = 1,
        max_request_wait_seconds: float = 30.0,
        pause: SharedPause | None = None,
    ) -> SquareClient:
        http = httpx.Client(
            event_hooks={"request": [recorder.on_request], "response": [recorder.on_response]}
        )
        clients.append(http)
        return SquareClient(
            http,
            base_url=sandbox.base_url,
            token=SecretStr(token),
            square_version=square_version,
            timeout_seconds=timeout_seconds,
            request_attempts=request_attempts,
            retry_initial_seconds=0.01,
            max_request_wait_seconds=max_request_wait_seconds,
            pause=pause,
        )

    yield make
    for http in clients:
        http.close()


def _assert_no_token(error: BaseException, token: str = TOKEN) -> None:
    """The token is in no message, repr or traceback, nor in the frame locals structlog would log."""
    texts = [str(error), repr(error), repr(error.args), "".join(traceback.format_exception(error))]
    cause = error.__cause__
    while cause is not None:
        texts += [str(cause), repr(cause)]
        cause = cause.__cause__
    # What workers/logs.py's dict_tracebacks renders (locals included), minus this test's own frames.
    rendered = ExceptionDictTransformer(locals_max_string=100_000)((type(error), error, error.__traceback__))
    for stack in rendered:
        texts += [
            json.dumps(frame, default=str) for frame in stack["frames"] if frame["filename"] != __file__
        ]
        texts.append(str(stack.get("exc_value")))
    for text in texts:
        assert token not in text, f"the token leaked into {text!r}"


@pytest.mark.parametrize("final_page_mode", FINAL_PAGE_MODES)
def test_every_payment_of_every_location_is_read_whatever_ends_the_last_page(
    sandbox: SandboxProcess,
    make_client: Callable[..., SquareClient],
    recorder: Recorder,
    final_page_mode: str,
) -> None:
    # Given a sandbox ending its last pages in this mode, with a fifth of pages short but carrying a cursor
    sandbox.admin.set_settings(final_page_mode=final_page_mode, short_page_rate=0.2)
    client = make_client()
    truth = sandbox.admin.truth("payments")

    # When every location's payments are paged from the start of history
    read: list[dict[str, Any]] = []
    for location in client.list_locations():
        for page in client.iter_payments(location_id=location["id"], begin_time=HISTORY_START):
            read.extend(page)

    # Then every payment was read exactly once, the old ones and the other locations' included
    ids = [payment["id"] for payment in read]
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(row["id"] for row in truth)

    # And short pages carrying a cursor were met and not taken for the end
    payment_pages = [body for response, body in recorder.responses if response.url.path == "/v2/payments"]
    short_with_cursor = [
        b for b in payment_pages if b and b.get("cursor") and len(b.get("payments", [])) < PAGE_LIMIT
    ]
    assert short_with_cursor, "the sandbox served no short page with a cursor"
    if final_page_mode == "empty_page":
        assert {} in payment_pages, "the final empty page was never requested"


def test_every_payment_request_names_its_location_and_begin_time(
    sandbox: SandboxProcess, make_client: Callable[..., SquareClient], recorder: Recorder
) -> None:
    # Given a client
    client = make_client()
    main_location = sandbox.admin.info()["main_location_id"]
    locations = [location["id"] for location in client.list_locations()]

    # When payments are read incrementally by updated_at, and in a created_at window
    for location in locations:
        for _ in client.iter_payments(
            location_id=location,
            begin_time=HISTORY_START,
            updated_at_begin_time=BEGIN,
            sort_field="UPDATED_AT",
        ):
            pass
    list(
        client.iter_payments(location_id=main_location, begin_time=BEGIN, end_time=BEGIN + timedelta(days=90))
    )

    # Then every ListPayments request, first pages and cursor pages alike, carried explicit filters
    payment_requests = [request for request in recorder.requests if request.url.path == "/v2/payments"]
    assert len(payment_requests) > len(locations) + 1, "no request followed a cursor"
    for request in payment_requests:
        params = request.url.params
        assert params["location_id"] in locations
        assert params["begin_time"] in ("2010-01-01T00:00:00Z", "2024-01-01T00:00:00Z")
        assert params["limit"] == str(PAGE_LIMIT)
        assert params["sort_order"] == "ASC"
    assert {request.url.params["location_id"] for request in payment_requests} == set(locations)
    incremental = [r for r in payment_requests if "updated_at_begin_time" in r.url.params]
    assert incremental
    assert all(r.url.params["sort_field"] == "UPDATED_AT" for r in incremental)
    windowed = [r for r in payment_requests if "end_time" in r.url.params]
    assert windowed
    assert all(r.url.params["end_time"] == "2024-03-31T00:00:00Z" for r in windowed)

    # And the bearer token and Square-Version went with each request
    for request in recorder.requests:
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        assert request.headers["square-version"] == "2025-08-20"


@pytest.mark.parametrize("final_page_mode", FINAL_PAGE_MODES)
def test_the_whole_catalog_is_read_with_deleted_items_and_nested_variations(
    sandbox: SandboxProcess,
    make_client: Callable[..., SquareClient],
    recorder: Recorder,
    final_page_mode: str,
) -> None:
    # Given a sandbox in this final-page mode
    sandbox.admin.set_settings(final_page_mode=final_page_mode)
    client = make_client()
    truth = sandbox.admin.truth("items")

    # When the catalog is searched
    objects = [obj for page in client.iter_catalog() for obj in page]

    # Then every variation of every item, deleted ones too, came nested in its ITEM
    assert {obj["type"] for obj in objects} == {"ITEM"}
    variations = {v["id"] for obj in objects for v in obj["item_data"]["variations"]}
    assert variations == {row["variation_id"] for row in truth}
    assert any(obj["is_deleted"] for obj in objects)
    body = json.loads(recorder.requests[0].content)
    assert body["object_types"] == ["ITEM"]
    assert body["include_deleted_objects"] is True


def test_the_catalog_since_a_time_holds_only_objects_changed_after_it(
    sandbox: SandboxProcess, make_client: Callable[..., SquareClient]
) -> None:
    # Given the item truth and a time in the middle of it
    truth = sandbox.admin.truth("items")
    middle = sorted(row["updated_at"] for row in truth)[len(truth) // 2]
    since = datetime.fromisoformat(middle)
    client = make_client()

    # When the catalog is searched from that time
    objects = [obj for page in client.iter_catalog(begin_time=since) for obj in page]

    # Then exactly the variations updated after it come back
    variations = {v["id"] for obj in objects for v in obj["item_data"]["variations"]}
    assert variations == {
        row["variation_id"] for row in truth if datetime.fromisoformat(row["updated_at"]) > since
    }


@pytest.mark.parametrize("final_page_mode", FINAL_PAGE_MODES)
def test_customers_are_read_whole_or_since_an_update_time(
    sandbox: SandboxProcess,
    make_client: Callable[..., SquareClient],
    recorder: Recorder,
    final_page_mode: str,
) -> None:
    # Given a sandbox in this final-page mode and the customer truth
    sandbox.admin.set_settings(final_page_mode=final_page_mode)
    client = make_client()
    truth = sandbox.admin.truth("customers")
    since = datetime.fromisoformat(sorted(row["updated_at"] for row in truth)[len(truth) // 3])

    # When all customers are listed, then those updated since a time are searched
    everyone = [c["id"] for page in client.iter_customers() for c in page]
    changed = [c["id"] for page in client.iter_customers(updated_since=since) for c in page]

    # Then the full list is the truth, and the search holds exactly those updated at or after the time
    assert sorted(everyone) == sorted(row["id"] for row in truth)
    assert sorted(changed) == sorted(
        row["id"] for row in truth if datetime.fromisoformat(row["updated_at"]) >= since
    )
    paths = [(request.method, request.url.path) for request in recorder.requests]
    assert ("GET", "/v2/customers") in paths
    assert ("POST", "/v2/customers/search") in paths


def test_one_payment_is_read_by_id_and_a_missing_one_is_rejected(
    sandbox: SandboxProcess, make_client: Callable[..., SquareClient]
) -> None:
    # Given a payment id the sandbox knows
    known = sandbox.admin.truth("payments")[7]
    client = make_client()

    # When it is read, and an unknown id is read
    payment = client.get_payment(known["id"])
    with pytest.raises(SourceRejected) as caught:
        client.get_payment("NO-SUCH-PAYMENT")

    # Then the known one matches the truth and the unknown one is a permanent 404
    assert payment["id"] == known["id"]
    assert payment["amount_money"]["amount"] == known["amount_cents"]
    assert caught.value.status_code == 404
    assert not isinstance(caught.value, SourceAuthError)
    assert "NOT_FOUND" in str(caught.value)


def test_a_429_is_rate_limited_with_the_servers_retry_after(
    sandbox: SandboxProcess, make_client: Callable[..., SquareClient]
) -> None:
    # Given a sandbox answering every request 429 with Retry-After: 7
    sandbox.admin.set_faults(rate_429=1.0, retry_after_seconds=7)
    client = make_client()

    # When payments are listed
    with pytest.raises(RateLimited) as caught:
        next(client.iter_payments(location_id="L1", begin_time=BEGIN))

    # Then the error is retryable and says how long to wait
    assert caught.value.retry_after_seconds == 7
    assert caught.value.status_code == 429
    assert caught.value.system == "square"
    assert "RATE_LIMITED" in str(caught.value)
    _assert_no_token(caught.value)


def test_a_500_is_unavailable(sandbox: SandboxProcess, make_client: Callable[..., SquareClient]) -> None:
    # Given a sandbox answering every request 500
    sandbox.admin.set_faults(rate_500=1.0)
    client = make_client()

    # When the catalog is searched
    with pytest.raises(SourceUnavailable) as caught:
        next(client.iter_catalog())

    # Then the error is retryable with Square's code
    assert caught.value.status_code == 500
    assert "INTERNAL_SERVER_ERROR" in str(caught.value)
    _assert_no_token(caught.value)


def test_a_503_is_unavailable_whether_its_body_is_json_or_html(
    sandbox: SandboxProcess, make_client: Callable[..., SquareClient], recorder: Recorder
) -> None:
    # Given a sandbox answering every request 503, half of them with a load balancer's HTML page
    sandbox.admin.set_faults(rate_503=1.0)
    client = make_client()

    # When locations are listed until both kinds of 503 were met
    kinds: set[str] = set()

    def both_seen() -> bool:
        with pytest.raises(SourceUnavailable) as caught:
            client.list_locations()
        assert caught.value.status_code == 503
        _assert_no_token(caught.value)
        kinds.add(recorder.responses[-1][0].headers["content-type"].split(";")[0])
        return kinds == {"text/html", "application/json"}

    # Then every one is SourceUnavailable (a bounded number of tries meets both kinds)
    assert any(both_seen() for _ in range(64)), f"only met {kinds}"


def test_a_request_that_hangs_past_the_timeout_is_unavailable(
    sandbox: SandboxProcess, make_client: Callable[..., SquareClient]
) -> None:
    # Given a sandbox that hangs 3 s on every request, and a client with a 0.3 s timeout
    sandbox.admin.set_faults(timeout_rate=1.0, timeout_hang_seconds=3.0)
    client = make_client(timeout_seconds=0.3)

    # When customers are listed
    with pytest.raises(SourceUnavailable, match="timed out") as caught:
        next(client.iter_customers())

    # Then the timeout is retryable and carries no token
    assert caught.value.status_code is None
    assert isinstance(caught.value.__cause__, httpx.TimeoutException)
    _assert_no_token(caught.value)


def test_a_wrong_token_is_an_auth_error_without_the_token(
    sandbox: SandboxProcess, make_client: Callable[..., SquareClient]
) -> None:
    # Given a client with a token the sandbox does not accept
    wrong = "sq-wrong-token-0000aaaa"
    client = make_client(token=wrong)

    # When locations are listed
    with pytest.raises(SourceAuthError) as caught:
        client.list_locations()

    # Then it is a permanent auth error naming Square's code, and neither token appears anywhere
    assert caught.value.status_code == 401
    assert isinstance(caught.value, SourceRejected)
    assert "UNAUTHORIZED" in str(caught.value)
    _assert_no_token(caught.value, wrong)
    _assert_no_token(caught.value, TOKEN)
    assert wrong not in repr(client)


def test_a_revoked_token_is_an_auth_error(
    sandbox: SandboxProcess, make_client: Callable[..., SquareClient]
) -> None:
    # Given a sandbox that has revoked the client's token
    sandbox.admin.set_faults(token_revoked=True)
    client = make_client()

    # When payments are listed
    with pytest.raises(SourceAuthError, match="ACCESS_TOKEN_REVOKED") as caught:
        next(client.iter_payments(location_id="L1", begin_time=BEGIN))

    # Then the error carries the status and no token
    assert caught.value.status_code == 401
    _assert_no_token(caught.value)


def test_a_malformed_square_version_is_rejected(make_client: Callable[..., SquareClient]) -> None:
    # Given a client configured with a Square-Version that is not a date
    client = make_client(square_version="latest")

    # When locations are listed
    # Then Square's 400 is a permanent rejection naming the code
    with pytest.raises(SourceRejected, match="INVALID_SQUARE_VERSION_FORMAT"):
        client.list_locations()


def test_the_clients_repr_and_vars_hold_no_token(make_client: Callable[..., SquareClient]) -> None:
    # Given a client
    client = make_client()

    # When it is printed, and its attributes are printed
    # Then the token is in neither
    assert TOKEN not in repr(client)
    assert TOKEN not in repr(vars(client))
    assert TOKEN not in str(vars(client))


def test_every_error_is_a_worker_error_of_the_square_system(
    sandbox: SandboxProcess, make_client: Callable[..., SquareClient]
) -> None:
    # Given each kind of failure in turn
    client = make_client()
    raised: list[WorkerError] = []
    for faults in ({"rate_429": 1.0}, {"rate_500": 1.0}, {"token_revoked": True}):
        sandbox.admin.clear_faults()
        sandbox.admin.set_faults(**faults)

        # When a request fails
        with pytest.raises(WorkerError) as caught:
            client.list_locations()
        raised.append(caught.value)

    # Then each error names the system and the endpoint
    assert [type(error) for error in raised] == [RateLimited, SourceUnavailable, SourceAuthError]
    for error in raised:
        assert error.system == "square"
        assert "GET /v2/locations" in str(error)


# Edge cases through httpx.MockTransport: shapes the sandbox does not produce.


def _mock_client(handler: Callable[[httpx.Request], httpx.Response]) -> tuple[SquareClient, httpx.Client]:
    http = httpx.Client(transport=httpx.MockTransport(handler))
    return (
        SquareClient(
            http,
            base_url="https://square.test",
            token=SecretStr(TOKEN),
            square_version="2025-08-20",
            timeout_seconds=5,
        ),
        http,
    )


def test_a_429_without_retry_after_waits_the_default() -> None:
    # Given Square answering 429 with no Retry-After header
    client, http = _mock_client(
        lambda request: httpx.Response(
            429, json={"errors": [{"category": "RATE_LIMIT_ERROR", "code": "RATE_LIMITED"}]}
        )
    )

    # When locations are listed
    with pytest.raises(RateLimited) as caught:
        client.list_locations()

    # Then the error waits the documented default
    assert caught.value.retry_after_seconds == DEFAULT_RETRY_AFTER_SECONDS
    assert caught.value.status_code == 429
    assert "RATE_LIMITED" in str(caught.value)
    http.close()


def test_a_429_with_an_http_date_retry_after_is_converted_to_seconds() -> None:
    # Given a Retry-After given as an HTTP date two minutes ahead
    when = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    client, http = _mock_client(lambda request: httpx.Response(429, headers={"Retry-After": when}))

    # When a request is rate limited
    with pytest.raises(RateLimited) as caught:
        client.list_locations()

    # Then the wait is about two minutes
    assert caught.value.retry_after_seconds is not None
    assert 100 <= caught.value.retry_after_seconds <= 121
    http.close()


def test_a_2xx_whose_body_is_not_json_is_unavailable() -> None:
    # Given a proxy answering 200 with an HTML page
    client, http = _mock_client(
        lambda request: httpx.Response(
            200, text="<html>maintenance</html>", headers={"content-type": "text/html"}
        )
    )

    # When payments are listed
    # Then the answer is treated as transient
    with pytest.raises(SourceUnavailable, match="not JSON"):
        next(client.iter_payments(location_id="L1", begin_time=BEGIN))
    http.close()


def test_a_repeated_cursor_stops_instead_of_looping_forever() -> None:
    # Given a server that always answers the same cursor
    client, http = _mock_client(
        lambda request: httpx.Response(200, json={"payments": [{"id": "p"}], "cursor": "same"})
    )

    # When payments are paged
    pages = client.iter_payments(location_id="L1", begin_time=BEGIN)

    # Then the second sight of the cursor fails
    with pytest.raises(SourceUnavailable, match="repeated"):
        list(pages)
    http.close()


def test_post_searches_send_the_cursor_in_the_body_with_the_original_query() -> None:
    # Given a SearchCustomers endpoint serving two pages
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        if "cursor" not in body:
            return httpx.Response(200, json={"customers": [{"id": "c1"}], "cursor": "next"})
        return httpx.Response(200, json={"customers": [{"id": "c2"}]})

    client, http = _mock_client(handler)

    # When customers updated since a time are read
    pages = list(client.iter_customers(updated_since=BEGIN))

    # Then the second request repeats the query and adds the cursor to the body
    assert [[c["id"] for c in page] for page in pages] == [["c1"], ["c2"]]
    assert bodies[1] == {**bodies[0], "cursor": "next"}
    assert bodies[0]["query"]["filter"]["updated_at"] == {"start_at": "2024-01-01T00:00:00Z"}
    assert bodies[0]["query"]["sort"] == {"field": "CREATED_AT", "order": "ASC"}
    http.close()


def test_naive_datetimes_and_missing_location_are_programming_errors() -> None:
    # Given a client
    client, http = _mock_client(lambda request: httpx.Response(500))

    # When payments are asked for with a naive time or no location
    # Then ValueError is raised before any request
    with pytest.raises(ValueError, match="naive"):
        client.iter_payments(location_id="L1", begin_time=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="location_id"):
        client.iter_payments(location_id="", begin_time=BEGIN)
    http.close()


def test_an_unreachable_server_is_unavailable() -> None:
    # Given a port on loopback where nothing listens
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    http = httpx.Client()
    client = SquareClient(
        http,
        base_url=f"http://127.0.0.1:{port}",
        token=SecretStr(TOKEN),
        square_version="2025-08-20",
        timeout_seconds=2,
    )

    # When locations are listed
    with pytest.raises(SourceUnavailable) as caught:
        client.list_locations()

    # Then the error is retryable, names the endpoint and carries no token
    assert "/v2/locations" in str(caught.value)
    _assert_no_token(caught.value)
    http.close()


def test_retryable_failures_are_retried_per_request_until_every_page_is_read(
    sandbox: SandboxProcess, make_client: Callable[..., SquareClient], recorder: Recorder
) -> None:
    # Given a sandbox failing a third of requests with 429 (Retry-After: 0), 500 and HTML 503
    sandbox.admin.set_faults(rate_429=0.15, retry_after_seconds=0, rate_500=0.1, rate_503=0.1)
    client = make_client(request_attempts=10)
    truth = sandbox.admin.truth("payments")

    # When every location's payments are paged
    ids = [
        payment["id"]
        for location in client.list_locations()
        for page in client.iter_payments(location_id=location["id"], begin_time=HISTORY_START)
        for payment in page
    ]

    # Then nothing is lost or read twice, and failures were met and retried on the way
    assert sorted(ids) == sorted(row["id"] for row in truth)
    statuses = [response.status_code for response, _ in recorder.responses]
    assert 429 in statuses
    assert any(status >= 500 for status in statuses)


def test_a_retry_after_longer_than_the_request_wait_fails_the_request_at_once(
    sandbox: SandboxProcess, make_client: Callable[..., SquareClient], recorder: Recorder
) -> None:
    # Given a sandbox asking for a 7 s pause, longer than the client waits within one request
    sandbox.admin.set_faults(rate_429=1.0, retry_after_seconds=7)
    client = make_client(request_attempts=5, max_request_wait_seconds=2.0)

    # When locations are listed
    with pytest.raises(RateLimited) as caught:
        client.list_locations()

    # Then it was asked once, and the message-level retry will honour the 7 s
    assert caught.value.retry_after_seconds == 7
    assert len(recorder.requests) == 1


def test_permanent_errors_are_never_retried_per_request(
    sandbox: SandboxProcess, make_client: Callable[..., SquareClient], recorder: Recorder
) -> None:
    # Given a client allowed many tries but holding a token the sandbox refuses
    client = make_client(token="sq-wrong-token-1111bbbb", request_attempts=5)

    # When locations are listed
    with pytest.raises(SourceAuthError):
        client.list_locations()

    # Then the 401 was asked exactly once
    assert len(recorder.requests) == 1


def test_a_429_to_one_worker_pauses_the_whole_pool_for_its_retry_after(
    sandbox: SandboxProcess, make_client: Callable[..., SquareClient], redis_url: str
) -> None:
    # Given two workers (own clients, own Redis connections) sharing the pool's pause
    first = make_client(pause=SharedPause(redis.Redis.from_url(redis_url), key="possync:square:pause"))
    second = make_client(pause=SharedPause(redis.Redis.from_url(redis_url), key="possync:square:pause"))

    # When the first is told 429 with Retry-After: 2
    sandbox.admin.set_faults(rate_429=1.0, retry_after_seconds=2)
    with pytest.raises(RateLimited):
        first.list_locations()
    sandbox.admin.clear_faults()

    # Then the second waits out the pause before its next request, then succeeds
    started = time.monotonic()
    assert second.list_locations()
    assert time.monotonic() - started >= 1.5


def test_a_worker_that_found_no_pause_asks_again_after_recheck_seconds(redis_client: redis.Redis) -> None:
    # Given a worker that just found no pause (its clock is the test's)
    now = [100.0]
    mine = SharedPause(
        redis_client,
        key="possync:test:recheck",
        max_wait_seconds=5,
        recheck_seconds=0.5,
        clock=lambda: now[0],
    )
    other = SharedPause(redis_client, key="possync:test:recheck")
    assert mine.wait() == 0.0

    # When another worker is told to pause the pool
    other.pause(1.0)

    # Then within recheck_seconds this worker trusts what it found, without asking Redis
    now[0] += 0.4
    assert mine.wait() == 0.0
    # And after them it sees the pause and waits it out
    now[0] += 0.2
    assert mine.wait() >= 0.5
    assert mine.wait() == 0.0


def test_a_pause_a_worker_sets_itself_applies_to_its_next_request_at_once(redis_client: redis.Redis) -> None:
    mine = SharedPause(redis_client, key="possync:test:own", max_wait_seconds=5, recheck_seconds=60)
    assert mine.wait() == 0.0
    mine.pause(0.8)
    started = time.monotonic()
    assert mine.wait() >= 0.6
    assert time.monotonic() - started >= 0.6


def test_a_shorter_pause_never_cuts_a_longer_one(redis_client: redis.Redis) -> None:
    pause = SharedPause(redis_client, key="possync:test:pause", max_wait_seconds=5)
    pause.pause(1.0)
    pause.pause(0.1)
    started = time.monotonic()
    assert pause.wait() >= 0.8
    assert time.monotonic() - started >= 0.8
    # And once it has passed, nobody waits
    assert pause.wait() == 0.0
