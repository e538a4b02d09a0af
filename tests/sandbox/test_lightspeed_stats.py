"""The Lightspeed sandbox measures pacing and refreshes itself: ``/_sandbox/stats`` and its reset.

The summaries are first checked on hand-made logs, to the exact number, then on a real sandbox
process driven by clients whose pace is known.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from sandbox.lightspeed_admin import LightspeedMeasurements
from sandbox.process import SandboxProcess
from tests.polling import wait_until
from tests.sandbox.conftest import lightspeed_client_for

SALES = "/API/V3/Account/123456/Sale.json"
REFRESH_FORM = {
    "grant_type": "refresh_token",
    "client_id": "sandbox-client",
    "client_secret": "sandbox-secret",
    "refresh_token": "sandbox-refresh-token",
}
#: Keys every ``pacing.after_first_bucket`` has.
AFTER_KEYS = {"requests", "drips", "seconds", "drips_per_second", "requests_per_second", "ratio_to_drip_rate"}


def stats(sandbox: SandboxProcess) -> dict[str, Any]:
    body: dict[str, Any] = sandbox.admin.stats()
    return body


def refresh(sandbox: SandboxProcess, refresh_token: str = REFRESH_FORM["refresh_token"]) -> httpx.Response:
    form = {**REFRESH_FORM, "refresh_token": refresh_token}
    return httpx.post(f"{sandbox.base_url}/auth/oauth/token", data=form, timeout=10)


def reset(sandbox: SandboxProcess) -> dict[str, Any]:
    response = httpx.post(f"{sandbox.base_url}/_sandbox/stats/reset", timeout=10)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def paced_requests(client: httpx.Client, count: int, per_second: float) -> tuple[list[int], list[float]]:
    """Send ``count`` requests on a fixed schedule of ``per_second``: their statuses and send times."""
    start = time.monotonic()
    statuses, sent = [], []
    for n in range(count):
        # The workload's own pace (a schedule, so late requests do not push the later ones back).
        time.sleep(max(0.0, start + n / per_second - time.monotonic()))
        sent.append(time.monotonic())
        statuses.append(client.get(SALES, params={"limit": 1}).status_code)
    return statuses, sent


# -- the summaries, on hand-made logs --------------------------------------------------------------


def test_pacing_is_null_until_there_is_enough_data() -> None:
    # Given no request at all
    measured = LightspeedMeasurements()

    # Then nothing can be said
    empty = measured.pacing(now=100.0, bucket_size=3, drip_rate=2)
    assert empty["requests"] == 0
    assert empty["first_request_seconds_ago"] is None
    assert empty["rate_limited_after_first_second"] == 0
    assert empty["after_first_bucket"] == dict.fromkeys(AFTER_KEYS)

    # When requests fill the bucket exactly, with nothing after the filling one
    for at in (10.0, 10.5, 11.0):
        measured.api_request(at, 1.0, 200)

    # Then the time since the first is known, but the pace after the first bucket is still not
    filled = measured.pacing(now=12.0, bucket_size=3, drip_rate=2)
    assert (filled["requests"], filled["first_request_seconds_ago"]) == (3, 2.0)
    assert filled["after_first_bucket"] == dict.fromkeys(AFTER_KEYS)


def test_pacing_counts_from_the_request_whose_successful_costs_filled_the_bucket() -> None:
    # Given a log (answered out of arrival order) where 2xx costs reach the bucket's 3 drips at 0.4 s,
    # with 401s and 429s that do not count as drips
    measured = LightspeedMeasurements()
    log = [
        (0.0, 1.0, 200),
        (0.2, 1.0, 200),
        (0.1, 1.0, 429),  # in the first second: expected
        (0.3, 1.0, 401),
        (0.4, 1.0, 200),  # the cumulative 2xx cost reaches 3 here
        (1.4, 1.0, 200),
        (2.4, 1.0, 429),  # after the first second: counted
        (2.9, 2.0, 200),
    ]
    for entry in log:
        measured.api_request(*entry)

    # When the pace is computed
    pacing = measured.pacing(now=3.0, bucket_size=3, drip_rate=2)

    # Then it runs from 0.4 s to 2.9 s over the 3 requests after the filling one, 3 drips answered 2xx
    assert pacing["requests"] == 8
    assert pacing["first_request_seconds_ago"] == 3.0
    assert pacing["rate_limited_after_first_second"] == 1
    assert (pacing["bucket_size"], pacing["drip_rate"]) == (3, 2)
    after = pacing["after_first_bucket"]
    assert (after["requests"], after["drips"]) == (3, 3.0)
    assert after["seconds"] == pytest.approx(2.5)
    assert after["drips_per_second"] == pytest.approx(1.2)
    assert after["requests_per_second"] == pytest.approx(1.2)
    assert after["ratio_to_drip_rate"] == pytest.approx(0.6)
    assert measured.rate_limited == 2


def test_a_refresh_is_early_while_the_previous_token_has_over_a_quarter_left() -> None:
    # Given refreshes issuing 100-second tokens: at 0, at 10 (90 s left: early), at 85 (25 s left:
    # not more than a quarter, so not early) and at 200 (expired long ago)
    measured = LightspeedMeasurements()
    for at in (0.0, 10.0, 85.0, 200.0):
        measured.refreshed(at + 1000, at, 100.0)

    # When the refreshes are summarised
    summary = measured.refresh_summary(lifetime_seconds=100.0)

    # Then one of the three after the first was early, and the smallest gap is 10 s
    assert summary == {
        "count": 4,
        "min_interval_seconds": 10.0,
        "access_token_lifetime_seconds": 100.0,
        "early": 1,
    }
    assert LightspeedMeasurements().refresh_summary(lifetime_seconds=5)["min_interval_seconds"] is None


# -- a real sandbox ---------------------------------------------------------------------------------


def test_a_client_pacing_below_the_drip_rate_is_measured_at_its_pace(
    make_lightspeed: Callable[..., SandboxProcess],
) -> None:
    # Given a bucket of 5 drips draining 20 per second
    sandbox = make_lightspeed(bucket_size=5, drip_rate=20)

    # When a client sends 41 one-drip requests at 18 per second (90 % of the drip rate)
    with lightspeed_client_for(sandbox) as client:
        statuses, sent = paced_requests(client, 41, per_second=18)

    # Then none was limited, and after the first 5 (the first bucket) the sandbox measured 36
    # requests and 36 drips over 36 intervals of about 1/18 s: 90 % of the drip rate, as the
    # client's own clock saw it
    assert statuses == [200] * 41
    client_seconds = sent[-1] - sent[4]
    body = stats(sandbox)
    pacing = body["pacing"]
    assert pacing["requests"] == 41
    assert pacing["rate_limited_after_first_second"] == 0
    assert (pacing["bucket_size"], pacing["drip_rate"]) == (5, 20)
    after = pacing["after_first_bucket"]
    assert (after["requests"], after["drips"]) == (36, 36.0)
    assert after["seconds"] == pytest.approx(client_seconds, abs=0.03)
    assert after["ratio_to_drip_rate"] == pytest.approx(36 / client_seconds / 20, rel=0.03)
    assert after["drips_per_second"] == pytest.approx(after["requests_per_second"])
    assert 0.8 <= after["ratio_to_drip_rate"] <= 1.0
    assert body["rate_limited"] == 0
    assert body["total"] == 41


def test_429s_count_only_after_the_first_second(make_lightspeed: Callable[..., SandboxProcess]) -> None:
    # Given a bucket of 3 drips draining 1 per second, and a burst filling it in the first second
    sandbox = make_lightspeed(bucket_size=3, drip_rate=1)
    with lightspeed_client_for(sandbox) as client:
        first_burst = [client.get(SALES, params={"limit": 1}).status_code for _ in range(6)]
        assert 429 in first_burst
        assert stats(sandbox)["pacing"]["rate_limited_after_first_second"] == 0

        # When another burst comes more than a second after the first request
        wait_until(
            lambda: stats(sandbox)["pacing"]["first_request_seconds_ago"] > 1.0,
            timeout_seconds=5,
            message="a second passed since the first request",
        )
        second_burst = [client.get(SALES, params={"limit": 1}).status_code for _ in range(4)]

    # Then exactly the second burst's 429s count as late, and every 429 is in the total
    late = second_burst.count(429)
    assert late >= 1, second_burst
    body = stats(sandbox)
    assert body["pacing"]["rate_limited_after_first_second"] == late
    assert body["rate_limited"] == first_burst.count(429) + late
    assert body["pacing"]["requests"] == 10


def test_two_refreshes_in_quick_succession_count_as_early(
    make_lightspeed: Callable[..., SandboxProcess],
) -> None:
    # Given a sandbox issuing 60-second access tokens
    sandbox = make_lightspeed(access_token_lifetime_seconds=60)

    # When the token is refreshed twice in a row, and refused once
    assert refresh(sandbox).status_code == 200
    assert refresh(sandbox).status_code == 200
    assert refresh(sandbox, "not-a-refresh-token").status_code == 400

    # Then two refreshes are counted, the second one early, a short real time apart
    summary = stats(sandbox)["refresh"]
    assert summary["count"] == 2 == stats(sandbox)["refreshes"]
    assert summary["early"] == 1
    assert 0 < summary["min_interval_seconds"] < 5
    assert summary["access_token_lifetime_seconds"] == 60

    # When the sandbox clock moves 50 s (10 s left, under a quarter) and the token is refreshed
    httpx.post(f"{sandbox.base_url}/_sandbox/clock/advance", json={"seconds": 50}, timeout=10)
    assert refresh(sandbox).status_code == 200

    # Then that refresh is not early: the token was nearly spent on the clock that expires it
    summary = stats(sandbox)["refresh"]
    assert (summary["count"], summary["early"]) == (3, 1)


def test_one_refresh_per_expiry_is_never_early(make_lightspeed: Callable[..., SandboxProcess]) -> None:
    # Given a sandbox issuing 1-second access tokens, and a first refresh
    sandbox = make_lightspeed(access_token_lifetime_seconds=1)
    token = refresh(sandbox).json()["access_token"]

    # When the token is refreshed again only once it is refused
    def expired() -> bool:
        with lightspeed_client_for(sandbox, token) as client:
            return client.get(SALES, params={"limit": 1}).status_code == 401

    wait_until(expired, timeout_seconds=5, message="the 1-second access token expired")
    assert refresh(sandbox).status_code == 200

    # Then neither refresh was early, and they were at least a lifetime apart in real time
    summary = stats(sandbox)["refresh"]
    assert (summary["count"], summary["early"]) == (2, 0)
    assert summary["min_interval_seconds"] >= 1.0


def test_reset_clears_counts_and_logs_but_not_data_tokens_or_bucket(
    make_lightspeed: Callable[..., SandboxProcess],
) -> None:
    # Given requests (three answered 200, one 401) and a refresh, on a bucket that drains slowly
    sandbox = make_lightspeed(bucket_size=50, drip_rate=0.1)
    with lightspeed_client_for(sandbox) as client:
        assert [client.get(SALES, params={"limit": 1}).status_code for _ in range(3)] == [200] * 3
    with lightspeed_client_for(sandbox, "not-a-token") as stranger:
        assert stranger.get(SALES).status_code == 401
    refreshed = refresh(sandbox).json()["access_token"]
    before = stats(sandbox)
    assert (before["total"], before["pacing"]["requests"], before["refresh"]["count"]) == (5, 4, 1)
    assert before["requests"][f"GET {SALES.replace('123456', '{account_id}')}"] == {"200": 3, "401": 1}
    counts = sandbox.admin.info()["counts"]

    # When the stats are reset
    answer = reset(sandbox)

    # Then the counters and both logs are empty
    after = stats(sandbox)
    assert answer == after
    assert (after["requests"], after["total"], after["refreshes"], after["rate_limited"]) == ({}, 0, 0, 0)
    assert after["pacing"]["requests"] == 0
    assert after["pacing"]["first_request_seconds_ago"] is None
    assert after["pacing"]["after_first_bucket"] == dict.fromkeys(AFTER_KEYS)
    assert after["refresh"]["count"] == 0
    assert after["refresh"]["min_interval_seconds"] is None
    # And the data, both tokens and the bucket's level are as they were
    assert sandbox.admin.info()["counts"] == counts
    for token in (None, refreshed):
        with lightspeed_client_for(sandbox, token) as client:
            response = client.get(SALES, params={"limit": 1})
            assert response.status_code == 200
    level = float(response.headers["X-LS-API-Bucket-Level"].split("/")[0])
    assert level > 4, "the bucket was emptied by the reset"
    assert stats(sandbox)["pacing"]["requests"] == 2
