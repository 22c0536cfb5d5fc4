"""The Kubernetes path end to end, from `fleet apply` to a request answered
through the agent's door.

Real parts: etcd and kube-apiserver, a hub (SQLite), the `fleet` CLI as a
process (`fleet apply`, `fleet report`), and an agent in Kubernetes external
mode with its OpenAI port (`--kube --runtime-mode external --serve-port 0`).

There is no kubelet and no kube-proxy, so the test plays both
(`tests/kubernetes/model_server_sim.py`): for each Deployment the agent
creates it runs the "pod", a small vLLM-compatible simulator on 127.0.0.1,
and it maps the Service's clusterIP:port to that address. The agent dials
Service addresses through `ManagedServers.dial`, which the test points at
that table; in a cluster it dials the clusterIP itself.

Checked: one Deployment and one Service per assignment of the node's single
Placement, with the assignment's model, version, replicas, GPU requests and
node pinning; a request through the agent's door reaches the Service for its
model, and one whose data may not be here is refused at the door (403) and
never reaches a model server; a new model version (a new Placement version)
updates the same Deployment, and the requests in flight through the door
during the switch all succeed (the old pod leaves the Service, then finishes
what it streams, as its preStop and grace period let it; with one replica
and no spare GPU (maxSurge 0) new requests wait for the new pod); an
assignment that leaves the Placement takes its Deployment and Service with
it; and `fleet report` shows the requests' tokens and cost, measured at the
door.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.kubernetes.agent_harness import TOKEN, Fleet, create_gpu_node, eventually, no_leaks, unique
from tests.kubernetes.envtest import REPO_ROOT, KubeAPIServer, require_kubernetes_client
from tests.kubernetes.model_server_sim import Kubelet

require_kubernetes_client()

from kubernetes import client  # noqa: E402

pytestmark = pytest.mark.kubernetes

SITE = "k8s-door"
PUBLIC = {"X-Fleet-Data-Class": "public"}


def bundle(directory: Path, node: str, chat_version: str, with_coder: bool = True) -> Path:
    """A one-site fleet whose only node is `node` (two L4s): chat-eu, and coder-eu unless left out."""
    directory.mkdir(parents=True, exist_ok=True)
    profile = """      profiles:
      - {gpuType: L4, prefillThroughput: 3000tok/s, decodeThroughput: 480tok/s, maxBatch: 16, tpotAtBatch1: 27ms}
"""
    model = lambda name, versions: f"""apiVersion: fleet.edge/v1alpha1
kind: Model
metadata: {{name: {name}}}
spec:
  versions:
""" + "".join(f"""    - name: {v}
      integrity: none
      weightSize: 8GiB
      gpuMemoryPerReplica: 12GiB
{profile}""" for v in versions)
    service = lambda name, m, v: f"""apiVersion: fleet.edge/v1alpha1
kind: Service
metadata: {{name: {name}}}
spec:
  model: {m}
  version: {v}
  slo: {{ttftP95: 800ms, tpotP95: 60ms}}
  demand:
  - {{region: eu-central, rate: 1rps, meanPromptTokens: 200, meanOutputTokens: 50}}
  priorityClass: interactive
  dataClass: public
"""
    docs = [
        f"""apiVersion: fleet.edge/v1alpha1
kind: Site
metadata: {{name: {SITE}}}
spec:
  region: eu-central
  country: "DE"
  gridIntensity: 344gCO2e/kWh
  networkLatency: {{eu-central: 2ms}}
  gpuPools:
  - {{name: l4, node: {node}, gpuType: L4, count: 2, memory: 24GB, price: $0.85/h, power: 72W}}
""",
        model("chat", ["v1", "v2"]), model("coder", ["v1"]), service("chat-eu", "chat", chat_version),
        """apiVersion: fleet.edge/v1alpha1
kind: ResidencyPolicy
metadata: {name: public-anywhere}
spec:
  dataClass: public
  allow: {anywhere: true}
""",
        """apiVersion: fleet.edge/v1alpha1
kind: ResidencyPolicy
metadata: {name: us-only}
spec:
  dataClass: personal-us
  allow: {countries: [US]}
""",
        """apiVersion: fleet.edge/v1alpha1
kind: PriorityClass
metadata: {name: interactive}
spec: {value: 1000}
""",
    ]
    if with_coder:
        docs.append(service("coder-eu", "coder", "v1"))
    (directory / "fleet.yaml").write_text("---\n".join(docs))
    return directory


async def cli(fleet: Fleet, *args: str) -> str:
    """Run the `fleet` CLI as its own process against the test's hub."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "FLEET_HUB": f"127.0.0.1:{fleet.admin_port}", "FLEET_TOKEN": TOKEN,
           "FLEET_INSECURE": "1"}  # the test hub listens in plaintext (no CA)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "hub.cli.main", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, f"fleet {' '.join(args)}: {out.decode()}{err.decode()}"
    return out.decode()


def deployments(apps: client.AppsV1Api, ns: str, node: str) -> dict[str, Any]:
    """This node's managed Deployments by service."""
    sel = f"app.kubernetes.io/managed-by=fleet-agent,fleet.edge/node={node}"
    return {d.metadata.annotations["fleet.edge/service"]: d for d in apps.list_namespaced_deployment(ns, label_selector=sel).items}


def services(core: client.CoreV1Api, ns: str, node: str) -> dict[str, Any]:
    sel = f"app.kubernetes.io/managed-by=fleet-agent,fleet.edge/node={node}"
    return {s.metadata.annotations["fleet.edge/service"]: s for s in core.list_namespaced_service(ns, label_selector=sel).items}


def held_assignments(agent: Any) -> dict[str, dict]:
    """The assignments of the Placement the agent holds (the hub's shape, as delivered)."""
    (p,) = [o for o in agent.state.objects() if o.kind == "Placement"]
    return {a["service"]: a for a in p.spec["assignments"]}


async def complete(http: httpx.AsyncClient, model: str, headers: dict, max_tokens: int = 4) -> tuple[int, str]:
    r = await http.post("/v1/completions", json={"model": model, "prompt": "hello", "max_tokens": max_tokens}, headers=headers)
    return r.status_code, (r.json()["choices"][0]["text"] if r.status_code == 200 else r.text)


@pytest.fixture
async def fleet(tmp_path: Path):
    f = Fleet(tmp_path)
    await f.start()
    try:
        yield f
    finally:
        await f.close()
        await no_leaks()


async def test_fleet_apply_to_a_request_answered_through_the_agents_door(
    fleet: Fleet, kube_apiserver: KubeAPIServer, kube_client: client.ApiClient, tmp_path: Path
) -> None:
    core, apps = client.CoreV1Api(kube_client), client.AppsV1Api(kube_client)
    ns = unique("door")
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    node = unique("gpu-door")
    create_gpu_node(core, node)
    kubelet = Kubelet(apps, core, ns, node)
    agent = await fleet.start_agent(fleet.config(
        node, kube_apiserver.kubeconfig, site=SITE, runtime_mode="external", namespace=ns, serve_port=0,
        telemetry_interval_s=0.3))
    agent.managed.dial = kubelet.dial  # kube-proxy's part (see the module docstring)
    kubelet.start()
    await eventually(lambda: agent.serving.http_port, what="the agent's door open")
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{agent.serving.http_port}", timeout=60)
    try:
        # fleet apply -> one Placement for this node with two assignments -> two Deployments and Services.
        await cli(fleet, "apply", "-f", str(bundle(tmp_path / "r1", node, "v1")))
        deps = await eventually(lambda: (d := deployments(apps, ns, node)).keys() == {"chat-eu", "coder-eu"} and d,
                                timeout=60, what="a Deployment per assignment")
        svcs = services(core, ns, node)
        assert svcs.keys() == {"chat-eu", "coder-eu"}
        held = held_assignments(agent)
        for name, d in deps.items():
            a = held[name]
            (c,) = d.spec.template.spec.containers
            assert c.args[:4] == ["--model", a["model"], "--revision", a["version"]]
            assert d.spec.replicas == a["replicas"]
            gpus = str(int(a["gpusPerReplica"]))  # a share < 1 is rounded up here: the test Node offers no slices
            assert c.resources.requests == c.resources.limits == {"nvidia.com/gpu": gpus}
            term = d.spec.template.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
            assert term.node_selector_terms[0].match_fields[0].values == [node]
            assert svcs[name].spec.selector == d.spec.selector.match_labels and svcs[name].spec.cluster_ip

        # A request through the door reaches its model's Service; refused data never leaves the door.
        await answered(http, "chat-eu", "v1")
        assert (await complete(http, "coder", PUBLIC))[0] == 200
        served = sum(len(p.server.requests) for p in kubelet.pods.values())
        status, body = await complete(http, "chat-eu", {"X-Fleet-Data-Class": "personal-us"})
        assert status == 403, body
        assert sum(len(p.server.requests) for p in kubelet.pods.values()) == served

        # A new model version: the same Deployment rolls; requests in flight through the door all finish.
        chat_dep = deps["chat-eu"]
        old = kubelet.pods[chat_dep.metadata.name]
        old.server.gate.clear()  # hold every stream after its first token
        streams = [asyncio.create_task(_stream(http, "chat-eu", 8)) for _ in range(4)]
        await eventually(lambda: sum(r["max_tokens"] == 8 for r in old.server.requests) == 4, what="4 requests in flight")
        await cli(fleet, "apply", "-f", str(bundle(tmp_path / "r2", node, "v2")))
        await eventually(lambda: deployments(apps, ns, node)["chat-eu"].spec.template.metadata.annotations["fleet.edge/model"] == "chat:v2",
                         timeout=60, what="the Deployment updated to chat:v2")
        rolled = deployments(apps, ns, node)["chat-eu"]
        assert rolled.metadata.uid == chat_dep.metadata.uid and rolled.spec.template.spec.containers[0].args[3] == "v2"
        await eventually(lambda: old.terminating, what="the old pod leaving the Service")
        assert not any(t.done() for t in streams), "the streams are held in flight across the switch"
        old.server.gate.set()
        results = await asyncio.gather(*streams)
        assert results == [(200, "v1 " * 8, True)] * 4, results
        await answered(http, "chat-eu", "v2")

        # coder's assignment leaves the Placement: its Deployment and Service go, chat's stay.
        await cli(fleet, "apply", "-f", str(bundle(tmp_path / "r3", node, "v2", with_coder=False)))
        await eventually(lambda: deployments(apps, ns, node).keys() == {"chat-eu"} and services(core, ns, node).keys() == {"chat-eu"},
                         timeout=60, what="coder's Deployment and Service deleted")
        assert deployments(apps, ns, node)["chat-eu"].metadata.uid == chat_dep.metadata.uid

        # fleet report: tokens and cost per model and version, measured at the door.
        rows = await eventually(lambda: _report(fleet), timeout=30, what="the door's telemetry in fleet report")
        assert rows[("chat", "v1")]["outputTokens"] >= 4 * 8 and rows[("chat", "v2")]["requests"] >= 1
        for row in rows.values():
            assert row["costUsd"] > 0 and row["gpuSeconds"] > 0 and row["ttftS"]["p95"] is not None, row
    finally:
        await http.aclose()
        await kubelet.close()


async def answered(http: httpx.AsyncClient, model: str, version: str) -> None:
    """Wait until the door answers `model` from `version` (a new pod may still be starting)."""
    last: list[tuple[int, str]] = []

    async def ok() -> bool:
        last[:] = [await complete(http, model, PUBLIC)]
        return last[0][0] == 200 and last[0][1].split() == [version] * 4

    try:
        await eventually(ok, timeout=30, what=f"{model} {version} through the door")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the door's last answer: {last}") from None


async def _stream(http: httpx.AsyncClient, model: str, n: int) -> tuple[int, str, bool]:
    """A streamed completion through the door: (status, text, whether it ended with [DONE])."""
    text, done = "", False
    async with http.stream("POST", "/v1/completions", headers=PUBLIC,
                           json={"model": model, "prompt": "hi", "max_tokens": n, "stream": True}) as r:
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                text += "".join(c.get("text", "") for c in json.loads(line[6:]).get("choices", []))
        return r.status_code, text, done


async def _report(fleet: Fleet) -> dict[tuple[str, str], dict] | None:
    out = json.loads(await cli(fleet, "report", "--by", "model,version", "-o", "json"))
    rows = {(r["model"], r["version"]): r for r in out["rows"]}
    if ("chat", "v1") not in rows or ("chat", "v2") not in rows:
        return None
    return rows
