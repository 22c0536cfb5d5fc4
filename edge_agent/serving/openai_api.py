"""OpenAI-compatible HTTP API (FastAPI): completions, chat completions, models,
health, readiness and Prometheus metrics.

Streaming uses server-sent events exactly as the ``openai`` client reads them
(``data: {json}\\n\\n`` per chunk, then ``data: [DONE]\\n\\n``); with
``stream_options.include_usage`` a last chunk with empty ``choices`` carries
the usage. Errors use OpenAI's shape ``{"error": {"message", "type", "param",
"code"}}``: 400 bad input (invalid JSON, over-long prompt, ``max_tokens``
beyond the context, unknown priority class), 403 residency, 404
``model_not_found``, 503 + ``Retry-After`` when shed.

Fleet headers: ``X-Fleet-Data-Class`` (else the agent's default; none →
refused), ``X-Fleet-Priority-Class`` (or the body's ``priority`` as a class
name). Each is sent once with one value; repeated, comma-joined or
conflicting values are a 400 (:mod:`~edge_agent.serving.headers`). A client that disconnects, mid-stream or while waiting, cancels its
request in the engine at once (KV freed at the next step).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from edge_agent.serving.errors import BadRequest, ServingError
from edge_agent.serving.gateway import Admission, Gateway
from edge_agent.serving.headers import DATA_CLASS_HEADER, PRIORITY_HEADER, agree, single
from edge_agent.serving.metrics import PrometheusExporter
from edge_agent.serving.models import Generation, GenRequest
from edge_agent.serving.telemetry import Outcome

log = logging.getLogger(__name__)
T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before the response started."""


def _error_response(exc: ServingError) -> JSONResponse:
    headers = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work``, cancelling it at once if the client disconnects meanwhile."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            msg = await request.receive()
            if msg["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        watcher.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
        raise
    if task in done:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise ClientGone()


# -- request parsing ---------------------------------------------------------------
def _int(body: dict, key: str, default: int | None, low: int) -> int | None:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise BadRequest(f"{key} must be an integer >= {low}, got {v!r}", param=key)
    return v


def _float(body: dict, key: str, default: float, low: float, high: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high:
        raise BadRequest(f"{key} must be a number in [{low}, {high}], got {v!r}", param=key)
    return float(v)


def parse(body: dict, chat: bool) -> tuple[str, GenRequest, bool, bool]:
    """(model, request, stream, include_usage) from an OpenAI request body."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required (GET /v1/models lists them)", param="model")
    if _int(body, "n", 1, 1) != 1:
        raise BadRequest("only n = 1 is supported", param="n")
    if body.get("stop") not in (None, [], ""):
        raise BadRequest("stop sequences are not supported by this server", param="stop")
    prompt: Any = None
    messages = None
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
            raise BadRequest("messages must be a non-empty list of {role, content} objects", param="messages")
        max_tokens = _int(body, "max_completion_tokens", None, 1)
        max_tokens = _int(body, "max_tokens", max_tokens, 1)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        ok = isinstance(prompt, str) or (isinstance(prompt, list) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in prompt))
        if not ok or not prompt:
            raise BadRequest("prompt must be a non-empty string or list of token ids (one prompt)", param="prompt")
        max_tokens = _int(body, "max_tokens", 16, 1)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest("seed must be an integer", param="seed")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise BadRequest("stream must be a boolean", param="stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise BadRequest("stream_options must be an object", param="stream_options")
    req = GenRequest(
        prompt=prompt, messages=messages, max_tokens=max_tokens if max_tokens is not None else -1,
        temperature=_float(body, "temperature", 1.0, 0.0, 2.0), top_p=_float(body, "top_p", 1.0, 1e-9, 1.0),
        seed=seed, ignore_eos=bool(body.get("ignore_eos", False)),
    )
    return model, req, stream, bool(opts.get("include_usage"))


# -- responses -------------------------------------------------------------------------
def _usage(gen: Generation) -> dict:
    st = gen.stats
    return {"prompt_tokens": st.prompt_tokens, "completion_tokens": st.output_tokens,
            "total_tokens": st.prompt_tokens + st.output_tokens}


class SSE:
    """Chunk encoders with the constant parts precomputed (one per streamed response)."""

    def __init__(self, chat: bool, rid: str, model: str) -> None:
        self.chat = chat
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"
        self.id = ("chatcmpl-" if chat else "cmpl-") + rid
        self.head = f'data: {{"id":{json.dumps(self.id)},"object":"{obj}","created":{created},' \
                    f'"model":{json.dumps(model)},"choices":'
        if chat:
            self._pre, self._post = '[{"index":0,"delta":{"content":', '},"logprobs":null,"finish_reason":null}]}\n\n'
        else:
            self._pre, self._post = '[{"index":0,"text":', ',"logprobs":null,"finish_reason":null}]}\n\n'

    def role(self) -> str:
        return self.head + '[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,' \
                           '"finish_reason":null}]}\n\n'

    def text(self, text: str) -> str:
        return self.head + self._pre + json.dumps(text) + self._post

    def finish(self, reason: str) -> str:
        piece = '"delta":{}' if self.chat else '"text":""'
        return self.head + f'[{{"index":0,{piece},"logprobs":null,"finish_reason":"{reason}"}}]}}\n\n'

    def usage(self, usage: dict) -> str:
        return self.head + f'[],"usage":{json.dumps(usage)}}}\n\n'


def build_app(gateway: Gateway, exporter: PrometheusExporter | None = None) -> FastAPI:
    app = FastAPI(title="fleet-agent OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ServingError)
    async def serving_error(request: Request, exc: ServingError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = ServingError(f"{exc.detail}: {request.method} {request.url.path}")
        err.status, err.type, err.code = exc.status_code, "invalid_request_error", "not_found" \
            if exc.status_code == 404 else "invalid_request"
        return JSONResponse(err.body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request %s %s failed", request.method, request.url.path)
        return JSONResponse(ServingError(f"internal error: {type(exc).__name__}").body(), status_code=500)

    @app.get("/healthz")
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok\n")

    @app.get("/readyz")
    async def readyz() -> PlainTextResponse:
        why = gateway.ready()
        return PlainTextResponse("ok\n") if why is None else PlainTextResponse(f"not ready: {why}\n", 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        if exporter is None:
            return PlainTextResponse("metrics are off\n", 404)
        return Response(generate_latest(exporter.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        data = []
        for b in sorted(gateway.registry.backends(), key=lambda b: (b.model, b.version)):
            data.append({"id": f"{b.model}:{b.version}", "object": "model", "created": 0, "owned_by": "fleet",
                         "root": b.model, "max_model_len": b.max_len})
        for name in sorted({d["root"] for d in data}):
            data.append({"id": name, "object": "model", "created": 0, "owned_by": "fleet", "root": name})
        return JSONResponse({"object": "list", "data": data})

    async def handle(request: Request, chat: bool) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        model, req, stream, include_usage = parse(body, chat)
        data_class = single(DATA_CLASS_HEADER, request.headers.getlist(DATA_CLASS_HEADER))
        body_pc = body.get("priority")
        if body_pc is not None and not isinstance(body_pc, str):
            raise BadRequest("priority must be the name of a PriorityClass", param="priority")
        pc = agree(PRIORITY_HEADER, ("the header", single(PRIORITY_HEADER, request.headers.getlist(PRIORITY_HEADER))),
                   ("the body's priority", body_pc))
        adm = gateway.admit(model, data_class, pc)
        try:
            gen = await _until_disconnect(request, gateway.start(adm, req))
        except ClientGone:
            return Response(status_code=499)
        headers = {"X-Request-Id": adm.request_id}
        if stream:
            return StreamingResponse(_stream(gateway, adm, gen, SSE(chat, adm.request_id, model), include_usage),
                                     media_type="text/event-stream", headers=headers)
        try:
            text = await _until_disconnect(request, _collect(gateway, adm, gen))
        except ClientGone:
            return Response(status_code=499)
        reason = gen.finish_reason
        if reason not in ("stop", "length"):
            raise ServingError(f"the request ended with {reason}")
        created = int(time.time())
        if chat:
            out = {"id": f"chatcmpl-{adm.request_id}", "object": "chat.completion", "created": created,
                   "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                "logprobs": None, "finish_reason": reason}],
                   "usage": _usage(gen)}
        else:
            out = {"id": f"cmpl-{adm.request_id}", "object": "text_completion", "created": created, "model": model,
                   "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}],
                   "usage": _usage(gen)}
        return JSONResponse(out, headers=headers)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await handle(request, chat=True)

    return app


async def _collect(gateway: Gateway, adm: Admission, gen: Generation) -> str:
    outcome: Outcome | None = Outcome.CANCELLED
    try:
        parts = [p.text async for p in gen]
        outcome = None
        return "".join(parts)
    finally:
        gen.cancel()
        gateway.finish(adm, gen, outcome)


async def _stream(gateway: Gateway, adm: Admission, gen: Generation, sse: SSE,
                  include_usage: bool) -> AsyncIterator[str]:
    recorded = False
    try:
        if sse.chat:
            yield sse.role()
        async for piece in gen:
            if piece.text:
                yield sse.text(piece.text)
        reason = gen.finish_reason
        if reason in ("stop", "length"):
            yield sse.finish(reason)
        else:
            err = ServingError(f"the request ended with {reason}")
            yield f"data: {json.dumps(err.body())}\n\n"
        if include_usage:
            yield sse.usage(_usage(gen))
        gateway.finish(adm, gen)  # recorded before [DONE], so a client that saw the end finds it counted
        recorded = True
        yield "data: [DONE]\n\n"
    finally:
        gen.cancel()  # synchronous: the engine frees the KV slot even if we are being cancelled
        if not recorded:
            gateway.finish(adm, gen, Outcome.CANCELLED)
