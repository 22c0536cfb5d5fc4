"""Solvers: hard constraints always hold; the fast solver is close to the exact one."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.placement.constraints import FleetIndex
from hub.placement.greedy import MAX_SHARDS, solve_greedy
from hub.placement.milp import solve_exact
from hub.placement.model import Problem, Weights
from hub.placement.synthetic import synthetic_problem
from hub.placement.verify import violations
from tests.props import examples

FAST = 3  # greedy runs in property tests (the default allows up to 48 on small fleets)

base_fleets = st.builds(
    synthetic_problem,
    sites=st.integers(3, 40),
    services=st.integers(1, 12),
    seed=st.integers(0, 10**6),
    weights=st.builds(Weights, cost=st.floats(0, 10), carbon_usd_per_kg=st.floats(0, 100),
                      latency_usd_per_rps_s=st.floats(0, 100), churn_usd_per_replica=st.floats(0, 5)),
    load=st.floats(0.05, 3.0),
)


@st.composite
def fleets(draw) -> Problem:
    """Synthetic fleets, some re-planned against a previous placement (churn) made before demand changed,
    with pools cordoned, and with a data class whose residency policy is missing (allowed nowhere)."""
    problem = draw(base_fleets)
    if draw(st.booleans()):  # a previous placement, of the same fleet at another demand
        scale = draw(st.floats(0.5, 1.5))
        before = dataclasses.replace(problem, workloads=tuple(dataclasses.replace(w, rate=w.rate * scale)
                                                              for w in problem.workloads))
        problem = dataclasses.replace(problem, previous=solve_greedy(before, max_runs=1))
    cordon = draw(st.floats(0.0, 0.5))
    if cordon:
        rng = np.random.default_rng(draw(st.integers(0, 10**6)))
        problem = dataclasses.replace(problem, sites=tuple(dataclasses.replace(s, pools=tuple(
            dataclasses.replace(p, unavailable="node is cordoned") if rng.random() < cordon else p for p in s.pools))
            for s in problem.sites))
    classes = sorted({w.data_class for w in problem.workloads})
    if classes and draw(st.booleans()):
        gone = draw(st.sampled_from(classes))
        problem = dataclasses.replace(problem, rules={k: v for k, v in problem.rules.items() if k != gone})
    return problem


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets())
def test_random_fleets_never_break_hard_constraints(problem) -> None:
    placement = solve_greedy(problem, max_runs=FAST)
    assert violations(problem, placement) == []
    rules = problem.rules
    sites = {s.name: s for s in problem.sites}
    by_key = {(w.service, w.region): w for w in problem.workloads}
    for a in placement.assignments:  # residency, re-derived here from the rule itself
        site = sites[a.site]
        data_class = by_key[(a.service, a.region)].data_class
        assert data_class in rules, f"{a.service} placed although {data_class!r} has no residency policy"
        assert rules[data_class].verdict(site.name, site.country, site.jurisdictions)[0]
        pool = next(p for p in site.pools if p.name == a.pool)
        assert pool.unavailable is None and site.unavailable is None, f"{a.service} placed on cordoned {a.site}/{a.pool}"
    placed = {(a.service, a.region) for a in placement.assignments}
    unplaced = {(u.service, u.region) for u in placement.unplaced}
    assert placed | unplaced == set(by_key)  # every workload is accounted for
    index = FleetIndex(problem)
    for u in placement.unplaced:  # an unplaced workload is either infeasible or starved of capacity
        _, options = index.prepare([by_key[(u.service, u.region)]])
        feasible = any(len(c) for c in options)
        assert ("capacity" in u.reason) == feasible, u.reason
        assert feasible or "no feasible pool" in u.reason
        share = sum(a.rate for a in placement.assignments if (a.service, a.region) == (u.service, u.region))
        assert share / by_key[(u.service, u.region)].rate == pytest.approx(1 - u.fraction, abs=1e-6)


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sites=st.integers(3, 30), services=st.integers(1, 10), seed=st.integers(0, 10**6))
def test_every_slo_feasible_workload_is_placed_when_capacity_is_ample(sites: int, services: int, seed: int) -> None:
    problem = synthetic_problem(sites, services, seed=seed, load=0.3, gpu_scale=16)
    placement = solve_greedy(problem, max_runs=FAST)
    index = FleetIndex(problem)
    feasible = {w.key[:2]: w for w in problem.workloads if any(len(c) for c in index.prepare([w])[1])}
    placed = {(a.service, a.region) for a in placement.assignments}
    used: dict[tuple[str, str], set[int]] = {}
    for a in placement.assignments:
        used.setdefault((a.site, a.pool), set()).update(g for replica in a.gpus for g in replica)
    for key in set(feasible) - placed:
        # "Ample" is statistical: a seed can still make one pool everyone's only option
        # (seed 4969 did, in a 2000-example run). Left out only when no candidate pool
        # has enough wholly empty GPUs for a single replica.
        c = index.candidates(feasible[key])
        for p, g in zip(c.pool, c.gpus_per_replica):
            pool = index.pools[int(p)]
            free = pool.count - len(used.get((pool.site, pool.name), ()))
            assert free < g, f"{key} unplaced although {pool.site}/{pool.name} has {free} empty GPU(s)"
    assert violations(problem, placement) == []


def test_vectorised_candidates_agree_with_one_by_one_checks() -> None:
    for seed in range(6):
        problem = synthetic_problem(25, 8, seed=seed)
        index = FleetIndex(problem)
        for w in problem.workloads:
            c = index.candidates(w)
            fast = {(int(p), int(n)) for p, n in zip(c.pool, c.replicas)}
            slow = {(p, index.check(w, p).replicas) for p in range(len(index.pools)) if index.check(w, p).ok}
            assert fast == slow


def test_exact_solver_is_exact_on_a_toy_instance() -> None:
    problem = synthetic_problem(6, 3, seed=7, load=0.5)
    exact = solve_exact(problem)
    assert exact.stats["milp_optimal"] == 1.0
    assert violations(problem, exact) == []
    assert exact.objective == pytest.approx(exact.stats["milp_bound"], rel=1e-6, abs=1e-6) or exact.unplaced


def test_fast_solver_gap_to_exact_is_small() -> None:
    gaps = []
    for seed in range(4):
        problem = synthetic_problem(10, 5, seed=100 + seed)
        fast, exact = solve_greedy(problem), solve_exact(problem, time_limit=20)
        assert violations(problem, fast) == [] and violations(problem, exact) == []
        if {(u.service, u.region) for u in fast.unplaced} != {(u.service, u.region) for u in exact.unplaced}:
            continue
        gaps.append((fast.objective - exact.objective) / exact.objective)
    assert len(gaps) >= 2
    assert max(gaps) <= 0.02, gaps


def test_residency_holds_at_any_weight_even_when_the_illegal_site_is_free() -> None:
    base = synthetic_problem(20, 6, seed=5)
    # make every non-EEA site free, green and close: the only pull is illegal
    sites = tuple(
        s if "EEA" in s.jurisdictions else dataclasses.replace(
            s, intensity=0.0, latency={r: 0.001 for r in s.latency},
            pools=tuple(dataclasses.replace(p, price=0.0, power=1.0) for p in s.pools))
        for s in base.sites)
    for weights in (Weights(cost=100, carbon_usd_per_kg=100, latency_usd_per_rps_s=100), Weights(cost=0)):
        problem = dataclasses.replace(base, sites=sites, weights=weights)
        placement = solve_greedy(problem, max_runs=FAST)
        assert violations(problem, placement) == []


def _short_of_capacity(seed: int) -> Problem:
    """A synthetic fleet with at most two GPUs per pool and twice the demand: really short of capacity."""
    base = synthetic_problem(4, 12, seed=seed, load=2.0)
    sites = tuple(dataclasses.replace(s, pools=tuple(dataclasses.replace(p, count=min(p.count, 2)) for p in s.pools))
                  for s in base.sites)
    return dataclasses.replace(base, sites=sites)


@pytest.mark.parametrize("seed", [1, 3, 4, 6, 7])
def test_higher_priority_wins_scarce_capacity(seed: int) -> None:
    """No workload left out for capacity could have had GPUs that a lower-priority workload holds: with every
    lower-priority replica removed, none of its candidate pools has room for even its smallest piece."""
    problem = _short_of_capacity(seed)
    placement = solve_greedy(problem, max_runs=FAST)
    assert violations(problem, placement) == []
    prio = {w.service: w.priority for w in problem.workloads}
    by_key = {(w.service, w.region): w for w in problem.workloads}
    losers = [u for u in placement.unplaced if "capacity" in u.reason]
    assert len({prio[u.service] for u in losers}) >= 1 and losers  # the precondition: capacity really is short
    index = FleetIndex(problem)
    contested = 0
    for u in losers:
        smallest = by_key[(u.service, u.region)]
        while smallest.shards < MAX_SHARDS:
            smallest = smallest.split()[0]
        c = index.candidates(smallest)
        for p, n, k in zip(c.pool, c.replicas, c.gpus_per_replica):
            pool = index.pools[int(p)]
            here = [a for a in placement.assignments if (a.site, a.pool) == (pool.site, pool.name)]
            kept = {g for a in here if prio[a.service] >= prio[u.service] for r in a.gpus for g in r}
            if any(prio[a.service] < prio[u.service] for a in here):
                contested += 1
            assert pool.count - len(kept) < n * k, (
                f"{u.service}/{u.region} (priority {prio[u.service]}) left out for capacity, but "
                f"{pool.site}/{pool.name} would have {pool.count - len(kept)} empty GPU(s) for its {n * k} "
                "without the lower-priority replicas there")
    assert contested  # lower-priority replicas do sit on a loser's candidate pools: the check above is exercised


def test_exact_and_fast_agree_on_fixed_numbers() -> None:
    problem = synthetic_problem(8, 4, seed=3)
    fast = solve_greedy(problem)
    exact = solve_exact(problem)
    assert np.isfinite(fast.objective) and np.isfinite(exact.objective)
    assert exact.objective <= fast.objective + 1e-6 or fast.unplaced != exact.unplaced


@pytest.mark.slow
def test_exact_solver_choosing_the_split_is_not_beaten_by_the_fast_one() -> None:
    """On this instance the fast solver halves a workload the fixed-split MILP must place whole (or leave
    out), and beats it (objective 9421 vs 12547); with the split among its choices the MILP is a true
    yardstick: its objective is at most the fast solver's."""
    problem = synthetic_problem(12, 8, seed=1001)
    fast = solve_greedy(problem)
    fixed = solve_exact(problem, time_limit=60)
    assert fixed.objective > fast.objective  # the precondition: the fixed split is no lower bound here
    free = solve_exact(problem, time_limit=60, split_depth=1)
    assert violations(problem, free) == []
    assert free.stats["milp_split_depth"] == 1.0
    assert free.objective <= fast.objective + 1e-6
