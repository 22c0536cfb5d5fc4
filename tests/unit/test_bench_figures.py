"""The benchmarks' arithmetic (pure parts): lost agents count as infinitely late; the placement baseline."""

from __future__ import annotations

import dataclasses

from benchmarks.fanout import censored_quantiles
from benchmarks.placement import user_baseline
from hub.placement.greedy import solve_greedy
from hub.placement.synthetic import synthetic_problem


def test_more_than_one_percent_lost_puts_p99_at_the_timeout() -> None:
    fine = censored_quantiles([0.1] * 99, 100, 60.0)  # one lost of 100: p99 is still a real ack
    assert fine["p99_ms"] == 100.0 and not fine["p99_censored"] and fine["max_ms"] == 60000.0
    lost = censored_quantiles([0.1] * 97, 100, 60.0)  # three lost: p99 is infinitely late, shown as the timeout
    assert lost["p99_ms"] == 60000.0 and lost["p99_censored"] and lost["p50_ms"] == 100.0
    assert censored_quantiles([], 10, 5.0)["p50_ms"] == 5000.0  # nobody acked


def test_user_baseline_places_on_legal_pools_only() -> None:
    problem = synthetic_problem(30, 8, seed=3)
    placed = {(a.service, a.region) for a in solve_greedy(problem, max_runs=2).assignments}
    base = user_baseline(problem, placed)
    assert base["gpus"] > 0 and base["cost"] > 0 and base["unplaced_shards"] == 0
    # with every site's residency withdrawn nothing is legal: the baseline places nothing
    none = user_baseline(dataclasses.replace(problem, rules={}), placed)
    assert none["gpus"] == 0 and none["unplaced_shards"] > 0
