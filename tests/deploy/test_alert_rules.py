"""The alert rules (deploy/prometheus/alerts.yml), their promtool unit tests and docs/runbook.md.

``promtool`` (Debian's ``prometheus`` package, as CI installs it) checks the rules and runs the unit
tests under deploy/prometheus/tests/. The rest reads the YAML and holds the rules to the project's
conventions: every alert has a severity, a summary, a description and a runbook_url whose section
exists in the runbook; every alert has a firing and a silent unit test; every series a rule or a test
uses is one possync exposes (:func:`workers.metrics.exported_series`).

The project has no YAML dependency of its own: YAML is read by a Python interpreter that has PyYAML
(this one, else the system's ``python3``, which Debian's ``python3-yaml`` provides), converted to JSON.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from workers.metrics import exported_series

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULES_FILE = PROMETHEUS_DIR / "alerts.yml"
TESTS_DIR = PROMETHEUS_DIR / "tests"
RUNBOOK = REPO / "docs" / "runbook.md"

SEVERITIES = frozenset({"critical", "warning"})
REQUIRED_ANNOTATIONS = ("summary", "description", "runbook_url")
#: Series that Prometheus itself makes: scrape health and the alerts' own state.
PROMETHEUS_SERIES = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})
_TIMEOUT_SECONDS = 300
_YAML_TO_JSON = (
    "import json, sys, yaml\n"
    "json.dump({path: yaml.safe_load(open(path, encoding='utf-8')) for path in sys.argv[1:]}, sys.stdout)"
)
#: A metric name in PromQL (recording rules have colons); label names and values are stripped first.
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_OUR_PREFIXES = ("possync_", "possync:", "dramatiq_")


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("`promtool` is not on PATH: install it (`apt-get install prometheus` on Debian/Ubuntu)")
    return found


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=_TIMEOUT_SECONDS)


def _yaml_python() -> str:
    """A Python interpreter that can import yaml: this one, else the system's."""
    candidates = [sys.executable]
    for name in ("python3", "/usr/bin/python3"):
        found = shutil.which(name)
        if found is not None and found not in candidates:
            candidates.append(found)
    for python in candidates:
        if _run([python, "-c", "import yaml"]).returncode == 0:
            return python
    pytest.fail(
        f"no Python with PyYAML to read the rules: tried {candidates}; install it "
        "(`apt-get install python3-yaml` on Debian/Ubuntu)"
    )


def _test_files() -> list[Path]:
    return sorted(TESTS_DIR.glob("*_test.yml"))


@pytest.fixture(scope="module")
def documents() -> dict[Path, Any]:
    """Every YAML file of this suite, parsed: the rules and each unit-test file."""
    paths = [RULES_FILE, *_test_files()]
    result = _run([_yaml_python(), "-c", _YAML_TO_JSON, *map(str, paths)])
    assert result.returncode == 0, f"could not read the YAML:\n{result.stderr}"
    loaded: dict[str, Any] = json.loads(result.stdout)
    return {Path(path): document for path, document in loaded.items()}


@pytest.fixture(scope="module")
def rules(documents: dict[Path, Any]) -> list[dict[str, Any]]:
    found = [rule for group in documents[RULES_FILE]["groups"] for rule in group["rules"]]
    assert found, f"{RULES_FILE} has no rules"
    return found


@pytest.fixture(scope="module")
def alerts(rules: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {rule["alert"]: rule for rule in rules if "alert" in rule}
    assert len(found) == sum(1 for rule in rules if "alert" in rule), "two alerts share a name"
    return found


@pytest.fixture(scope="module")
def unit_tests(documents: dict[Path, Any]) -> dict[Path, dict[str, Any]]:
    found = {path: document for path, document in documents.items() if path != RULES_FILE}
    assert found, f"no unit-test files (*_test.yml) in {TESTS_DIR}"
    return found


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _runbook_headings() -> list[str]:
    """The runbook's Markdown headings (``#`` lines outside fenced code blocks, whose ``#`` are comments)."""
    headings: list[str] = []
    in_code = False
    for line in RUNBOOK.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif line.startswith("#") and not in_code:
            headings.append(line.lstrip("#").strip())
    return headings


def _names_in(expr: str) -> set[str]:
    """possync's, Dramatiq's and recorded series names an expression or a series selector uses."""
    without_labels = re.sub(r"\{[^}]*\}", "", expr)  # matchers: label names and quoted values
    without_strings = re.sub(r'"[^"]*"', "", without_labels)  # label_replace arguments and the like
    return {name for name in _NAME.findall(without_strings) if name.startswith(_OUR_PREFIXES)}


def _alert_cases(unit_tests: dict[Path, dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for document in unit_tests.values():
        for group in document.get("tests") or []:
            yield from group.get("alert_rule_test") or []


def test_promtool_accepts_the_rules() -> None:
    # Given the rules file
    # When promtool checks it
    result = _run([_promtool(), "check", "rules", str(RULES_FILE)])
    # Then it is valid PromQL and a valid rules file
    assert result.returncode == 0, f"promtool check rules failed:\n{result.stdout}\n{result.stderr}"


def test_promtool_unit_tests_pass() -> None:
    # Given every unit-test file
    files = _test_files()
    assert files, f"no unit-test files (*_test.yml) in {TESTS_DIR}"
    # When promtool runs them
    result = _run([_promtool(), "test", "rules", *map(str, files)])
    # Then every case gets the alerts (and samples) it expects
    assert result.returncode == 0, f"promtool test rules failed:\n{result.stdout}\n{result.stderr}"


def test_unit_tests_load_the_real_rules(unit_tests: dict[Path, dict[str, Any]]) -> None:
    for path, document in unit_tests.items():
        loaded = [(path.parent / name).resolve() for name in document.get("rule_files") or []]
        assert loaded == [RULES_FILE.resolve()], f"{path.name} must load ../alerts.yml and only it: {loaded}"


def test_every_alert_has_severity_annotations_and_a_runbook_section(
    alerts: dict[str, dict[str, Any]],
) -> None:
    anchors = {_anchor(heading) for heading in _runbook_headings()}
    for name, rule in alerts.items():
        assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity not in {SEVERITIES}"
        annotations = rule.get("annotations", {})
        for key in REQUIRED_ANNOTATIONS:
            assert str(annotations.get(key, "")).strip(), f"{name}: no annotations.{key}"
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == "docs/runbook.md", f"{name}: runbook_url must point into docs/runbook.md"
        assert anchor == name.lower(), f"{name}: runbook_url anchor should be #{name.lower()}"
        assert anchor in anchors, f"{name}: docs/runbook.md has no heading with anchor #{anchor}"


def test_every_runbook_alert_section_is_a_rule(alerts: dict[str, dict[str, Any]]) -> None:
    # A section for an alert that was renamed or removed would mislead whoever lands on it.
    sections = {heading for heading in _runbook_headings() if heading.startswith("Possync")}
    assert sections <= set(alerts), f"runbook sections with no alert: {sorted(sections - set(alerts))}"


def test_recording_rules_are_named_with_a_colon(rules: list[dict[str, Any]]) -> None:
    for rule in rules:
        if "record" in rule:
            assert ":" in rule["record"], (
                f"recording rule {rule['record']} needs a level:metric:operation name"
            )


def test_every_alert_has_a_firing_and_a_silent_case(
    alerts: dict[str, dict[str, Any]], unit_tests: dict[Path, dict[str, Any]]
) -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for case in _alert_cases(unit_tests):
        (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    assert set(alerts) <= firing, f"alerts never tested firing: {sorted(set(alerts) - firing)}"
    assert set(alerts) <= silent, f"alerts never tested silent: {sorted(set(alerts) - silent)}"
    unknown = (firing | silent) - set(alerts)
    assert not unknown, f"unit tests of alerts that do not exist: {sorted(unknown)}"


def test_rules_and_tests_use_only_series_possync_exposes(
    rules: list[dict[str, Any]], unit_tests: dict[Path, dict[str, Any]]
) -> None:
    # Given every series name possync exposes, and the recording rules' names
    known = exported_series() | PROMETHEUS_SERIES | {rule["record"] for rule in rules if "record" in rule}
    # Then no rule queries a name that does not exist (it would never fire)
    for rule in rules:
        name = rule.get("alert") or rule.get("record")
        unknown = _names_in(rule["expr"]) - known
        assert not unknown, f"{name} uses series possync does not expose: {sorted(unknown)}"
    # And no unit test feeds one (it would test a rule against series that never occur)
    for path, document in unit_tests.items():
        for group in document.get("tests") or []:
            for series in group.get("input_series") or []:
                selector = series["series"]
                metric = selector.split("{", 1)[0].strip()
                assert metric in known, f"{path.name}: input series {metric!r} is not one possync exposes"
