"""Cross-resource checks over a bundle whose documents are each valid.

Reports, each at the file and line of the offending field:
unknown model / version / priority class; data class without a
ResidencyPolicy; two policies for one data class; policies naming unknown
sites; demand from a region no site can legally serve (naming the policy
that forbids it); SLOs no GPU profile can meet; model versions no GPU pool
in the fleet can hold.
"""

from __future__ import annotations

import math

from hub.placement.perf import PerfProfile, ReplicaCurve, ttft_budget
from hub.placement.residency import ResidencyRule
from hub.policy.bundle import Bundle
from hub.policy.errors import Problem
from hub.policy.schema import ModelVersion, ResidencyPolicy, Service
from hub.policy.units import format_duration, format_memory
from hub.policy.vocab import did_you_mean


def rule_of(policy: ResidencyPolicy) -> ResidencyRule:
    spec = policy.spec
    return ResidencyRule(
        policy=policy.name,
        data_class=spec.data_class,
        anywhere=spec.allow.anywhere,
        allow_jurisdictions=frozenset(spec.allow.jurisdictions),
        allow_countries=frozenset(spec.allow.countries),
        allow_sites=frozenset(spec.allow.sites),
        deny_jurisdictions=frozenset(spec.deny.jurisdictions),
        deny_countries=frozenset(spec.deny.countries),
        deny_sites=frozenset(spec.deny.sites),
    )


def perf_profile(version: ModelVersion, gpu_type: str) -> PerfProfile | None:
    p = version.profile(gpu_type)
    if p is None:
        return None
    return PerfProfile(p.prefill_throughput, p.decode_throughput, p.max_batch, p.tpot_at_batch1)


def _ms(seconds: float) -> str:
    return format_duration(round(seconds, 4)) if math.isfinite(seconds) else "inf"


def cross_validate(
    bundle: Bundle, broken: set[tuple[str, str]] = frozenset(), broken_classes: set[str] = frozenset()  # type: ignore[assignment]
) -> list[Problem]:
    """Cross-resource problems. ``broken`` (kind, name) resources and
    ``broken_classes`` failed their own validation: references to them are
    not reported again, and checks that need them are skipped."""
    problems: list[Problem] = []
    rules: dict[str, ResidencyRule] = {}
    for name in sorted(bundle.residency_policies):
        policy = bundle.residency_policies[name]
        dc = policy.spec.data_class
        if dc in rules:
            problems.append(bundle.problem("ResidencyPolicy", name, ("spec", "dataClass"),
                                           f"data class {dc!r} already has ResidencyPolicy {rules[dc].policy!r}; merge them"))
            continue
        rules[dc] = rule_of(policy)
        for side in ("allow", "deny"):
            for index, site in enumerate(getattr(policy.spec, side).sites):
                if site not in bundle.sites:
                    problems.append(bundle.problem("ResidencyPolicy", name, ("spec", side, "sites", index),
                                                   f"{site!r} is not a known Site{did_you_mean(site, bundle.sites)}"))
    index = _HostIndex(bundle)
    for name in sorted(bundle.services):
        problems.extend(_check_service(bundle, bundle.services[name], rules, broken, broken_classes, index))
    return problems


class _HostIndex:
    """Which sites reach a region, and which pools can hold a model version, each computed once per bundle.

    Without it every demand of every service scanned every pool of the fleet: at 10,000 sites and as many
    services that is 10^8 comparisons before `fleet apply` even plans.
    """

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.reach: dict[str, list[str]] = {}
        for site in bundle.sites.values():  # bundle order, so results keep the order of a plain scan
            for region in site.spec.network_latency:
                self.reach.setdefault(region, []).append(site.name)
        self._hosts: dict[tuple[str, str], dict[str, list]] = {}

    def hosts(self, model: str, version) -> dict[str, list]:
        """Site name -> [(site, pool)] of the pools that fit one replica of ``version``."""
        key = (model, version.name)
        got = self._hosts.get(key)
        if got is None:
            got = self._hosts[key] = {}
            for site in self.bundle.sites.values():
                for pool in site.spec.gpu_pools:
                    if (pool.gpu_type in version.gpu_types
                            and math.ceil(version.gpu_memory_per_replica / pool.memory - 1e-9) <= pool.count):
                        got.setdefault(site.name, []).append((site, pool))
        return got

    def reachable(self, hosts: dict[str, list], region: str) -> list:
        return [hp for name in self.reach.get(region, ()) for hp in hosts.get(name, ())]


def _check_service(
    bundle: Bundle, service: Service, rules: dict[str, ResidencyRule], broken: set, broken_classes: set,
    fleet: _HostIndex,
) -> list[Problem]:
    out: list[Problem] = []
    spec = service.spec

    def at(path: tuple, message: str) -> None:
        out.append(bundle.problem("Service", service.name, path, message))

    if spec.data_class in broken_classes or ("Model", spec.model) in broken:
        return out
    if spec.priority_class not in bundle.priority_classes and ("PriorityClass", spec.priority_class) not in broken:
        at(("spec", "priorityClass"), f"{spec.priority_class!r} is not a known PriorityClass"
           f"{did_you_mean(spec.priority_class, bundle.priority_classes)}")
    rule = rules.get(spec.data_class)
    if rule is None:
        known = sorted(rules)
        at(("spec", "dataClass"), f"data class {spec.data_class!r} has no ResidencyPolicy (fail-closed: it could be "
           f"placed nowhere){did_you_mean(spec.data_class, known)}; add a ResidencyPolicy with dataClass: {spec.data_class}")
    model = bundle.models.get(spec.model)
    if model is None:
        at(("spec", "model"), f"{spec.model!r} is not a known Model{did_you_mean(spec.model, bundle.models)}")
        return out
    version = model.spec.version(spec.version)
    if version is None:
        names = [v.name for v in model.spec.versions]
        at(("spec", "version"), f"model {spec.model!r} has no version {spec.version!r}"
           f"{did_you_mean(spec.version, names) or ' (it has ' + ', '.join(names) + ')'}")
        return out

    if any(kind == "Site" for kind, _ in broken):
        return out  # the fleet is incomplete: reachability would be judged on part of it
    # Model hardware fit anywhere in the fleet.
    hosts = fleet.hosts(spec.model, version)
    if not hosts:
        at(("spec", "version"), f"no GPU pool in the fleet can hold {spec.model} {spec.version}: it runs on "
           f"{', '.join(version.gpu_types)} and needs {format_memory(version.gpu_memory_per_replica)} per replica")
        return out

    for index, demand in enumerate(spec.demand):
        path = ("spec", "demand", index, "region")
        reachable = fleet.reachable(hosts, demand.region)
        if not reachable:
            at(path, f"no site that can run {spec.model} {spec.version} lists networkLatency for region "
               f"{demand.region!r}{did_you_mean(demand.region, {r for s in bundle.sites.values() for r in s.spec.network_latency})}")
            continue
        if rule is None:
            continue
        legal = []
        denials: dict[str, str] = {}
        for site, pool in reachable:
            ok, why = rule.verdict(site.name, site.spec.country, site.spec.jurisdictions)
            if ok:
                legal.append((site, pool))
            else:
                denials[site.name] = why
        if not legal:
            sample = "; ".join(f"{s}: {w}" for s, w in sorted(denials.items())[:3])
            at(path, f"no site can legally serve demand from {demand.region!r} for data class {spec.data_class!r}: "
               f"ResidencyPolicy {rule.policy!r} forbids all {len(denials)} site(s) that reach it ({sample})")
            continue
        best: list[str] = []
        feasible = False
        for gpu_type in version.gpu_types:
            profile = perf_profile(version, gpu_type)
            assert profile is not None
            curve = ReplicaCurve(demand.rate, demand.mean_prompt_tokens, demand.mean_output_tokens, profile, spec.slo.tpot_p95)
            if curve.batch == 0:
                best.append(f"{gpu_type}: TPOT at batch 1 is {_ms(profile.step(1))} > tpotP95 {_ms(spec.slo.tpot_p95)}")
                continue
            rtts = [s.spec.network_latency[demand.region] for s, p in legal if p.gpu_type == gpu_type]
            if not rtts:
                continue
            budget = ttft_budget(curve, spec.slo.ttft_p95, spec.slo.e2e_p95) - min(rtts)
            if curve.replicas(budget) > 0:
                feasible = True
                break
            best.append(f"{gpu_type}: best p95 TTFT {_ms(curve.floor + min(rtts))} (prefill {_ms(curve.floor)} + RTT "
                        f"{_ms(min(rtts))}) exceeds budget {_ms(budget + min(rtts))}")
        if not feasible:
            at(("spec", "slo"), f"impossible SLO for demand from {demand.region!r}: no GPU profile on a legal site can meet it ("
               + "; ".join(best) + ")")
    return out
