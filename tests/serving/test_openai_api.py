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
