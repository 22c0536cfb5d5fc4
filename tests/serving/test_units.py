"""Pure parts: residency verdicts, priority mapping, cost and carbon, telemetry payloads."""

from __future__ import annotations

import base64

import pytest
from ddsketch import DDSketch
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.runtime.request import FinishReason, RequestStats
from edge_agent.serving.cost import UTILISATION, CostModel, carbon_g, request_cost
from edge_agent.serving.priority import PriorityClass, UnknownPriorityClass, resolve
from edge_agent.serving.residency import Location, ResidencyRule, evaluate, rules_by_class
from edge_agent.serving.telemetry import SKETCHES, Outcome, RequestRecord, Telemetry, decode_sketch, encode_sketch

FRA = Location("fra-1", "DE", "EU")
IAD = Location("iad-1", "US", "US")


def rules(**specs: dict) -> dict[str, ResidencyRule]:
    return rules_by_class(ResidencyRule.from_spec(name, spec) for name, spec in specs.items())


# -- residency ------------------------------------------------------------------------
def test_allow_and_deny_rules() -> None:
    r = rules(**{"eu-gdpr": {"dataClass": "personal-eu", "allow": {"jurisdictions": ["EU", "EEA"]}},
                 "germany-only": {"dataClass": "personal-de", "allow": {"countries": ["DE"]}},
                 "fra-only": {"dataClass": "site", "allow": {"sites": ["fra-1"]}},
                 "public": {"dataClass": "public", "allow": {"anywhere": True}, "deny": {"sites": ["fra-1"]}},
                 "no-de": {"dataClass": "nde", "allow": {"jurisdictions": ["EU"]}, "deny": {"countries": ["DE"]}}})
    assert evaluate(r, "personal-eu", FRA).allowed
    assert evaluate(r, "personal-eu", FRA).rule == "allow.jurisdictions lists EU"
    assert evaluate(r, "personal-de", FRA).allowed and evaluate(r, "site", FRA).allowed
    v = evaluate(r, "personal-de", IAD)
    assert not v.allowed and v.policy == "germany-only"
    assert v.message == ("data class 'personal-de' may not be processed at site iad-1 (US, jurisdiction US): "
                         "ResidencyPolicy 'germany-only' allows countries [DE]")
    assert evaluate(r, "public", IAD).allowed
    deny = evaluate(r, "public", FRA)
    assert not deny.allowed and deny.rule == "deny.sites [fra-1]" and "lists fra-1" in deny.message
    assert not evaluate(r, "nde", FRA).allowed and evaluate(r, "nde", Location("par-1", "FR", "EU")).allowed


def test_fail_closed() -> None:
    r = rules(public={"dataClass": "public", "allow": {"anywhere": True}})
    assert not evaluate(r, "", FRA).allowed
    unknown = evaluate(r, "medical", FRA)
    assert not unknown.allowed and unknown.rule == "no policy" and "'medical'" in unknown.message
    assert not evaluate({}, "public", FRA).allowed
    assert not evaluate(rules(empty={"dataClass": "x"}), "x", FRA).allowed  # allows nothing


@pytest.mark.parametrize("spec", [{}, {"dataClass": ""}, {"dataClass": "x", "allow": {"countries": "DE"}},
                                  {"dataClass": "x", "deny": ["DE"]}])
def test_bad_policy_specs_raise(spec: dict) -> None:
    with pytest.raises(ValueError, match="ResidencyPolicy 'p'"):
        ResidencyRule.from_spec("p", spec)


names = st.lists(st.sampled_from(["DE", "FR", "US", "EU", "EEA", "fra-1", "iad-1", "par-1"]), max_size=4)


@given(anywhere=st.booleans(), aj=names, ac=names, asites=names, dj=names, dc=names, ds=names,
       site=st.sampled_from(["fra-1", "iad-1", "par-1"]), country=st.sampled_from(["DE", "FR", "US", ""]),
       jur=st.sampled_from(["EU", "US", ""]))
def test_residency_is_never_violated(anywhere, aj, ac, asites, dj, dc, ds, site, country, jur) -> None:
    spec = {"dataClass": "c", "allow": {"anywhere": anywhere, "jurisdictions": aj, "countries": ac, "sites": asites},
            "deny": {"jurisdictions": dj, "countries": dc, "sites": ds}}
    v = evaluate(rules(p=spec), "c", Location(site, country, jur))
    denied = site in ds or (country and country in dc) or (jur and jur in dj)
    allowed = anywhere or site in asites or (country and country in ac) or (jur and jur in aj)
    assert v.allowed == bool(allowed and not denied)


# -- priority --------------------------------------------------------------------------------
def test_priority_classes() -> None:
    inter = PriorityClass.from_spec("interactive", {"value": 1000.0, "preemptionPolicy": "PreemptLowerPriority"})
    bg = PriorityClass.from_spec("background", {"value": -10, "sheddable": True})
    odd = PriorityClass.from_spec("odd", {"value": 50, "sheddable": True})
    firm = PriorityClass.from_spec("firm", {"value": -5, "sheddable": False})
    assert (inter.engine_priority, bg.engine_priority, odd.engine_priority, firm.engine_priority) == (1000, -10, -1, 0)
    assert PriorityClass.from_spec("n", {"value": -3}).sheddable
    classes = {c.name: c for c in (inter, bg)}
    assert resolve(classes, "background", "interactive", "") is bg
    assert resolve(classes, None, "interactive", "background") is inter
    assert resolve(classes, None, None, "background") is bg
    assert resolve(classes, None, None, "") is None
    with pytest.raises(UnknownPriorityClass, match="'vip'.*background, interactive"):
        resolve(classes, "vip", None, "")
    with pytest.raises(ValueError, match="spec.value"):
        PriorityClass.from_spec("x", {"value": "high"})


# -- cost ----------------------------------------------------------------------------------------
def test_cost_energy_carbon() -> None:
    m = CostModel.from_spec({"gpuPricePerHourUsd": 2.5, "gpuPowerW": 350, "gridGco2PerKwh": 380,
                             "embodiedGco2PerGpuHour": 15})
    c = request_cost(m, 36.0)
    assert c.cost_usd == pytest.approx(0.025)
    assert c.energy_j == pytest.approx(36 * 350 * UTILISATION)
    assert c.carbon_g == pytest.approx(c.energy_j / 3.6e6 * 380 + 15 * 36 / 3600)
    measured = request_cost(m, 36.0, energy_j=3.6e6)
    assert measured.carbon_g == pytest.approx(380 + 0.15)
    assert carbon_g(m, 0.0, 0.0) == 0.0
    assert CostModel.from_spec(None, "FR").grid_gco2_per_kwh == 44  # Ember 2024
    assert CostModel.from_spec({}, "").grid_gco2_per_kwh == 473  # world average
    with pytest.raises(ValueError, match="gpuPowerW"):
        CostModel.from_spec({"gpuPowerW": -1})


# -- telemetry -------------------------------------------------------------------------------
def stats(ttft_ms: int, tokens: int, gap_ms: int = 10) -> RequestStats:
    s = RequestStats("r", 0, arrival_ns=0, prompt_tokens=5, admitted_ns=1_000_000)
    s.first_token_ns = ttft_ms * 1_000_000
    s.token_ns = [s.first_token_ns + i * gap_ms * 1_000_000 for i in range(tokens)]
    s.output_tokens = tokens
    s.finished_ns = s.token_ns[-1]
    s.gpu_seconds = 0.01 * tokens
    s.finish_reason = FinishReason.LENGTH
    return s


def test_telemetry_payload_shape() -> None:
    t = Telemetry("fra-1", "node-a")
    assert t.flush() is None
    m = CostModel()
    t.record(RequestRecord("tiny", "v1", "interactive", Outcome.OK, stats(50, 4), request_cost(m, 0.04)))
    t.record(RequestRecord("tiny", "v1", "interactive", Outcome.CANCELLED, stats(70, 2), request_cost(m, 0.02)))
    t.record(RequestRecord("tiny", "v1", "interactive", Outcome.FORBIDDEN))
    t.record(RequestRecord("tiny", "v1", "background", Outcome.REJECTED))
    t.record(RequestRecord("tiny", "v1", "background", Outcome.ERROR))
    p = t.flush()
    assert set(p) == {"schema", "site", "node", "windowStart", "windowEnd", "groups"}
    assert p["schema"] == 1 and p["site"] == "fra-1" and p["node"] == "node-a"
    assert p["windowStart"] <= p["windowEnd"] and p["windowEnd"].endswith("Z")
    bg, inter = p["groups"]
    assert set(inter) == {"model", "version", "priority", "requests", "errors", "rejected", "cancelled", "forbidden",
                          "promptTokens", "outputTokens", "gpuSeconds", "costUsd", "energyJ", "carbonG", "sketches"}
    assert (inter["model"], inter["version"], inter["priority"]) == ("tiny", "v1", "interactive")
    assert (inter["requests"], inter["cancelled"], inter["forbidden"], inter["errors"]) == (3, 1, 1, 0)
    assert (bg["requests"], bg["rejected"], bg["errors"]) == (2, 1, 1)
    assert (inter["promptTokens"], inter["outputTokens"]) == (10, 6)
    assert inter["gpuSeconds"] == pytest.approx(0.06) and inter["costUsd"] == pytest.approx(3.0 / 3600 * 0.06)
    assert set(inter["sketches"]) == set(SKETCHES)
    for k, v in inter["sketches"].items():
        assert isinstance(v, str) and base64.b64decode(v), k
    itl = decode_sketch(inter["sketches"]["itlS"])
    assert itl.count == 3 + 1  # every inter-token gap
    ttft = decode_sketch(inter["sketches"]["ttftS"])
    assert ttft.count == 2 and ttft.get_quantile_value(0.0) == pytest.approx(0.05, rel=0.01)
    assert decode_sketch(inter["sketches"]["e2eS"]).count == 1  # completed requests only
    assert t.flush() is None  # a new, empty window


@given(a=st.lists(st.floats(1e-4, 1e3), max_size=60), b=st.lists(st.floats(1e-4, 1e3), max_size=60))
def test_merging_decoded_sketches_equals_one_sketch_of_the_union(a: list[float], b: list[float]) -> None:
    def sketch(xs: list[float]) -> DDSketch:
        s = DDSketch(relative_accuracy=0.01)
        for x in xs:
            s.add(x)
        return s

    merged = decode_sketch(encode_sketch(sketch(a)))
    merged.merge(decode_sketch(encode_sketch(sketch(b))))
    union = sketch(a + b)

    def bins(s: DDSketch) -> dict[int, float]:
        st_ = s._store
        return {st_.offset + i: c for i, c in enumerate(st_.bins) if c}

    assert bins(merged) == bins(union)
    assert merged.count == union.count and merged._zero_count == union._zero_count


def test_chat_template_matches_the_local_tokenizer_format() -> None:
    from edge_agent.runtime.local_tokenizer import CHAT_TEMPLATE
    from edge_agent.serving.models import render_chat

    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    want = "<|system|>\nbe brief</s>\n<|user|>\nhi</s>\n<|assistant|>\n"
    assert render_chat(msgs, CHAT_TEMPLATE) == want == render_chat(msgs, None)
