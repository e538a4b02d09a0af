"""Run a sandbox server as a real subprocess on a free loopback port, ready before a deadline.

``start_square_sandbox(payments=3_000, rate_429=0.1)`` starts ``python -m sandbox.square`` with
matching options, polls ``/_sandbox/info`` until it answers (or the process dies, or the deadline
passes, each with the server's log in the error) and returns a :class:`SandboxProcess`, which is a
context manager and carries :class:`SandboxAdmin` helpers for the ``/_sandbox/*`` endpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from sandbox.local_service import free_port

__all__ = [
    "SandboxAdmin",
    "SandboxProcess",
    "SandboxStartError",
    "free_port",
    "start_lightspeed_sandbox",
    "start_notion_sandbox",
    "start_sandbox",
    "start_square_sandbox",
]

#: The repository root: the subprocess runs from here so ``-m sandbox.…`` imports this checkout.
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Attempts when another process grabs the free port between our probe and the server's bind.
_PORT_ATTEMPTS = 3


class SandboxStartError(RuntimeError):
    """The sandbox process exited or did not become ready before its deadline."""


class SandboxAdmin:
    """The sandbox's admin endpoints (``/_sandbox/*``: no auth, never faulted) over httpx."""

    def __init__(self, base_url: str, *, timeout_seconds: float = 60.0) -> None:
        self.base_url = base_url
        self._timeout = timeout_seconds

    def _get(self, path: str) -> httpx.Response:
        response = httpx.get(f"{self.base_url}{path}", timeout=self._timeout)
        response.raise_for_status()
        return response

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        response = httpx.post(f"{self.base_url}{path}", json=body, timeout=self._timeout)
        response.raise_for_status()
        return response.json()

    def info(self) -> dict[str, Any]:
        """``{"now", "seed", "counts", "locations", "main_location_id", ...}``."""
        info: dict[str, Any] = self._get("/_sandbox/info").json()
        return info

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        """Change some fault settings (``rate_429=0.1``, ``token_revoked=True``...); returns all of them."""
        result: dict[str, Any] = self._post("/_sandbox/faults", faults)
        return result

    def clear_faults(self) -> dict[str, Any]:
        """Turn every fault off."""
        return self.set_faults(
            rate_429=0.0,
            rate_500=0.0,
            rate_503=0.0,
            latency_ms=0,
            timeout_rate=0.0,
            token_revoked=False,
            malformed_payments=0,
        )

    def set_settings(self, **settings: Any) -> dict[str, Any]:
        """Change ``final_page_mode`` and/or ``short_page_rate`` at run time."""
        result: dict[str, Any] = self._post("/_sandbox/settings", settings)
        return result

    def advance(self, seconds: int, *, new_payments: int = 0, changed_payments: int = 0) -> dict[str, Any]:
        """Move the clock; returns ``{"now", "created": [ids], "changed": [ids]}``."""
        body = {"seconds": seconds, "new_payments": new_payments, "changed_payments": changed_payments}
        result: dict[str, Any] = self._post("/_sandbox/clock/advance", body)
        return result

    def stats(self) -> dict[str, Any]:
        """Request counts: ``{"requests": {"GET /v2/payments": {"200": n, ...}}, "total": n}``."""
        stats: dict[str, Any] = self._get("/_sandbox/stats").json()
        return stats

    def truth(self, kind: str) -> list[dict[str, Any]]:
        """Ground truth rows: ``kind`` is ``payments``, ``items``, ``customers`` or ``rejects`` (Square)."""
        text = self._get(f"/_sandbox/truth/{kind}").text
        return [json.loads(line) for line in text.splitlines() if line]

    def update_payment(
        self, payment_id: str, *, status: str | None = None, refund_cents: int | None = None
    ) -> dict[str, Any]:
        """Capture, void or refund a payment now (Square sandbox); returns ``{"payment", "event"}``."""
        body = {
            name: value
            for name, value in (("status", status), ("refund_cents", refund_cents))
            if value is not None
        }
        result: dict[str, Any] = self._post(f"/_sandbox/payments/{payment_id}/update", body)
        return result

    def create_customer(self) -> dict[str, Any]:
        """Add a customer now (Square sandbox); returns ``{"customer", "event"}``."""
        result: dict[str, Any] = self._post("/_sandbox/customers/create", {})
        return result

    def update_customer(self, customer_id: str) -> dict[str, Any]:
        """Change a customer now (Square sandbox); returns ``{"customer", "event"}``."""
        result: dict[str, Any] = self._post(f"/_sandbox/customers/{customer_id}/update", {})
        return result

    def delete_customer(self, customer_id: str) -> dict[str, Any]:
        """Delete a customer now (Square sandbox); returns ``{"customer", "deleted_at", "event"}``."""
        result: dict[str, Any] = self._post(f"/_sandbox/customers/{customer_id}/delete", {})
        return result

    def touch_catalog(self, item_id: str | None = None) -> dict[str, Any]:
        """Edit a catalog item now (Square sandbox); returns ``{"item", "event"}``."""
        result: dict[str, Any] = self._post(
            "/_sandbox/catalog/touch", {} if item_id is None else {"item_id": item_id}
        )
        return result

    def set_webhooks(self, **settings: Any) -> dict[str, Any]:
        """Change webhook settings: ``url``, ``signature_key``, ``notification_url``, ``retry_seconds``..."""
        result: dict[str, Any] = self._post("/_sandbox/webhooks", settings)
        return result

    def webhook_deliveries(self) -> list[dict[str, Any]]:
        """Every webhook delivery so far: ``[{"event_id", "type", "attempts", "last_status", ...}]``."""
        deliveries: list[dict[str, Any]] = self._get("/_sandbox/webhooks/deliveries").json()
        return deliveries

    def send_webhook(
        self, event: dict[str, Any], *, bad_signature: bool = False, duplicate: bool = False
    ) -> list[dict[str, Any]]:
        """Deliver an arbitrary event body (maybe mis-signed, maybe twice); returns the deliveries started."""
        body = {"event": event, "bad_signature": bad_signature, "duplicate": duplicate}
        deliveries: list[dict[str, Any]] = self._post("/_sandbox/webhooks/send", body)["deliveries"]
        return deliveries


class SandboxProcess:
    """A running sandbox subprocess; stop it with :meth:`stop` or by leaving its ``with`` block."""

    def __init__(
        self, process: subprocess.Popen[bytes], base_url: str, token: str | None, log_path: Path
    ) -> None:
        self.process = process
        self.base_url = base_url
        self.token = token
        self.log_path = log_path
        self.admin = SandboxAdmin(base_url)

    @property
    def port(self) -> int:
        """The loopback port it listens on."""
        return int(self.base_url.rsplit(":", 1)[1])

    def log(self) -> str:
        """Everything the server wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout_seconds: float = 10.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after ``timeout_seconds``); idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_seconds)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout_seconds)

    def __enter__(self) -> SandboxProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def _wait_ready(process: subprocess.Popen[bytes], url: str, deadline: float, log_path: Path) -> None:
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SandboxStartError(
                f"sandbox exited with status {process.returncode} before it was ready; log:\n"
                + log_path.read_text(errors="replace")[-4000:]
            )
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError as exc:
            last_error = repr(exc)
        time.sleep(0.05)  # polling interval while waiting for the server to bind, not synchronisation
    process.kill()
    process.wait()
    raise SandboxStartError(
        f"sandbox not ready at {url} before the deadline ({last_error}); log:\n"
        + log_path.read_text(errors="replace")[-4000:]
    )


def start_sandbox(
    module: str,
    arguments: list[str],
    *,
    host: str = "127.0.0.1",
    ready_path: str = "/_sandbox/info",
    token: str | None = None,
    startup_timeout_seconds: float = 60.0,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
) -> SandboxProcess:
    """Start ``python -m MODULE --host HOST --port P ARGUMENTS`` and wait until ``ready_path`` answers 200.

    Args:
        module: the sandbox's module, e.g. ``sandbox.square``.
        arguments: further command-line arguments.
        host: loopback interface to bind.
        ready_path: admin path polled for readiness.
        token: the token the sandbox accepts, kept on the result for callers.
        startup_timeout_seconds: deadline for readiness, per attempt.
        log_path: where the server's stdout and stderr go (default: a temporary file).
        env: the child's environment (default: this process's).

    Raises:
        SandboxStartError: the process died or was not ready in time (the log is in the message).
    """
    if log_path is None:
        handle, name = tempfile.mkstemp(prefix=f"{module.rsplit('.', 1)[-1]}-sandbox-", suffix=".log")
        os.close(handle)
        log_path = Path(name)
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), child_env.get("PYTHONPATH")]))
    error: SandboxStartError | None = None
    for _ in range(_PORT_ATTEMPTS):
        port = free_port(host)
        command = [sys.executable, "-m", module, "--host", host, "--port", str(port), *arguments]
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=child_env, stdout=log, stderr=subprocess.STDOUT
            )
        base_url = f"http://{host}:{port}"
        try:
            _wait_ready(process, base_url + ready_path, time.monotonic() + startup_timeout_seconds, log_path)
        except SandboxStartError as exc:
            error = exc
            if "address already in use" in str(exc).lower():
                continue
            raise
        return SandboxProcess(process, base_url, token, log_path)
    assert error is not None
    raise error


def _arguments(system: str, parser: argparse.ArgumentParser, options: dict[str, Any]) -> list[str]:
    """Command-line arguments for a sandbox's options given by their Python names.

    Booleans become bare flags, sequences comma-separated values, datetimes ISO 8601.

    Raises:
        TypeError: on an option the sandbox's parser does not know.
    """
    known = {action.dest for action in parser._actions} - {"help", "host", "port"}
    arguments: list[str] = []
    for name, value in options.items():
        if name not in known:
            raise TypeError(f"unknown {system} sandbox option {name!r}; known: {sorted(known)}")
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            if value:
                arguments.append(flag)
        elif isinstance(value, list | tuple):
            arguments += [flag, ",".join(str(item) for item in value)]
        elif value is not None:
            arguments += [flag, value.isoformat() if isinstance(value, datetime) else str(value)]
    return arguments


def start_square_sandbox(
    *,
    host: str = "127.0.0.1",
    startup_timeout_seconds: float = 60.0,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
    **options: Any,
) -> SandboxProcess:
    """Start the Square sandbox as a subprocess and wait until it is ready.

    Args:
        host: loopback interface to bind.
        startup_timeout_seconds: deadline for readiness.
        log_path: where the server's output goes (default: a temporary file).
        env: the child's environment (default: this process's).
        **options: ``python -m sandbox.square`` options by their Python names: ``payments``,
            ``customers``, ``items``, ``seed``, ``anchor`` (datetime or ISO string), ``token``,
            ``final_page_mode``, ``short_page_rate``, ``rate_429``, ``retry_after_seconds``,
            ``rate_500``, ``rate_503``, ``latency_ms``, ``timeout_rate``, ``token_revoked``,
            ``malformed_payments``, ``webhook_url``, ``webhook_signature_key``, ``webhook_notification_url``,
            ``webhook_retry_seconds``, ``webhook_max_attempts``, ``webhook_timeout_seconds``.

    Raises:
        TypeError: on an unknown option.
        SandboxStartError: the process died or was not ready in time.
    """
    from sandbox.square import build_parser

    arguments = _arguments("Square", build_parser(), options)
    token = str(options.get("token", "sandbox-token"))
    return start_sandbox(
        "sandbox.square",
        arguments,
        host=host,
        token=token,
        startup_timeout_seconds=startup_timeout_seconds,
        log_path=log_path,
        env=env,
    )


def start_lightspeed_sandbox(
    *,
    host: str = "127.0.0.1",
    startup_timeout_seconds: float = 60.0,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
    **options: Any,
) -> SandboxProcess:
    """Start the Lightspeed sandbox as a subprocess and wait until it is ready.

    The result's ``token`` is the access token valid from start-up (``access_token``).

    Args:
        host: loopback interface to bind.
        startup_timeout_seconds: deadline for readiness.
        log_path: where the server's output goes (default: a temporary file).
        env: the child's environment (default: this process's).
        **options: ``python -m sandbox.lightspeed`` options by their Python names: ``sales``,
            ``items``, ``seed``, ``anchor`` (datetime or ISO string), ``account_id``, ``client_id``,
            ``client_secret``, ``refresh_token``, ``access_token``,
            ``access_token_lifetime_seconds``, ``rotate_refresh_tokens``, ``bucket_size``,
            ``drip_rate``, ``rate_500``, ``latency_ms``.

    Raises:
        TypeError: on an unknown option.
        SandboxStartError: the process died or was not ready in time.
    """
    from sandbox.lightspeed_cli import build_parser

    arguments = _arguments("Lightspeed", build_parser(), options)
    return start_sandbox(
        "sandbox.lightspeed",
        arguments,
        host=host,
        token=str(options.get("access_token", "sandbox-token")),
        startup_timeout_seconds=startup_timeout_seconds,
        log_path=log_path,
        env=env,
    )


def start_notion_sandbox(
    *,
    host: str = "127.0.0.1",
    startup_timeout_seconds: float = 60.0,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
    **options: Any,
) -> SandboxProcess:
    """Start the Notion sandbox as a subprocess and wait until it is ready.

    The result's ``token`` is the integration token the API accepts (``token``).

    Args:
        host: loopback interface to bind.
        startup_timeout_seconds: deadline for readiness.
        log_path: where the server's output goes (default: a temporary file).
        env: the child's environment (default: this process's).
        **options: ``python -m sandbox.notion`` options by their Python names: ``pages``, ``seed``,
            ``anchor`` (datetime or ISO string), ``token``, ``requests_per_second``, ``burst``,
            ``rate_500``, ``rate_503``, ``latency_ms``, ``webhook_url``, ``verification_token``,
            ``webhook_api_version``, ``delivery_retry_seconds`` (a sequence of seconds or a
            comma-separated string), ``delivery_timeout_seconds``, ``edit_time_precision_seconds``,
            ``edit_times_may_tie``, ``workspace_name``.

    Raises:
        TypeError: on an unknown option.
        SandboxStartError: the process died or was not ready in time.
    """
    from sandbox.notion_cli import DEFAULT_TOKEN, build_parser

    arguments = _arguments("Notion", build_parser(), options)
    return start_sandbox(
        "sandbox.notion",
        arguments,
        host=host,
        token=str(options.get("token", DEFAULT_TOKEN)),
        startup_timeout_seconds=startup_timeout_seconds,
        log_path=log_path,
        env=env,
    )
