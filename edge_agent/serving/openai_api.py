"""OpenAI-compatible HTTP API (FastAPI): completions, chat completions, models,
health, readiness and Prometheus metrics.

Streaming uses server-sent events exactly as the ``openai`` client reads them
(``data: {json}\\n\\n`` per chunk, then ``data: [DONE]\\n\\n``); with
``stream_options.include_usage`` a last chunk with empty ``choices`` carries
the usage. ``stop`` (a string or up to 4) and ``logprobs``/``top_logprobs``
are honoured, streaming included (the engine matches stop strings and computes
log-probabilities only for requests that ask); every field this server would
otherwise ignore (``tools``, JSON ``response_format``, ``n > 1``, penalties,
``logit_bias``, unknown names...) is refused with a 400 naming it, never
silently dropped (README, "OpenAI-compatible API"). Errors use OpenAI's
shape ``{"error": {"message", "type", "param", "code"}}``: 400 bad input
(invalid JSON, over-long prompt, ``max_tokens`` beyond the context, unknown
priority class), 403 residency, 404 ``model_not_found``, 503 + ``Retry-After``
when shed.

Fleet headers: ``X-Fleet-Data-Class`` (else the agent's default; none →
refused), ``X-Fleet-Priority-Class`` (or the body's ``priority`` as a class
name), ``X-Fleet-Origin-Region`` (the demand region the request counts for,
one the site serves; else the site's own). Each is sent once with one value; repeated, comma-joined or
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
from prometheus_client.openmetrics import exposition as openmetrics
from starlette.exceptions import HTTPException as StarletteHTTPException

from edge_agent.runtime.request import Logprob, TokenLogprobs
from edge_agent.serving.errors import BadRequest, ModelNotFound, ServingError
from edge_agent.serving.gateway import Admission, Gateway
from edge_agent.serving.headers import DATA_CLASS_HEADER, ORIGIN_REGION_HEADER, PRIORITY_HEADER, agree, single
from edge_agent.serving.metrics import PrometheusExporter, openmetrics_latest
from edge_agent.serving.models import Generation, GenRequest, Piece
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


COMMON_FIELDS = frozenset({
    "model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "user",
    "logprobs", "presence_penalty", "frequency_penalty", "logit_bias", "priority", "ignore_eos"})
CHAT_FIELDS = COMMON_FIELDS | {"messages", "max_completion_tokens", "top_logprobs", "response_format", "tools",
                               "tool_choice", "parallel_tool_calls", "functions", "function_call"}
COMPLETION_FIELDS = COMMON_FIELDS | {"prompt", "echo", "suffix", "best_of"}
MAX_STOPS = 4
MAX_LOGPROBS = 20


def _refuse_unsupported(body: dict, chat: bool) -> None:
    """400 for every field this server would otherwise have to ignore (never silently).

    Accepted with no effect, because they change nothing in the output:
    ``user``, ``parallel_tool_calls``, ``response_format: {"type": "text"}``,
    ``tool_choice: "none"``, zero penalties, an empty ``logit_bias``, ``best_of: 1``.
    """
    known = CHAT_FIELDS if chat else COMPLETION_FIELDS
    for key in body:
        if key not in known:
            raise BadRequest(f"unrecognized request argument {key!r}; this server supports: "
                             f"{', '.join(sorted(known))} (see the README's API section)", param=key)
    for key in ("presence_penalty", "frequency_penalty"):
        v = body.get(key)
        if v not in (None, 0):
            raise BadRequest(f"{key} is not supported by this server (only 0)", param=key)
    if body.get("logit_bias") not in (None, {}):
        raise BadRequest("logit_bias is not supported by this server", param="logit_bias")
    for key in ("tools", "functions"):
        if body.get(key) not in (None, []):
            raise BadRequest(f"{key} (function calling) is not supported by this server; send the tool "
                             "descriptions in the prompt and parse the reply yourself", param=key)
    for key in ("tool_choice", "function_call"):
        if body.get(key) not in (None, "none"):
            raise BadRequest(f"{key} is not supported by this server (function calling is not implemented)",
                             param=key)
    rf = body.get("response_format")
    if rf is not None and rf != {"type": "text"}:
        raise BadRequest("response_format other than {\"type\": \"text\"} (JSON mode, JSON schema) is not "
                         "supported by this server", param="response_format")
    if body.get("echo") not in (None, False):
        raise BadRequest("echo is not supported by this server", param="echo")
    if body.get("suffix") not in (None, ""):
        raise BadRequest("suffix (insertion) is not supported by this server", param="suffix")
    if body.get("best_of") not in (None, 1):
        raise BadRequest("only best_of = 1 is supported", param="best_of")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise BadRequest("user must be a string", param="user")


def _stop(body: dict) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
        raise BadRequest(f"stop must be a string or a list of strings, got {v!r}", param="stop")
    if len(items) > MAX_STOPS:
        raise BadRequest(f"stop takes at most {MAX_STOPS} sequences, got {len(items)}", param="stop")
    return tuple(dict.fromkeys(x for x in items if x))  # "" stops nothing; duplicates once


def _logprobs(body: dict, chat: bool) -> int | None:
    """The number of alternatives per token, or None when no logprobs are asked for."""
    v = body.get("logprobs")
    if chat:
        if v is not None and not isinstance(v, bool):
            raise BadRequest(f"logprobs must be a boolean, got {v!r}", param="logprobs")
        top = _int(body, "top_logprobs", None, 0)
        if top is not None and top > MAX_LOGPROBS:
            raise BadRequest(f"top_logprobs must be at most {MAX_LOGPROBS}, got {top}", param="top_logprobs")
        if top is not None and not v:
            raise BadRequest("top_logprobs needs logprobs: true", param="top_logprobs")
        return (top or 0) if v else None
    n = _int(body, "logprobs", None, 0)
    if n is not None and n > MAX_LOGPROBS:
        raise BadRequest(f"logprobs must be at most {MAX_LOGPROBS}, got {n}", param="logprobs")
    return n


def parse(body: dict, chat: bool) -> tuple[str, GenRequest, bool, bool]:
    """(model, request, stream, include_usage) from an OpenAI request body."""
    _refuse_unsupported(body, chat)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required (GET /v1/models lists them)", param="model")
    if _int(body, "n", 1, 1) != 1:
        raise BadRequest("only n = 1 is supported", param="n")
    stop = _stop(body)
    logprobs = _logprobs(body, chat)
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
        seed=seed, ignore_eos=bool(body.get("ignore_eos", False)), stop=stop, logprobs=logprobs,
    )
    return model, req, stream, bool(opts.get("include_usage"))


# -- responses -------------------------------------------------------------------------
def wants_openmetrics(accept: str) -> bool:
    """Whether a scraper's Accept header asks for OpenMetrics (Prometheus sends
    ``application/openmetrics-text;version=1.0.0,...;q=0.5,text/plain;...``)."""
    best: tuple[float, bool] = (-1.0, False)
    for part in accept.split(","):
        media, *params = (x.strip() for x in part.split(";"))
        q = 1.0
        for prm in params:
            if prm.startswith("q="):
                try:
                    q = float(prm[2:])
                except ValueError:
                    q = 0.0
        if media in ("application/openmetrics-text", "text/plain", "*/*", "text/*") and q > 0 and q > best[0]:
            best = (q, media == "application/openmetrics-text")
    return best[1]


def _usage(gen: Generation) -> dict:
    st = gen.stats
    return {"prompt_tokens": st.prompt_tokens, "completion_tokens": st.output_tokens,
            "total_tokens": st.prompt_tokens + st.output_tokens}


LOGPROB_FLOOR = -9999.0
"""What OpenAI reports for a token of probability 0 (JSON has no -Infinity)."""


def _lp(v: float) -> float:
    return v if v > LOGPROB_FLOOR else LOGPROB_FLOOR


def chat_logprobs(lps: list[TokenLogprobs]) -> dict:
    """OpenAI's chat ``logprobs`` object: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""
    def one(x: Logprob) -> dict:
        return {"token": x.text, "logprob": _lp(x.logprob), "bytes": list(x.text.encode())}

    return {"content": [{**one(t.chosen), "top_logprobs": [one(a) for a in t.top]} for t in lps]}


def completion_logprobs(lps: list[TokenLogprobs], offset: int) -> dict:
    """OpenAI's legacy completions ``logprobs`` object; ``text_offset`` counts from ``offset``.

    As in vLLM, each ``top_logprobs`` entry also holds the sampled token (so up to ``logprobs + 1`` keys).
    """
    tokens, token_lps, top, offsets = [], [], [], []
    for t in lps:
        tokens.append(t.chosen.text)
        token_lps.append(_lp(t.chosen.logprob))
        top.append({**{a.text: _lp(a.logprob) for a in t.top}, t.chosen.text: _lp(t.chosen.logprob)})
        offsets.append(offset)
        offset += len(t.chosen.text)
    return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": top, "text_offset": offsets}


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

    def with_logprobs(self, text: str, logprobs: dict) -> str:
        piece = '"delta":{"content":' if self.chat else '"text":'
        return self.head + f'[{{"index":0,{piece}{json.dumps(text)}{"}" if self.chat else ""},' \
                           f'"logprobs":{json.dumps(logprobs)},"finish_reason":null}}]}}\n\n'

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
    async def metrics(request: Request) -> Response:
        if exporter is None:
            return PlainTextResponse("metrics are off\n", 404)
        if wants_openmetrics(request.headers.get("accept", "")):
            return Response(openmetrics_latest(exporter.registry),
                            media_type=openmetrics.CONTENT_TYPE_LATEST)
        return Response(generate_latest(exporter.registry), media_type=CONTENT_TYPE_LATEST)

    def model_cards() -> list[dict]:
        data = []
        for b in sorted(gateway.registry.backends(), key=lambda b: (b.model, b.version)):
            data.append({"id": f"{b.model}:{b.version}", "object": "model", "created": 0, "owned_by": "fleet",
                         "root": b.model, "max_model_len": b.max_len})
        for name in sorted({d["root"] for d in data}):
            data.append({"id": name, "object": "model", "created": 0, "owned_by": "fleet", "root": name})
        return data

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": model_cards()})

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str) -> JSONResponse:
        for card in model_cards():
            if card["id"] == model_id:
                return JSONResponse(card)
        served = ", ".join(c["id"] for c in model_cards()) or "nothing yet"
        raise ModelNotFound(f"the model {model_id!r} does not exist on this node; it serves: {served}",
                            param="model")

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
        origin = single(ORIGIN_REGION_HEADER, request.headers.getlist(ORIGIN_REGION_HEADER))
        adm = gateway.admit(model, data_class, pc, origin=origin)
        try:
            gen = await _until_disconnect(request, gateway.start(adm, req))
        except ClientGone:
            return Response(status_code=499)
        headers = {"X-Request-Id": adm.request_id}
        if stream:
            return StreamingResponse(_stream(gateway, adm, gen, SSE(chat, adm.request_id, model), include_usage),
                                     media_type="text/event-stream", headers=headers)
        try:
            pieces = await _until_disconnect(request, _collect(gateway, adm, gen))
        except ClientGone:
            return Response(status_code=499)
        reason = gen.finish_reason
        if reason not in ("stop", "length"):
            raise ServingError(f"the request ended with {reason}")
        text = "".join(p.text for p in pieces)
        lps = [p.logprobs for p in pieces if p.logprobs is not None] if req.logprobs is not None else None
        created = int(time.time())
        if chat:
            out = {"id": f"chatcmpl-{adm.request_id}", "object": "chat.completion", "created": created,
                   "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                "logprobs": None if lps is None else chat_logprobs(lps),
                                                "finish_reason": reason}],
                   "usage": _usage(gen)}
        else:
            out = {"id": f"cmpl-{adm.request_id}", "object": "text_completion", "created": created, "model": model,
                   "choices": [{"index": 0, "text": text,
                                "logprobs": None if lps is None else completion_logprobs(lps, 0),
                                "finish_reason": reason}],
                   "usage": _usage(gen)}
        return JSONResponse(out, headers=headers)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await handle(request, chat=True)

    return app


async def _collect(gateway: Gateway, adm: Admission, gen: Generation) -> list[Piece]:
    outcome: Outcome | None = Outcome.CANCELLED
    try:
        parts = [p async for p in gen]
        outcome = None
        return parts
    finally:
        gen.cancel()
        gateway.finish(adm, gen, outcome)


async def _stream(gateway: Gateway, adm: Admission, gen: Generation, sse: SSE,
                  include_usage: bool) -> AsyncIterator[str]:
    recorded = False
    try:
        if sse.chat:
            yield sse.role()
        offset = 0
        async for piece in gen:
            if piece.logprobs is not None:
                lp = chat_logprobs([piece.logprobs]) if sse.chat else completion_logprobs([piece.logprobs], offset)
                offset += len(piece.logprobs.chosen.text)
                yield sse.with_logprobs(piece.text, lp)
            elif piece.text:
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
