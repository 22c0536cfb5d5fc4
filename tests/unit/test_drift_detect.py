"""Drift detection (hub/drift): no alarm on stationary samples over many seeds, an alarm on each injected shift,
the cross-site outlier, the consecutive-checks rule, and the wire format from the agent's signals."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from ddsketch import DDSketch

from edge_agent.runtime.request import FinishReason, RequestStats
from edge_agent.serving.drift_signals import DriftSignals
from edge_agent.serving.telemetry import Outcome, RequestRecord
from hub.drift import config as drift_config
from hub.drift import detect, stats
from hub.drift.config import DEFAULTS
from hub.drift.signals import FINISH, NUMERIC, Signals, Window, parse_payload
from hub.report.telemetry import PayloadError

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def sketch(values: np.ndarray) -> DDSketch:
    s = DDSketch(0.01)
    for v in values:
        s.add(float(v))
    return s


def signals(rng: np.random.Generator, n: int, *, prompt_scale: float = 1.0, nll_shift: float = 0.0,
            length_share: float = 0.01) -> Signals:
    """n requests: log-normal prompt and output lengths (spreads like the Azure conversation trace)."""
    length = rng.random(n) < length_share
    finish = dict.fromkeys(FINISH, 0)
    finish["length"] = int(length.sum())
    finish["stop"] = n - finish["length"]
    sk = {k: DDSketch(0.01) for k in NUMERIC}
    sk["promptTokens"] = sketch(np.round(rng.lognormal(6.7, 1.0, n) * prompt_scale))
    sk["outputTokens"] = sketch(np.round(rng.lognormal(5.0, 0.86, n)))
    sk["nll"] = sketch(rng.normal(4.2 + nll_shift, 0.55, n).clip(0))
    return Signals(n, finish, 0, sk)


@pytest.mark.parametrize("seed", range(12))
def test_stationary_samples_raise_no_drift(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ref = signals(rng, 3000)
    for n in (300, 1000):  # the short window (tests) and the long one (distances)
        found = detect.compare(ref, signals(rng, n), DEFAULTS)
        assert {f.signal for f in found} >= {"promptTokens", "outputTokens", "nll", "finish"}
        assert [f for f in found if f.drifted] == []


@pytest.mark.parametrize("seed", range(3))
def test_each_injected_shift_is_found_by_the_test_for_its_sample_size(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    ref = signals(rng, 3000)

    def drifted(cur: Signals) -> dict[str, str]:
        return {f.signal: f.test for f in detect.compare(ref, cur, DEFAULTS) if f.drifted}

    assert drifted(signals(rng, 300, prompt_scale=1.6)) == {"promptTokens": "ks"}
    assert drifted(signals(rng, 300, nll_shift=0.5)) == {"nll": "ks"}
    assert drifted(signals(rng, 300, length_share=0.2)) == {"finish": "chi2"}
    assert drifted(signals(rng, 1000, prompt_scale=1.6)) == {"promptTokens": "wasserstein"}
    assert drifted(signals(rng, 1000, length_share=0.3)) == {"finish": "jensen-shannon"}


def test_too_few_requests_give_no_verdict() -> None:
    rng = np.random.default_rng(0)
    assert detect.compare(signals(rng, 3000), signals(rng, DEFAULTS.min_requests - 1, prompt_scale=3), DEFAULTS) == ()


def test_rare_categories_are_pooled_not_alarmed() -> None:
    """One 'length' finish in a window where the reference saw one in a thousand is no drift (chi-squared's
    approximation would say p < 1e-6 if the rare column were kept)."""
    assert stats.chi2({"stop": 2999, "length": 1}, {"stop": 299, "length": 1}) == (0.0, 1.0)
    _, p = stats.chi2({"stop": 2000, "length": 1000, "error": 3}, {"stop": 150, "length": 150, "error": 0})
    assert p < 1e-6


def test_histogram_of_a_sketch_keeps_every_bin() -> None:
    s = sketch(np.array([0, 0, 1, 2, 2, 100, 1000]))
    h = stats.histogram(s)
    assert h.n == 7 and list(h.counts) == [2, 1, 2, 1, 1]
    assert h.values[0] == 0 and h.values[-1] == pytest.approx(1000, rel=0.01)
    assert stats.ks(h, h) == (0.0, 1.0) and stats.wasserstein_normed(h, h) == 0.0
    assert stats.psi_band(stats.psi_numeric(h, h)) == "stable"


def window(site: str, i: int, sig: Signals, version: str = "v1") -> Window:
    start = T0 + timedelta(minutes=i)
    return Window(site, f"{site}-n1", "tiny", version, start, start + timedelta(minutes=1), sig)


def test_a_site_serving_corrupted_weights_stands_out_from_the_rest_of_the_fleet() -> None:
    rng = np.random.default_rng(7)
    windows = [window(site, i, signals(rng, 100, nll_shift=-0.4 if site == "par" else 0.0))
               for i in range(4) for site in ("fra", "ber", "par", "iad")]
    found = {sf.site: {f.signal for f in sf.findings if f.drifted} for sf in detect.cross_site(windows, DEFAULTS)}
    assert found == {"fra": set(), "ber": set(), "par": {"nll"}, "iad": set()}
    assert detect.cross_site([w for w in windows if w.site == "fra"], DEFAULTS) == ()  # one site: nothing to compare


def test_timeline_raises_an_alarm_only_after_consecutive_drifted_checks() -> None:
    rng = np.random.default_rng(3)
    cfg = replace(DEFAULTS, reference_requests=3000, window_requests=300, large_window_requests=0, consecutive=2)
    windows = [window("fra", i, signals(rng, 150)) for i in range(30)]  # 20 windows of reference, 10 stationary
    assert detect.alarms(detect.timeline(windows, cfg), cfg) == []
    windows += [window("fra", 30 + i, signals(rng, 150, prompt_scale=2.0)) for i in range(6)]
    checks = detect.timeline(windows, cfg)
    raised = detect.alarms(checks, cfg)
    assert [(a.site, a.signal, a.active) for a in raised] == [("", "promptTokens", True)]
    assert raised[0].since_requests < raised[0].raised_requests  # held for two checks before it was raised
    assert raised[0].since >= windows[30].end
    single = detect.alarms(checks, replace(cfg, consecutive=1))
    assert single[0].raised_requests == raised[0].since_requests


def test_a_pinned_reference_is_used_instead_of_the_first_requests() -> None:
    rng = np.random.default_rng(4)
    windows = [window("fra", i, signals(rng, 100, prompt_scale=2.0 if i < 10 else 1.0)) for i in range(60)]
    pinned = replace(DEFAULTS, reference_since=T0 + timedelta(minutes=20), reference_until=T0 + timedelta(minutes=50))
    sel = detect.select_windows(windows, pinned)
    assert sel.reference[0].start == T0 + timedelta(minutes=20) and sel.reference[-1].end <= pinned.reference_until
    drifted = lambda cfg: {f.signal for f in detect.compare(  # noqa: E731
        detect.select_windows(windows, cfg).reference_signals, detect.select_windows(windows, cfg).current_signals,
        cfg) if f.drifted}
    assert "promptTokens" in drifted(replace(DEFAULTS, reference_requests=1000))  # the odd first 10 minutes
    assert drifted(pinned) == set()


def test_config_from_a_service_drift_block() -> None:
    cfg = drift_config.from_spec({"alpha": 1e-4, "windowRequests": 500, "signals": ["nll"]})
    assert (cfg.alpha, cfg.window_requests, cfg.signals) == (1e-4, 500, ("nll",))
    assert drift_config.from_spec(None) is DEFAULTS
    with pytest.raises(ValueError, match="drift.windowRequestz: unknown setting"):
        drift_config.from_spec({"windowRequestz": 5})
    with pytest.raises(ValueError, match="alpha must be in"):
        drift_config.from_spec({"alpha": 2})
    with pytest.raises(ValueError, match="go together"):
        drift_config.from_spec({"referenceSince": "2026-11-30T00:00:00+00:00"})


def test_the_agents_payload_is_what_the_hub_reads() -> None:
    d = DriftSignals("fra-1", "node-a")
    st = RequestStats("r", 0, arrival_ns=0, prompt_tokens=40, admitted_ns=1, first_token_ns=2_000_000,
                      token_ns=[2_000_000, 3_000_000], finished_ns=3_000_000, output_tokens=2,
                      finish_reason=FinishReason.LENGTH, logprob_sum=-3.0, logprob_tokens=2)
    for _ in range(3):
        d(RequestRecord("tiny", "v1", "", Outcome.OK, st))
    [w] = parse_payload(d.flush(), site="fra-1", node="node-a")
    assert (w.site, w.model, w.version, w.signals.requests, w.signals.finish["length"]) == ("fra-1", "tiny", "v1", 3, 3)
    assert stats.histogram(w.signals.sketches["nll"]).mean() == pytest.approx(1.5, rel=0.01)
    bad = {"schema": 1, "site": "s", "node": "n", "windowStart": "2026-11-30T00:00:00Z",
           "windowEnd": "2026-11-30T00:00:05Z", "groups": [{"model": "m", "version": "v", "requests": 1,
                                                            "finish": {"stop": 2}}]}
    with pytest.raises(PayloadError, match=r"groups\[0\].finish: 2 finished requests of 1"):
        parse_payload(bad)
    with pytest.raises(PayloadError, match=r"groups\[0\].sketches.nll: not valid base64"):
        parse_payload({**bad, "groups": [{"model": "m", "version": "v", "sketches": {"nll": "%%"}}]})


def test_services_and_their_drift_blocks_come_from_the_revision_bundle() -> None:
    import json

    from hub.drift.monitor import services_of
    from hub.policy.schema import ServiceSpec

    spec = {"model": "chat", "version": "v2", "slo": {"ttftP95": "500ms", "tpotP95": "50ms"},
            "demand": [{"region": "eu-central", "rate": "2rps", "meanPromptTokens": 100, "meanOutputTokens": 50}],
            "priorityClass": "interactive", "dataClass": "public", "drift": {"alpha": 1e-4, "signals": ["nll"]}}
    canonical = ServiceSpec.model_validate(spec).model_dump(mode="json", by_alias=True)
    bundle = json.dumps([{"kind": "Service", "metadata": {"name": "assistant"}, "spec": canonical},
                         {"kind": "Model", "metadata": {"name": "chat"}, "spec": {}}])
    [svc] = services_of(bundle)
    assert (svc.name, svc.model, svc.version, svc.config.alpha, svc.config.signals) == (
        "assistant", "chat", "v2", 1e-4, ("nll",))
    assert svc.config.window_requests == DEFAULTS.window_requests  # unset fields keep the defaults
    with pytest.raises(ValueError, match="referenceSince and referenceUntil go together"):
        ServiceSpec.model_validate({**spec, "drift": {"referenceSince": "2026-11-30T00:00:00Z"}})
    with pytest.raises(ValueError, match="signals"):
        ServiceSpec.model_validate({**spec, "drift": {"signals": ["colour"]}})


def test_an_external_servers_logprobs_feed_the_mean_logprob() -> None:
    from edge_agent.runtime.external import _add_logprobs

    st = RequestStats("r", 0, arrival_ns=0, prompt_tokens=1)
    _add_logprobs(st, {"token_logprobs": [-1.0, -2.0]})  # completions
    _add_logprobs(st, {"content": [{"logprob": -3.0}, {"token": "x"}]})  # chat completions
    _add_logprobs(st, None)  # the server sent none
    _add_logprobs(st, {"token_logprobs": [float("nan"), 0.5, "x"]})  # junk is ignored
    assert (st.logprob_tokens, st.mean_logprob) == (3, -2.0)


def test_the_benchmarks_simulation_finds_halved_outputs_and_nothing_on_stationary_traffic() -> None:
    from benchmarks import drift as bench

    if not (bench.TRACES / "AzureLLMInferenceTrace_conv.csv").exists():
        pytest.skip(f"the Azure traces are not at {bench.TRACES}")
    rng = np.random.default_rng(0)
    pools = {k: rng.normal(m, 0.5, 300).clip(0) for k, m in (("base", 4.1), ("swap", 5.6), ("corrupt", 3.9))}
    tr = bench.load_trace("conv")
    calm = bench.traffic(tr, 5000, pools, rng)
    assert detect.alarms(bench.run_checks(calm, DEFAULTS, 100), DEFAULTS) == []
    r = bench.traffic(tr, 5000, pools, rng, "output_collapse", 4000)
    found = bench.first_detection(detect.alarms(bench.run_checks(r, DEFAULTS, 50), DEFAULTS), "output_collapse", 4000, r)
    assert found["detected"] and found["delay_requests"] <= 500
