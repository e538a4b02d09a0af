"""Settings: flat POSSYNC_ names, clear errors naming the variable, secrets hidden."""

from __future__ import annotations

import pytest

from schemas.settings import ConfigError, load_settings


def test_flat_environment_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the variables the issue names
    monkeypatch.setenv("POSSYNC_REDIS_URL", "redis://127.0.0.1:6390/2")
    monkeypatch.setenv("POSSYNC_SQUARE_BASE_URL", "http://127.0.0.1:8000/")
    monkeypatch.setenv("POSSYNC_SQUARE_ACCESS_TOKEN", "tok-123")
    monkeypatch.setenv("POSSYNC_SQUARE_LOCATION_IDS", "L1, L2,,L3")
    monkeypatch.setenv("POSSYNC_BIGQUERY_PROJECT", "my-project")
    monkeypatch.setenv("POSSYNC_BIGQUERY_ENDPOINT", "http://127.0.0.1:9050")
    monkeypatch.setenv("POSSYNC_REPORT_TIMEZONE", "Europe/Paris")

    # When settings load
    settings = load_settings()

    # Then each is parsed as documented
    assert settings.redis_url == "redis://127.0.0.1:6390/2"
    assert settings.square_base_url == "http://127.0.0.1:8000"
    assert settings.require_square().get_secret_value() == "tok-123"
    assert settings.square_location_ids == ["L1", "L2", "L3"]
    assert settings.require_bigquery() == "my-project"
    assert settings.bigquery_endpoint == "http://127.0.0.1:9050"
    assert settings.bigquery_dataset == "commerce"
    assert settings.bigquery_location == "US"
    assert str(settings.zone()) == "Europe/Paris"


def test_defaults_point_at_real_square_and_google(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("POSSYNC_SQUARE_BASE_URL", "POSSYNC_BIGQUERY_ENDPOINT", "POSSYNC_REPORT_TIMEZONE"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.square_base_url == "https://connect.squareup.com"
    assert settings.bigquery_endpoint is None
    assert settings.report_timezone == "UTC"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("POSSYNC_REPORT_TIMEZONE", "Mars/Olympus"),
        ("POSSYNC_BIGQUERY_DATASET", "no-dashes-allowed"),
        ("POSSYNC_SQUARE_BASE_URL", "connect.squareup.com"),
        ("POSSYNC_REDIS_URL", "http://localhost"),
        ("POSSYNC_BATCH_MAX_ROWS", "0"),
    ],
)
def test_an_invalid_value_fails_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings()


def test_missing_credentials_fail_only_when_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given no Square token and no project
    monkeypatch.delenv("POSSYNC_SQUARE_ACCESS_TOKEN", raising=False)
    monkeypatch.delenv("POSSYNC_BIGQUERY_PROJECT", raising=False)

    # When settings load, nothing fails yet (a command may not need them)
    settings = load_settings()

    # Then asking for them names the variable
    with pytest.raises(ConfigError, match="POSSYNC_SQUARE_ACCESS_TOKEN"):
        settings.require_square()
    with pytest.raises(ConfigError, match="POSSYNC_BIGQUERY_PROJECT"):
        settings.require_bigquery()


def test_repr_hides_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSSYNC_SQUARE_ACCESS_TOKEN", "very-secret-token")
    monkeypatch.setenv("POSSYNC_REDIS_URL", "redis://user:redis-password@127.0.0.1:6379/0")
    settings = load_settings()
    text = repr(settings) + str(settings)
    assert "very-secret-token" not in text
    assert "redis-password" not in text


def test_unparsable_json_is_a_config_error_and_empty_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given POSSYNC_SCHEDULES that is not JSON
    monkeypatch.setenv("POSSYNC_SCHEDULES", '{"square": */15')

    # Then loading fails with a ConfigError naming the setting, not a traceback
    with pytest.raises(ConfigError, match="schedules"):
        load_settings()

    # And an empty variable (compose's ${VAR:-}) means unset
    monkeypatch.setenv("POSSYNC_SCHEDULES", "")
    monkeypatch.setenv("POSSYNC_NOTION_VERIFICATION_TOKEN", "")
    settings = load_settings()
    assert settings.schedules == {}
    assert settings.notion_verification_token is None
