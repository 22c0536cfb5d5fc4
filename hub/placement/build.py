"""Turn a validated policy bundle into a placement :class:`Problem`."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Mapping, Optional

from hub.placement.model import Placement, Pool, Problem, SiteInfo, Weights, Workload
from hub.policy.bundle import Bundle
from hub.policy.validate import perf_profile, rule_of


def problem_from_bundle(
    bundle: Bundle,
    at: Optional[dt.datetime] = None,
    previous: Optional[Placement] = None,
    weights: Weights = Weights(),
    unschedulable: Optional[Mapping[tuple[str, str], str]] = None,
    reported_gpus: Optional[Mapping[tuple[str, str], int]] = None,
) -> Problem:
    """Sites (with availability at time ``at``, default now UTC), workloads
    (one per service and demand region) and residency rules of ``bundle``.

    ``unschedulable`` maps (site, node) to why that node takes no placements
    right now (e.g. cordoned in Kubernetes, as its agent reported); its pools
    are left out like a cordoned site.

    ``reported_gpus`` maps (site, node) to the GPUs its agent reports (see :func:`cap_pools`);
    nodes not in it are taken as declared.
    """
    unschedulable = unschedulable or {}
    at = at or dt.datetime.now(dt.timezone.utc)
    sites = []
    for name in sorted(bundle.sites):
        spec = bundle.sites[name].spec
        unavailable = None
        if spec.cordoned:
            unavailable = "site is cordoned"
        else:
            window = spec.in_maintenance(at)
            if window is not None:
                unavailable = (f"in maintenance {window.start.isoformat()} to {window.end.isoformat()}"
                               + (f" ({window.reason})" if window.reason else ""))
        pools = cap_pools(tuple(
            Pool(site=name, name=p.name, node=p.node_name, gpu_type=p.gpu_type, count=p.count,
                 memory=p.memory, price=p.price, power=p.power,
                 unavailable=unschedulable.get((name, p.node_name)))
            for p in spec.gpu_pools
        ), reported_gpus or {})
        sites.append(SiteInfo(name=name, region=spec.region, country=spec.country,
                              jurisdictions=spec.jurisdictions, intensity=spec.grid_intensity,
                              latency=dict(spec.network_latency), pools=pools, unavailable=unavailable))
    workloads = []
    for name in sorted(bundle.services):
        spec = bundle.services[name].spec
        version = bundle.models[spec.model].spec.version(spec.version)
        assert version is not None  # guaranteed by validation
        pclass = bundle.priority_classes[spec.priority_class].spec
        profiles = {gt: perf_profile(version, gt) for gt in version.gpu_types}
        for demand in spec.demand:
            workloads.append(Workload(
                service=name, region=demand.region, model=spec.model, version=spec.version,
                rate=demand.rate, prompt_tokens=demand.mean_prompt_tokens, output_tokens=demand.mean_output_tokens,
                ttft_slo=spec.slo.ttft_p95, tpot_slo=spec.slo.tpot_p95, e2e_slo=spec.slo.e2e_p95,
                priority=pclass.value, sheddable=pclass.is_sheddable, data_class=spec.data_class,
                memory=version.gpu_memory_per_replica, profiles=profiles,  # type: ignore[arg-type]
            ))
    rules = {p.spec.data_class: rule_of(p) for p in bundle.residency_policies.values()}
    return Problem(tuple(sites), tuple(workloads), rules, weights, previous)


def cap_pools(pools: tuple[Pool, ...], reported: Mapping[tuple[str, str], int]) -> tuple[Pool, ...]:
    """``pools`` with no more GPUs per node than its agent reports (pure).

    A Site may declare 8 GPUs on a node whose agent sees 2 (a failed board, a pod that holds
    fewer, a typo in the YAML): placing on the 6 others would start replicas that never run.
    The node's reported GPUs are shared out over its pools in declaration order; a pool left
    with none is unavailable (with the reason), one left with fewer keeps the declared number in
    ``declared`` so the plan and ``fleet explain`` say why. A node absent from ``reported``
    (its agent never connected) is taken as declared.
    """
    out = []
    left: dict[tuple[str, str], int] = {}
    for p in pools:
        key = (p.site, p.node)
        if key not in reported:
            out.append(p)
            continue
        have = left.setdefault(key, max(0, int(reported[key])))
        if have >= p.count:
            left[key] = have - p.count
            out.append(p)
        elif have == 0:
            out.append(dataclasses.replace(
                p, unavailable=p.unavailable or f"its agent on node {p.node} reports no GPUs for this pool "
                                                f"(the Site declares {p.count})"))
        else:
            left[key] = 0
            out.append(dataclasses.replace(p, count=have, declared=p.count))
    return tuple(out)
