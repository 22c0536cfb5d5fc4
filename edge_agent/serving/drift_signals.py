"""Drift signals: per (model, version) sketches and counts of what requests and outputs look like.

The hub compares these between a reference window and the current one, and
between sites serving the same version, to find traffic drift (longer
prompts), output drift (shorter, truncated, empty outputs) and model drift (a
swapped or corrupted model shifts the log-probability of what it generates).
Only numbers leave the site: token counts, timings, finish-reason counts and
the mean log-probability of each request's generated tokens; never text.

A :class:`DriftSignals` is a :class:`~edge_agent.serving.telemetry.Telemetry`
observer; :meth:`DriftSignals.flush` returns the ``drift`` report payload
(schema 1) sent alongside each telemetry window, or None when no request
reached a model::

    {"schema": 1, "site", "node", "windowStart", "windowEnd",
     "groups": [{"model", "version", "requests", "finish": {"stop", "length", "error", "abort"},
                 "empty", "logprobRequests",
                 "sketches": {"promptTokens", "outputTokens", "ttftS", "itlS", "nll"}}]}

``requests`` counts the requests that reached a model (refusals at the door
and sheds are the telemetry report's business, not the model's behaviour).
``outputTokens`` covers requests that finished by themselves (stop or
length), ``empty`` those of them with no output token, ``nll`` is the
negated mean log-probability per request (>= 0, so the sketch keeps one store)
for the ``logprobRequests`` requests whose runtime gave log-probabilities.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ddsketch import DDSketch

from edge_agent.serving.telemetry import RELATIVE_ACCURACY, Outcome, RequestRecord, encode_sketch

SCHEMA = 1
KIND = "drift"
"""The report kind these payloads travel as."""
SKETCHES = ("promptTokens", "outputTokens", "ttftS", "itlS", "nll")
FINISH = ("stop", "length", "error", "abort")


def _sketch() -> DDSketch:
    return DDSketch(relative_accuracy=RELATIVE_ACCURACY)


def finish_of(r: RequestRecord) -> str | None:
    """The finish reason a record counts under; None for requests that never reached a model."""
    if r.outcome in (Outcome.REJECTED, Outcome.FORBIDDEN) or r.stats is None:
        return None
    if r.outcome is Outcome.ERROR:
        return "error"
    if r.outcome is Outcome.CANCELLED:
        return "abort"
    reason = r.stats.finish_reason
    return "length" if reason is not None and reason.value == "length" else "stop"


@dataclass
class DriftGroup:
    requests: int = 0
    finish: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINISH, 0))
    empty: int = 0
    logprob_requests: int = 0
    sketches: dict[str, DDSketch] = field(default_factory=lambda: {k: _sketch() for k in SKETCHES})

    def add(self, r: RequestRecord) -> None:
        reason = finish_of(r)
        st = r.stats
        if reason is None or st is None:
            return
        self.requests += 1
        self.finish[reason] += 1
        sk = self.sketches
        sk["promptTokens"].add(max(st.prompt_tokens, 0))
        if st.ttft_s is not None:
            sk["ttftS"].add(max(st.ttft_s, 0.0))
        for gap in st.itl_s:
            sk["itlS"].add(max(gap, 0.0))
        if reason in ("stop", "length"):
            sk["outputTokens"].add(max(st.output_tokens, 0))
            if st.output_tokens == 0:
                self.empty += 1
            mean = st.mean_logprob
            if mean is not None:
                self.logprob_requests += 1
                sk["nll"].add(max(-mean, 0.0))

    def payload(self, key: tuple[str, str]) -> dict:
        return {
            "model": key[0], "version": key[1], "requests": self.requests, "finish": dict(self.finish),
            "empty": self.empty, "logprobRequests": self.logprob_requests,
            "sketches": {k: encode_sketch(v) for k, v in self.sketches.items()},
        }


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


class DriftSignals:
    """Collects drift signals per (model, version); thread-safe; an observer of the telemetry."""

    def __init__(self, site: str, node: str, *, clock: Callable[[], datetime] | None = None) -> None:
        self.site = site
        self.node = node
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._groups: dict[tuple[str, str], DriftGroup] = {}
        self._start = self._clock()

    def __call__(self, r: RequestRecord) -> None:
        if finish_of(r) is None:
            return
        with self._lock:
            self._groups.setdefault((r.model, r.version), DriftGroup()).add(r)

    def flush(self) -> dict | None:
        """The current window as a ``drift`` payload (None if no request reached a model)."""
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
