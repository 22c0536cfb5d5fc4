"""Fast solver: priority-ordered best-fit-decreasing with marginal GPU cost,
then one local-improvement pass, consolidation and a retry of the unplaced.

Workloads go in order of priority (higher first: lower classes are what is
left unplaced when capacity is short), then of GPU memory demand (largest
first, as in first-fit decreasing). Each takes the candidate with the least
*marginal* objective: GPUs newly opened x (price + carbon price) plus its
latency and churn terms, with a small tie-break on memory share, so later
workloads fill GPUs that are already open. The improvement pass moves a
workload when that lowers the objective; consolidation then frees GPUs.
"""

from __future__ import annotations

import time

import numpy as np

from hub.placement.constraints import FleetIndex
from hub.placement.model import Placement, Problem
from hub.placement.state import SolveState

_TIE = 0.01
_TRIES = 16
MAX_SHARDS = 64


def _scores(st: SolveState, wi: int) -> np.ndarray:
    c = st.candidates[wi]
    w = st.workloads[wi]
    gc = st.index.gpu_cost[c.pool]
    new = st.new_gpus(wi)
    share = c.replicas * c.gpus_per_replica * w.memory / st.index.memory[c.pool]
    score = new * gc + c.fixed_cost + _TIE * np.minimum(share, c.replicas * c.gpus_per_replica) * gc
    return np.where(new <= st.empty[c.pool], score, np.inf)


def place_best(st: SolveState, wi: int) -> bool:
    """Place workload ``wi`` on its cheapest candidate that fits; False if none."""
    if not len(st.candidates[wi]):
        return False
    score = _scores(st, wi)
    for attempt in range(len(score)):
        if attempt == _TRIES:
            order = np.argsort(score, kind="stable")
            for ci in order:
                if not np.isfinite(score[ci]):
                    return False
                if st.place(wi, int(ci)):
                    return True
            return False
        ci = int(np.argmin(score))
        if not np.isfinite(score[ci]):
            return False
        if st.place(wi, ci):
            return True
        score[ci] = np.inf
    return False


def place_all(st: SolveState, order: list[int]) -> None:
    """Place workloads in ``order``; one that no longer fits anywhere whole is
    split in two halves (up to MAX_SHARDS) that may go to different pools."""
    queue = list(order)
    while queue:
        wi = queue.pop(0)
        if not place_best(st, wi) and len(st.candidates[wi]) and st.workloads[wi].shards * 2 <= MAX_SHARDS:
            queue[:0] = st.split(wi)


def _improve(st: SolveState) -> int:
    """Move single workloads where that lowers the objective. Returns moves kept."""
    kept = 0
    gc = st.index.gpu_cost
    for wi in sorted(st.chosen, key=lambda i: -st.workloads[i].memory * st.candidates[i].replicas[st.chosen[i]]):
        ci = st.chosen[wi]
        c = st.candidates[wi]
        p = int(c.pool[ci])
        used_before = int(st.used[p])
        st.unplace(wi)
        saving = (used_before - st.used[p]) * gc[p] + c.fixed_cost[ci]
        used = st.used.copy()
        if not place_best(st, wi):
            st.place(wi, ci)
            continue
        nci = st.chosen[wi]
        q = int(c.pool[nci])
        cost = (st.used[q] - used[q]) * gc[q] + c.fixed_cost[nci]
        if nci != ci and cost < saving - 1e-9:
            kept += 1
            continue
        if nci != ci:
            st.unplace(wi)
            if not st.place(wi, ci):  # cannot happen: the old spot was just freed
                place_best(st, wi)
    return kept


def solve_greedy(problem: Problem, index: FleetIndex | None = None, improve: bool = True) -> Placement:
    """Fast heuristic placement (see module docstring)."""
    t0 = time.perf_counter()
    index = index or FleetIndex(problem)
    workloads, candidates = index.prepare(list(problem.workloads))
    t1 = time.perf_counter()
    st = SolveState(index, workloads, candidates)

    def demand(i: int) -> float:
        c = candidates[i]
        return float((c.replicas * c.gpus_per_replica).min()) * workloads[i].memory if len(c) else 0.0

    order = sorted(range(len(workloads)), key=lambda i: (-workloads[i].priority, -demand(i), len(candidates[i]), i))
    place_all(st, order)
    order = [i for i in range(len(st.workloads)) if i not in st.replaced]
    t2 = time.perf_counter()
    moves = _improve(st) if improve else 0
    t3 = time.perf_counter()
    consolidated = st.consolidate()
    for wi in order:
        if wi not in st.chosen:
            place_best(st, wi)
    t4 = time.perf_counter()
    stats = {
        "time_candidates_s": t1 - t0, "time_greedy_s": t2 - t1, "time_improve_s": t3 - t2,
        "time_consolidate_s": t4 - t3, "improve_moves": moves, "consolidation_moves": consolidated,
    }
    return st.to_placement("greedy", stats)
