"""Every PromQL expression shipped (Grafana dashboards, Prometheus rules) names only metrics the code exports.

Expressions are parsed with a real PromQL parser (promql-parser) and every selector's metric name is
collected, ``{__name__="..."}`` included. A name must be a series some possync process exposes
(:func:`workers.metrics.exported_series`), a recording rule defined in the rule files, or one of
Prometheus's own. The dashboards must also cover every metric family the code exports.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from workers.metrics import MetricInfo, exported_series, metric_families

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
RULES = ROOT / "deploy" / "prometheus"

#: Series Prometheus itself adds to every target.
PROMETHEUS_OWN = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

#: Grafana's built-in variables, replaced by a literal so the expression parses as Prometheus sees it.
_GRAFANA_RANGES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1d"}
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<expr>.+?)\s*,\s*)?(?P<label>[a-zA-Z_]\w*)\s*\)\s*$")


def _grafana_to_promql(expr: str) -> str:
    for variable, literal in _GRAFANA_RANGES.items():
        expr = expr.replace(variable, literal)
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names every selector of ``expr`` refers to.

    Raises:
        ValueError: if the expression does not parse, or a selector names no metric.
    """
    names: set[str] = set()

    def walk(node: Any) -> None:
        kind = type(node).__name__
        if kind == "VectorSelector":
            name = node.name
            if name is None:
                matched = [m.value for m in node.matchers.matchers if m.name == "__name__"]
                if not matched:
                    raise ValueError(f"a selector names no metric in {expr!r}")
                name = matched[0]
            names.add(name)
        elif kind == "MatrixSelector":
            walk(node.vector_selector)
        elif kind == "BinaryExpr":
            walk(node.lhs)
            walk(node.rhs)
        elif kind == "Call":
            for argument in node.args:
                walk(argument)
        elif kind == "AggregateExpr":
            walk(node.expr)
            if node.param is not None:
                walk(node.param)
        elif kind in ("ParenExpr", "UnaryExpr", "SubqueryExpr"):
            walk(node.expr)

    try:
        tree = promql_parser.parse(_grafana_to_promql(expr))
    except Exception as exc:  # the parser raises its own ValueError-like errors
        raise ValueError(f"does not parse as PromQL: {expr!r}: {exc}") from exc
    walk(tree)
    return names


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _dashboards() -> dict[Path, dict[str, Any]]:
    paths = sorted(DASHBOARDS.glob("*.json"))
    assert paths, f"no dashboards in {DASHBOARDS}"
    return {path: json.loads(path.read_text(encoding="utf-8")) for path in paths}


def dashboard_expressions() -> list[tuple[str, str]]:
    """``(where, expr)`` for every panel target and every query variable of every dashboard."""
    found: list[tuple[str, str]] = []
    for path, board in _dashboards().items():
        for panel in _panels(board.get("panels", [])):
            for target in panel.get("targets", []):
                found.append((f"{path.name}: {panel['title']}", target.get("expr", "")))
        for variable in board.get("templating", {}).get("list", []):
            query = variable.get("query")
            text = query.get("query", "") if isinstance(query, dict) else str(query or "")
            match = _LABEL_VALUES.match(text)
            if match is None:
                raise AssertionError(f"{path.name}: variable {variable['name']} is not label_values(...)")
            if match.group("expr"):
                found.append((f"{path.name}: variable {variable['name']}", match.group("expr")))
    return found


def _rule_files() -> list[Path]:
    files = [
        path
        for path in sorted(RULES.glob("*.yml"))
        if isinstance(loaded := yaml.safe_load(path.read_text(encoding="utf-8")), dict) and "groups" in loaded
    ]
    assert files, f"no rule files (with groups:) in {RULES}"
    return files


def rule_expressions() -> tuple[list[tuple[str, str]], set[str]]:
    """``(where, expr)`` of every rule, and the names of the recording rules."""
    found: list[tuple[str, str]] = []
    recorded: set[str] = set()
    for path in _rule_files():
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule.get("record")
                found.append((f"{path.name}: {name}", str(rule["expr"])))
                if "record" in rule:
                    recorded.add(rule["record"])
    return found, recorded


def unknown_names(expressions: list[tuple[str, str]], known: frozenset[str]) -> list[str]:
    """``where: name`` for every metric name not in ``known``."""
    return [
        f"{where}: {name}"
        for where, expr in expressions
        for name in sorted(metric_names(expr))
        if name not in known
    ]


def _known() -> frozenset[str]:
    _rules, recorded = rule_expressions()
    return exported_series() | recorded | PROMETHEUS_OWN


def test_dashboards_query_only_exported_metrics() -> None:
    expressions = dashboard_expressions()
    assert len(expressions) > 20
    assert unknown_names(expressions, _known()) == []


def test_alert_and_recording_rules_query_only_exported_metrics() -> None:
    expressions, recorded = rule_expressions()
    assert expressions
    assert recorded, "the rule files define no recording rule (thresholds are kept as ones)"
    assert all(":" in name for name in recorded), "recording rules are named level:metric:operations"
    assert unknown_names(expressions, _known()) == []


def test_a_misspelt_metric_is_caught_in_any_position() -> None:
    # Given expressions naming a metric the code does not export, in various positions
    known = _known()
    bad = [
        ("panel", "sum(rate(possync_no_such_metric_total[$__rate_interval]))"),
        ("panel", 'max by (queue) (possync_queue_messages) / on () group_left () {__name__="possync_nope"}'),
        ("rule", "histogram_quantile(0.95, sum by (le) (rate(possync_job_seconds_bucket[5m]))) > 60"),
    ]

    # Then each is reported, and a correct one is not
    assert unknown_names(bad, known) == [
        "panel: possync_no_such_metric_total",
        "panel: possync_nope",
        "rule: possync_job_seconds_bucket",
    ]
    assert unknown_names([("ok", "max by (queue) (possync_queue_messages)")], known) == []
    with pytest.raises(ValueError, match="does not parse"):
        metric_names("sum(rate(possync_queue_messages[5m])")


def _family_of(series: str, families: list[MetricInfo]) -> MetricInfo | None:
    for info in families:
        if series in info.series():
            return info
    return None


def test_dashboards_cover_every_exported_metric_family() -> None:
    families = list(metric_families())
    shown = {
        info.name
        for _where, expr in dashboard_expressions()
        for name in metric_names(expr)
        if (info := _family_of(name, families)) is not None
    }
    assert sorted(info.name for info in families if info.name not in shown) == []


def test_dashboards_are_well_formed() -> None:
    boards = _dashboards()
    uids = [board["uid"] for board in boards.values()]
    assert len(set(uids)) == len(uids), uids
    for path, board in boards.items():
        assert board["title"].startswith("possync"), path.name
        panels = [panel for panel in _panels(board["panels"]) if panel["type"] != "row"]
        assert panels, path.name
        ids = [panel["id"] for panel in _panels(board["panels"])]
        assert len(set(ids)) == len(ids), f"{path.name}: duplicate panel ids"
        for panel in panels:
            assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
            assert panel["targets"], f"{path.name}: {panel['title']} has no query"
            assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]


def test_grafana_provisioning_points_at_the_dashboards_and_the_datasource_uid() -> None:
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    datasources = yaml.safe_load(
        (provisioning / "datasources" / "prometheus.yml").read_text(encoding="utf-8")
    )
    assert [source["uid"] for source in datasources["datasources"]] == ["prometheus"]
    providers = yaml.safe_load((provisioning / "dashboards" / "possync.yml").read_text(encoding="utf-8"))
    assert [provider["options"]["path"] for provider in providers["providers"]] == [
        "/var/lib/grafana/dashboards"
    ]
