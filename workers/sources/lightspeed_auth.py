"""Lightspeed R-Series OAuth: one access token and one refresh per expiry for the whole worker pool.

Lightspeed rotates the refresh token on every refresh and revokes the old pair once the new access
token is used, so two processes refreshing at once would leave one of them (and, after a restart,
the configured value) holding a dead refresh token. Everything therefore goes through Redis:

- ``<prefix>access_token`` holds the current access token until shortly before it expires;
- ``<prefix>refresh_token`` holds the newest refresh token, durably (no expiry), and wins over the
  configured one; with ``token_file`` it is also written atomically to that file (mode 0600);
- ``<prefix>refresh_lock`` makes one process refresh while the others poll for the new access token
  until a deadline;
- ``<prefix>refused_refresh_token`` holds a digest of a refresh token Lightspeed refused for good
  (``invalid_grant``): every later attempt with that same token fails at once without calling the
  token endpoint, so a revoked token costs one token request for the whole pool, not one per
  message or retry. Configuring a new refresh token (a different digest) clears the way.

Secrets are :class:`~pydantic.SecretStr` and never reach logs, exception messages or reprs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis
import structlog
from pydantic import SecretStr

from workers import metrics
from workers.errors import RateLimited, SourceAuthError, SourceUnavailable, WorkerError

__all__ = ["DEFAULT_KEY_PREFIX", "REAUTHORISE_HINT", "SYSTEM", "TokenManager"]

#: The ``system`` attribute of every error the Lightspeed modules raise.
SYSTEM = "lightspeed"
#: Where the token state lives in Redis; the client id is appended so two apps never share tokens.
DEFAULT_KEY_PREFIX = "possync:lightspeed:"
#: What an operator must do when Lightspeed refuses the refresh token for good.
REAUTHORISE_HINT = (
    "re-authorise possync with Lightspeed: obtain a new refresh token, set it in "
    "POSSYNC_LIGHTSPEED_REFRESH_TOKEN and restart the workers (the refused stored one, Redis key "
    "{key} or the token file, is then passed over), then enqueue the sync again (possync sync lightspeed)"
)
#: Seconds before ``expires_in`` runs out at which a cached access token stops being handed out,
#: so a request never leaves with a token that expires in flight.
DEFAULT_EXPIRY_MARGIN_SECONDS = 60.0
#: Pause between looks at Redis while another process refreshes, seconds.
_POLL_INTERVAL_SECONDS = 0.05

# Delete a key only if it still holds the value we expect (a lock we own, a token we saw rejected).
_DELETE_IF_EQUAL = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)

log = structlog.get_logger(__name__)


class TokenManager:
    """Hands out the current Lightspeed access token, refreshing it once per expiry for the pool.

    Args:
        redis_client: the shared Redis holding the token state and the refresh lock.
        http: the connection pool for the token endpoint; the caller owns it.
        token_url: the OAuth token endpoint, e.g. ``https://cloud.lightspeedapp.com/auth/oauth/token``.
        client_id: the OAuth client id (not a secret; it also names the Redis keys).
        client_secret: the OAuth client secret.
        refresh_token: the configured refresh token, used only until a rotated one is stored.
        token_file: where to keep the newest refresh token across Redis losses, or ``None``.
        timeout_seconds: timeout of each token request, seconds.
        wait_seconds: how long a process waits for another's refresh before giving up, seconds.
        expiry_margin_seconds: stop handing out a token this long before it expires, seconds.
        key_prefix: the Redis key prefix.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        http: httpx.Client,
        *,
        token_url: str,
        client_id: str,
        client_secret: SecretStr,
        refresh_token: SecretStr,
        token_file: Path | None = None,
        timeout_seconds: float = 30.0,
        wait_seconds: float = 60.0,
        expiry_margin_seconds: float = DEFAULT_EXPIRY_MARGIN_SECONDS,
        key_prefix: str = DEFAULT_KEY_PREFIX,
    ) -> None:
        if not isinstance(client_secret, SecretStr) or not isinstance(refresh_token, SecretStr):
            raise TypeError("client_secret and refresh_token must be SecretStr")
        if not client_id:
            raise ValueError("client_id is required")
        self._redis = redis_client
        self._http = http
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._configured_refresh = refresh_token
        self._token_file = token_file
        self._timeout = httpx.Timeout(timeout_seconds)
        self._wait_seconds = wait_seconds
        self._margin_seconds = expiry_margin_seconds
        base = f"{key_prefix}{client_id}:"
        self.access_key = base + "access_token"
        self.refresh_key = base + "refresh_token"
        self.lock_key = base + "refresh_lock"
        self.refused_key = base + "refused_refresh_token"
        # The lock outlives one token request (its timeout plus slack), so a stuck holder frees it.
        self._lock_ms = int((timeout_seconds + 10.0) * 1000)
        self._delete_if_equal = self._redis.register_script(_DELETE_IF_EQUAL)

    def __repr__(self) -> str:
        return f"TokenManager(token_url={self._token_url!r}, client_id={self._client_id!r})"

    def access_token(self) -> SecretStr:
        """The current access token, refreshing it first if none is cached.

        Raises:
            SourceAuthError: Lightspeed refused the refresh token for good (re-authorise).
            SourceUnavailable: the token endpoint failed, or another process's refresh did not
                finish within ``wait_seconds``.
        """
        cached = self._redis.get(self.access_key)
        if cached is not None:
            return SecretStr(_text(cached))
        return self._refresh(rejected=None)

    def refresh_after_rejection(self, rejected: SecretStr) -> SecretStr:
        """A fresh access token after the API answered 401 to ``rejected``.

        If another process already replaced ``rejected``, its token is returned without a refresh.

        Raises:
            SourceAuthError, SourceUnavailable: as :meth:`access_token`.
        """
        self._delete_if_equal(keys=[self.access_key], args=[rejected.get_secret_value()])
        return self._refresh(rejected=rejected.get_secret_value())

    def _refresh(self, *, rejected: str | None) -> SecretStr:
        deadline = time.monotonic() + self._wait_seconds
        owner = uuid.uuid4().hex
        while True:
            cached = self._redis.get(self.access_key)
            if cached is not None and _text(cached) != rejected:
                return SecretStr(_text(cached))
            if self._redis.set(self.lock_key, owner, nx=True, px=self._lock_ms):
                try:
                    # Someone may have finished a refresh between our look and taking the lock.
                    cached = self._redis.get(self.access_key)
                    if cached is not None and _text(cached) != rejected:
                        return SecretStr(_text(cached))
                    return self._grant()
                finally:
                    self._delete_if_equal(keys=[self.lock_key], args=[owner])
            if time.monotonic() >= deadline:
                raise SourceUnavailable(
                    f"lightspeed token refresh by another worker took over {self._wait_seconds:g} s",
                    system=SYSTEM,
                )
            time.sleep(_POLL_INTERVAL_SECONDS)

    def _current_refresh_token(self, refused: str | None) -> SecretStr | None:
        """The newest refresh token not already refused: Redis, else the token file, else the
        configured value (so setting a new one in the environment re-authorises after a refusal)."""
        candidates: list[SecretStr] = []
        stored = self._redis.get(self.refresh_key)
        if stored is not None:
            candidates.append(SecretStr(_text(stored)))
        if self._token_file is not None and self._token_file.exists():
            text = self._token_file.read_text(encoding="utf-8").strip()
            if text:
                candidates.append(SecretStr(text))
        candidates.append(self._configured_refresh)
        for candidate in candidates:
            if refused is None or _digest(candidate) != refused:
                return candidate
        return None

    def _grant(self) -> SecretStr:
        """Run the refresh_token grant (the caller holds the lock) and store what it returns."""
        try:
            return self._grant_once()
        except WorkerError:
            metrics.LIGHTSPEED_REFRESH_FAILURES.inc()
            raise

    def _grant_once(self) -> SecretStr:
        refused = self._redis.get(self.refused_key)
        used = self._current_refresh_token(_text(refused) if refused is not None else None)
        if used is None:
            raise SourceAuthError(
                "lightspeed refused this refresh token earlier (invalid_grant); not asking again; "
                + REAUTHORISE_HINT.format(key=self.refresh_key),
                system=SYSTEM,
                status_code=400,
            )
        try:
            body = self._post_grant(used)
        except SourceAuthError:
            # Remember the refusal (a digest, never the token) so the pool stops asking.
            self._redis.set(self.refused_key, _digest(used), ex=_REFUSAL_TTL_SECONDS)
            metrics.LIGHTSPEED_REFRESH_REFUSED.inc()
            log.error(
                "lightspeed_refresh_token_refused",
                system=SYSTEM,
                action=REAUTHORISE_HINT.format(key=self.refresh_key),
            )
            raise
        access = body.get("access_token")
        if not isinstance(access, str) or not access:
            raise SourceUnavailable(
                "lightspeed token endpoint answered without an access_token", system=SYSTEM
            )
        rotated = body.get("refresh_token")
        # Persist the rotated refresh token before anything uses the new access token: from then on
        # Lightspeed revokes the old one, and a crash here must not leave us holding only that.
        if isinstance(rotated, str) and rotated and rotated != used.get_secret_value():
            self._redis.set(self.refresh_key, rotated)
            if self._token_file is not None:
                _write_secret_file(self._token_file, rotated)
        expires_in = _expires_in_seconds(body.get("expires_in"))
        # Short-lived tokens keep most of their life: the margin is at most a tenth of it.
        ttl_ms = int((expires_in - min(self._margin_seconds, expires_in / 10)) * 1000)
        if ttl_ms > 0:
            self._redis.set(self.access_key, access, px=ttl_ms)
        metrics.LIGHTSPEED_TOKEN_REFRESHES.inc()
        log.info("lightspeed_token_refreshed", system=SYSTEM, expires_in_seconds=expires_in)
        return SecretStr(access)

    def _post_grant(self, refresh_token: SecretStr) -> dict[str, Any]:
        form = {
            "client_id": self._client_id,
            "client_secret": self._client_secret.get_secret_value(),
            "refresh_token": refresh_token.get_secret_value(),
            "grant_type": "refresh_token",
        }
        try:
            response = self._http.post(self._token_url, data=form, timeout=self._timeout)
        # ``from None``: httpx's frames hold the form (both secrets) in their locals, and a chained
        # traceback rendered with locals would log them.
        except httpx.TimeoutException as exc:
            raise SourceUnavailable(
                f"lightspeed token refresh timed out ({type(exc).__name__})", system=SYSTEM
            ) from None
        except httpx.TransportError as exc:
            raise SourceUnavailable(
                f"lightspeed token refresh failed: {type(exc).__name__}", system=SYSTEM
            ) from None
        finally:
            # The form holds both secrets; drop it so no traceback's frame locals carry them.
            form.clear()
        status = response.status_code
        error, description = _oauth_error(response)
        if response.is_success:
            try:
                body = response.json()
            except ValueError:
                body = None
            if not isinstance(body, dict):
                raise SourceUnavailable(
                    f"lightspeed token endpoint answered {status} without a JSON object",
                    system=SYSTEM,
                    status_code=status,
                )
            return body
        described = f"lightspeed token refresh answered {status}"
        if error:
            described += f" {error}"
        if description:
            described += f": {description}"
        if status == 429:
            raise RateLimited(described, system=SYSTEM, status_code=status, retry_after_seconds=1.0)
        if error in (
            "invalid_grant",
            "invalid_client",
            "invalid_request",
            "unauthorized_client",
        ) or status in (
            401,
            403,
        ):
            raise SourceAuthError(
                f"{described}; {REAUTHORISE_HINT.format(key=self.refresh_key)}",
                system=SYSTEM,
                status_code=status,
            )
        raise SourceUnavailable(described, system=SYSTEM, status_code=status)


#: How long a refused refresh token is remembered, seconds: long enough to stop every retry of every
#: message (Dramatiq's backoff tops out at minutes), short enough to try again after a week.
_REFUSAL_TTL_SECONDS = 7 * 86_400


def _digest(secret: SecretStr) -> str:
    """A non-reversible fingerprint of a secret, safe to store and compare."""
    return hashlib.sha256(secret.get_secret_value().encode()).hexdigest()


#: Longest OAuth error description kept in an exception message, characters.
_MAX_DESCRIPTION = 200


def _oauth_error(response: httpx.Response) -> tuple[str | None, str | None]:
    """The OAuth ``error`` and ``error_description`` of an error answer, if it has them."""
    if response.is_success:
        return None, None
    try:
        body = response.json()
    except ValueError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    error, description = body.get("error"), body.get("error_description")
    return (
        str(error)[:50] if error is not None else None,
        str(description)[:_MAX_DESCRIPTION] if description is not None else None,
    )


def _text(value: bytes | str) -> str:
    """A Redis reply as text, whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else value


def _expires_in_seconds(value: object) -> float:
    """``expires_in`` as seconds; Lightspeed's documented 1800 when absent or unreadable."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 1800.0
    return seconds if seconds > 0 else 1800.0


def _write_secret_file(path: Path, secret: str) -> None:
    """Replace ``path`` with ``secret`` atomically, readable by the owner only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file 0600; rename within one directory is atomic on POSIX.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(secret)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        # Make the rename itself durable.
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
