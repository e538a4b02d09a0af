"""docker-compose.yml and deploy/, checked with the docker-compose CI installs (Debian's 1.29).

``docker-compose config`` validates the file against Compose's schema and prints it resolved, with
no Docker engine: these tests run it in an empty environment and an empty env file (what a user gets
from a fresh clone), then check the topology the file promises: Redis with AOF, the BigQuery
emulator as the default warehouse, one service per worker pool, two scheduler replicas, the webhook
receiver, Prometheus with the scrape config and the rules, Grafana with its provisioning and
dashboards, every file mounted from the repository present, and no secret with a default. Then the
scrape config itself, checked by ``promtool`` and against the services.

YAML is read by the Python interpreter that runs docker-compose (it needs PyYAML to run at all),
converting to JSON, so the project needs no YAML dependency of its own.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"

POOLS = ("square", "lightspeed", "notion", "migrations")
WORKER_SERVICES = tuple(f"worker-{pool}" for pool in POOLS)
POSSYNC_SERVICES = (*WORKER_SERVICES, "scheduler", "webhooks")
EMULATOR = "bigquery-emulator"
EXPECTED_SERVICES = {"redis", EMULATOR, *POSSYNC_SERVICES, "prometheus", "grafana"}
EXPECTED_JOBS = {"possync-workers", "possync-scheduler", "possync-webhooks"}
#: Settings that hold secrets: never a default in the compose file.
SECRETS = (
    "POSSYNC_SQUARE_ACCESS_TOKEN",
    "POSSYNC_SQUARE_WEBHOOK_SIGNATURE_KEY",
    "POSSYNC_LIGHTSPEED_CLIENT_SECRET",
    "POSSYNC_LIGHTSPEED_REFRESH_TOKEN",
    "POSSYNC_NOTION_TOKEN",
    "POSSYNC_NOTION_VERIFICATION_TOKEN",
    "GF_SECURITY_ADMIN_PASSWORD",
)
_TIMEOUT_SECONDS = 120
_YAML_TO_JSON = "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"


def _require(tool: str, package: str) -> str:
    found = shutil.which(tool)
    if found is None:
        pytest.fail(f"`{tool}` is not on PATH: install it (`apt-get install {package}` on Debian/Ubuntu)")
    return found


def _yaml_python(compose: str) -> list[str]:
    """A Python command that can import yaml: the one running docker-compose, else this one."""
    candidates: list[list[str]] = []
    with open(compose, "rb") as handle:
        first = handle.readline(300)
    if first.startswith(b"#!") and b"python" in first:
        candidates.append(shlex.split(first[2:].decode().strip()))
    candidates.append([sys.executable])
    for argv in candidates:
        probe = subprocess.run([*argv, "-c", "import yaml"], capture_output=True, timeout=_TIMEOUT_SECONDS)
        if probe.returncode == 0:
            return argv
    pytest.fail(
        f"no Python with PyYAML to read YAML: tried {candidates}; install the Debian package "
        "(`apt-get install docker-compose`, which brings python3-yaml)"
    )


class YamlReader:
    """Parses YAML text through an interpreter that has PyYAML."""

    def __init__(self, argv: list[str]) -> None:
        self._argv = argv

    def load(self, text: str) -> Any:
        result = subprocess.run(
            [*self._argv, "-c", _YAML_TO_JSON],
            input=text,
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_SECONDS,
        )
        assert result.returncode == 0, f"YAML did not parse:\n{result.stderr}"
        return json.loads(result.stdout)


@pytest.fixture(scope="module")
def compose() -> str:
    return _require("docker-compose", "docker-compose")


@pytest.fixture(scope="module")
def yaml_reader(compose: str) -> YamlReader:
    return YamlReader(_yaml_python(compose))


@pytest.fixture(scope="module")
def config_run(compose: str, tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    """``docker-compose -f docker-compose.yml config`` as a fresh clone gets it: no POSSYNC_* (or
    any other) variables, and an empty env file instead of a developer's .env."""
    home = tmp_path_factory.mktemp("compose-home")
    env_file = home / "empty.env"
    env_file.write_text("")
    return subprocess.run(
        [compose, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), "config"],
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", os.defpath), "HOME": str(home), "LANG": "C.UTF-8"},
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_SECONDS,
    )


@pytest.fixture(scope="module")
def config(config_run: subprocess.CompletedProcess[str], yaml_reader: YamlReader) -> dict[str, Any]:
    assert config_run.returncode == 0, f"docker-compose config failed:\n{config_run.stderr}"
    loaded = yaml_reader.load(config_run.stdout)
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(config: dict[str, Any]) -> dict[str, Any]:
    found = config["services"]
    assert isinstance(found, dict)
    return found


@pytest.fixture(scope="module")
def scrape(yaml_reader: YamlReader) -> dict[str, Any]:
    loaded = yaml_reader.load(PROMETHEUS_CONFIG.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """``(source, target)`` of each volume of a service (short or long syntax)."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts.append((str(volume.get("source", "")), str(volume["target"])))
        else:
            parts = str(volume).split(":")
            mounts.append((parts[0], parts[1]) if len(parts) > 1 else ("", parts[0]))
    return mounts


def _repo_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Target in the container -> file or directory of the repository mounted there."""
    return {target: Path(source) for source, target in _mounts(service) if source.startswith("/")}


def _published(service: dict[str, Any]) -> set[int]:
    """Host ports a service publishes (``[ip:]published:target[/proto]`` or the long syntax)."""
    ports = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports.add(int(port["published"]))
        else:
            ports.add(int(str(port).split("/")[0].split(":")[-2]))
    return ports


def _option(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


def test_config_validates_with_no_environment(config_run: subprocess.CompletedProcess[str]) -> None:
    assert config_run.returncode == 0, f"docker-compose config failed:\n{config_run.stderr}"
    # Every variable has a default (empty for secrets), so nothing is silently blank.
    assert "is not set" not in config_run.stderr, config_run.stderr


def test_every_service_runs_by_default(services: dict[str, Any]) -> None:
    assert set(services) >= EXPECTED_SERVICES
    for name in EXPECTED_SERVICES:
        assert "profiles" not in services[name], f"{name} is hidden behind a profile"


def test_redis_is_a_queue_with_aof(services: dict[str, Any]) -> None:
    redis = services["redis"]
    command = redis["command"]
    assert _option(command, "--appendonly") == "yes"
    assert _option(command, "--appendfsync") == "everysec"
    assert _option(command, "--maxmemory-policy") == "noeviction"
    assert ("redis-data", "/data") in _mounts(redis)
    assert "healthcheck" in redis


def test_one_service_per_worker_pool(services: dict[str, Any]) -> None:
    for pool in POOLS:
        worker = services[f"worker-{pool}"]
        assert worker["command"][0] == "worker"
        assert _option(worker["command"], "--queues") == pool
        assert worker["environment"]["POSSYNC_WORKER_METRICS_HOST"] == "0.0.0.0"
        assert "9191" in [str(port) for port in worker["expose"]]
        assert worker["deploy"]["replicas"] == 1
        assert worker["depends_on"]["redis"]["condition"] == "service_healthy"


def test_lightspeed_keeps_its_refresh_token_in_a_volume(services: dict[str, Any]) -> None:
    worker = services["worker-lightspeed"]
    token_file = PurePosixPath(worker["environment"]["POSSYNC_LIGHTSPEED_TOKEN_FILE"])
    assert ("lightspeed-tokens", str(token_file.parent)) in _mounts(worker)


def test_two_scheduler_replicas(services: dict[str, Any]) -> None:
    scheduler = services["scheduler"]
    assert scheduler["command"] == ["scheduler"]
    assert scheduler["deploy"]["replicas"] == 2
    assert "scale" not in scheduler  # Compose refuses both; deploy.replicas is the one Compose 1.29 honours
    assert "container_name" not in scheduler  # a fixed name allows one container only
    assert scheduler["environment"]["POSSYNC_SCHEDULER_METRICS_HOST"] == "0.0.0.0"
    assert "9192" in [str(port) for port in scheduler["expose"]]


def test_webhook_receiver_on_8080(services: dict[str, Any]) -> None:
    webhooks = services["webhooks"]
    assert webhooks["command"] == ["webhooks"]
    assert webhooks["environment"]["POSSYNC_WEBHOOKS_HOST"] == "0.0.0.0"
    assert webhooks["environment"]["POSSYNC_WEBHOOKS_PORT"] == "8080"
    assert 8080 in _published(webhooks)


def test_one_image_for_every_possync_process(services: dict[str, Any]) -> None:
    for name in POSSYNC_SERVICES:
        assert services[name]["image"] == "possync:latest", name
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile", name
        assert services[name]["environment"]["POSSYNC_REDIS_URL"] == "redis://redis:6379/0", name


def test_bigquery_defaults_to_the_emulator(services: dict[str, Any]) -> None:
    emulator = services[EMULATOR]
    command = emulator["command"]
    assert command[0] == "serve"
    port = _option(command, "--port")
    project = _option(command, "--project")
    for name in POSSYNC_SERVICES:
        environment = services[name]["environment"]
        assert environment["POSSYNC_BIGQUERY_ENDPOINT"] == f"http://{EMULATOR}:{port}", name
        assert environment["POSSYNC_BIGQUERY_PROJECT"] == project, name
        assert "GOOGLE_APPLICATION_CREDENTIALS" not in environment, name
    assert Path(emulator["build"]["context"]) == REPO / "deploy" / "emulator"
    dockerfile = (REPO / "deploy" / "emulator" / "Dockerfile").read_text()
    assert "local-bigquery==0.4.0" in dockerfile  # the emulator the test suite runs against


def test_no_secret_has_a_default(services: dict[str, Any]) -> None:
    seen = set()
    for name, service in services.items():
        environment = service.get("environment", {})
        for secret in SECRETS:
            if secret in environment:
                seen.add(secret)
                assert environment[secret] in ("", None), f"{name}: {secret} has a default"
    assert seen == set(SECRETS)


def test_prometheus_mounts_its_config_and_the_rules(services: dict[str, Any], scrape: dict[str, Any]) -> None:
    prometheus = services["prometheus"]
    mounts = _repo_mounts(prometheus)
    config_target = PurePosixPath(_option_value(prometheus["command"], "--config.file"))
    assert mounts[str(config_target)] == PROMETHEUS_CONFIG
    rule_files = scrape["rule_files"]
    assert rule_files, "no rule_files in prometheus.yml"
    for rule_file in rule_files:
        # Relative paths resolve against the config file's directory, in the container and here.
        target = config_target.parent / rule_file
        assert str(target) in mounts, f"rule file {target} is not mounted"
        assert mounts[str(target)] == (PROMETHEUS_CONFIG.parent / rule_file).resolve()
    assert mounts[str(config_target.parent / "alerts.yml")] == REPO / "deploy" / "prometheus" / "alerts.yml"


def _option_value(command: list[str], flag: str) -> str:
    for argument in command:
        if argument.startswith(flag + "="):
            return argument.split("=", 1)[1]
    return _option(command, flag)


def test_grafana_is_provisioned(services: dict[str, Any]) -> None:
    mounts = _repo_mounts(services["grafana"])
    assert mounts["/etc/grafana/provisioning"] == REPO / "deploy" / "grafana" / "provisioning"
    assert mounts["/var/lib/grafana/dashboards"] == REPO / "deploy" / "grafana" / "dashboards"


def test_every_mounted_file_exists(services: dict[str, Any]) -> None:
    missing = []
    for name, service in services.items():
        for target, source in _repo_mounts(service).items():
            assert source.is_relative_to(REPO), f"{name} mounts {source}, outside the repository"
            if not source.exists():
                missing.append(f"{name}: {source.relative_to(REPO)} -> {target}")
        build = service.get("build")
        if build:
            context = Path(build["context"])
            if not (context / build.get("dockerfile", "Dockerfile")).is_file():
                missing.append(f"{name}: build {context}/{build.get('dockerfile', 'Dockerfile')}")
    assert not missing, "missing from the repository:\n" + "\n".join(missing)


def test_dockerfile_builds_the_package_as_a_non_root_user() -> None:
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    copied = " ".join(line for line in dockerfile.splitlines() if line.startswith("COPY "))
    for needed in ("pyproject.toml", "README.md", *packages):
        assert re.search(rf"\s{re.escape(needed)}(\s|$)", copied), f"deploy/Dockerfile does not COPY {needed}"
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert users, "the image must name its user"
    assert users[-1] not in ("root", "0"), "the image must run as a non-root user"
    allowed = (REPO / ".dockerignore").read_text().splitlines()
    for needed in ("pyproject.toml", "README.md", *packages):
        assert any(line.strip().rstrip("/") == f"!{needed}" for line in allowed), (
            f".dockerignore drops {needed}"
        )


def test_scrape_config_jobs(scrape: dict[str, Any], services: dict[str, Any]) -> None:
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    assert set(jobs) == EXPECTED_JOBS

    workers = jobs["possync-workers"]
    (workers_sd,) = workers["dns_sd_configs"]
    assert workers_sd["type"] == "A"
    assert workers_sd["port"] == 9191
    assert set(workers_sd["names"]) == set(WORKER_SERVICES)
    # Each target is labelled with its pool, from the DNS name that found it.
    (pool_rule,) = [rule for rule in workers["relabel_configs"] if rule.get("target_label") == "pool"]
    assert pool_rule["source_labels"] == ["__meta_dns_name"]
    pattern = re.compile(pool_rule["regex"])
    for pool in POOLS:
        match = pattern.fullmatch(f"worker-{pool}")
        assert match is not None
        assert match.expand(pool_rule.get("replacement", "$1").replace("$", "\\")) == pool

    # Both replicas: Docker's DNS answers the service name with every container's address.
    (scheduler_sd,) = jobs["possync-scheduler"]["dns_sd_configs"]
    assert scheduler_sd["names"] == ["scheduler"]
    assert scheduler_sd["type"] == "A"
    assert scheduler_sd["port"] == 9192

    (webhooks_static,) = jobs["possync-webhooks"]["static_configs"]
    assert webhooks_static["targets"] == ["webhooks:8080"]

    for name in (*WORKER_SERVICES, "scheduler", "webhooks"):
        assert name in services


def test_promtool_accepts_the_scrape_config() -> None:
    promtool = _require("promtool", "prometheus")
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_CONFIG)],
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_SECONDS,
    )
    assert result.returncode == 0, result.stdout + result.stderr
