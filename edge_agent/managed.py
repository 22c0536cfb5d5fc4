"""External-runtime mode: one OpenAI-compatible model server per *assignment*
of this node's Placement, as a Kubernetes Deployment and Service that the
agent creates, updates, adopts and deletes.

The hub publishes one Placement per node, ``{site, node, assignments: [...],
costModel, country}`` (``hub/publish.py``); each assignment (one service's
demand from one region, possibly one shard of it) becomes its own Deployment
and Service, named after the placement and the assignment's key
(service/region/shard), so a new model version updates the same Deployment
(a rolling update) instead of creating another.

`ManagedServers` is the `Applier` for kind "Placement". `apply` and `remove`
only validate and record the desired set (they run on the hub link's event
loop and must not block on the API server); a reconciler thread converges
the cluster to that set, level-triggered, like a Kubernetes controller:

  list what we manage on this node (by labels) -> server-side apply every
  desired assignment's Deployment and Service -> delete the rest.

So an agent restart adopts what it created (same names, same field manager,
no duplicates) and deletes strays: objects whose assignment it no longer
holds. Strays are only deleted once the desired set is authoritative (the
hub link resynced, or local state held objects at start), so an agent that
lost its local state does not tear down serving model servers before the hub
has told it what to keep. A drifted object (edited, or deleted by hand) is
put back on the next periodic pass.

After each pass the Services' addresses (clusterIP:port) are the door's
routes (`routes(model)`): the agent's OpenAI port forwards a request for a
model to the Service of the assignment that serves it (see
`edge_agent.managed_door`), so residency is enforced at the agent's door.

GPUs: each replica requests `gpusPerReplica` whole `nvidia.com/gpu`. A
fractional `gpuShare` (< 1) takes one slice where the node offers slices
(`gpu_request`): the NVIDIA device plugin's renamed time-slicing/MPS resource
`nvidia.com/gpu.shared`, or `nvidia.com/gpu` itself when the Node's
`nvidia.com/gpu.replicas` label says each GPU is shared; otherwise it is
rounded up to one whole GPU, and the Deployment's annotation
`fleet.edge/gpu-share` and a `GpuShareRoundedUp` Event say so.

Failures: an API-server condition (unreachable, slow, 5xx) aborts the pass:
one log line, backoff with jitter, what runs keeps running. A failure of one
object (403, 422) posts a PlacementFailed Event and reports to the hub; the
pass goes on with the others.

`PlacementSpec.from_object`, `gpu_request` and `render` are the decisions
(pure): what the hub asked for, and what the Deployment and Service look like.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edge_agent.kube import Kube, KubeError, OutageLog
from edge_agent.link import backoff_delay
from edge_agent.state import LocalObject

log = logging.getLogger(__name__)

KIND = "Placement"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "fleet-agent"
SITE_LABEL = "fleet.edge/site"
NODE_LABEL = "fleet.edge/node"
PLACEMENT_LABEL = "fleet.edge/placement"
ASSIGNMENT_LABEL = "fleet.edge/assignment"
GPU_SHARE_ANNOTATION = "fleet.edge/gpu-share"
GPU_RESOURCE = "nvidia.com/gpu"
SHARED_GPU_RESOURCE = "nvidia.com/gpu.shared"
"""What the NVIDIA device plugin advertises for time-slicing or MPS with `renameByDefault: true`."""
GPU_REPLICAS_LABEL = "nvidia.com/gpu.replicas"
"""GPU feature discovery: slices per GPU when time-slicing/MPS shares `nvidia.com/gpu` itself."""
SERVER_PORT = 8000
TERMINATION_GRACE_S = 120
"""Seconds a replacing or deleted model server gets to finish the requests it streams."""
PRESTOP_SLEEP_S = 10
"""Seconds a terminating model server keeps serving after leaving the Service's endpoints."""


class PlacementError(ValueError):
    """The Placement's spec cannot be served on this node; the message says why."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    namespace: str
    site: str
    node: str
    image: str
    """OpenAI-compatible server image (vLLM's by default)."""
    pod_name: str = ""
    """The agent's own Pod ($POD_NAME): its controller (the DaemonSet) owns the model servers."""
    resync_s: float = 30.0
    """Seconds between full passes when nothing changes (repairs drift)."""
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One assignment of a Placement: what its Deployment and Service serve."""

    service: str
    region: str
    shard: int
    model: str
    version: str
    replicas: int
    gpus_per_replica: int
    gpu_share: float
    """Compute share of one replica on its GPU; 1.0 = whole GPUs (always for multi-GPU replicas)."""

    @property
    def key(self) -> str:
        """Identifies the assignment across versions (the planner's workload key)."""
        return f"{self.service}/{self.region}/{self.shard}"


@dataclass(frozen=True, slots=True)
class PlacementSpec:
    """This node's Placement as the hub publishes it: its assignments, one model server each."""

    servers: tuple[ServerSpec, ...]

    @classmethod
    def from_object(cls, obj: LocalObject, node: str) -> PlacementSpec:
        """Parse the hub's shape ``{site, node, assignments: [...], ...}``; raise PlacementError naming the field.

        Numbers may arrive as floats (protobuf Struct); whole ones are accepted.
        """
        s = obj.spec
        where = f"Placement {obj.name}"
        target = s.get("node")
        if not target:
            raise PlacementError(f"{where}: spec.node is missing")
        if target != node:
            raise PlacementError(f"{where} is for node {target!r}, this agent serves {node!r}")
        items = s.get("assignments")
        if items is None:
            raise PlacementError(
                f"{where}: spec.assignments is missing (the hub publishes {{site, node, assignments: [...]}}; "
                "publish placements with `fleet apply`)")
        if not isinstance(items, list):
            raise PlacementError(f"{where}: spec.assignments must be a list")
        servers: list[ServerSpec] = []
        seen: dict[str, int] = {}
        for i, a in enumerate(items):
            servers.append(_server(a, f"{where}: spec.assignments[{i}]", node))
            key = servers[-1].key
            if key in seen:
                raise PlacementError(f"{where}: spec.assignments[{i}] repeats assignment {key} "
                                     f"(also spec.assignments[{seen[key]}])")
            seen[key] = i
        return cls(tuple(servers))


def _server(a: Any, where: str, node: str) -> ServerSpec:
    if not isinstance(a, Mapping):
        raise PlacementError(f"{where} must be a mapping")

    def need(key: str) -> Any:
        if key not in a or a[key] in (None, ""):
            raise PlacementError(f"{where}.{key} is missing")
        return a[key]

    def integer(key: str, low: int) -> int:
        v = need(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < low:
            raise PlacementError(f"{where}.{key} {v!r} must be a whole number >= {low}")
        return int(v)

    if a.get("node") not in (None, "", node):
        raise PlacementError(f"{where} is for node {a['node']!r}, this agent serves {node!r}")
    share = a.get("gpuShare", 1.0)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
        raise PlacementError(f"{where}.gpuShare {share!r} must be in (0, 1]")
    gpus = integer("gpusPerReplica", 1)
    return ServerSpec(
        service=str(need("service")), region=str(a.get("region") or ""),
        shard=integer("shard", 0) if "shard" in a else 0, model=str(need("model")), version=str(need("version")),
        replicas=integer("replicas", 0), gpus_per_replica=gpus, gpu_share=float(share) if gpus == 1 else 1.0,
    )


@dataclass(frozen=True, slots=True)
class GpuRequest:
    """What one replica asks the device plugin for."""

    resource: str
    count: int
    memory_fraction: float | None = None
    """vLLM's --gpu-memory-utilization on a shared GPU; None = the server's default (whole GPUs)."""
    note: str = ""
    """Why the request differs from the placement (a share rounded up), for an annotation and an Event."""


def gpu_request(server: ServerSpec, node: Mapping[str, Any] | None) -> GpuRequest:
    """The GPU request of one replica of `server` on `node` (the Node object; None = unknown)."""
    if server.gpu_share >= 1:
        return GpuRequest(GPU_RESOURCE, server.gpus_per_replica)
    memory = max(0.05, round(0.9 * server.gpu_share, 2))  # our share of the memory vLLM may take
    node = node or {}
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    labels = (node.get("metadata") or {}).get("labels") or {}
    if _positive(allocatable.get(SHARED_GPU_RESOURCE)):
        return GpuRequest(SHARED_GPU_RESOURCE, 1, memory)
    if _positive(labels.get(GPU_REPLICAS_LABEL), above=1):
        return GpuRequest(GPU_RESOURCE, 1, memory)  # nvidia.com/gpu is itself a slice here
    return GpuRequest(GPU_RESOURCE, 1, None, (
        f"gpuShare {server.gpu_share:g} rounded up to one whole {GPU_RESOURCE}: the node advertises no "
        f"{SHARED_GPU_RESOURCE} and no {GPU_REPLICAS_LABEL} label (enable time-slicing or MPS in the NVIDIA "
        "device plugin to share GPUs); replicas the planner packed onto one GPU may stay Pending"))


def _positive(text: Any, above: int = 0) -> bool:
    try:
        return int(str(text)) > above
    except ValueError:
        return False


def _dns_label(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")


def assignment_id(obj: LocalObject, server: ServerSpec) -> str:
    """A label value that names one assignment of one placement (stable across versions)."""
    return hashlib.sha256(f"{obj.id}/{server.key}".encode()).hexdigest()[:16]


def server_name(obj: LocalObject, server: ServerSpec) -> str:
    """Deployment and Service name: readable, stable for the assignment, a valid DNS-1035 label."""
    stem = _dns_label(f"{server.service}-{server.region}-{server.shard}")[:40].strip("-") or "server"
    return f"m-{stem}-{assignment_id(obj, server)[:10]}"


def selector_labels(settings: ServerSettings) -> dict[str, str]:
    """What marks an object as this agent's (this site and node)."""
    return {MANAGED_BY: MANAGER, SITE_LABEL: settings.site, NODE_LABEL: settings.node}


def render(obj: LocalObject, server: ServerSpec, settings: ServerSettings, owner: dict | None,
           gpu: GpuRequest | None = None) -> tuple[dict, dict]:
    """The Deployment and Service that serve one assignment of `obj` on this node."""
    gpu = gpu or gpu_request(server, None)
    name = server_name(obj, server)
    aid = assignment_id(obj, server)
    labels = {**selector_labels(settings), PLACEMENT_LABEL: obj.id, ASSIGNMENT_LABEL: aid,
              "app.kubernetes.io/name": "model-server"}
    annotations = {
        "fleet.edge/placement-name": obj.name,
        "fleet.edge/placement-version": str(obj.version),
        "fleet.edge/service": server.service,
        "fleet.edge/region": server.region,
        "fleet.edge/shard": str(server.shard),
        "fleet.edge/model": f"{server.model}:{server.version}",
    }
    if server.gpu_share < 1:
        annotations[GPU_SHARE_ANNOTATION] = gpu.note or f"{server.gpu_share:g} of a GPU: one {gpu.resource} slice"
    meta: dict[str, Any] = {"name": name, "namespace": settings.namespace, "labels": labels, "annotations": annotations}
    if owner:
        meta["ownerReferences"] = [owner]
    # The version is the model's revision (a tag of its weights); clients name the model only.
    args = ["--model", server.model, "--revision", server.version, "--served-model-name", server.model,
            "--host", "0.0.0.0", "--port", str(SERVER_PORT)]
    if server.gpus_per_replica > 1:
        args += ["--tensor-parallel-size", str(server.gpus_per_replica)]
    if gpu.memory_fraction is not None:
        args += ["--gpu-memory-utilization", f"{gpu.memory_fraction:g}"]
    count = str(gpu.count)
    selector = {PLACEMENT_LABEL: obj.id, ASSIGNMENT_LABEL: aid}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": server.replicas,
            "selector": {"matchLabels": selector},
            # GPUs are the scarce thing: never surge past what the placement holds. A replaced
            # replica leaves the Service first, then finishes what it streams (preStop, grace).
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": {
                    # Pinned to this node by name, the way DaemonSets pin their pods.
                    "affinity": {
                        "nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [
                                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [settings.node]}]}
                                ]
                            }
                        }
                    },
                    "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
                    "containers": [
                        {
                            "name": "server",
                            "image": settings.image,
                            "args": args,
                            "ports": [{"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"}],
                            "resources": {"limits": {gpu.resource: count}, "requests": {gpu.resource: count}},
                            "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_S}}},
                            "startupProbe": {
                                "httpGet": {"path": "/health", "port": "http"},
                                "periodSeconds": 10, "failureThreshold": 180,  # model loading: up to 30 min
                            },
                            "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5},
                            "livenessProbe": {
                                "httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10, "failureThreshold": 6,
                            },
                            "securityContext": {"allowPrivilegeEscalation": False},
                            "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
                        }
                    ],
                    "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": SERVER_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    return deployment, service


@dataclass(frozen=True, slots=True)
class Route:
    """Where the door sends requests for a model: one assignment's Service."""

    host: str
    """The Service's clusterIP (kube-proxy routes it to a ready replica), or its DNS name when headless."""
    port: int
    gpus_per_replica: float
    """GPUs one replica holds (a share counts as its fraction): the door's basis for a request's GPU-seconds."""
    service: str


def owner_reference(pod: dict) -> dict | None:
    """The agent Pod's controller (its DaemonSet), which lives as long as the
    installation: deleting it garbage-collects the model servers, while a
    rolling update of the agent leaves them serving. No controller: the Pod."""
    meta = pod.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            return {"apiVersion": ref["apiVersion"], "kind": ref["kind"], "name": ref["name"], "uid": ref["uid"]}
    if meta.get("uid"):
        return {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}
    return None


class ManagedServers:
    """Applier for "Placement" in external-runtime mode; see the module docstring."""

    def __init__(
        self,
        kube: Kube,
        settings: ServerSettings,
        *,
        authoritative: Callable[[], bool] = lambda: True,
        report: Callable[[str, dict], object] | None = None,
        on_error: Callable[[str], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.authoritative = authoritative
        self.report = report
        self.on_error = on_error
        self.rng = rng or random.Random()
        self._desired: dict[str, LocalObject] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outage = OutageLog(log, "managing model servers")
        self._owner: dict | None = None
        self._owner_resolved = not settings.pod_name
        self._failed: dict[str, tuple[int, str]] = {}  # placement id -> (version, condition) already reported
        self._applied_here: set[str] = set()  # placement ids applied by this process
        self._rounded: set[tuple[str, str]] = set()  # (server name, note) already announced by an Event
        self._waiting_logged = False
        self._routes: dict[str, tuple[Route, ...]] = {}  # model -> its Services (swapped whole, read anywhere)
        self.dial: Callable[[str, int], str] = lambda host, port: f"http://{host}:{port}"
        """Base URL for a Service address. In a cluster the clusterIP is dialled (kube-proxy
        routes it); a test without kube-proxy maps it to where it runs the model server."""
        self.passes = 0
        self.last_error = ""

    # -- Applier (hub link's event loop; never blocks on the API) ----------

    def load(self, objects: list[LocalObject]) -> None:
        """Placements held in local state before a restart: still desired."""
        with self._lock:
            for o in objects:
                if o.kind == KIND:
                    self._desired[o.id] = o
        self._wake.set()

    def apply(self, obj: LocalObject, previous: LocalObject | None) -> None:
        PlacementSpec.from_object(obj, self.settings.node)  # raise: the hub hears, the old version stays
        with self._lock:
            self._desired[obj.id] = obj
        self._wake.set()

    def remove(self, obj: LocalObject) -> None:
        with self._lock:
            self._desired.pop(obj.id, None)
        self._wake.set()

    def desired(self) -> dict[str, LocalObject]:
        with self._lock:
            return dict(self._desired)

    def routes(self, model: str) -> tuple[Route, ...]:
        """The Services that serve `model` (any version) on this node, as of the last pass."""
        return self._routes.get(model, ())

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="managed-servers", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30.0)
            if self._thread.is_alive():
                log.warning("model-server reconciler did not stop within 30s (a slow API call); leaving it as a daemon")

    def kick(self) -> None:
        """Run a pass now (e.g. after the hub link resynced)."""
        self._wake.set()

    # -- the reconciler (its own thread) -------------------------------------

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            self._wake.clear()
            delay = self.settings.resync_s
            try:
                self.reconcile_once()
                self._outage.ok()
                attempt = 0
            except KubeError as exc:
                if self._stop.is_set():
                    break
                if self._outage.failed(exc, "model servers keep running as they are; retrying with backoff"):
                    self._error(f"kubernetes: {exc.summary}: {exc}")
                delay = backoff_delay(attempt, self.settings.backoff_initial_s, self.settings.backoff_max_s, self.rng)
                attempt += 1
            except Exception:  # noqa: BLE001 - the control loop never dies
                log.exception("model-server reconcile pass failed; retrying")
                delay = backoff_delay(attempt, self.settings.backoff_initial_s, self.settings.backoff_max_s, self.rng)
                attempt += 1
            self._wake.wait(delay)

    def reconcile_once(self) -> None:
        """One level-triggered pass. Raises KubeError for API-server conditions."""
        owner = self._resolve_owner()
        selector = selector_labels(self.settings)
        existing = [("Deployment", o) for o in self.kube.list_objects("Deployment", selector)]
        existing += [("Service", o) for o in self.kube.list_objects("Service", selector)]
        desired = self.desired()  # after listing: anything listed and not desired now is not wanted
        by_name = {(k, o["metadata"]["name"]): o for k, o in existing}
        parsed: list[tuple[LocalObject, PlacementSpec]] = []
        for obj in sorted(desired.values(), key=lambda o: o.version):
            try:
                parsed.append((obj, PlacementSpec.from_object(obj, self.settings.node)))
            except PlacementError as exc:  # held from an older agent that accepted it
                self._failed_once(obj, "", KubeError("invalid", str(exc)))
        node = self._node() if any(s.gpu_share < 1 for _, p in parsed for s in p.servers) else None
        keep: set[tuple[str, str]] = set()
        routes: dict[str, list[Route]] = {}
        for obj, spec in parsed:
            ok = True
            for server in spec.servers:
                gpu = gpu_request(server, node)
                dep, svc = render(obj, server, self.settings, owner, gpu)
                name = dep["metadata"]["name"]
                keep |= {("Deployment", name), ("Service", name)}
                try:
                    before = by_name.get(("Deployment", name), {}).get("metadata", {}).get("resourceVersion")
                    svc_before = by_name.get(("Service", name), {}).get("metadata", {}).get("resourceVersion")
                    out = self.kube.apply(dep)
                    svc_out = self.kube.apply(svc)
                except KubeError as exc:
                    if exc.transient:
                        raise
                    self._failed_once(obj, name, exc)
                    ok = False
                    continue
                route = _route(svc_out, server)
                if route is not None:
                    routes.setdefault(server.model, []).append(route)
                involved = {"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": out["metadata"].get("uid", "")}
                if gpu.note and (name, gpu.note) not in self._rounded:
                    self._rounded.add((name, gpu.note))
                    log.warning("placement %s v%d, %s: %s", obj.name, obj.version, server.key, gpu.note)
                    self._event(involved, "GpuShareRoundedUp", gpu.note, warning=True)
                changed = out["metadata"].get("resourceVersion") != before or svc_out["metadata"].get("resourceVersion") != svc_before
                if before is not None and not changed:
                    if obj.id not in self._applied_here:
                        log.info("placement %s v%d: adopted Deployment %s and Service (%s)", obj.name, obj.version, name, server.key)
                    continue
                verb = "created" if before is None else "updated"
                log.info(
                    "placement %s v%d: %s Deployment %s (%s %s:%s, %d x %d %s) and Service", obj.name, obj.version, verb,
                    name, server.key, server.model, server.version, server.replicas, gpu.count, gpu.resource,
                )
                self._event(
                    involved, "PlacementApplied",
                    f"placement {obj.name} v{obj.version}: {verb} {server.replicas} replica(s) of "
                    f"{server.model}:{server.version} for {server.key} with {gpu.count} {gpu.resource} each "
                    f"on node {self.settings.node}",
                )
            if ok:
                self._failed.pop(obj.id, None)
            self._applied_here.add(obj.id)
        self._routes = {m: tuple(sorted(rs, key=lambda r: r.service)) for m, rs in routes.items()}
        strays = [(k, o) for k, o in existing if (k, o["metadata"]["name"]) not in keep]
        if strays and not self.authoritative():
            if not self._waiting_logged:
                log.info("%d model-server objects not in local state: waiting for the hub's resync before deleting them", len(strays))
                self._waiting_logged = True
            strays = []
        for kind, o in strays:
            meta = o["metadata"]
            pid = (meta.get("labels") or {}).get(PLACEMENT_LABEL, "")
            if self.kube.delete(kind, meta["name"], meta.get("uid")):
                why = "unplaced" if pid in self._applied_here else "stray: its placement is not held"
                log.info("deleted %s %s (placement %s, %s)", kind, meta["name"], pid or "?", why)
        self._applied_here &= set(desired)
        self.passes += 1

    def _node(self) -> dict | None:
        """This node's Node object (what GPU slices it offers); None when it cannot be read."""
        try:
            return self.kube.list_node(self.settings.node)[0]
        except KubeError as exc:
            if exc.transient:
                raise
            log.debug("cannot read Node %s (%s): GPU shares are rounded up to whole GPUs", self.settings.node, exc)
            return None

    def _resolve_owner(self) -> dict | None:
        if self._owner_resolved:
            return self._owner
        try:
            self._owner = owner_reference(self.kube.get_pod(self.settings.pod_name))
            self._owner_resolved = True
            log.info("model servers are owned by %s", f"{self._owner['kind']} {self._owner['name']}" if self._owner else "nobody")
        except KubeError as exc:
            if exc.transient:
                raise
            log.warning("cannot read this agent's Pod %s (%s): model servers get labels but no owner reference", self.settings.pod_name, exc)
            self._owner_resolved = True
        return self._owner

    def _failed_once(self, obj: LocalObject, name: str, exc: KubeError) -> None:
        key = (obj.version, exc.condition)
        self.last_error = f"placement {obj.name} v{obj.version}: {exc}"
        if self._failed.get(obj.id) == key:
            return
        self._failed[obj.id] = key
        log.warning("placement %s v%d failed: %s: %s", obj.name, obj.version, exc.summary, exc)
        self._error(f"Placement {obj.name} v{obj.version}: {exc}")
        if self.report is not None:
            self.report("event", {"reason": "PlacementFailed", "kind": KIND, "name": obj.name, "version": obj.version, "error": str(exc)[:2000]})
        if name:
            self._event({"apiVersion": "apps/v1", "kind": "Deployment", "name": name}, "PlacementFailed", str(exc), warning=True)

    def _event(self, involved: dict, reason: str, message: str, *, warning: bool = False) -> None:
        try:
            self.kube.post_event({k: v for k, v in involved.items() if v}, reason, message, warning=warning, host=self.settings.node)
        except KubeError as exc:
            if exc.transient:
                raise
            log.debug("cannot post %s event: %s", reason, exc)

    def _error(self, msg: str) -> None:
        if self.on_error is None:
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self.on_error, msg)
        except RuntimeError:
            pass


def _route(service: dict, server: ServerSpec) -> Route | None:
    """The door's route to an applied Service (None until it has an address)."""
    spec = service.get("spec") or {}
    meta = service.get("metadata") or {}
    ip = spec.get("clusterIP") or ""
    host = f"{meta.get('name')}.{meta.get('namespace')}.svc" if ip == "None" else ip
    ports = spec.get("ports") or []
    if not host or not ports:
        return None
    return Route(host, int(ports[0].get("port") or SERVER_PORT), server.gpus_per_replica * server.gpu_share,
                 meta.get("name", ""))
