"""Performance model: replicas needed to meet p95 TTFT and TPOT.

Inputs per model version and GPU type (a *profile*): prefill throughput
``P`` (prompt tokens/s of one replica), decode throughput ``D`` (output
tokens/s of one replica with ``B = maxBatch`` sequences running), and the
time per output token with one sequence, ``t1`` (default ``0.6 * B / D``).

Decode step time grows linearly with the number of running sequences b:
``step(b) = t1 + (tB - t1) * (b - 1) / (B - 1)`` with ``tB = B / D``. TPOT
is the step time, so the TPOT SLO caps the usable batch at
``b* = max{b <= B : step(b) <= SLO_tpot}``; if ``step(1) > SLO_tpot`` the
GPU type cannot meet the SLO at any replica count.

Each replica is an **M/M/c queue of batch slots**: ``c = b*`` slots, Poisson
arrivals at ``lam/n`` (demand split evenly over ``n`` replicas by the
router), each request holding a slot for ``S = prompt/P + output * step(b*)``
seconds. The probability of waiting is Erlang C, computed in closed form
from the Poisson distribution (Erlang B = pmf/cdf, regularised incomplete
gamma), and the p95 slot wait is ``ln(C/0.05) / (c/S - lam/n)`` when
``C > 0.05``, else 0.

Prefill is a single server per replica with near-deterministic service
``tp = prompt/P``; its p95 wait uses the M/M/1 tail scaled by Kingman's
factor 1/2 for deterministic service: ``0.5 * ln(rho/0.05) / (1/tp - lam/n)``.

    p95 TTFT(server) ~= p95 slot wait + p95 prefill wait + tp

A replica count is stable only if slots, prefill and the GPU as a whole
are each below 100 % busy; GPU busy fraction is
``lam/n * (tp + output * step(b*) / b*)`` (prefill plus the request's share
of full-batch decode steps).

(adding two p95s is conservative). Replicas of different workloads may
share a GPU when their memory fits and their compute shares (GPU busy
fraction, see ``ReplicaCurve.utilisation``) sum to at most 1 (spatial sharing, e.g. MPS;
the slowdown from sharing is not modelled beyond that). The client sees ``RTT + TTFT(server)``.
An end-to-end SLO becomes a TTFT budget ``e2e - (output - 1) * step(b*)``
(mean output length; measured profiles will refine this). The model ignores
prefill/decode interference inside a step and GPU sharing contention; the
profiles are meant to be replaced by measured figures from agents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.special import gammaincc, gammaln

P95_TAIL = 0.05
_WINDOW = 32
MAX_REPLICAS = 1 << 14
#: Sentinel replica count meaning "no count meets the SLO" in vectorised paths.
NO_REPLICAS = 1 << 40


@dataclass(frozen=True)
class PerfProfile:
    """Measured or declared throughput of one replica on one GPU type."""

    prefill_tps: float
    """Prompt tokens per second."""
    decode_tps: float
    """Output tokens per second summed over max_batch sequences."""
    max_batch: int
    tpot_batch1: float | None = None
    """Seconds per output token with one sequence; default 0.6 * max_batch / decode_tps."""

    @property
    def t_full(self) -> float:
        return self.max_batch / self.decode_tps

    @property
    def t1(self) -> float:
        return self.tpot_batch1 if self.tpot_batch1 is not None else 0.6 * self.t_full

    def step(self, batch: int) -> float:
        """Seconds per decode step (= TPOT) with ``batch`` sequences running."""
        if self.max_batch <= 1:
            return self.t_full
        return self.t1 + (self.t_full - self.t1) * (batch - 1) / (self.max_batch - 1)

    def effective_batch(self, tpot_slo: float) -> int:
        """Largest batch whose step time meets ``tpot_slo`` (0 if none)."""
        if self.step(1) > tpot_slo:
            return 0
        if self.step(self.max_batch) <= tpot_slo or self.max_batch == 1:
            return self.max_batch
        slope = (self.t_full - self.t1) / (self.max_batch - 1)
        b = int(math.floor((tpot_slo - self.t1) / slope)) + 1
        return max(1, min(self.max_batch, b))


def erlang_c(c: np.ndarray | float, a: np.ndarray | float) -> np.ndarray:
    """P(wait > 0) in M/M/c with offered load ``a`` (< c) erlangs; vectorised."""
    c = np.asarray(c, dtype=float)
    a = np.asarray(a, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        log_pmf = c * np.log(np.maximum(a, 1e-300)) - a - gammaln(c + 1.0)
        cdf = gammaincc(c + 1.0, a)
        erlang_b = np.where(cdf > 0, np.exp(log_pmf) / cdf, 1.0)
        out = c * erlang_b / (c - a * (1.0 - erlang_b))
    return np.clip(np.where(a < c, out, 1.0), 0.0, 1.0)


def ttft_p95(
    n: np.ndarray | float, rate: float, prompt: float, output: float, profile: PerfProfile, batch: int
) -> np.ndarray:
    """Server-side p95 TTFT (seconds) with ``n`` replicas; ``inf`` when unstable."""
    return _ttft_core(np.asarray(n, dtype=float), rate, prompt / profile.prefill_tps, profile.step(batch), output, batch)


def _ttft_core(n, rate, tp, step, output, batch) -> np.ndarray:
    """:func:`ttft_p95` over broadcastable arrays (tp: prefill s, step: decode step s)."""
    lam = rate / n
    hold = tp + output * step
    a = lam * hold
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        cw = erlang_c(batch, a)
        slot_drain = batch / hold - lam
        slot_wait = np.where(cw > P95_TAIL, np.log(np.maximum(cw, P95_TAIL) / P95_TAIL) / slot_drain, 0.0)
        rho_p = lam * tp
        prefill_drain = 1.0 / tp - lam
        prefill_wait = np.where(
            rho_p > P95_TAIL, 0.5 * np.log(np.maximum(rho_p, P95_TAIL) / P95_TAIL) / prefill_drain, 0.0
        )
        total = slot_wait + prefill_wait + tp
    busy = lam * (tp + output * step / batch)
    stable = (a < batch) & (rho_p < 1.0) & (busy < 1.0)
    return np.where(stable, total, np.inf)


@dataclass
class ReplicaCurve:
    """p95 TTFT against replica count for one demand on one profile.

    ``replicas(budget)`` is the fewest replicas whose server-side p95 TTFT is
    at most ``budget`` seconds (0 when no count can).
    """

    rate: float
    prompt: float
    output: float
    profile: PerfProfile
    tpot_slo: float
    raw: np.ndarray | None = field(default=None, repr=False)
    """Precomputed first window of p95 TTFTs (see :func:`build_curves`)."""
    batch: int = field(init=False)
    n0: int = field(init=False)
    ttft: np.ndarray = field(init=False)
    floor: float = field(init=False)

    def __post_init__(self) -> None:
        self.batch = self.profile.effective_batch(self.tpot_slo)
        tp = self.prompt / self.profile.prefill_tps
        self.floor = tp
        if self.batch == 0:
            self.n0, self.ttft = 0, np.full(0, np.inf)
            return
        hold = tp + self.output * self.profile.step(self.batch)
        busy = tp + self.output * self.profile.step(self.batch) / self.batch
        self.n0 = max(1, int(math.floor(max(self.rate * hold / self.batch, self.rate * busy))) + 1)
        self._busy_coef = self.rate * busy
        self._raw = self.raw if self.raw is not None else self._values(self.n0, _WINDOW)
        self._envelope()

    def _values(self, start: int, count: int) -> np.ndarray:
        n = np.arange(start, start + count, dtype=float)
        return ttft_p95(n, self.rate, self.prompt, self.output, self.profile, self.batch)

    def _envelope(self) -> None:
        # running max from the right: a conservative, monotone envelope
        self.ttft = np.maximum.accumulate(self._raw[::-1])[::-1]
        self._neg = -self.ttft

    def _extend(self, budget: float) -> None:
        """Grow the table (doubling) until it reaches ``budget`` or MAX_REPLICAS."""
        while self.ttft[-1] > budget and len(self._raw) < MAX_REPLICAS:
            more = self._values(self.n0 + len(self._raw), len(self._raw))
            self._raw = np.concatenate([self._raw, more])
            self._envelope()

    @property
    def hold(self) -> float:
        """Seconds one request holds a batch slot (prefill + decode)."""
        return self.floor + self.output * self.profile.step(self.batch) if self.batch else math.inf

    def utilisation(self, replicas: np.ndarray | int) -> np.ndarray:
        """Busy fraction of a replica's GPU with ``replicas`` replicas sharing the demand.

        ``lam/n * (tp + output * step(b*) / b*)``: its prefill time plus its
        share of full-batch decode steps. Used as the replica's compute share
        when replicas share a GPU; shares on one GPU sum to at most 1.
        """
        n = np.maximum(np.asarray(replicas, dtype=float), 1.0)
        if self.batch == 0:
            return np.ones_like(n)
        return np.minimum(self._busy_coef / n, 1.0)

    @property
    def tpot(self) -> float:
        return self.profile.step(self.batch) if self.batch else math.inf

    @property
    def decode_time(self) -> float:
        """Seconds of decoding after the first token (mean output length)."""
        return max(self.output - 1.0, 0.0) * self.tpot

    def predicted_ttft(self, replicas: int) -> float:
        """Server-side p95 TTFT (seconds) with ``replicas`` replicas (monotone envelope)."""
        if self.batch == 0 or replicas < self.n0:
            return math.inf
        i = replicas - self.n0
        if i < len(self.ttft):
            return float(self.ttft[i])
        return float(ttft_p95(replicas, self.rate, self.prompt, self.output, self.profile, self.batch))

    def replicas(self, budget: float) -> int:
        return int(self.replicas_many(np.array([budget]))[0])

    def replicas_many(self, budgets: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`replicas` over an array of TTFT budgets (seconds)."""
        n = self.replicas_raw(np.asarray(budgets, dtype=float))
        n[n >= NO_REPLICAS] = 0
        return n

    def replicas_raw(self, budgets: np.ndarray) -> np.ndarray:
        """Like :meth:`replicas_many`, but ``NO_REPLICAS`` (huge) where infeasible."""
        if self.batch == 0 or not len(budgets):
            return np.full(budgets.shape, NO_REPLICAS, dtype=np.int64)
        lowest = float(budgets.min())
        if lowest < self.ttft[-1]:
            feasible = budgets[budgets > self.floor] if lowest <= self.floor else budgets
            if len(feasible):
                self._extend(float(feasible.min()))
        idx = np.searchsorted(self._neg, -budgets, side="left")
        n = idx + self.n0
        n[idx >= len(self.ttft)] = NO_REPLICAS
        return n


def build_curves(specs: list[tuple[float, float, float, PerfProfile, float]]) -> list[ReplicaCurve]:
    """Many :class:`ReplicaCurve` at once, ``specs`` = (rate, prompt, output,
    profile, tpot_slo); their first windows are computed in one vectorised call."""
    rows = []
    for rate, prompt, output, profile, tpot in specs:
        batch = profile.effective_batch(tpot)
        tp = prompt / profile.prefill_tps
        step = profile.step(batch) if batch else math.inf
        n0 = 0
        if batch:
            hold = tp + output * step
            busy = tp + output * step / batch
            n0 = max(1, int(math.floor(max(rate * hold / batch, rate * busy))) + 1)
        rows.append((rate, tp, step, output, max(batch, 1), n0))
    if not rows:
        return []
    arr = np.array(rows, dtype=float)
    n = arr[:, 5:6] + np.arange(_WINDOW, dtype=float)[None, :]
    raw = _ttft_core(np.maximum(n, 1.0), arr[:, 0:1], arr[:, 1:2], arr[:, 2:3], arr[:, 3:4], arr[:, 4:5])
    return [ReplicaCurve(*spec, raw=raw[i]) for i, spec in enumerate(specs)]


def replicas_needed(
    rate: float,
    prompt: float,
    output: float,
    profile: PerfProfile,
    ttft_slo: float,
    tpot_slo: float,
    e2e_slo: float | None = None,
    rtt: float = 0.0,
) -> int:
    """Fewest replicas meeting every SLO for this demand (0 if impossible)."""
    curve = ReplicaCurve(rate, prompt, output, profile, tpot_slo)
    if curve.batch == 0:
        return 0
    return curve.replicas(ttft_budget(curve, ttft_slo, e2e_slo) - rtt)


def ttft_budget(curve: ReplicaCurve, ttft_slo: float, e2e_slo: float | None) -> float:
    """Server+network TTFT budget implied by the TTFT and end-to-end SLOs."""
    budget = ttft_slo
    if e2e_slo is not None:
        budget = min(budget, e2e_slo - curve.decode_time)
    return budget
