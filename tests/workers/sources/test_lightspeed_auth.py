"""The Lightspeed token manager against real Redis and a tiny OAuth token endpoint on loopback.

The endpoint (Starlette under uvicorn, in a thread) rotates the refresh token on every grant,
answers ``invalid_grant`` to any other, and counts grants, so a test can see how many refreshes
the whole "pool" made.
"""

from __future__ import annotations

import socket
import stat
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import redis
import uvicorn
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.polling import wait_until
from workers.errors import SourceAuthError
from workers.sources.lightspeed_auth import TokenManager

CLIENT_ID = "possync-test-client"
CLIENT_SECRET = "ls-client-secret-5b2e"
FIRST_REFRESH = "ls-refresh-0-9c1d"


class TokenEndpoint:
    """A refresh-grant endpoint that rotates refresh tokens and counts grants."""

    def __init__(self, *, delay_seconds: float = 0.2, expires_in: int = 1800) -> None:
        self.valid_refresh = FIRST_REFRESH
        self.grants = 0
        self.issued: list[str] = []
        self.delay_seconds = delay_seconds
        self.expires_in = expires_in
        self._lock = threading.Lock()

    async def token(self, request: Request) -> JSONResponse:
        form = dict(parse_qsl((await request.body()).decode()))
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return JSONResponse({"error": "invalid_client", "error_description": "bad client"}, 401)
        if form.get("grant_type") != "refresh_token":
            return JSONResponse({"error": "unsupported_grant_type"}, 400)
        # A slow grant widens the window in which a second refresh could start.
        time.sleep(self.delay_seconds)
        with self._lock:
            if form.get("refresh_token") != self.valid_refresh:
                return JSONResponse(
                    {"error": "invalid_grant", "error_description": "The refresh token is invalid."}, 400
                )
            self.grants += 1
            access = f"ls-access-{self.grants}-7f3a"
            self.valid_refresh = f"ls-refresh-{self.grants}-9c1d"
            self.issued.append(access)
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "access_token": access,
            "refresh_token": self.valid_refresh,
        }
        return JSONResponse(body)


@pytest.fixture
def endpoint() -> Iterator[tuple[TokenEndpoint, str]]:
    state = TokenEndpoint()
    app = Starlette(routes=[Route("/auth/oauth/token", state.token, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout_seconds=10, message="the token endpoint did not start")
    yield state, f"http://127.0.0.1:{port}/auth/oauth/token"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture
def make_manager(
    endpoint: tuple[TokenEndpoint, str], redis_url: str
) -> Iterator[Callable[..., TokenManager]]:
    """Factory: one manager as one worker process would build it (its own Redis and HTTP clients)."""
    closers: list[Callable[[], None]] = []

    def make(*, refresh_token: str = FIRST_REFRESH, token_file: Path | None = None) -> TokenManager:
        http = httpx.Client()
        client = redis.Redis.from_url(redis_url)
        closers.extend([http.close, client.close])
        return TokenManager(
            client,
            http,
            token_url=endpoint[1],
            client_id=CLIENT_ID,
            client_secret=SecretStr(CLIENT_SECRET),
            refresh_token=SecretStr(refresh_token),
            token_file=token_file,
            timeout_seconds=10,
            wait_seconds=10,
        )

    yield make
    for close in closers:
        close()


def _texts(error: BaseException) -> list[str]:
    return [str(error), repr(error), "".join(traceback.format_exception(error))]


def test_many_workers_asking_at_once_cause_exactly_one_refresh(
    endpoint: tuple[TokenEndpoint, str], make_manager: Callable[..., TokenManager]
) -> None:
    # Given 16 workers with no cached token
    state, _ = endpoint
    managers = [make_manager() for _ in range(16)]
    barrier = threading.Barrier(len(managers))

    def ask(manager: TokenManager) -> str:
        barrier.wait()
        return manager.access_token().get_secret_value()

    # When they all ask for a token at the same moment
    with ThreadPoolExecutor(len(managers)) as pool:
        tokens = list(pool.map(ask, managers))

    # Then the endpoint granted exactly once and everyone got that token
    assert state.grants == 1
    assert set(tokens) == {state.issued[0]}


def test_a_401_storm_refreshes_once_and_a_late_rejection_of_the_old_token_reuses_the_new_one(
    endpoint: tuple[TokenEndpoint, str], make_manager: Callable[..., TokenManager]
) -> None:
    # Given a cached token that the API has just started rejecting
    state, _ = endpoint
    managers = [make_manager() for _ in range(12)]
    old = managers[0].access_token()
    barrier = threading.Barrier(len(managers))

    def rejected(manager: TokenManager) -> str:
        barrier.wait()
        return manager.refresh_after_rejection(old).get_secret_value()

    # When every worker reports the rejection at once, and one more reports it late
    with ThreadPoolExecutor(len(managers)) as pool:
        tokens = set(pool.map(rejected, managers))
    late = managers[0].refresh_after_rejection(old).get_secret_value()

    # Then one refresh replaced the token for all of them
    assert state.grants == 2
    assert tokens == {late} == {state.issued[1]}


def test_a_rotated_refresh_token_survives_a_restart_in_redis_and_in_the_file(
    endpoint: tuple[TokenEndpoint, str],
    make_manager: Callable[..., TokenManager],
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    # Given a manager with a token file, after one refresh that rotated the refresh token
    state, _ = endpoint
    token_file = tmp_path / "state" / "lightspeed_refresh_token"
    manager = make_manager(token_file=token_file)
    manager.access_token()

    # Then the rotated token is stored in Redis and in a file only its owner can read
    assert redis_client.get(manager.refresh_key) == state.valid_refresh.encode()
    assert token_file.read_text() == state.valid_refresh
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert not [p for p in token_file.parent.iterdir() if p != token_file], "a temporary file was left"

    # When the access token expires and a restarted worker, still configured with the first
    # (now revoked) refresh token, needs a new one
    redis_client.delete(manager.access_key)
    restarted = make_manager(token_file=token_file)
    second = restarted.access_token().get_secret_value()

    # Then it refreshed with the rotated token from Redis
    assert second == state.issued[1]

    # When Redis is lost entirely and another restart needs a token
    redis_client.flushdb()
    third = make_manager(token_file=token_file).access_token().get_secret_value()

    # Then the file's token was used, and the file follows the newest rotation
    assert third == state.issued[2]
    assert token_file.read_text() == state.valid_refresh


def test_invalid_grant_is_permanent_tells_how_to_reauthorise_and_leaks_no_secret(
    endpoint: tuple[TokenEndpoint, str], make_manager: Callable[..., TokenManager]
) -> None:
    # Given a configured refresh token Lightspeed no longer accepts
    state, _ = endpoint
    stale = "ls-refresh-revoked-31aa"
    manager = make_manager(refresh_token=stale)

    # When a token is asked for
    with pytest.raises(SourceAuthError) as caught:
        manager.access_token()

    # Then it fails at once, permanently, naming what the operator must do
    error = caught.value
    assert state.grants == 0
    assert error.status_code == 400
    assert "invalid_grant" in str(error)
    assert "POSSYNC_LIGHTSPEED_REFRESH_TOKEN" in str(error)
    assert manager.refresh_key in str(error)

    # And neither secret is in the error, its traceback or the manager's repr
    for text in [*_texts(error), repr(manager)]:
        assert stale not in text
        assert CLIENT_SECRET not in text


def test_a_cached_token_is_handed_out_without_a_refresh_until_it_expires(
    endpoint: tuple[TokenEndpoint, str], make_manager: Callable[..., TokenManager], redis_client: redis.Redis
) -> None:
    # Given a token endpoint issuing tokens valid for 30 minutes, and one refresh done
    state, _ = endpoint
    manager = make_manager()
    first = manager.access_token()

    # When more tokens are asked for by this and another worker
    again = [manager.access_token(), make_manager().access_token()]

    # Then the cached token is reused, cached for expires_in minus the safety margin
    assert state.grants == 1
    assert {token.get_secret_value() for token in again} == {first.get_secret_value()}
    ttl_ms = redis_client.pttl(manager.access_key)
    assert (1800 - 60 - 5) * 1000 < ttl_ms <= (1800 - 60) * 1000
