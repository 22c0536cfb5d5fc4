"""Front an OpenAI-compatible streaming server the agent does not own.

vLLM, TGI (Messages API) and llama.cpp's server all speak OpenAI's
``/v1/completions`` and ``/v1/chat/completions`` with server-sent events.
:class:`ExternalServer` forwards a request, yields the text deltas as they
arrive and measures the same :class:`~edge_agent.runtime.request.RequestStats`
the in-process engine records: TTFT from sending the request to the first
chunk that carries text, inter-token latency between text chunks (servers
send one chunk per token or per detokenised piece), end-to-end, and token
counts from the final ``usage`` chunk when the server sends one
(``stream_options.include_usage``), else the number of text chunks.
``gpu_seconds`` stays 0: the server's batching is not visible from outside.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from edge_agent.runtime.request import FinishReason, RequestStats


class ExternalServerError(RuntimeError):
    """The external server answered with an error status or a malformed stream."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"external server answered {status}: {body[:500]}")
        self.status = status
        self.body = body


@dataclass
class StreamResult:
    """What one streamed request produced, with its measured stats."""

    text: str = ""
    chunks: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    stats: RequestStats | None = None


class ExternalServer:
    """Client of one OpenAI-compatible server at ``base_url`` (e.g. ``http://host:8000``)."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout_s: float = 600.0,
                 client: httpx.AsyncClient | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=10.0), headers=headers)
        self._ids = itertools.count()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> ExternalServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def models(self) -> list[str]:
        """Model ids the server offers (``GET /v1/models``)."""
        r = await self._client.get(f"{self.base_url}/v1/models")
        if r.status_code != 200:
            raise ExternalServerError(r.status_code, r.text)
        return [m["id"] for m in r.json().get("data", [])]

    async def stream(
        self,
        model: str,
        *,
        prompt: str | None = None,
        messages: list[dict[str, str]] | None = None,
        max_tokens: int = 16,
        temperature: float = 0.0,
        priority: int = 0,
        extra: dict[str, Any] | None = None,
        result: StreamResult | None = None,
    ) -> AsyncIterator[str]:
        """Stream a completion (``prompt``) or chat completion (``messages``); yields text deltas.

        Pass a :class:`StreamResult` as ``result`` to receive the stats, which
        are complete when the iteration ends. To stop early, iterate inside
        ``contextlib.aclosing(...)`` and ``break``: the connection is closed at
        once (the server frees the request) and the stats end with ``abort``.
        """
        if (prompt is None) == (messages is None):
            raise ValueError("give exactly one of prompt or messages")
        chat = messages is not None
        body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": temperature,
                                "stream": True, "stream_options": {"include_usage": True}, **(extra or {})}
        body["messages" if chat else "prompt"] = messages if chat else prompt
        url = f"{self.base_url}/v1/{'chat/completions' if chat else 'completions'}"
        res = result if result is not None else StreamResult()
        stats = RequestStats(request_id=f"ext-{next(self._ids)}", priority=priority,
                             arrival_ns=time.perf_counter_ns(), prompt_tokens=0)
        res.stats = stats
        usage: dict[str, int] = {}
        finished = False
        try:
            async with self._client.stream("POST", url, json=body) as resp:
                if resp.status_code != 200:
                    raise ExternalServerError(resp.status_code, (await resp.aread()).decode(errors="replace"))
                stats.admitted_ns = time.perf_counter_ns()
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        finished = True
                        break
                    try:
                        chunk = json.loads(data)
                    except json.JSONDecodeError as exc:
                        raise ExternalServerError(resp.status_code, f"bad SSE data {data[:200]!r}") from exc
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or []:
                        text = choice.get("text")
                        if text is None:
                            text = (choice.get("delta") or {}).get("content") or ""
                        if text:
                            now = time.perf_counter_ns()
                            if stats.first_token_ns is None:
                                stats.first_token_ns = now
                            stats.token_ns.append(now)
                            res.chunks.append(text)
                            res.text += text
                            yield text
                        _add_logprobs(stats, choice.get("logprobs"))
                        if choice.get("finish_reason"):
                            res.finish_reason = choice["finish_reason"]
        finally:
            stats.finished_ns = time.perf_counter_ns()
            stats.prompt_tokens = int(usage.get("prompt_tokens", 0))
            stats.output_tokens = int(usage.get("completion_tokens", len(stats.token_ns)))
            if not finished:
                stats.finish_reason = FinishReason.ABORT
            elif res.finish_reason in ("stop", "length"):
                stats.finish_reason = FinishReason(res.finish_reason)
            else:
                stats.finish_reason = FinishReason.STOP

    async def complete(self, model: str, **kw: Any) -> StreamResult:
        """Stream to the end and return the text and stats."""
        res = StreamResult()
        async for _ in self.stream(model, result=res, **kw):
            pass
        return res


def _add_logprobs(stats: RequestStats, lp: Any) -> None:
    """Add the chunk's token log-probabilities to the stats when the server sent them.

    Completions carry ``logprobs.token_logprobs`` (a list of numbers), chat completions
    ``logprobs.content[].logprob``; anything else (absent, null, malformed) adds nothing.
    """
    if not isinstance(lp, dict):
        return
    values = lp.get("token_logprobs")
    if not isinstance(values, list):
        content = lp.get("content")
        values = [c.get("logprob") for c in content if isinstance(c, dict)] if isinstance(content, list) else []
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v <= 0:
            stats.logprob_sum += float(v)
            stats.logprob_tokens += 1
