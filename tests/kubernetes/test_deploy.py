"""deploy/ against a real kube-apiserver: every overlay renders, passes a
server-side dry run, applies for real with `kubectl apply -k`, and the agent's
ServiceAccount may do exactly what the agent does (SubjectAccessReviews). No
node's private key is shipped; each node keeps its own in a hostPath data dir
that survives pod replacement, and only the agent's pods get host access."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kubernetes.envtest import REPO_ROOT, KubeAPIServer, require_kubernetes_client

require_kubernetes_client()

from kubernetes import client  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402

pytestmark = pytest.mark.kubernetes

DEPLOY = REPO_ROOT / "deploy"
OVERLAYS = ["edge-site", "edge-site-external-runtime", "hub", "all-in-one"]
NS = "edge-fleet"
AGENT_SA = f"system:serviceaccount:{NS}:edge-fleet-agent"
AGENT_GROUPS = ["system:serviceaccounts", f"system:serviceaccounts:{NS}", "system:authenticated"]


def render(kube: KubeAPIServer, overlay: str) -> list[dict[str, Any]]:
    out = kube.kubectl("kustomize", str(DEPLOY / "overlays" / overlay)).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _pool_gpus(node: str) -> int:
    """GPUs the shipped fleet's pool on `node` has: what the hub may place on."""
    from hub.policy import load_bundle

    bundle = load_bundle([REPO_ROOT / "fleet_configs", REPO_ROOT / "policies"])
    return next(p.count for s in bundle.sites.values() for p in s.spec.gpu_pools if p.node == node)


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    for d in docs:
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name):
            return d
    raise AssertionError(f"no {kind} {name or ''} in {[(d['kind'], d['metadata']['name']) for d in docs]}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders(kube_apiserver: KubeAPIServer, overlay: str) -> None:
    docs = render(kube_apiserver, overlay)
    kinds = {d["kind"] for d in docs}
    assert "Namespace" in kinds
    for d in docs:
        if d["kind"] not in {"Namespace", "ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy",
                             "ValidatingAdmissionPolicyBinding"}:
            assert d["metadata"]["namespace"] == NS, d["metadata"]
    if overlay != "hub":
        ds = find(docs, "DaemonSet", "edge-fleet-agent")
        resources = ds["spec"]["template"]["spec"]["containers"][0]["resources"]
        gpu = resources["requests"].get("nvidia.com/gpu")
        assert (gpu is None) == (overlay == "edge-site-external-runtime")
        assert resources["limits"].get("nvidia.com/gpu") == gpu
        if overlay == "edge-site":
            # In-process mode: every GPU of the node pool the hub places on, on nodes that have that many.
            assert ds["spec"]["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.count"] == gpu == str(_pool_gpus("fra-1-gpu-a"))
        site = find(docs, "ConfigMap")
        volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
        assert volumes["site"]["configMap"]["name"] == site["metadata"]["name"]  # hashed name followed
    if overlay in {"hub", "all-in-one"}:
        find(docs, "Deployment", "edge-fleet-hub")
        find(docs, "Service", "edge-fleet-hub")


@pytest.mark.parametrize("overlay", ["edge-site", "all-in-one"])
def test_site_config_is_a_valid_agent_config(kube_apiserver: KubeAPIServer, overlay: str, tmp_path: Path) -> None:
    from edge_agent.config import AgentConfig

    site = find(render(kube_apiserver, overlay), "ConfigMap")
    data = yaml.safe_load(site["data"]["agent.yaml"])
    assert set(data) <= set(AgentConfig.model_fields), set(data) - set(AgentConfig.model_fields)
    for name in ("ca.pem", "node.pem", "node-key.pem"):
        (tmp_path / name).write_text("x")
    AgentConfig.model_validate(
        data | {"node": "gpu-node-1", "ca": tmp_path / "ca.pem", "cert": tmp_path / "node.pem", "key": tmp_path / "node-key.pem"}
    )
    # What the DaemonSet's args and mounts supply on top of the file: no certificate, a bootstrap token.
    cfg = AgentConfig.model_validate(
        data | {"node": "gpu-node-1", "ca": tmp_path / "ca.pem", "bootstrap_token_file": tmp_path / "token"}
    )
    assert cfg.enrolls


@pytest.fixture(scope="module")
def applied(kube_apiserver: KubeAPIServer) -> KubeAPIServer:
    """The namespace for real, every overlay as a server-side dry run, then
    all-in-one for real with `kubectl apply -k`."""
    kube = kube_apiserver
    kube.kubectl("apply", "--server-side", "--field-manager=edge-fleet-test", "-k", str(DEPLOY / "base" / "namespace"))
    for overlay in OVERLAYS:
        out = kube.kubectl(
            "apply", "--server-side", "--dry-run=server", "--field-manager=edge-fleet-test",
            "-k", str(DEPLOY / "overlays" / overlay),
        )
        assert b"(server dry run)" in out.stdout, out.stdout
    # The dry runs created nothing.
    with kube.api_client() as api:
        assert client.AppsV1Api(api).list_namespaced_daemon_set(NS).items == []
    out = kube.kubectl("apply", "-k", str(DEPLOY / "overlays" / "all-in-one"))
    assert b"daemonset.apps/edge-fleet-agent created" in out.stdout, out.stdout
    again = kube.kubectl("apply", "-k", str(DEPLOY / "overlays" / "all-in-one")).stdout.decode()
    assert all(line.endswith("unchanged") for line in again.strip().splitlines()), again
    return kube


def test_apply_creates_a_consistent_set(applied: KubeAPIServer) -> None:
    with applied.api_client() as api:
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        ds = apps.read_namespaced_daemon_set("edge-fleet-agent", NS)
        pod = ds.spec.template.spec
        # Everything the pod refers to exists.
        core.read_namespaced_service_account(pod.service_account_name, NS)
        volumes = {v.name: v for v in pod.volumes}
        core.read_namespaced_config_map(volumes["site"].config_map.name, NS)
        core.read_namespaced_config_map(volumes["ca"].config_map.name, NS)
        core.read_namespaced_secret(volumes["bootstrap"].secret.secret_name, NS)
        # The agent's pod as the issue asks for it.
        (agent,) = pod.containers
        env = {e.name: e for e in agent.env}
        assert env["NODE_NAME"].value_from.field_ref.field_path == "spec.nodeName"
        assert pod.security_context.run_as_non_root is True
        assert agent.security_context.read_only_root_filesystem is True
        assert agent.security_context.allow_privilege_escalation is False
        assert agent.security_context.capabilities.drop == ["ALL"]
        assert agent.liveness_probe.http_get and agent.readiness_probe.http_get
        assert agent.resources.requests["nvidia.com/gpu"] == "1"
        assert {"key": "nvidia.com/gpu", "effect": "NoSchedule"}.items() <= {
            k: v for k, v in pod.tolerations[0].to_dict().items() if v
        }.items()
        term = pod.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms[0]
        assert term.match_expressions[0].key == "nvidia.com/gpu.present"
        assert ds.spec.update_strategy.rolling_update.max_unavailable == 1
        # The hub's Service selects the hub's pods.
        hub = apps.read_namespaced_deployment("edge-fleet-hub", NS)
        svc = core.read_namespaced_service("edge-fleet-hub", NS)
        assert svc.spec.selector.items() <= hub.spec.template.metadata.labels.items()
        assert {p.port for p in svc.spec.ports} == {7443, 7444, 7445}  # agents, admin, enrollment
        assert any(e.name == "FLEET_DB_URL" and e.value_from.secret_key_ref for e in hub.spec.template.spec.containers[0].env)


# (verb, resource, namespace, group, name) -> allowed?
AGENT_MAY = [
    ("get", "nodes", "", "", ""),
    ("list", "nodes", "", "", ""),
    ("watch", "nodes", "", "", ""),
    ("create", "deployments", NS, "apps", ""),
    ("patch", "deployments", NS, "apps", ""),
    ("delete", "deployments", NS, "apps", ""),
    ("list", "deployments", NS, "apps", ""),
    ("create", "services", NS, "", ""),
    ("patch", "services", NS, "", ""),
    ("delete", "services", NS, "", ""),
    ("watch", "pods", NS, "", ""),
    ("get", "daemonsets", NS, "apps", "edge-fleet-agent"),
    ("create", "events", NS, "", ""),
    ("create", "events", NS, "events.k8s.io", ""),
]
AGENT_MUST_NOT = [
    ("get", "secrets", NS, "", "edge-fleet-agent-bootstrap"),
    ("list", "secrets", NS, "", ""),
    ("get", "secrets", "kube-system", "", ""),
    ("list", "secrets", "", "", ""),
    ("create", "deployments", "default", "apps", ""),
    ("list", "pods", "default", "", ""),
    ("create", "pods", NS, "", ""),
    ("delete", "pods", NS, "", ""),
    ("get", "daemonsets", NS, "apps", "another-daemonset"),
    ("patch", "daemonsets", NS, "apps", "edge-fleet-agent"),
    ("get", "configmaps", NS, "", ""),
    ("patch", "nodes", "", "", ""),
    ("update", "nodes", "", "", ""),
    ("delete", "nodes", "", "", ""),
    ("create", "namespaces", "", "", ""),
    ("create", "clusterroles", "", "rbac.authorization.k8s.io", ""),
    ("create", "rolebindings", NS, "rbac.authorization.k8s.io", ""),
    ("create", "deployments", "kube-system", "apps", ""),
]


def _allowed(api: client.ApiClient, user: str, groups: list[str], verb: str, resource: str, ns: str, group: str, name: str) -> bool:
    review = client.AuthorizationV1Api(api).create_subject_access_review(
        client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=user,
                groups=groups,
                resource_attributes=client.V1ResourceAttributes(
                    verb=verb, resource=resource, namespace=ns or None, group=group, name=name or None
                ),
            )
        )
    )
    return bool(review.status.allowed)


def test_agent_service_account_has_least_privilege(applied: KubeAPIServer) -> None:
    with applied.api_client() as api:
        wrong = [a for a in AGENT_MAY if not _allowed(api, AGENT_SA, AGENT_GROUPS, *a)]
        wrong += [("allowed", *a) for a in AGENT_MUST_NOT if _allowed(api, AGENT_SA, AGENT_GROUPS, *a)]
        assert not wrong, f"agent RBAC differs from what the agent needs: {wrong}"
        hub_sa = f"system:serviceaccount:{NS}:edge-fleet-hub"
        hub_groups = ["system:serviceaccounts", f"system:serviceaccounts:{NS}", "system:authenticated"]
        assert not _allowed(api, hub_sa, hub_groups, "get", "nodes", "", "", "")
        assert not _allowed(api, hub_sa, hub_groups, "get", "secrets", NS, "", "")


def test_agent_token_works_as_the_agent(applied: KubeAPIServer, tmp_path: Path) -> None:
    """A real token for the agent's ServiceAccount, as the pod would mount."""
    token = applied.service_account_token(NS, "edge-fleet-agent")
    kubeconfig = applied.write_kubeconfig(tmp_path / "agent.kubeconfig", token=token, namespace=NS)
    with applied.api_client() as admin:
        client.CoreV1Api(admin).create_node(
            client.V1Node(metadata=client.V1ObjectMeta(name="deploy-gpu-node", labels={"nvidia.com/gpu.present": "true"}))
        )
    with applied.api_client(kubeconfig) as api:
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        node = core.read_node("deploy-gpu-node")
        assert node.metadata.labels["nvidia.com/gpu.present"] == "true"
        assert apps.read_namespaced_daemon_set("edge-fleet-agent", NS).metadata.uid
        dep = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "model-server-probe", "namespace": NS},
            "spec": {
                "selector": {"matchLabels": {"app": "probe"}},
                "template": {
                    "metadata": {"labels": {"app": "probe"}},
                    "spec": {"containers": [{"name": "server", "image": "vllm/vllm-openai:latest"}]},
                },
            },
        }
        apps.patch_namespaced_deployment(  # server-side apply, as the agent will
            "model-server-probe", NS, dep, field_manager="edge-fleet-agent", _content_type="application/apply-patch+yaml"
        )
        apps.delete_namespaced_deployment("model-server-probe", NS)
        for call in (
            lambda: core.read_namespaced_secret("edge-fleet-agent-bootstrap", NS),
            lambda: core.list_namespaced_secret("kube-system"),
            lambda: core.patch_node("deploy-gpu-node", {"spec": {"unschedulable": True}}),
        ):
            with pytest.raises(ApiException) as denied:
                call()
            assert denied.value.status == 403
    can_i = applied.kubectl("auth", "can-i", "--list", "-n", NS, kubeconfig=kubeconfig).stdout.decode()
    assert "secrets" not in can_i, can_i
    assert json.loads(applied.kubectl("get", "nodes", "-o", "json", kubeconfig=kubeconfig).stdout)["items"]


# -- each node its own identity; its state on the node -----------------------------------------------


def _private_key_material(name: str, value: bytes) -> bool:
    return name.endswith("key.pem") or name.endswith(".key") or b"PRIVATE KEY" in value


def _mounted_data(agent_pod: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, bytes]:
    """Every file the agent's pod gets from Secrets and ConfigMaps: 'volume/key' -> bytes."""
    out: dict[str, bytes] = {}
    for v in agent_pod["volumes"]:
        if "secret" in v:
            d = find(docs, "Secret", v["secret"]["secretName"])
            out.update({f"{v['name']}/{k}": base64.b64decode(x) for k, x in (d.get("data") or {}).items()})
            out.update({f"{v['name']}/{k}": x.encode() for k, x in (d.get("stringData") or {}).items()})
        elif "configMap" in v:
            d = find(docs, "ConfigMap", v["configMap"]["name"])
            out.update({f"{v['name']}/{k}": x.encode() for k, x in (d.get("data") or {}).items()})
    return out


@pytest.mark.parametrize("overlay", ["edge-site", "edge-site-external-runtime", "all-in-one"])
def test_no_node_private_key_is_shipped_to_the_agents(kube_apiserver: KubeAPIServer, overlay: str) -> None:
    docs = render(kube_apiserver, overlay)
    pod = find(docs, "DaemonSet", "edge-fleet-agent")["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    assert not [a for a in agent["args"] if a.startswith(("--cert", "--key"))], agent["args"]
    assert "--bootstrap-token-file=/etc/edge-fleet/bootstrap/token" in agent["args"]
    mounted = _mounted_data(pod, docs)
    assert "bootstrap/token" in mounted and "ca/ca.pem" in mounted, sorted(mounted)
    leaked = [name for name, value in mounted.items() if _private_key_material(name, value)]
    assert not leaked, f"the agent's pod mounts private keys: {leaked}"
    # Nothing else in the agent's manifests carries one either (the hub's own Secret is the hub's).
    for d in docs:
        if d["kind"] == "Secret" and d["metadata"]["name"] != "edge-fleet-hub-tls":
            for k, x in (d.get("data") or {}).items():
                assert not _private_key_material(k, base64.b64decode(x)), (d["metadata"]["name"], k)


def test_shipped_agent_mounts_no_private_key_and_keeps_its_state_on_the_node(applied: KubeAPIServer) -> None:
    """What the real API server holds after `kubectl apply -k`: the agent's Secrets carry no key, and
    its data dir (key, certificate, outbox, incarnation, applied state) is a hostPath, not an emptyDir."""
    with applied.api_client() as api:
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        pod = apps.read_namespaced_daemon_set("edge-fleet-agent", NS).spec.template.spec
        for v in pod.volumes:
            if v.secret is not None:
                secret = core.read_namespaced_secret(v.secret.secret_name, NS)
                for k, x in (secret.data or {}).items():
                    assert not _private_key_material(k, base64.b64decode(x)), (v.secret.secret_name, k)
        (agent,) = pod.containers
        site = core.read_namespaced_config_map(next(v for v in pod.volumes if v.name == "site").config_map.name, NS)
        data_dir = yaml.safe_load(site.data["agent.yaml"])["data_dir"]
        mount = next(m for m in agent.volume_mounts if m.mount_path == data_dir)
        volume = next(v for v in pod.volumes if v.name == mount.name)
        assert volume.empty_dir is None
        assert volume.host_path is not None, volume
        assert volume.host_path.path == "/var/lib/fleet-agent"
        assert volume.host_path.type == "DirectoryOrCreate"
        assert not mount.read_only
        # The agent is not root; an init container gives the directory to its user, 0700, with no more
        # than CHOWN and FOWNER.
        uid = pod.security_context.run_as_user
        assert uid and uid != 0 and pod.security_context.run_as_non_root is True
        (init,) = pod.init_containers
        assert any(m.name == mount.name for m in init.volume_mounts)
        script = " ".join(init.command)
        assert f"chown {uid}:{pod.security_context.run_as_group}" in script and "chmod 0700" in script, script
        assert init.security_context.capabilities.drop == ["ALL"]
        assert set(init.security_context.capabilities.add) == {"CHOWN", "FOWNER"}
        assert init.security_context.allow_privilege_escalation is False


def _dry_run_pod(api: client.ApiClient, pod: dict[str, Any]) -> ApiException | None:
    try:
        client.CoreV1Api(api).create_namespaced_pod(NS, pod, dry_run="All")
    except ApiException as exc:
        return exc
    return None


def test_only_the_agents_pods_get_host_access(applied: KubeAPIServer) -> None:
    """The namespace must admit the agent's pod (hostPath) under Pod Security, and the admission
    policy must still refuse host access to any other pod there (the model servers)."""
    with applied.api_client() as api:
        ds = client.AppsV1Api(api).read_namespaced_daemon_set("edge-fleet-agent", NS)
        template = api.sanitize_for_serialization(ds.spec.template)
        owner = {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "edge-fleet-agent", "uid": ds.metadata.uid,
                 "controller": True, "blockOwnerDeletion": True}
        agent_pod = {"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"generateName": "edge-fleet-agent-", "labels": template["metadata"]["labels"],
                                  "ownerReferences": [owner]},
                     "spec": template["spec"] | {"nodeName": "deploy-gpu-node"}}
        intruder = {"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"generateName": "model-server-", "labels": {"app": "model-server"}},
                    "spec": {"containers": [{"name": "server", "image": "vllm/vllm-openai:latest"}],
                             "volumes": [{"name": "steal", "hostPath": {"path": "/var/lib/fleet-agent"}}]}}
        # The admission policy takes effect once the API server has loaded it.
        deadline = time.monotonic() + 60
        refused = _dry_run_pod(api, intruder)
        while refused is None and time.monotonic() < deadline:
            time.sleep(0.5)
            refused = _dry_run_pod(api, intruder)
        assert refused is not None and "hostPath volumes are allowed only to the edge-fleet agent" in refused.body, refused
        privileged = json.loads(json.dumps(intruder))
        privileged["spec"]["volumes"] = []
        privileged["spec"]["containers"][0]["securityContext"] = {"privileged": True}
        refused = _dry_run_pod(api, privileged)
        assert refused is not None and "privileged containers are not allowed" in refused.body, refused
        plain = json.loads(json.dumps(intruder))
        plain["spec"]["volumes"] = []
        assert _dry_run_pod(api, plain) is None  # a model server without host access is fine
        err = _dry_run_pod(api, agent_pod)
        assert err is None, err.body if err else ""
