"""Autoscaling decisions: needed demand per (service, region) -> planned rates -> a placement.

Pure functions; the hub loop and ``benchmarks.autoscale`` call them with their own clock.

    need    = demand the caller wants covered at ``now + lead time`` (the forecaster's upper
              quantile for SLO-critical classes, its mean for sheddable ones; or, for a reactive
              policy, the observed rate over a target utilisation)
    planned = the rate each workload was last placed for

Hysteresis (why: every re-plan moves replicas and a cold start costs the lead time):

- scale out at once when ``need > planned``, to ``need * headroom`` (so a rising day does not
  re-plan every interval). Because ``need`` is the demand at the lead time, replicas start
  warming one lead time before the rise: pre-warm.
- scale in only after ``need < planned * scale_in_below`` held for the service's scale-down
  delay, to ``need * headroom``.

A change re-plans the whole fleet with the placement engine (``hub.placement.api.solve``) on the
Problem the hub builds from the bundle, rates replaced by the planned ones and the current
placement as ``previous`` (its churn penalty keeps replicas where they are). Residency,
capacity and SLO feasibility stay the engine's: nothing here picks a site. Per-service min/max
replicas are enforced by scaling the service's planned rates and re-planning (a few rounds).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Mapping, Optional

from hub.placement.api import Solver, solve
from hub.placement.greedy import solve_greedy
from hub.placement.model import Placement, Problem

Key = tuple[str, str]
"""(service, region of origin)."""


@dataclass(frozen=True)
class ScalingSettings:
    """Autoscaling settings of one Service (the YAML ``autoscale:`` block)."""

    enabled: bool = True
    """False: the service keeps the demand written in its Service YAML. Default True."""
    min_replicas: int = 1
    """Fewest replicas of the service fleet-wide (0 allows scaling to zero). Default 1."""
    max_replicas: Optional[int] = None
    """Most replicas of the service fleet-wide; None = no limit. Default None."""
    target_quantile: float = 0.95
    """Forecast quantile planned for when the service's priority class is not sheddable. Default 0.95."""
    scale_down_delay_s: float = 600.0
    """How long demand must stay low before capacity is taken away, seconds. Default 600."""

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ValueError(f"autoscale.min must be >= 0, got {self.min_replicas}")
        if self.max_replicas is not None and self.max_replicas < max(1, self.min_replicas):
            raise ValueError(f"autoscale.max ({self.max_replicas}) must be >= autoscale.min ({self.min_replicas}) and >= 1")
        if not 0.5 <= self.target_quantile < 1:
            raise ValueError(f"autoscale.targetQuantile must be in [0.5, 1), got {self.target_quantile}")
        if self.scale_down_delay_s < 0:
            raise ValueError(f"autoscale.scaleDownDelay must be >= 0 s, got {self.scale_down_delay_s}")


@dataclass(frozen=True)
class DecideConfig:
    """Fleet-wide knobs of the decision."""

    lead_time_s: float = 120.0
    """Provisioning lead time (model load + warm-up), seconds: forecasts look this far ahead. Default 120."""
    headroom: float = 1.15
    """Planned rate = need x headroom on every change. Default 1.15."""
    scale_in_below: float = 0.7
    """Scale in when need < planned x this, for the scale-down delay. Default 0.7."""
    min_rate: float = 0.01
    """Planned rate floor (req/s) of a workload whose service keeps >= 1 replica. Default 0.01."""
    solver: Solver = "greedy"
    """Placement solver (``hub.placement.api.solve``). Default greedy (fast)."""
    max_runs: Optional[int] = None
    """Greedy restarts cap (None = the engine's own size-based budget). Default None."""
    replica_rounds: int = 6
    """Re-plans allowed to meet per-service min/max replicas (rates scale each round). Default 6."""

    def __post_init__(self) -> None:
        if self.lead_time_s < 0 or self.headroom < 1 or not 0 < self.scale_in_below < 1:
            raise ValueError("lead_time_s must be >= 0, headroom >= 1 and scale_in_below in (0, 1)")


@dataclass(frozen=True)
class ScalerState:
    """What the autoscaler remembers between ticks."""

    planned: Mapping[Key, float] = field(default_factory=dict)
    """Rate (req/s) each workload is placed for now."""
    low_since: Mapping[Key, float] = field(default_factory=dict)
    """Since when each workload's need has been below the scale-in threshold."""
    placement: Optional[Placement] = None


@dataclass(frozen=True)
class Change:
    key: Key
    before: Optional[float]
    after: float
    reason: str


@dataclass(frozen=True)
class Decision:
    state: ScalerState
    changes: tuple[Change, ...]
    replanned: bool


def retarget(
    planned: Mapping[Key, float], low_since: Mapping[Key, float], need: Mapping[Key, float], now: float,
    settings: Mapping[str, ScalingSettings], config: DecideConfig = DecideConfig(),
) -> tuple[dict[Key, float], dict[Key, float], list[Change]]:
    """New planned rates and low-since marks from ``need`` (see module docstring). Pure."""
    new_planned = dict(planned)
    new_low: dict[Key, float] = {}
    changes: list[Change] = []
    for key in sorted(need):
        s = settings.get(key[0], ScalingSettings())
        if not s.enabled:
            continue
        n = max(0.0, float(need[key]))
        before = planned.get(key)
        floor = config.min_rate if s.min_replicas > 0 else 0.0
        target = max(floor, n * config.headroom)
        if before is None:
            new_planned[key] = target
            changes.append(Change(key, None, target, f"first plan: need {n:.3g} req/s"))
        elif n > before:
            new_planned[key] = target
            changes.append(Change(key, before, target, f"scale out: need {n:.3g} req/s at +{config.lead_time_s:g} s "
                                                         f"above planned {before:.3g} req/s"))
        elif n < before * config.scale_in_below and target < before:
            since = low_since.get(key, now)
            if now - since >= s.scale_down_delay_s:
                new_planned[key] = target
                changes.append(Change(key, before, target, f"scale in: need below {config.scale_in_below:g} x planned "
                                                             f"for {now - since:g} s (delay {s.scale_down_delay_s:g} s)"))
            else:
                new_low[key] = since
    return new_planned, new_low, changes


def replicas_by_service(placement: Placement) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for a in placement.assignments:
        out[a.service] += a.replicas
    return dict(out)


def place(problem: Problem, planned: Mapping[Key, float], previous: Optional[Placement],
          config: DecideConfig = DecideConfig()) -> Placement:
    """The placement engine's answer for ``problem`` with each workload's rate set to ``planned``.

    Workloads planned at 0 req/s are left out (scaled to zero); those not in ``planned`` keep
    the rate written in their Service.
    """
    workloads = []
    for w in problem.workloads:
        rate = planned.get((w.service, w.region), w.rate)
        if rate > 0:
            workloads.append(dataclasses.replace(w, rate=float(rate)))
    p = dataclasses.replace(problem, workloads=tuple(workloads), previous=previous)
    if config.solver == "greedy" and config.max_runs is not None:
        return solve_greedy(p, max_runs=config.max_runs)
    return solve(p, config.solver)


def place_within_limits(problem: Problem, planned: Mapping[Key, float], previous: Optional[Placement],
                        settings: Mapping[str, ScalingSettings], config: DecideConfig = DecideConfig(),
                        ) -> tuple[Placement, dict[Key, float]]:
    """:func:`place`, then scale services outside their min/max replicas and re-plan.

    Returns the placement and the planned rates it was made for (changed where a limit bit).
    """
    planned = dict(planned)
    placement = place(problem, planned, previous, config)
    for _ in range(config.replica_rounds):
        counts = replicas_by_service(placement)
        factors: dict[str, float] = {}
        for service, s in settings.items():
            n = counts.get(service, 0)
            keys = [k for k in planned if k[0] == service]
            if not keys:
                continue
            if s.max_replicas is not None and n > s.max_replicas:
                factors[service] = s.max_replicas / n * 0.9
            elif n < s.min_replicas:
                factors[service] = (s.min_replicas / max(n, 1)) * 1.05
        if not factors:
            break
        for service, f in factors.items():
            keys = [k for k in planned if k[0] == service]
            live = [k for k in keys if planned[k] > 0]
            for key in live or keys:  # a service planned at zero everywhere starts from the floor
                planned[key] = max(config.min_rate, planned[key] * f)
        placement = place(problem, planned, previous, config)
    return placement, planned


def decide(
    problem: Problem, state: ScalerState, need: Mapping[Key, float], now: float,
    settings: Optional[Mapping[str, ScalingSettings]] = None, config: DecideConfig = DecideConfig(),
) -> Decision:
    """One autoscaler tick: retarget, and re-plan when any planned rate changed (see module docstring)."""
    settings = settings or {}
    planned, low, changes = retarget(state.planned, state.low_since, need, now, settings, config)
    if not changes and state.placement is not None:
        return Decision(dataclasses.replace(state, low_since=low), (), False)
    placement, planned = place_within_limits(problem, planned, state.placement, settings, config)
    return Decision(ScalerState(planned, low, placement), tuple(changes), True)


def need_from_forecast(mean: float, upper: float, sheddable: bool) -> float:
    """Demand to cover: the upper quantile for SLO-critical classes, the mean for sheddable ones."""
    return mean if sheddable else max(mean, upper)


def hpa_need(observed: float, target_utilisation: float = 0.8) -> float:
    """A reactive (HPA-like) policy's need: the observed rate over the target utilisation."""
    if not 0 < target_utilisation <= 1:
        raise ValueError(f"target utilisation must be in (0, 1], got {target_utilisation}")
    return observed / target_utilisation if math.isfinite(observed) else 0.0
