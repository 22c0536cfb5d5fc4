"""What a policy revision publishes to agents (pure: bundle + placement in, desired objects out).

Four kinds of desired objects belong to revisions; `fleet apply` replaces the
whole set of them at once. They are listed policies first, placements last, so
within one revision every policy gets a lower version than any placement (and
an agent applies what decides admission before what serves traffic):

- ``SiteLocation``, one per site in the bundle, targeted at that site's nodes:
  the site's country and every jurisdiction that contains it, from the hub's
  Site record. The agent's door decides residency with this, never with its
  own ``--country``/``--jurisdiction`` flags (those may only narrow). It also
  names the site's demand region and the regions it serves, for the demand
  reports (region of origin).

- ``Placement``, one per (site, node) that hosts replicas, targeted at that node
  only, so each agent receives its own assignments and nothing else. Each
  assignment carries what the agent enforces and measures against: the
  service's priority class, data class and SLOs, and the Model version's weights ``digest``
  (or ``integrity: none`` where the spec opts out; see edge_agent/serving/integrity.py); the spec carries the node's
  cost model (GPU price, board power, grid intensity) for cost and carbon per
  request.
- ``ResidencyPolicy``, one per policy, for every node: the agent checks each
  request's data class against it at the door (fail-closed: a class without a
  policy is refused). Jurisdiction containment is expanded here (a policy that
  allows EEA lists EU too) so the agent needs only membership tests.
- ``PriorityClass``, one per class, for every node.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import replace

from hub.placement.model import Placement
from hub.policy.bundle import Bundle
from hub.policy.vocab import COUNTRY_JURISDICTIONS, KNOWN_JURISDICTIONS
from hub.store.repo import DesiredPut

MANAGED_KINDS = ("SiteLocation", "ResidencyPolicy", "PriorityClass", "Placement")
POLICY_KINDS = ("SiteLocation", "ResidencyPolicy", "PriorityClass")
"""The revision-managed kinds that decide admission (what a request may reach); an apply that changes
any of them publishes them in a revision of their own before it plans placements (`hub.revisions`)."""

_COUNTRIES_OF: dict[str, frozenset[str]] = {
    j: frozenset(c for c, js in COUNTRY_JURISDICTIONS.items() if j in js) for j in KNOWN_JURISDICTIONS
}


def expand_jurisdictions(names: Iterable[str]) -> list[str]:
    """Every known jurisdiction wholly inside the union of ``names`` (EEA -> EEA, EU)."""
    covered = frozenset().union(*(_COUNTRIES_OF.get(n, frozenset()) for n in names))
    inside = {j for j, cs in _COUNTRIES_OF.items() if cs and cs <= covered}
    return sorted(inside | set(names))


_SEGMENT = re.compile(r"[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?")


def placement_object_name(site: str, node: str) -> str:
    """The desired-object name of a node's placement: one name per (site, node), never shared.

    ``{site}.{node}`` whenever that can be read back unambiguously: a site without a dot (the
    first dot separates site and node) and both parts valid names. Otherwise (a dotted site, or
    a part that had to be cleaned to lower-case letters, digits, '-' and '.') a digest of the
    exact pair is appended, so ``a.b``/``c`` and ``a``/``b.c``, or ``gpu_A`` and ``gpu-a``, still
    get different names. (The old rule dropped the site when the node began with it, so sites
    ``fra`` and ``fra-1`` both named their node ``fra-1-gpu-b``'s placement ``fra-1-gpu-b``.)
    """
    clean = [re.sub(r"[^a-z0-9.-]+", "-", part.lower()).strip("-.") or "node" for part in (site, node)]
    name = f"{clean[0]}.{clean[1]}"
    if "." in site or not all(_SEGMENT.fullmatch(part) for part in (site, node)):
        digest = hashlib.sha256(f"{site}\0{node}".encode()).hexdigest()[:12]
        name = f"{clean[0][:100]}.{clean[1][:100]}-{digest}"
    return name


def site_location_spec(site: str, spec) -> dict:
    """What an agent at ``site`` is told about where it is (the hub's Site record): its country and
    jurisdictions (residency), its demand region and the regions it serves (the region of origin its
    demand reports may name: ``X-Fleet-Origin-Region`` is checked against them)."""
    return {"site": site, "country": spec.country, "jurisdictions": list(spec.jurisdictions),
            "region": spec.region, "regions": sorted({spec.region, *spec.network_latency})}


def carried_placement(bundle: Bundle, previous: Placement) -> Placement:
    """``previous`` as far as ``bundle`` still has its services and sites: the placements that stay in
    force while ``bundle``'s policies are published ahead of planning (nothing is re-planned here).

    An assignment the new policies forbid is kept: the agent's door refuses its requests (fail-closed)
    until the re-planned revision removes it. One whose service or site the bundle no longer has is
    dropped (it could not be described with ``bundle``'s services and sites)."""
    kept = tuple(a for a in previous.assignments if a.service in bundle.services and a.site in bundle.sites)
    return replace(previous, assignments=kept,
                   unplaced=tuple(u for u in previous.unplaced if u.service in bundle.services))


def desired_objects(bundle: Bundle, placement: Placement) -> list[DesiredPut]:
    """The complete set of revision-managed objects for ``bundle`` placed as ``placement``.

    Policies first (site locations, residency policies, priority classes), placements last."""
    out: list[DesiredPut] = []
    for site in sorted(bundle.sites):
        out.append(DesiredPut("SiteLocation", site, site_location_spec(site, bundle.sites[site].spec), site))
    for name, res in sorted(bundle.residency_policies.items()):
        s = res.spec
        out.append(DesiredPut("ResidencyPolicy", name, {
            "dataClass": s.data_class,
            "description": s.description,
            "allow": {
                "anywhere": s.allow.anywhere,
                "jurisdictions": expand_jurisdictions(s.allow.jurisdictions),
                "countries": sorted(s.allow.countries),
                "sites": sorted(s.allow.sites),
            },
            "deny": {
                "jurisdictions": expand_jurisdictions(s.deny.jurisdictions),
                "countries": sorted(s.deny.countries),
                "sites": sorted(s.deny.sites),
            },
        }))
    for name, pc in sorted(bundle.priority_classes.items()):
        out.append(DesiredPut("PriorityClass", name, {
            "value": pc.spec.value,
            "preemptionPolicy": pc.spec.preemption_policy,
            "sheddable": pc.spec.is_sheddable,
        }))
    for (site, node), spec in placement.agent_specs().items():
        site_spec = bundle.sites[site].spec
        pools = {p.name: p for p in site_spec.gpu_pools}
        for a in spec["assignments"]:
            svc = bundle.services[a["service"]].spec
            a["priorityClass"] = svc.priority_class
            a["dataClass"] = svc.data_class
            a["ttftSloS"] = svc.slo.ttft_p95
            a["tpotSloS"] = svc.slo.tpot_p95
            if svc.slo.e2e_p95 is not None:
                a["e2eSloS"] = svc.slo.e2e_p95
            version = bundle.models[a["model"]].spec.version(a["version"])
            a["integrity"] = version.integrity if version is not None else "sha256"
            if version is not None and version.digest:
                a["digest"] = version.digest
        pool = pools.get(spec["assignments"][0]["pool"]) if spec["assignments"] else None
        spec["costModel"] = {
            "gpuType": pool.gpu_type if pool else "",
            "gpuPricePerHourUsd": pool.price if pool else 0.0,
            "gpuPowerW": pool.power if pool else 0.0,
            "gridGco2PerKwh": site_spec.grid_intensity,
        }
        spec["country"] = site_spec.country
        out.append(DesiredPut("Placement", placement_object_name(site, node), spec, site, node))
    return out
