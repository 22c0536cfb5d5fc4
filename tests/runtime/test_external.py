"""ExternalServer measures TTFT/ITL from a real OpenAI-style SSE stream.

The "external" server here is a minimal OpenAI-compatible SSE app over our
own engine, run by uvicorn on a real socket; it stands in for vLLM/TGI/
llama.cpp, which cannot run here.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from edge_agent.runtime.engine import Engine, EngineConfig
from edge_agent.runtime.external import ExternalServer, ExternalServerError, StreamResult
from edge_agent.runtime.model import LlamaModel
from edge_agent.runtime.request import SamplingParams


def sse_app(engine: Engine, model_name: str) -> Starlette:
    async def completions(request: Request) -> StreamingResponse | JSONResponse:
        body = await request.json()
        if body.get("model") != model_name:
            return JSONResponse({"error": {"message": "unknown model", "type": "invalid_request_error"}}, 404)
        chat = "messages" in body
        prompt = "\n".join(m["content"] for m in body["messages"]) if chat else body["prompt"]
        h = engine.submit(prompt, SamplingParams(max_tokens=body["max_tokens"], ignore_eos=True))

        async def events() -> AsyncIterator[str]:
            try:
                async for ev in h:
                    piece = {"delta": {"content": ev.text}} if chat else {"text": ev.text}
                    yield f"data: {json.dumps({'choices': [{'index': 0, **piece, 'finish_reason': None}]})}\n\n"
                done = await h.wait()
                last = {"delta": {}} if chat else {"text": ""}
                yield f"data: {json.dumps({'choices': [{'index': 0, **last, 'finish_reason': done.finish_reason.value}]})}\n\n"
                usage = {"prompt_tokens": done.stats.prompt_tokens, "completion_tokens": done.stats.output_tokens}
                yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                h.cancel()  # client went away or stream ended: free the KV slot

        return StreamingResponse(events(), media_type="text/event-stream")

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": model_name, "object": "model"}]})

    return Starlette(routes=[Route("/v1/completions", completions, methods=["POST"]),
                             Route("/v1/chat/completions", completions, methods=["POST"]),
                             Route("/v1/models", models)])


@pytest.fixture
def server(tiny_dir: Path, tiny_model: LlamaModel) -> Iterator[tuple[str, Engine]]:
    engine = Engine(tiny_dir, EngineConfig(max_batch=4, max_len=256), model=tiny_model).start()
    config = uvicorn.Config(sse_app(engine, "tiny"), host="127.0.0.1", port=0, log_level="warning",
                            lifespan="off", ws="none")
    srv = uvicorn.Server(config)
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.01)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", engine
    srv.should_exit = True
    t.join(10)
    engine.shutdown()


async def test_stream_measures_ttft_itl_and_matches_engine(server: tuple[str, Engine]) -> None:
    url, engine = server
    direct = engine.submit("The agent serves", SamplingParams(max_tokens=12, ignore_eos=True)).result(30)
    async with ExternalServer(url) as ext:
        assert await ext.models() == ["tiny"]
        res = await ext.complete("tiny", prompt="The agent serves", max_tokens=12)
        chat = await ext.complete("tiny", messages=[{"role": "user", "content": "The agent serves"}], max_tokens=12)
    assert res.text == direct.text == chat.text
    st = res.stats
    assert st is not None and res.finish_reason == "length" and st.finish_reason.value == "length"
    assert st.output_tokens == 12 and st.prompt_tokens == direct.stats.prompt_tokens
    assert len(st.token_ns) == len(res.chunks) >= 6  # one timestamp per text chunk
    assert 0 < st.ttft_s < st.e2e_s and all(x >= 0 for x in st.itl_s)
    assert st.ttft_s >= direct.stats.ttft_s * 0.2  # measured over the wire, not copied


async def test_client_disconnect_frees_the_kv_slot(server: tuple[str, Engine]) -> None:
    url, engine = server
    res = StreamResult()
    async with ExternalServer(url) as ext:
        got = 0
        async with aclosing(ext.stream("tiny", prompt="hello", max_tokens=200, result=res)) as stream:
            async for _ in stream:
                got += 1
                if got == 3:
                    break
    assert res.stats is not None and res.stats.finish_reason.value == "abort"
    deadline = time.monotonic() + 10
    while engine.kv_usage().slots_used and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert engine.kv_usage().slots_used == 0


async def test_error_status_is_raised(server: tuple[str, Engine]) -> None:
    url, _ = server
    async with ExternalServer(url) as ext:
        with pytest.raises(ExternalServerError) as err:
            await ext.complete("nope", prompt="x", max_tokens=2)
    assert err.value.status == 404 and "unknown model" in err.value.body
    with pytest.raises(ValueError):
        async for _ in ExternalServer(url).stream("tiny", max_tokens=1):
            pass
