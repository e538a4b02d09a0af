"""Request metrics of the source clients: endpoint templates, and the metered transport on a real server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr

from sandbox.process import SandboxProcess, free_port, start_square_sandbox
from workers.errors import SourceAuthError
from workers.sources.http_policy import MeteredTransport, endpoint_template
from workers.sources.square import SquareClient

TOKEN = "sq-metrics-test-token"


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/v2/locations", "/v2/locations"),
        ("/v2/payments/R2xkbP9mAsEMYPUGjjGNaNO5ZDVy", "/v2/payments/{id}"),
        ("/v2/customers/search", "/v2/customers/search"),
        ("/API/V3/Account/12345/Sale.json", "/API/V3/Account/{id}/Sale.json"),
        ("/v1/pages/59833787-2cf9-4fdf-8782-e53db20768a5", "/v1/pages/{id}"),
        ("/v1/blocks/59833787cf94fdf8782e53db20768a5a/children", "/v1/blocks/{id}/children"),
        ("/auth/oauth/token", "/auth/oauth/token"),
        ("/", "/"),
    ],
)
def test_ids_in_paths_become_a_placeholder(path: str, template: str) -> None:
    assert endpoint_template(path) == template


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    with start_square_sandbox(token=TOKEN, payments=50, customers=5, items=5) as process:
        yield process


def _count(system: str, endpoint: str, status_class: str) -> float:
    labels = {"system": system, "endpoint": endpoint, "status_class": status_class}
    return REGISTRY.get_sample_value("possync_source_request_duration_seconds_count", labels) or 0.0


def _auth_failures(system: str) -> float:
    return REGISTRY.get_sample_value("possync_source_auth_failures_total", {"system": system}) or 0.0


def _client(base_url: str, token: str = TOKEN) -> tuple[SquareClient, httpx.Client]:
    http = httpx.Client(transport=MeteredTransport([(base_url, "square")]))
    client = SquareClient(
        http,
        base_url=base_url,
        token=SecretStr(token),
        square_version="2025-08-20",
        timeout_seconds=10,
        request_attempts=1,
        max_request_wait_seconds=5,
    )
    return client, http


def test_requests_are_timed_by_system_endpoint_and_status_class(sandbox: SandboxProcess) -> None:
    # Given a Square client whose transport is metered
    client, http = _client(sandbox.base_url)
    ok_before = _count("square", "/v2/locations", "2xx")
    denied_before = _count("square", "/v2/locations", "4xx")
    auth_before = _auth_failures("square")
    try:
        # When it lists locations, then the token is revoked and it tries again
        assert client.list_locations()
        sandbox.admin.set_faults(token_revoked=True)
        with pytest.raises(SourceAuthError):
            client.list_locations()
    finally:
        sandbox.admin.clear_faults()
        http.close()

    # Then one 2xx and one 4xx request are timed, and the 401 counts as an auth failure
    assert _count("square", "/v2/locations", "2xx") == ok_before + 1
    assert _count("square", "/v2/locations", "4xx") == denied_before + 1
    assert _auth_failures("square") == auth_before + 1


def test_a_request_without_a_response_is_timed_as_error_and_unknown_hosts_as_other() -> None:
    # Given a metered client for Square and a URL of no configured system where nothing listens
    url = f"http://127.0.0.1:{free_port()}/v2/locations"
    before = _count("other", "/v2/locations", "error")
    transport = MeteredTransport([("https://connect.squareup.com", "square")])

    # When the connection is refused
    with httpx.Client(transport=transport) as http, pytest.raises(httpx.ConnectError):
        http.get(url, timeout=2)

    # Then the attempt is timed as an error of system "other"
    assert _count("other", "/v2/locations", "error") == before + 1
