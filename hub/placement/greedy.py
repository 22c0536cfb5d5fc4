"""Fast solver: priority-ordered best-fit-decreasing with marginal GPU cost,
then one local-improvement pass, consolidation and a retry of the unplaced.

Workloads go in order of priority (higher first: lower classes are what is
left unplaced when capacity is short), then of GPU memory demand (largest
first, as in first-fit decreasing). Each takes the candidate with the least
*marginal* objective: GPUs newly opened x (price + carbon price) plus its
latency and churn terms, with a small tie-break on memory share, so later
workloads fill GPUs that are already open. The improvement pass moves a
workload when that lowers the objective, a second pass tries to empty
each GPU into GPUs already in use, and consolidation then frees GPUs
inside pools. The whole run is repeated with other scoring blends (from
pure marginal cost to stand-alone GPU share) as often as the problem size allows,
keeping the best.
"""

from __future__ import annotations

import random
import time

import numpy as np

from hub.placement.constraints import FleetIndex
from hub.placement.model import Placement, Problem
from hub.placement.state import SolveState

_TIE = 0.01


def _clock() -> float:
    """CPU time of this thread, for the timings in the stats."""
    return time.thread_time()


_TRIES = 16
MAX_SHARDS = 64
#: Scoring blends tried in turn (see SolveState.beta).
BETAS = (1.0, 0.0, 0.5, 0.25)
#: At most this many runs (blends, then seeded restarts with perturbed order).
MAX_RUNS = 48
#: Runs x candidate options budget: small problems get many restarts, large ones one run.
RUN_WORK = 60_000


def _scores(st: SolveState, wi: int, open_only: bool = False) -> np.ndarray:
    c = st.candidates[wi]
    w = st.workloads[wi]
    gc = st.index.gpu_cost[c.pool]
    new = st.new_gpus(wi)
    share = np.where(c.gpus_per_replica > 1, c.replicas * c.gpus_per_replica,
                     c.replicas * np.maximum(c.share, w.memory / st.index.memory[c.pool]))
    beta = st.beta
    score = ((1 - beta) * new + (beta + _TIE) * share) * gc + c.fixed_cost
    ok = new <= st.empty[c.pool]
    if open_only:
        ok &= new == 0
    return np.where(ok, score, np.inf)


def place_best(st: SolveState, wi: int, open_only: bool = False) -> bool:
    """Place workload ``wi`` on its cheapest candidate that fits; False if none.
    With ``open_only`` only GPUs already in use are considered."""
    if not len(st.candidates[wi]):
        return False
    score = _scores(st, wi, open_only)
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
        p = int(st.candidates[wi].pool[ci])
        used = int(st.used[p])
        if st.place(wi, ci):
            if not (open_only and st.used[p] > used):
                return True
            st.unplace(wi)  # the estimate was optimistic: it opened a GPU
        score[ci] = np.inf
    return False


def place_all(st: SolveState, order: list[int]) -> None:
    """Place workloads in ``order``; one that no longer fits anywhere whole is
    split (up to MAX_SHARDS) into a part sized to what the empty GPUs of one
    pool still carry and the rest (halves when no pool has room), and the
    parts may go to different pools: whole replicas are not wasted on equal
    parts, so more demand never leaves more of it unplaced (issue 12)."""
    queue = list(order)
    while queue:
        wi = queue.pop(0)
        w = st.workloads[wi]
        if not place_best(st, wi) and len(st.candidates[wi]) and w.shards * 2 <= MAX_SHARDS:
            queue[:0] = st.split(wi, st.index.split_rates(w, st.empty, MAX_SHARDS))


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


#: Options kept per workload (its cheapest stand-alone ones); None keeps all.
MAX_CANDIDATES = None


def _close_gpus(st: SolveState) -> int:
    """Try to empty each GPU in use by moving its workloads into GPUs that are
    already in use elsewhere; keep the change when the objective drops."""
    closed = 0
    gc = st.index.gpu_cost
    targets = sorted(
        ((p, g) for p, s in st.pools.items() for g, r in enumerate(s.residents) if r),
        key=lambda pg: st.pools[pg[0]].memory - st.pools[pg[0]].free[pg[1]],
    )
    for p, g in targets:
        residents = st.pools[p].residents[g]
        movers = sorted({r[0] for r in residents}, key=lambda wi: -st.workloads[wi].memory)
        if not movers or any(st.candidates[wi].gpus_per_replica[st.chosen[wi]] > 1 for wi in movers):
            continue
        before = st.used.copy()
        fixed_before = sum(float(st.candidates[wi].fixed_cost[st.chosen[wi]]) for wi in movers)
        st.begin()
        for wi in movers:
            st.unplace(wi)
        ok = all(place_best(st, wi, open_only=True) for wi in movers)
        if ok:
            fixed_after = sum(float(st.candidates[wi].fixed_cost[st.chosen[wi]]) for wi in movers)
            delta = float(((st.used - before) * gc).sum()) + fixed_after - fixed_before
            ok = delta < -1e-9
        if ok:
            st.commit()
            closed += 1
        else:
            st.rollback()
    return closed


def _run(index: FleetIndex, workloads: list, candidates: list, beta: float, improve: bool,
         rng: random.Random | None = None, single_moves: bool = True) -> SolveState:
    st = SolveState(index, list(workloads), list(candidates))
    st.beta = beta
    # restarts perturb the order: mildly, or (every other one) enough to reorder across sizes,
    # since uneven demand parts (capacity-sized shards) can block each other's nearest sites
    wide = bool(rng) and rng.random() < 0.5
    noise = [(rng.uniform(0.2, 5.0) if wide else rng.uniform(0.6, 1.4)) if rng else 1.0 for _ in workloads]

    def demand(i: int) -> float:
        c = candidates[i]
        return float((c.replicas * c.gpus_per_replica).min()) * workloads[i].memory * noise[i] if len(c) else 0.0

    order = sorted(range(len(workloads)), key=lambda i: (-workloads[i].priority, -demand(i), len(candidates[i]), i))
    t0 = _clock()
    place_all(st, order)
    t1 = _clock()
    closed = _close_gpus(st) if improve else 0
    moves = _improve(st) if improve and single_moves else 0
    t2 = _clock()
    consolidated = st.consolidate()
    for wi in range(len(st.workloads)):
        if wi not in st.chosen and wi not in st.replaced:
            place_best(st, wi)
    t3 = _clock()
    st.stats = {
        "beta": beta, "time_greedy_s": t1 - t0, "time_improve_s": t2 - t1, "time_consolidate_s": t3 - t2,
        "improve_moves": moves, "gpus_closed": closed, "consolidation_moves": consolidated,
    }
    return st


def solve_greedy(
    problem: Problem, index: FleetIndex | None = None, improve: bool = True, max_runs: int | None = None
) -> Placement:
    """Fast heuristic placement (see module docstring).

    Runs the greedy with scoring blends ``BETAS``, then seeded restarts with a
    random blend and a perturbed order, and keeps the best objective. How
    many runs depends only on the problem's size (``RUN_WORK`` candidate
    options in all, at most ``MAX_RUNS``), never on the clock, so the same
    problem always gives the same placement (``fleet plan`` = ``fleet apply``).
    """
    t0 = _clock()
    index = index or FleetIndex(problem, max_candidates=MAX_CANDIDATES)
    workloads, candidates = index.prepare(list(problem.workloads))
    t1 = _clock()
    best = _best_run(index, workloads, candidates, improve, max_runs)
    tight = False
    if any(w.shards > 1 for wi, w in enumerate(best.workloads) if wi not in best.chosen and wi not in best.replaced):
        # Equal shards left some demand out: shards sized to whole pools' capacity waste no
        # replica, so they never serve less of a larger demand (issue 12). Keep the better.
        workloads2, candidates2 = index.prepare(list(problem.workloads), equal=False)
        other = _best_run(index, workloads2, candidates2, improve, max_runs)
        if other.objective() < best.objective() - 1e-9:
            best, tight = other, True
    topped = best.top_up()
    stats = {"time_candidates_s": t1 - t0, **best.stats, "capacity_shards": float(tight), "topped_up_rps": topped,
             "time_total_s": _clock() - t0}
    return best.to_placement("greedy", stats)


def _best_run(index: FleetIndex, workloads: list, candidates: list, improve: bool, max_runs: int | None) -> SolveState:
    """The best of the greedy runs over one split of the demand (see :func:`solve_greedy`)."""
    size = max(1, sum(len(c) for c in candidates))
    runs_allowed = max(1, min(MAX_RUNS if max_runs is None else max_runs, RUN_WORK // size))
    best: SolveState | None = None
    rng = random.Random(0)
    # Single-workload moves rarely pay on large fleets once GPUs are closed: small ones only.
    single_moves = runs_allowed > 1
    for run in range(runs_allowed):
        if run < len(BETAS):
            st = _run(index, workloads, candidates, BETAS[run], improve, single_moves=single_moves)
        else:  # seeded restarts: random blend, perturbed order
            st = _run(index, workloads, candidates, rng.random(), improve, rng, single_moves)
        if best is None or st.objective() < best.objective() - 1e-9:
            best = st
    assert best is not None
    best.stats["runs"] = runs_allowed
    return best
