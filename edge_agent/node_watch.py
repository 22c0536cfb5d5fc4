"""This node's inventory from its Kubernetes Node object, kept current by a watch.

`inventory_from_node` is the decision (pure): GPU product, memory and count
from the labels NVIDIA's GPU feature discovery sets and the allocatable
`nvidia.com/gpu`, topology region/zone, and the cordon. Missing or malformed
GPU labels are reported as such (no GPUs and an `fleet.edge/inventory-error`
label, plus a recent error for the hub), never guessed.

`NodeWatch` is the loop: list, then watch from the list's resourceVersion
(one Node, by field selector), on a thread of its own because the client is
synchronous. A 410 Gone relists at once; a broken or refused connection
(API-server restart, outage) backs off with full jitter and resumes from the
last resourceVersion. One log line per condition, one when it ends; the
agent keeps reporting what it last saw meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import replace

from edge_agent.inventory import Gpu, Inventory
from edge_agent.kube import Kube, KubeError, OutageLog
from edge_agent.link import backoff_delay

log = logging.getLogger(__name__)

MIB = 1024**2
PRODUCT = "nvidia.com/gpu.product"
MEMORY = "nvidia.com/gpu.memory"
COUNT = "nvidia.com/gpu.count"
ALLOCATABLE = "nvidia.com/gpu"
REGION = "topology.kubernetes.io/region"
ZONE = "topology.kubernetes.io/zone"
ERROR_LABEL = "fleet.edge/inventory-error"
SOURCE = "kubernetes"
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"


def _count(text: str | None, what: str, problems: list[str]) -> int | None:
    if text is None:
        return None
    try:
        n = int(text)
    except ValueError:
        problems.append(f"{what} {text!r} is not a number")
        return None
    if n < 0:
        problems.append(f"{what} {text!r} is negative")
        return None
    return n


def inventory_from_node(node: dict | None, base: Inventory, node_name: str = "") -> Inventory:
    """The inventory a Node object describes, on top of `base` (the config's
    country, jurisdiction and labels). Region: the config's if set, else the
    Node's topology label. GPU count: allocatable `nvidia.com/gpu` (what the
    device plugin can hand out now) when present, else `nvidia.com/gpu.count`.
    The product name is the label verbatim (GFD writes "NVIDIA-L4")."""
    labels = dict(base.labels)
    if node is None:
        msg = f"Node {node_name!r} does not exist in the Kubernetes API"
        return replace(base, gpus=(), source=SOURCE, labels={**labels, ERROR_LABEL: msg}, unschedulable=True)
    meta, spec, status = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
    node_labels: dict[str, str] = meta.get("labels") or {}
    problems: list[str] = []

    product = node_labels.get(PRODUCT, "").strip()
    memory_mib = _count(node_labels.get(MEMORY), MEMORY, problems)
    label_count = _count(node_labels.get(COUNT), COUNT, problems)
    alloc_text = (status.get("allocatable") or {}).get(ALLOCATABLE)
    allocatable = _count(alloc_text, f"allocatable {ALLOCATABLE}", problems)

    gpus: tuple[Gpu, ...] = ()
    if not any(k in node_labels for k in (PRODUCT, MEMORY, COUNT)) and alloc_text is None:
        problems.append(f"no {PRODUCT}/{MEMORY}/{COUNT} labels (is NVIDIA GPU feature discovery running?)")
    else:
        if not product:
            problems.append(f"{PRODUCT} label is missing")
        if MEMORY not in node_labels:
            problems.append(f"{MEMORY} label is missing")
        elif memory_mib == 0:
            problems.append(f"{MEMORY} '0' is not a memory size")
        count = allocatable if allocatable is not None else label_count
        if COUNT not in node_labels and alloc_text is None:
            problems.append(f"no GPU count: neither a {COUNT} label nor allocatable {ALLOCATABLE}")
        if not problems and count and memory_mib:
            gpus = (Gpu(product, memory_mib * MIB, count),)
        if label_count is not None and allocatable is not None and allocatable < label_count:
            labels["fleet.edge/gpus-unallocatable"] = str(label_count - allocatable)

    region = base.region or node_labels.get(REGION, "")
    for key in (REGION, ZONE):
        if key in node_labels:
            labels[key] = node_labels[key]
    if problems:
        labels[ERROR_LABEL] = "; ".join(problems)[:1000]
    taints = spec.get("taints") or []
    unschedulable = bool(spec.get("unschedulable")) or any(
        t.get("key") == UNSCHEDULABLE_TAINT and t.get("effect") in ("NoSchedule", "NoExecute") for t in taints
    )
    return replace(base, gpus=gpus, source=SOURCE, region=region, labels=labels, unschedulable=unschedulable)


class NodeWatch:
    """Keeps `on_inventory` fed with this node's inventory from the API server."""

    def __init__(
        self,
        kube: Kube,
        node_name: str,
        base: Inventory,
        on_inventory: Callable[[Inventory], None],
        *,
        on_error: Callable[[str], None] | None = None,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        watch_timeout_s: tuple[int, int] = (240, 360),
        rng: random.Random | None = None,
    ) -> None:
        self.kube = kube
        self.node_name = node_name
        self.base = base
        self.on_inventory = on_inventory
        self.on_error = on_error
        self.backoff = (backoff_initial_s, backoff_max_s)
        self.watch_timeout_s = watch_timeout_s
        self.rng = rng or random.Random()
        self.inventory: Inventory | None = None
        self.events = 0  # Node versions seen (ADDED/MODIFIED/DELETED and lists)
        self.relists = 0
        self._outage = OutageLog(log, f"watching Node {node_name}")
        self._stop = threading.Event()
        self._stream = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._synced = asyncio.Event()
        self._problem = ""

    # -- lifecycle (event loop side) ---------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"node-watch-{self.node_name}", daemon=True)
        self._thread.start()

    async def wait_synced(self, timeout: float) -> bool:
        """True once the Node was read; False after `timeout` (the agent goes on with what it has)."""
        try:
            async with asyncio.timeout(timeout):
                await self._synced.wait()
            return True
        except TimeoutError:
            return False

    async def stop(self) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 15.0)
            if self._thread.is_alive():
                log.warning("node watch thread did not stop within 15s (a slow API call); leaving it as a daemon")

    # -- the watch loop (its own thread) -----------------------------------

    def _run(self) -> None:
        rv = ""
        attempt = 0
        while not self._stop.is_set():
            try:
                if not rv:
                    node, rv = self.kube.list_node(self.node_name)
                    self.relists += 1
                    self._outage.ok()
                    attempt = 0
                    self._seen(node)
                timeout = self.rng.randint(*self.watch_timeout_s)
                with self.kube.watch_node(self.node_name, rv, timeout) as stream:
                    self._stream = stream
                    if self._stop.is_set():
                        break
                    self._outage.ok()
                    attempt = 0
                    for etype, obj in stream:
                        new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                        if new_rv:
                            rv = str(new_rv)
                        if etype in ("ADDED", "MODIFIED"):
                            self._seen(obj)
                        elif etype == "DELETED":
                            self._seen(None)
                # The server ended the watch (timeout, or it is shutting down): resume from rv.
            except KubeError as exc:
                if self._stop.is_set():
                    break
                if exc.condition == "gone":
                    log.info("watching Node %s: resourceVersion %s expired (410 Gone); relisting", self.node_name, rv)
                    rv = ""
                    continue
                if self._outage.failed(exc, "keeping the last known inventory and retrying with backoff"):
                    self._error(f"kubernetes: {exc.summary}: {exc}")
                self._sleep(attempt)
                attempt += 1
            except Exception:  # noqa: BLE001 - the watch loop never dies
                if self._stop.is_set():
                    break
                log.exception("watching Node %s failed unexpectedly; retrying", self.node_name)
                self._sleep(attempt)
                attempt += 1
            finally:
                self._stream = None

    def _sleep(self, attempt: int) -> None:
        self._stop.wait(backoff_delay(attempt, *self.backoff, self.rng))

    def _seen(self, node: dict | None) -> None:
        inv = inventory_from_node(node, self.base, self.node_name)
        self.events += 1
        problem = inv.labels.get(ERROR_LABEL, "")
        if problem and problem != self._problem:
            log.warning("Node %s: %s", self.node_name, problem)
            self._error(f"inventory: {problem}")
        self._problem = problem
        if inv != self.inventory:
            if self.inventory is not None and inv.unschedulable != self.inventory.unschedulable:
                log.warning("Node %s %s", self.node_name, "cordoned: reporting unschedulable" if inv.unschedulable else "uncordoned")
            self.inventory = inv
            self._call(self.on_inventory, inv)
        self._call(self._synced.set)

    def _error(self, msg: str) -> None:
        if self.on_error is not None:
            self._call(self.on_error, msg)

    def _call(self, fn: Callable, *args: object) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed meanwhile
            pass
