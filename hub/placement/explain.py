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
        chosen: dict[tuple[str, str], list] = {}
        for a in placement.assignments:
            if (a.service, a.region) == (w.service, w.region):
                chosen.setdefault((a.site, a.pool), []).append(a)
        lat_w = problem.weights.latency_usd_per_rps_s
        chosen_cost = sum(
            _alone(index, index.pool_index[(a.site, a.pool)], a.replicas, a.gpus_per_replica, a.gpu_share, a.memory_per_replica)
            + lat_w * a.rate * a.rtt
            for group in chosen.values() for a in group if (a.site, a.pool) in index.pool_index
        )
        best: dict[str, tuple[int, SiteVerdict]] = {}
        for p, pool in enumerate(index.pools):
            site = pool.site
            group = chosen.get((site, pool.name))
            if group:
                a = max(group, key=lambda x: x.ttft_p95)
                replicas = sum(x.replicas for x in group)
                gpus = sorted({g for x in group for grp in x.gpus for g in grp})
                share = f" ({len(group)} demand shards)" if len(group) > 1 else ""
                verdict = SiteVerdict(site, "chosen", "chosen",
                                      f"{replicas} replica(s){share} on {pool.gpu_type} GPUs {gpus}; predicted p95 TTFT "
                                      f"{a.ttft_p95 * 1000:.0f}ms <= {w.ttft_slo * 1000:.0f}ms, TPOT {a.tpot_p95 * 1000:.0f}ms "
                                      f"<= {w.tpot_slo * 1000:.0f}ms; {a.residency}"
                                      + (f"; {pool.cap_note}" if pool.cap_note else ""), pool.name)
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
                           f"{state.count} GPUs empty and no room on the others"
                           + (f" ({pool.cap_note})" if pool.cap_note else ""), pool.name)
    cost = (_alone(index, p, check.replicas, check.gpus_per_replica, check.share, w.memory)
            + index.problem.weights.latency_usd_per_rps_s * w.rate * (check.rtt or 0.0))
    what = (f"feasible ({check.replicas} replica(s), p95 TTFT {check.ttft * 1000:.0f}ms, RTT "
            f"{(check.rtt or 0) * 1000:.0f}ms)")
    if not (math.isfinite(chosen_cost) and chosen_cost > 0):
        return SiteVerdict(pool.site, "rejected", "not-chosen", f"{what} but not needed", pool.name)
    if cost > chosen_cost + 1e-9:
        why = f"but costlier: {cost:.3f} vs {chosen_cost:.3f} USD/h-eq for the chosen (GPU share + latency)"
    else:
        why = (f"and {cost:.3f} vs {chosen_cost:.3f} USD/h-eq on its own (GPU share + latency), but the fleet-wide "
               f"objective was lower with the chosen placement (whole GPUs opened, shared with other services)")
    return SiteVerdict(pool.site, "rejected", "not-chosen", f"{what} {why}", pool.name)


def _alone(index: FleetIndex, p: int, replicas: int, k: int, share: float, memory: float) -> float:
    """USD/h-eq of the GPU share ``replicas`` would take in pool ``p`` (whole GPUs when k > 1)."""
    per_replica = k if k > 1 else max(share, min(1.0, memory / float(index.memory[p])))
    return replicas * per_replica * float(index.gpu_cost[p])
