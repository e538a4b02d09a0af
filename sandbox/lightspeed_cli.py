"""The Lightspeed sandbox's command line: its options, their environment variables, and the config they make.

Every option can also be set by an environment variable ``POSSYNC_LIGHTSPEED_SANDBOX_<OPTION>``.
``sandbox.process`` reads the parser to turn keyword options into arguments.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["LightspeedSandboxConfig", "build_parser", "config_from_args"]

_ENV_PREFIX = "POSSYNC_LIGHTSPEED_SANDBOX_"


@dataclass
class LightspeedSandboxConfig:
    """Everything a Lightspeed sandbox is started with (defaults: the documented limits)."""

    seed: int = 7
    sales: int = 10_000
    items: int = 300
    #: The data clock's start; None means now, floored to the minute.
    anchor: datetime | None = None
    account_id: int = 123456
    client_id: str = "sandbox-client"
    client_secret: str = "sandbox-secret"  # noqa: S105 - the sandbox's fake credential
    refresh_token: str = "sandbox-refresh-token"  # noqa: S105 - the sandbox's fake credential
    #: An access token valid from start-up, so clients need not refresh first.
    access_token: str = "sandbox-token"  # noqa: S105 - the sandbox's fake credential
    access_token_lifetime_seconds: float = 1800.0
    rotate_refresh_tokens: bool = False
    bucket_size: float = 90.0
    drip_rate: float = 1.0
    rate_500: float = 0.0
    latency_ms: int = 0


def _env(name: str, default: Any) -> Any:
    """The environment's value for option ``name``, else ``default``."""
    return os.environ.get(_ENV_PREFIX + name.upper(), default)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m sandbox.lightspeed``."""
    d = LightspeedSandboxConfig()
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.lightspeed",
        description=(
            "Serve a fake Lightspeed Retail R-Series API V3 over HTTP from a deterministic dataset:\n"
            "  GET  /API/V3/Account/{accountID}/Sale.json and Item.json  (bearer token; V3 envelope,\n"
            "       string scalars, after/before cursors, limit 0..100, sort, operator filters such\n"
            "       as updatetime=%3E%2C2024-01-01T00:00:00, load_relations)\n"
            "  POST /auth/oauth/token  (grant_type=refresh_token, client_id, client_secret, refresh_token)\n"
            "Every API answer carries X-LS-API-Bucket-Level (level/size) and X-LS-API-Drip-Rate; past\n"
            "the bucket's size requests get 429 with Retry-After. Admin endpoints under /_sandbox/\n"
            "(no auth, never limited): info, clock/advance, faults, stats, truth/{sales,items}.\n"
            f"Every option can also be set by an environment variable {_ENV_PREFIX}<OPTION>."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "example: python -m sandbox.lightspeed --port 8766 --sales 2000 --bucket-size 20 "
            "--drip-rate 2 --access-token-lifetime-seconds 60 --rotate-refresh-tokens"
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

    parser.add_argument("--host", default=_env("host", "127.0.0.1"), help="interface (default %(default)s)")
    parser.add_argument(
        "--port", type=int, default=int(_env("port", 8766)), help="port (default %(default)s)"
    )
    option("seed", int, "data seed: the same seed, anchor and counts give the same data")
    option("sales", int, "sales over the year before the anchor")
    option("items", int, "items over the two years before the anchor")
    parser.add_argument(
        "--anchor", default=_env("anchor", None), help="the data clock's start, ISO 8601 (default: now)"
    )
    option("account_id", int, "the only account ID the API serves")
    option("client_id", str, "OAuth client id")
    option("client_secret", str, "OAuth client secret")
    option("refresh_token", str, "the first refresh token")
    option("access_token", str, "an access token valid from start-up")
    option("access_token_lifetime_seconds", float, "access tokens expire after this")
    parser.add_argument(
        "--rotate-refresh-tokens",
        action="store_true",
        default=str(_env("rotate_refresh_tokens", "")).lower() in ("1", "true", "yes"),
        help="every refresh issues a new refresh token and invalidates the one used",
    )
    option("bucket_size", float, "leaky bucket size, drips")
    option("drip_rate", float, "leaky bucket drain, drips per second")
    option("rate_500", float, "share of API requests answered 500")
    option("latency_ms", int, "delay added to every API answer, milliseconds")
    return parser


def config_from_args(args: argparse.Namespace) -> LightspeedSandboxConfig:
    """The sandbox configuration named by parsed command-line arguments."""
    anchor = None
    if args.anchor:
        anchor = datetime.fromisoformat(args.anchor.replace("Z", "+00:00"))
        anchor = anchor if anchor.tzinfo else anchor.replace(tzinfo=UTC)
    names = set(LightspeedSandboxConfig.__dataclass_fields__) - {"anchor"}
    return LightspeedSandboxConfig(anchor=anchor, **{name: getattr(args, name) for name in names})
