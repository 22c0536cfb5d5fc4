"""A small, plain fleet for rollout tests, the chaos test, the benchmark and the demo (pure but for ``seed``).

Every site has one node with one L4 and its own demand region, so the
service runs one replica on every site; the placement is built directly
(one assignment per site), not planned, so a fleet of 1000 sites is ready
in a second. The model ``assistant`` has versions ``v1`` (the service's
current one), ``v2`` (a good successor), ``v2-slow`` (same weights, slower
kernels) and ``v2-a100`` (runs on A100 only: the placement check refuses it
on L4 sites).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import yaml

from hub.placement.model import Assignment, Placement
from hub.policy import Bundle
from hub.policy.loader import load_bundle_text
from hub.publish import MANAGED_KINDS, desired_objects
from hub.store import Store
from hub.store.repo import RevisionRecord

SERVICE = "chat"
MODEL = "assistant"


def node_of(site: str) -> str:
    return f"{site}-gpu"


def _profile(gpu: str, slow: float = 1.0) -> dict:
    return {"gpuType": gpu, "prefillThroughput": f"{int(3000 / slow)}tok/s",
            "decodeThroughput": f"{int(480 / slow)}tok/s", "maxBatch": 16, "tpotAtBatch1": f"{int(27 * slow)}ms"}


def fleet_documents(sites: Sequence[str], *, version: str = "v1", site_extra: Mapping[str, dict] | None = None,
                    ttft_slo: str = "500ms", tpot_slo: str = "50ms") -> list[dict]:
    docs: list[dict] = []
    extra = site_extra or {}
    for s in sites:
        doc = {"apiVersion": "fleet.edge/v1alpha1", "kind": "Site", "metadata": {"name": s, "labels": {}},
               "spec": {"region": f"r-{s}", "country": "DE", "gridIntensity": "344gCO2e/kWh",
                        "networkLatency": {f"r-{s}": "5ms"},
                        "gpuPools": [{"name": "gpu", "node": node_of(s), "gpuType": "L4", "count": 1,
                                      "memory": "24GB", "price": "$0.85/h", "power": "72W"}]}}
        more = extra.get(s, {})
        doc["metadata"]["labels"].update(more.get("labels", {}))
        doc["spec"].update(more.get("spec", {}))
        docs.append(doc)
    docs.append({"apiVersion": "fleet.edge/v1alpha1", "kind": "Model", "metadata": {"name": MODEL}, "spec": {
        "versions": [
            {"name": "v1", "integrity": "none", "weightSize": "8GiB", "gpuMemoryPerReplica": "12GiB", "profiles": [_profile("L4")]},
            {"name": "v2", "integrity": "none", "weightSize": "8GiB", "gpuMemoryPerReplica": "12GiB", "profiles": [_profile("L4")]},
            {"name": "v2-slow", "integrity": "none", "weightSize": "8GiB", "gpuMemoryPerReplica": "12GiB",
             "profiles": [_profile("L4", 1.6)]},
            {"name": "v2-a100", "integrity": "none", "weightSize": "8GiB", "gpuMemoryPerReplica": "12GiB",
             "profiles": [_profile("A100-80GB")]},
        ]}})
    docs.append({"apiVersion": "fleet.edge/v1alpha1", "kind": "Service", "metadata": {"name": SERVICE}, "spec": {
        "model": MODEL, "version": version, "slo": {"ttftP95": ttft_slo, "tpotP95": tpot_slo},
        "demand": [{"region": f"r-{s}", "rate": "1rps", "meanPromptTokens": 100, "meanOutputTokens": 50}
                   for s in sites],
        "priorityClass": "interactive", "dataClass": "public"}})
    docs.append({"apiVersion": "fleet.edge/v1alpha1", "kind": "ResidencyPolicy", "metadata": {"name": "anywhere"},
                 "spec": {"dataClass": "public", "allow": {"anywhere": True}}})
    docs.append({"apiVersion": "fleet.edge/v1alpha1", "kind": "PriorityClass", "metadata": {"name": "interactive"},
                 "spec": {"value": 1000}})
    return docs


def fleet_yaml(sites: Sequence[str], **kw) -> str:
    return yaml.safe_dump_all(fleet_documents(sites, **kw), sort_keys=False)


def fleet_bundle(sites: Sequence[str], **kw) -> Bundle:
    return load_bundle_text(fleet_yaml(sites, **kw), "synthetic-fleet.yaml")


def one_per_site(bundle: Bundle, service: str = SERVICE) -> Placement:
    """One replica of ``service`` on every site's L4 (no planner: the benchmark needs 1000 sites fast)."""
    spec = bundle.services[service].spec
    mv = bundle.models[spec.model].spec.version(spec.version)
    assert mv is not None
    out = []
    for d in spec.demand:
        site = d.region.removeprefix("r-")
        out.append(Assignment(
            service=service, region=d.region, shard=0, shards=1, model=spec.model, version=spec.version, site=site,
            pool="gpu", node=node_of(site), gpu_type="L4", replicas=1, gpus_per_replica=1,
            memory_per_replica=float(mv.gpu_memory_per_replica), gpus=((0,),), gpu_share=0.5, rate=d.rate,
            rtt=0.005, ttft_p95=0.2, tpot_p95=0.03, residency="anywhere"))
    return Placement(tuple(out), solver="synthetic")


async def seed(store: Store, bundle: Bundle, now: datetime, author: str = "test") -> RevisionRecord:
    """Store ``bundle`` placed one replica per site as the next revision, and publish it."""
    placement = one_per_site(bundle)
    latest = await store.get_revision()
    published = await store.add_revision(
        author=author, message="synthetic fleet", digest=bundle.digest(), bundle=bundle.to_json(),
        placement=placement.to_spec(), summary={"replicas": len(placement.assignments)},
        objects=desired_objects(bundle, placement), managed_kinds=MANAGED_KINDS,
        base=latest.number if latest else 0, now=now)
    return published.revision
