"""What the rollout controller sees of the fleet, and how a version switch becomes a placement (pure).

- :func:`switch` turns the current placement into one where a service runs
  another version at some sites, and refuses the sites where that placement
  would break a hard constraint of the *current* revision (GPU type the
  version runs on, memory fit, residency), with the reason.
- :func:`with_service_version` is the bundle with a service moved to a
  version (what the last revision of a completed rollout stores, so a later
  ``fleet apply`` plans from it).
- :func:`site_facts` derives, per site of the service, the machine's
  :class:`~hub.rollout.machine.SiteFacts` from store records: reachable
  (any node of the site not Unreachable), the applied version (every node
  of the site acknowledged its current Placement object), maintenance
  (the Site's ``maintenanceWindows``) and opt-out (label
  ``fleet.edge/rollouts: opt-out`` on the Site's metadata or spec).
- :func:`telemetry` selects a service's traffic per site and version from
  stored ``telemetry`` payloads for the gates.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Optional

from hub.placement.build import problem_from_bundle
from hub.placement.model import Placement
from hub.placement.verify import violations
from hub.policy import Bundle
from hub.rollout.gates import RELATIVE_ACCURACY, TrafficStats
from hub.rollout.machine import SiteFacts
from hub.rollout.plan import SiteState
from hub.store.repo import AppliedRecord, NodeRecord, ObjectRecord
from hub.sync import LivenessPolicy, Phase, phase

OPT_OUT_LABEL = "fleet.edge/rollouts"
"""Site label; the value ``opt-out`` keeps rollouts away from the site (it is updated by hand)."""


def service_sites(placement: Placement, service: str) -> dict[str, list[str]]:
    """site -> nodes that run ``service`` in ``placement``."""
    out: dict[str, list[str]] = {}
    for a in placement.assignments:
        if a.service == service and a.node not in out.setdefault(a.site, []):
            out[a.site].append(a.node)
    return out


def site_versions(placement: Placement, service: str) -> dict[str, str]:
    """site -> the version ``placement`` gives the service there (the first assignment's)."""
    out: dict[str, str] = {}
    for a in placement.assignments:
        if a.service == service:
            out.setdefault(a.site, a.version)
    return out


def with_service_version(bundle: Bundle, service: str, version: str, validate: bool = True) -> Bundle:
    """``bundle`` with Service ``service`` at ``version``: validated again as a whole, or (``validate=False``)
    copied with only that Service changed (for checking a placement that fleet-wide validation would
    refuse, or for a version the rollout already checked)."""
    svc = bundle.services[service]
    if validate:
        items = bundle.to_canonical()
        for item in items:
            if item["kind"] == "Service" and item["metadata"]["name"] == service:
                item["spec"]["version"] = version
        return Bundle.from_json(json.dumps(items, sort_keys=True, separators=(",", ":")))
    moved = svc.model_copy(update={"spec": svc.spec.model_copy(update={"version": version})})
    return Bundle(sites=bundle.sites, models=bundle.models, services={**bundle.services, service: moved},
                  residency_policies=bundle.residency_policies, priority_classes=bundle.priority_classes)


@dataclass(frozen=True)
class Switched:
    placement: Placement
    refused: Mapping[str, str]
    """site -> why the version may not run there (the site keeps its version)."""
    changed: bool
    """Whether the placement differs from the one it was made from."""


def switch(bundle: Bundle, placement: Placement, service: str, version: str, sites: Iterable[str],
           at: datetime, check: bool = True, problems: Optional[dict] = None) -> Switched:
    """``placement`` with ``service`` at ``version`` on ``sites``, minus the sites where that breaks a constraint.

    Only the assignments on ``sites`` are checked (with everything else on those sites, for memory and
    compute fit): a constraint broken before the switch is not the rollout's doing and is ignored.
    ``problems`` caches the placement problems per (bundle digest, version) across calls.
    """
    wanted = set(sites)
    spec = bundle.services[service].spec
    mv = bundle.models[spec.model].spec.version(version)
    if mv is None:
        raise ValueError(f"model {spec.model} has no version {version!r}")

    def apply(on: set[str], base: Placement) -> Placement:
        return replace(base, assignments=tuple(
            replace(a, version=version, memory_per_replica=float(mv.gpu_memory_per_replica))
            if a.service == service and a.site in on else a
            for a in base.assignments))

    refused: dict[str, str] = {}
    if check and wanted:
        cache = problems if problems is not None else {}
        if len(cache) > 64:
            cache.clear()
        digest = bundle.digest() if problems is None else cache.setdefault(("digest", id(bundle)), bundle.digest())
        minute = at.replace(second=0, microsecond=0)  # maintenance windows: minute resolution is plenty
        key_old, key_new = (digest, spec.version, minute), (digest, version, minute)
        if key_old not in cache:
            cache[key_old] = problem_from_bundle(bundle, at=at)
        if key_new not in cache:
            cache[key_new] = problem_from_bundle(with_service_version(bundle, service, version, validate=False), at=at)
        local = replace(placement, assignments=tuple(a for a in placement.assignments if a.site in wanted))
        before = set(violations(cache[key_old], local))
        after = violations(cache[key_new], apply(wanted, local))
        prefixes = {f"{a.service}/{a.region}#{a.shard} at {a.site}/": a.site
                    for a in local.assignments if a.service == service}
        for msg in after:
            if msg in before or "site unavailable" in msg:
                continue  # maintenance is the rollout's own business (deferred sites)
            for prefix, site in prefixes.items():
                if msg.startswith(prefix) or msg.startswith(f"('{site}',"):
                    what, _, why = msg.partition(": ")
                    refused.setdefault(site, f"{why} ({what})" if why else msg)
    out = apply(wanted - set(refused), placement)
    return Switched(out, refused, out != placement)


def site_states(bundle: Bundle, placement: Placement, service: str, facts: Mapping[str, SiteFacts]) -> list[SiteState]:
    """The planner's view of the service's sites."""
    versions = site_versions(placement, service)
    return [SiteState(site, f.reachable, f.opted_out, f.in_maintenance, versions.get(site), f.has_agent)
            for site, f in sorted(facts.items())]


def opted_out(bundle: Bundle, site: str) -> bool:
    res = bundle.sites.get(site)
    if res is None:
        return False
    return OPT_OUT_LABEL in res.metadata.labels and res.metadata.labels[OPT_OUT_LABEL] == "opt-out" \
        or res.spec.labels.get(OPT_OUT_LABEL) == "opt-out"


def site_facts(
    bundle: Bundle, placement: Placement, service: str, *, nodes: Sequence[NodeRecord],
    objects: Sequence[ObjectRecord], applied: Sequence[AppliedRecord], now: datetime, liveness: LivenessPolicy,
    versions: tuple[str, str] = ("", ""),
) -> dict[str, SiteFacts]:
    """Facts per site that runs ``service``. ``versions`` = (from, to). A site runs a version when every
    node of it acknowledged a Placement giving it that version; a node given ``to`` that has not
    acknowledged it yet still runs ``from``; any other unacknowledged state is unknown (None)."""
    by_node = {(n.site, n.node): n for n in nodes}
    obj_of = {(o.target_site, o.target_node): o for o in objects if o.kind == "Placement" and not o.deleted}
    acked = {(a.node_id, a.object_id): a for a in applied}
    out: dict[str, SiteFacts] = {}
    for site, site_nodes in service_sites(placement, service).items():
        reachable = has_agent = False
        running: set[Optional[str]] = set()
        for node in site_nodes:
            rec = by_node.get((site, node))
            obj = obj_of.get((site, node))
            has_agent = has_agent or rec is not None
            if rec is not None and phase(rec.last_seen, now, rec.connected, liveness) is not Phase.UNREACHABLE:
                reachable = True
            desired = None
            if obj is not None:
                desired = next((a["version"] for a in obj.spec.get("assignments", ()) if a.get("service") == service),
                               None)
            ack = acked.get((rec.id, obj.id)) if rec is not None and obj is not None else None
            if desired is not None and ack is not None and ack.ok and ack.version >= obj.version:
                running.add(desired)
            elif versions[1] and desired == versions[1] and rec is not None:
                running.add(versions[0])  # given the new version, not applied yet: still on the old one
            else:
                running.add(None)  # reverting, or never acknowledged: the hub cannot tell
        version = running.pop() if len(running) == 1 else None
        spec = bundle.sites[site].spec if site in bundle.sites else None
        out[site] = SiteFacts(
            reachable=reachable,
            applied_version=version or None,
            in_maintenance=bool(spec is not None and spec.in_maintenance(now) is not None),
            opted_out=opted_out(bundle, site),
            has_agent=has_agent,
        )
    return out


def decode_report(payload: object, model: str, since: Mapping[str, datetime]) -> list[tuple]:
    """The parts of one telemetry payload the gates use: [(version, requests, errors, [ttft, itl, tpot])] for the
    groups of ``model`` whose version is in ``since`` and whose window ends after it. Same rules as
    :func:`hub.report.build_report` (counted when ``since < windowEnd``; a payload that does not parse is
    skipped whole), but only the gates' sketches are decoded: a 1000-site gate reads thousands of payloads.
    """
    from hub.report.telemetry import SCHEMA, PayloadError, decode_sketch

    if not isinstance(payload, dict) or payload.get("schema") != SCHEMA:
        return []
    try:
        end = datetime.fromisoformat(str(payload["windowEnd"]).replace("Z", "+00:00"))
        if end.tzinfo is None:
            return []
        parts = []
        for g in payload.get("groups", ()):
            if not isinstance(g, dict) or g.get("model") != model or g.get("version") not in since:
                continue
            version = g["version"]
            if end <= since[version]:
                continue
            sk = g.get("sketches") or {}
            decoded = [decode_sketch(sk[k]) if k in sk else None for k in ("ttftS", "itlS", "tpotS")]
            requests, errors = int(g["requests"]), int(g.get("errors", 0))
            if requests < 0 or errors < 0:
                raise PayloadError("negative counts")
            parts.append((version, requests, errors, decoded))
        return parts
    except (KeyError, TypeError, ValueError):
        return []  # skipped whole, as the report does


def aggregate(decoded: Iterable[tuple[str, list[tuple]]],
              acc: Optional[dict] = None) -> dict[str, dict[str, TrafficStats]]:
    """site -> version -> merged :class:`TrafficStats` from (site, :func:`decode_report` parts).

    ``acc`` (site, version) -> running totals may be kept by the caller to add reports as they arrive;
    the stats returned share its sketches (read them before adding more).
    """
    from ddsketch import DDSketch

    acc = {} if acc is None else acc
    for site, parts in decoded:
        for version, requests, errors, sketches in parts:
            a = acc.get((site, version))
            if a is None:
                a = acc[(site, version)] = [0, 0, *(DDSketch(RELATIVE_ACCURACY) for _ in range(3))]
            a[0] += requests
            a[1] += errors
            for target, part in zip(a[2:], sketches):
                if part is not None:
                    target.merge(part)
    result: dict[str, dict[str, TrafficStats]] = {}
    for (site, version), (requests, errors, ttft, itl, tpot) in acc.items():
        result.setdefault(site, {})[version] = TrafficStats(requests, errors, ttft, itl, tpot)
    return result


def telemetry(payloads: Iterable[tuple[str, str, dict]], model: str, new: str, old: str, new_since: datetime,
              old_since: datetime, sites: Optional[set[str]] = None) -> dict[str, dict[str, TrafficStats]]:
    """site -> version -> traffic of ``model``: the new version in windows ending after ``new_since`` (the
    soak), the old version after ``old_since`` (the canary's baseline on the same sites, before and during
    the switch). ``payloads`` are (verified site, node, payload): the verified identity wins."""
    since = {new: new_since, old: old_since}
    return aggregate((site, decode_report(p, model, since)) for site, _node, p in payloads
                     if sites is None or site in sites)
