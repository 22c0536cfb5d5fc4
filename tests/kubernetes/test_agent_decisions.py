"""The agent's Kubernetes decisions as pure functions: Node -> inventory,
Placement -> Deployment and Service. No API server needed."""

from __future__ import annotations

import pytest

from edge_agent.inventory import Gpu, Inventory
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct

from edge_agent.managed import (
    PlacementError,
    PlacementSpec,
    ServerSettings,
    gpu_request,
    owner_reference,
    render,
    server_name,
)
from edge_agent.node_watch import ERROR_LABEL, inventory_from_node
from edge_agent.state import LocalObject
from tests.kubernetes.agent_harness import GPU_LABELS, assignment, placement

pytestmark = pytest.mark.kubernetes
BASE = Inventory((), "config", "", "DE", "EU", {"rack": "r1"})
MIB = 1024**2


def node(labels: dict, allocatable: str | None = "2", **spec) -> dict:
    return {
        "metadata": {"name": "n", "labels": labels},
        "spec": spec,
        "status": {"allocatable": {"nvidia.com/gpu": allocatable} if allocatable is not None else {}},
    }


def test_gpus_from_labels_and_allocatable() -> None:
    inv = inventory_from_node(node(GPU_LABELS), BASE)
    assert inv.gpus == (Gpu("NVIDIA-L4", 23034 * MIB, 2),)
    assert (inv.source, inv.region, inv.country, inv.jurisdiction) == ("kubernetes", "eu-west", "DE", "EU")
    assert inv.labels == {"rack": "r1", "topology.kubernetes.io/region": "eu-west", "topology.kubernetes.io/zone": "eu-west-a"}
    # Allocatable wins (an unhealthy GPU is not offered), and the gap is noted.
    inv = inventory_from_node(node(GPU_LABELS, "1"), BASE)
    assert inv.gpus[0].count == 1 and inv.labels["fleet.edge/gpus-unallocatable"] == "1"
    # The config's region is the fleet's vocabulary and wins over the cloud's.
    assert inventory_from_node(node(GPU_LABELS), Inventory((), "config", "eu-central")).region == "eu-central"


@pytest.mark.parametrize(
    ("labels", "allocatable", "error"),
    [
        ({**GPU_LABELS, "nvidia.com/gpu.memory": "abc"}, "2", "nvidia.com/gpu.memory 'abc' is not a number"),
        ({**GPU_LABELS, "nvidia.com/gpu.memory": "0"}, "2", "nvidia.com/gpu.memory '0' is not a memory size"),
        ({k: v for k, v in GPU_LABELS.items() if k != "nvidia.com/gpu.memory"}, "2", "nvidia.com/gpu.memory label is missing"),
        ({k: v for k, v in GPU_LABELS.items() if k != "nvidia.com/gpu.product"}, "2", "nvidia.com/gpu.product label is missing"),
        ({**GPU_LABELS, "nvidia.com/gpu.count": "-1"}, None, "nvidia.com/gpu.count '-1' is negative"),
        ({k: v for k, v in GPU_LABELS.items() if k != "nvidia.com/gpu.count"}, None, "no GPU count"),
        (GPU_LABELS, "lots", "allocatable nvidia.com/gpu 'lots' is not a number"),
        ({}, None, "is NVIDIA GPU feature discovery running?"),
    ],
)
def test_bad_labels_are_reported_never_guessed(labels: dict, allocatable: str | None, error: str) -> None:
    inv = inventory_from_node(node(labels, allocatable), BASE)
    assert inv.gpus == ()
    assert error in inv.labels[ERROR_LABEL]


def test_cordon_taint_and_deleted_node() -> None:
    assert inventory_from_node(node(GPU_LABELS, unschedulable=True), BASE).unschedulable
    taint = [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]
    assert inventory_from_node(node(GPU_LABELS, taints=taint), BASE).unschedulable
    assert not inventory_from_node(node(GPU_LABELS), BASE).unschedulable
    gone = inventory_from_node(None, BASE, "n")
    assert gone.unschedulable and gone.gpus == () and "does not exist" in gone.labels[ERROR_LABEL]


SETTINGS = ServerSettings("ns", "fra-1", "gpu-node-1", "vllm/vllm-openai:v0.11.0")


def obj(spec: dict, version: int = 3) -> LocalObject:
    """What the agent holds: numbers arrive as floats from protobuf Structs."""
    s = Struct()
    s.update(spec)
    return LocalObject("6f1c2c1e-9d7a-4a51-8d0a-0123456789ab", "Placement", "fra-1-gpu-node-1", version,
                       json_format.MessageToDict(s))


def test_one_deployment_and_service_per_assignment_pinned_with_the_gpu_request() -> None:
    long_name = "Assistant EU/long name " * 3
    o = obj(placement("gpu-node-1", assignment("gpu-node-1", long_name, replicas=2, gpus=2, site="fra-1"),
                      assignment("gpu-node-1", "coder", model="coder", version="v1", replicas=1, site="fra-1"),
                      site="fra-1"))
    spec = PlacementSpec.from_object(o, "gpu-node-1")
    assert [(s.service, s.model, s.version, s.replicas, s.gpus_per_replica) for s in spec.servers] == [
        (long_name, "assistant", "v3", 2, 2), ("coder", "coder", "v1", 1, 1)]
    owner = {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "a", "uid": "u"}
    rendered = [render(o, s, SETTINGS, owner) for s in spec.servers]
    (dep, svc), (dep2, svc2) = rendered
    name = server_name(o, spec.servers[0])
    assert len(name) <= 63 and name[0].isalpha() and name == name.lower() and dep["metadata"]["name"] == svc["metadata"]["name"] == name
    assert name != dep2["metadata"]["name"] == svc2["metadata"]["name"]
    assert dep["spec"]["replicas"] == 2 and isinstance(dep["spec"]["replicas"], int)
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"] == c["resources"]["requests"] == {"nvidia.com/gpu": "2"}
    assert c["args"][:6] == ["--model", "assistant", "--revision", "v3", "--served-model-name", "assistant"]
    assert c["args"][c["args"].index("--tensor-parallel-size") + 1] == "2"
    assert dep2["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    term = dep["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["nodeSelectorTerms"][0]["matchFields"] == [{"key": "metadata.name", "operator": "In", "values": ["gpu-node-1"]}]
    assert dep["metadata"]["labels"]["fleet.edge/placement"] == o.id
    assert dep["metadata"]["ownerReferences"][0]["kind"] == "DaemonSet"
    for d, s in rendered:
        assert s["spec"]["selector"] == d["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["selector"] != svc2["spec"]["selector"], "each Service selects its own assignment's pods"
    # A new version of the same assignment updates the same Deployment (a rolling update).
    v4 = obj(placement("gpu-node-1", assignment("gpu-node-1", long_name, replicas=2, gpus=2, site="fra-1", version="v4"),
                       site="fra-1"), version=4)
    (s4,) = PlacementSpec.from_object(v4, "gpu-node-1").servers
    dep4, _ = render(v4, s4, SETTINGS, owner)
    assert dep4["metadata"]["name"] == name and dep4["spec"]["selector"] == dep["spec"]["selector"]
    assert dep4["spec"]["template"] != dep["spec"]["template"]


SHARED = {"metadata": {"labels": {}}, "status": {"allocatable": {"nvidia.com/gpu": "2", "nvidia.com/gpu.shared": "8"}}}
SLICED = {"metadata": {"labels": {"nvidia.com/gpu.replicas": "4"}}, "status": {"allocatable": {"nvidia.com/gpu": "8"}}}
WHOLE = {"metadata": {"labels": {}}, "status": {"allocatable": {"nvidia.com/gpu": "2"}}}


@pytest.mark.parametrize(("node", "resource", "memory", "rounded"), [
    (SHARED, "nvidia.com/gpu.shared", "0.45", False),
    (SLICED, "nvidia.com/gpu", "0.45", False),
    (WHOLE, "nvidia.com/gpu", None, True),
    (None, "nvidia.com/gpu", None, True),
])
def test_a_gpu_share_takes_a_slice_where_the_node_offers_one_else_a_whole_gpu(node, resource, memory, rounded) -> None:
    o = obj(placement("gpu-node-1", assignment("gpu-node-1", share=0.5, replicas=2, site="fra-1"), site="fra-1"))
    (server,) = PlacementSpec.from_object(o, "gpu-node-1").servers
    gpu = gpu_request(server, node)
    dep, _ = render(o, server, SETTINGS, None, gpu)
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"] == c["resources"]["requests"] == {resource: "1"}
    args = c["args"]
    if memory:
        assert args[args.index("--gpu-memory-utilization") + 1] == memory
    else:
        assert "--gpu-memory-utilization" not in args
    note = dep["metadata"]["annotations"]["fleet.edge/gpu-share"]
    assert ("rounded up to one whole nvidia.com/gpu" in note) == rounded and bool(gpu.note) == rounded
    assert "ownerReferences" not in dep["metadata"]


def _one(**change) -> dict:
    spec = placement("gpu-node-1", assignment("gpu-node-1", site="fra-1"), site="fra-1")
    spec["assignments"][0].update(change)
    return spec


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (_one(gpusPerReplica=0), "spec.assignments[0].gpusPerReplica 0"),
        (_one(replicas=1.5), "spec.assignments[0].replicas 1.5 must be a whole number"),
        (_one(node="elsewhere"), "spec.assignments[0] is for node 'elsewhere'"),
        ({**_one(), "node": "elsewhere"}, "is for node 'elsewhere'"),
        (_one(model=""), "spec.assignments[0].model is missing"),
        (_one(version=""), "spec.assignments[0].version is missing"),
        (_one(gpuShare=1.5), "spec.assignments[0].gpuShare 1.5"),
        ({k: v for k, v in _one().items() if k != "assignments"}, "spec.assignments is missing"),
        ({**_one(), "assignments": _one()["assignments"] * 2}, "repeats assignment assistant-eu/eu-central/0"),
        ({"service": "s", "model": "m", "node": "gpu-node-1", "replicas": 1, "gpusPerReplica": 1}, "spec.assignments is missing"),
    ],
)
def test_placements_this_node_cannot_serve_are_refused(spec: dict, message: str) -> None:
    with pytest.raises(PlacementError) as err:
        PlacementSpec.from_object(obj(spec), "gpu-node-1")
    assert message in str(err.value)


def test_owner_is_the_pods_controller() -> None:
    ds = {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "edge-fleet-agent", "uid": "d1", "controller": True}
    pod = {"metadata": {"name": "p", "uid": "p1", "ownerReferences": [ds]}}
    assert owner_reference(pod) == {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "edge-fleet-agent", "uid": "d1"}
    assert owner_reference({"metadata": {"name": "p", "uid": "p1"}})["kind"] == "Pod"


def test_only_the_adapter_imports_the_kubernetes_client() -> None:
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "edge_agent"
    offenders = []
    for path in root.rglob("*.py"):
        for n in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""] if isinstance(n, ast.ImportFrom) else []
            if any(m == "kubernetes" or m.startswith("kubernetes.") for m in names) and path.name != "kube.py":
                offenders.append(str(path.relative_to(root)))
    assert not offenders, f"only edge_agent/kube.py may import the kubernetes client: {offenders}"


def test_an_in_process_agent_offers_only_the_gpus_its_pod_holds() -> None:
    from edge_agent.inventory import held_by_pod, pod_gpus

    pod = {"spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": "1"}}}, {"name": "sidecar"}]}}
    assert pod_gpus(pod) == 1 and pod_gpus({"spec": {"containers": [{}]}}) == 0
    inv = inventory_from_node(node(GPU_LABELS), BASE)
    capped = held_by_pod(inv, 1)
    assert capped.gpus == (Gpu("NVIDIA-L4", 23034 * MIB, 1),) and capped.labels["fleet.edge/gpus-not-held"] == "1"
    assert held_by_pod(inv, 0).gpus == () and held_by_pod(inv, 0).labels["fleet.edge/gpus-not-held"] == "2"
    assert held_by_pod(inv, 2) is inv and held_by_pod(inv, None) is inv
