"""What the hub calls. All pure: bundles and placements in, results out.

    result = plan(bundle, previous=current_placement)       # fleet plan / apply
    result.diff.lines(); result.placement.by_agent()         # show / publish
    explain(bundle, result.placement, "assistant-eu")        # fleet explain service
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Literal, Mapping, Optional

from hub.placement.build import problem_from_bundle
from hub.placement.constraints import FleetIndex
from hub.placement.diff import PlanDiff, plan_diff
from hub.placement.explain import Explanation, explain_service
from hub.placement.greedy import solve_greedy
from hub.placement.milp import solve_exact
from hub.placement.model import Placement, Problem, Weights
from hub.policy.bundle import Bundle

Solver = Literal["auto", "greedy", "exact"]
#: ``auto`` uses the exact solver up to this many (candidate, GPU) variables.
EXACT_LIMIT = 20_000
#: Time limit of the exact solver under ``auto`` (seconds); the fast result is kept if better.
EXACT_TIME_LIMIT_S = 20.0


@dataclass(frozen=True)
class PlanResult:
    problem: Problem
    placement: Placement
    diff: PlanDiff


def solve(problem: Problem, solver: Solver = "auto") -> Placement:
    """Place ``problem`` with the chosen solver.

    ``auto``: on small problems both the exact and the fast solver run and
    the lower objective wins (the exact one may stop at its time limit);
    on large ones only the fast solver runs.
    """
    if solver == "exact":
        return solve_exact(problem)
    if solver == "greedy":
        return solve_greedy(problem)
    index = FleetIndex(problem)
    size = sum(int(index.count[c.pool].sum()) for c in (index.candidates(w) for w in problem.workloads))
    fast = solve_greedy(problem)
    if size > EXACT_LIMIT:
        return fast
    exact = solve_exact(problem, index, time_limit=EXACT_TIME_LIMIT_S)
    return exact if exact.objective <= fast.objective + 1e-9 else fast


def plan(
    bundle: Bundle,
    previous: Optional[Placement] = None,
    *,
    at: Optional[dt.datetime] = None,
    weights: Weights = Weights(),
    solver: Solver = "auto",
    unschedulable: Optional[Mapping[tuple[str, str], str]] = None,
    reported_gpus: Optional[Mapping[tuple[str, str], int]] = None,
) -> PlanResult:
    """Placement for ``bundle`` and its diff against ``previous`` (a dry run).

    ``unschedulable``: (site, node) -> reason, for nodes that take no placements now.
    ``reported_gpus``: (site, node) -> GPUs its agent reports; a pool is capped there
    (:func:`~hub.placement.build.cap_pools`), and the placement keeps the counts that capped
    something, so :func:`explain` rebuilds the same pools.
    """
    problem = problem_from_bundle(bundle, at=at, previous=previous, weights=weights, unschedulable=unschedulable,
                                  reported_gpus=reported_gpus)
    placement = solve(problem, solver)
    declared: dict[tuple[str, str], int] = {}
    for s in problem.sites:
        for p in s.pools:
            declared[(p.site, p.node)] = declared.get((p.site, p.node), 0) + (p.declared or p.count)
    capped = {k: int(n) for k, n in sorted((reported_gpus or {}).items()) if k in declared and n < declared[k]}
    if capped:
        placement = dataclasses.replace(placement, reported_gpus=capped)
    return PlanResult(problem, placement, plan_diff(previous, placement, problem))


def explain(
    bundle: Bundle, placement: Placement, service: str, *, at: Optional[dt.datetime] = None
) -> list[Explanation]:
    """Per demand region of ``service``: each site chosen or rejected, and why."""
    if service not in bundle.services:
        raise KeyError(f"no Service named {service!r}")
    problem = problem_from_bundle(bundle, at=at, reported_gpus=placement.reported_gpus)
    return explain_service(problem, placement, service)
