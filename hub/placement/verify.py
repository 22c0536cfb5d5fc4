"""Independent check of a placement against the hard constraints.

Used by tests, the benchmark and (cheaply) by the hub before publishing:
it recomputes everything from the problem, not from solver internals.
"""

from __future__ import annotations

from collections import defaultdict

from hub.placement.model import Placement, Problem

_EPS = 1e-6


def violations(problem: Problem, placement: Placement) -> list[str]:
    """Every broken hard constraint, one message each (empty = valid)."""
    out: list[str] = []
    sites = {s.name: s for s in problem.sites}
    pools = {(p.site, p.name): p for s in problem.sites for p in s.pools}
    workloads = {(w.service, w.region): w for w in problem.workloads}
    memory: dict[tuple[str, str, int], float] = defaultdict(float)
    compute: dict[tuple[str, str, int], float] = defaultdict(float)
    dedicated: dict[tuple[str, str, int], int] = defaultdict(int)
    residents: dict[tuple[str, str, int], int] = defaultdict(int)
    for a in placement.assignments:
        name = f"{a.service}/{a.region}#{a.shard} at {a.site}/{a.pool}"
        site = sites.get(a.site)
        pool = pools.get((a.site, a.pool))
        w = workloads.get((a.service, a.region))
        if site is None or pool is None or w is None:
            out.append(f"{name}: unknown site, pool or workload")
            continue
        rule = problem.rules.get(w.data_class)
        if rule is None or not rule.verdict(site.name, site.country, site.jurisdictions)[0]:
            out.append(f"{name}: residency violated for data class {w.data_class}")
        if site.unavailable is not None:
            out.append(f"{name}: site unavailable ({site.unavailable})")
        if pool.unavailable is not None:
            out.append(f"{name}: node {pool.node} unavailable ({pool.unavailable})")
        if pool.gpu_type not in w.profiles:
            out.append(f"{name}: model does not run on {pool.gpu_type}")
        if a.ttft_p95 > w.ttft_slo + _EPS or a.tpot_p95 > w.tpot_slo + _EPS:
            out.append(f"{name}: predicted p95 TTFT/TPOT {a.ttft_p95:.3f}/{a.tpot_p95:.3f}s over SLO")
        if len(a.gpus) != a.replicas:
            out.append(f"{name}: {a.replicas} replicas but {len(a.gpus)} GPU groups")
        for group in a.gpus:
            if len(group) != a.gpus_per_replica:
                out.append(f"{name}: replica on {len(group)} GPUs, needs {a.gpus_per_replica}")
            if a.gpus_per_replica * pool.memory + _EPS < a.memory_per_replica:
                out.append(f"{name}: replica of {a.memory_per_replica:.0f} B does not fit {a.gpus_per_replica} GPU(s)")
            for g in group:
                key = (a.site, a.pool, g)
                if not 0 <= g < pool.count:
                    out.append(f"{name}: GPU index {g} outside pool of {pool.count}")
                residents[key] += 1
                if len(group) > 1:
                    dedicated[key] += 1
                else:
                    memory[key] += a.memory_per_replica
                    compute[key] += a.gpu_share
    for key in residents:
        pool = pools[(key[0], key[1])]
        if dedicated[key] and residents[key] > 1:
            out.append(f"{key}: a multi-GPU replica shares its GPU")
        if memory[key] > pool.memory * (1 + 1e-9):
            out.append(f"{key}: memory overcommitted {memory[key]:.0f} > {pool.memory:.0f} B")
        if compute[key] > 1 + 1e-6:
            out.append(f"{key}: compute overcommitted {compute[key]:.3f} > 1")
    return out
