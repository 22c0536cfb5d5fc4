"""Why each site was chosen or rejected for a service, Kubernetes-scheduler
style: a one-line summary (``0/30 sites: 20 residency, 6 gpu-type, ...``)
and, per site, the verdict with the constraint and the numbers.

It re-runs the same constraint checks the solvers use
(:meth:`FleetIndex.check`), then looks at the final GPU layout to tell
"feasible but full" from "feasible, not chosen (costlier)".
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from hub.placement.constraints import Check, FleetIndex
from hub.placement.model import Placement, Problem
from hub.placement.packing import PoolState

# How far a pool got through the checks; the furthest one speaks for a site.
_PROGRESS = ["residency", "availability", "network", "gpu-type", "gpu-memory", "slo-tpot", "slo-ttft", "pool-size",
             "capacity", "not-chosen", "chosen"]


@dataclass(frozen=True)
class SiteVerdict:
    site: str
    status: str
    """'chosen' or 'rejected'."""
    constraint: str
    """The deciding constraint (see Check.constraint), 'not-chosen', 'capacity' or 'chosen'."""
    reason: str
    pool: str = ""


@dataclass(frozen=True)
class Explanation:
    service: str
    region: str
    summary: str
    sites: tuple[SiteVerdict, ...]

    def lines(self) -> list[str]:
        out = [f"{self.service} from {self.region}: {self.summary}"]
        for v in self.sites:
            where = f"{v.site}/{v.pool}" if v.pool else v.site
            out.append(f"  {v.status:8} {where}: {v.constraint}: {v.reason}")
        return out


def _layout(index: FleetIndex, placement: Placement) -> dict[int, PoolState]:
    states: dict[int, PoolState] = {}
    for a in placement.assignments:
        p = index.pool_index.get((a.site, a.pool))
        if p is None:
            continue
        state = states.setdefault(p, PoolState(float(index.memory[p]), int(index.count[p])))
        state.commit((a.service, a.region, a.shard), [tuple(g) for g in a.gpus], a.memory_per_replica, a.gpu_share)
    return states


def explain_service(problem: Problem, placement: Placement, service: str) -> list[Explanation]:
    """One :class:`Explanation` per demand region of ``service``."""
    index = FleetIndex(problem)
    layout = _layout(index, placement)
    out = []
    for w in (w for w in problem.workloads if w.service == service):
        chosen = {(a.site, a.pool): a for a in placement.assignments if (a.service, a.region) == (w.service, w.region)}
        chosen_cost = sum(
            a.replicas * a.gpus_per_replica * min(1.0, a.memory_per_replica / index.memory[index.pool_index[(a.site, a.pool)]])
            * index.gpu_cost[index.pool_index[(a.site, a.pool)]]
            for a in chosen.values() if (a.site, a.pool) in index.pool_index
        )
        best: dict[str, tuple[int, SiteVerdict]] = {}
        for p, pool in enumerate(index.pools):
            site = pool.site
            a = chosen.get((site, pool.name))
            if a is not None:
                verdict = SiteVerdict(site, "chosen", "chosen",
                                      f"{a.replicas} replica(s) on {pool.gpu_type} GPUs {list(a.gpus)}; predicted p95 TTFT "
                                      f"{a.ttft_p95 * 1000:.0f}ms <= {w.ttft_slo * 1000:.0f}ms, TPOT {a.tpot_p95 * 1000:.0f}ms "
                                      f"<= {w.tpot_slo * 1000:.0f}ms; {a.residency}", pool.name)
            else:
                verdict = _rejected(index, layout, w, p, index.check(w, p), chosen_cost)
            rank = _PROGRESS.index(verdict.constraint)
            if site not in best or rank > best[site][0]:
                best[site] = (rank, verdict)
        verdicts = tuple(v for _, v in sorted(best.values(), key=lambda rv: (-rv[0], rv[1].site)))
        counts = Counter(v.constraint for v in verdicts)
        summary = f"{counts.get('chosen', 0)}/{len(verdicts)} sites chosen" + "".join(
            f", {n} {c}" for c, n in counts.most_common() if c != "chosen")
        out.append(Explanation(w.service, w.region, summary, verdicts))
    return out


def _rejected(index: FleetIndex, layout: dict[int, PoolState], w, p: int, check: Check, chosen_cost: float) -> SiteVerdict:
    pool = index.pools[p]
    if not check.ok:
        return SiteVerdict(pool.site, "rejected", check.constraint, check.reason, pool.name)
    state = layout.get(p, PoolState(float(index.memory[p]), int(index.count[p])))
    if state.plan(check.replicas, w.memory, check.gpus_per_replica, check.share) is None:
        return SiteVerdict(pool.site, "rejected", "capacity",
                           f"needs {check.replicas} replica(s) of {w.memory / 2**30:.1f}GiB; pool has {state.empty} of "
                           f"{state.count} GPUs empty and no room on the others", pool.name)
    share = check.replicas * check.gpus_per_replica * min(1.0, w.memory / index.memory[p])
    cost = share * index.gpu_cost[p]
    return SiteVerdict(pool.site, "rejected", "not-chosen",
                       f"feasible ({check.replicas} replica(s), p95 TTFT {check.ttft * 1000:.0f}ms, RTT "
                       f"{(check.rtt or 0) * 1000:.0f}ms) but costlier: {cost:.3f} USD/h-eq for its GPU share vs "
                       f"{chosen_cost:.3f} chosen" if math.isfinite(chosen_cost) and chosen_cost > 0 else
                       f"feasible ({check.replicas} replica(s), p95 TTFT {check.ttft * 1000:.0f}ms) but not needed",
                       pool.name)
