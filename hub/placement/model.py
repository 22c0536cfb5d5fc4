"""Typed inputs and outputs of placement (plain frozen dataclasses).

Units: seconds, bytes, requests/s, USD/hour, watts, gCO2e/kWh.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from hub.placement.perf import PerfProfile
from hub.placement.residency import ResidencyRule


@dataclass(frozen=True)
class Pool:
    """A pool of identical GPUs on one node of one site."""

    site: str
    name: str
    node: str
    gpu_type: str
    count: int
    memory: float
    """Bytes per GPU."""
    price: float
    """USD per GPU-hour."""
    power: float
    """Watts per GPU."""
    unavailable: Optional[str] = None
    """Why the pool's node takes no placements (e.g. cordoned in Kubernetes); None = available."""
    declared: Optional[int] = None
    """GPUs the Site declares for the pool when its node's agent reports fewer (``count`` is then
    what the agent reports: the planner never places on GPUs nobody has seen); None = as declared."""

    @property
    def cap_note(self) -> str:
        """Why ``count`` is below the declared number, or empty."""
        if self.declared is None:
            return ""
        return (f"capped at {self.count} of the {self.declared} GPUs the Site declares: "
                f"its agent on node {self.node} reports {self.count}")


@dataclass(frozen=True)
class SiteInfo:
    name: str
    region: str
    country: str
    jurisdictions: tuple[str, ...]
    intensity: float
    """gCO2e/kWh."""
    latency: Mapping[str, float]
    """Round-trip seconds from each demand region."""
    pools: tuple[Pool, ...]
    unavailable: Optional[str] = None
    """Why no new replicas go here (cordoned, maintenance), or None."""


@dataclass(frozen=True)
class Workload:
    """The demand of one service from one region: the unit that is placed."""

    service: str
    region: str
    model: str
    version: str
    rate: float
    prompt_tokens: float
    output_tokens: float
    ttft_slo: float
    tpot_slo: float
    e2e_slo: Optional[float]
    priority: int
    sheddable: bool
    data_class: str
    memory: float
    """Bytes of GPU memory per replica."""
    profiles: Mapping[str, PerfProfile]
    """GPU type -> profile; the keys are the GPU types it runs on."""
    shard: int = 0
    """Which part of the region's demand this is (0-based)."""
    shards: int = 1
    """How many parts the region's demand is numbered into (1 = whole); parts need not be equal."""
    fraction: float = 1.0
    """Share of the region's demand this part carries (``rate`` / the region's rate)."""

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.service, self.region, self.shard)

    def split(self, rates: Optional[tuple[float, ...]] = None) -> tuple["Workload", ...]:
        """This workload's demand in parts of ``rates`` req/s (default: two halves).

        Shard i of s becomes shards i*m .. i*m+m-1 of s*m (m = number of parts),
        so shard numbers stay unique however often parts are split again.
        """
        if rates is None:
            rates = (self.rate / 2, self.rate / 2)
        m = len(rates)
        if m < 2 or min(rates) <= 0 or abs(sum(rates) - self.rate) > 1e-9 * max(1.0, self.rate):
            raise ValueError(f"cannot split {self.rate} req/s into {rates}")
        return tuple(
            dataclasses.replace(self, rate=r, shard=self.shard * m + j, shards=self.shards * m,
                                fraction=self.fraction * r / self.rate)
            for j, r in enumerate(rates)
        )


@dataclass(frozen=True)
class Weights:
    """Objective weights; everything is converted to USD per hour."""

    cost: float = 1.0
    """Multiplier on GPU cost (USD/h). Default 1."""
    carbon_usd_per_kg: float = 0.10
    """USD per kg CO2e emitted (default 0.10, i.e. 100 USD/t)."""
    latency_usd_per_rps_s: float = 0.5
    """USD/h per (req/s x second of round trip); default 0.5 (40 req/s at 20 ms = 0.40 USD/h)."""
    churn_usd_per_replica: float = 0.2
    """USD/h-equivalent penalty per replica started somewhere it did not run before. Default 0.2."""
    unplaced_usd: float = 1000.0
    """Penalty per unplaced workload (x10 when not sheddable) in the exact solver. Default 1000."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not (value >= 0 and value < float("inf")):
                raise ValueError(f"weight {f.name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class Assignment:
    """Replicas of one workload on one GPU pool of one site."""

    service: str
    region: str
    shard: int
    shards: int
    model: str
    version: str
    site: str
    pool: str
    node: str
    gpu_type: str
    replicas: int
    gpus_per_replica: int
    memory_per_replica: float
    gpus: tuple[tuple[int, ...], ...]
    """GPU indices inside the pool, one tuple per replica."""
    gpu_share: float
    """Compute share of one replica on its GPU (1.0 for multi-GPU replicas)."""
    rate: float
    rtt: float
    ttft_p95: float
    """Predicted client-side p95 TTFT (RTT included), seconds."""
    tpot_p95: float
    residency: str
    """Why this site may hold the data (the policy clause that allows it)."""

    @classmethod
    def from_spec(cls, d: Mapping[str, Any]) -> "Assignment":
        return cls(
            service=d["service"], region=d["region"], shard=int(d["shard"]), shards=int(d["shards"]),
            model=d["model"], version=d["version"], site=d["site"], pool=d["pool"], node=d["node"],
            gpu_type=d["gpuType"], replicas=int(d["replicas"]), gpus_per_replica=int(d["gpusPerReplica"]),
            memory_per_replica=float(d["memoryPerReplicaBytes"]), gpus=tuple(tuple(int(i) for i in g) for g in d["gpus"]),
            gpu_share=float(d["gpuShare"]), rate=float(d["rateRps"]), rtt=float(d.get("rttS", 0.0)),
            ttft_p95=float(d["predictedTtftP95S"]), tpot_p95=float(d["predictedTpotP95S"]), residency=d["residency"],
        )

    def to_spec(self) -> dict[str, Any]:
        """Plain dict for the agent's desired-state object."""
        return {
            "service": self.service, "region": self.region, "shard": self.shard, "shards": self.shards, "model": self.model, "version": self.version,
            "site": self.site, "pool": self.pool, "node": self.node, "gpuType": self.gpu_type,
            "replicas": self.replicas, "gpusPerReplica": self.gpus_per_replica,
            "memoryPerReplicaBytes": self.memory_per_replica,
            "gpus": [list(g) for g in self.gpus], "gpuShare": self.gpu_share, "rateRps": self.rate,
            "rttS": self.rtt, "predictedTtftP95S": self.ttft_p95, "predictedTpotP95S": self.tpot_p95,
            "residency": self.residency,
        }


@dataclass(frozen=True)
class Unplaced:
    service: str
    region: str
    reason: str
    shed: bool
    """True when the workload is sheddable and was dropped for capacity."""
    fraction: float = 1.0
    """Share of the region's demand left unplaced (less than 1 when only some shards are)."""


@dataclass(frozen=True)
class Placement:
    assignments: tuple[Assignment, ...]
    unplaced: tuple[Unplaced, ...] = ()
    solver: str = ""
    objective: float = 0.0
    """USD/h-equivalent objective of this placement."""
    stats: Mapping[str, float] = field(default_factory=dict)
    reported_gpus: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """(site, node) -> GPUs its agent reported when this placement was planned, for the nodes that
    reported fewer than their Site declares (so ``fleet explain`` rebuilds the same capped pools)."""

    def by_agent(self) -> dict[tuple[str, str], list[Assignment]]:
        """(site, node) -> the assignments that agent must run."""
        out: dict[tuple[str, str], list[Assignment]] = {}
        for a in self.assignments:
            out.setdefault((a.site, a.node), []).append(a)
        return out

    def agent_specs(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(site, node) -> the desired-state spec that agent receives (only its own)."""
        return {key: {"site": key[0], "node": key[1], "assignments": [a.to_spec() for a in items]}
                for key, items in sorted(self.by_agent().items())}

    def for_agent(self, site: str, node: str) -> list[Assignment]:
        return [a for a in self.assignments if a.site == site and a.node == node]

    @classmethod
    def from_spec(cls, d: Mapping[str, Any]) -> "Placement":
        """Inverse of :meth:`to_spec` (e.g. the stored current placement)."""
        return cls(
            assignments=tuple(Assignment.from_spec(a) for a in d.get("assignments", ())),
            unplaced=tuple(Unplaced(u["service"], u["region"], u["reason"], bool(u["shed"]), float(u.get("fraction", 1.0)))
                           for u in d.get("unplaced", ())),
            solver=str(d.get("solver", "")), objective=float(d.get("objective", 0.0)),
            reported_gpus={tuple(k.split("/", 1)): int(v)  # type: ignore[misc]
                           for k, v in (d.get("reportedGpus") or {}).items()},
        )

    def to_spec(self) -> dict[str, Any]:
        """JSON-ready dict of the whole placement (stats left out)."""
        return {
            "solver": self.solver,
            "objective": self.objective,
            "assignments": [a.to_spec() for a in self.assignments],
            "unplaced": [{"service": u.service, "region": u.region, "reason": u.reason, "shed": u.shed, "fraction": u.fraction} for u in self.unplaced],
            **({"reportedGpus": {f"{s}/{n}": c for (s, n), c in sorted(self.reported_gpus.items())}}
               if self.reported_gpus else {}),
        }


@dataclass(frozen=True)
class Problem:
    """Everything placement needs; built from a bundle by :mod:`hub.placement.build`."""

    sites: tuple[SiteInfo, ...]
    workloads: tuple[Workload, ...]
    rules: Mapping[str, ResidencyRule]
    """data class -> residency rule (missing = allowed nowhere)."""
    weights: Weights = Weights()
    previous: Optional[Placement] = None
