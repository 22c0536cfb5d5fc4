"""Typed fleet resources, Kubernetes style: ``apiVersion``, ``kind``,
``metadata``, ``spec``.

Field names are camelCase in YAML (``gpuPools``); Python attributes are
snake_case. Unknown keys are errors. Quantities carry their units in the
value (see :mod:`hub.policy.units`). Every field's docstring states its
unit and default.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_serializer, model_validator
from pydantic.alias_generators import to_camel

from hub.policy.units import (
    CarbonIntensity,
    Duration,
    LatencyDuration,
    Memory,
    Power,
    PricePerHour,
    Rate,
    TokenRate,
    format_memory,
)
from hub.policy.vocab import (
    COUNTRY_JURISDICTIONS,
    KNOWN_COUNTRIES,
    KNOWN_GPU_TYPES,
    KNOWN_JURISDICTIONS,
    unknown,
)

API_VERSION = "fleet.edge/v1alpha1"
KINDS = ("Site", "Model", "Service", "ResidencyPolicy", "PriorityClass")

_NAME_RE = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"


def _country(value: object) -> str:
    if isinstance(value, bool):
        hint = " (YAML reads a bare NO as false: quote it, country: \"NO\")" if value is False else ""
        raise ValueError(f"expected an ISO 3166 country code, got boolean {str(value).lower()}{hint}")
    if not isinstance(value, str) or value not in KNOWN_COUNTRIES:
        raise ValueError(unknown(value, "country code", KNOWN_COUNTRIES))
    return value


def _jurisdiction(value: object) -> str:
    if not isinstance(value, str) or value not in KNOWN_JURISDICTIONS:
        raise ValueError(unknown(value, "jurisdiction", KNOWN_JURISDICTIONS))
    return value


def _gpu_type(value: object) -> str:
    if not isinstance(value, str) or value not in KNOWN_GPU_TYPES:
        raise ValueError(unknown(value, "GPU type", KNOWN_GPU_TYPES))
    return value


Country = Annotated[str, BeforeValidator(_country)]
Jurisdiction = Annotated[str, BeforeValidator(_jurisdiction)]
GpuType = Annotated[str, BeforeValidator(_gpu_type)]
Name = Annotated[str, Field(pattern=_NAME_RE, min_length=1, max_length=63)]
WeightsDigest = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
RegionName = Annotated[str, Field(pattern=_NAME_RE, min_length=1, max_length=63)]
WeightsDigest = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]


class Spec(BaseModel):
    """Base for every nested object: strict keys, camelCase aliases."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        frozen=True,
    )


class Metadata(Spec):
    name: Name
    """Resource name, unique per kind (DNS-1123 style: lower case, digits, '-', '.'). Required."""
    labels: dict[str, str] = {}
    """Free-form labels. Default: none."""
    annotations: dict[str, str] = {}
    """Free-form notes (sources, owners). Default: none."""


# --------------------------------------------------------------------- Site


class MaintenanceWindow(Spec):
    start: dt.datetime
    """Window start, ISO 8601 with time zone (e.g. 2026-12-01T02:00:00Z). Required."""
    end: dt.datetime
    """Window end, ISO 8601 with time zone; must be after start. Required."""
    reason: str = ""
    """Why the site is down. Default: empty."""

    @model_validator(mode="after")
    def _ordered(self) -> "MaintenanceWindow":
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("start and end need a time zone, e.g. 2026-12-01T02:00:00Z")
        if self.end <= self.start:
            raise ValueError(f"end {self.end.isoformat()} is not after start {self.start.isoformat()}")
        return self


class GpuPool(Spec):
    name: Name
    """Pool name, unique within the site. Required."""
    node: Optional[Name] = None
    """Kubernetes node that holds these GPUs; its agent receives the pool's placements. Default: the pool name."""
    gpu_type: GpuType
    """GPU type, one of the known types (e.g. L4, L40S, A100-80GB, H100-SXM). Required."""
    count: int = Field(ge=1, le=4096)
    """Number of GPUs in the pool (integer >= 1). Required."""
    memory: Memory
    """GPU memory per GPU, e.g. 24GiB. Required."""
    price: PricePerHour
    """Price per GPU-hour in USD, e.g. $0.80/h (an estimate unless contracted). Required."""
    power: Power
    """Power per GPU used for carbon estimates, e.g. 72W (board maximum is a conservative bound). Required."""
    labels: dict[str, str] = {}
    """Free-form labels. Default: none."""

    @property
    def node_name(self) -> str:
        return self.node or self.name


class SiteSpec(Spec):
    region: RegionName
    """The demand region the site sits in (e.g. eu-central). Required."""
    country: Country
    """ISO 3166-1 alpha-2 country code of the site (quote "NO"). Required."""
    jurisdiction: Optional[Jurisdiction] = None
    """Legal jurisdiction (EU, EEA, UK, US, ...); must contain the country. Default: the country's first (EU for DE, EEA for NO)."""
    grid_intensity: CarbonIntensity
    """Location-based annual average grid carbon intensity, e.g. 344gCO2e/kWh. Required."""
    network_latency: dict[RegionName, LatencyDuration] = Field(min_length=1)
    """Round-trip time from users in each demand region to this site, e.g. {eu-central: 8ms}. A region not listed is not served from here. Required."""
    gpu_pools: list[GpuPool] = Field(min_length=1)
    """The site's GPU pools (one per node or per GPU kind). At least one."""
    labels: dict[str, str] = {}
    """Free-form labels (operator, tier). Default: none."""
    maintenance_windows: list[MaintenanceWindow] = []
    """Times when the site takes no placements. Default: none."""
    cordoned: bool = False
    """When true no new replicas are placed here. Default: false."""

    @model_validator(mode="after")
    def _consistent(self) -> "SiteSpec":
        allowed = COUNTRY_JURISDICTIONS[self.country]
        if self.jurisdiction is not None and self.jurisdiction not in allowed:
            raise ValueError(
                f"jurisdiction {self.jurisdiction!r} does not contain country {self.country!r} "
                f"(its jurisdictions: {', '.join(allowed)})"
            )
        seen: set[str] = set()
        for pool in self.gpu_pools:
            if pool.name in seen:
                raise ValueError(f"duplicate GPU pool name {pool.name!r}")
            seen.add(pool.name)
        return self

    @property
    def jurisdictions(self) -> tuple[str, ...]:
        """All jurisdictions the site is in (declared one first)."""
        js = COUNTRY_JURISDICTIONS[self.country]
        if self.jurisdiction and self.jurisdiction in js:
            return (self.jurisdiction,) + tuple(j for j in js if j != self.jurisdiction)
        return js

    def in_maintenance(self, at: dt.datetime) -> Optional[MaintenanceWindow]:
        for window in self.maintenance_windows:
            if window.start <= at < window.end:
                return window
        return None


# -------------------------------------------------------------------- Model


class Profile(Spec):
    gpu_type: GpuType
    """GPU type this profile was measured on. Required."""
    prefill_throughput: TokenRate
    """Prompt tokens processed per second by one replica, e.g. 6000tok/s. Required."""
    decode_throughput: TokenRate
    """Output tokens per second of one replica summed over maxBatch concurrent sequences, e.g. 900tok/s. Required."""
    max_batch: int = Field(ge=1, le=4096)
    """Concurrent sequences one replica decodes (integer). Required."""
    tpot_at_batch1: Optional[Duration] = None
    """Time per output token with one sequence running. Default: 0.6 x (maxBatch / decodeThroughput), a memory-bound floor."""

    @model_validator(mode="after")
    def _floor(self) -> "Profile":
        full = self.max_batch / self.decode_throughput
        if self.tpot_at_batch1 is not None and self.tpot_at_batch1 > full * (1 + 1e-9):
            raise ValueError(
                f"tpotAtBatch1 {self.tpot_at_batch1 * 1000:.1f}ms is slower than the full-batch "
                f"time per token {full * 1000:.1f}ms (maxBatch / decodeThroughput)"
            )
        return self


class ModelVersion(Spec):
    name: Name
    """Version name, unique within the model (e.g. v3). Required."""
    weight_size: Memory
    """Size of the weights, e.g. 16GiB. Required."""
    gpu_memory_per_replica: Memory
    """GPU memory one replica needs, weights + KV cache + activations, e.g. 20GiB; at least weightSize. Required."""
    profiles: list[Profile] = Field(min_length=1)
    """One performance profile per supported GPU type; the GPU types listed are the ones it runs on. At least one."""
    digest: Optional[WeightsDigest] = None
    """SHA-256 manifest digest of the version's weight files, ``sha256:`` + 64 hex digits, as
    ``fleet model digest DIR`` prints it; agents refuse to serve files that do not match.
    Required unless integrity is none."""
    integrity: Literal["sha256", "none"] = "sha256"
    """How agents check the weights before serving: ``sha256`` (against digest) or ``none`` (serve
    them unverified: an explicit opt-out, warned about at apply). Default: sha256."""

    @model_validator(mode="after")
    def _check(self) -> "ModelVersion":
        if self.integrity == "sha256" and self.digest is None:
            raise ValueError(
                "digest is missing: agents serve only weights they verified (fail-closed); run "
                "`fleet model digest DIR` on this version's model directory and add the `digest: sha256:...` "
                "it prints, or set `integrity: none` to serve the weights unverified")
        if self.integrity == "none" and self.digest is not None:
            raise ValueError("integrity is none but a digest is given: remove one of them "
                             "(drop `integrity: none` to have agents verify the digest)")
        if self.gpu_memory_per_replica < self.weight_size:
            raise ValueError(
                f"gpuMemoryPerReplica {format_memory(self.gpu_memory_per_replica)} is smaller than "
                f"weightSize {format_memory(self.weight_size)}"
            )
        seen: set[str] = set()
        for profile in self.profiles:
            if profile.gpu_type in seen:
                raise ValueError(f"two profiles for GPU type {profile.gpu_type!r}")
            seen.add(profile.gpu_type)
        return self

    @property
    def gpu_types(self) -> tuple[str, ...]:
        return tuple(p.gpu_type for p in self.profiles)

    def profile(self, gpu_type: str) -> Optional[Profile]:
        for p in self.profiles:
            if p.gpu_type == gpu_type:
                return p
        return None


class ModelSpec(Spec):
    description: str = ""
    """What the model is. Default: empty."""
    versions: list[ModelVersion] = Field(min_length=1)
    """Versions of the model. At least one; names unique."""

    @model_validator(mode="after")
    def _unique(self) -> "ModelSpec":
        names = [v.name for v in self.versions]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate version name(s): {', '.join(dupes)}")
        return self

    def version(self, name: str) -> Optional[ModelVersion]:
        for v in self.versions:
            if v.name == name:
                return v
        return None


# ------------------------------------------------------------------ Service


class Slo(Spec):
    ttft_p95: Duration
    """95th percentile time to first token seen by the client (network round trip included), e.g. 500ms. Required."""
    tpot_p95: Duration
    """95th percentile time per output token, e.g. 50ms. Required."""
    e2e_p95: Optional[Duration] = Field(default=None, alias="e2eP95")
    """95th percentile end-to-end request latency, e.g. 8s. Default: no end-to-end objective."""


class Demand(Spec):
    region: RegionName
    """Demand region the requests come from (e.g. eu-central). Required."""
    rate: Rate
    """Mean request arrival rate, e.g. 40rps (Poisson arrivals assumed). Required."""
    mean_prompt_tokens: int = Field(ge=1, le=10_000_000)
    """Mean prompt length in tokens. Required."""
    mean_output_tokens: int = Field(ge=1, le=10_000_000)
    """Mean output length in tokens. Required."""


class Autoscale(Spec):
    """How the hub's autoscaler may change a service's replicas from measured demand (issue 12).

    Bounds, not targets: the autoscaler plans from the demand the agents measure (per region of
    origin) and its forecast at the provisioning lead time, within ``minReplicas``..``maxReplicas``."""

    enabled: bool = False
    """Whether the autoscaler re-plans this service from measured demand. Default: false (the YAML's
    demand alone is planned, as without this block)."""
    min_replicas: int = Field(default=1, ge=0, le=10_000)
    """Fewest replicas the service keeps fleet-wide, whatever the forecast (0 lets it scale to zero).
    Integer 0..10000. Default: 1."""
    max_replicas: Optional[int] = Field(default=None, ge=1, le=10_000)
    """Most replicas the service may get fleet-wide; at least minReplicas. Integer 1..10000.
    Default: no cap but the fleet's capacity."""
    target_quantile: float = Field(default=0.9, ge=0.5, le=0.999)
    """Upper quantile of the demand forecast that is provisioned for (0.5 = the median forecast;
    higher for SLO-critical services). Number 0.5..0.999. Default: 0.9."""
    scale_down_delay: Duration = 600.0
    """How long demand must stay low before replicas are removed (hysteresis), e.g. 10min. Default: 10min."""
    lead_time: Optional[Duration] = None
    """Provisioning lead time (model load + warm-up) the forecast looks ahead by, e.g. 2min.
    Default: measured per model and site from the agents' own loads, else 120s."""

    @model_validator(mode="after")
    def _bounds(self) -> "Autoscale":
        if self.max_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError(f"minReplicas ({self.min_replicas}) is more than maxReplicas ({self.max_replicas}): "
                             "lower minReplicas or raise maxReplicas")
        return self


DriftSignal = Literal["promptTokens", "outputTokens", "nll", "ttftS", "itlS", "finish", "empty"]


class DriftSpec(Spec):
    """Drift detection thresholds of one service; each unset field keeps the hub's default
    (``hub/drift/config.py``, justified in the README's drift section)."""

    reference_requests: Optional[int] = Field(default=None, ge=100, le=100_000_000)
    """Requests in the reference window (the version's first ones after it rolls out). Default: 3000."""
    window_requests: Optional[int] = Field(default=None, ge=10, le=100_000_000)
    """Requests in the short current window, judged by KS/chi-squared tests. Default: 300."""
    large_window_requests: Optional[int] = Field(default=None, ge=0, le=100_000_000)
    """Requests in the long current window, judged by distances; 0 turns it off. Default: 1000."""
    min_requests: Optional[int] = Field(default=None, ge=1, le=100_000_000)
    """Fewest requests a side needs for any verdict. Default: 100."""
    large_sample: Optional[int] = Field(default=None, ge=1, le=100_000_000)
    """Sample size from which distances decide instead of tests. Default: 1000."""
    alpha: Optional[float] = Field(default=None, gt=0, lt=1)
    """Significance level of the tests. Default: 1e-6."""
    wasserstein: Optional[float] = Field(default=None, gt=0, le=100)
    """Normalised Wasserstein distance that counts as drift. Default: 0.2."""
    jensen_shannon: Optional[float] = Field(default=None, gt=0, le=1)
    """Jensen-Shannon distance between finish-reason mixes that counts as drift. Default: 0.1."""
    consecutive: Optional[int] = Field(default=None, ge=1, le=100)
    """Checks in a row that must agree before a drift is raised. Default: 2."""
    reference_since: Optional[dt.datetime] = None
    """Pin the reference to the requests from this time (with referenceUntil). Default: not pinned."""
    reference_until: Optional[dt.datetime] = None
    """End of the pinned reference. Default: not pinned."""
    signals: Optional[list[DriftSignal]] = None
    """Signals checked. Default: all."""

    @model_validator(mode="after")
    def _pinned(self) -> "DriftSpec":
        if (self.reference_since is None) != (self.reference_until is None):
            raise ValueError("referenceSince and referenceUntil go together: pin both or neither")
        for t in (self.reference_since, self.reference_until):
            if t is not None and t.tzinfo is None:
                raise ValueError("referenceSince/referenceUntil need a time zone, e.g. 2026-11-30T08:00:00Z")
        if self.reference_since is not None and self.reference_until <= self.reference_since:  # type: ignore[operator]
            raise ValueError("referenceUntil must be after referenceSince")
        return self


class ServiceSpec(Spec):
    model: Name
    """Name of the Model resource. Required."""
    version: Name
    """Version of that model. Required."""
    slo: Slo
    """Latency objectives. Required."""
    demand: list[Demand] = Field(min_length=1)
    """Demand per region; regions unique. At least one."""
    priority_class: Name
    """Name of a PriorityClass. Required."""
    data_class: Name
    """Data class of the requests (e.g. personal-eu); a ResidencyPolicy must exist for it. Required."""
    autoscale: Optional[Autoscale] = None
    """Autoscaler bounds and settings (enabled, minReplicas, maxReplicas, targetQuantile, scaleDownDelay,
    leadTime). Default: none (autoscaling off; the YAML's demand alone is planned)."""

    drift: Optional[DriftSpec] = None
    """Drift detection thresholds (see DriftSpec). Default: the hub's defaults."""

    @model_serializer(mode="wrap")
    def _without_unset_blocks(self, handler):  # type: ignore[no-untyped-def]
        # A service without these blocks serialises as before they existed: bundles (and their digests)
        # applied by earlier versions stay unchanged, so re-applying the same files is still a no-op.
        out = handler(self)
        if isinstance(out, dict):
            for key in ("autoscale", "drift"):
                if getattr(self, key) is None:
                    out.pop(key, None)
        return out

    @model_validator(mode="after")
    def _unique(self) -> "ServiceSpec":
        regions = [d.region for d in self.demand]
        dupes = sorted({r for r in regions if regions.count(r) > 1})
        if dupes:
            raise ValueError(f"demand lists region(s) more than once: {', '.join(dupes)}")
        return self


# ---------------------------------------------------------- ResidencyPolicy


class Allow(Spec):
    anywhere: bool = False
    """Allow every site (still subject to deny). Default: false."""
    jurisdictions: list[Jurisdiction] = []
    """Jurisdictions whose sites may hold the data (EEA includes the EU). Default: none."""
    countries: list[Country] = []
    """Countries whose sites may hold the data. Default: none."""
    sites: list[Name] = []
    """Site names that may hold the data. Default: none."""


class Deny(Spec):
    jurisdictions: list[Jurisdiction] = []
    """Jurisdictions whose sites may never hold the data. Default: none."""
    countries: list[Country] = []
    """Countries whose sites may never hold the data. Default: none."""
    sites: list[Name] = []
    """Site names that may never hold the data. Default: none."""


class ResidencyPolicySpec(Spec):
    data_class: Name
    """The data class this policy governs; one policy per data class. Required."""
    description: str = ""
    """Legal basis or notes. Default: empty."""
    allow: Allow = Allow()
    """Where the data may be processed. Default: nothing (fail-closed), which validation rejects."""
    deny: Deny = Deny()
    """Exceptions that win over allow. Default: none."""

    @model_validator(mode="after")
    def _not_empty(self) -> "ResidencyPolicySpec":
        a = self.allow
        if not (a.anywhere or a.jurisdictions or a.countries or a.sites):
            raise ValueError(
                "allow is empty, so the policy allows no site (fail-closed); "
                "list allow.jurisdictions, allow.countries or allow.sites, or set allow.anywhere: true"
            )
        return self


# ------------------------------------------------------------ PriorityClass


class PriorityClassSpec(Spec):
    value: int = Field(ge=-1_000_000, le=1_000_000)
    """Integer priority; higher wins (Gateway API Inference Extension convention). Required."""
    preemption_policy: Literal["PreemptLowerPriority", "Never"] = "PreemptLowerPriority"
    """Whether services of this class may displace lower-priority replicas when capacity is short. Default: PreemptLowerPriority."""
    sheddable: Optional[bool] = None
    """May be left unplaced (and requests answered 503) when capacity is short. Default: true when value < 0."""
    description: str = ""
    """Notes. Default: empty."""

    @property
    def is_sheddable(self) -> bool:
        return self.value < 0 if self.sheddable is None else self.sheddable


# ----------------------------------------------------------------- envelope


class _Resource(Spec):
    api_version: Literal["fleet.edge/v1alpha1"]
    """API version; must be fleet.edge/v1alpha1."""
    metadata: Metadata
    """Name, labels, annotations."""

    @property
    def name(self) -> str:
        return self.metadata.name


class Site(_Resource):
    kind: Literal["Site"]
    """Always Site."""
    spec: SiteSpec
    """The site."""


class Model(_Resource):
    kind: Literal["Model"]
    """Always Model."""
    spec: ModelSpec
    """The model and its versions."""


class Service(_Resource):
    kind: Literal["Service"]
    """Always Service."""
    spec: ServiceSpec
    """The serving objective."""


class ResidencyPolicy(_Resource):
    kind: Literal["ResidencyPolicy"]
    """Always ResidencyPolicy."""
    spec: ResidencyPolicySpec
    """The policy."""


class PriorityClass(_Resource):
    kind: Literal["PriorityClass"]
    """Always PriorityClass."""
    spec: PriorityClassSpec
    """The class."""


Resource = Site | Model | Service | ResidencyPolicy | PriorityClass

RESOURCE_TYPES: dict[str, type[_Resource]] = {
    "Site": Site,
    "Model": Model,
    "Service": Service,
    "ResidencyPolicy": ResidencyPolicy,
    "PriorityClass": PriorityClass,
}

assert set(RESOURCE_TYPES) == set(KINDS)
