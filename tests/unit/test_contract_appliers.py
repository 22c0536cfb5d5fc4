"""Contract: every agent applier accepts what the hub publishes.

The input comes from the real producer: the shipped fleet (`fleet_configs/`
+ `policies/`) planned by the real planner as `fleet apply` does, turned into
desired objects by `hub.publish.desired_objects`, and carried across the wire
the way the hub link carries them (a protobuf Struct, so whole numbers arrive
as floats). Each object goes to the applier of its kind in every agent mode:
the in-process serving appliers (`edge_agent.serving.appliers`), the
Kubernetes external-runtime applier (`edge_agent.managed`), and the door in
front of it (`edge_agent.managed_door`). Hand-made specs hid that the
external applier read a flat shape the hub never sends.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct

from edge_agent.managed import ManagedServers, PlacementSpec, ServerSettings, render
from edge_agent.managed_door import ManagedPlacements, backend_factory
from edge_agent.serving.appliers import PlacementApplier, appliers
from edge_agent.serving.gateway import Gateway
from edge_agent.serving.models import ModelRegistry, external_factory
from edge_agent.serving.residency import Location
from edge_agent.serving.telemetry import Telemetry
from edge_agent.state import LocalObject
from hub.placement.api import plan
from hub.policy import load_bundle
from hub.publish import desired_objects
from hub.store.repo import DesiredPut

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def published() -> list[DesiredPut]:
    bundle = load_bundle([ROOT / "fleet_configs", ROOT / "policies"])
    result = plan(bundle)  # fleet apply's default solver ("auto")
    assert result.placement.assignments, "the shipped fleet places nothing: the contract would be vacuous"
    return desired_objects(bundle, result.placement)


def over_the_wire(put: DesiredPut, version: int = 1) -> LocalObject:
    """What an agent holds after the hub link delivered `put` (edge_agent/link.py)."""
    s = Struct()
    s.update(put.spec)
    return LocalObject(f"id-{put.kind}-{put.name}", put.kind, put.name, version, json_format.MessageToDict(s))


def placements(published: list[DesiredPut]) -> list[DesiredPut]:
    out = [p for p in published if p.kind == "Placement"]
    assert out
    return out


class NoKube:
    """Appliers must not call the API server (they run on the hub link's loop)."""

    def __getattr__(self, name: str):
        raise AssertionError(f"an applier called Kube.{name}")


def test_the_hub_publishes_several_assignments_to_some_node(published: list[DesiredPut]) -> None:
    """The shape the appliers must take: one Placement per node, possibly several assignments."""
    assert max(len(p.spec["assignments"]) for p in placements(published)) > 1


def test_in_process_serving_appliers_accept_every_published_object(published: list[DesiredPut]) -> None:
    for put in published:
        # The serving layer's --external-url mode: same appliers, and its backends load nothing.
        registry = ModelRegistry(external_factory("http://127.0.0.1:9"), put.target_node or "n", "DE")
        gateway = Gateway(Location(put.target_site or "s", "DE", "EU"), registry, Telemetry("s", "n"), lambda k, p: None)
        table = appliers(gateway)  # the agent's own table: a kind it has no applier for fails here
        assert put.kind in table, f"the agent has no applier for {put.kind} objects the hub publishes"
        applier = table[put.kind]
        obj = over_the_wire(put)
        applier.apply(obj, None)
        if put.kind == "Placement":
            served = {(a.service, a.model, a.version) for a in registry.assignments()}
            assert served == {(a["service"], a["model"], a["version"]) for a in put.spec["assignments"]}, put.name
        registry.close()


def _managed(node: str) -> ManagedServers:
    return ManagedServers(NoKube(), ServerSettings("ns", "site", node, "vllm/vllm-openai:v0.11.0"))  # type: ignore[arg-type]


def test_the_kubernetes_applier_accepts_every_published_placement(published: list[DesiredPut]) -> None:
    for put in placements(published):
        obj = over_the_wire(put, version=3)
        managed = _managed(put.target_node)
        managed.apply(obj, None)  # raised "spec.service is missing" on the flat-spec reader
        assert set(managed.desired()) == {obj.id}
        spec = PlacementSpec.from_object(obj, put.target_node)
        assert len(spec.servers) == len(put.spec["assignments"])
        names = set()
        for server, a in zip(spec.servers, put.spec["assignments"], strict=True):
            dep, svc = render(obj, server, managed.settings, None)
            names.add(dep["metadata"]["name"])
            container = dep["spec"]["template"]["spec"]["containers"][0]
            assert dep["spec"]["replicas"] == a["replicas"]
            assert container["args"][:4] == ["--model", a["model"], "--revision", a["version"]]
            gpus = container["resources"]["limits"]
            assert gpus == container["resources"]["requests"]
            assert gpus == {"nvidia.com/gpu": str(a["gpusPerReplica"] if a["gpuShare"] >= 1 else 1)}
            assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
        assert len(names) == len(spec.servers), "one Deployment and Service per assignment"


def test_the_kubernetes_door_accepts_every_published_placement(published: list[DesiredPut]) -> None:
    for put in placements(published):
        managed = _managed(put.target_node)
        registry = ModelRegistry(backend_factory(managed), put.target_node, "DE")
        applier = ManagedPlacements(managed, PlacementApplier(registry))
        obj = over_the_wire(put)
        applier.apply(obj, None)
        assert {(a.model, a.version) for a in registry.assignments()} == {
            (a["model"], a["version"]) for a in put.spec["assignments"]}
        applier.remove(obj)
        assert not managed.desired() and not registry.assignments()
        registry.close()
