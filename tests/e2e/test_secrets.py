"""No secret leaves possync: not in a log line, a metric, an exception message or a dead letter.

``test_demo.py`` already runs ``possync demo`` with a sentinel ``--sandbox-token`` and searches its
log files for it. This goes further, with a pipeline of its own so that every secret setting gets
its own sentinel and every place a secret could surface is read:

- secrets: ``POSSYNC_SQUARE_ACCESS_TOKEN``, ``POSSYNC_LIGHTSPEED_CLIENT_SECRET``,
  ``POSSYNC_LIGHTSPEED_REFRESH_TOKEN``, ``POSSYNC_NOTION_TOKEN``,
  ``POSSYNC_SQUARE_WEBHOOK_SIGNATURE_KEY`` and ``POSSYNC_NOTION_VERIFICATION_TOKEN``, each a distinct
  sentinel, plus the access and refresh tokens Lightspeed issued and rotated during the run; each is
  searched for as a whole, by its random core (a truncated copy), and base64-encoded (an auth header);
- the pipeline: the Square, Lightspeed and Notion sandboxes, a Redis server, the BigQuery emulator,
  ``possync webhooks``, ``possync scheduler`` (ticking every two seconds) and a ``possync worker``
  pool; both sources backfilled; Notion's verification handshake and signed Notion and Square
  webhooks landed; then the Square token revoked and the Lightspeed refresh token refused
  (``invalid_grant``), each dead-lettering a sync;
- where they are searched for: every process's log, every command's stdout and stderr (``--wait``
  summaries, ``dlq list``/``show``, ``status``, ``report``), every ``/metrics`` exposition fetched
  while running (pool, scheduler, receiver), and everything in Redis (dead letters and their
  recorded exception messages, message bodies, request tracking, stream errors), except the keys
  that hold a secret by design (the Lightspeed token cache).

The settings themselves (``repr``, ``str``, ``model_dump``, ``model_dump_json``) are checked apart.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from sandbox.process import (
    SandboxProcess,
    free_port,
    start_lightspeed_sandbox,
    start_notion_sandbox,
    start_square_sandbox,
)
from schemas.settings import ENV_PREFIX, ConfigError, Settings, load_settings
from tests.e2e.conftest import System
from tests.polling import wait_until
from workers.queues import dead_letters, request_progress

#: Random per run, so a sentinel cannot match anything but itself.
_RUN = uuid.uuid4().hex[:12]
#: Every secret setting -> its sentinel; the last 16 characters are each one's random core.
SECRETS: dict[str, str] = {
    name: f"sentinel-{name.replace('_', '-')}-{_RUN}{index:04x}"
    for index, name in enumerate(
        (
            "square_access_token",
            "lightspeed_client_secret",
            "lightspeed_refresh_token",
            "notion_token",
            "square_webhook_signature_key",
            "notion_verification_token",
        )
    )
}
LIGHTSPEED_CLIENT_ID = "secrets-test-client"
#: How long each --wait may take, seconds.
WAIT_SECONDS = "300"


def _forms(secret: str) -> list[str]:
    """What a leak of ``secret`` could look like: whole, its random core, base64 (alone or as
    ``client_id:secret`` in a Basic auth header)."""
    return [
        secret,
        secret[-16:],
        base64.b64encode(secret.encode()).decode(),
        base64.b64encode(f"{LIGHTSPEED_CLIENT_ID}:{secret}".encode()).decode(),
    ]


def _leaks(corpus: dict[str, str], secrets: dict[str, str]) -> list[str]:
    """Every (place, secret, form) where a form of a secret appears."""
    found: list[str] = []
    for place, text in corpus.items():
        for name, secret in secrets.items():
            found.extend(f"{place}: {name} ({form[:24]}...)" for form in _forms(secret) if form in text)
    return found


def test_settings_never_show_their_secrets() -> None:
    # Given settings with a sentinel in every SecretStr setting and a password in the Redis URL
    secret_fields = [
        name for name, info in Settings.model_fields.items() if "SecretStr" in str(info.annotation)
    ]
    assert set(secret_fields) == set(SECRETS), "a secret setting has no sentinel in this module"
    settings = Settings.model_validate(
        {
            "redis_url": "redis://possync:sentinel-redis-password@127.0.0.1:6379/0",
            **{name: SecretStr(value) for name, value in SECRETS.items()},
        }
    )

    # When it is shown in every way code might show it
    shown = {
        "repr": repr(settings),
        "str": str(settings),
        "format": f"{settings}",
        "model_dump": str(settings.model_dump()),
        "model_dump_json_mode": json.dumps(settings.model_dump(mode="json")),
        "model_dump_json": settings.model_dump_json(),
    }

    # Then no secret appears, yet every secret setting is there, masked
    assert _leaks(shown, SECRETS) == []
    for name in secret_fields:
        assert name in shown["repr"]
        assert json.loads(shown["model_dump_json"])[name] == "**********"
    # And the Redis password is masked where settings are shown to people (repr, str)
    for way in ("repr", "str", "format"):
        assert "sentinel-redis-password" not in shown[way], way


def test_a_settings_error_never_shows_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given every secret in the environment, beside an invalid setting
    for key in [key for key in os.environ if key.upper().startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    for name, value in SECRETS.items():
        monkeypatch.setenv(ENV_PREFIX + name.upper(), value)
    monkeypatch.setenv("POSSYNC_WEBHOOK_MAX_BODY_BYTES", "12")

    # When settings are loaded, then the error names the variable and holds no secret
    with pytest.raises(ConfigError, match="POSSYNC_WEBHOOK_MAX_BODY_BYTES") as caught:
        load_settings()
    assert _leaks({"error": str(caught.value) + repr(caught.value)}, SECRETS) == []


# The pipeline.


class Pipeline:
    """The running system and everything it said, for the search at the end."""

    def __init__(
        self,
        system: System,
        *,
        receiver: str,
        scheduler_metrics: str,
        notion: SandboxProcess,
        lightspeed: SandboxProcess,
    ) -> None:
        self.system = system
        self.receiver = receiver
        self.scheduler_metrics = scheduler_metrics
        self.notion = notion
        self.lightspeed = lightspeed
        self.outputs: dict[str, str] = {}
        self.metrics: dict[str, str] = {}
        self.http = httpx.Client(timeout=30)

    def cli(self, label: str, *args: str) -> Any:
        """Run ``possync ARGS``, keeping its stdout and stderr."""
        result = self.system.cli(*args, timeout=600)
        self.outputs[f"{label} stdout"] = result.stdout
        self.outputs[f"{label} stderr"] = result.stderr
        return result

    def scrape(self, label: str) -> None:
        """Fetch every process's /metrics now, keeping each exposition."""
        endpoints = {
            "worker pool": self.system.pools[0].metrics_url,
            "scheduler": self.scheduler_metrics,
            "receiver": f"{self.receiver}/metrics",
        }
        for name, url in endpoints.items():
            response = self.http.get(url)
            assert response.status_code == 200, (name, response.status_code)
            assert "possync_" in response.text, name
            self.metrics[f"{label} {name}"] = response.text


@pytest.fixture
def pipeline(redis_url: str, bigquery_emulator: Any, dataset: str, tmp_path: Path) -> Iterator[Pipeline]:
    """Every sandbox, the receiver, a scheduler and a worker pool, configured with the sentinels."""
    sandboxes: list[SandboxProcess] = []
    receiver_port = free_port()
    receiver = f"http://127.0.0.1:{receiver_port}"
    logs = tmp_path / "sandbox-logs"
    logs.mkdir()
    system: System | None = None
    try:
        square = start_square_sandbox(
            payments=1_500,
            customers=40,
            items=30,
            token=SECRETS["square_access_token"],
            webhook_url=f"{receiver}/webhooks/square",
            webhook_signature_key=SECRETS["square_webhook_signature_key"],
            log_path=logs / "square.log",
        )
        sandboxes.append(square)
        lightspeed = start_lightspeed_sandbox(
            sales=300,
            items=40,
            client_id=LIGHTSPEED_CLIENT_ID,
            client_secret=SECRETS["lightspeed_client_secret"],
            refresh_token=SECRETS["lightspeed_refresh_token"],
            rotate_refresh_tokens=True,
            # Cached for 5 s past possync's 60 s margin: the backfill refreshes and rotates a few times.
            access_token_lifetime_seconds=65,
            log_path=logs / "lightspeed.log",
        )
        sandboxes.append(lightspeed)
        notion = start_notion_sandbox(
            pages=12,
            token=SECRETS["notion_token"],
            webhook_url=f"{receiver}/webhooks/notion",
            verification_token=SECRETS["notion_verification_token"],
            log_path=logs / "notion.log",
        )
        sandboxes.append(notion)
        values = {
            "redis_url": redis_url,
            "square_base_url": square.base_url,
            "lightspeed_base_url": lightspeed.base_url,
            "lightspeed_token_url": f"{lightspeed.base_url}/auth/oauth/token",
            "lightspeed_account_id": "123456",
            "lightspeed_client_id": LIGHTSPEED_CLIENT_ID,
            "lightspeed_token_file": str(tmp_path / "lightspeed-refresh-token"),
            "notion_base_url": notion.base_url,
            "square_webhook_url": f"{receiver}/webhooks/square",
            "webhooks_port": str(receiver_port),
            "bigquery_project": bigquery_emulator.project,
            "bigquery_dataset": dataset,
            "bigquery_endpoint": bigquery_emulator.endpoint,
            "bigquery_timeout_seconds": "120",
            "min_backoff_seconds": "0.2",
            "max_backoff_seconds": "2",
            "max_retries": "2",
            **SECRETS,
        }
        env = {key: value for key, value in os.environ.items() if not key.upper().startswith(ENV_PREFIX)}
        env |= {ENV_PREFIX + key.upper(): value for key, value in values.items()}
        env["POSSYNC_LOG_FORMAT"] = "json"
        env["POSSYNC_SCHEDULES"] = json.dumps(
            {"square.items": "* * * * * */2", "lightspeed.items": "* * * * * */2"}
        )
        system = System(sandbox=square, settings=Settings.model_validate(values), env=env, work_dir=tmp_path)
        system.start_worker(processes=1, threads=4, queues=("square", "lightspeed", "notion"))
        scheduler_port = free_port()
        system.start_command("scheduler", "scheduler", POSSYNC_SCHEDULER_METRICS_PORT=str(scheduler_port))
        system.start_command("webhooks", "webhooks")

        def ready() -> bool:
            try:
                return httpx.get(f"{receiver}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout_seconds=30, interval_seconds=0.2, message="the receiver never became ready")
        running = Pipeline(
            system,
            receiver=receiver,
            scheduler_metrics=f"http://127.0.0.1:{scheduler_port}/metrics",
            notion=notion,
            lightspeed=lightspeed,
        )
        yield running
        running.http.close()
    finally:
        for pool in system.pools if system is not None else []:
            pool.stop()
        for sandbox in sandboxes:
            sandbox.stop()


def _since(base_url: str, days: int) -> str:
    info = httpx.get(f"{base_url}/_sandbox/info", timeout=10).json()
    now = datetime.fromisoformat(str(info["now"]).replace("Z", "+00:00"))
    return (now - timedelta(days=days)).isoformat()


def _send_webhooks(pipeline: Pipeline) -> list[tuple[str, str]]:
    """Notion's handshake and a few page events; a Square payment changed and a customer deleted.
    Returns (provider, event id) of every event sent."""
    http, notion, square = pipeline.http, pipeline.notion.base_url, pipeline.system.sandbox.base_url
    handshake = http.post(f"{notion}/_sandbox/webhook/handshake").json()
    assert handshake.get("status") == 200, handshake
    http.post(f"{notion}/_sandbox/events/batch", json={"count": 3}).raise_for_status()
    token = SECRETS["square_access_token"]
    payments = http.get(
        f"{square}/v2/payments", params={"limit": 20}, headers={"Authorization": f"Bearer {token}"}
    ).json()["payments"]
    http.post(f"{square}/_sandbox/payments/{payments[0]['id']}/update", json={}).raise_for_status()
    customers = http.get(
        f"{square}/v2/customers", params={"limit": 5}, headers={"Authorization": f"Bearer {token}"}
    )
    http.post(
        f"{square}/_sandbox/customers/{customers.json()['customers'][0]['id']}/delete"
    ).raise_for_status()

    def delivered() -> list[tuple[str, str]] | None:
        square_deliveries = http.get(f"{square}/_sandbox/webhooks/deliveries").json()
        notion_deliveries = http.get(f"{notion}/_sandbox/deliveries").json()
        if notion_deliveries["pending"] or not all(d["finished"] for d in square_deliveries):
            return None
        return [("square", d["event_id"]) for d in square_deliveries] + [
            ("notion", d["event_id"]) for d in notion_deliveries["deliveries"] if d["copy"] == "event"
        ]

    events = wait_until(delivered, timeout_seconds=120, message="the sandboxes never finished delivering")
    assert events is not None
    return events


def _redis_dump(client: redis.Redis) -> dict[str, str]:
    """Every key's value as text, except the keys that hold a secret by design."""
    by_design = (
        f"possync:lightspeed:{LIGHTSPEED_CLIENT_ID}:access_token",
        f"possync:lightspeed:{LIGHTSPEED_CLIENT_ID}:refresh_token",
    )
    dump: dict[str, str] = {}
    for raw_key in client.scan_iter("*", count=1000):
        key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
        if key in by_design:
            continue
        found_type = client.type(raw_key)
        kind = found_type.decode() if isinstance(found_type, bytes) else str(found_type)
        value: Any
        if kind == "string":
            value = client.get(raw_key)
        elif kind == "hash":
            value = client.hgetall(raw_key)
        elif kind == "list":
            value = client.lrange(raw_key, 0, -1)
        elif kind == "set":
            value = client.smembers(raw_key)
        elif kind == "zset":
            value = client.zrange(raw_key, 0, -1)
        else:
            value = f"<{kind}>"
        dump[f"redis {key}"] = key + " " + repr(value)
    return dump


@pytest.mark.slow
def test_no_secret_reaches_logs_metrics_errors_or_dead_letters(pipeline: Pipeline) -> None:
    system = pipeline.system
    client = redis.Redis.from_url(system.settings.redis_url)

    # Given the pipeline running with a sentinel in every secret setting
    # When both sources' history is backfilled
    for source, days in (("square", 2 * 365 + 30), ("lightspeed", 365 + 35)):
        base_url = system.sandbox.base_url if source == "square" else pipeline.lightspeed.base_url
        result = pipeline.cli(
            f"backfill {source}",
            "backfill",
            source,
            "--since",
            _since(base_url, days),
            "--wait",
            "--timeout",
            WAIT_SECONDS,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    # And Notion's handshake and signed Notion and Square webhooks arrive, and land
    events = _send_webhooks(pipeline)
    assert {provider for provider, _ in events} == {"square", "notion"}

    def landed() -> bool:
        progress = [request_progress(client, f"webhook-{provider}-{event}") for provider, event in events]
        return all(p.total and not p.pending for p in progress)

    wait_until(landed, timeout_seconds=120, message="the webhooks' messages never finished")

    # And the scheduler has ticked (its metrics are read while everything runs)
    def ticked() -> bool:
        text = httpx.get(pipeline.scheduler_metrics, timeout=10).text
        return any(
            sample.name == "possync_scheduler_ticks_total"
            and sample.labels.get("outcome") == "enqueued"
            and sample.value > 0
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        )

    wait_until(ticked, timeout_seconds=60, message="the scheduler never enqueued a tick")
    pipeline.scrape("after the backfill and webhooks")

    # When the Square token is revoked and Lightspeed refuses the refresh token for good
    system.sandbox.admin.set_faults(token_revoked=True)
    httpx.post(
        f"{pipeline.lightspeed.base_url}/_sandbox/faults", json={"revoke_refresh_token": True}, timeout=10
    ).raise_for_status()
    # (the cached access token, issued by Lightspeed and a secret too, is dropped, so the next
    # Lightspeed request must refresh)
    access_key = f"possync:lightspeed:{LIGHTSPEED_CLIENT_ID}:access_token"
    cached = client.get(access_key)
    assert isinstance(cached, bytes), "no Lightspeed access token cached after the backfill"
    issued_access_token = cached.decode()
    client.delete(access_key)
    square = pipeline.cli(
        "sync square", "sync", "square", "--stream", "customers", "--wait", "--timeout", WAIT_SECONDS
    )
    lightspeed = pipeline.cli(
        "sync lightspeed", "sync", "lightspeed", "--stream", "sales", "--wait", "--timeout", WAIT_SECONDS
    )

    # Then each sync is dead-lettered with the source's refusal
    assert square.returncode == 1, square.stdout + square.stderr
    assert lightspeed.returncode == 1, lightspeed.stdout + lightspeed.stderr
    letters = dead_letters(client, ("square", "lightspeed"))
    by_actor = {letter.actor: letter for letter in letters}
    assert by_actor["sync_square_stream"].error_type == "SourceAuthError", by_actor
    assert "401" in (by_actor["sync_square_stream"].error or "")
    assert by_actor["sync_lightspeed_stream"].error_type == "SourceAuthError", by_actor
    assert "invalid_grant" in (by_actor["sync_lightspeed_stream"].error or "")
    pipeline.scrape("after the dead letters")
    # And people look at them, at the state of things and at the report
    listed = pipeline.cli("dlq list", "dlq", "list", "--json")
    for letter in json.loads(listed.stdout):
        pipeline.cli(f"dlq show {letter['message_id']}", "dlq", "show", letter["message_id"])
    pipeline.cli("status", "status", "--json")
    report = pipeline.cli("report", "report", "--json")
    assert report.returncode == 0, report.stderr
    figures = json.loads(report.stdout)
    assert figures["totalTransactions"] > 0
    assert figures["lightspeed"]["totalTransactions"] > 0

    # When every process stops (so its last lines are written)
    for pool in system.pools:
        pool.stop()

    # Then the secret-handling paths did run: refreshes, signed webhooks, handshake, summaries
    logs = {
        f"log {path.name}": path.read_text(errors="replace") for path in sorted(system.work_dir.glob("*.log"))
    }
    everything = "\n".join(logs.values())
    for event in (
        "message_done",
        "webhook_handled",
        "notion_verification_token_ignored",
        "message_dead_lettered",
    ):
        assert f'"{event}"' in everything, f"no {event} line: the path it covers did not run"
    assert '"lightspeed_token_refreshed"' in everything
    # And the tokens Lightspeed issued and rotated are secrets too
    assert system.settings.lightspeed_token_file is not None
    issued = {
        "issued lightspeed access token": issued_access_token,
        "issued lightspeed refresh token": system.settings.lightspeed_token_file.read_text().strip(),
    }
    assert all(len(value) >= 16 for value in issued.values()), issued
    assert issued["issued lightspeed refresh token"] != SECRETS["lightspeed_refresh_token"], "never rotated"
    # And no secret appears in any log, command output, metrics exposition or Redis value
    corpus = {**logs, **pipeline.outputs, **pipeline.metrics, **_redis_dump(client)}
    assert len(pipeline.metrics) == 6
    assert _leaks(corpus, {**SECRETS, **issued}) == []
