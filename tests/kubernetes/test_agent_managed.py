"""External-runtime mode on a real kube-apiserver with a real hub: a Placement
in the hub's shape (one per node, several assignments) published through the
hub becomes one Deployment and Service per assignment, pinned to the node
with the right GPU request; an unplaced assignment's objects are deleted; an
agent restart adopts them without duplicates and deletes strays; the agent's
own ServiceAccount from deploy/ is enough for all of it."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.kubernetes.agent_harness import (
    Fleet,
    assignment,
    create_gpu_node,
    eventually,
    http_get,
    no_leaks,
    placement,
    unique,
)
from tests.kubernetes.envtest import REPO_ROOT, KubeAPIServer, require_kubernetes_client

require_kubernetes_client()

from kubernetes import client  # noqa: E402

pytestmark = pytest.mark.kubernetes

SITE = "k8s"
IMAGE = "vllm/vllm-openai:v0.11.0"


@pytest.fixture
async def fleet(tmp_path: Path):
    f = Fleet(tmp_path)
    await f.start()
    try:
        yield f
    finally:
        await f.close()
        await no_leaks()


def _key(o: Any) -> str:
    """(placement id, service) of a managed object, or the placement id of a stray without the annotation."""
    pid = o.metadata.labels["fleet.edge/placement"]
    svc = (o.metadata.annotations or {}).get("fleet.edge/service")
    return f"{pid}/{svc}" if svc else pid


def managed(api: client.ApiClient, ns: str, node: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """This node's managed Deployments and Services by "<placement id>/<service>"."""
    sel = f"app.kubernetes.io/managed-by=fleet-agent,fleet.edge/node={node}"
    deps = client.AppsV1Api(api).list_namespaced_deployment(ns, label_selector=sel).items
    svcs = client.CoreV1Api(api).list_namespaced_service(ns, label_selector=sel).items
    return {_key(d): d for d in deps}, {_key(s): s for s in svcs}


def events(api: client.ApiClient, ns: str, name: str) -> list[str]:
    items = client.CoreV1Api(api).list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
    return [e.reason for e in items]


def agent_pod(api: client.ApiClient, ns: str, name: str, owner: Any | None = None) -> client.V1Pod:
    refs = None
    if owner is not None:
        refs = [client.V1OwnerReference(api_version="apps/v1", kind="DaemonSet", name=owner.metadata.name, uid=owner.metadata.uid, controller=True)]
    return client.CoreV1Api(api).create_namespaced_pod(
        ns,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name=name, owner_references=refs, labels={"app.kubernetes.io/name": "edge-fleet-agent"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="agent", image="ghcr.io/edge-fleet/edge-fleet:0.1.0")]),
        ),
    )


async def test_placements_become_pinned_deployments_and_restart_adopts(
    fleet: Fleet, kube_apiserver: KubeAPIServer, kube_client: client.ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    core, apps = client.CoreV1Api(kube_client), client.AppsV1Api(kube_client)
    ns = unique("site")
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    labels = {"app.kubernetes.io/name": "edge-fleet-agent"}
    ds = apps.create_namespaced_daemon_set(ns, client.V1DaemonSet(
        metadata=client.V1ObjectMeta(name="edge-fleet-agent"),
        spec=client.V1DaemonSetSpec(
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="agent", image="ghcr.io/edge-fleet/edge-fleet:0.1.0")]),
            ),
        ),
    ))
    pod = agent_pod(kube_client, ns, f"edge-fleet-agent-{uuid.uuid4().hex[:5]}", owner=ds)
    node = unique("gpu-m")
    create_gpu_node(core, node)
    cfg = fleet.config(node, kube_apiserver.kubeconfig, site=SITE, runtime_mode="external", namespace=ns,
                       pod_name=pod.metadata.name, model_server_image=IMAGE)
    agent = await fleet.start_agent(cfg)
    await eventually(agent.link.status.resynced.is_set, what="resync")

    chat_a = assignment(node, "assistant-eu", replicas=2, gpus=1)
    code_a = assignment(node, "coder", model="coder", version="v1", replicas=1, gpus=2)
    obj = await fleet.put("Placement", node, placement(node, chat_a, code_a), site=SITE, node=node)
    chat, code = f"{obj.id}/assistant-eu", f"{obj.id}/coder"
    deps, svcs = await eventually(lambda: _with(kube_client, ns, node, {chat, code}), what="two Deployments and Services")

    for key, model, replicas, gpus in ((chat, "assistant", 2, "1"), (code, "coder", 1, "2")):
        d = deps[key]
        assert d.spec.replicas == replicas
        assert {k: d.metadata.labels[k] for k in ("app.kubernetes.io/managed-by", "fleet.edge/site", "fleet.edge/node", "fleet.edge/placement")} == {
            "app.kubernetes.io/managed-by": "fleet-agent", "fleet.edge/site": SITE, "fleet.edge/node": node, "fleet.edge/placement": obj.id,
        }
        assert [(r.kind, r.name, r.uid) for r in d.metadata.owner_references] == [("DaemonSet", "edge-fleet-agent", ds.metadata.uid)]
        pod_spec = d.spec.template.spec
        term = pod_spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms[0]
        assert [(f.key, f.operator, f.values) for f in term.match_fields] == [("metadata.name", "In", [node])]
        (c,) = pod_spec.containers
        assert c.image == IMAGE
        assert c.resources.limits["nvidia.com/gpu"] == gpus and c.resources.requests["nvidia.com/gpu"] == gpus
        assert c.args[:2] == ["--model", model] and "8000" in c.args
        assert ("--tensor-parallel-size" in c.args) == (gpus == "2")
        s = svcs[key]
        assert s.spec.type == "ClusterIP" and s.spec.selector == d.spec.selector.match_labels
        assert s.spec.selector["fleet.edge/placement"] == obj.id
        assert s.metadata.name == d.metadata.name and [p.port for p in s.spec.ports] == [8000]
        assert "PlacementApplied" in events(kube_client, ns, d.metadata.name)
        fields = {m.manager for m in d.metadata.managed_fields}
        assert "fleet-agent" in fields, fields
    assert svcs[chat].spec.selector != svcs[code].spec.selector

    # A placement the agent cannot serve: refused to the hub, nothing changes.
    await fleet.put("Placement", node, placement(node, chat_a, assignment(node, "broken", gpus=0)), site=SITE, node=node)
    await eventually(lambda: _has_error(fleet, node, "gpusPerReplica"), what="the failed apply on the hub")
    assert _with(kube_client, ns, node, {chat, code})

    # Update in place: same object, new replica count.
    chat_uid = deps[chat].metadata.uid
    await fleet.put("Placement", node, placement(node, assignment(node, "assistant-eu", replicas=3), code_a), site=SITE, node=node)
    await eventually(lambda: apps.read_namespaced_deployment(deps[chat].metadata.name, ns).spec.replicas == 3, what="scaled to 3")
    assert apps.read_namespaced_deployment(deps[chat].metadata.name, ns).metadata.uid == chat_uid

    # Unplaced: coder's assignment leaves the Placement; both of its objects go, the other's stay.
    await fleet.put("Placement", node, placement(node, assignment(node, "assistant-eu", replicas=3)), site=SITE, node=node)
    await eventually(lambda: _with(kube_client, ns, node, {chat}), what="coder's Deployment and Service deleted")

    # Restart: a stray appears meanwhile (its placement is not held), and the agent's own object stays.
    await fleet.stop_agent(agent)
    stray = str(uuid.uuid4())
    stray_labels = {"app.kubernetes.io/managed-by": "fleet-agent", "fleet.edge/site": SITE, "fleet.edge/node": node, "fleet.edge/placement": stray}
    apps.create_namespaced_deployment(ns, client.V1Deployment(
        metadata=client.V1ObjectMeta(name="m-left-over", labels=stray_labels),
        spec=client.V1DeploymentSpec(
            selector=client.V1LabelSelector(match_labels={"fleet.edge/placement": stray}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=stray_labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="server", image=IMAGE)]),
            ),
        ),
    ))
    core.create_namespaced_service(ns, client.V1Service(
        metadata=client.V1ObjectMeta(name="m-left-over", labels=stray_labels),
        spec=client.V1ServiceSpec(selector={"fleet.edge/placement": stray}, ports=[client.V1ServicePort(port=8000)]),
    ))
    # Someone else's Deployment in the namespace is not ours to touch.
    other = {"app": "not-ours"}
    apps.create_namespaced_deployment(ns, client.V1Deployment(
        metadata=client.V1ObjectMeta(name="not-ours", labels=other),
        spec=client.V1DeploymentSpec(
            selector=client.V1LabelSelector(match_labels=other),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=other),
                spec=client.V1PodSpec(containers=[client.V1Container(name="x", image=IMAGE)]),
            ),
        ),
    ))
    applied_before = events(kube_client, ns, deps[chat].metadata.name).count("PlacementApplied")

    caplog.set_level(logging.INFO, logger="edge_agent.managed")
    agent = await fleet.start_agent(cfg)
    await eventually(lambda: _with(kube_client, ns, node, {chat}), what="the stray deleted")
    deps, svcs = managed(kube_client, ns, node)
    assert deps[chat].metadata.uid == chat_uid, "adopted, not recreated"
    assert len(apps.list_namespaced_deployment(ns).items) == 2  # ours + not-ours: no duplicates
    assert apps.read_namespaced_deployment("not-ours", ns)
    assert events(kube_client, ns, deps[chat].metadata.name).count("PlacementApplied") == applied_before
    text = caplog.text
    assert "adopted Deployment" in text and "stray" in text, text
    assert await http_get(agent.health.port, "/readyz") == (200, "ok\n")


async def test_the_agent_service_account_from_deploy_is_enough(
    fleet: Fleet, kube_apiserver: KubeAPIServer, kube_client: client.ApiClient, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ns = "edge-fleet"
    deploy = REPO_ROOT / "deploy"
    # Only the namespace, ServiceAccount and RBAC (test_deploy.py applies the rest).
    kube_apiserver.kubectl("apply", "--server-side", "--field-manager=edge-fleet-test", "-k", str(deploy / "base" / "namespace"))
    kube_apiserver.kubectl(
        "apply", "--server-side", "--field-manager=edge-fleet-test",
        "-f", str(deploy / "base" / "agent" / "serviceaccount.yaml"), "-f", str(deploy / "base" / "agent" / "rbac.yaml"),
    )
    token = kube_apiserver.service_account_token(ns, "edge-fleet-agent")
    kubeconfig = kube_apiserver.write_kubeconfig(tmp_path / "agent.kubeconfig", token=token, user="edge-fleet-agent", namespace=ns)
    core = client.CoreV1Api(kube_client)
    pod = agent_pod(kube_client, ns, unique("edge-fleet-agent-sa"))
    node = unique("gpu-sa")
    create_gpu_node(core, node)
    caplog.set_level(logging.INFO, logger="edge_agent")
    try:
        agent = await fleet.start_agent(
            fleet.config(node, kubeconfig, site=SITE, runtime_mode="external", pod_name=pod.metadata.name)
        )
        assert agent.kube.namespace == ns  # from the kubeconfig's context
        await eventually(lambda: _gpus_on_hub(fleet, node), what="GPUs from the Node, read with the agent's token")
        obj = await fleet.put("Placement", f"sa-{node}", placement(node, assignment(node, replicas=1)), site=SITE, node=node)
        deps, _ = await eventually(lambda: _with(kube_client, ns, node, {f"{obj.id}/assistant-eu"}), what="Deployment made with the agent's token")
        d = deps[f"{obj.id}/assistant-eu"]
        assert [(r.kind, r.name) for r in d.metadata.owner_references] == [("Pod", pod.metadata.name)]
        await eventually(lambda: "PlacementApplied" in events(kube_client, ns, d.metadata.name), what="event posted")
        core.patch_node(node, {"spec": {"unschedulable": True}})
        await eventually(lambda: _unschedulable(fleet, node), what="cordon seen")
        await fleet.delete("Placement", f"sa-{node}")
        await eventually(lambda: _with(kube_client, ns, node, set()), what="deleted with the agent's token")
        view = (await fleet.nodes())[node]
        assert not [e for e in view.recent_errors if "403" in e or "forbid" in e.lower()], view.recent_errors
        refused = [r.getMessage() for r in caplog.records if "403" in r.getMessage() or "RBAC" in r.getMessage()]
        assert not refused, refused
    finally:
        core.delete_namespaced_pod(pod.metadata.name, ns)


def _with(api: client.ApiClient, ns: str, node: str, ids: set[str]):
    deps, svcs = managed(api, ns, node)
    if set(deps) != ids or set(svcs) != ids:
        return None
    return deps, svcs


async def _has_error(fleet: Fleet, node: str, text: str) -> bool:
    n = await fleet.node(node)
    return n is not None and any(text in e for e in n.recent_errors)


async def _gpus_on_hub(fleet: Fleet, node: str) -> bool:
    n = await fleet.node(node)
    return n is not None and [g.count for g in n.inventory.gpus] == [2]


async def _unschedulable(fleet: Fleet, node: str) -> bool:
    n = await fleet.node(node)
    return n is not None and n.inventory.unschedulable


async def test_forbidden_namespace_is_one_clear_line_and_no_crash(
    fleet: Fleet, kube_apiserver: KubeAPIServer, kube_client: client.ApiClient, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The agent's token in a namespace its Role does not cover: 403 on every
    pass. One WARNING naming RBAC, the reason on the hub, the node watch and
    the hub link unaffected."""
    kube_apiserver.kubectl("apply", "--server-side", "--field-manager=edge-fleet-test", "-k", str(REPO_ROOT / "deploy" / "base" / "namespace"))
    kube_apiserver.kubectl(
        "apply", "--server-side", "--field-manager=edge-fleet-test",
        "-f", str(REPO_ROOT / "deploy" / "base" / "agent" / "serviceaccount.yaml"),
        "-f", str(REPO_ROOT / "deploy" / "base" / "agent" / "rbac.yaml"),
    )
    token = kube_apiserver.service_account_token("edge-fleet", "edge-fleet-agent")
    kubeconfig = kube_apiserver.write_kubeconfig(tmp_path / "agent.kubeconfig", token=token, namespace="default")
    node = unique("gpu-403")
    create_gpu_node(client.CoreV1Api(kube_client), node)
    caplog.set_level(logging.INFO, logger="edge_agent.managed")
    agent = await fleet.start_agent(fleet.config(node, kubeconfig, site=SITE, runtime_mode="external"))
    await eventually(lambda: agent.managed._outage.failures >= 3, what="a few refused passes")
    await eventually(lambda: _has_error(fleet, node, "403"), what="the refusal on the hub")
    lines = [r.getMessage() for r in caplog.records if r.name == "edge_agent.managed" and r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "RBAC" in lines[0], lines
    assert await _gpus_on_hub(fleet, node)
    assert agent.link.status.connected
