"""The Square sandbox behaves like Square: auth, defaults, pagination, faults, clock and ground truth."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from sandbox.process import SandboxProcess
from tests.sandbox.conftest import EPOCH_BEGIN, all_payments, client_for, paginate


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"errors"}, body
    error: dict[str, Any] = body["errors"][0]
    return error


# -- auth and headers ------------------------------------------------------------------------------


def test_missing_or_wrong_token_is_401_unauthorized(square: SandboxProcess) -> None:
    # Given requests without a token and with the wrong one
    missing = httpx.get(f"{square.base_url}/v2/payments", timeout=10)
    wrong = httpx.get(f"{square.base_url}/v2/payments", headers={"Authorization": "Bearer nope"}, timeout=10)

    # Then both are 401 AUTHENTICATION_ERROR / UNAUTHORIZED in Square's error shape
    for response in (missing, wrong):
        assert response.status_code == 401
        error = _error(response)
        assert (error["category"], error["code"]) == ("AUTHENTICATION_ERROR", "UNAUTHORIZED")
        assert error["detail"]


def test_a_revoked_token_is_401_access_token_revoked(make_square: Callable[..., SandboxProcess]) -> None:
    # Given a sandbox whose token has been revoked
    sandbox = make_square(token_revoked=True)

    # When the right token is used
    with client_for(sandbox) as client:
        response = client.get("/v2/locations")

    # Then it is refused as revoked
    assert response.status_code == 401
    assert _error(response)["code"] == "ACCESS_TOKEN_REVOKED"


def test_square_version_is_optional_checked_and_echoed(square: SandboxProcess) -> None:
    with client_for(square) as client:
        # When no version, the SDK's version, and a malformed version are sent
        plain = client.get("/v2/locations")
        sdk = client.get("/v2/locations", headers={"Square-Version": "2026-08-19"})
        bad = client.get("/v2/locations", headers={"Square-Version": "latest"})

    # Then well-formed dates succeed and are echoed; the malformed one is a 400
    assert plain.status_code == 200
    assert plain.headers["Square-Version"]
    assert sdk.status_code == 200
    assert sdk.headers["Square-Version"] == "2026-08-19"
    assert bad.status_code == 400
    assert _error(bad)["code"] == "INVALID_SQUARE_VERSION_FORMAT"


# -- ListPayments defaults -------------------------------------------------------------------------


def test_list_payments_defaults_to_the_main_location_and_the_last_year(square: SandboxProcess) -> None:
    # Given the truth and the clock
    info = square.admin.info()
    now = _ts(info["now"])
    truth = square.admin.truth("payments")

    # When payments are listed with neither location_id nor begin_time
    with client_for(square) as client:
        listed = paginate(client, "GET", "/v2/payments", "payments")

    # Then only the main location's payments of the last year come back, newest first
    expected = {
        row["id"]
        for row in truth
        if row["location_id"] == info["main_location_id"]
        and _ts(row["created_at"]) >= now - timedelta(days=365)
    }
    assert {payment["id"] for payment in listed} == expected
    assert len(listed) == len(expected) < len(truth)
    created = [(payment["created_at"]) for payment in listed]
    assert created == sorted(created, reverse=True)


def test_limit_above_100_silently_uses_100(make_square: Callable[..., SandboxProcess]) -> None:
    # Given a sandbox that never shortens pages
    sandbox = make_square(short_page_rate=0)

    # When asking for 500 a page
    with client_for(sandbox) as client:
        page = client.get("/v2/payments", params={"limit": 500}).json()

    # Then 100 come back, with a cursor for the rest
    assert len(page["payments"]) == 100
    assert page["cursor"]


# -- pagination ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["omit", "empty", "empty_page"])
@pytest.mark.parametrize("sort_order", ["ASC", "DESC"])
def test_every_final_page_mode_ends_a_correct_paginator_with_the_truth(
    make_square: Callable[..., SandboxProcess], mode: str, sort_order: str
) -> None:
    # Given a sandbox marking last pages in one of Square's ways, with short pages on
    sandbox = make_square(final_page_mode=mode, short_page_rate=0.2)
    info = sandbox.admin.info()

    # When every location's full history is paged with a correct paginator
    with client_for(sandbox) as client:
        pages: list[dict[str, Any]] = []
        listed: list[dict[str, Any]] = []
        for location in info["locations"]:
            params = {
                "location_id": location,
                "begin_time": EPOCH_BEGIN,
                "sort_order": sort_order,
                "limit": 100,
            }
            listed += paginate(client, "GET", "/v2/payments", "payments", params=params, pages=pages)

    # Then the union is exactly the truth, with no duplicates
    truth_ids = {row["id"] for row in sandbox.admin.truth("payments")}
    assert len(listed) == len({payment["id"] for payment in listed}) == len(truth_ids)
    assert {payment["id"] for payment in listed} == truth_ids
    # And the last page of each location ended the way the mode says
    last_pages = [page for page in pages if not page.get("cursor")]
    assert len(last_pages) == len(info["locations"])
    for page in last_pages:
        if mode == "omit":
            assert "cursor" not in page
            assert page["payments"]
        elif mode == "empty":
            assert page["cursor"] == ""
            assert page["payments"]
        else:
            assert page == {}


def test_short_pages_still_carry_a_cursor(square: SandboxProcess) -> None:
    # When the main location's full history is paged at 10 a page (the default 5% short-page rate)
    info = square.admin.info()
    pages: list[dict[str, Any]] = []
    with client_for(square) as client:
        params = {"location_id": info["main_location_id"], "begin_time": EPOCH_BEGIN, "limit": 10}
        paginate(client, "GET", "/v2/payments", "payments", params=params, pages=pages)

    # Then some page before the last is short and still has a cursor
    short = [page for page in pages[:-1] if len(page.get("payments", [])) < 10]
    assert short, "no short page: a paginator stopping at a short page would not be caught"
    assert all(page["cursor"] for page in short)


def test_a_bad_or_foreign_cursor_is_400_invalid_cursor(square: SandboxProcess) -> None:
    with client_for(square) as client:
        # Given a real cursor for one query
        first = client.get("/v2/payments", params={"begin_time": EPOCH_BEGIN}).json()

        # When a garbage cursor is sent, or the real one with different parameters
        garbage = client.get("/v2/payments", params={"cursor": "not-a-cursor"})
        foreign = client.get("/v2/payments", params={"cursor": first["cursor"], "sort_order": "ASC"})
        catalog = client.get("/v2/catalog/list", params={"cursor": first["cursor"]})

    # Then each is a 400 INVALID_CURSOR
    for response in (garbage, foreign, catalog):
        assert response.status_code == 400
        assert _error(response)["code"] == "INVALID_CURSOR"


def test_get_payment_returns_the_listed_payment_and_404s_unknown_ids(square: SandboxProcess) -> None:
    with client_for(square) as client:
        # Given a listed payment
        listed = client.get("/v2/payments").json()["payments"][3]

        # When it is fetched by id, and an unknown id is fetched
        found = client.get(f"/v2/payments/{listed['id']}")
        missing = client.get("/v2/payments/nope" + listed["id"][4:])

    # Then the first equals the listed object and the second is 404 NOT_FOUND
    assert found.json() == {"payment": listed}
    assert missing.status_code == 404
    assert _error(missing)["code"] == "NOT_FOUND"


def test_updated_at_range_sorted_by_updated_at(square: SandboxProcess) -> None:
    # Given the truth
    truth = square.admin.truth("payments")
    info = square.admin.info()
    begin = _ts(info["now"]) - timedelta(days=90)

    # When payments updated in the last 90 days are listed by updated_at, ascending, for every location
    with client_for(square) as client:
        listed = all_payments(
            client,
            info["locations"],
            updated_at_begin_time=begin.isoformat(),
            sort_field="UPDATED_AT",
            sort_order="ASC",
        )

    # Then exactly the truth's such payments come back, in updated_at order per location
    expected = {row["id"] for row in truth if _ts(row["updated_at"]) >= begin}
    assert {payment["id"] for payment in listed} == expected
    for location in info["locations"]:
        stamps = [payment["updated_at"] for payment in listed if payment["location_id"] == location]
        assert stamps == sorted(stamps)


# -- faults ----------------------------------------------------------------------------------------


def test_faults_429_500_and_503_with_html(make_square: Callable[..., SandboxProcess]) -> None:
    # Given a sandbox answering every request 429 with Retry-After 7
    sandbox = make_square(rate_429=1.0, retry_after_seconds=7)
    with client_for(sandbox) as client:
        limited = client.get("/v2/payments")

        # When 500s and then 503s are switched on instead
        sandbox.admin.set_faults(rate_429=0.0, rate_500=1.0)
        failed = client.get("/v2/payments")
        sandbox.admin.set_faults(rate_500=0.0, rate_503=1.0)
        unavailable = [client.get("/v2/payments") for _ in range(30)]
        sandbox.admin.clear_faults()
        healthy = client.get("/v2/payments")

    # Then each failure has Square's shape, except a load-balancer 503 with an HTML body
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "7"
    assert (_error(limited)["category"], _error(limited)["code"]) == ("RATE_LIMIT_ERROR", "RATE_LIMITED")
    assert failed.status_code == 500
    assert _error(failed)["code"] == "INTERNAL_SERVER_ERROR"
    assert {response.status_code for response in unavailable} == {503}
    html = [r for r in unavailable if r.headers["content-type"].startswith("text/html")]
    json_bodies = [r for r in unavailable if r.headers["content-type"].startswith("application/json")]
    assert html
    assert json_bodies
    assert "<html>" in html[0].text
    assert _error(json_bodies[0])["code"] == "SERVICE_UNAVAILABLE"
    assert healthy.status_code == 200
    # And the admin endpoints were never faulted, and the stats count by template and status
    stats = sandbox.admin.stats()["requests"]["GET /v2/payments"]
    assert stats == {"429": 1, "500": 1, "503": 30, "200": 1}


def test_a_hanging_request_outlasts_a_2_second_client_timeout(
    make_square: Callable[..., SandboxProcess],
) -> None:
    # Given a sandbox where every request hangs
    sandbox = make_square(timeout_rate=1.0)

    # When a client with a 2 s timeout calls it
    with client_for(sandbox) as client, pytest.raises(httpx.ReadTimeout):
        client.get("/v2/locations", timeout=2.0)

    # Then the admin side still answers at once
    assert sandbox.admin.info()["counts"]["payments"] == 3_000


# -- the clock -------------------------------------------------------------------------------------


def test_clock_advance_creates_and_changes_payments_old_ones_included(
    make_square: Callable[..., SandboxProcess],
) -> None:
    # Given a sandbox and its truth
    sandbox = make_square()
    before = {row["id"]: row for row in sandbox.admin.truth("payments")}
    old_now = _ts(sandbox.admin.info()["now"])

    # When the clock moves an hour, with 50 new payments and 30 changed ones
    result = sandbox.admin.advance(3600, new_payments=50, changed_payments=30)

    # Then the clock moved and the truth has the new payments, created within the hour
    new_now = _ts(result["now"])
    assert new_now - old_now == timedelta(hours=1)
    assert _ts(sandbox.admin.info()["now"]) == new_now
    after = {row["id"]: row for row in sandbox.admin.truth("payments")}
    assert len(result["created"]) == 50
    assert len(after) == len(before) + 50
    for payment_id in result["created"]:
        assert old_now < _ts(after[payment_id]["created_at"]) <= new_now
    # And each changed payment was refunded, captured or canceled within the hour
    assert len(result["changed"]) == 30
    for payment_id in result["changed"]:
        was, now = before[payment_id], after[payment_id]
        assert old_now < _ts(now["updated_at"]) <= new_now
        assert (now["status"], now["refunded_cents"], now["amount_cents"]) != (
            was["status"],
            was["refunded_cents"],
            was["amount_cents"],
        )
        assert now["total_cents"] == now["amount_cents"] + now["tip_cents"]
    old = [i for i in result["changed"] if _ts(after[i]["created_at"]) < new_now - timedelta(days=365)]
    assert old, "no payment older than a year was changed"

    # And an incremental read by updated_at finds every change, but only with begin_time set
    with client_for(sandbox) as client:
        since = {"updated_at_begin_time": old_now.isoformat(), "sort_field": "UPDATED_AT"}
        with_begin = all_payments(client, sandbox.admin.info()["locations"], **since)
        without_begin: list[dict[str, Any]] = []
        for location in sandbox.admin.info()["locations"]:
            params = {**since, "location_id": location}
            without_begin += paginate(client, "GET", "/v2/payments", "payments", params=params)
        fetched = client.get(f"/v2/payments/{old[0]}").json()["payment"]
    assert {p["id"] for p in with_begin} == set(result["changed"]) | set(result["created"])
    assert old[0] not in {p["id"] for p in without_begin}
    assert fetched["updated_at"] == after[old[0]]["updated_at"]


def test_the_clock_is_deterministic(make_square: Callable[..., SandboxProcess]) -> None:
    # Given two sandboxes with the same seed and anchor
    first, second = make_square(), make_square()

    # When both clocks advance the same way
    results = [s.admin.advance(600, new_payments=5, changed_payments=7) for s in (first, second)]

    # Then they made the same changes and have the same truth
    assert results[0] == results[1]
    assert first.admin.truth("payments") == second.admin.truth("payments")


# -- catalog and customers -------------------------------------------------------------------------


def test_items_truth_equals_catalog_search_with_deleted_objects(square: SandboxProcess) -> None:
    # Given the items truth (one row per variation)
    truth = {row["variation_id"]: row for row in square.admin.truth("items")}

    # When the catalog is searched including deleted objects, and listed without them
    with client_for(square) as client:
        body = {"object_types": ["ITEM"], "include_deleted_objects": True, "limit": 37}
        searched = paginate(client, "POST", "/v2/catalog/search", "objects", body=body)
        listed = paginate(client, "GET", "/v2/catalog/list", "objects", params={"types": "item,category"})

    # Then the search's variations are the truth, field by field
    seen: dict[str, dict[str, Any]] = {}
    for item in searched:
        for variation in item["item_data"]["variations"]:
            data = variation["item_variation_data"]
            price = data.get("price_money", {}).get("amount")
            seen[variation["id"]] = {
                "variation_id": variation["id"],
                "item_id": item["id"],
                "name": item["item_data"]["name"],
                "variation_name": data["name"],
                "category_id": item["item_data"]["category_id"],
                "sku": data["sku"],
                "price_cents": price,
                "currency": data.get("price_money", {}).get("currency"),
                "available": not variation["is_deleted"]
                and (variation["present_at_all_locations"] or bool(variation.get("present_at_location_ids"))),
                "is_deleted": variation["is_deleted"],
                "version": variation["version"],
                "updated_at": variation["updated_at"],
            }
    assert seen == truth
    deleted = {item["id"] for item in searched if item["is_deleted"]}
    assert deleted
    assert any(row["price_cents"] is None for row in truth.values())
    # And ListCatalog never shows a deleted object
    assert {obj["type"] for obj in listed} == {"ITEM", "CATEGORY"}
    assert not deleted & {obj["id"] for obj in listed}
    assert len([o for o in listed if o["type"] == "ITEM"]) == len(searched) - len(deleted)


def test_catalog_search_begin_time_is_exclusive_and_latest_time_is_set(square: SandboxProcess) -> None:
    with client_for(square) as client:
        # Given every item, including deleted ones
        items = paginate(
            client,
            "POST",
            "/v2/catalog/search",
            "objects",
            body={"object_types": ["ITEM"], "include_deleted_objects": True},
        )
        pivot = sorted(item["updated_at"] for item in items)[len(items) // 2]

        # When searching for items changed after one item's updated_at
        page = client.post(
            "/v2/catalog/search",
            json={
                "object_types": ["ITEM"],
                "include_deleted_objects": True,
                "begin_time": pivot,
                "limit": 1000,
            },
        ).json()

    # Then only strictly later ones come back, and latest_time is the newest change
    assert {obj["id"] for obj in page["objects"]} == {i["id"] for i in items if i["updated_at"] > pivot}
    assert page["latest_time"] == max(item["updated_at"] for item in items)


def test_customers_limit_is_validated_and_listing_equals_the_truth(square: SandboxProcess) -> None:
    truth = {row["id"]: row for row in square.admin.truth("customers")}
    with client_for(square) as client:
        # When limits out of range are sent
        low = client.get("/v2/customers", params={"limit": 0})
        high = client.get("/v2/customers", params={"limit": 101})

        # And all customers are listed by creation, and searched by a created_at range
        listed = paginate(
            client,
            "GET",
            "/v2/customers",
            "customers",
            params={"sort_field": "CREATED_AT", "limit": 33, "count": "true"},
        )
        start, end = sorted(row["created_at"] for row in truth.values())[50], "2026-01-01T00:00:00Z"
        query = {
            "filter": {"created_at": {"start_at": start, "end_at": end}},
            "sort": {"field": "CREATED_AT"},
        }
        searched = paginate(
            client, "POST", "/v2/customers/search", "customers", body={"query": query, "limit": 40}
        )

    # Then the limits are 400s naming the field
    assert low.status_code == high.status_code == 400
    assert (_error(low)["code"], _error(low)["field"]) == ("VALUE_TOO_LOW", "limit")
    assert (_error(high)["code"], _error(high)["field"]) == ("VALUE_TOO_HIGH", "limit")
    # And the listing is the truth, in creation order, with synthetic contact data present
    assert [c["id"] for c in listed] == sorted(truth, key=lambda i: (truth[i]["created_at"], i))
    assert all(c["email_address"].endswith("@example.com") and c["given_name"] for c in listed)
    for customer in listed:
        row = truth[customer["id"]]
        assert (customer["updated_at"], customer["version"], customer.get("reference_id")) == (
            row["updated_at"],
            row["version"],
            row["reference_id"],
        )
    # And the search returns exactly the range (start inclusive, end exclusive)
    expected = {i for i, row in truth.items() if start <= row["created_at"] < "2026-01-01T00:00:00.000Z"}
    assert {c["id"] for c in searched} == expected


def test_same_seed_same_data_other_seed_other_data(
    square: SandboxProcess, make_square: Callable[..., SandboxProcess]
) -> None:
    # Given a second sandbox with the same seed and anchor, and one with another seed
    twin, other = make_square(), make_square(seed=12)

    # Then the twin's data is identical and the other's is not
    for kind in ("payments", "items", "customers"):
        assert twin.admin.truth(kind) == square.admin.truth(kind)
        assert other.admin.truth(kind) != square.admin.truth(kind)
    with client_for(square) as a, client_for(twin) as b:
        assert a.get("/v2/payments").json() == b.get("/v2/payments").json()


# -- the default dataset ---------------------------------------------------------------------------


def test_default_dataset_has_the_production_shape(square_default: SandboxProcess) -> None:
    # Given the default dataset's truth
    info = square_default.admin.info()
    truth = square_default.admin.truth("payments")

    # Then it has exactly 100,184 payments over two years across 3 locations, the main one busiest
    assert info["counts"]["payments"] == len(truth) == 100_184
    by_location = Counter(row["location_id"] for row in truth)
    assert set(by_location) == set(info["locations"])
    assert len(by_location) == 3
    assert by_location.most_common(1)[0][0] == info["main_location_id"]
    assert len(set(by_location.values())) == 3
    span = _ts(truth[-1]["created_at"]) - _ts(truth[0]["created_at"])
    assert timedelta(days=720) < span <= timedelta(days=730)
    # And the traps are there: tips, float-mangled cents, midnight, every status and source
    assert any(row["total_cents"] != row["amount_cents"] for row in truth)
    assert all(row["total_cents"] == row["amount_cents"] + row["tip_cents"] for row in truth)
    assert any(int(row["amount_cents"] / 100 * 100) != row["amount_cents"] for row in truth)
    assert any(row["created_at"].endswith("T00:00:00.000Z") for row in truth)
    assert {row["status"] for row in truth} == {"COMPLETED", "APPROVED", "CANCELED", "FAILED"}
    assert {row["source_type"] for row in truth} == {"CARD", "CASH", "WALLET", "EXTERNAL"}
    assert any(row["refunded_cents"] for row in truth)
    assert 0.25 < sum(row["customer_id"] is None for row in truth) / len(truth) < 0.35
    assert any(_ts(row["updated_at"]) - _ts(row["created_at"]) > timedelta(hours=1) for row in truth)
    assert info["counts"]["customers"] == 1_732
    assert info["counts"]["items"] == 500


def test_default_dataset_has_a_created_at_tie_straddling_a_page_boundary(
    square_default: SandboxProcess,
) -> None:
    # When the main location's last year is paged the default way
    pages: list[dict[str, Any]] = []
    with client_for(square_default) as client:
        listed = paginate(client, "GET", "/v2/payments", "payments", pages=pages)

    # Then some page ends with a created_at the next page starts with, and nothing is lost or repeated
    straddles = [
        (page["payments"][-1], following["payments"][0])
        for page, following in itertools.pairwise(pages)
        if following.get("payments")
        and page["payments"][-1]["created_at"] == following["payments"][0]["created_at"]
    ]
    assert straddles, "no created_at tie across a page boundary"
    assert len(listed) == len({payment["id"] for payment in listed})
    # And the order is Square's: (created_at, id), newest first
    keys = [(payment["created_at"], payment["id"]) for payment in listed]
    assert keys == sorted(keys, reverse=True)
