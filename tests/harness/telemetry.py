"""``telemetry`` report payloads made by the agent's own code (edge_agent.serving.telemetry).

Tests used to type these payloads by hand, so a change in what the agent
writes would not have reached the hub's tests. Here each request becomes a
:class:`RequestRecord` with :class:`RequestStats` built from the timings
asked for, recorded into a :class:`Telemetry` window and flushed: the
payload is exactly what a serving agent sends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from edge_agent.runtime.request import RequestStats
from edge_agent.serving.cost import RequestCost
from edge_agent.serving.telemetry import Outcome, RequestRecord, Telemetry


@dataclass(frozen=True)
class Requests:
    """Finished requests of one (model, version, priority) group: one per TTFT value."""

    model: str
    version: str
    ttfts: Sequence[float]
    """Seconds from arrival to first token, one per request."""
    itl: float | Sequence[float] = 0.02
    """Gap between tokens, seconds: one for all requests or one per request."""
    output_tokens: int = 20
    prompt_tokens: int = 10
    priority: str = "interactive"
    errors: int = 0
    """How many of the requests (the last ones) ended in an error."""
    gpu_seconds: float = 0.1
    cost: RequestCost | None = None


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def records(group: Requests) -> list[RequestRecord]:
    """The group's requests as the serving layer records them."""
    out = []
    n = len(group.ttfts)
    gaps = [group.itl] * n if isinstance(group.itl, (int, float)) else list(group.itl)
    if len(gaps) != n:
        raise ValueError(f"{len(gaps)} inter-token gaps for {n} requests")
    for i, (ttft, gap) in enumerate(zip(group.ttfts, gaps)):
        first = _ns(ttft)
        tokens = [first + _ns(gap) * j for j in range(group.output_tokens)]
        stats = RequestStats(request_id=f"r{i}", priority=0, arrival_ns=0, prompt_tokens=group.prompt_tokens,
                             admitted_ns=0, first_token_ns=first, token_ns=tokens, finished_ns=tokens[-1],
                             output_tokens=group.output_tokens, gpu_seconds=group.gpu_seconds)
        outcome = Outcome.ERROR if i >= n - group.errors else Outcome.OK
        out.append(RequestRecord(group.model, group.version, group.priority, outcome, stats, group.cost))
    return out


def recorded_ttfts(group: Requests) -> list[float]:
    """The TTFTs as the agent computes them from its nanosecond stamps (what its sketches hold)."""
    return [r.stats.ttft_s for r in records(group) if r.stats is not None and r.stats.ttft_s is not None]


def telemetry_payload(site: str, node: str, groups: Sequence[Requests], start: datetime | str,
                      end: datetime | str) -> dict:
    """One flushed window of ``groups`` for the window [start, end], made by :class:`Telemetry`."""
    def when(t: datetime | str) -> datetime:
        return t if isinstance(t, datetime) else datetime.fromisoformat(t.replace("Z", "+00:00")).astimezone(UTC)

    clock = iter([when(start), when(end)])
    window = Telemetry(site, node, clock=lambda: next(clock))
    for g in groups:
        for r in records(g):
            window.record(r)
    payload = window.flush()
    if payload is None:
        raise ValueError("no requests: an empty window flushes to nothing")
    return payload
