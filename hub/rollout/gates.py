"""Rollout gates: pure judgements on merged telemetry, each a verdict with its numbers in a sentence.

Three gates:

**SLO gate** (:func:`slo_gate`): the new version's p95 TTFT and p95 TPOT,
read from the sketches merged over the updated sites, against the
service's SLO, once at least ``min_requests`` requests were served. The
sketch's 1 % relative accuracy is far below any SLO margin that matters,
so the point estimate is used. The agent measures TTFT at the server, so
the client-side network round trip in the SLO is not included: the gate is
a necessary condition, not a proof of the client's experience.

**Latency comparison** (:func:`latency_comparison`), canary only: is the
new version's p95 more than ``max_ratio`` times the old version's on the
same sites? Rank tests (Mann-Whitney) need the raw values, which sketches
do not keep. We use the *quantile sign test*, which needs only counts:
let ``t = max_ratio x old p95``. If the new version's p95 were at most
``t`` (the null hypothesis: the new version is acceptable), then at most
5 % of new requests would exceed ``t``, so the number ``k`` of the ``n``
new requests above ``t`` is at most Binomial(n, 0.05) in distribution. A
one-sided exact binomial test (``scipy.stats.binomtest``) of ``k`` gives
the p-value; the verdict fails when ``p < alpha``. ``k`` is counted from the
new sketch's bins above the bin holding ``t``: values sharing ``t``'s bin
(1 % wide) are not counted, which errs towards passing the new version by
at most that width. The old p95 is taken as known; requiring
``min_requests`` on both sides keeps its own error small.

**Error-rate comparison** (:func:`error_rate_comparison`), canary only:
a one-sided two-proportion z-test of ``H0: rate_new - rate_old <= margin``
(unpooled standard error, as the margin is not zero), ``p =
scipy.stats.norm.sf(z)``; fails when ``p < alpha``. With no errors on either
side the difference is 0 and the gate passes.

A verdict is ``pass``, ``fail`` or ``insufficient`` (not enough traffic
yet); the rollout machine waits on ``insufficient`` up to its progress
deadline.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Optional

from ddsketch import DDSketch
from ddsketch.ddsketch import BaseDDSketch
from scipy.stats import binomtest, norm

RELATIVE_ACCURACY = 0.01
"""Sketch accuracy shared with the agents' telemetry."""


class Outcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INSUFFICIENT = "insufficient"


@dataclass(frozen=True)
class Verdict:
    gate: str
    """'slo', 'ttft-comparison', 'itl-comparison' or 'error-rate-comparison'."""
    outcome: Outcome
    sentence: str
    """What was measured, against what, and the decision, in one sentence."""
    numbers: Mapping[str, float] = field(default_factory=dict)
    """The figures behind the sentence (finite values only, so that a verdict is plain JSON)."""

    def __post_init__(self) -> None:
        clean = {k: float(v) for k, v in self.numbers.items() if v is not None and math.isfinite(v)}
        object.__setattr__(self, "numbers", clean)

    @property
    def passed(self) -> bool:
        return self.outcome is Outcome.PASS

    def to_dict(self) -> dict:
        return {"gate": self.gate, "outcome": self.outcome.value, "sentence": self.sentence,
                "numbers": dict(self.numbers)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Verdict":
        return cls(d["gate"], Outcome(d["outcome"]), d["sentence"], dict(d.get("numbers", {})))


@dataclass(frozen=True)
class TrafficStats:
    """One version's traffic on some sites over the gate's window.

    Sketches (seconds) are read, never mutated; ``None`` is an empty sketch.
    """

    requests: int = 0
    errors: int = 0
    ttft: Optional[BaseDDSketch] = None
    itl: Optional[BaseDDSketch] = None
    tpot: Optional[BaseDDSketch] = None

    def p(self, metric: str, q: float) -> Optional[float]:
        s = getattr(self, metric)
        return float(s.get_quantile_value(q)) if s is not None and s.count > 0 else None

    @property
    def error_rate(self) -> Optional[float]:
        return self.errors / self.requests if self.requests else None


def merge_stats(stats: Iterable[TrafficStats]) -> TrafficStats:
    """Sum counters and merge sketches exactly into fresh sketches."""
    requests = errors = 0
    sketches = {m: DDSketch(RELATIVE_ACCURACY) for m in ("ttft", "itl", "tpot")}
    for s in stats:
        requests += s.requests
        errors += s.errors
        for m, acc in sketches.items():
            part = getattr(s, m)
            if part is not None:
                acc.merge(part)
    return TrafficStats(requests, errors, sketches["ttft"], sketches["itl"], sketches["tpot"])


def traffic_from_report(report) -> dict[str, dict[str, TrafficStats]]:
    """site -> version -> :class:`TrafficStats` from a :class:`hub.report.Report` grouped by (at least) site and
    version: what the controller puts in :attr:`hub.rollout.machine.Observation.telemetry`.

    Build the report from the stored ``telemetry`` payloads of the gate's window
    (``build_report(payloads, by=("site", "version"), since=state.soak_since)``);
    sketches are shared with the report's rows, not copied.
    """
    rows = report.regroup(("site", "version")).rows
    out: dict[str, dict[str, TrafficStats]] = {}
    for row in rows:
        out.setdefault(row.value("site"), {})[row.value("version")] = TrafficStats(
            row.requests, row.errors, row.sketches["ttftS"], row.sketches["itlS"], row.sketches["tpotS"])
    return out


def _ms(seconds: Optional[float]) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.4g} ms"


def slo_gate(stats: TrafficStats, ttft_p95_s: Optional[float], tpot_p95_s: Optional[float],
             min_requests: int, version: str = "new version") -> Verdict:
    """p95 TTFT and TPOT of ``stats`` within the SLO, over at least ``min_requests`` requests."""
    if stats.requests < min_requests:
        return Verdict("slo", Outcome.INSUFFICIENT,
                       f"{version} served {stats.requests:,} of the {min_requests:,} requests the SLO gate needs",
                       {"requests": stats.requests, "minRequests": min_requests})
    checks, numbers, over = [], {"requests": float(stats.requests)}, []
    for name, metric, limit in (("TTFT", "ttft", ttft_p95_s), ("TPOT", "tpot", tpot_p95_s)):
        if limit is None:
            continue
        value = stats.p(metric, 0.95)
        if value is not None:
            numbers[f"{metric}P95S"] = value
        numbers[f"{metric}SloS"] = limit
        if value is None:
            checks.append(f"p95 {name} not measured")
            continue
        ok = value <= limit
        checks.append(f"p95 {name} {_ms(value)} {'<=' if ok else '>'} SLO {_ms(limit)}")
        if not ok:
            over.append(name)
    if not checks:
        return Verdict("slo", Outcome.PASS, f"{version}: the service has no latency SLO to check "
                       f"({stats.requests:,} requests)", numbers)
    outcome = Outcome.FAIL if over else Outcome.PASS
    verdict = f"breaches the {' and '.join(over)} SLO" if over else "meets the SLO"
    return Verdict("slo", outcome, f"{version} {verdict}: {', '.join(checks)} over {stats.requests:,} requests",
                   numbers)


def _count_above(sketch: BaseDDSketch, threshold: float) -> float:
    """Values in bins entirely above the bin that holds ``threshold`` (see the module docstring)."""
    store = sketch._store
    key = sketch._mapping.key(threshold)
    return float(sum(c for i, c in enumerate(store.bins) if i + store.offset > key))


def latency_comparison(new: TrafficStats, old: TrafficStats, metric: str = "ttft", max_ratio: float = 1.2,
                       alpha: float = 0.05, min_requests: int = 200, quantile: float = 0.95) -> Verdict:
    """Is the new version's p95 ``metric`` significantly above ``max_ratio`` x the old one's? (quantile sign test)"""
    name = {"ttft": "TTFT", "itl": "ITL", "tpot": "TPOT"}[metric]
    gate = f"{metric}-comparison"
    new_sketch, old_sketch = getattr(new, metric), getattr(old, metric)
    n_new = int(new_sketch.count) if new_sketch is not None else 0
    n_old = int(old_sketch.count) if old_sketch is not None else 0
    if n_new < min_requests or n_old < min_requests:
        return Verdict(gate, Outcome.INSUFFICIENT,
                       f"{name} comparison waits for {min_requests:,} values per version "
                       f"(new {n_new:,}, old {n_old:,})", {"newCount": n_new, "oldCount": n_old})
    p_new, p_old = new.p(metric, quantile), old.p(metric, quantile)
    assert p_new is not None and p_old is not None
    threshold = max_ratio * p_old
    k = _count_above(new_sketch, threshold)
    tail = 1.0 - quantile
    pvalue = float(binomtest(int(round(k)), n_new, tail, alternative="greater").pvalue)
    ratio = p_new / p_old if p_old > 0 else math.inf
    fail = pvalue < alpha
    q = f"p{quantile * 100:g}"
    sentence = (
        f"{name} {q} new {_ms(p_new)} vs old {_ms(p_old)} (ratio {ratio:.2f}, limit {max_ratio:g}): "
        f"{k:,.0f} of {n_new:,} new values ({k / n_new:.1%}) exceed {max_ratio:g} x old {q} = {_ms(threshold)}, "
        f"where at most {tail:.0%} would if the limit held; one-sided binomial test p = {pvalue:.3g} "
        f"{'<' if fail else '>='} alpha {alpha:g}: "
        + ("the new version is slower than allowed" if fail else "no significant slowdown beyond the limit")
    )
    return Verdict(gate, Outcome.FAIL if fail else Outcome.PASS, sentence,
                   {"newP": p_new, "oldP": p_old, "ratio": ratio, "maxRatio": max_ratio, "exceeding": k,
                    "newCount": n_new, "oldCount": n_old, "pValue": pvalue, "alpha": alpha})


def error_rate_comparison(new: TrafficStats, old: TrafficStats, max_increase: float = 0.01, alpha: float = 0.05,
                          min_requests: int = 200) -> Verdict:
    """Did the error rate rise significantly by more than ``max_increase``? (one-sided two-proportion z-test)"""
    gate = "error-rate-comparison"
    if new.requests < min_requests or old.requests < min_requests:
        return Verdict(gate, Outcome.INSUFFICIENT,
                       f"error-rate comparison waits for {min_requests:,} requests per version "
                       f"(new {new.requests:,}, old {old.requests:,})",
                       {"newRequests": new.requests, "oldRequests": old.requests})
    r_new, r_old = new.errors / new.requests, old.errors / old.requests
    diff = r_new - r_old
    se = math.sqrt(r_new * (1 - r_new) / new.requests + r_old * (1 - r_old) / old.requests)
    if se == 0:
        z = math.inf if diff > max_increase else -math.inf
    else:
        z = (diff - max_increase) / se
    pvalue = float(norm.sf(z))
    fail = pvalue < alpha
    sentence = (
        f"error rate new {r_new:.2%} ({new.errors:,}/{new.requests:,}) vs old {r_old:.2%} "
        f"({old.errors:,}/{old.requests:,}), increase {diff * 100:+.2f} points against an allowed "
        f"{max_increase * 100:.2f}: one-sided two-proportion z = {z:.2f}, p = {pvalue:.3g} "
        f"{'<' if fail else '>='} alpha {alpha:g}: "
        + ("errors rose beyond the allowance" if fail else "no significant rise beyond the allowance")
    )
    return Verdict(gate, Outcome.FAIL if fail else Outcome.PASS, sentence,
                   {"newRate": r_new, "oldRate": r_old, "increase": diff, "maxIncrease": max_increase, "z": z,
                    "pValue": pvalue, "alpha": alpha})
