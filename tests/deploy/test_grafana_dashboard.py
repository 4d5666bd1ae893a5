"""k8s/grafana: the dashboard is well-formed Grafana JSON, its queries name metrics the components export,
and the kustomization ships it as a ConfigMap for Grafana's dashboard sidecar."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from deploy_checks import DASHBOARD, K8S, SOURCE_DIRS, render

DASH: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
PANELS = [p for p in DASH["panels"] if p["type"] != "row"]
EXPRS = [t["expr"] for p in PANELS for t in p["targets"]]
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")
# What each topic of the issue needs on the dashboard: a panel whose title says it.
TOPICS = {
    "events/s": "Events/s",
    "bans in force": "Bans in force",
    "coverage": "Coverage",
    "time-to-ban": "Time-to-ban",
}


def test_dashboard_structure() -> None:
    assert DASH["uid"] and DASH["title"] and DASH["schemaVersion"] >= 36
    assert DASH["templating"]["list"][0]["type"] == "datasource"
    ids = [p["id"] for p in DASH["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in DASH["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
    for p in PANELS:
        assert p["type"] in ("timeseries", "stat", "gauge", "table", "bargauge"), p["title"]
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]


@pytest.mark.parametrize(("topic", "title"), TOPICS.items())
def test_dashboard_covers_the_issue(topic: str, title: str) -> None:
    assert any(title.lower() in p["title"].lower() for p in PANELS), f"no panel for {topic}"


@pytest.mark.parametrize("expr", EXPRS)
def test_promql_is_balanced(expr: str) -> None:
    depth = 0
    for ch in expr:
        depth += {"(": 1, ")": -1, "[": 1, "]": -1, "{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0, expr
    assert depth == 0, expr
    assert re.search(r"\brate\([^)]*\[\d+[smh]\]\)", expr) or "rate(" not in expr, expr


def _metric_names() -> list[str]:
    names = set()
    for expr in EXPRS:
        names |= set(re.findall(r"\bfleet2ban_[a-z0-9_]+", expr))
    return sorted(names)


def _source_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for d in SOURCE_DIRS for p in d.rglob("*.py"))


@pytest.mark.parametrize("metric", _metric_names())
def test_dashboard_metric_is_exported(metric: str) -> None:
    """Each metric a query names is registered by some component (prometheus_client adds ``_total`` to
    counters and ``_bucket``/``_sum``/``_count`` to histograms)."""
    source = _source_text()
    base = metric
    for suffix in SUFFIXES:
        if base.endswith(suffix):
            base = base.removesuffix(suffix)
            break
    candidates = {base, f"{base}_total"}
    if not any(f'"{c}"' in source for c in candidates):
        if metric.startswith("fleet2ban_processor_"):
            pytest.xfail(
                f"{metric}: the processor (issue 5) does not export it yet; align the name when it does"
            )
        pytest.fail(f"{metric} is used by the dashboard but no component registers {base!r}")


def test_dashboard_configmap_for_grafana_sidecar() -> None:
    objs = render(K8S / "grafana")
    (cm,) = objs
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["fleet2ban-dashboard.json"]) == DASH
    overlay = render(K8S / "overlays" / "example")
    assert any(o["kind"] == "ConfigMap" and o["metadata"]["name"] == cm["metadata"]["name"] for o in overlay)
