"""Merge telemetry payloads into report rows: ``fleet report``'s arithmetic.

Rows are keyed by any subset of :data:`DIMENSIONS` (default: site, model,
version, priority); a fleet-wide total row is always computed.

**Exact merging.** Counters and totals are summed. Latency, cost and carbon
distributions are DDSketches merged bin by bin (``DDSketch.merge``), which
is exact: the merged sketch has the same bins, hence the same quantiles, as
one sketch fed every value of every payload. Quantiles therefore carry the
sketch's own guarantee (relative error <= 1 %) and no error from merging.

**Time range.** A payload belongs to the range its window *ends* in:
it is counted when ``since < windowEnd <= until`` (either bound optional).
Sketches cannot be split, so a window is never clipped; ending-in keeps
adjacent ranges a partition (no window counted in two of them).

**Windows and tokens/s.** A row's *covered time* is the length of the union
of the report windows of the payloads that fed it (overlaps count once;
gaps with no report do not count). ``tokens/s = output tokens / covered
seconds`` is the row's aggregate throughput while it was observed: two
nodes reporting the same minute with 600 tokens each give 20 tok/s, one
node reporting two consecutive minutes with 600 tokens each gives 10 tok/s.
The total row unions every window in the report.

**Per-row figures** (``None`` where the denominator is zero):

- error rate = errors / requests
- cost per 1M output tokens = cost USD / output tokens x 1e6
- cost per 1k requests = cost USD / requests x 1e3
- gCO2e per 1k requests = carbon g / requests x 1e3
- energy in J and kWh (1 kWh = 3.6e6 J)

Duplicate payloads are not detected here: the hub's link de-duplicates
reports by (agent, sequence) before they are stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from difflib import get_close_matches
from typing import Optional

from ddsketch.ddsketch import BaseDDSketch

from hub.report.telemetry import SKETCH_KEYS, Group, PayloadError, Telemetry, empty_sketch, parse_payload

DIMENSIONS = ("site", "node", "model", "version", "priority")
"""Dimensions a report can be grouped by."""
DEFAULT_BY = ("site", "model", "version", "priority")
"""Default grouping of ``fleet report``."""
TOTAL_LABEL = "(all)"
"""Dimension value shown on the total row (parentheses cannot appear in resource names)."""


@dataclass(frozen=True)
class Skipped:
    """A payload left out of the report, and why."""

    index: int
    """Position of the payload in the input."""
    site: Optional[str]
    node: Optional[str]
    reason: str


@dataclass(frozen=True)
class Row:
    """Merged traffic of one key (or the whole fleet for the total row).

    ``sketches`` are fresh sketches owned by the row: read them, do not
    mutate them (rows are shared by re-grouping).
    """

    key: tuple[tuple[str, str], ...]
    """(dimension, value) pairs in the report's ``by`` order; empty for the total row."""
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
    windows: tuple[tuple[datetime, datetime], ...] = ()
    """Disjoint, sorted union of the report windows that fed the row."""
    groups: int = 0
    """Number of payload groups merged into the row."""
    sketches: Mapping[str, BaseDDSketch] = field(default_factory=dict)

    # -------------------------------------------------------------- derived

    def value(self, dimension: str) -> str:
        """The row's value for a dimension ('(all)' when the row is not keyed by it)."""
        return dict(self.key).get(dimension, TOTAL_LABEL)

    @property
    def label(self) -> str:
        """Human label: the key values joined by ' / ', or '(all)'."""
        return " / ".join(v for _, v in self.key) or TOTAL_LABEL

    @property
    def covered_s(self) -> float:
        """Seconds covered by at least one report window."""
        return sum((b - a).total_seconds() for a, b in self.windows)

    @property
    def window_start(self) -> Optional[datetime]:
        return self.windows[0][0] if self.windows else None

    @property
    def window_end(self) -> Optional[datetime]:
        return self.windows[-1][1] if self.windows else None

    def quantile(self, metric: str, q: float) -> Optional[float]:
        """Quantile ``q`` (0..1) of a sketch (see :data:`SKETCH_KEYS`); ``None`` when empty."""
        sketch = self.sketches.get(metric)
        if sketch is None or sketch.count == 0:
            return None
        return float(sketch.get_quantile_value(q))

    def count(self, metric: str) -> float:
        """Number of values in a sketch."""
        sketch = self.sketches.get(metric)
        return float(sketch.count) if sketch is not None else 0.0

    @property
    def error_rate(self) -> Optional[float]:
        """errors / requests (fraction)."""
        return _ratio(self.errors, self.requests)

    @property
    def tokens_per_s(self) -> Optional[float]:
        """Output tokens per covered second (see the module docstring)."""
        return _ratio(self.output_tokens, self.covered_s)

    @property
    def cost_per_1m_output_tokens(self) -> Optional[float]:
        """USD per million output tokens."""
        return _ratio(self.cost_usd * 1e6, self.output_tokens)

    @property
    def cost_per_1k_requests(self) -> Optional[float]:
        """USD per thousand requests."""
        return _ratio(self.cost_usd * 1e3, self.requests)

    @property
    def carbon_g_per_1k_requests(self) -> Optional[float]:
        """gCO2e per thousand requests."""
        return _ratio(self.carbon_g * 1e3, self.requests)

    @property
    def energy_kwh(self) -> float:
        return self.energy_j / 3.6e6


def _ratio(num: float, den: float) -> Optional[float]:
    return num / den if den else None


@dataclass(frozen=True)
class Report:
    """A merged report: rows by ``by``, the fleet total, and what was left out."""

    by: tuple[str, ...]
    rows: tuple[Row, ...]
    total: Row
    skipped: tuple[Skipped, ...] = ()
    payloads: int = 0
    """Payloads counted."""
    outside: int = 0
    """Valid payloads left out because their window ended outside since/until."""
    since: Optional[datetime] = None
    until: Optional[datetime] = None

    def regroup(self, by: Sequence[str]) -> "Report":
        """The same report grouped by a subset of ``self.by`` (exact: rows are merged, not recomputed)."""
        by = check_by(by)
        missing = [d for d in by if d not in self.by]
        if missing:
            raise ValueError(f"cannot regroup a report by {', '.join(missing)}: it is grouped by "
                             f"{', '.join(self.by) or 'nothing'}; build it again with by={tuple(by)!r}")
        accs: dict[tuple, _Acc] = {}
        for row in self.rows:
            key = tuple((d, row.value(d)) for d in by)
            accs.setdefault(key, _Acc(key)).add_row(row)
        return Report(by, tuple(accs[k].freeze() for k in sorted(accs)), self.total, self.skipped,
                      self.payloads, self.outside, self.since, self.until)


class _Acc:
    """Mutable accumulator behind one row."""

    def __init__(self, key: tuple[tuple[str, str], ...]):
        self.key = key
        self.n = dict.fromkeys(("requests", "errors", "rejected", "cancelled", "forbidden", "prompt_tokens",
                                "output_tokens"), 0)
        self.f = dict.fromkeys(("gpu_seconds", "cost_usd", "energy_j", "carbon_g"), 0.0)
        self.windows: list[tuple[datetime, datetime]] = []
        self.groups = 0
        self.sketches = {k: empty_sketch() for k in SKETCH_KEYS}

    def _add(self, src, windows, sketches, groups: int) -> None:
        for k in self.n:
            self.n[k] += getattr(src, k)
        for k in self.f:
            self.f[k] += getattr(src, k)
        self.windows.extend(windows)
        self.groups += groups
        for k, s in sketches.items():
            self.sketches[k].merge(s)

    def add_group(self, t: Telemetry, g: Group) -> None:
        self._add(g, [(t.window_start, t.window_end)], g.sketches, 1)

    def add_row(self, row: Row) -> None:
        self._add(row, row.windows, row.sketches, row.groups)

    def freeze(self) -> Row:
        return Row(key=self.key, **self.n, **self.f, windows=union(self.windows), groups=self.groups,
                   sketches=self.sketches)


def union(intervals: Iterable[tuple[datetime, datetime]]) -> tuple[tuple[datetime, datetime], ...]:
    """Sorted disjoint union of half-open intervals [a, b); touching intervals are joined."""
    out: list[list[datetime]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return tuple((a, b) for a, b in out)


def check_by(by: Sequence[str]) -> tuple[str, ...]:
    """Validate a grouping: known dimensions, each once. Raises ValueError with a did-you-mean."""
    if isinstance(by, str):
        by = tuple(p.strip() for p in by.split(",") if p.strip())
    by = tuple(by)
    for d in by:
        if d not in DIMENSIONS:
            close = get_close_matches(str(d), DIMENSIONS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"cannot group by {d!r}{hint}; dimensions: {', '.join(DIMENSIONS)}")
    dupes = sorted({d for d in by if by.count(d) > 1})
    if dupes:
        raise ValueError(f"grouping names {', '.join(dupes)} more than once")
    return by


def _aware(name: str, t: Optional[datetime]) -> Optional[datetime]:
    if t is not None and t.tzinfo is None:
        raise ValueError(f"{name} must carry a time zone (UTC), got naive {t.isoformat()}")
    return t


def build_report(
    payloads: Iterable[object],
    by: Sequence[str] = DEFAULT_BY,
    since: Optional[datetime] = None,
    until: Optional[datetime] = None,
) -> Report:
    """Merge telemetry payloads (decoded JSON objects) into a :class:`Report`.

    Invalid payloads are skipped whole, each with the reason; they never stop
    the report. Payloads are counted when ``since < windowEnd <= until``.
    """
    by = check_by(by)
    since, until = _aware("since", since), _aware("until", until)
    if since is not None and until is not None and until <= since:
        raise ValueError(f"until ({until.isoformat()}) must be after since ({since.isoformat()})")
    accs: dict[tuple, _Acc] = {}
    total = _Acc(())
    skipped: list[Skipped] = []
    used = outside = 0
    for i, payload in enumerate(payloads):
        try:
            t = parse_payload(payload)
        except PayloadError as e:
            site = payload.get("site") if isinstance(payload, Mapping) else None
            node = payload.get("node") if isinstance(payload, Mapping) else None
            skipped.append(Skipped(i, site if isinstance(site, str) else None,
                                   node if isinstance(node, str) else None, str(e)))
            continue
        if (since is not None and t.window_end <= since) or (until is not None and t.window_end > until):
            outside += 1
            continue
        used += 1
        for g in t.groups:
            values = {"site": t.site, "node": t.node, "model": g.model, "version": g.version, "priority": g.priority}
            key = tuple((d, values[d]) for d in by)
            accs.setdefault(key, _Acc(key)).add_group(t, g)
            total.add_group(t, g)
    return Report(by, tuple(accs[k].freeze() for k in sorted(accs)), total.freeze(), tuple(skipped),
                  used, outside, since, until)
