"""The Notion sandbox's command line: its options, their environment variables, and the config they make.

Every option can also be set by an environment variable ``POSSYNC_NOTION_SANDBOX_<OPTION>``.
``sandbox.process`` reads the parser to turn keyword options into arguments.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "DEFAULT_DELIVERY_RETRY_SECONDS",
    "DEFAULT_TOKEN",
    "NotionSandboxConfig",
    "build_parser",
    "config_from_args",
    "parse_retry_seconds",
]

_ENV_PREFIX = "POSSYNC_NOTION_SANDBOX_"
#: The integration token the sandbox accepts unless told otherwise.
DEFAULT_TOKEN = "sandbox-notion-token"  # noqa: S105 - the sandbox's fake credential
#: Pauses before each redelivery of an unacknowledged event, seconds: 7 retries, so 8 attempts in
#: all as Notion makes, on a schedule compressed from Notion's ~24 h to ~25 s to keep tests fast.
DEFAULT_DELIVERY_RETRY_SECONDS = (0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8)


@dataclass
class NotionSandboxConfig:
    """Everything a Notion sandbox is started with (defaults: Notion's documented limits)."""

    seed: int = 7
    pages: int = 50
    #: Generated pages were created and last edited before this; None means now, floored to the minute.
    anchor: datetime | None = None
    token: str = DEFAULT_TOKEN
    #: The integration's token bucket: refilled at this rate (requests per second), holding ``burst``.
    requests_per_second: float = 3.0
    burst: float = 10.0
    rate_500: float = 0.0
    rate_503: float = 0.0
    latency_ms: int = 0
    #: Where events are delivered, and the verification token that signs them.
    webhook_url: str | None = None
    verification_token: str | None = None
    #: The ``api_version`` events carry (the subscription's), which also shapes their ``data.parent``.
    webhook_api_version: str = "2025-09-03"
    delivery_retry_seconds: tuple[float, ...] = DEFAULT_DELIVERY_RETRY_SECONDS
    #: Deadline for one delivery attempt, seconds.
    delivery_timeout_seconds: float = 5.0
    #: ``last_edited_time`` is floored to this many seconds (Notion's own is about a minute).
    edit_time_precision_seconds: int = 1
    #: Let an edit keep the previous ``last_edited_time`` when both fall in one precision step, as
    #: Notion does; by default every edit moves it forward by at least one step.
    edit_times_may_tie: bool = False
    workspace_name: str = "Sandbox Workspace"


def parse_retry_seconds(text: str) -> tuple[float, ...]:
    """A comma-separated list of non-negative seconds (``"0.2,0.4"``); empty means no retries.

    Raises:
        ValueError: on a value that is not a non-negative number.
    """
    values = tuple(float(part) for part in text.split(",") if part.strip())
    if any(value < 0 for value in values):
        raise ValueError("delivery retry pauses must not be negative")
    return values


def _env(name: str, default: Any) -> Any:
    """The environment's value for option ``name``, else ``default``."""
    return os.environ.get(_ENV_PREFIX + name.upper(), default)


def _flag(name: str) -> bool:
    return str(_env(name, "")).lower() in ("1", "true", "yes")


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m sandbox.notion``."""
    d = NotionSandboxConfig()
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.notion",
        description=(
            "Serve a fake Notion API over HTTP from a deterministic set of pages:\n"
            "  GET  /v1/pages/{page_id}  (Authorization: Bearer <token>, Notion-Version required)\n"
            "Errors are Notion's {object: error, status, code, message, request_id}; over the\n"
            "integration's token bucket requests get 429 rate_limited with Retry-After (seconds).\n"
            "Admin endpoints under /_sandbox/ (no auth, never limited or faulted): info, pages,\n"
            "faults, stats, truth/pages, webhook, webhook/handshake, events, events/batch,\n"
            "deliveries. Events change pages, then go to the webhook URL signed with\n"
            "X-Notion-Signature and are redelivered until acknowledged.\n"
            f"Every option can also be set by an environment variable {_ENV_PREFIX}<OPTION>."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "example: python -m sandbox.notion --port 8767 --pages 80 --requests-per-second 3 --burst 10 "
            "--webhook-url http://127.0.0.1:8080/webhooks/notion --verification-token secret_abc"
        ),
    )

    def option(name: str, kind: type, help_text: str) -> None:
        default = getattr(d, name)
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=kind(_env(name, default)),
            help=f"{help_text} (default %(default)s)",
        )

    def optional(name: str, help_text: str) -> None:
        parser.add_argument(
            "--" + name.replace("_", "-"), default=_env(name, None), help=f"{help_text} (default: none)"
        )

    parser.add_argument("--host", default=_env("host", "127.0.0.1"), help="interface (default %(default)s)")
    parser.add_argument(
        "--port", type=int, default=int(_env("port", 8767)), help="port (default %(default)s)"
    )
    option("seed", int, "data seed: the same seed, anchor and count give the same pages")
    option("pages", int, "pages to generate, in two databases, under pages and at the workspace root")
    parser.add_argument(
        "--anchor", default=_env("anchor", None), help="pages' times lie before this, ISO 8601 (default: now)"
    )
    option("token", str, "the integration token the API accepts")
    option("requests_per_second", float, "token bucket refill, requests per second")
    option("burst", float, "token bucket size, requests")
    option("rate_500", float, "share of API requests answered 500 internal_server_error")
    option("rate_503", float, "share of API requests answered 503 service_unavailable")
    option("latency_ms", int, "delay added to every API answer, milliseconds")
    optional("webhook_url", "where events are delivered")
    optional("verification_token", "the subscription's verification token, which signs events")
    option("webhook_api_version", str, "the api_version events carry")
    parser.add_argument(
        "--delivery-retry-seconds",
        type=parse_retry_seconds,
        default=parse_retry_seconds(
            str(_env("delivery_retry_seconds", ",".join(str(s) for s in d.delivery_retry_seconds)))
        ),
        help="pauses before each redelivery, comma-separated seconds (default: 0.2 doubling, 7 retries)",
    )
    option("delivery_timeout_seconds", float, "deadline of one delivery attempt, seconds")
    option("edit_time_precision_seconds", int, "last_edited_time is floored to this many seconds")
    parser.add_argument(
        "--edit-times-may-tie",
        action="store_true",
        default=_flag("edit_times_may_tie"),
        help="two edits in one precision step may share last_edited_time (as in Notion)",
    )
    option("workspace_name", str, "the workspace_name events carry")
    return parser


def config_from_args(args: argparse.Namespace) -> NotionSandboxConfig:
    """The sandbox configuration named by parsed command-line arguments."""
    anchor = None
    if args.anchor:
        anchor = datetime.fromisoformat(args.anchor.replace("Z", "+00:00"))
        anchor = anchor if anchor.tzinfo else anchor.replace(tzinfo=UTC)
    names = set(NotionSandboxConfig.__dataclass_fields__) - {"anchor"}
    return NotionSandboxConfig(anchor=anchor, **{name: getattr(args, name) for name in names})
