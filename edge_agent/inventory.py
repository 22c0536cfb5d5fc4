"""What this node has: GPUs from NVML, else torch, else the config; and its labels.

The one adapter to GPU discovery: nothing else in the agent asks NVML or torch
about devices.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace

from edge_agent.config import AgentConfig

log = logging.getLogger(__name__)
GIB = 1024**3


@dataclass(frozen=True, slots=True)
class Gpu:
    model: str
    memory_bytes: int
    count: int


@dataclass(frozen=True, slots=True)
class Inventory:
    gpus: tuple[Gpu, ...]
    source: str
    region: str = ""
    country: str = ""
    jurisdiction: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    unschedulable: bool = False

    def as_dict(self) -> dict:
        """The shape of protos' Inventory message (proto field names)."""
        return {
            "gpus": [{"model": g.model, "memory_bytes": str(g.memory_bytes), "count": g.count} for g in self.gpus],
            "region": self.region,
            "country": self.country,
            "jurisdiction": self.jurisdiction,
            "labels": dict(self.labels),
            "unschedulable": self.unschedulable,
            "gpu_source": self.source,
        }


def _group(devices: list[tuple[str, int]]) -> tuple[Gpu, ...]:
    return tuple(Gpu(m, mem, n) for (m, mem), n in sorted(Counter(devices).items()))


def from_nvml() -> tuple[Gpu, ...] | None:
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver: NVMLError_LibraryNotFound and friends
        return None
    try:
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else name
            devices.append((name, int(pynvml.nvmlDeviceGetMemoryInfo(h).total)))
        return _group(devices) or None
    finally:
        pynvml.nvmlShutdown()


def from_torch() -> tuple[Gpu, ...] | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    devices = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        devices.append((p.name, int(p.total_memory)))
    return _group(devices) or None


def detect(cfg: AgentConfig, *, probe: bool = True) -> Inventory:
    """GPUs from NVML, then torch (local runtime mode only), then the config (in that order)."""
    gpus, source = None, "config"
    if probe:
        # torch only where the local runtime loads it anyway: importing it costs an
        # external-runtime agent ~0.5 GB of RSS for nothing NVML cannot tell.
        probes = (("nvml", from_nvml), ("torch", from_torch)) if cfg.runtime_mode == "local" else (("nvml", from_nvml),)
        for name, fn in probes:
            gpus = fn()
            if gpus:
                source = name
                break
    if not gpus:
        gpus = tuple(Gpu(g.model, int(g.memory_gib * GIB), g.count) for g in cfg.gpus)
        source = "config"
    log.info("inventory from %s: %s", source, ", ".join(f"{g.count}x {g.model}" for g in gpus) or "no GPUs")
    return Inventory(gpus, source, cfg.region, cfg.country, cfg.jurisdiction, dict(cfg.labels))


GPU_RESOURCE = "nvidia.com/gpu"
NOT_HELD_LABEL = "fleet.edge/gpus-not-held"


def pod_gpus(pod: dict) -> int:
    """GPUs a Pod holds: the sum of its containers' `nvidia.com/gpu` limits (what the device plugin gives it)."""
    total = 0
    for c in (pod.get("spec") or {}).get("containers") or []:
        limit = ((c.get("resources") or {}).get("limits") or {}).get(GPU_RESOURCE)
        try:
            total += int(str(limit)) if limit is not None else 0
        except ValueError:
            pass
    return total


def held_by_pod(inv: Inventory, held: int | None) -> Inventory:
    """The node's inventory as far as this agent can use it: in-process mode the engine runs in
    the agent's pod, so only the GPUs the pod holds are placeable, whatever the node has.
    `held` None: unknown (not in a pod), no cap. The GPUs left out are counted in a label."""
    if held is None:
        return inv
    total = sum(g.count for g in inv.gpus)
    if held >= total:
        return inv
    gpus, left = [], held
    for g in inv.gpus:
        if left > 0:
            gpus.append(replace(g, count=min(g.count, left)))
            left -= gpus[-1].count
    return replace(inv, gpus=tuple(gpus), labels={**inv.labels, NOT_HELD_LABEL: str(total - held)})
