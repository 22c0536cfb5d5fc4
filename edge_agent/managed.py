"""External-runtime mode: one OpenAI-compatible model server per Placement,
as a Kubernetes Deployment and Service that the agent creates, updates,
adopts and deletes.

`ManagedServers` is the `Applier` for kind "Placement". `apply` and `remove`
only validate and record the desired set (they run on the hub link's event
loop and must not block on the API server); a reconciler thread converges
the cluster to that set, level-triggered, like a Kubernetes controller:

  list what we manage on this node (by labels) -> server-side apply every
  desired placement's Deployment and Service -> delete the rest.

So an agent restart adopts what it created (same names, same field manager,
no duplicates) and deletes strays: objects whose placement it no longer
holds. Strays are only deleted once the desired set is authoritative (the
hub link resynced, or local state held objects at start), so an agent that
lost its local state does not tear down serving model servers before the hub
has told it what to keep. A drifted object (edited, or deleted by hand) is
put back on the next periodic pass.

Failures: an API-server condition (unreachable, slow, 5xx) aborts the pass:
one log line, backoff with jitter, what runs keeps running. A failure of one
object (403, 422) posts a PlacementFailed Event and reports to the hub; the
pass goes on with the others.

`render` is the decision (pure): what the Deployment and Service look like.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
import threading
from collections.abc import Callable
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
GPU_RESOURCE = "nvidia.com/gpu"
SERVER_PORT = 8000


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
class PlacementSpec:
    service: str
    shard: int
    model: str
    version: str
    node: str
    replicas: int
    gpus_per_replica: int
    gpu_share: float

    @classmethod
    def from_object(cls, obj: LocalObject, node: str) -> PlacementSpec:
        s = obj.spec

        def need(key: str) -> Any:
            if key not in s or s[key] in (None, ""):
                raise PlacementError(f"Placement {obj.name}: spec.{key} is missing")
            return s[key]

        def integer(key: str, low: int) -> int:
            v = need(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < low:
                raise PlacementError(f"Placement {obj.name}: spec.{key} {v!r} must be a whole number >= {low}")
            return int(v)

        spec = cls(
            service=str(need("service")),
            shard=integer("shard", 0) if "shard" in s else 0,
            model=str(need("model")),
            version=str(s.get("version", "")),
            node=str(need("node")),
            replicas=integer("replicas", 0),
            gpus_per_replica=integer("gpusPerReplica", 1),
            gpu_share=float(s.get("gpuShare", 1.0) or 1.0),
        )
        if spec.node != node:
            raise PlacementError(f"Placement {obj.name} is for node {spec.node!r}, this agent serves {node!r}")
        if not 0 < spec.gpu_share <= 1:
            raise PlacementError(f"Placement {obj.name}: spec.gpuShare {spec.gpu_share!r} must be in (0, 1]")
        return spec


def _dns_label(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")


def server_name(obj: LocalObject, spec: PlacementSpec) -> str:
    """Deployment and Service name: readable, stable for the placement, a valid DNS-1035 label."""
    digest = hashlib.sha256(obj.id.encode()).hexdigest()[:10]
    stem = _dns_label(f"{spec.service}-{spec.shard}")[:48].strip("-") or "server"
    return f"m-{stem}-{digest}"


def selector_labels(settings: ServerSettings) -> dict[str, str]:
    """What marks an object as this agent's (this site and node)."""
    return {MANAGED_BY: MANAGER, SITE_LABEL: settings.site, NODE_LABEL: settings.node}


def render(obj: LocalObject, spec: PlacementSpec, settings: ServerSettings, owner: dict | None) -> tuple[dict, dict]:
    """The Deployment and Service that serve `obj` on this node."""
    name = server_name(obj, spec)
    labels = {**selector_labels(settings), PLACEMENT_LABEL: obj.id, "app.kubernetes.io/name": "model-server"}
    annotations = {
        "fleet.edge/placement-name": obj.name,
        "fleet.edge/placement-version": str(obj.version),
        "fleet.edge/service": spec.service,
        "fleet.edge/model": f"{spec.model}:{spec.version}" if spec.version else spec.model,
    }
    meta: dict[str, Any] = {"name": name, "namespace": settings.namespace, "labels": labels, "annotations": annotations}
    if owner:
        meta["ownerReferences"] = [owner]
    args = ["--model", spec.model, "--served-model-name", spec.model, "--host", "0.0.0.0", "--port", str(SERVER_PORT)]
    if spec.gpus_per_replica > 1:
        args += ["--tensor-parallel-size", str(spec.gpus_per_replica)]
    if spec.gpu_share < 1:
        # A shared GPU (time-slicing): take only our share of its memory.
        args += ["--gpu-memory-utilization", f"{max(0.05, round(0.9 * spec.gpu_share, 2)):g}"]
    gpus = str(spec.gpus_per_replica)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": {PLACEMENT_LABEL: obj.id}},
            # GPUs are the scarce thing: never surge past what the placement holds.
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
                    "containers": [
                        {
                            "name": "server",
                            "image": settings.image,
                            "args": args,
                            "ports": [{"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"}],
                            "resources": {"limits": {GPU_RESOURCE: gpus}, "requests": {GPU_RESOURCE: gpus}},
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
            "selector": {PLACEMENT_LABEL: obj.id},
            "ports": [{"name": "http", "port": SERVER_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    return deployment, service


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
        self._applied_here: set[str] = set()
        self._waiting_logged = False
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
        keep: set[tuple[str, str]] = set()
        for obj in sorted(desired.values(), key=lambda o: o.version):
            try:
                spec = PlacementSpec.from_object(obj, self.settings.node)
            except PlacementError as exc:  # held from an older agent that accepted it
                self._failed_once(obj, "", KubeError("invalid", str(exc)))
                continue
            dep, svc = render(obj, spec, self.settings, owner)
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
                continue
            self._failed.pop(obj.id, None)
            first = obj.id not in self._applied_here
            self._applied_here.add(obj.id)
            changed = out["metadata"].get("resourceVersion") != before or svc_out["metadata"].get("resourceVersion") != svc_before
            if before is not None and not changed:
                if first:
                    log.info("placement %s v%d: adopted Deployment %s and Service", obj.name, obj.version, name)
                continue
            verb = "created" if before is None else "updated"
            log.info(
                "placement %s v%d: %s Deployment %s (%d x %d %s) and Service", obj.name, obj.version, verb, name,
                spec.replicas, spec.gpus_per_replica, GPU_RESOURCE,
            )
            self._event(
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": out["metadata"].get("uid", "")},
                "PlacementApplied",
                f"placement {obj.name} v{obj.version}: {verb} {spec.replicas} replica(s) of {spec.model} "
                f"with {spec.gpus_per_replica} GPU(s) each on node {self.settings.node}",
            )
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
