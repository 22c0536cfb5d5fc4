"""Per-request telemetry: a window of DDSketches and counters per group, flushed to the hub.

Every finished request, whatever its outcome, is recorded once as a
:class:`RequestRecord` (stats are data). Observers turn the same records into
exports: the :class:`Telemetry` window here (the hub report) and
:class:`~edge_agent.serving.metrics.PrometheusExporter` (``/metrics``).

A window groups records by (model, version, priority class) and keeps
DDSketches (relative accuracy 1 %) of TTFT, every inter-token gap, TPOT,
queue time, end-to-end latency, and per-request cost and carbon, plus
counters. :meth:`Telemetry.flush` returns the window as the ``telemetry``
report payload (schema 1, below) and starts a new one; an empty window
flushes to None. The sketches travel as base64 DDSketch protobufs, which the
hub decodes and merges exactly (same bins as one sketch of the union)::

    {"schema": 1, "site", "node", "windowStart", "windowEnd",
     "groups": [{"model", "version", "priority", "requests", "errors", "rejected", "cancelled",
                 "forbidden", "promptTokens", "outputTokens", "gpuSeconds", "costUsd",
                 "energyJ", "carbonG", "sketches": {"ttftS", "itlS", "tpotS", "queueS",
                 "e2eS", "costUsd", "carbonG"}}]}

``requests`` counts every finished request of the group; ``errors``,
``rejected`` (shed, 503), ``cancelled`` (client went away) and ``forbidden``
(residency, 403) are subsets of it.
"""

from __future__ import annotations

import base64
import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ddsketch import DDSketch
from ddsketch.pb.proto import DDSketchProto

from edge_agent.runtime.request import RequestStats
from edge_agent.serving.cost import RequestCost

SCHEMA = 1
RELATIVE_ACCURACY = 0.01
SKETCHES = ("ttftS", "itlS", "tpotS", "queueS", "e2eS", "costUsd", "carbonG")


class Outcome(str, enum.Enum):
    OK = "ok"
    ERROR = "error"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    FORBIDDEN = "forbidden"


@dataclass(frozen=True)
class RequestRecord:
    """One finished request."""

    model: str
    version: str
    priority: str
    """Priority class name ("" when none)."""
    outcome: Outcome
    stats: RequestStats | None = None
    """Engine (or external stream) timings; None when refused before reaching a model."""
    cost: RequestCost | None = None
    service: str = ""
    """The Service the request was for (the model name when its placement names none)."""
    origin: str = ""
    """Demand region the request came from ("" when not known); see edge_agent.serving.demand."""

    @property
    def group(self) -> tuple[str, str, str]:
        return (self.model, self.version, self.priority)


def encode_sketch(sketch: DDSketch) -> str:
    """base64 of the DDSketch protobuf (what the hub decodes)."""
    return base64.b64encode(DDSketchProto.to_proto(sketch).SerializeToString()).decode()


def decode_sketch(text: str) -> DDSketch:
    from ddsketch.pb.proto import pb

    proto = pb.DDSketch()
    proto.ParseFromString(base64.b64decode(text))
    return DDSketchProto.from_proto(proto)  # type: ignore[return-value]


def _sketch() -> DDSketch:
    return DDSketch(relative_accuracy=RELATIVE_ACCURACY)


@dataclass
class GroupWindow:
    requests: int = 0
    errors: int = 0
    rejected: int = 0
    cancelled: int = 0
    forbidden: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    gpu_seconds: float = 0.0
    cost_usd: float = 0.0
    energy_j: float = 0.0
    carbon_g: float = 0.0
    sketches: dict[str, DDSketch] = field(default_factory=lambda: {k: _sketch() for k in SKETCHES})

    def add(self, r: RequestRecord) -> None:
        self.requests += 1
        if r.outcome is Outcome.ERROR:
            self.errors += 1
        elif r.outcome is Outcome.REJECTED:
            self.rejected += 1
        elif r.outcome is Outcome.CANCELLED:
            self.cancelled += 1
        elif r.outcome is Outcome.FORBIDDEN:
            self.forbidden += 1
        st = r.stats
        if st is not None:
            self.prompt_tokens += st.prompt_tokens
            self.output_tokens += st.output_tokens
            self.gpu_seconds += st.gpu_seconds
            sk = self.sketches
            if st.ttft_s is not None:
                sk["ttftS"].add(max(st.ttft_s, 0.0))
            for gap in st.itl_s:
                sk["itlS"].add(max(gap, 0.0))
            if st.tpot_s is not None:
                sk["tpotS"].add(max(st.tpot_s, 0.0))
            if st.queue_time_s is not None:
                sk["queueS"].add(max(st.queue_time_s, 0.0))
            if st.e2e_s is not None and r.outcome is Outcome.OK:
                sk["e2eS"].add(max(st.e2e_s, 0.0))
        if r.cost is not None:
            self.cost_usd += r.cost.cost_usd
            self.energy_j += r.cost.energy_j
            self.carbon_g += r.cost.carbon_g
            self.sketches["costUsd"].add(r.cost.cost_usd)
            self.sketches["carbonG"].add(r.cost.carbon_g)

    def payload(self, key: tuple[str, str, str]) -> dict:
        return {
            "model": key[0], "version": key[1], "priority": key[2],
            "requests": self.requests, "errors": self.errors, "rejected": self.rejected,
            "cancelled": self.cancelled, "forbidden": self.forbidden,
            "promptTokens": self.prompt_tokens, "outputTokens": self.output_tokens,
            "gpuSeconds": self.gpu_seconds, "costUsd": self.cost_usd, "energyJ": self.energy_j,
            "carbonG": self.carbon_g,
            "sketches": {k: encode_sketch(v) for k, v in self.sketches.items()},
        }


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


class Telemetry:
    """Records finished requests (thread-safe) into the current window and to observers."""

    def __init__(self, site: str, node: str, *, clock: Callable[[], datetime] | None = None) -> None:
        self.site = site
        self.node = node
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._groups: dict[tuple[str, str, str], GroupWindow] = {}
        self._start = self._clock()
        self.observers: list[Callable[[RequestRecord], None]] = []

    def record(self, r: RequestRecord) -> None:
        with self._lock:
            self._groups.setdefault(r.group, GroupWindow()).add(r)
        for obs in self.observers:
            obs(r)

    def flush(self) -> dict | None:
        """The current window as a ``telemetry`` payload (None if empty); a new window starts."""
        now = self._clock()
        with self._lock:
            groups, self._groups = self._groups, {}
            start, self._start = self._start, now
        if not groups:
            return None
        return {
            "schema": SCHEMA, "site": self.site, "node": self.node,
            "windowStart": _iso(start), "windowEnd": _iso(now),
            "groups": [g.payload(k) for k, g in sorted(groups.items())],
        }
