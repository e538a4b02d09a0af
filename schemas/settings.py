"""Settings: every knob possync reads, from the environment, prefix ``POSSYNC_``, flat names.

Entrypoints (the ``possync`` command, the worker entry module) build one :class:`Settings` and pass it
down; nothing else reads ``os.environ``. Only what a command needs is required: call the matching
``require_*`` method at start-up and a missing or invalid value fails there, naming the variable.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

__all__ = ["ENV_PREFIX", "ConfigError", "Settings", "load_settings"]

ENV_PREFIX = "POSSYNC_"

#: BigQuery dataset and table names: letters, digits and underscores, at most 1,024 characters.
_DATASET_RE = re.compile(r"^[A-Za-z0-9_]{1,1024}$")
#: Google Cloud project ids: 6-30 lowercase letters, digits and hyphens starting with a letter; older
#: ones carry ``domain.tld:`` in front. The rule ``workers/sinks/bigquery_sql.check_identifier``
#: applies, so a project the sink would refuse fails at start-up instead, naming the variable.
_PROJECT_RE = re.compile(r"^(?:[a-z0-9][a-z0-9.-]{0,61}[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the environment variable."""


def _env(field: str) -> str:
    return ENV_PREFIX + field.upper()


class Settings(BaseSettings):
    """possync's configuration. Field ``x`` is read from ``POSSYNC_X``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
        # Compose files pass `${VAR:-}`: an empty variable means unset, not an empty value.
        env_ignore_empty=True,
    )

    # Redis (queues, checkpoints, locks).
    redis_url: str = "redis://127.0.0.1:6379/0"

    # Square.
    square_base_url: str = "https://connect.squareup.com"
    square_access_token: SecretStr | None = None
    square_location_ids: Annotated[list[str], NoDecode] = Field(default_factory=list)
    square_version: str = "2025-08-20"
    #: Explicit ``begin_time`` for incremental payment reads: ListPayments otherwise covers one year only.
    square_history_start: str = "2010-01-01T00:00:00Z"
    square_timeout_seconds: float = 30.0
    #: Tries per Square request for retryable failures before the whole message is retried.
    square_request_attempts: int = Field(default=5, ge=1)
    #: Longest pause between tries of one request; a longer Retry-After sends the message back instead.
    square_max_request_wait_seconds: float = Field(default=30.0, gt=0)

    # Lightspeed Retail (R-Series).
    lightspeed_account_id: str | None = None
    lightspeed_base_url: str = "https://api.lightspeedapp.com"
    lightspeed_token_url: str = "https://cloud.lightspeedapp.com/auth/oauth/token"  # noqa: S105 (a URL)
    lightspeed_client_id: str | None = None
    lightspeed_client_secret: SecretStr | None = None
    #: The refresh token to start from; once Lightspeed rotates it, the stored one (Redis, file) wins.
    lightspeed_refresh_token: SecretStr | None = None
    #: Where the newest (rotated) refresh token is also kept, mode 0600; unset: Redis only.
    lightspeed_token_file: Path | None = None
    #: Deadline for one Lightspeed request, seconds.
    lightspeed_timeout_seconds: float = Field(default=30.0, gt=0)
    #: Tries per Lightspeed request for timeouts, 5xx and 429, before the message is retried instead.
    lightspeed_request_attempts: int = Field(default=5, ge=1)
    #: Longest a request waits for room in the shared bucket (or a Retry-After) before the message
    #: goes back to the queue instead, seconds.
    lightspeed_max_request_wait_seconds: float = Field(default=60.0, gt=0)
    #: Days of sales (by creation time) per backfill window; windows run in parallel, paced together.
    lightspeed_backfill_window_days: int = Field(default=30, ge=1)

    # Notion (events arrive by webhook; pages are fetched from the API).
    notion_base_url: str = "https://api.notion.com"
    notion_token: SecretStr | None = None
    #: The ``Notion-Version`` header sent with every request.
    notion_version: str = "2025-09-03"
    #: Requests per second for the whole pool (Notion averages 3 per integration).
    notion_requests_per_second: float = Field(default=3.0, gt=0)
    notion_timeout_seconds: float = Field(default=30.0, gt=0)
    #: Tries per Notion request for timeouts, 5xx and 429 before the message is retried instead.
    notion_request_attempts: int = Field(default=5, ge=1)
    #: Longest a request waits (pacing or Retry-After) before the message goes back to the queue.
    notion_max_request_wait_seconds: float = Field(default=60.0, gt=0)
    #: The subscription's verification token, which keys ``X-Notion-Signature``. Unset: the token
    #: recorded (in Redis) from the first verification handshake.
    notion_verification_token: SecretStr | None = None

    # Webhook receiver (``possync webhooks``).
    webhooks_host: str = "127.0.0.1"
    webhooks_port: int = Field(default=8080, ge=0, le=65535)
    #: Square's signature key for the subscription (Developer Console, Webhooks).
    square_webhook_signature_key: SecretStr | None = None
    #: The notification URL exactly as registered with Square: it is part of what Square signs.
    square_webhook_url: str | None = None
    #: Largest request body accepted, bytes; larger ones get 413.
    webhook_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)

    # Scheduler (``possync scheduler``).
    #: Cron expression per ``source`` (every stream) or ``source.stream``, as JSON, e.g.
    #: ``{"square": "*/15 * * * *", "square.items": "0 * * * *"}``. A sixth field counts seconds.
    #: Unset: every stream of every source with credentials configured, every 15 minutes.
    schedules: dict[str, str] = Field(default_factory=dict)
    #: Port of the scheduler's ``/metrics`` endpoint; 0 turns it off.
    scheduler_metrics_port: int = Field(default=9192, ge=0, le=65535)
    scheduler_metrics_host: str = "127.0.0.1"

    # Worker pool metrics (``possync worker``): every process's metrics from one endpoint.
    #: Port of the pool's ``/metrics`` endpoint; 0 turns it off.
    worker_metrics_port: int = Field(default=9191, ge=0, le=65535)
    #: Interface it listens on; set 0.0.0.0 in a container so Prometheus can reach it.
    worker_metrics_host: str = "127.0.0.1"
    #: Directory shared by the pool's processes for their metrics (default: a new temporary one).
    worker_metrics_dir: Path | None = None

    # BigQuery.
    bigquery_project: str | None = None
    bigquery_dataset: str = "commerce"
    bigquery_endpoint: str | None = None
    bigquery_location: str = "US"
    #: Deadline for one BigQuery API call or job wait, seconds.
    bigquery_timeout_seconds: float = 300.0
    #: Concurrent MERGE statements allowed per table (BigQuery runs 2 mutating DML per table at once).
    bigquery_merge_permits: int = Field(default=2, ge=1)
    #: Load-job uploads one worker process sends at once: google-cloud-bigquery holds each upload's
    #: payload (up to ``batch_max_bytes``) in memory while it sends it.
    bigquery_uploads_per_process: int = Field(default=2, ge=1)
    #: Staging tables expire on their own after this long, seconds.
    bigquery_staging_ttl_seconds: int = Field(default=86_400, ge=600)

    # Migrations (``possync migrate``, the ``migrations`` queue).
    #: A migration message may run this long (a CTAS of a large table takes a while), seconds.
    migration_time_limit_seconds: int = Field(default=6 * 3600, ge=60)
    #: On-demand query price used for a migration plan's cost estimate, dollars per TiB.
    bigquery_usd_per_tib: float = Field(default=6.25, ge=0)

    # Sync engine.
    batch_max_rows: int = Field(default=50_000, ge=1)
    batch_max_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    incremental_lookback_seconds: int = Field(default=900, ge=0)
    backfill_window_days: int = Field(default=365, ge=1)

    # Broker and retries.
    max_retries: int = Field(default=12, ge=0)
    min_backoff_seconds: float = Field(default=2.0, gt=0)
    max_backoff_seconds: float = Field(default=900.0, gt=0)
    actor_time_limit_seconds: int = Field(default=1800, ge=1)
    dead_letter_ttl_days: int = Field(default=30, ge=1)
    #: A worker silent for this long is presumed dead and its in-flight messages are requeued.
    worker_heartbeat_timeout_seconds: int = Field(default=30, ge=5)
    #: How often each worker process beats its heartbeat and requeues dead workers' messages.
    worker_maintenance_interval_seconds: float = Field(default=10.0, gt=0)
    #: The longest pause between a worker's polls of an empty queue, ms (Dramatiq's own is 1,000): a
    #: message enqueued on an idle queue waits at most this long to be taken.
    worker_idle_poll_ms: int = Field(default=100, ge=10, le=10_000)

    # Reports and logs.
    report_timezone: str = "UTC"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"

    @field_validator("square_location_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("report_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("bigquery_dataset")
    @classmethod
    def _dataset_name(cls, value: str) -> str:
        if not _DATASET_RE.match(value):
            raise ValueError("a BigQuery dataset name holds only letters, digits and underscores")
        return value

    @field_validator("square_base_url", "bigquery_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("lightspeed_base_url", "lightspeed_token_url", "notion_base_url")
    @classmethod
    def _lightspeed_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    def __repr_args__(self) -> list[tuple[str | None, object]]:
        # SecretStr already masks itself; the Redis URL may carry a password.
        return [
            (name, _mask_url(value) if name == "redis_url" and isinstance(value, str) else value)
            for name, value in super().__repr_args__()
        ]

    def require_square(self) -> SecretStr:
        """Return the Square access token, or fail naming ``POSSYNC_SQUARE_ACCESS_TOKEN``."""
        token = self.square_access_token
        if token is None or not token.get_secret_value().strip():
            raise ConfigError(f"{_env('square_access_token')} is required for Square (an access token)")
        return token

    def require_lightspeed(self) -> tuple[str, str, SecretStr, SecretStr]:
        """Return the Lightspeed account id, client id, client secret and refresh token.

        Raises:
            ConfigError: naming the first missing ``POSSYNC_LIGHTSPEED_*`` variable.
        """
        account_id = (self.lightspeed_account_id or "").strip()
        client_id = (self.lightspeed_client_id or "").strip()
        if not account_id:
            raise ConfigError(f"{_env('lightspeed_account_id')} is required for Lightspeed (the account ID)")
        if not client_id:
            raise ConfigError(f"{_env('lightspeed_client_id')} is required for Lightspeed (OAuth client id)")
        secrets: list[SecretStr] = []
        for name, value in (
            ("lightspeed_client_secret", self.lightspeed_client_secret),
            ("lightspeed_refresh_token", self.lightspeed_refresh_token),
        ):
            if value is None or not value.get_secret_value().strip():
                raise ConfigError(f"{_env(name)} is required for Lightspeed")
            secrets.append(value)
        return account_id, client_id, secrets[0], secrets[1]

    def require_notion(self) -> SecretStr:
        """Return the Notion integration token, or fail naming ``POSSYNC_NOTION_TOKEN``."""
        token = self.notion_token
        if token is None or not token.get_secret_value().strip():
            raise ConfigError(f"{_env('notion_token')} is required for Notion (the integration token)")
        return token

    def require_bigquery(self) -> str:
        """Return the BigQuery project id, or fail naming ``POSSYNC_BIGQUERY_PROJECT``."""
        project = self.bigquery_project
        if not project:
            raise ConfigError(f"{_env('bigquery_project')} is required (the Google Cloud project id)")
        if not _PROJECT_RE.match(project):
            raise ConfigError(f"{_env('bigquery_project')}={project!r} is not a valid project id")
        return project

    def zone(self) -> ZoneInfo:
        """The report time zone."""
        return ZoneInfo(self.report_timezone)


def _mask_url(url: str) -> str:
    return re.sub(r"//([^:/@]*):([^@]*)@", r"//\1:***@", url)


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, turning validation errors into a :class:`ConfigError`.

    Raises:
        ConfigError: naming each ``POSSYNC_`` variable that is invalid.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except SettingsError as exc:
        # A value that could not even be parsed (invalid JSON for a dict setting); the message names
        # the field, never its value.
        raise ConfigError(f"invalid settings: {exc} (check the matching {ENV_PREFIX}* variable)") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{_env(str(err['loc'][0])) if err['loc'] else 'settings'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
