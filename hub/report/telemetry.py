"""The ``telemetry`` report payload an agent sends, parsed and validated.

Wire format (schema 1, JSON)::

    {"schema": 1, "site": "...", "node": "...",
     "windowStart": "<ISO 8601 UTC>", "windowEnd": "<ISO 8601 UTC>",
     "groups": [{"model": "...", "version": "...", "priority": "<PriorityClass>",
                 "requests": int, "errors": int, "rejected": int, "cancelled": int, "forbidden": int,
                 "promptTokens": int, "outputTokens": int,
                 "gpuSeconds": float, "costUsd": float, "energyJ": float, "carbonG": float,
                 "sketches": {"ttftS": "<b64>", "itlS": ..., "tpotS": ..., "queueS": ...,
                              "e2eS": ..., "costUsd": ..., "carbonG": ...}}]}

Each sketch is ``base64(DDSketchProto.to_proto(DDSketch(0.01)).SerializeToString())``.
A missing sketch key is an empty sketch; unknown keys (in the payload, a
group or ``sketches``) are ignored so that an agent one minor version ahead
can still be read.

A payload is accepted whole or refused whole: :func:`parse_payload` raises
:class:`PayloadError` with the path to the first problem
(``groups[2].sketches.ttftS: not valid base64``), and the report turns that
into a skipped entry with the reason. Nothing here crashes on hostile input:
wrong types, bad base64, truncated protobuf, sketches made with another
accuracy, bins far out of range, NaN counts.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from ddsketch import DDSketch
from ddsketch.ddsketch import BaseDDSketch
from ddsketch.mapping import LogarithmicMapping
from ddsketch.pb.proto import DDSketchProto, pb
from ddsketch.store import DenseStore

from hub.report import fields
from hub.report.fields import PayloadError

SCHEMA = 1
"""The only payload schema this hub reads."""
KIND = "telemetry"
"""The report kind that carries these payloads."""
RELATIVE_ACCURACY = 0.01
"""Relative accuracy of every sketch (1 %): the agent and the hub must agree for merges to be exact."""

SKETCH_KEYS = ("ttftS", "itlS", "tpotS", "queueS", "e2eS", "costUsd", "carbonG")
"""Sketches per group: latencies in seconds, per-request cost in USD and carbon in gCO2e."""
COUNT_KEYS = ("requests", "errors", "rejected", "cancelled", "forbidden", "promptTokens", "outputTokens")
"""Integer counters per group."""
AMOUNT_KEYS = ("gpuSeconds", "costUsd", "energyJ", "carbonG")
"""Non-negative float totals per group (s, USD, J, gCO2e)."""

MAX_BIN_INDEX = 5000
"""Largest |bin index| accepted. At 1 % accuracy, index 5000 is a value of ~1e43;
the limit stops a hostile sketch from making the hub allocate billions of bins."""
MAX_BINS = 20_000
"""Most contiguous bins one serialised store may carry."""

_REFERENCE = DDSketch(RELATIVE_ACCURACY)._mapping


@dataclass(frozen=True)
class Group:
    """One (model, version, priority) group of one payload, validated.

    ``sketches`` holds decoded sketches for every key of :data:`SKETCH_KEYS`
    (empty where the payload had none). They are shared, never mutated:
    aggregation merges them into fresh sketches.
    """

    model: str
    version: str
    priority: str
    requests: int
    errors: int
    rejected: int
    cancelled: int
    forbidden: int
    prompt_tokens: int
    output_tokens: int
    gpu_seconds: float
    cost_usd: float
    energy_j: float
    carbon_g: float
    sketches: Mapping[str, BaseDDSketch]


@dataclass(frozen=True)
class Telemetry:
    """One validated payload: a node's window of traffic, in groups."""

    site: str
    node: str
    window_start: datetime
    window_end: datetime
    groups: tuple[Group, ...]

    @property
    def window_s(self) -> float:
        """Length of the report window in seconds."""
        return (self.window_end - self.window_start).total_seconds()


# ----------------------------------------------------------------- sketches


def empty_sketch() -> DDSketch:
    """A fresh sketch with the fleet's accuracy."""
    return DDSketch(RELATIVE_ACCURACY)


def encode_sketch(sketch: BaseDDSketch) -> str:
    """The wire form of a sketch (what the agent sends)."""
    return base64.b64encode(DDSketchProto.to_proto(sketch).SerializeToString()).decode("ascii")


def decode_sketch(text: object, where: str = "sketch") -> BaseDDSketch:
    """Decode one wire sketch, refusing anything that could not be merged exactly.

    Raises :class:`PayloadError` naming ``where``.
    """
    if not isinstance(text, str):
        raise PayloadError(f"{where}: expected a base64 string, got {type(text).__name__}")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise PayloadError(f"{where}: not valid base64") from None
    try:
        proto = pb.DDSketch.FromString(raw)
    except Exception:  # protobuf raises DecodeError, or RuntimeWarning-free ValueErrors on junk
        raise PayloadError(f"{where}: not a serialised DDSketch protobuf") from None
    mapping = proto.mapping
    if mapping.interpolation != pb.IndexMapping.NONE or mapping.gamma != _REFERENCE.gamma \
            or mapping.indexOffset != _REFERENCE._offset:
        accuracy = (mapping.gamma - 1) / (mapping.gamma + 1) if mapping.gamma > 1 else float("nan")
        raise PayloadError(
            f"{where}: sketch made with relative accuracy {accuracy:.4g} "
            f"(gamma {mapping.gamma!r}, interpolation {mapping.interpolation}, offset {mapping.indexOffset}); "
            f"the fleet uses DDSketch(relative_accuracy={RELATIVE_ACCURACY}) and cannot merge others exactly"
        )
    for name, store in (("positive", proto.positiveValues), ("negative", proto.negativeValues)):
        counts = store.contiguousBinCounts
        if len(counts) > MAX_BINS:
            raise PayloadError(f"{where}: {len(counts)} {name} bins (at most {MAX_BINS})")
        if counts and (abs(store.contiguousBinIndexOffset) > MAX_BIN_INDEX
                       or abs(store.contiguousBinIndexOffset + len(counts) - 1) > MAX_BIN_INDEX):
            raise PayloadError(f"{where}: {name} bin index out of range (|index| <= {MAX_BIN_INDEX})")
        if counts and (not math.isfinite(sum(counts)) or min(counts) < 0):  # a NaN or inf makes the sum non-finite
            raise PayloadError(f"{where}: {name} bin counts must be finite and >= 0")
        if store.binCounts:
            raise PayloadError(f"{where}: sparse {name} bins are not used by the fleet's sketches")
    if not math.isfinite(proto.zeroCount) or proto.zeroCount < 0:
        raise PayloadError(f"{where}: zero count must be finite and >= 0")
    return BaseDDSketch(
        mapping=LogarithmicMapping(RELATIVE_ACCURACY),  # the gamma was checked equal above
        store=_store(proto.positiveValues),
        negative_store=_store(proto.negativeValues),
        zero_count=float(proto.zeroCount),
    )


def _store(proto) -> DenseStore:
    """A DenseStore holding the proto's contiguous bins, built in one go.

    ``DDSketchProto.from_proto`` adds the bins one by one, growing the store at
    each; this builds the same content (the same non-zero bins, hence the same
    quantiles and merges) about ten times faster, which matters when a report
    decodes thousands of payloads.
    """
    store = DenseStore()
    counts = proto.contiguousBinCounts
    lo, hi = 0, len(counts) - 1
    while lo <= hi and not counts[lo]:
        lo += 1
    while hi >= lo and not counts[hi]:
        hi -= 1
    if lo > hi:
        return store
    store.bins = [float(c) for c in counts[lo:hi + 1]]
    store.offset = store.min_key = proto.contiguousBinIndexOffset + lo
    store.max_key = proto.contiguousBinIndexOffset + hi
    store.count = math.fsum(store.bins)
    return store


def sketch_bins(sketch: BaseDDSketch) -> tuple[dict[int, float], dict[int, float], float]:
    """Canonical content of a sketch: (positive bins, negative bins, zero count), non-zero bins only.

    Two sketches with equal canonical content answer every quantile query alike.
    """

    def bins(store) -> dict[int, float]:
        return {i + store.offset: c for i, c in enumerate(store.bins) if c}

    return bins(sketch._store), bins(sketch._negative_store), float(sketch._zero_count)


# ------------------------------------------------------------------ parsing


def _group(obj: object, where: str) -> Group:
    if not isinstance(obj, Mapping):
        raise PayloadError(f"{where.rstrip('.')}: expected an object, got {type(obj).__name__}")
    sketches_obj = obj.get("sketches", {})
    if not isinstance(sketches_obj, Mapping):
        raise PayloadError(f"{where}sketches: expected an object, got {type(sketches_obj).__name__}")
    sketches = {
        k: decode_sketch(sketches_obj[k], f"{where}sketches.{k}") if k in sketches_obj else empty_sketch()
        for k in SKETCH_KEYS
    }
    counts = {k: fields.count(obj, k, where) for k in COUNT_KEYS}
    amounts = {k: fields.amount(obj, k, where) for k in AMOUNT_KEYS}
    return Group(
        model=fields.text(obj, "model", where),
        version=fields.text(obj, "version", where),
        priority=fields.text(obj, "priority", where),
        requests=counts["requests"],
        errors=counts["errors"],
        rejected=counts["rejected"],
        cancelled=counts["cancelled"],
        forbidden=counts["forbidden"],
        prompt_tokens=counts["promptTokens"],
        output_tokens=counts["outputTokens"],
        gpu_seconds=amounts["gpuSeconds"],
        cost_usd=amounts["costUsd"],
        energy_j=amounts["energyJ"],
        carbon_g=amounts["carbonG"],
        sketches=sketches,
    )


def parse_payload(payload: object) -> Telemetry:
    """Validate one ``telemetry`` payload (a decoded JSON object).

    Raises :class:`PayloadError` whose message names the path to the first
    problem; the whole payload is refused then (never half counted).
    """
    if not isinstance(payload, Mapping):
        raise PayloadError(f"payload: expected a JSON object, got {type(payload).__name__}")
    schema = payload.get("schema")
    if isinstance(schema, bool) or schema != SCHEMA:
        raise PayloadError(f"schema: {schema!r} is not a schema this hub reads (reads {SCHEMA}); "
                           "upgrade the hub or pin the agent"[:200])
    site = fields.text(payload, "site", "")
    node = fields.text(payload, "node", "")
    start, end = fields.time(payload, "windowStart"), fields.time(payload, "windowEnd")
    if end <= start:
        raise PayloadError(f"windowEnd: {end.isoformat()} is not after windowStart {start.isoformat()}")
    groups = payload.get("groups")
    if not isinstance(groups, list):
        raise PayloadError(f"groups: expected a list, got {type(groups).__name__}")
    return Telemetry(site, node, start, end, tuple(_group(g, f"groups[{i}].") for i, g in enumerate(groups)))
