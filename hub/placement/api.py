"""What the hub calls. All pure: bundles and placements in, results out.

    result = plan(bundle, previous=current_placement)       # fleet plan / apply
    result.diff.lines(); result.placement.by_agent()         # show / publish
    explain(bundle, result.placement, "assistant-eu")        # fleet explain service
"""

from __future__ import annotations

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
) -> PlanResult:
    """Placement for ``bundle`` and its diff against ``previous`` (a dry run).

    ``unschedulable``: (site, node) -> reason, for nodes that take no placements now.
    """
    problem = problem_from_bundle(bundle, at=at, previous=previous, weights=weights, unschedulable=unschedulable)
    placement = solve(problem, solver)
    return PlanResult(problem, placement, plan_diff(previous, placement, problem))


def explain(
    bundle: Bundle, placement: Placement, service: str, *, at: Optional[dt.datetime] = None
) -> list[Explanation]:
    """Per demand region of ``service``: each site chosen or rejected, and why."""
    if service not in bundle.services:
        raise KeyError(f"no Service named {service!r}")
    return explain_service(problem_from_bundle(bundle, at=at), placement, service)
