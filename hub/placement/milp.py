"""Exact reference solver: a mixed-integer program solved by HiGHS through
``scipy.optimize.milp``. For small instances (tens of sites and services).

Variables: ``x[w,c]`` binary (workload w uses candidate c), ``u[w]`` binary
(w unplaced, penalised), ``y[p]`` integer GPUs of pool p shared by
single-GPU replicas. Constraints::

    sum_c x[w,c] + u[w] = 1                                   each workload
    sum_{c on p, k=1} n_c * mem_w * x[w,c] <= y[p] * mem_p     memory of p
    sum_{c on p, k=1} n_c * share_c * x[w,c] <= y[p]            compute of p
    sum_{c on p, k=1, big} n_c * x[w,c] <= y[p]                 big replicas of p

where *big* replicas (over half a GPU's memory or compute) never share.
    y[p] + sum_{c on p, k>1} n_c * k_c * x[w,c] <= count_p      GPUs of p

Objective: sum_p gpu_cost_p * (y[p] + sum_{k>1} n k x) + sum fixed_c x +
penalty u. The memory and compute rows relax bin packing (it ignores fragmentation),
so the optimum is a lower bound; the chosen candidates are then packed
onto GPUs by best fit (in decreasing size) and evaluated with the same
objective as the fast solver, which is what the gap compares. Demand
shards are fixed before the MILP (see ``FleetIndex.prepare``), so it is
exact for that split; workloads it leaves unplaced go through the fast
solver's splitting placement afterwards.
"""

from __future__ import annotations

import time

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from hub.placement.constraints import FleetIndex
from hub.placement.greedy import place_all
from hub.placement.model import Placement, Problem
from hub.placement.state import SolveState


def solve_exact(problem: Problem, index: FleetIndex | None = None, time_limit: float = 30.0) -> Placement:
    t0 = time.perf_counter()
    index = index or FleetIndex(problem)
    workloads, candidates = index.prepare(list(problem.workloads))
    weights = problem.weights
    W = len(workloads)
    offsets = np.cumsum([0] + [len(c) for c in candidates])
    X = int(offsets[-1])
    pools = sorted({int(p) for c in candidates for p in c.pool})
    pcol = {p: X + W + i for i, p in enumerate(pools)}
    nvar = X + W + len(pools)

    cost = np.zeros(nvar)
    integrality = np.ones(nvar)
    lower = np.zeros(nvar)
    upper = np.ones(nvar)
    for wi, c in enumerate(candidates):
        s = slice(offsets[wi], offsets[wi + 1])
        whole = np.where(c.gpus_per_replica > 1, c.replicas * c.gpus_per_replica, 0)
        cost[s] = c.fixed_cost + whole * index.gpu_cost[c.pool]
        cost[X + wi] = weights.unplaced_usd * (1 if workloads[wi].sheddable else 10)
    for p, col in pcol.items():
        cost[col] = index.gpu_cost[p]
        upper[col] = index.count[p]

    rows, cols, vals = [], [], []
    lo, hi = [], []
    r = 0
    for wi in range(W):  # assignment
        for j in range(offsets[wi], offsets[wi + 1]):
            rows.append(r), cols.append(j), vals.append(1.0)
        rows.append(r), cols.append(X + wi), vals.append(1.0)
        lo.append(1.0), hi.append(1.0)
        r += 1
    mem_row = {p: r + i for i, p in enumerate(pools)}
    gpu_row = {p: r + len(pools) + i for i, p in enumerate(pools)}
    comp_row = {p: r + 2 * len(pools) + i for i, p in enumerate(pools)}
    big_row = {p: r + 3 * len(pools) + i for i, p in enumerate(pools)}
    for p in pools:
        rows.append(mem_row[p]), cols.append(pcol[p]), vals.append(-1.0)  # memory in GPUs of p
        rows.append(gpu_row[p]), cols.append(pcol[p]), vals.append(1.0)
        rows.append(comp_row[p]), cols.append(pcol[p]), vals.append(-1.0)
        rows.append(big_row[p]), cols.append(pcol[p]), vals.append(-1.0)
    for wi, c in enumerate(candidates):
        for j in range(len(c)):
            p = int(c.pool[j])
            col = int(offsets[wi] + j)
            if c.gpus_per_replica[j] > 1:
                rows.append(gpu_row[p]), cols.append(col), vals.append(float(c.replicas[j] * c.gpus_per_replica[j]))
            else:
                rows.append(mem_row[p]), cols.append(col), vals.append(float(c.replicas[j] * workloads[wi].memory / index.memory[p]))
                rows.append(comp_row[p]), cols.append(col), vals.append(float(c.replicas[j] * c.share[j]))
                if c.share[j] > 0.5 or workloads[wi].memory > 0.5 * index.memory[p]:
                    rows.append(big_row[p]), cols.append(col), vals.append(float(c.replicas[j]))
    for p in pools:
        lo.append(-np.inf), hi.append(0.0)
    for p in pools:
        lo.append(-np.inf), hi.append(float(index.count[p]))
    for p in pools:
        lo.append(-np.inf), hi.append(0.0)
    for p in pools:
        lo.append(-np.inf), hi.append(0.0)
    nrows = r + 4 * len(pools)

    t1 = time.perf_counter()
    constraints = []
    if nrows:
        A = coo_matrix((vals, (rows, cols)), shape=(nrows, nvar)).tocsr()
        constraints = [LinearConstraint(A, np.array(lo), np.array(hi))]
    result = milp(cost, constraints=constraints, integrality=integrality, bounds=Bounds(lower, upper),
                  options={"time_limit": time_limit, "mip_rel_gap": 1e-6})
    t2 = time.perf_counter()
    if result.x is None:
        raise RuntimeError(f"MILP solver failed: {result.message}")
    x = np.round(result.x)

    st = SolveState(index, workloads, candidates)
    picks = []
    for wi, c in enumerate(candidates):
        chosen = np.nonzero(x[offsets[wi]:offsets[wi + 1]] > 0.5)[0]
        if len(chosen):
            ci = int(chosen[0])
            picks.append((-float(c.replicas[ci] * c.gpus_per_replica[ci]) * workloads[wi].memory, wi, ci))
    missed = []
    for _, wi, ci in sorted(picks):
        if not st.place(wi, ci):  # fragmentation the relaxation ignored
            missed.append(wi)
    picked = {wi for _, wi, _ in picks}
    # Repair: what did not fit, and what the MILP left unplaced because its
    # shards are fixed, goes through the fast solver's splitting placement.
    place_all(st, missed + [wi for wi in range(W) if wi not in picked and len(candidates[wi])])
    st.consolidate()
    stats = {"time_build_s": t1 - t0, "time_solve_s": t2 - t1, "milp_bound": float(result.fun),
             "milp_status": float(result.status), "milp_optimal": float(result.status == 0)}
    return st.to_placement("exact", stats)
