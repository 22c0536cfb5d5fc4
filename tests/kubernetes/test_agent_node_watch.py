"""The agent's inventory from its own Node on a real kube-apiserver, reported
through a real hub: GPU labels, malformed labels, cordon/uncordon latency,
health endpoints, and a watch that survives an API-server restart."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from tests.kubernetes.agent_harness import Fleet, create_gpu_node, eventually, http_get, no_leaks, unique
from tests.kubernetes.envtest import KubeAPIServer, require_kubernetes_client

require_kubernetes_client()

from kubernetes import client  # noqa: E402

pytestmark = pytest.mark.kubernetes
MIB = 1024**2


@pytest.fixture
async def fleet(tmp_path: Path):
    f = Fleet(tmp_path)
    await f.start()
    try:
        yield f
    finally:
        await f.close()
        await no_leaks()


async def test_node_labels_reach_the_hub_and_cordon_is_seen_at_once(
    fleet: Fleet, kube_apiserver: KubeAPIServer, kube_client: client.ApiClient
) -> None:
    core = client.CoreV1Api(kube_client)
    good, bad, bare = unique("gpu-good"), unique("gpu-bad"), unique("cpu-only")
    create_gpu_node(core, good)
    create_gpu_node(core, bad, {"nvidia.com/gpu.product": "NVIDIA-L4", "nvidia.com/gpu.memory": "abc", "nvidia.com/gpu.count": "x2"}, gpus=None)
    create_gpu_node(core, bare, {}, gpus=None)
    kc = kube_apiserver.kubeconfig
    agents = {n: await fleet.start_agent(fleet.config(n, kc)) for n in (good, bad, bare)}
    # Also one that never reaches a hub: alive, not ready.
    lonely = await fleet.start_agent(fleet.config(unique("lonely"), kc, hub="127.0.0.1:1"))

    nodes = await eventually(lambda: _all_connected(fleet, agents), what="three agents on the hub")
    inv = nodes[good].inventory
    assert [(g.model, g.memory_bytes, g.count) for g in inv.gpus] == [("NVIDIA-L4", 23034 * MIB, 2)]
    assert inv.gpu_source == "kubernetes"
    assert (inv.region, inv.country, inv.jurisdiction) == ("eu-west", "DE", "EU")
    assert inv.labels["topology.kubernetes.io/zone"] == "eu-west-a"
    assert not inv.unschedulable and "fleet.edge/inventory-error" not in inv.labels

    # Malformed labels: reported as such, no GPUs guessed.
    inv = nodes[bad].inventory
    assert list(inv.gpus) == []
    err = inv.labels["fleet.edge/inventory-error"]
    assert "nvidia.com/gpu.memory 'abc' is not a number" in err and "nvidia.com/gpu.count 'x2' is not a number" in err
    await eventually(
        lambda: _has_error(fleet, bad, "'abc' is not a number"), what="the label error among the node's recent errors"
    )
    assert "GPU feature discovery" in nodes[bare].inventory.labels["fleet.edge/inventory-error"]
    assert list(nodes[bare].inventory.gpus) == []

    # Fixing the labels brings the GPUs (one update, no restart).
    core.patch_node(bad, {"metadata": {"labels": {"nvidia.com/gpu.memory": "81920", "nvidia.com/gpu.count": "1"}}})
    await eventually(lambda: _gpus(fleet, bad, [("NVIDIA-L4", 81920 * MIB, 1)]), what="fixed labels on the hub")

    # Cordon -> the hub sees unschedulable; uncordon brings it back. Each change must arrive with no restart,
    # within the harness's WAIT (many heartbeat intervals of 0.5 s); how fast is printed, not asserted: a
    # wall-clock limit in a test races a loaded machine.
    latencies = []
    for value in (True, False, True):
        t0 = time.monotonic()
        core.patch_node(good, {"spec": {"unschedulable": value}})
        await eventually(lambda v=value: _unschedulable(fleet, good, v), interval=0.01, what=f"unschedulable={value}")
        latencies.append(time.monotonic() - t0)
    print(f"cordon->hub latencies: {', '.join(f'{x * 1000:.0f} ms' for x in latencies)}")
    assert agents[good].inventory.unschedulable

    # Health: live everywhere; ready once resynced, not when the hub was never reached.
    for a in agents.values():
        assert await http_get(a.health.port, "/healthz") == (200, "ok\n")
        assert await http_get(a.health.port, "/readyz") == (200, "ok\n")
    assert await http_get(lonely.health.port, "/healthz") == (200, "ok\n")
    status, body = await http_get(lonely.health.port, "/readyz")
    assert status == 503 and "not resynced" in body
    assert (await http_get(lonely.health.port, "/metrics"))[0] == 404


async def test_watch_survives_api_server_restart(
    fleet: Fleet, kube_apiserver: KubeAPIServer, kube_client: client.ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    core = client.CoreV1Api(kube_client)
    name = unique("gpu-restart")
    create_gpu_node(core, name)
    agent = await fleet.start_agent(fleet.config(name, kube_apiserver.kubeconfig))
    await eventually(lambda: _gpus(fleet, name, [("NVIDIA-L4", 23034 * MIB, 2)]), what="node on the hub")
    watch = agent.node_watch
    relists = watch.relists

    caplog.set_level(logging.INFO, logger="edge_agent.node_watch")
    await asyncio.to_thread(kube_apiserver.restart_apiserver, 2.0, 3.0)
    # The agent kept serving its last inventory meanwhile.
    assert [g.count for g in agent.inventory.gpus] == [2]
    t0 = time.monotonic()
    core.patch_node(name, {"spec": {"unschedulable": True}})
    await eventually(lambda: _unschedulable(fleet, name, True), timeout=20.0, what="cordon after the restart")
    print(f"cordon after API-server restart seen by the hub in {time.monotonic() - t0:.2f}s")
    assert watch.relists > relists, "expected a relist (410 Gone from the fresh watch cache, or a broken watch)"
    warnings = [r.getMessage() for r in caplog.records if r.name == "edge_agent.node_watch" and r.levelno >= logging.WARNING]
    # One line per condition (refused; maybe slow while it starts), one when it ended; none per retry.
    outage = [w for w in warnings if "cordoned" not in w]
    assert 2 <= len(outage) <= 3, outage
    assert "unreachable" in outage[0] and "recovered" in outage[-1] and sum("recovered" in w for w in outage) == 1, outage


async def _all_connected(fleet: Fleet, agents: dict) -> dict | None:
    nodes = await fleet.nodes()
    ok = all(n in nodes and nodes[n].connected and nodes[n].inventory.gpu_source == "kubernetes" for n in agents)
    return nodes if ok else None


async def _gpus(fleet: Fleet, node: str, want: list) -> bool:
    n = await fleet.node(node)
    return n is not None and [(g.model, g.memory_bytes, g.count) for g in n.inventory.gpus] == want


async def _unschedulable(fleet: Fleet, node: str, value: bool) -> bool:
    n = await fleet.node(node)
    return n is not None and n.inventory.unschedulable is value


async def _has_error(fleet: Fleet, node: str, text: str) -> bool:
    n = await fleet.node(node)
    return n is not None and any(text in e for e in n.recent_errors)


async def test_in_process_agent_reports_only_the_gpus_its_pod_holds(
    fleet: Fleet, kube_apiserver: KubeAPIServer, kube_client: client.ApiClient
) -> None:
    """In-process mode the engine runs in the agent's pod: a pod that holds one of the node's
    two GPUs reports one (the hub must not place on the other), and says why."""
    core = client.CoreV1Api(kube_client)
    node = unique("gpu-held")
    create_gpu_node(core, node)  # 2 allocatable GPUs
    ns = unique("held")
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    pod = core.create_namespaced_pod(ns, client.V1Pod(
        metadata=client.V1ObjectMeta(name="edge-fleet-agent-x"),
        spec=client.V1PodSpec(containers=[client.V1Container(
            name="agent", image="ghcr.io/edge-fleet/edge-fleet:0.1.0",
            resources=client.V1ResourceRequirements(limits={"nvidia.com/gpu": "1"}, requests={"nvidia.com/gpu": "1"}))]),
    ))
    agent = await fleet.start_agent(fleet.config(node, kube_apiserver.kubeconfig, namespace=ns, pod_name=pod.metadata.name))
    view = await eventually(lambda: _node_with_gpus(fleet, node), what="the node on the hub")
    assert agent.pod_gpus == 1
    assert [g.count for g in view.inventory.gpus] == [1]
    assert view.inventory.labels["fleet.edge/gpus-not-held"] == "1"
    await eventually(lambda: _error_on_hub(fleet, node, "holds 1 of the node's 2 GPUs"), what="why, on the hub")


async def _error_on_hub(fleet: Fleet, node: str, text: str) -> bool:
    n = await fleet.node(node)
    return n is not None and any(text in e for e in n.recent_errors)


async def _node_with_gpus(fleet: Fleet, node: str):
    n = await fleet.node(node)
    return n if n is not None and n.inventory.gpus else None
