"""Grafana dashboards, without the running system: every dashboard is well-formed, every PromQL
expression yields metric names, and each name is one that an OpenTelemetry instrument declared
in the code maps to in Prometheus (tests/e2e/test_dashboards.py checks the live /metrics)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.router.metrics import HISTOGRAMS as ROUTER_HISTOGRAMS
from tandem.stages import Stage, prometheus_name

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "observability" / "grafana" / "dashboards"

PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan", "le", "atan2",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![\w.])")
_OFFSET = re.compile(r"\boffset\s+\S+")
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression reads: identifiers that are neither functions, keywords,
    label names (inside {}, by(), ...), numbers nor Grafana variables."""
    text = _STRING.sub('""', expr)
    text = _VARIABLE.sub("1", text)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    text = _OFFSET.sub("", text)
    text = _NUMBER.sub("", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        rest = text[match.end():].lstrip()
        if rest.startswith("("):
            continue  # a function
        if match.group(0).lower() in PROMQL_KEYWORDS:
            continue
        names.add(match.group(0))
    return names


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets and query variables (label_values(metric, l))."""
    exprs = []
    for panel in walk(dashboard.get("panels", [])):
        for target in panel.get("targets", []) if isinstance(panel.get("targets"), list) else []:
            if target.get("expr"):
                exprs.append(target["expr"])
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", query)
        if match:
            exprs.append(match.group(1))
        elif query:
            exprs.append(query)
    return exprs


def dashboards() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def exported_names_from_code() -> set[str]:
    """Prometheus names of the OpenTelemetry instruments created in tandem/ and services/
    (the Prometheus exporter's rules: dots to underscores, a unit suffix, _total on
    counters, _bucket/_sum/_count on histograms), the counters kept as tallies
    (``tandem.telemetry.tally``) and the planner's table of gauges (``ScalarGauge``)."""
    pattern = re.compile(
        r"create_(histogram|counter|up_down_counter|gauge|observable_gauge|observable_counter"
        r"|observable_up_down_counter)\(\s*\"([^\"]+)\"(.*?)\)", re.S)
    tally = re.compile(r"\btally\(\s*\"([^\"]+)\"(.*?)\)", re.S)
    table = re.compile(r"\bScalarGauge\(\s*\"([^\"]+)\"(.*?)\)", re.S)  # planner gauges
    units = {"s": "seconds", "ms": "milliseconds", "By": "bytes"}  # "1": no suffix
    names: set[str] = set()
    # The router's histograms are declared as one table (services.router.metrics.HISTOGRAMS).
    instruments = [("histogram", name, f'unit="{unit}"')
                   for _, name, unit, _, _ in ROUTER_HISTOGRAMS]
    for path in [*ROOT.glob("tandem/**/*.py"), *ROOT.glob("services/**/*.py")]:
        if "/v1/" in path.as_posix():
            continue
        text = path.read_text()
        tallies = [("up_down_counter" if "up_down=True" in rest else "counter", name, rest)
                   for name, rest in tally.findall(text)]  # tandem.telemetry.tally
        gauges = [("observable_gauge", name, rest) for name, rest in table.findall(text)]
        instruments += [*pattern.findall(text), *tallies, *gauges]
    for kind, name, rest in instruments:
        unit_match = re.search(r'unit="([^"]*)"', rest)
        unit = unit_match.group(1) if unit_match else ""
        base = re.sub(r"[^a-zA-Z0-9_:]", "_", name)
        suffix = units.get(unit, "")
        if re.sub(r"\{[^}]*\}", "", unit) == "/s":  # "{request}/s": a rate
            suffix = "per_second"
        if suffix and not base.endswith("_" + suffix):
            base = f"{base}_{suffix}"
        if kind == "histogram":
            names.update(f"{base}_{part}" for part in ("bucket", "sum", "count"))
        elif kind in ("counter", "observable_counter"):
            names.add(base if base.endswith("_total") else f"{base}_total")
        else:
            names.add(base)
    for stage in Stage:  # tandem.stages names its histograms from the stage list
        names.update(f"{prometheus_name(stage)}_{part}" for part in ("bucket", "sum", "count"))
    return names


def test_there_are_the_five_dashboards() -> None:
    assert {p.stem for p in dashboards()} >= {"overview", "latency-breakdown", "kvstore",
                                               "routing", "planner"}


@pytest.mark.parametrize("path", dashboards(), ids=lambda p: p.name)
def test_dashboard_is_well_formed(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in walk(dashboard["panels"]) if "gridPos" in p]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in walk(dashboard["panels"]):
        if "gridPos" not in panel:
            continue
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel.get("targets"), f"{panel['title']} has no query"
    assert dashboard_expressions(dashboard)


@pytest.mark.parametrize("path", dashboards(), ids=lambda p: p.name)
def test_dashboard_metrics_are_declared_in_the_code(path: Path) -> None:
    declared = exported_names_from_code()
    for expr in dashboard_expressions(json.loads(path.read_text())):
        names = promql_metric_names(expr)
        assert names, f"no metric in {expr}"
        missing = names - declared
        assert not missing, f"{path.name}: {sorted(missing)} not created by any instrument ({expr})"


@pytest.mark.parametrize(("expr", "names"), [
    ('histogram_quantile(0.99, sum by (le, tandem_stage) (rate(a_b_bucket{job=~"$job", '
     'x="y"}[$__rate_interval])))', {"a_b_bucket"}),
    ("sum(rate(x_total[5m])) / clamp_min(sum(rate(y_total[5m] offset 1h)), 1e-9)",
     {"x_total", "y_total"}),
    ('sum by (tier) (tandem_kvstore_bytes) and on (tier) up{job="a"} > 0.5', {
        "tandem_kvstore_bytes", "up"}),
    ("rate(metric_with_inf_in_name[${__interval}])", {"metric_with_inf_in_name"}),
])
def test_metric_name_extraction(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names
