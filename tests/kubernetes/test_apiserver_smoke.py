"""The kube_apiserver fixture is a real API server: objects persist in etcd,
RBAC is enforced, watches survive a restart, kubectl talks to it."""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.kubernetes.envtest import KubeAPIServer, require_kubernetes_client

require_kubernetes_client()

from kubernetes import client, watch  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402

pytestmark = pytest.mark.kubernetes

GPU_LABELS = {
    "nvidia.com/gpu.product": "NVIDIA-L4",
    "nvidia.com/gpu.memory": "23034",
    "nvidia.com/gpu.count": "2",
    "topology.kubernetes.io/region": "eu-west",
    "topology.kubernetes.io/zone": "eu-west-a",
}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def make_namespace(core: client.CoreV1Api, prefix: str) -> str:
    name = unique(prefix)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def test_server_reports_pinned_version(kube_apiserver: KubeAPIServer) -> None:
    assert kube_apiserver.version.startswith("v1."), kube_apiserver.version
    assert kube_apiserver.url.startswith("https://127.0.0.1:")
    assert kube_apiserver.ready()


def test_namespace_and_gpu_node_round_trip(kube_client: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_client)
    ns = make_namespace(core, "edge-site")
    assert core.read_namespace(ns).status.phase == "Active"

    name = unique("gpu-node")
    core.create_node(
        client.V1Node(
            metadata=client.V1ObjectMeta(name=name, labels=GPU_LABELS),
            spec=client.V1NodeSpec(
                taints=[client.V1Taint(key="nvidia.com/gpu", value="present", effect="NoSchedule")]
            ),
        )
    )
    resources = {"cpu": "16", "memory": "64Gi", "pods": "110", "nvidia.com/gpu": "2"}
    core.patch_node_status(name, {"status": {"capacity": resources, "allocatable": resources}})

    node = core.read_node(name)
    assert node.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-L4"
    assert node.metadata.labels["nvidia.com/gpu.memory"] == "23034"
    assert node.metadata.labels["nvidia.com/gpu.count"] == "2"
    assert node.status.allocatable["nvidia.com/gpu"] == "2"
    assert not node.spec.unschedulable

    core.patch_node(name, {"spec": {"unschedulable": True}})  # cordon
    assert core.read_node(name).spec.unschedulable is True
    core.patch_node(name, {"spec": {"unschedulable": False}})  # uncordon
    assert not core.read_node(name).spec.unschedulable


def test_rbac_is_enforced_for_service_accounts(
    kube_apiserver: KubeAPIServer, kube_client: client.ApiClient, tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube_client)
    rbac = client.RbacAuthorizationV1Api(kube_client)
    authz = client.AuthorizationV1Api(kube_client)
    ns, other = make_namespace(core, "edge-agent"), make_namespace(core, "elsewhere")

    core.create_namespaced_service_account(ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="agent")))
    rbac.create_namespaced_role(
        ns,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="pod-reader"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["get", "list", "watch"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        ns,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="agent-pod-reader"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="pod-reader"),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="agent", namespace=ns)],
        ),
    )

    user = f"system:serviceaccount:{ns}:agent"
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"]

    def allowed(verb: str, resource: str, namespace: str) -> bool:
        review = authz.create_subject_access_review(
            client.V1SubjectAccessReview(
                spec=client.V1SubjectAccessReviewSpec(
                    user=user,
                    groups=groups,
                    resource_attributes=client.V1ResourceAttributes(
                        verb=verb, resource=resource, namespace=namespace
                    ),
                )
            )
        )
        return bool(review.status.allowed)

    assert allowed("get", "pods", ns)
    assert allowed("watch", "pods", ns)
    assert not allowed("delete", "pods", ns)
    assert not allowed("get", "pods", other)
    assert not allowed("get", "secrets", other)
    assert not allowed("get", "secrets", ns)

    # The same with a real bound token signed by the server's SA key.
    token = kube_apiserver.service_account_token(ns, "agent")
    sa_kubeconfig = kube_apiserver.write_kubeconfig(tmp_path / "agent.kubeconfig", token=token, namespace=ns)
    with kube_apiserver.api_client(sa_kubeconfig) as sa_client:
        sa_core = client.CoreV1Api(sa_client)
        assert sa_core.list_namespaced_pod(ns).items == []
        with pytest.raises(ApiException) as denied:
            sa_core.list_namespaced_secret(other)
        assert denied.value.status == 403
        with pytest.raises(ApiException) as denied:
            sa_core.list_node()
        assert denied.value.status == 403


class _ConfigMapWatcher:
    """List-then-watch ConfigMaps in one namespace, as an agent would: the
    watch resumes from the last resource version seen; when that version is
    gone (410 Expired, as after an API server restart, whose watch cache
    starts afresh) it lists again and watches from the list's version."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.resource_version = ""
        self.events: queue.Queue[tuple[str, str]] = queue.Queue()
        self.watches = 0
        self.relists = 0
        self.expired = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="configmap-watch", daemon=True)

    def __enter__(self) -> _ConfigMapWatcher:
        self._relist()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "watch thread did not stop"

    def _relist(self) -> None:
        listing = self.core.list_namespaced_config_map(self.namespace, _request_timeout=10)
        self.relists += 1
        self.resource_version = listing.metadata.resource_version
        for cm in listing.items:
            self.events.put(("LISTED", cm.metadata.name))

    def _run(self) -> None:
        need_relist = False
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                if need_relist:
                    self._relist()
                    need_relist = False
                self.watches += 1
                for event in w.stream(
                    self.core.list_namespaced_config_map,
                    self.namespace,
                    resource_version=self.resource_version,
                    timeout_seconds=2,
                    _request_timeout=10,
                ):
                    obj: Any = event["object"]
                    self.resource_version = obj.metadata.resource_version
                    self.events.put((event["type"], obj.metadata.name))
                    if self._stop.is_set():
                        break
            except ApiException as exc:
                if exc.status == 410:
                    self.expired += 1
                    need_relist = True
                else:
                    self.errors.append(f"ApiException {exc.status}: {exc.reason}")
                    self._stop.wait(0.25)
            except Exception as exc:  # noqa: BLE001 - the loop must survive the outage
                self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                self._stop.wait(0.25)
            finally:
                w.stop()

    def wait_for(self, name: str, timeout: float = 30.0) -> tuple[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.5)
            except queue.Empty:
                continue
            if event[1] == name:
                return event
        raise AssertionError(f"no watch event for {name} in {timeout}s; errors: {self.errors[-3:]}")


def test_watch_resumes_after_apiserver_restart(kube_apiserver: KubeAPIServer, kube_client: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_client)
    ns = make_namespace(core, "watched")

    def create(name: str) -> None:
        core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name)))

    with _ConfigMapWatcher(kube_client, ns) as watcher:
        create("before-restart")
        assert watcher.wait_for("before-restart") == ("ADDED", "before-restart")
        watches_before = watcher.watches

        kube_apiserver.restart_apiserver(downtime=1.0)

        # Created while the watcher may still be reconnecting: it arrives by
        # the resumed watch or by the relist after 410, never lost.
        create("during-reconnect")
        assert watcher.wait_for("during-reconnect")[0] in {"ADDED", "LISTED"}
        # By now the watch is re-established: a new object arrives as a watch event.
        create("after-restart")
        assert watcher.wait_for("after-restart") == ("ADDED", "after-restart")
        assert watcher.watches > watches_before
        assert watcher.errors, "the restart should have broken the watch at least once"
    # The data outlived the API server process: it lives in etcd.
    names = {cm.metadata.name for cm in core.list_namespaced_config_map(ns).items}
    assert {"before-restart", "during-reconnect", "after-restart"} <= names


def test_kubectl_is_an_independent_client(kube_apiserver: KubeAPIServer, kube_client: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_client)
    name = unique("kubectl-node")
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name, labels=GPU_LABELS)))

    nodes = json.loads(kube_apiserver.kubectl("get", "nodes", "-o", "json").stdout)
    by_name = {n["metadata"]["name"]: n for n in nodes["items"]}
    assert by_name[name]["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-L4"

    kube_apiserver.kubectl("cordon", name)
    assert core.read_node(name).spec.unschedulable is True

    version = json.loads(kube_apiserver.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == kube_apiserver.version
