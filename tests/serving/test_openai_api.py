"""The OpenAI-compatible HTTP API on a real uvicorn socket with a real engine,
driven by the real ``openai`` client and raw httpx."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.serving.conftest import Harness, wait_until

EU_HEADERS = {"X-Fleet-Data-Class": "personal-eu"}


@pytest.fixture
def served(harness) -> Harness:
    return harness().standard().start()


@pytest.fixture
def client(served: Harness) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0, default_headers=EU_HEADERS)
    yield c
    c.close()


def engine_of(h: Harness):
    (b,) = h.serving.registry.backends()
    return b.engine


def test_chat_and_completion_stream_with_the_openai_client(served: Harness, client: openai.OpenAI) -> None:
    chunks = list(client.completions.create(model="tiny", prompt="The agent serves", max_tokens=8, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    whole = client.completions.create(model="tiny", prompt="The agent serves", max_tokens=8, temperature=0)
    assert whole.choices[0].text == text and whole.usage.completion_tokens == 8
    assert whole.usage.prompt_tokens == chunks[-1].usage.prompt_tokens > 0

    stream = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hello there"}],
                                            max_tokens=6, temperature=0, stream=True)
    pieces = list(stream)
    assert pieces[0].choices[0].delta.role == "assistant"
    chat_text = "".join(p.choices[0].delta.content or "" for p in pieces)
    assert pieces[-1].choices[0].finish_reason in ("stop", "length")
    full = client.chat.completions.create(model="tiny:v1", messages=[{"role": "user", "content": "hello there"}],
                                          max_tokens=6, temperature=0)
    assert full.choices[0].message.content == chat_text and full.choices[0].message.role == "assistant"
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens
    assert {m.id for m in client.models.list()} == {"tiny", "tiny:v1"}


def test_health_readiness_and_metrics(harness) -> None:
    h = harness().start()
    with httpx.Client(base_url=h.url) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 503  # nothing loaded yet
        h.standard()
        assert c.get("/readyz").status_code == 200
        r = c.post("/v1/completions", headers=EU_HEADERS,
                   json={"model": "tiny", "prompt": "hi", "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200, r.text
        c.post("/v1/completions", headers={"X-Fleet-Data-Class": "personal-us"},
               json={"model": "tiny", "prompt": "hi", "max_tokens": 4})
        text = c.get("/metrics").text
    for name in ("vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
                 "vllm:e2e_request_latency_seconds_count", "vllm:request_queue_time_seconds_count",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:num_requests_running",
                 "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "fleet_request_cost_usd_total",
                 "fleet_request_carbon_grams_total", "fleet_requests_forbidden_total"):
        assert name in text, name
    assert 'vllm:generation_tokens_total{model_name="tiny",priority="",version="v1"} 4.0' in text
    assert 'fleet_requests_forbidden_total{model_name="tiny",priority="",version="v1"} 1.0' in text


@pytest.mark.parametrize(("body", "status", "code", "param"), [
    (b"{not json", 400, "invalid_request", None),
    ({"model": "nope", "prompt": "hi"}, 404, "model_not_found", "model"),
    ({"model": "tiny", "prompt": "word " * 400, "max_tokens": 4}, 400, "context_length_exceeded", "prompt"),
    ({"model": "tiny", "prompt": "hi", "max_tokens": 255}, 400, "context_length_exceeded", "max_tokens"),
    ({"model": "tiny", "prompt": "hi", "max_tokens": 0}, 400, "invalid_request", "max_tokens"),
    ({"model": "tiny", "prompt": "hi", "priority": "vip"}, 400, "unknown_priority_class", "priority"),
])
def test_bad_input_gets_openai_errors(served: Harness, body, status: int, code: str, param: str | None) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    with httpx.Client(base_url=served.url) as c:
        r = c.post("/v1/completions", content=content, headers={**EU_HEADERS, "Content-Type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code and err["param"] == param and err["message"]
    assert engine_of(served).kv_usage().slots_used == 0


def test_openai_client_raises_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=2)
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="tiny", prompt="hi", max_tokens=10_000)


def test_telemetry_is_flushed_periodically_and_only_when_something_happened(harness) -> None:
    h = harness(telemetry_interval_s=0.1).standard().start()
    with httpx.Client(base_url=h.url) as c:
        for _ in range(2):
            r = c.post("/v1/completions", headers=EU_HEADERS,
                       json={"model": "chat", "prompt": "hi", "max_tokens": 3, "temperature": 0, "ignore_eos": True})
            assert r.status_code == 200
    reports = wait_until(lambda: h.kinds("telemetry"), what="a telemetry report")
    wait_until(lambda: sum(g["requests"] for p in h.kinds("telemetry") for g in p["groups"]) == 2,
               what="both requests reported")
    assert all(p["groups"] for p in h.kinds("telemetry"))  # idle windows send nothing
    g = reports[0]["groups"][0]
    assert (g["model"], g["version"], g["priority"]) == ("tiny", "v1", "")
    assert g["gpuSeconds"] > 0 and g["costUsd"] == pytest.approx(2.5 / 3600 * g["gpuSeconds"])
    assert g["carbonG"] > 0 and g["energyJ"] > 0


# -- stop sequences -----------------------------------------------------------------------------
def _greedy(client: openai.OpenAI, chat: bool, **kw) -> tuple[str, str]:
    """(text, finish_reason) of a greedy request, streamed or not (kw: stop, stream)."""
    common = {"max_tokens": 24, "temperature": 0, "extra_body": {"ignore_eos": True}}
    if kw.pop("stream", False):
        if chat:
            chunks = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                         stream=True, **common, **kw))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            chunks = list(client.completions.create(model="tiny", prompt="The agent serves", stream=True,
                                                    **common, **kw))
            text = "".join(c.choices[0].text for c in chunks if c.choices)
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert len(reasons) == 1
        return text, reasons[0]
    if chat:
        r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], **common, **kw)
        return r.choices[0].message.content or "", r.choices[0].finish_reason
    r = client.completions.create(model="tiny", prompt="The agent serves", **common, **kw)
    return r.choices[0].text, r.choices[0].finish_reason


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_stop_sequences_end_the_output_before_them(served: Harness, client: openai.OpenAI, chat: bool,
                                                    stream: bool) -> None:
    full, reason = _greedy(client, chat)
    assert reason == "length" and len(full) > 12, full
    stop = full[6:9]  # three characters from the middle: the output must end before their first occurrence
    expected = full[: full.index(stop)]
    text, reason = _greedy(client, chat, stop=stop, stream=stream)
    assert (text, reason) == (expected, "stop")
    # A list: the earliest of them wins; a stop string that never occurs changes nothing.
    text, reason = _greedy(client, chat, stop=["\x00never", full[10:12], stop], stream=stream)
    assert (text, reason) == (expected, "stop")
    text, reason = _greedy(client, chat, stop=["\x00never"], stream=stream)
    assert (text, reason) == (full, "length")  # text held back for a possible stop is released at the end
    assert engine_of(served).kv_usage().slots_used == 0  # stopped requests freed their KV slot


def test_a_stopped_request_ends_in_the_engine_early(served: Harness, client: openai.OpenAI) -> None:
    full, _ = _greedy(client, chat=False)
    r = client.completions.create(model="tiny", prompt="The agent serves", max_tokens=24, temperature=0,
                                  stop=full[2:4], extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < 24  # generation stopped, not just the text cut


# -- logprobs -------------------------------------------------------------------------------------
def _check_top(top: list, chosen_lp: float, k: int) -> None:
    assert len(top) == k
    lps = [t.logprob for t in top]
    assert lps == sorted(lps, reverse=True) and all(v <= 0 for v in lps)
    if k:
        assert chosen_lp <= lps[0] + 1e-5  # greedy: the chosen token is the most likely one
        assert chosen_lp == pytest.approx(lps[0], abs=1e-4)


def test_chat_logprobs_whole_and_streamed(client: openai.OpenAI) -> None:
    msgs = [{"role": "user", "content": "hello"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, temperature=0, logprobs=True,
                                       top_logprobs=3, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 6
    assert "".join(c.token for c in content) == r.choices[0].message.content
    for c in content:
        assert c.logprob <= 0 and c.bytes == list(c.token.encode())
        _check_top(c.top_logprobs, c.logprob, 3)
    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, temperature=0,
                                                 logprobs=True, top_logprobs=3, stream=True,
                                                 extra_body={"ignore_eos": True}))
    streamed = [c for ch in chunks if ch.choices and ch.choices[0].logprobs for c in ch.choices[0].logprobs.content]
    assert [(c.token, round(c.logprob, 4)) for c in streamed] == [(c.token, round(c.logprob, 4)) for c in content]
    plain = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, temperature=0,
                                           logprobs=True, extra_body={"ignore_eos": True})
    assert [c.top_logprobs for c in plain.choices[0].logprobs.content] == [[]] * 6
    none = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=2, temperature=0)
    assert none.choices[0].logprobs is None


def test_completion_logprobs_whole_and_streamed(client: openai.OpenAI) -> None:
    r = client.completions.create(model="tiny", prompt="The agent serves", max_tokens=6, temperature=0, logprobs=2,
                                  extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    for tok, v, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert v <= 0 and tok in top and top[tok] == v and 2 <= len(top) <= 3
    chunks = list(client.completions.create(model="tiny", prompt="The agent serves", max_tokens=6, temperature=0,
                                            logprobs=2, stream=True, extra_body={"ignore_eos": True}))
    got = [(t, o) for ch in chunks if ch.choices and ch.choices[0].logprobs
           for t, o in zip(ch.choices[0].logprobs.tokens, ch.choices[0].logprobs.text_offset)]
    assert got == list(zip(lp.tokens, lp.text_offset))


def test_logprobs_are_the_models_distribution_whatever_the_temperature(client: openai.OpenAI) -> None:
    """Documented choice: log-softmax of the raw logits, before temperature and top-p."""
    kw = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "logprobs": True,
          "top_logprobs": 5, "seed": 1}
    cold = client.chat.completions.create(temperature=0, **kw).choices[0].logprobs.content[0].top_logprobs
    hot = client.chat.completions.create(temperature=1.5, top_p=0.5, **kw).choices[0].logprobs.content[0].top_logprobs
    assert [(t.token, round(t.logprob, 4)) for t in cold] == [(t.token, round(t.logprob, 4)) for t in hot]


# -- models, refusals, metrics ------------------------------------------------------------------
def test_models_retrieve(client: openai.OpenAI) -> None:
    m = client.models.retrieve("tiny:v1")
    assert (m.id, m.object, m.owned_by) == ("tiny:v1", "model", "fleet")
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError) as nf:
        client.models.retrieve("gpt-4")
    assert nf.value.code == "model_not_found"


@pytest.mark.parametrize(("extra", "param"), [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"n": 2}, "n"),
    ({"logit_bias": {"1": 5}}, "logit_bias"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": 1}, "frequency_penalty"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": 3}, "stop"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"logprobs": 3}, "logprobs"),
    ({"modalities": ["audio"]}, "modalities"),
])
def test_unsupported_chat_fields_are_refused_not_ignored(served: Harness, client: openai.OpenAI, extra: dict,
                                                         param: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       extra_body=extra)
    assert err.value.status_code == 400 and err.value.param == param and err.value.code == "invalid_request"
    assert engine_of(served).kv_usage().slots_used == 0


@pytest.mark.parametrize(("extra", "param"), [({"echo": True}, "echo"), ({"suffix": "x"}, "suffix"),
                                              ({"best_of": 3}, "best_of"), ({"logprobs": 21}, "logprobs"),
                                              ({"logprobs": True}, "logprobs"), ({"messages": []}, "messages")])
def test_unsupported_completion_fields_are_refused(client: openai.OpenAI, extra: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny", prompt="hi", max_tokens=2, extra_body=extra)
    assert err.value.param == param


def test_harmless_fields_are_accepted(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       response_format={"type": "text"}, user="u-1", presence_penalty=0,
                                       frequency_penalty=0, logit_bias={}, n=1, seed=3, stop=[])
    assert r.choices[0].finish_reason in ("stop", "length")


def test_metrics_use_vllm_label_names_and_speak_openmetrics(served: Harness, client: openai.OpenAI) -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
    from prometheus_client.parser import text_string_to_metric_families as parse_text

    client.completions.create(model="tiny", prompt="hi", max_tokens=3, temperature=0, extra_body={"ignore_eos": True})
    with httpx.Client(base_url=served.url) as c:
        plain = c.get("/metrics")
        om = c.get("/metrics", headers={"Accept": "application/openmetrics-text;version=1.0.0;q=0.5,"
                                                  "text/plain;version=0.0.4;q=0.3,*/*;q=0.1"})
        prefers_text = c.get("/metrics", headers={"Accept": "text/plain;q=0.9,application/openmetrics-text;q=0.2"})
    assert plain.headers["content-type"].startswith("text/plain")
    assert prefers_text.headers["content-type"].startswith("text/plain")
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.rstrip().endswith("# EOF")
    for families in (list(parse_text(plain.text)), list(parse_openmetrics(om.text))):
        by_name = {f.name: f for f in families}
        for name in ("vllm:generation_tokens", "vllm:time_to_first_token_seconds", "vllm:num_requests_running",
                     "vllm:kv_cache_usage_perc", "fleet_request_cost_usd"):
            samples = by_name[name].samples
            assert samples and all(s.labels.get("model_name") == "tiny" and "model" not in s.labels
                                   for s in samples), name
        gen = [s for s in by_name["vllm:generation_tokens"].samples if s.name.endswith("_total")]
        assert [(s.labels, s.value) for s in gen] == [({"model_name": "tiny", "version": "v1", "priority": ""}, 3.0)]


def test_external_mode_forwards_stop_and_refuses_logprobs(harness) -> None:
    upstream = harness().standard().start()
    upstream.serving.gateway.default_data_class = "public"
    front = harness(external_url=upstream.url, default_data_class="public")
    front.start().standard()
    kw = {"model": "tiny", "prompt": "The agent serves", "max_tokens": 24, "temperature": 0,
          "extra_body": {"ignore_eos": True}}
    with openai.OpenAI(base_url=f"{upstream.url}/v1", api_key="x", max_retries=0) as direct:
        full = direct.completions.create(**kw).choices[0].text
    stop = full[6:9]
    with openai.OpenAI(base_url=f"{front.url}/v1", api_key="x", max_retries=0) as c:
        chunks = list(c.completions.create(stop=[stop], stream=True, **kw))
        with pytest.raises(openai.BadRequestError) as err:
            c.completions.create(logprobs=1, **kw)
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == full[: full.index(stop)]
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert err.value.param == "logprobs" and "external runtime mode" in err.value.message
