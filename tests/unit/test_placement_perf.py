from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.placement.perf import PerfProfile, ReplicaCurve, erlang_c, replicas_needed

L4 = PerfProfile(prefill_tps=3000, decode_tps=480, max_batch=16, tpot_batch1=0.027)


def test_erlang_c_known_values() -> None:
    assert erlang_c(1, 0.7) == pytest.approx(0.7)  # M/M/1: P(wait) = rho
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    # textbook: c=5, a=4 erlangs -> C ~= 0.5541
    assert erlang_c(5, 4.0) == pytest.approx(0.5541, abs=1e-3)
    assert np.allclose(erlang_c(np.array([1, 2]), np.array([0.7, 1.0])), [0.7, 1 / 3])
    assert erlang_c(3, 3.5) == 1.0  # unstable


def test_effective_batch_follows_tpot() -> None:
    assert L4.effective_batch(0.050) == 16  # full batch step 33ms
    b = L4.effective_batch(0.030)
    assert 1 <= b < 16 and L4.step(b) <= 0.030 < L4.step(b + 1)
    assert L4.effective_batch(0.020) == 0  # one sequence already takes 27ms


def _simulated_p95_wait(c: int, lam: float, mean_service: float, n: int = 60000, seed: int = 3) -> float:
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / lam, n))
    service = rng.exponential(mean_service, n)
    free = np.zeros(c)
    waits = np.empty(n)
    for i in range(n):
        j = int(np.argmin(free))
        start = max(arrivals[i], free[j])
        waits[i] = start - arrivals[i]
        free[j] = start + service[i]
    return float(np.quantile(waits[n // 10:], 0.95))


def test_erlang_c_p95_wait_matches_simulation() -> None:
    c, lam, s = 4, 2.8, 1.0  # 70% busy
    cw = float(erlang_c(c, lam * s))
    formula = math.log(cw / 0.05) / (c / s - lam)
    assert _simulated_p95_wait(c, lam, s) == pytest.approx(formula, rel=0.08)


@settings(max_examples=40, deadline=None)
@given(rate=st.floats(0.1, 200), prompt=st.integers(50, 4000), output=st.integers(1, 600),
       ttft=st.floats(0.2, 5.0))
def test_replicas_are_minimal_and_meet_the_slo(rate: float, prompt: int, output: int, ttft: float) -> None:
    curve = ReplicaCurve(rate, prompt, output, L4, 0.05)
    n = curve.replicas(ttft)
    if n == 0:
        assert ttft <= curve.floor or curve.batch == 0 or curve.predicted_ttft(1 << 14) > ttft
        return
    assert curve.predicted_ttft(n) <= ttft
    assert n == curve.n0 or curve.predicted_ttft(n - 1) > ttft
    assert curve.utilisation(n) < 1.0
    more = ReplicaCurve(rate * 1.5, prompt, output, L4, 0.05).replicas(ttft)
    assert more == 0 or more >= n  # more demand never needs fewer replicas


def test_replicas_needed_with_rtt_and_e2e() -> None:
    base = replicas_needed(20, 600, 250, L4, ttft_slo=0.5, tpot_slo=0.05)
    assert base > 0
    assert replicas_needed(20, 600, 250, L4, ttft_slo=0.5, tpot_slo=0.05, rtt=0.1) >= base
    assert replicas_needed(20, 600, 250, L4, ttft_slo=0.5, tpot_slo=0.05, rtt=0.5) == 0
    # e2e 5s leaves 5 - 249 * 33ms < 0 for the first token: impossible
    assert replicas_needed(20, 600, 250, L4, ttft_slo=0.5, tpot_slo=0.05, e2e_slo=5.0) == 0
