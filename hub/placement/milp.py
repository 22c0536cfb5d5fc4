"""Exact reference solver: a GPU-level mixed-integer program solved by
HiGHS through ``scipy.optimize.milp``. For small instances (tens of sites
and services); it is the yardstick for the fast solver's optimality gap.

Variables, for each workload w and candidate c (a pool p with replica
count n_c and GPUs per replica k_c) and each GPU g of p::

    x[w,c] in {0,1}     w uses candidate c
    u[w]   in {0,1}     w is left unplaced (penalised)
    o[p,g] in {0,1}     GPU g of pool p is in use (paid for)
    r[w,c,g] in 0..n_c  replicas of c on GPU g          (k_c = 1)
    e[w,c,g] in {0,1}   GPU g is one of c's dedicated GPUs (k_c > 1)

Constraints::

    sum_c x[w,c] + u[w] = 1
    sum_g r[w,c,g] = n_c x[w,c]             sum_g e[w,c,g] = n_c k_c x[w,c]
    sum_{w,c} mem_w/mem_p r[w,c,g] + sum e[w,c,g] <= o[p,g]     memory of g
    sum_{w,c} share_c r[w,c,g]   + sum e[w,c,g] <= o[p,g]       compute of g
    o[p,g] >= o[p,g+1]                                          symmetry

Objective: sum o[p,g] * gpu_cost_p + sum fixed_c x[w,c] + penalty u[w],
the same objective the fast solver's result is evaluated with.

Demand splitting. With ``split_depth = 0`` the demand shards are fixed
before the MILP (``FleetIndex.prepare``): it is exact for that split only,
and the fast solver, which splits a workload when it does not fit whole,
may then find a *lower* objective. With ``split_depth = d`` the MILP
chooses the split too: every workload is the root of a tree of parts
(each node's children are its demand in parts sized to what one whole pool
carries plus a remainder, or halves, ``FleetIndex.split_rates``; ``d``
levels deep), and each tree node w is placed whole, split
into its two children, or left unplaced::

    sum_c x[w,c] + s[w] + u[w] = s[parent(w)]      (= 1 for a root; s = 0 at depth d)

so the MILP is exact over every split the fast solver can make up to depth
``d``, and its dual bound (``milp_bound``) is a lower bound for them.
Workloads it leaves unplaced then go through the fast solver's splitting
placement.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from hub.placement.constraints import Candidates, FleetIndex
from hub.placement.greedy import MAX_SHARDS, place_all
from hub.placement.model import Placement, Problem, Workload
from hub.placement.state import SolveState


class _Builder:
    def __init__(self) -> None:
        self.cost: list[float] = []
        self.upper: list[float] = []
        self.rows: list[int] = []
        self.cols: list[int] = []
        self.vals: list[float] = []
        self.lo: list[float] = []
        self.hi: list[float] = []

    def var(self, cost: float, upper: float) -> int:
        self.cost.append(cost)
        self.upper.append(upper)
        return len(self.cost) - 1

    def row(self, terms: list[tuple[int, float]], lo: float, hi: float) -> None:
        r = len(self.lo)
        for col, val in terms:
            self.rows.append(r)
            self.cols.append(col)
            self.vals.append(val)
        self.lo.append(lo)
        self.hi.append(hi)


@dataclass
class _Node:
    """One workload of the split tree: placed whole, split into ``children``, or unplaced."""

    workload: Workload
    candidates: Candidates
    children: list["_Node"] = field(default_factory=list)
    xcols: list[int] = field(default_factory=list)
    split: int = -1
    """Column of s[w] (-1: a leaf, no split possible)."""
    rates: tuple[float, ...] = ()
    """Demand of each child (req/s)."""


def _tree(index: FleetIndex, w: Workload, c: Candidates, depth: int) -> _Node:
    node = _Node(w, c)
    if depth > 0 and w.shards * 2 <= MAX_SHARDS:
        node.rates = index.split_rates(w, None, MAX_SHARDS, equal=True)
        node.children = [_tree(index, part, index.candidates(part), depth - 1) for part in w.split(node.rates)]
    return node


def _walk(nodes: list[_Node]):
    for n in nodes:
        yield n
        yield from _walk(n.children)


def solve_exact(problem: Problem, index: FleetIndex | None = None, time_limit: float = 60.0,
                split_depth: int = 0) -> Placement:
    """The MILP above; ``split_depth`` levels of demand halving chosen by the MILP (0: the fixed split)."""
    t0 = time.perf_counter()
    index = index or FleetIndex(problem)
    roots_w, roots_c = index.prepare(list(problem.workloads))
    roots = [_tree(index, w, c, split_depth) for w, c in zip(roots_w, roots_c)]
    nodes = list(_walk(roots))
    workloads = [n.workload for n in nodes]
    candidates = [n.candidates for n in nodes]
    weights = problem.weights
    b = _Builder()
    pools = sorted({int(p) for c in candidates for p in c.pool})
    opened = {p: [b.var(float(index.gpu_cost[p]), 1.0) for _ in range(int(index.count[p]))] for p in pools}
    mem_terms: dict[tuple[int, int], list[tuple[int, float]]] = {(p, g): [] for p in pools for g in range(len(opened[p]))}
    comp_terms: dict[tuple[int, int], list[tuple[int, float]]] = {key: [] for key in mem_terms}
    xs: list[list[int]] = []
    per_gpu: dict[tuple[int, int], list[int]] = {}
    for node in nodes:
        if node.children:
            node.split = b.var(0.0, 1.0)
    parent_split: dict[int, int] = {id(ch): n.split for n in nodes for ch in n.children}
    for wi, (node, w, c) in enumerate(zip(nodes, workloads, candidates)):
        unplaced = b.var(weights.unplaced_usd * (1 if w.sheddable else 10) * w.fraction, 1.0)
        row = [(unplaced, 1.0)]
        if node.split >= 0:
            row.append((node.split, 1.0))
        parent = parent_split.get(id(node))
        xcols = []
        for ci in range(len(c)):
            p, n, k = int(c.pool[ci]), int(c.replicas[ci]), int(c.gpus_per_replica[ci])
            x = b.var(float(c.fixed_cost[ci]), 1.0)
            xcols.append(x)
            row.append((x, 1.0))
            link = [(x, -float(n * k if k > 1 else n))]
            cols = []
            for g in range(len(opened[p])):
                if k > 1:
                    e = b.var(0.0, 1.0)
                    mem_terms[(p, g)].append((e, 1.0))
                    comp_terms[(p, g)].append((e, 1.0))
                else:
                    e = b.var(0.0, float(n))
                    mem_terms[(p, g)].append((e, w.memory / float(index.memory[p])))
                    comp_terms[(p, g)].append((e, float(c.share[ci])))
                link.append((e, 1.0))
                cols.append(e)
            per_gpu[(wi, ci)] = cols
            b.row(link, 0.0, 0.0)
        xs.append(xcols)
        node.xcols = xcols
        if parent is None:
            b.row(row, 1.0, 1.0)
        else:  # active exactly when the parent is split
            b.row(row + [(parent, -1.0)], 0.0, 0.0)
    for (p, g), terms in mem_terms.items():
        b.row(terms + [(opened[p][g], -1.0)], -np.inf, 0.0)
        b.row(comp_terms[(p, g)] + [(opened[p][g], -1.0)], -np.inf, 0.0)
        if g + 1 < len(opened[p]):
            b.row([(opened[p][g], 1.0), (opened[p][g + 1], -1.0)], 0.0, np.inf)
    t1 = time.perf_counter()
    nvar = len(b.cost)
    A = coo_matrix((b.vals, (b.rows, b.cols)), shape=(len(b.lo), nvar)).tocsr()
    result = milp(np.array(b.cost), constraints=[LinearConstraint(A, np.array(b.lo), np.array(b.hi))],
                  integrality=np.ones(nvar), bounds=Bounds(np.zeros(nvar), np.array(b.upper)),
                  options={"time_limit": time_limit, "mip_rel_gap": 1e-6})
    t2 = time.perf_counter()
    if result.x is None:
        raise RuntimeError(f"MILP solver failed: {result.message}")
    sol = np.round(result.x).astype(np.int64)

    st = SolveState(index, list(roots_w), list(roots_c))
    number = {id(n): i for i, n in enumerate(nodes)}

    def realise(node: _Node, wi: int) -> None:
        """Put tree node ``node`` (workload ``wi`` of the solve state) as the MILP chose."""
        ni = number[id(node)]
        for ci, x in enumerate(node.xcols):
            if sol[x] != 1:
                continue
            c = node.candidates
            p, k = int(c.pool[ci]), int(c.gpus_per_replica[ci])
            gpu_counts = [int(sol[col]) for col in per_gpu[(ni, ci)]]
            if k > 1:
                chosen = [g for g, v in enumerate(gpu_counts) if v]
                gpus = [tuple(chosen[j * k:(j + 1) * k]) for j in range(len(chosen) // k)]
            else:
                gpus = [(g,) for g, v in enumerate(gpu_counts) for _ in range(v)]
            st.pool(p).commit(wi, gpus, node.workload.memory, float(c.share[ci]))
            st.chosen[wi] = ci
            st.refresh(p)
            return
        if node.split >= 0 and sol[node.split] == 1:
            for child, half in zip(node.children, st.split(wi, node.rates)):  # same parts, same candidates, same order
                realise(child, half)

    for wi, root in enumerate(roots):
        realise(root, wi)
    place_all(st, [wi for wi in range(len(st.workloads))
                   if wi not in st.chosen and wi not in st.replaced and len(st.candidates[wi])])
    stats = {"time_build_s": t1 - t0, "time_solve_s": t2 - t1, "milp_bound": float(getattr(result, "mip_dual_bound", result.fun) or result.fun),
             "milp_status": float(result.status), "milp_optimal": float(result.status == 0), "milp_vars": float(nvar),
             "milp_objective": float(result.fun), "milp_split_depth": float(split_depth), "topped_up_rps": st.top_up()}
    return st.to_placement("exact", stats)
