"""Contract: what the agent's telemetry code writes is what the hub's report and the rollout gate read.

The payloads are produced by edge_agent.serving.telemetry (through tests/harness/telemetry.py), then read by
hub.report.build_report, hub.rollout.gates.traffic_from_report and hub.rollout.fleetview.telemetry. Request
and error counts must agree exactly; quantiles must equal those of one DDSketch (the agent's relative
accuracy) fed every value the agent recorded, i.e. nothing is lost or double counted on the way.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from ddsketch import DDSketch

from edge_agent.serving.telemetry import RELATIVE_ACCURACY
from hub.report import build_report
from hub.rollout import fleetview
from hub.rollout.gates import traffic_from_report
from tests.harness.telemetry import Requests, records, telemetry_payload

T0 = datetime(2026, 11, 30, 4, 0, tzinfo=UTC)
MODEL = "assistant"


def _windows() -> list[tuple[str, str, list[Requests]]]:
    rng = random.Random(7)

    def ttfts(n: int, scale: float) -> list[float]:
        return [rng.lognormvariate(-2.3, 0.4) * scale for _ in range(n)]

    def itls(n: int) -> list[float]:
        return [rng.lognormvariate(-4.0, 0.3) for _ in range(n)]

    return [
        ("fra", "fra-gpu", [Requests(MODEL, "v1", ttfts(40, 1.0), itl=itls(40), output_tokens=12, errors=3),
                            Requests(MODEL, "v2", ttfts(25, 1.3), itl=itls(25), output_tokens=7, errors=1)]),
        ("par", "par-gpu", [Requests(MODEL, "v2", ttfts(60, 0.9), itl=itls(60), output_tokens=30)]),
        ("fra", "fra-gpu", [Requests(MODEL, "v2", ttfts(15, 2.0), itl=itls(15), output_tokens=3, errors=2)]),
    ]


def _truth(windows) -> dict[tuple[str, str], dict]:
    """(site, version) -> requests, errors and sketches of every value the agent recorded."""
    out: dict[tuple[str, str], dict] = {}
    for site, _node, groups in windows:
        for g in groups:
            t = out.setdefault((site, g.version), {"requests": 0, "errors": 0, "ttft": DDSketch(RELATIVE_ACCURACY),
                                                   "itl": DDSketch(RELATIVE_ACCURACY),
                                                   "tpot": DDSketch(RELATIVE_ACCURACY)})
            for r in records(g):
                t["requests"] += 1
                t["errors"] += r.outcome.value == "error"
                t["ttft"].add(r.stats.ttft_s)
                for gap in r.stats.itl_s:
                    t["itl"].add(gap)
                if r.stats.tpot_s is not None:
                    t["tpot"].add(r.stats.tpot_s)
    return out


def _payloads(windows) -> list[tuple[str, str, dict]]:
    return [(site, node, telemetry_payload(site, node, groups, T0 + timedelta(seconds=i), T0 + timedelta(seconds=i + 5)))
            for i, (site, node, groups) in enumerate(windows)]


QS = (0.5, 0.95, 0.99)


def test_agent_payloads_reach_the_hub_report_and_the_rollout_gate_unchanged() -> None:
    windows = _windows()
    truth = _truth(windows)
    payloads = _payloads(windows)
    report = build_report([p for _, _, p in payloads], ("site", "version"), T0 - timedelta(seconds=1))
    assert report.payloads == len(payloads) and not report.skipped
    rows = {(r.value("site"), r.value("version")): r for r in report.rows}
    assert set(rows) == set(truth)
    for key, t in truth.items():
        row = rows[key]
        assert (row.requests, row.errors) == (t["requests"], t["errors"]), key
        for metric, sketch in (("ttftS", t["ttft"]), ("itlS", t["itl"]), ("tpotS", t["tpot"])):
            for q in QS:
                assert row.quantile(metric, q) == pytest.approx(sketch.get_quantile_value(q), rel=1e-9), (key, metric, q)
    assert report.total.requests == sum(t["requests"] for t in truth.values())
    assert report.total.output_tokens == sum(g.output_tokens * len(g.ttfts) for _, _, gs in windows for g in gs)

    gate = traffic_from_report(report)
    view = fleetview.telemetry(payloads, MODEL, "v2", "v1", T0 - timedelta(seconds=1), T0 - timedelta(seconds=1))
    for stats_by_site in (gate, view):
        for (site, version), t in truth.items():
            s = stats_by_site[site][version]
            assert (s.requests, s.errors) == (t["requests"], t["errors"]), (site, version)
            for metric in ("ttft", "itl", "tpot"):
                for q in QS:
                    assert s.p(metric, q) == pytest.approx(t[metric].get_quantile_value(q), rel=1e-9), (site, version, metric)


def test_the_agents_own_window_counts_every_outcome_once() -> None:
    """The producer side on its own: one flushed window per call, every request in exactly one group."""
    groups = [Requests(MODEL, "v1", [0.1, 0.2, 0.3], errors=1), Requests(MODEL, "v2", [0.4], priority="batch")]
    p = telemetry_payload("fra", "fra-gpu", groups, T0, T0 + timedelta(seconds=5))
    got = {(g["version"], g["priority"]): (g["requests"], g["errors"]) for g in p["groups"]}
    assert got == {("v1", "interactive"): (3, 1), ("v2", "batch"): (1, 0)}
    assert p["windowStart"] == "2026-11-30T04:00:00Z" and p["windowEnd"] == "2026-11-30T04:00:05Z"
