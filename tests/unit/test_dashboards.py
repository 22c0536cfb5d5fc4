"""The Grafana dashboards in deploy/grafana query only metrics and labels the code exports.

The exported names and label names are read from the real exporters: the
agent's PrometheusExporter fed one finished and one refused request (what
its /metrics serves), and the hub's HubMetrics refreshed from a real SQLite
store. Labels the scrape config sets on a target (site, node; see
deploy/grafana/prometheus.yaml) and Prometheus' own (instance, job) are
allowed beside them.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.runtime.request import RequestStats
from edge_agent.serving.cost import RequestCost
from edge_agent.serving.metrics import PrometheusExporter
from edge_agent.serving.telemetry import Outcome, RequestRecord
from hub.metrics import HubMetrics, snapshot
from hub.store import Database, Store
from hub.store.repo import RolloutRecord
from hub.sync import LivenessPolicy

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
SCRAPE = ROOT / "deploy" / "grafana" / "prometheus.yaml"
PROMETHEUS_LABELS = {"instance", "job", "le"}
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "by", "without", "on", "ignoring", "group_left", "group_right", "rate",
    "irate", "increase", "deriv", "delta", "histogram_quantile", "time", "label_values", "and", "or", "unless",
    "offset", "topk", "bottomk", "clamp_min", "clamp_max", "abs", "vector", "scalar",
}


def exported() -> dict[str, set[str]]:
    """Sample name -> label names, from the agent's and the hub's real registries."""
    agent = PrometheusExporter(lambda: [("assistant", "v1", 1, 2, 0.5)])
    t = 1_000_000_000
    stats = RequestStats("r1", 0, t, 12, admitted_ns=t + 10**6, first_token_ns=t + 10**8,
                         token_ns=[t + 10**8, t + 2 * 10**8, t + 3 * 10**8], finished_ns=t + 4 * 10**8,
                         output_tokens=3, gpu_seconds=0.4)
    agent(RequestRecord("assistant", "v1", "interactive", Outcome.OK, stats, RequestCost(0.01, 100.0, 2.0)))
    agent(RequestRecord("assistant", "v1", "interactive", Outcome.FORBIDDEN))
    hub = asyncio.run(_hub_metrics())
    out: dict[str, set[str]] = {}
    for registry in (agent.registry, hub.registry):
        for fam in text_string_to_metric_families(generate_latest(registry).decode()):
            out.setdefault(fam.name, set())
            for s in fam.samples:
                out.setdefault(s.name, set()).update(s.labels)
    return out


async def _hub_metrics() -> HubMetrics:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        db = Database(f"sqlite:///{d}/fleet.db")
        db.migrate()
        try:
            store = Store(db)
            now = datetime.now(UTC)
            await store.register_node("fra-1", "n1", "0.1.0", {}, now)
            metrics = HubMetrics()
            snap = await metrics.refresh(store, LivenessPolicy(), now)
        finally:
            await db.close()
    assert snap.nodes["Connected"] == 1
    # A rollout's figures as the controller stores them (the empty store has none).
    rollout = RolloutRecord("r1", "chat", "v1", "v2", "Progressing",
                            {"wave": 1, "waves": [["a"], ["b", "c"]],
                             "sites": [{"site": "a", "status": "applied"}, {"site": "b", "status": "published"},
                                       {"site": "c", "status": "pending"}]}, 3, "alice", now, now)
    metrics.set(snapshot([], [rollout], 7, 42, now + timedelta(seconds=1), LivenessPolicy()))
    return metrics


def queries(d: dict) -> list[str]:
    out = [t["expr"] for p in d["panels"] for t in p.get("targets", ())]
    out += [v["query"] for v in d.get("templating", {}).get("list", ()) if v.get("type") == "query"]
    return out


def parse(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) a PromQL expression (or a label_values() query) uses."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)            # string literals
    e = re.sub(r"\$\{?\w+\}?", "", e)                        # Grafana variables
    e = re.sub(r"\[[^\]]*\]", "", e)                         # range selectors
    labels: set[str] = set()
    for m in re.finditer(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", e):
        labels |= {x.strip() for x in m.group(2).split(",") if x.strip()}
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    for m in re.finditer(r"\{([^}]*)\}", e):
        labels |= set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(1)))
    e = re.sub(r"\{[^}]*\}", " ", e)
    lv = re.match(r"\s*label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)", e)
    if lv:
        return {lv.group(1)}, labels | {lv.group(2)}
    names = set(re.findall(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)", e)) - PROMQL_WORDS
    return names, labels


def target_labels() -> set[str]:
    conf = yaml.safe_load(SCRAPE.read_text())
    return {k for job in conf["scrape_configs"] for sc in job.get("static_configs", ())
            for k in sc.get("labels", {})}


def test_the_parser_finds_metrics_and_labels():
    names, labels = parse('1000 * sum by (site) (rate(fleet_request_cost_usd_total{site=~"$site"}[5m])) / '
                          'histogram_quantile(0.95, sum by (le, version) (rate(vllm:x_bucket{a="b"}[1m])))')
    assert names == {"fleet_request_cost_usd_total", "vllm:x_bucket"}
    assert labels == {"site", "le", "version", "a"}


def test_there_are_dashboards_for_the_agents_and_the_hub():
    assert {p.name for p in DASHBOARDS} >= {"fleet-agents.json", "fleet-hub.json"}


# The dashboards select vLLM's label model_name, which the agent exports on vLLM's metrics.
@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in DASHBOARDS])
def test_every_queried_metric_and_label_is_exported(path):
    d = json.loads(path.read_text())
    known = exported()
    allowed_extra = PROMETHEUS_LABELS | target_labels()
    assert {"site", "node"} <= allowed_extra
    exprs = queries(d)
    assert exprs, f"{path.name} queries nothing"
    for expr in exprs:
        names, labels = parse(expr)
        assert names, f"no metric in {expr!r}"
        for n in names:
            assert n in known, f"{path.name}: {n!r} is not exported (query {expr!r}); exported: {sorted(known)}"
        exported_labels = set().union(*(known[n] for n in names))
        unknown = labels - exported_labels - allowed_extra
        assert not unknown, f"{path.name}: labels {sorted(unknown)} of {expr!r} are not on {sorted(names)} " \
                            f"(they carry {sorted(exported_labels)})"
