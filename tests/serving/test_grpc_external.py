"""gRPC Inference.Generate, and external-runtime mode forwarding to a second server."""

from __future__ import annotations

import grpc
import openai
import pytest

from protos.fleet.v1 import inference_pb2, inference_pb2_grpc
from tests.serving.conftest import Harness


@pytest.fixture
def grpc_served(harness) -> Harness:
    return harness(grpc_port=0).standard().start()


def test_generate_streams_tokens_then_usage_and_timing(grpc_served: Harness) -> None:
    h = grpc_served
    with grpc.insecure_channel(f"127.0.0.1:{h.serving.grpc_port}") as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        req = inference_pb2.GenerateRequest(model="tiny", prompt="The agent serves", max_tokens=6,
                                            data_class="personal-eu", priority_class="interactive", ignore_eos=True)
        msgs = list(stub.Generate(req, timeout=60))
    *tokens, last = msgs
    assert len(tokens) == 6 and [m.index for m in tokens] == list(range(6))
    assert tokens[0].request_id and last.request_id == tokens[0].request_id
    assert last.finish_reason == "length" and last.usage.completion_tokens == 6
    assert last.usage.total_tokens == last.usage.prompt_tokens + 6
    assert 0 < last.timing.ttft_s <= last.timing.e2e_s and last.timing.gpu_seconds > 0
    # the same text as the OpenAI API
    with openai.OpenAI(base_url=f"{h.url}/v1", api_key="x", max_retries=0,
                       default_headers={"X-Fleet-Data-Class": "personal-eu"}) as c:
        text = c.completions.create(model="tiny", prompt="The agent serves", max_tokens=6, temperature=0,
                                    extra_body={"ignore_eos": True}).choices[0].text
    assert "".join(m.text for m in tokens) == text


def test_generate_refuses_forbidden_and_bad_requests(grpc_served: Harness) -> None:
    h = grpc_served
    with grpc.insecure_channel(f"127.0.0.1:{h.serving.grpc_port}") as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)

        def call(**kw) -> grpc.RpcError:
            with pytest.raises(grpc.RpcError) as err:
                list(stub.Generate(inference_pb2.GenerateRequest(**{"model": "tiny", "prompt": "hi", **kw}),
                                   timeout=60))
            return err.value

        e = call(data_class="personal-us")
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED
        assert e.details() == ("data class 'personal-us' may not be processed at site fra-1 (DE, jurisdiction EU): "
                               "ResidencyPolicy 'us-only' allows countries [US]")
        assert call().code() == grpc.StatusCode.PERMISSION_DENIED  # no data class, no default
        assert call(data_class="public", model="nope").code() == grpc.StatusCode.NOT_FOUND
        assert call(data_class="public", priority_class="vip").code() == grpc.StatusCode.INVALID_ARGUMENT
        assert call(data_class="public", max_tokens=10_000).code() == grpc.StatusCode.INVALID_ARGUMENT
    audits = h.kinds("audit")
    assert len(audits) == 2 and audits[0]["policy"] == "us-only" and audits[0]["decision"] == "deny"


def test_external_mode_forwards_and_measures(harness) -> None:
    upstream = harness().standard().start()
    front = harness(external_url=upstream.url, default_data_class="public")
    front.start().standard()
    # upstream checks residency too: the front forwards no header, so give upstream a default
    upstream.serving.gateway.default_data_class = "public"
    with openai.OpenAI(base_url=f"{front.url}/v1", api_key="x", max_retries=0) as c:
        chunks = list(c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=5, temperature=0, stream=True,
                                                stream_options={"include_usage": True},
                                                extra_body={"ignore_eos": True}))
        direct = openai.OpenAI(base_url=f"{upstream.url}/v1", api_key="x", max_retries=0)
        with direct:
            want = direct.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                  max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
        with pytest.raises(openai.NotFoundError):
            c.completions.create(model="other", prompt="x", max_tokens=2)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == want.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 5
    payload = front.serving.flush()
    (g,) = payload["groups"]
    assert g["requests"] == 1 and g["outputTokens"] == 5 and g["errors"] == 0
    from edge_agent.serving.telemetry import decode_sketch

    assert decode_sketch(g["sketches"]["ttftS"]).count == 1
    assert decode_sketch(g["sketches"]["itlS"]).count >= 1  # gaps measured from the forwarded stream


def test_cancelled_call_frees_the_engine(grpc_served: Harness) -> None:
    from tests.serving.conftest import wait_until

    h = grpc_served
    (backend,) = h.serving.registry.backends()
    seen: list = []
    h.serving.telemetry.observers.append(seen.append)
    with grpc.insecure_channel(f"127.0.0.1:{h.serving.grpc_port}") as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        call = stub.Generate(inference_pb2.GenerateRequest(model="tiny", prompt="go on", max_tokens=240,
                                                           data_class="public", ignore_eos=True), timeout=60)
        first = next(call)
        assert first.request_id
        call.cancel()
    wait_until(lambda: backend.engine.stats().running == 0 and backend.engine.kv_usage().slots_used == 0,
               what="the engine to free the slot")
    wait_until(lambda: seen, what="the call to be recorded")
    (g,) = h.serving.flush()["groups"]
    assert g["cancelled"] == 1 and g["outputTokens"] < 240
