"""Plan diff: what a new placement changes against the current one.

Per site: replicas added and removed per service; per service: replicas
moved (a removal at one site matched with an addition at another); totals:
GPUs, cost/h and carbon/h before and after (at the current prices and grid
intensities of the problem), predicted SLO attainment (share of demand in
req/s placed with predicted p95 TTFT and TPOT within the SLO), and the
residency justification of every new placement.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional

from hub.placement.model import Placement, Problem


@dataclass(frozen=True)
class Totals:
    gpus: int
    cost_usd_h: float
    carbon_kg_h: float
    slo_attainment: float
    """Fraction of demand (req/s) predicted to meet its SLOs."""


@dataclass(frozen=True)
class SiteChange:
    site: str
    service: str
    before: int
    after: int

    @property
    def delta(self) -> int:
        return self.after - self.before


@dataclass(frozen=True)
class Move:
    service: str
    from_site: str
    to_site: str
    replicas: int


@dataclass
class PlanDiff:
    before: Totals
    after: Totals
    changes: list[SiteChange] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)
    justifications: list[str] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)
    required_unplaced: list[str] = field(default_factory=list)
    """The ``unplaced`` lines of demand that is not sheddable (``fleet plan``/``apply`` exit 3 on these)."""
    capped: list[str] = field(default_factory=list)
    """Pools planned with fewer GPUs than their Site declares, because their agent reports fewer."""

    @property
    def added(self) -> int:
        return sum(c.delta for c in self.changes if c.delta > 0)

    @property
    def removed(self) -> int:
        return -sum(c.delta for c in self.changes if c.delta < 0)

    def lines(self) -> list[str]:
        b, a = self.before, self.after
        out = [
            f"replicas: +{self.added} -{self.removed}, {sum(m.replicas for m in self.moves)} moved",
            f"GPUs: {b.gpus} -> {a.gpus}",
            f"cost: {b.cost_usd_h:.2f} -> {a.cost_usd_h:.2f} USD/h (price estimates)",
            f"carbon: {b.carbon_kg_h:.3f} -> {a.carbon_kg_h:.3f} kgCO2e/h",
            f"predicted SLO attainment: {b.slo_attainment:.1%} -> {a.slo_attainment:.1%}",
        ]
        for c in self.changes:
            out.append(f"{'+' if c.delta > 0 else '-'} {c.site}: {c.service} {c.before} -> {c.after}")
        for m in self.moves:
            out.append(f"~ {m.service}: {m.replicas} replica(s) {m.from_site} -> {m.to_site}")
        out.extend(f"  residency {j}" for j in self.justifications)
        out.extend(f"! unplaced {u}" for u in self.unplaced)
        out.extend(f"! capped {c}" for c in self.capped)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "before": self.before.__dict__, "after": self.after.__dict__,
            "changes": [c.__dict__ | {"delta": c.delta} for c in self.changes],
            "moves": [m.__dict__ for m in self.moves],
            "justifications": self.justifications, "unplaced": self.unplaced,
            "requiredUnplaced": self.required_unplaced, "capped": self.capped,
        }


def totals(placement: Optional[Placement], problem: Problem) -> Totals:
    """GPUs, cost, carbon and predicted SLO attainment of ``placement``."""
    pools = {(p.site, p.name): (p, s) for s in problem.sites for p in s.pools}
    demand = {(w.service, w.region): w for w in problem.workloads}
    total_rate = sum(w.rate for w in problem.workloads)
    if placement is None:
        return Totals(0, 0.0, 0.0, 0.0 if total_rate else 1.0)
    gpus: set[tuple[str, str, int]] = set()
    met = 0.0
    for a in placement.assignments:
        for group in a.gpus:
            for g in group:
                gpus.add((a.site, a.pool, g))
        w = demand.get((a.service, a.region))
        if w is not None and a.ttft_p95 <= w.ttft_slo + 1e-9 and a.tpot_p95 <= w.tpot_slo + 1e-9:
            met += a.rate
    cost = carbon = 0.0
    for site, pool_name, _ in gpus:
        found = pools.get((site, pool_name))
        if found is not None:
            pool, info = found
            cost += pool.price
            carbon += pool.power / 1000.0 * info.intensity / 1000.0
    return Totals(len(gpus), cost, carbon, met / total_rate if total_rate else 1.0)


def plan_diff(before: Optional[Placement], after: Placement, problem: Problem) -> PlanDiff:
    count_b: dict[tuple[str, str], int] = defaultdict(int)
    count_a: dict[tuple[str, str], int] = defaultdict(int)
    for a in before.assignments if before else ():
        count_b[(a.site, a.service)] += a.replicas
    for a in after.assignments:
        count_a[(a.site, a.service)] += a.replicas
    changes = [SiteChange(site, svc, count_b.get((site, svc), 0), count_a.get((site, svc), 0))
               for site, svc in sorted(set(count_b) | set(count_a))
               if count_b.get((site, svc), 0) != count_a.get((site, svc), 0)]
    moves = []
    for svc in sorted({c.service for c in changes}):
        gone = [[c.site, -c.delta] for c in changes if c.service == svc and c.delta < 0]
        new = [[c.site, c.delta] for c in changes if c.service == svc and c.delta > 0]
        for src in gone:
            for dst in new:
                n = min(src[1], dst[1])
                if n > 0:
                    moves.append(Move(svc, src[0], dst[0], n))
                    src[1] -= n
                    dst[1] -= n
    justifications = sorted({f"{a.service} ({a.region}) at {a.site}: {a.residency}" for a in after.assignments})
    unplaced = [f"{u.service} ({u.region}): {u.reason}" for u in after.unplaced]
    sheddable = {(w.service, w.region) for w in problem.workloads if w.sheddable}
    required = [f"{u.service} ({u.region}): {u.reason}" for u in after.unplaced if (u.service, u.region) not in sheddable]
    capped = [f"{p.site}/{p.name}: {p.cap_note or p.unavailable}" for s in problem.sites for p in s.pools
              if p.declared is not None or (p.unavailable and after.reported_gpus.get((p.site, p.node)) == 0)]
    return PlanDiff(totals(before, problem), totals(after, problem), changes, moves, justifications, unplaced, required,
                    capped)
