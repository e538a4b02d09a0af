"""The Lightspeed sandbox behaves like Lightspeed R-Series V3: envelope, cursors, filters, limits, OAuth."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from sandbox.process import SandboxProcess, start_lightspeed_sandbox
from tests.sandbox.conftest import LIGHTSPEED_SMALL, lightspeed_client_for

#: A small dataset with a fixed clock: the same seed always gives the same data.
ACCOUNT = 123456
SALES = f"/API/V3/Account/{ACCOUNT}/Sale.json"
ITEMS = f"/API/V3/Account/{ACCOUNT}/Item.json"
CLIENT = {"client_id": "sandbox-client", "client_secret": "sandbox-secret"}


@pytest.fixture(scope="module")
def lightspeed() -> Iterator[SandboxProcess]:
    """A shared small sandbox nobody changes (a bucket big enough never to limit the reads)."""
    with start_lightspeed_sandbox(**LIGHTSPEED_SMALL, bucket_size=100_000, drip_rate=1000) as sandbox:
        yield sandbox


def read_all(client: httpx.Client, path: str, key: str, **params: Any) -> list[dict[str, Any]]:
    """Every record, following ``next`` exactly as given until it is ``""``."""
    found: list[dict[str, Any]] = []
    response = client.get(path, params=params)
    for _ in range(10_000):
        assert response.status_code == 200, response.text
        page = response.json()
        found += page.get(key, [])
        link = page["@attributes"]["next"]
        if link == "":
            return found
        response = client.get(link)
    raise AssertionError("pagination never ended")


def refresh(sandbox: SandboxProcess, refresh_token: str | None) -> httpx.Response:
    """The refresh grant as a form post."""
    form = {"grant_type": "refresh_token", **CLIENT}
    if refresh_token is not None:
        form["refresh_token"] = refresh_token
    return httpx.post(f"{sandbox.base_url}/auth/oauth/token", data=form, timeout=10)


def advance(sandbox: SandboxProcess, seconds: int, **counts: int) -> dict[str, Any]:
    """Move the sandbox's clock (``new_sales``, ``changed_sales``, ``changed_items``)."""
    response = httpx.post(
        f"{sandbox.base_url}/_sandbox/clock/advance", json={"seconds": seconds, **counts}, timeout=10
    )
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def cents(amount: str) -> int:
    """A Lightspeed amount string in cents, exactly."""
    return int(Decimal(amount) * 100)


def _strings_only(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_strings_only(v) for v in value.values())
    if isinstance(value, list):
        return all(_strings_only(v) for v in value)
    return isinstance(value, str)


# -- envelope and pagination -----------------------------------------------------------------------


def test_envelope_holds_string_scalars_and_cursor_urls(lightspeed: SandboxProcess) -> None:
    # When the first page of sales and of items (with Prices) is read
    with lightspeed_client_for(lightspeed) as client:
        sales = client.get(SALES, params={"limit": 3}).json()
        items = client.get(ITEMS, params={"limit": 2, "load_relations": '["Prices"]'}).json()

    # Then both are V3 envelopes: @attributes with next/previous, records under the singular name
    assert set(sales) == {"@attributes", "Sale"}
    assert sales["@attributes"]["previous"] == ""
    assert sales["@attributes"]["next"].startswith(f"{lightspeed.base_url}{SALES}?")
    assert "limit=3" in sales["@attributes"]["next"]
    assert "sort=saleID" in sales["@attributes"]["next"]
    assert "after=" in sales["@attributes"]["next"]
    assert [s["saleID"] for s in sales["Sale"]] == ["1", "2", "3"]
    # And every scalar, however numeric or boolean, is a JSON string
    assert _strings_only(sales)
    assert _strings_only(items)
    sale = sales["Sale"][0]
    for field in ("completed", "calcSubtotal", "calcTax1", "calcTax2", "calcTotal", "customerID"):
        assert field in sale
    for field in ("employeeID", "shopID", "createTime", "updatetime", "timeStamp"):
        assert field in sale
    prices = items["Item"][0]["Prices"]["ItemPrice"]
    assert {p["useType"] for p in prices} == {"Default", "MSRP", "Online"}
    assert all("amount" in p for p in prices)


def test_paging_to_the_end_equals_the_truth(lightspeed: SandboxProcess) -> None:
    # Given the ground truth
    truth_sales = {row["sale_id"]: row for row in lightspeed.admin.truth("sales")}
    truth_items = {row["item_id"]: row for row in lightspeed.admin.truth("items")}

    # When every sale and item is read page by page (default limit, and a small one)
    with lightspeed_client_for(lightspeed) as client:
        sales = read_all(client, SALES, "Sale")
        small_pages = read_all(client, SALES, "Sale", limit=7, sort="-updatetime")
        items = read_all(client, ITEMS, "Item", limit=9, sort="description")

    # Then each record appears once, and its amounts equal the integer-cents truth
    assert [int(s["saleID"]) for s in sales] == sorted(truth_sales)
    assert sorted(int(s["saleID"]) for s in small_pages) == sorted(truth_sales)
    assert [s["updatetime"] for s in small_pages] == sorted((s["updatetime"] for s in sales), reverse=True)
    for sale in sales:
        row = truth_sales[int(sale["saleID"])]
        assert cents(sale["calcSubtotal"]) == row["subtotal_cents"]
        assert cents(sale["calcTax1"]) + cents(sale["calcTax2"]) == row["tax1_cents"] + row["tax2_cents"]
        assert cents(sale["calcTotal"]) == row["total_cents"]
        assert sale["completed"] == ("true" if row["completed"] else "false")
        assert sale["updatetime"] == row["update_time"]
    assert sorted(int(i["itemID"]) for i in items) == sorted(truth_items)
    assert [i["description"] for i in items] == sorted(i["description"] for i in items)
    for item in items:
        row = truth_items[int(item["itemID"])]
        prices = {p["useType"]: cents(p["amount"]) for p in item["Prices"]["ItemPrice"]}
        assert prices == row["prices_cents"]
        assert cents(item["defaultCost"]) == row["default_cost_cents"]


def test_previous_goes_back_to_the_page_before(lightspeed: SandboxProcess) -> None:
    with lightspeed_client_for(lightspeed) as client:
        # Given the first two pages
        first = client.get(SALES, params={"limit": 5}).json()
        second = client.get(first["@attributes"]["next"]).json()

        # When the second page's previous link is followed
        back = client.get(second["@attributes"]["previous"]).json()

    # Then it is the first page again, whose previous is empty
    assert back["Sale"] == first["Sale"]
    assert back["@attributes"]["previous"] == ""


def test_filters_with_operators_match_the_truth(lightspeed: SandboxProcess) -> None:
    # Given the sales' update times from the truth
    rows = lightspeed.admin.truth("sales")
    times = sorted(row["update_time"] for row in rows)
    low, high = times[len(times) // 3], times[2 * len(times) // 3]

    def ids(**params: Any) -> list[int]:
        with lightspeed_client_for(lightspeed) as client:
            return sorted(int(s["saleID"]) for s in read_all(client, SALES, "Sale", **params))

    def expected(keep: Callable[[dict[str, Any]], bool]) -> list[int]:
        return sorted(row["sale_id"] for row in rows if keep(row))

    # When sales are filtered with each operator, Then the answers equal the truth filtered alike
    # (httpx encodes the operator and comma, as Lightspeed requires.)
    assert ids(updatetime=f">,{low}") == expected(lambda r: r["update_time"] > low)
    assert ids(updatetime=f">=,{low}") == expected(lambda r: r["update_time"] >= low)
    assert ids(updatetime=f"<,{low}") == expected(lambda r: r["update_time"] < low)
    assert ids(updatetime=f"<=,{low}") == expected(lambda r: r["update_time"] <= low)
    assert ids(updatetime=f"><,{low},{high}") == expected(lambda r: low <= r["update_time"] <= high)
    assert ids(saleID="!=,3") == expected(lambda r: r["sale_id"] != 3)
    assert ids(saleID="IN,[2,4,8]") == [2, 4, 8]
    # And a timestamp without an offset is UTC, like one with ``+00:00``
    assert ids(updatetime=f">,{low[:19]}") == ids(updatetime=f">,{low}")

    # And items filter on timeStamp
    item_rows = lightspeed.admin.truth("items")
    stamp = sorted(row["time_stamp"] for row in item_rows)[len(item_rows) // 2]
    with lightspeed_client_for(lightspeed) as client:
        items = read_all(client, ITEMS, "Item", timeStamp=f">=,{stamp}")
    assert sorted(int(i["itemID"]) for i in items) == sorted(
        row["item_id"] for row in item_rows if row["time_stamp"] >= stamp
    )


def test_unknown_sort_field_and_bad_limit_are_400(lightspeed: SandboxProcess) -> None:
    # When an unsortable field and an out-of-range limit are asked for
    with lightspeed_client_for(lightspeed) as client:
        bad_sort = client.get(SALES, params={"sort": "calcTotal"})
        bad_limit = client.get(ITEMS, params={"limit": 101})

    # Then both are 400, and the sort error lists the allowed fields
    assert bad_sort.status_code == 400
    message = bad_sort.json()["message"]
    for field in ("saleID", "timeStamp", "completeTime", "updatetime"):
        assert field in message
    assert bad_limit.status_code == 400


# -- rate limiting ---------------------------------------------------------------------------------


def test_bucket_headers_and_429_with_retry_after(make_lightspeed: Callable[..., SandboxProcess]) -> None:
    # Given a small bucket that drains slowly
    sandbox = make_lightspeed(bucket_size=5, drip_rate=0.1)

    # When it is hammered
    with lightspeed_client_for(sandbox) as client:
        responses = [client.get(SALES, params={"limit": 1}) for _ in range(12)]

    # Then every answer carries the bucket headers
    for response in responses:
        used, size = response.headers["X-LS-API-Bucket-Level"].split("/")
        assert float(used) >= 0
        assert float(size) == 5
        assert float(response.headers["X-LS-API-Drip-Rate"]) == 0.1
    # And the first request pushing past the size passes, the ones after it get 429 + Retry-After
    statuses = [r.status_code for r in responses]
    assert statuses[:6] == [200] * 6
    limited = [r for r in responses if r.status_code == 429]
    assert limited, statuses
    assert all(int(r.headers["Retry-After"]) >= 1 for r in limited)
    assert sandbox.admin.stats()["rate_limited"] == len(limited)

    # And once the clock has moved on, requests pass again
    advance(sandbox, 60)
    with lightspeed_client_for(sandbox) as client:
        assert client.get(SALES, params={"limit": 1}).status_code == 200


# -- OAuth -----------------------------------------------------------------------------------------


def test_expired_token_is_401_and_a_refreshed_one_works(
    make_lightspeed: Callable[..., SandboxProcess],
) -> None:
    # Given a sandbox whose access tokens live 60 seconds
    sandbox = make_lightspeed(access_token_lifetime_seconds=60)
    with lightspeed_client_for(sandbox) as client:
        assert client.get(SALES, params={"limit": 1}).status_code == 200

        # When the clock passes the token's lifetime
        advance(sandbox, 61)
        expired = client.get(SALES, params={"limit": 1})

    # Then the token is refused
    assert expired.status_code == 401
    assert expired.json()["error"] == "access_denied"

    # When the refresh grant is used
    answer = refresh(sandbox, "sandbox-refresh-token")

    # Then it returns a bearer token that works, and the refresh is counted
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) >= {"access_token", "expires_in", "token_type", "scope", "refresh_token"}
    assert (body["token_type"], body["expires_in"]) == ("bearer", 60)
    with lightspeed_client_for(sandbox, body["access_token"]) as client:
        assert client.get(SALES, params={"limit": 1}).status_code == 200
    with lightspeed_client_for(sandbox, "not-a-token") as client:
        assert client.get(SALES, params={"limit": 1}).status_code == 401
    assert sandbox.admin.stats()["refreshes"] == 1


def test_rotation_invalidates_the_old_refresh_token(make_lightspeed: Callable[..., SandboxProcess]) -> None:
    # Given a sandbox that rotates refresh tokens
    sandbox = make_lightspeed(rotate_refresh_tokens=True)

    # When the first refresh token is used
    first = refresh(sandbox, "sandbox-refresh-token")
    assert first.status_code == 200, first.text
    rotated = first.json()["refresh_token"]

    # Then a new refresh token comes back and the old one is now invalid_grant
    assert rotated != "sandbox-refresh-token"
    again = refresh(sandbox, "sandbox-refresh-token")
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"
    # And the new one works
    assert refresh(sandbox, rotated).status_code == 200


def test_missing_or_revoked_refresh_token(make_lightspeed: Callable[..., SandboxProcess]) -> None:
    sandbox = make_lightspeed()

    # When no refresh token is sent
    missing = refresh(sandbox, None)

    # Then it is 400 invalid_request
    assert missing.status_code == 400
    assert missing.json()["error"] == "invalid_request"

    # When the refresh token is revoked by the fault endpoint
    sandbox.admin.set_faults(revoke_refresh_token=True)
    revoked = refresh(sandbox, "sandbox-refresh-token")

    # Then it is 400 invalid_grant
    assert revoked.status_code == 400
    assert revoked.json()["error"] == "invalid_grant"


# -- clock, faults, determinism --------------------------------------------------------------------


def test_clock_advance_creates_and_changes_sales(make_lightspeed: Callable[..., SandboxProcess]) -> None:
    # Given the clock's start
    sandbox = make_lightspeed()
    start = sandbox.admin.info()["now"]

    # When the clock moves 15 minutes (the token still valid), creating 4 sales and changing 3
    result = advance(sandbox, 900, new_sales=4, changed_sales=3)

    # Then exactly those sales have an updatetime after the start
    with lightspeed_client_for(sandbox) as client:
        recent = read_all(client, SALES, "Sale", updatetime=f">,{start}")
    assert sorted(int(s["saleID"]) for s in recent) == sorted(result["created"] + result["changed"])
    assert len(sandbox.admin.truth("sales")) == LIGHTSPEED_SMALL["sales"] + 4


def test_rate_500_fault(make_lightspeed: Callable[..., SandboxProcess]) -> None:
    # Given every request set to fail
    sandbox = make_lightspeed()
    sandbox.admin.set_faults(rate_500=1.0)

    # Then the API answers 500 in Lightspeed's error shape
    with lightspeed_client_for(sandbox) as client:
        response = client.get(SALES)
    assert response.status_code == 500
    assert response.json()["httpCode"] == "500"


def test_same_seed_same_data(
    make_lightspeed: Callable[..., SandboxProcess], lightspeed: SandboxProcess
) -> None:
    # Given a second sandbox with the same seed and one with another seed
    twin = make_lightspeed()
    other = make_lightspeed(seed=6)

    # Then the same seed gives the same truth and the same API pages; another seed differs
    assert twin.admin.truth("sales") == lightspeed.admin.truth("sales")
    assert twin.admin.truth("items") == lightspeed.admin.truth("items")
    assert other.admin.truth("sales") != lightspeed.admin.truth("sales")
    with lightspeed_client_for(twin) as a, lightspeed_client_for(lightspeed) as b:
        assert (
            a.get(SALES, params={"limit": 50}).json()["Sale"]
            == b.get(SALES, params={"limit": 50}).json()["Sale"]
        )
