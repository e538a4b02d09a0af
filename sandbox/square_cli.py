"""The Square sandbox's command line: its options, their environment variables, and the config they make.

Every option can also be set by an environment variable ``POSSYNC_SQUARE_SANDBOX_<OPTION>``.
``sandbox.process`` reads the parser to turn keyword options into arguments.
"""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime
from typing import Any

from sandbox.square_config import FINAL_PAGE_MODES, SquareSandboxConfig
from sandbox.square_faults import FaultSettings
from sandbox.square_webhooks import WebhookSettings

__all__ = ["build_parser", "config_from_args"]

_ENV_PREFIX = "POSSYNC_SQUARE_SANDBOX_"


def _env(name: str, default: Any) -> Any:
    """The environment's value for option ``name``, else ``default``."""
    return os.environ.get(_ENV_PREFIX + name.upper(), default)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m sandbox.square``."""
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.square",
        description=(
            "Serve a fake Square Connect v2 API (locations, payments, catalog, customers) over HTTP\n"
            "from a deterministic dataset. Admin endpoints under /_sandbox/ (no auth): info,\n"
            "clock/advance, faults, settings, stats, truth/{payments,items,customers,rejects}, changes\n"
            "(payments/{id}/update, customers/create, customers/{id}/update|delete, catalog/touch)\n"
            "and webhooks (settings, deliveries, send); changes are sent as signed webhook events.\n"
            "Every option can also be set by an "
            f"environment variable {_ENV_PREFIX}<OPTION> (e.g. {_ENV_PREFIX}RATE_429=0.1)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "example: python -m sandbox.square --port 8765 --payments 20000 --rate-429 0.1 "
            "--final-page-mode empty"
        ),
    )
    parser.add_argument(
        "--host", default=_env("host", "127.0.0.1"), help="interface to bind (default %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=int(_env("port", 8765)), help="port (default %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=int(_env("seed", 7)), help="data seed (default %(default)s)"
    )
    parser.add_argument(
        "--payments", type=int, default=int(_env("payments", 100_184)), help="payments over 2 years"
    )
    parser.add_argument(
        "--customers", type=int, default=int(_env("customers", 1_732)), help="customer profiles"
    )
    parser.add_argument("--items", type=int, default=int(_env("items", 500)), help="catalog items")
    parser.add_argument(
        "--anchor", default=_env("anchor", None), help="the clock's start, ISO 8601 (default: now)"
    )
    parser.add_argument("--token", default=_env("token", "sandbox-token"), help="the bearer token accepted")
    parser.add_argument(
        "--final-page-mode",
        choices=FINAL_PAGE_MODES,
        default=_env("final_page_mode", "omit"),
        help="how the last page ends: no cursor key, an empty cursor, or one more request returning {}",
    )
    parser.add_argument(
        "--short-page-rate",
        type=float,
        default=float(_env("short_page_rate", 0.05)),
        help="share of short pages",
    )
    parser.add_argument(
        "--rate-429", type=float, default=float(_env("rate_429", 0)), help="share of 429 answers"
    )
    parser.add_argument(
        "--retry-after-seconds",
        type=int,
        default=int(_env("retry_after_seconds", 1)),
        help="Retry-After of a 429",
    )
    parser.add_argument(
        "--rate-500", type=float, default=float(_env("rate_500", 0)), help="share of 500 answers"
    )
    parser.add_argument(
        "--rate-503", type=float, default=float(_env("rate_503", 0)), help="share of 503 answers"
    )
    parser.add_argument(
        "--latency-ms", type=int, default=int(_env("latency_ms", 0)), help="added to every answer"
    )
    parser.add_argument(
        "--timeout-rate", type=float, default=float(_env("timeout_rate", 0)), help="share that hang"
    )
    parser.add_argument(
        "--token-revoked",
        action="store_true",
        default=str(_env("token_revoked", "")).lower() in ("1", "true", "yes"),
        help="answer 401 ACCESS_TOKEN_REVOKED",
    )
    parser.add_argument(
        "--malformed-payments",
        type=int,
        default=int(_env("malformed_payments", 0)),
        help=(
            "serve this many payments, picked from the seed across the history, without amount_money"
            " or with a non-numeric amount; the truth lists them under truth/rejects (default %(default)s)"
        ),
    )
    webhooks = WebhookSettings()
    parser.add_argument(
        "--webhook-url", default=_env("webhook_url", None), help="where to POST events (default: none sent)"
    )
    parser.add_argument(
        "--webhook-signature-key",
        default=_env("webhook_signature_key", webhooks.signature_key),
        help="the key events are signed with (default %(default)s)",
    )
    parser.add_argument(
        "--webhook-notification-url",
        default=_env("webhook_notification_url", None),
        help="the URL signed with each body, as registered with Square (default: --webhook-url)",
    )
    parser.add_argument(
        "--webhook-retry-seconds",
        type=float,
        default=float(_env("webhook_retry_seconds", webhooks.retry_seconds)),
        help="wait before the first retry of a failed delivery, doubling after (default %(default)s)",
    )
    parser.add_argument(
        "--webhook-max-attempts",
        type=int,
        default=int(_env("webhook_max_attempts", webhooks.max_attempts)),
        help="attempts per delivery, the first included (default %(default)s)",
    )
    parser.add_argument(
        "--webhook-timeout-seconds",
        type=float,
        default=float(_env("webhook_timeout_seconds", webhooks.timeout_seconds)),
        help="how long the receiver has to answer (default %(default)s)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> SquareSandboxConfig:
    """The sandbox configuration named by parsed command-line arguments.

    Raises:
        ValueError: for a webhook setting out of range (a URL that is not http(s), an empty key...), or
            more malformed payments than payments (or fewer than none).
    """
    if not 0 <= args.malformed_payments <= args.payments:
        raise ValueError(f"--malformed-payments must be between 0 and --payments ({args.payments})")
    anchor = None
    if args.anchor:
        anchor = datetime.fromisoformat(args.anchor.replace("Z", "+00:00"))
        anchor = anchor if anchor.tzinfo else anchor.replace(tzinfo=UTC)
    faults = FaultSettings(
        rate_429=args.rate_429,
        retry_after_seconds=args.retry_after_seconds,
        rate_500=args.rate_500,
        rate_503=args.rate_503,
        latency_ms=args.latency_ms,
        timeout_rate=args.timeout_rate,
        token_revoked=args.token_revoked,
        malformed_payments=args.malformed_payments,
    )
    webhooks = WebhookSettings()
    webhooks.update(
        {
            "url": args.webhook_url,
            "signature_key": args.webhook_signature_key,
            "notification_url": args.webhook_notification_url,
            "retry_seconds": args.webhook_retry_seconds,
            "max_attempts": args.webhook_max_attempts,
            "timeout_seconds": args.webhook_timeout_seconds,
        }
    )
    return SquareSandboxConfig(
        seed=args.seed,
        payments=args.payments,
        customers=args.customers,
        items=args.items,
        anchor=anchor,
        token=args.token,
        final_page_mode=args.final_page_mode,
        short_page_rate=args.short_page_rate,
        faults=faults,
        webhooks=webhooks,
    )
