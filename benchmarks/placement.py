"""Placement benchmark: ``python -m benchmarks.placement --sites N --services M``.

Prints one JSON line: fast-solver time, cost against a naive baseline,
GPU memory utilisation, predicted SLO attainment, residency violations and
(on small instances generated alongside) the optimality gap against the
exact MILP solver. The fleet is synthetic and seeded
(:mod:`hub.placement.synthetic`).

Naive baseline: each demand region of each service is served from its
lowest-latency legal site that can meet the SLO, on that site's cheapest
compatible GPU type, one replica per whole GPU (no sharing), with replica
counts from the same performance model, so predicted SLO attainment is
equal; capacity is ignored (which flatters the baseline). The literal
"every allowed site gets replicas" baseline would put thousands of GPUs
behind each public service at N = 3000 and say nothing useful.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time

from hub.placement.constraints import FleetIndex
from hub.placement.diff import totals
from hub.placement.greedy import solve_greedy
from hub.placement.milp import solve_exact
from hub.placement.model import Placement, Problem
from hub.placement.synthetic import synthetic_problem
from hub.placement.verify import violations


def naive_cost(problem: Problem, placed: set[tuple[str, str]]) -> tuple[float, float, int]:
    """(USD/h, kgCO2e/h, GPUs) of the naive baseline for the ``placed`` (service, region)s."""
    index = FleetIndex(problem)
    cost = carbon = 0.0
    gpus = 0
    for w in problem.workloads:
        if (w.service, w.region) not in placed:
            continue
        best = None
        for site in sorted(problem.sites, key=lambda s: s.latency.get(w.region, math.inf)):
            options = []
            for pool in site.pools:
                p = index.pool_index[(site.name, pool.name)]
                check = index.check(w, p)
                if check.ok or check.constraint == "pool-size":  # capacity is ignored
                    options.append((pool.price, check.replicas * check.gpus_per_replica, p))
            if options:
                best = min(options)
                break
        if best is None:
            continue
        price, n_gpus, p = best
        cost += n_gpus * price
        carbon += n_gpus * float(index.carbon_kg_h[p])
        gpus += n_gpus
    return cost, carbon, gpus


@contextlib.contextmanager
def _quiet_stdout():
    """HiGHS prints debug lines straight to fd 1 at times; keep the one JSON line clean."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def _gap(sites: int, services: int, seeds: int) -> dict:
    gaps, skipped, optimal = [], 0, 0
    for seed in range(seeds):
        problem = synthetic_problem(sites, services, seed=1000 + seed)
        fast = solve_greedy(problem)
        with _quiet_stdout():
            exact = solve_exact(problem, time_limit=60)
        if {(u.service, u.region) for u in fast.unplaced} != {(u.service, u.region) for u in exact.unplaced}:
            skipped += 1
            continue
        optimal += int(exact.stats.get("milp_optimal", 0))
        gaps.append((fast.objective - exact.objective) / exact.objective)
    return {
        "gap_instances": len(gaps), "gap_skipped_unequal_coverage": skipped, "gap_exact_proven_optimal": optimal,
        "gap_mean": round(statistics.mean(gaps), 5) if gaps else None,
        "gap_max": round(max(gaps), 5) if gaps else None,
        "gap_instance_size": f"{sites} sites x {services} services",
    }


def run(sites: int, services: int, seed: int, gap_sites: int, gap_services: int, gap_seeds: int) -> dict:
    problem = synthetic_problem(sites, services, seed=seed)
    t0, c0 = time.perf_counter(), time.thread_time()
    placement: Placement = solve_greedy(problem)
    solve_s, solve_cpu_s = time.perf_counter() - t0, time.thread_time() - c0
    placed = {(a.service, a.region) for a in placement.assignments}
    base_cost, base_carbon, base_gpus = naive_cost(problem, placed)
    after = totals(placement, problem)
    broken = violations(problem, placement)
    result = {
        "benchmark": "placement", "sites": sites, "services": services, "workloads": len(problem.workloads),
        "pools": sum(len(s.pools) for s in problem.sites), "seed": seed,
        "solve_s": round(solve_s, 3), "solve_cpu_s": round(solve_cpu_s, 3),
        "load_average_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
        "solve_breakdown_cpu_s": {k: round(v, 3) for k, v in placement.stats.items() if k.startswith("time_")},
        "greedy_runs": placement.stats.get("runs"),
        "gpus": after.gpus, "naive_gpus": base_gpus,
        "cost_usd_h": round(after.cost_usd_h, 2), "naive_cost_usd_h": round(base_cost, 2),
        "cost_saving_vs_naive": round(1 - after.cost_usd_h / base_cost, 4) if base_cost else None,
        "carbon_kg_h": round(after.carbon_kg_h, 3), "naive_carbon_kg_h": round(base_carbon, 3),
        "gpu_memory_utilisation": round(placement.stats.get("memory_utilisation", 0.0), 4),
        "gpu_compute_utilisation": round(placement.stats.get("compute_utilisation", 0.0), 4),
        "slo_attainment_predicted": round(after.slo_attainment, 4),
        "unplaced_workloads": len(placement.unplaced),
        "residency_violations": sum("residency" in v for v in broken),
        "constraint_violations": len(broken),
    }
    if gap_seeds:
        result.update(_gap(gap_sites, gap_services, gap_seeds))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=3000)
    parser.add_argument("--services", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--gap-sites", type=int, default=12, help="size of the exact-solver instances")
    parser.add_argument("--gap-services", type=int, default=8)
    parser.add_argument("--gap-seeds", type=int, default=5, help="how many small instances (0: skip the gap)")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.sites, args.services, args.seed, args.gap_sites, args.gap_services, args.gap_seeds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
