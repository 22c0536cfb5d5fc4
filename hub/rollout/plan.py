"""Which sites each wave updates: a pure, deterministic plan.

Eligible sites are the service's sites that have not opted out of rollouts
and do not already run the target version (those are listed in
``excluded`` with the reason). They are ordered healthy first (reachable
and not in maintenance), then by name, so that the first, smallest wave
lands on a site that can give an answer, and the same fleet always gives
the same plan.

Wave targets are cumulative (see :func:`hub.rollout.spec.parse_waves`):
with 20 eligible sites, ``1,10%,50%,100%`` gives waves of 1, 1, 8 and 10
sites (targets 1, 2, 10, 20). Percentages round up; a wave that would be
empty (a target not above the previous one, as with few sites) is dropped.
With the canary strategy the first wave is the canary (``canary.sites``)
and the remaining targets above it follow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from hub.rollout.spec import RolloutSpec, Size


@dataclass(frozen=True)
class SiteState:
    """What the planner knows about one site of the service."""

    name: str
    reachable: bool = True
    opted_out: bool = False
    """The site refuses rollouts (it is updated by hand)."""
    in_maintenance: bool = False
    current_version: Optional[str] = None
    has_agent: bool = True
    """Some node of the site has ever connected."""


@dataclass(frozen=True)
class WavePlan:
    waves: tuple[tuple[str, ...], ...]
    excluded: tuple[tuple[str, str], ...]
    """(site, reason) for every site left out."""
    max_unavailable: int
    """Sites that may be applying at the same time, resolved against the eligible sites."""

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(s for w in self.waves for s in w)


def _targets(sizes: Sequence[Size], n: int) -> list[int]:
    out: list[int] = []
    for size in sizes:
        t = max(1, size.resolve(n))
        if not out or t > out[-1]:
            out.append(t)
    return out


def plan(sites: Sequence[SiteState], spec: RolloutSpec) -> WavePlan:
    """The waves for ``spec`` over ``sites``; raises ValueError on duplicate site names."""
    names = [s.name for s in sites]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"site(s) listed more than once: {', '.join(dupes)}")
    excluded: list[tuple[str, str]] = []
    eligible: list[SiteState] = []
    for s in sorted(sites, key=lambda s: s.name):
        if s.opted_out:
            excluded.append((s.name, "opted out of rollouts"))
        elif s.current_version == spec.to_version:
            excluded.append((s.name, f"already runs {spec.to_version}"))
        else:
            eligible.append(s)
    eligible.sort(key=lambda s: (not s.reachable or s.in_maintenance, s.name))
    n = len(eligible)
    sizes = list(spec.waves)
    if spec.strategy == "canary":
        sizes = [spec.canary.sites, *sizes]
    targets = _targets(sizes, n) if n else []
    waves, start = [], 0
    for t in targets:
        waves.append(tuple(s.name for s in eligible[start:t]))
        start = t
    max_unavailable = max(1, spec.max_unavailable.resolve(n, round_up=False)) if n else 1
    return WavePlan(tuple(waves), tuple(excluded), max_unavailable)


def plan_waves(sites: Sequence[SiteState], spec: RolloutSpec) -> list[list[str]]:
    """Just the waves, as lists of site names (see :func:`plan` for the excluded sites)."""
    return [list(w) for w in plan(sites, spec).waves]
