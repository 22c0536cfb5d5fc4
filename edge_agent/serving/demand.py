"""Demand telemetry: arrivals and token volumes per (service, region of origin), per interval.

The hub's autoscaler plans from the demand the agents measure, not from the
YAML (issue 12). Every finished request (the same :class:`RequestRecord` the
latency telemetry gets, whatever its outcome) is counted once for its service
and its region of origin: the ``X-Fleet-Origin-Region`` header a gateway sets
(checked by :func:`origin_region`), else the serving site's own region.

Windows end on multiples of the interval in wall-clock time (default 60 s), so
the windows of every agent line up and the hub adds them without resampling.
A request is counted when it finishes (a long generation lands in the window
its last token falls in). A window in which nothing arrived is still sent while
the node serves a model (zero demand is a measurement, a missing window is a
gap); consecutive empty intervals travel as one report covering them all. Each
window becomes one ``demand`` report through the agent's durable outbox
(written before it is sent, deleted only once the hub has stored it)::

    {"schema": 1, "site", "node", "intervalS", "windowStart", "windowEnd",
     "groups": [{"service", "region", "arrivals", "measured", "promptTokens",
                 "outputTokens", "shed", "refused", "errors"}]}

``arrivals`` counts every request (served or not: shed demand is demand);
``shed`` (503, overloaded), ``refused`` (403, residency) and ``errors`` are
subsets. ``measured`` is how many of them reached a model and so have token
counts (``promptTokens``/``outputTokens`` are their sums). ``region`` is ""
when the site's region was not known yet (no SiteLocation from the hub): the
hub then counts it for the site's region in its own Site record.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from edge_agent.serving.errors import BadRequest
from edge_agent.serving.headers import ORIGIN_REGION_HEADER
from edge_agent.serving.residency import SiteLocation
from edge_agent.serving.telemetry import Outcome, RequestRecord

KIND = "demand"
SCHEMA = 1
DEFAULT_INTERVAL_S = 60.0


def origin_region(header: str | None, location: SiteLocation | None) -> str:
    """The demand region a request counts for: the header's (one this site serves), else the site's own.

    Raises BadRequest when the header names a region this site does not serve, or any region before the
    hub has said which ones it serves (fail-closed: a request counted in a region nobody plans for would
    be demand no forecast sees)."""
    here = location.region if location is not None else ""
    if not header:
        return here
    known = location.regions if location is not None else ()
    if header in known:
        return header
    if not known:
        raise BadRequest(f"header X-Fleet-Origin-Region {header!r} cannot be checked yet: this node has not "
                         "received its SiteLocation (the regions it serves) from the hub; send the request "
                         "without it, or retry once the agent has synced", param=ORIGIN_REGION_HEADER,
                         code="unknown_origin_region")
    raise BadRequest(f"header X-Fleet-Origin-Region {header!r} is not a region site {location.site!r} serves "
                     f"(its Site lists: {', '.join(known)}); set one of them, or add the region to the Site's "
                     "networkLatency", param=ORIGIN_REGION_HEADER, code="unknown_origin_region")


@dataclass
class DemandCounts:
    arrivals: int = 0
    measured: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    shed: int = 0
    refused: int = 0
    errors: int = 0

    def add(self, r: RequestRecord) -> None:
        self.arrivals += 1
        if r.outcome is Outcome.REJECTED:
            self.shed += 1
        elif r.outcome is Outcome.FORBIDDEN:
            self.refused += 1
        elif r.outcome is Outcome.ERROR:
            self.errors += 1
        if r.stats is not None:
            self.measured += 1
            self.prompt_tokens += r.stats.prompt_tokens
            self.output_tokens += r.stats.output_tokens

    def payload(self, key: tuple[str, str]) -> dict:
        return {"service": key[0], "region": key[1], "arrivals": self.arrivals, "measured": self.measured,
                "promptTokens": self.prompt_tokens, "outputTokens": self.output_tokens, "shed": self.shed,
                "refused": self.refused, "errors": self.errors}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


class DemandWindow:
    """Counts finished requests (a :class:`Telemetry` observer; thread-safe) into aligned windows."""

    def __init__(self, site: str, node: str, interval_s: float = DEFAULT_INTERVAL_S, *,
                 clock: Callable[[], float] = time.time) -> None:
        if not interval_s > 0:
            raise ValueError(f"demand interval must be positive, got {interval_s}")
        self.site, self.node, self.interval_s = site, node, float(interval_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        self._end = self._boundary_after(self._start)
        self._counts: dict[tuple[str, str], DemandCounts] = {}
        self._closed: list[dict] = []

    def _boundary_after(self, t: float) -> float:
        return (math.floor(t / self.interval_s) + 1) * self.interval_s

    def __call__(self, r: RequestRecord) -> None:
        with self._lock:
            self._roll(self._clock(), keep_empty=True)
            self._counts.setdefault((r.service or r.model, r.origin), DemandCounts()).add(r)

    def seconds_to_due(self) -> float:
        """Seconds until the current window ends (when :meth:`flush` has something to send)."""
        return max(0.0, self._end - self._clock())

    def _roll(self, now: float, *, keep_empty: bool) -> None:
        """Close the current window if ``now`` is past its end; a run of empty intervals closes as one."""
        if now < self._end:
            return
        if self._counts:
            self._closed.append(self._payload(self._start, self._end, self._counts))
            self._counts, self._start = {}, self._end
        # Nothing arrived from _start to the last boundary before now: one window covers it all.
        last = self._boundary_after(now) - self.interval_s
        if last > self._start:
            if keep_empty:
                self._closed.append(self._payload(self._start, last, {}))
            self._start = last
        self._end = self._boundary_after(self._start)

    def _payload(self, start: float, end: float, counts: dict[tuple[str, str], DemandCounts]) -> dict:
        return {"schema": SCHEMA, "site": self.site, "node": self.node, "intervalS": self.interval_s,
                "windowStart": _iso(start), "windowEnd": _iso(end),
                "groups": [c.payload(k) for k, c in sorted(counts.items())]}

    def flush(self, *, serving: bool = True, final: bool = False) -> list[dict]:
        """The windows closed by now, oldest first (each a ``demand`` payload).

        ``serving``: whether this node serves any model; empty windows are sent only while it does (an
        idle node with nothing loaded measures no demand). ``final`` (at stop) also closes the current,
        partial window when anything arrived in it."""
        with self._lock:
            now = self._clock()
            self._roll(now, keep_empty=serving)
            out, self._closed = self._closed, []
            if final and self._counts:
                out.append(self._payload(self._start, max(now, self._start), self._counts))
                self._counts, self._start = {}, now
        return [p for p in out if p["groups"] or serving]
