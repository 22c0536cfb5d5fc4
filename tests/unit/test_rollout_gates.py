"""Rollout gates: SLO gate, quantile sign test for p95 ratios, two-proportion z-test for error rates."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ddsketch import DDSketch
from scipy.stats import binomtest, norm

from hub.report.telemetry import sketch_bins
from hub.rollout.gates import (
    Outcome,
    TrafficStats,
    Verdict,
    error_rate_comparison,
    latency_comparison,
    merge_stats,
    slo_gate,
)


def sk(values) -> DDSketch:
    s = DDSketch(0.01)
    for v in values:
        s.add(float(v))
    return s


def stats(values, errors=0, requests=None) -> TrafficStats:
    s = sk(values)
    return TrafficStats(requests if requests is not None else len(values), errors, s, s, s)


def lognormal(seed, n=2000, scale=1.0):
    return scale * np.random.default_rng(seed).lognormal(-2.0, 0.5, n)


def test_slo_gate_pass_fail_insufficient():
    fast = stats(np.full(200, 0.1))
    v = slo_gate(fast, 0.5, 0.2, min_requests=100, version="v2")
    assert v.outcome is Outcome.PASS and v.passed
    assert v.sentence == "v2 meets the SLO: p95 TTFT 99.25 ms <= SLO 500 ms, p95 TPOT 99.25 ms <= SLO 200 ms over " \
                         "200 requests"
    slow = slo_gate(stats(np.full(200, 0.8)), 0.5, 0.9, min_requests=100, version="v2")
    assert slow.outcome is Outcome.FAIL
    assert slow.sentence == ("v2 breaches the TTFT SLO: p95 TTFT 794.5 ms > SLO 500 ms, p95 TPOT 794.5 ms <= SLO "
                             "900 ms over 200 requests")
    assert slow.numbers["ttftP95S"] == pytest.approx(0.8, rel=0.01)
    few = slo_gate(stats([0.1] * 10), 0.5, 0.2, min_requests=100, version="v2")
    assert few.outcome is Outcome.INSUFFICIENT and few.sentence == "v2 served 10 of the 100 requests the SLO gate needs"
    assert slo_gate(fast, None, None, 100).passed


@pytest.mark.parametrize(("scale", "outcome"), [(1.0, Outcome.PASS), (1.1, Outcome.PASS), (2.0, Outcome.FAIL),
                                                (1.5, Outcome.FAIL)])
def test_latency_comparison(scale, outcome):
    old = stats(lognormal(1))
    new = stats(lognormal(1, scale=scale))  # the same requests, each `scale` times slower
    v = latency_comparison(new, old, "ttft", max_ratio=1.2, alpha=0.05, min_requests=200)
    assert v.outcome is outcome, v.sentence
    assert v.numbers["ratio"] == pytest.approx(scale, rel=0.03)
    assert "one-sided binomial test p = " in v.sentence and "ratio" in v.sentence


def test_latency_comparison_p_value_is_the_binomial_tail():
    old = stats(np.full(1000, 0.1))  # p95 0.1 (one bin)
    new = stats([0.1] * 900 + [0.5] * 100)  # 100 of 1000 above 1.2 x 0.1
    v = latency_comparison(new, old, "ttft", max_ratio=1.2, alpha=0.05, min_requests=200)
    assert v.numbers["exceeding"] == 100
    assert v.numbers["pValue"] == pytest.approx(binomtest(100, 1000, 0.05, alternative="greater").pvalue)
    assert v.outcome is Outcome.FAIL


def test_latency_comparison_false_alarm_rate_is_about_alpha():
    """Same distribution, 60 seeded trials: the test should rarely fire (expected <= 5 %)."""
    fired = sum(
        latency_comparison(stats(lognormal(2 * i, 500)), stats(lognormal(2 * i + 1, 5000)), "ttft", 1.2).outcome
        is Outcome.FAIL for i in range(60))
    assert fired <= 6


def test_latency_comparison_waits_for_traffic():
    v = latency_comparison(stats(lognormal(1, 100)), stats(lognormal(2)), "itl", min_requests=200)
    assert v.outcome is Outcome.INSUFFICIENT
    assert v.sentence == "ITL comparison waits for 200 values per version (new 100, old 2,000)"


def test_error_rate_comparison_against_hand_computed_z():
    new, old = TrafficStats(1000, 50), TrafficStats(2000, 20)
    v = error_rate_comparison(new, old, max_increase=0.01, alpha=0.05, min_requests=200)
    se = math.sqrt(0.05 * 0.95 / 1000 + 0.01 * 0.99 / 2000)
    z = (0.05 - 0.01 - 0.01) / se
    assert v.numbers["z"] == pytest.approx(z)
    assert v.numbers["pValue"] == pytest.approx(norm.sf(z))
    assert v.outcome is Outcome.FAIL
    assert v.sentence.startswith("error rate new 5.00% (50/1,000) vs old 1.00% (20/2,000), increase +4.00 points")
    ok = error_rate_comparison(TrafficStats(1000, 12), TrafficStats(1000, 10), 0.01)
    assert ok.outcome is Outcome.PASS
    zero = error_rate_comparison(TrafficStats(500, 0), TrafficStats(500, 0), 0.0)
    assert zero.outcome is Outcome.PASS and "z" not in zero.numbers  # infinite z is not kept
    assert error_rate_comparison(TrafficStats(10, 5), TrafficStats(1000, 0)).outcome is Outcome.INSUFFICIENT


def test_merge_stats_is_exact():
    a, b = lognormal(1, 300), lognormal(2, 700)
    m = merge_stats([stats(a, errors=1), stats(b, errors=2), TrafficStats()])
    assert (m.requests, m.errors) == (1000, 3)
    assert sketch_bins(m.ttft) == sketch_bins(sk(np.concatenate([a, b])))


def test_verdict_round_trip():
    v = latency_comparison(stats(lognormal(1)), stats(lognormal(2)))
    assert Verdict.from_dict(v.to_dict()) == v


def test_traffic_from_report_feeds_the_gates():
    from datetime import UTC, datetime, timedelta

    from hub.report import build_report
    from hub.report.telemetry import encode_sketch
    from hub.rollout.gates import traffic_from_report

    t0 = datetime(2026, 11, 27, 20, tzinfo=UTC)

    def payload(site, version, values, errors):
        return {"schema": 1, "site": site, "node": "n1", "windowStart": t0.isoformat(),
                "windowEnd": (t0 + timedelta(minutes=1)).isoformat(),
                "groups": [{"model": "m", "version": version, "priority": "p", "requests": len(values),
                            "errors": errors, "sketches": {"ttftS": encode_sketch(sk(values))}}]}

    old, new = lognormal(1, 500), lognormal(1, 500, scale=2.0)
    report = build_report([payload("a", "v1", old, 1), payload("a", "v2", new, 9), payload("b", "v1", old, 0)])
    traffic = traffic_from_report(report)
    assert set(traffic) == {"a", "b"} and set(traffic["a"]) == {"v1", "v2"}
    assert (traffic["a"]["v2"].requests, traffic["a"]["v2"].errors) == (500, 9)
    assert traffic["a"]["v2"].itl.count == 0  # missing sketches are empty
    v = latency_comparison(traffic["a"]["v2"], traffic["a"]["v1"], "ttft", 1.2)
    assert v.outcome is Outcome.FAIL and v.numbers["ratio"] == pytest.approx(2.0, rel=0.03)
