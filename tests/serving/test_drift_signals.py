"""The agent's drift signals: what each request adds, what the payload carries, and that no text leaves."""

from __future__ import annotations

import json

import pytest

from edge_agent.runtime.request import FinishReason, RequestStats
from edge_agent.serving.drift_signals import FINISH, SKETCHES, DriftSignals
from edge_agent.serving.telemetry import Outcome, RequestRecord, Telemetry, decode_sketch


def stats(prompt: int, tokens: int, reason: FinishReason, logprobs: list[float] | None = None) -> RequestStats:
    s = RequestStats("r", 0, arrival_ns=0, prompt_tokens=prompt, admitted_ns=1_000_000)
    s.first_token_ns = 40_000_000 if tokens else None
    s.token_ns = [40_000_000 + i * 10_000_000 for i in range(tokens)]
    s.output_tokens = tokens
    s.finished_ns = 100_000_000
    s.finish_reason = reason
    for lp in logprobs or []:
        s.logprob_sum += lp
        s.logprob_tokens += 1
    return s


def test_drift_payload_counts_and_sketches() -> None:
    d = DriftSignals("fra-1", "node-a")
    assert d.flush() is None
    d(RequestRecord("tiny", "v1", "interactive", Outcome.OK, stats(100, 3, FinishReason.STOP, [-1.0, -2.0, -3.0])))
    d(RequestRecord("tiny", "v1", "batch", Outcome.OK, stats(300, 4, FinishReason.LENGTH)))
    d(RequestRecord("tiny", "v1", "batch", Outcome.OK, stats(50, 0, FinishReason.STOP)))
    d(RequestRecord("tiny", "v1", "", Outcome.CANCELLED, stats(70, 2, FinishReason.ABORT)))
    d(RequestRecord("tiny", "v1", "", Outcome.ERROR, stats(80, 0, FinishReason.ERROR)))
    d(RequestRecord("tiny", "v1", "", Outcome.FORBIDDEN))  # refused at the door: not the model's behaviour
    d(RequestRecord("tiny", "v1", "", Outcome.REJECTED))
    d(RequestRecord("tiny", "v2", "", Outcome.OK, stats(10, 1, FinishReason.STOP, [-0.5])))
    p = d.flush()
    assert set(p) == {"schema", "site", "node", "windowStart", "windowEnd", "groups"}
    assert (p["schema"], p["site"], p["node"]) == (1, "fra-1", "node-a")
    v1, v2 = p["groups"]
    assert (v1["model"], v1["version"], v2["version"]) == ("tiny", "v1", "v2")
    assert v1["requests"] == 5 and v1["finish"] == {"stop": 2, "length": 1, "error": 1, "abort": 1}
    assert set(v1["finish"]) == set(FINISH) and set(v1["sketches"]) == set(SKETCHES)
    assert v1["empty"] == 1 and v1["logprobRequests"] == 1
    assert decode_sketch(v1["sketches"]["promptTokens"]).count == 5
    out = decode_sketch(v1["sketches"]["outputTokens"])
    assert out.count == 3 and out.get_quantile_value(0.0) == 0  # finished by themselves only
    nll = decode_sketch(v1["sketches"]["nll"])
    assert nll.count == 1 and nll.get_quantile_value(0.5) == pytest.approx(2.0, rel=0.01)
    assert decode_sketch(v1["sketches"]["itlS"]).count == 2 + 3 + 1
    assert d.flush() is None


def test_a_served_request_reaches_the_drift_report_and_no_text_does() -> None:
    """Through the telemetry's observers, as the serving runtime wires it."""
    t = Telemetry("fra-1", "node-a")
    d = DriftSignals("fra-1", "node-a")
    t.observers.append(d)
    t.record(RequestRecord("tiny", "v1", "", Outcome.OK, stats(12, 2, FinishReason.STOP, [-0.25, -0.75])))
    text = json.dumps(d.flush())
    assert '"requests": 1' in text
    for word in ("prompt\"", "text", "content", "messages"):
        assert word not in text


def test_served_requests_reach_the_drift_report_with_the_engines_log_probabilities(harness) -> None:  # noqa: ANN001
    """The real serving path: HTTP request → engine (log-probabilities from its logits) → drift report."""
    import httpx

    from tests.serving.conftest import wait_until

    h = harness(telemetry_interval_s=0.1).standard().start()
    with httpx.Client(base_url=h.url) as c:
        for max_tokens in (3, 5):
            r = c.post("/v1/completions", headers={"X-Fleet-Data-Class": "personal-eu"},
                       json={"model": "chat", "prompt": "hi", "max_tokens": max_tokens, "temperature": 0,
                             "ignore_eos": True})
            assert r.status_code == 200
    wait_until(lambda: sum(g["requests"] for p in h.kinds("drift") for g in p["groups"]) == 2,
               what="both requests in drift reports")
    groups = [g for p in h.kinds("drift") for g in p["groups"]]
    assert {(g["model"], g["version"]) for g in groups} == {("tiny", "v1")}
    assert sum(g["finish"]["length"] for g in groups) == 2 and sum(g["logprobRequests"] for g in groups) == 2
    outputs = [decode_sketch(g["sketches"]["outputTokens"]) for g in groups]
    assert sum(s.count for s in outputs) == 2
    nll = [decode_sketch(g["sketches"]["nll"]) for g in groups]
    assert sum(s.count for s in nll) == 2 and all(s.get_quantile_value(0.0) > 0 for s in nll if s.count)
