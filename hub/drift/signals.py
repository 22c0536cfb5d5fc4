"""The ``drift`` report payload an agent sends beside each telemetry window, parsed and validated.

Wire format (schema 1, JSON; see ``edge_agent/serving/drift_signals.py``)::

    {"schema": 1, "site", "node", "windowStart", "windowEnd",
     "groups": [{"model", "version", "requests", "finish": {"stop", "length", "error", "abort"},
                 "empty", "logprobRequests",
                 "sketches": {"promptTokens", "outputTokens", "ttftS", "itlS", "nll"}}]}

Sketches are the fleet's DDSketches (decoded and bounded by
:func:`hub.report.telemetry.decode_sketch`); a missing sketch is empty and
unknown keys are ignored, as in the telemetry payload. A payload is taken
whole or refused whole with :class:`~hub.report.telemetry.PayloadError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from ddsketch.ddsketch import BaseDDSketch

from hub.drift.stats import merged
from hub.report import fields
from hub.report.fields import PayloadError
from hub.report.telemetry import decode_sketch, empty_sketch

SCHEMA = 1
KIND = "drift"
NUMERIC = ("promptTokens", "outputTokens", "ttftS", "itlS", "nll")
"""Numeric signals (sketches): prompt and output length in tokens, TTFT and inter-token gaps in seconds,
and the negated mean log-probability of each request's generated tokens."""
FINISH = ("stop", "length", "error", "abort")
"""Finish reasons counted per window."""


@dataclass(frozen=True)
class Signals:
    """Drift signals of some set of requests of one (model, version): one window or a merge of many."""

    requests: int = 0
    finish: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(FINISH, 0))
    empty: int = 0
    sketches: Mapping[str, BaseDDSketch] = field(default_factory=lambda: {k: empty_sketch() for k in NUMERIC})

    @property
    def completed(self) -> int:
        """Requests that finished by themselves (stop or length): the denominator of ``empty``."""
        return self.finish.get("stop", 0) + self.finish.get("length", 0)


@dataclass(frozen=True)
class Window:
    """One node's drift signals of one (model, version) over one report window."""

    site: str
    node: str
    model: str
    version: str
    start: datetime
    end: datetime
    signals: Signals


def merge(items: Iterable[Signals]) -> Signals:
    """One :class:`Signals` of the union of the inputs' requests (exact: sketches merge bin by bin)."""
    items = list(items)
    return Signals(
        requests=sum(s.requests for s in items),
        finish={k: sum(s.finish.get(k, 0) for s in items) for k in FINISH},
        empty=sum(s.empty for s in items),
        sketches={k: merged([s.sketches[k] for s in items]) for k in NUMERIC},
    )


def _group(obj: object, where: str) -> tuple[str, str, Signals]:
    if not isinstance(obj, Mapping):
        raise PayloadError(f"{where.rstrip('.')}: expected an object, got {type(obj).__name__}")
    sk = obj.get("sketches", {})
    if not isinstance(sk, Mapping):
        raise PayloadError(f"{where}sketches: expected an object, got {type(sk).__name__}")
    fin = obj.get("finish", {})
    if not isinstance(fin, Mapping):
        raise PayloadError(f"{where}finish: expected an object, got {type(fin).__name__}")
    finish = {k: fields.count(fin, k, f"{where}finish.") for k in FINISH}
    requests = fields.count(obj, "requests", where)
    if sum(finish.values()) > requests:
        raise PayloadError(f"{where}finish: {sum(finish.values())} finished requests of {requests}")
    empty = fields.count(obj, "empty", where)
    if empty > finish["stop"] + finish["length"]:
        raise PayloadError(f"{where}empty: {empty} empty outputs of {finish['stop'] + finish['length']} completed")
    sketches = {k: decode_sketch(sk[k], f"{where}sketches.{k}") if k in sk else empty_sketch() for k in NUMERIC}
    return fields.text(obj, "model", where), fields.text(obj, "version", where), Signals(requests, finish, empty, sketches)


def parse_payload(payload: object, site: str | None = None, node: str | None = None) -> list[Window]:
    """Validate one ``drift`` payload; ``site``/``node`` (the identity the hub verified) win over the payload's."""
    payload, start, end, groups = fields.window(payload, SCHEMA, "drift")
    site = site or fields.text(payload, "site", "")
    node = node or fields.text(payload, "node", "")
    out = []
    for i, g in enumerate(groups):
        model, version, sig = _group(g, f"groups[{i}].")
        out.append(Window(site, node, model, version, start, end, sig))
    return out
