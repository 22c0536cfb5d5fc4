"""What this node serves: model backends (local engine or external server) and the registry
that Placements fill.

A :class:`Backend` serves one (model, version). :class:`LocalBackend` runs an
in-process :class:`~edge_agent.runtime.engine.Engine` on
``<models_dir>/<model>/<version>/``; :class:`ExternalBackend` forwards to an
OpenAI-compatible server (vLLM, TGI, llama.cpp) through
:class:`~edge_agent.runtime.external.ExternalServer` and measures TTFT/ITL from
its stream. Both hand out :class:`Generation` objects with the same interface,
so the HTTP and gRPC front ends do not care which one runs.

:class:`ModelRegistry` holds one backend per distinct (model, version) over all
Placements. Applying a Placement loads what is new first (a failure unloads
what this apply loaded and raises: the old set keeps serving), then drains and
unloads what no placement needs any more, in a background thread.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.cancel import Cancelled, CancelToken
from edge_agent.runtime.request import FinishReason, RequestStats
from edge_agent.serving.cost import CostModel
from edge_agent.serving.errors import (
    BadRequest,
    ModelNotFound,
    Overloaded,
    ServingError,
    Unavailable,
    UpstreamError,
)

log = logging.getLogger(__name__)


# -- placement spec -------------------------------------------------------------------
@dataclass(frozen=True)
class Assignment:
    """One service's model on this node, from a Placement's ``assignments``."""

    service: str
    model: str
    version: str
    priority_class: str = ""
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None
    data_class: str = ""
    """The service's residency data class; its requests are let in only once this node holds its policy."""
    digest: str = ""
    """The Model version's weights digest (``sha256:...``); the local runtime serves only files that match."""
    integrity: str = ""
    """``sha256`` (verify against digest), ``none`` (the Model spec opts out) or '' (the hub sent
    neither: a local-runtime agent refuses to serve it, fail-closed)."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.model, self.version)


@dataclass(frozen=True)
class PlacementSpec:
    name: str
    assignments: tuple[Assignment, ...]
    cost_model: CostModel

    @classmethod
    def from_spec(cls, name: str, spec: Mapping[str, Any], node: str, country: str = "") -> PlacementSpec:
        """Parse a Placement; raises ValueError naming the field.

        ``spec.assignments`` lists the services; a spec without it is read as
        one flat assignment (the shape external-runtime mode uses). Assignments
        for another node are ignored.
        """
        raw = spec.get("assignments")
        items = [spec] if raw is None else raw
        if not isinstance(items, list):
            raise ValueError(f"Placement {name!r}: spec.assignments must be a list")
        out = []
        for i, a in enumerate(items):
            where = f"Placement {name!r}: spec.assignments[{i}]" if raw is not None else f"Placement {name!r}: spec"
            if not isinstance(a, Mapping):
                raise ValueError(f"{where} must be a mapping")
            if a.get("node") and a.get("node") != node:
                continue
            model = a.get("model")
            if not isinstance(model, str) or not model:
                raise ValueError(f"{where}.model is missing")
            version = str(a.get("version") or "")
            if not version:
                raise ValueError(f"{where}.version is missing")

            def slo(key: str) -> float | None:
                v = a.get(key)
                if v is None:
                    return None
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                    raise ValueError(f"{where}.{key} {v!r} must be a number of seconds > 0")
                return float(v)

            out.append(Assignment(service=str(a.get("service") or model), model=model, version=version,
                                  priority_class=str(a.get("priorityClass") or ""),
                                  ttft_slo_s=slo("ttftSloS"), tpot_slo_s=slo("tpotSloS"),
                                  data_class=str(a.get("dataClass") or ""),
                                  digest=str(a.get("digest") or ""), integrity=str(a.get("integrity") or "")))
        try:
            cost = CostModel.from_spec(spec.get("costModel"), country)
        except ValueError as exc:
            raise ValueError(f"Placement {name!r}: spec.{exc}") from None
        return cls(name, tuple(out), cost)


# -- requests and generations -------------------------------------------------------------
@dataclass(frozen=True)
class GenRequest:
    """A request as the front ends hand it to a backend."""

    prompt: str | Sequence[int] | None = None
    messages: list[dict[str, Any]] | None = None
    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False
    priority: int = 0
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None
    request_id: str | None = None
    stop: tuple[str, ...] = ()
    """Stop strings (not emitted; finish reason ``stop``)."""
    logprobs: int | None = None
    """None: none; else per-token log-probabilities with this many alternatives (0..20)."""


@dataclass(frozen=True)
class Piece:
    """Newly generated text (one token on the local engine; one chunk from an external server)."""

    text: str
    token_id: int | None
    index: int
    logprobs: Any = None
    """:class:`~edge_agent.runtime.request.TokenLogprobs` when the request asked for them."""


class Generation:
    """One running request. ``await first()``, then ``async for piece in gen``; ``aclose()`` always."""

    stats: RequestStats

    async def first(self) -> None:
        """Wait for the first token or the end; raise :class:`ServingError` if refused (e.g. shed)."""
        raise NotImplementedError

    def __aiter__(self) -> AsyncIterator[Piece]:
        raise NotImplementedError

    @property
    def finish_reason(self) -> str:
        """``stop``, ``length``, ``abort`` or ``error``."""
        raise NotImplementedError

    def cancel(self) -> None:
        """End the request now if it is still running, without awaiting (safe while being cancelled)."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """End the request now if it is still running (KV freed at the engine's next step)."""
        raise NotImplementedError


class LocalGeneration(Generation):
    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.stats = handle.stats
        self._it = handle.__aiter__()
        self._pending: Any = None
        self._ended = False

    async def first(self) -> None:
        try:
            self._pending = await self._it.__anext__()
        except StopAsyncIteration:
            self._ended = True
            reason = self.handle.finish_reason
            if reason is FinishReason.REJECTED:
                rej = self.handle.rejection
                raise Overloaded(f"request shed: {rej.reason if rej else 'overloaded'}",
                                 retry_after_s=rej.retry_after_s if rej else 1.0) from None
            if reason is FinishReason.ABORT:
                raise Unavailable("the model was unloaded or the engine stopped before the request ran") from None
            if reason is FinishReason.ERROR:
                raise ServingError("the engine failed while running this request") from None

    async def __aiter__(self) -> AsyncIterator[Piece]:
        if self._pending is not None:
            ev, self._pending = self._pending, None
            yield Piece(ev.text, ev.token_id, ev.index, ev.logprobs)
        if self._ended:
            return
        async for ev in self._it:
            yield Piece(ev.text, ev.token_id, ev.index, ev.logprobs)

    @property
    def finish_reason(self) -> str:
        r = self.handle.finish_reason
        return "abort" if r is None else r.value

    def cancel(self) -> None:
        self.handle.cancel()

    async def aclose(self) -> None:
        self.handle.cancel()
        await self._it.aclose()


class ExternalGeneration(Generation):
    def __init__(self, server: Any, model: str, req: GenRequest) -> None:
        from edge_agent.runtime.external import StreamResult

        self.result = StreamResult()
        extra: dict[str, Any] = {"top_p": req.top_p}
        if req.seed is not None:
            extra["seed"] = req.seed
        if req.ignore_eos:
            extra["ignore_eos"] = True
        if req.stop:
            extra["stop"] = list(req.stop)  # the upstream server stops (and frees the request) itself
        kw: dict[str, Any] = {"messages": req.messages} if req.messages is not None else {"prompt": req.prompt}
        self._agen = server.stream(model, max_tokens=req.max_tokens if req.max_tokens > 0 else 256, temperature=req.temperature,
                                   priority=req.priority, extra=extra, result=self.result, **kw)
        self._pending: str | None = None
        self._ended = False
        self._count = 0
        self._closer: asyncio.Future | None = None
        self.stats = RequestStats(request_id=req.request_id or "", priority=req.priority,
                                  arrival_ns=time.perf_counter_ns(), prompt_tokens=0)

    async def _next(self) -> str | None:
        from edge_agent.runtime.external import ExternalServerError

        try:
            return await self._agen.__anext__()
        except StopAsyncIteration:
            return None
        except ExternalServerError as exc:
            msg = f"external model server: {exc}"
            if exc.status in (429, 503):
                raise Overloaded(msg, retry_after_s=1.0) from None
            if exc.status == 404:
                raise ModelNotFound(msg) from None
            if 400 <= exc.status < 500:
                raise BadRequest(msg) from None
            raise UpstreamError(msg) from None
        except OSError as exc:
            raise UpstreamError(f"external model server unreachable: {exc}") from None
        except Exception as exc:  # httpx transport errors
            import httpx

            if isinstance(exc, httpx.HTTPError):
                raise UpstreamError(f"external model server failed: {exc}") from None
            raise
        finally:
            if self.result.stats is not None:
                self.stats = self.result.stats

    async def first(self) -> None:
        self._pending = await self._next()
        self._ended = self._pending is None

    async def __aiter__(self) -> AsyncIterator[Piece]:
        if self._pending is not None:
            text, self._pending = self._pending, None
            yield Piece(text, None, 0)
            self._count = 1
        while not self._ended:
            text = await self._next()
            if text is None:
                self._ended = True
                return
            yield Piece(text, None, self._count)
            self._count += 1

    @property
    def finish_reason(self) -> str:
        if self.stats.finish_reason is None:
            return "abort"
        return self.result.finish_reason or self.stats.finish_reason.value

    def cancel(self) -> None:
        """Close the upstream stream (the external server frees the request) in the background."""
        if self._closer is None:
            self._closer = asyncio.ensure_future(self.aclose())

    async def aclose(self) -> None:
        await self._agen.aclose()
        if self.result.stats is not None:
            self.stats = self.result.stats


# -- backends ----------------------------------------------------------------------------
class Backend:
    model: str
    version: str
    max_len: int | None = None

    async def start(self, req: GenRequest) -> Generation:
        raise NotImplementedError

    def gauges(self) -> tuple[int, int, float]:
        """(running, waiting, KV usage fraction)."""
        return (0, 0, 0.0)

    def idle(self) -> bool:
        return True

    def close(self) -> None:
        """Stop at once (unfinished requests end)."""


@functools.lru_cache(maxsize=16)
def _compiled(template: str) -> Any:
    import jinja2

    return jinja2.Environment(autoescape=False, keep_trailing_newline=True).from_string(template)


def render_chat(messages: Sequence[Mapping[str, Any]], template: str | None, eos_token: str = "</s>") -> str:
    """The chat prompt: the tokenizer's template, else the local Zephyr-like one
    (``<|role|>\\ncontent</s>\\n`` per message, then ``<|assistant|>\\n``; BOS comes
    from the tokenizer's post-processor)."""
    if template:
        try:
            # BOS comes from the tokenizer's post-processor, so the template's is left empty.
            return _compiled(template).render(messages=messages, add_generation_prompt=True,
                                              bos_token="", eos_token=eos_token)
        except Exception as exc:  # noqa: BLE001 - an unusable template: fall back
            log.debug("chat template failed (%s); using the built-in one", exc)
    return "".join(f"<|{m['role']}|>\n{m['content']}{eos_token}\n" for m in messages) + "<|assistant|>\n"


def _content(m: Mapping[str, Any]) -> str:
    c = m.get("content")
    if c is None:
        return ""
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # OpenAI content parts: keep the text ones
        return "".join(p.get("text", "") for p in c if isinstance(p, Mapping) and p.get("type") == "text")
    raise BadRequest("message content must be a string or a list of text parts", param="messages")


class LocalBackend(Backend):
    """An in-process engine on one model directory."""

    def __init__(self, model: str, version: str, engine: Any) -> None:
        self.model, self.version, self.engine = model, version, engine
        self.max_len = engine.max_len
        self.chat_template: str | None = None
        self.eos_token = "</s>"
        self._ids = itertools.count()

    @classmethod
    def load(cls, model: str, version: str, directory: Path, engine_config: Any = None) -> LocalBackend:
        from edge_agent.runtime.engine import Engine
        from edge_agent.runtime.request import SamplingParams

        engine = Engine(directory, engine_config).start()
        try:
            # Warm up before taking traffic: the first step pays for lazy
            # initialisation (allocator, kernels, graph capture on a GPU). A
            # version that cannot generate fails here, so the old one stays.
            engine.generate([[1, 2, 3]], SamplingParams(max_tokens=2, temperature=0.0))
        except Exception:
            engine.shutdown()
            raise
        b = cls(model, version, engine)
        tc = directory / "tokenizer_config.json"
        if tc.exists():
            try:
                conf = json.loads(tc.read_text())
                b.chat_template = conf.get("chat_template")
                eos = conf.get("eos_token")
                eos = eos.get("content") if isinstance(eos, dict) else eos
                if isinstance(eos, str) and eos:
                    b.eos_token = eos
            except (OSError, ValueError, AttributeError):
                pass
        return b

    def encode(self, req: GenRequest) -> list[int]:
        tok = self.engine.tokenizer
        if req.messages is not None:
            if tok is None:
                raise BadRequest("this model has no tokenizer: chat is not available", param="messages")
            msgs = [{"role": str(m.get("role", "user")), "content": _content(m)} for m in req.messages]
            return list(tok.encode(render_chat(msgs, self.chat_template, self.eos_token)).ids)
        if isinstance(req.prompt, str):
            if tok is None:
                raise BadRequest("this model has no tokenizer: send the prompt as token ids", param="prompt")
            return list(tok.encode(req.prompt).ids)
        return [int(t) for t in req.prompt or ()]

    async def start(self, req: GenRequest) -> Generation:
        from edge_agent.runtime.request import SamplingParams

        ids = self.encode(req)
        param = "messages" if req.messages is not None else "prompt"
        if not ids:
            raise BadRequest("the prompt is empty", param=param)
        if len(ids) >= self.max_len:
            raise BadRequest(f"the prompt has {len(ids)} tokens; this model's context holds {self.max_len} "
                             f"(at most {self.max_len - 1} prompt tokens)", param=param,
                             code="context_length_exceeded")
        max_tokens = req.max_tokens if req.max_tokens > 0 else max(1, min(256, self.max_len - len(ids)))
        if len(ids) + max_tokens > self.max_len:
            raise BadRequest(f"max_tokens {req.max_tokens} + the prompt's {len(ids)} tokens exceed this model's "
                             f"context of {self.max_len} tokens; lower max_tokens to at most "
                             f"{self.max_len - len(ids)}", param="max_tokens", code="context_length_exceeded")
        try:
            params = SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                                    ignore_eos=req.ignore_eos, seed=req.seed, stop=req.stop,
                                    logprobs=req.logprobs)
            handle = self.engine.submit(ids, params, priority=req.priority, ttft_slo_s=req.ttft_slo_s,
                                        tpot_slo_s=req.tpot_slo_s, request_id=req.request_id)
        except ValueError as exc:
            raise BadRequest(str(exc), param=param) from None
        except RuntimeError as exc:
            raise Unavailable(str(exc)) from None
        return LocalGeneration(handle)

    def gauges(self) -> tuple[int, int, float]:
        s = self.engine.stats()
        return (s.running, s.waiting, s.kv.fraction)

    def idle(self) -> bool:
        s = self.engine.stats()
        return s.running == 0 and s.waiting == 0

    def close(self) -> None:
        self.engine.shutdown()


class ExternalBackend(Backend):
    """Forwards to an OpenAI-compatible server that serves ``model`` (by that name)."""

    def __init__(self, model: str, version: str, base_url: str, upstream_model: str | None = None) -> None:
        self.model, self.version, self.base_url = model, version, base_url
        self.upstream_model = upstream_model or model
        self._server: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inflight = 0

    def _client(self) -> Any:
        from edge_agent.runtime.external import ExternalServer

        loop = asyncio.get_running_loop()
        if self._server is None or self._loop is not loop:
            self._server, self._loop = ExternalServer(self.base_url), loop
        return self._server

    async def start(self, req: GenRequest) -> Generation:
        if req.logprobs is not None:
            raise BadRequest("logprobs are not available in external runtime mode (the agent relays text only); "
                             "ask the model server directly, or run the model in the agent's local runtime",
                             param="logprobs")
        return ExternalGeneration(self._client(), self.upstream_model, req)

    async def aclose(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.aclose()

    def close(self) -> None:
        loop, server = self._loop, self._server
        self._server = None
        if server is not None and loop is not None and not loop.is_closed():
            try:
                if loop.is_running():
                    asyncio.run_coroutine_threadsafe(server.aclose(), loop)
            except RuntimeError:
                pass


# -- registry ----------------------------------------------------------------------------
BackendFactory = Callable[[str, str], Backend]


class ModelRegistry:
    """Backends by (model, version), filled by Placements; thread-safe.

    Lookups (front ends, any thread) read an immutable snapshot; applies
    (the hub link's loop) build a new snapshot and swap it in.
    """

    def __init__(self, factory: BackendFactory, node: str, country: str = "", drain_timeout_s: float = 60.0,
                 verify: Callable[[Assignment], object] | None = None) -> None:
        self.factory = factory
        self.verify = verify
        """Called before a model loads (local runtime: its weights digest); raising refuses the placement."""
        self.node = node
        self.country = country
        self.drain_timeout_s = drain_timeout_s
        self._lock = threading.Lock()
        self._placements: dict[str, PlacementSpec] = {}
        self._backends: dict[tuple[str, str], Backend] = {}
        self._drains: list[threading.Thread] = []
        self._closed = False

    # -- lookups -----------------------------------------------------------------------
    def backends(self) -> list[Backend]:
        return list(self._backends.values())

    def assignments(self) -> list[Assignment]:
        return [a for p in list(self._placements.values()) for a in p.assignments]

    def cost_model(self, key: tuple[str, str]) -> CostModel:
        for p in list(self._placements.values()):
            if any(a.key == key for a in p.assignments):
                return p.cost_model
        return CostModel.from_spec(None, self.country)

    def resolve(self, name: str) -> tuple[Backend, Assignment | None]:
        """The backend for OpenAI's ``model`` field: ``model``, ``model:version`` or a service name.

        A bare model name with several versions loaded picks the highest
        version (string order).
        """
        backends = self._backends
        if not name:
            raise BadRequest("model is required", param="model")
        assigns = self.assignments()
        for a in assigns:
            if a.service == name and a.key in backends:
                return backends[a.key], a
        model, _, version = name.partition(":")
        keys = [k for k in backends if k[0] == model and (not version or k[1] == version)]
        if not keys:
            served = sorted({f"{m}:{v}" for m, v in backends})
            raise ModelNotFound(f"the model {name!r} does not exist on this node; it serves: "
                                f"{', '.join(served) or 'nothing yet'} (GET /v1/models lists them)", param="model")
        key = max(keys, key=lambda k: k[1])
        return backends[key], next((a for a in assigns if a.key == key), None)

    # -- applier side ------------------------------------------------------------------------
    def apply(self, object_id: str, spec: PlacementSpec, cancel: CancelToken | None = None) -> None:
        """Make this placement's models served; raise (nothing changed) when one cannot load.

        New models load outside the registry's lock, so a slow (or hung) load never holds up
        another placement's apply or removal. ``cancel`` is checked between loads and claimed
        (:meth:`CancelToken.commit`) before the new set is swapped in: a load abandoned by the
        hub link (timed out, superseded by a newer version, deleted) is closed here and raises
        :class:`~edge_agent.cancel.Cancelled`, leaving what was served before."""
        if self._closed:
            raise RuntimeError("the serving layer is shut down")
        loaded: dict[tuple[str, str], Backend] = {}
        try:
            for a in spec.assignments:
                if a.key not in self._backends and a.key not in loaded:
                    if cancel is not None:
                        cancel.check()
                    if self.verify is not None:
                        self.verify(a)
                        if cancel is not None:
                            cancel.check()
                    loaded[a.key] = self.factory(*a.key)
                    log.info("loaded model %s version %s for placement %s", a.model, a.version, spec.name)
            with self._lock:
                if self._closed:
                    raise RuntimeError("the serving layer is shut down")
                if cancel is not None and not cancel.commit():
                    raise Cancelled(cancel.reason)
                extra = {k: b for k, b in loaded.items() if k not in self._backends}
                duplicate = [b for k, b in loaded.items() if k in self._backends]  # loaded meanwhile by another
                loaded = {}
                self._swap({**self._placements, object_id: spec}, {**self._backends, **extra})
            for b in duplicate:
                b.close()
        except BaseException:
            for b in loaded.values():
                b.close()
            if cancel is not None and cancel.cancelled:
                log.info("placement %s: load abandoned (%s); the models loaded for it are closed", spec.name,
                         cancel.reason)
            raise

    def remove(self, object_id: str) -> None:
        with self._lock:
            placements = {k: v for k, v in self._placements.items() if k != object_id}
            self._swap(placements, dict(self._backends))

    def _swap(self, placements: dict[str, PlacementSpec], backends: dict[tuple[str, str], Backend]) -> None:
        needed = {a.key for p in placements.values() for a in p.assignments}
        gone = [b for k, b in backends.items() if k not in needed]
        self._placements = placements
        self._backends = {k: b for k, b in backends.items() if k in needed}
        for b in gone:
            t = threading.Thread(target=self._drain, args=(b,), name=f"drain-{b.model}-{b.version}", daemon=True)
            self._drains = [d for d in self._drains if d.is_alive()] + [t]
            t.start()

    def _drain(self, b: Backend) -> None:
        """Let in-flight requests finish (up to the drain timeout), then unload."""
        deadline = time.monotonic() + self.drain_timeout_s
        while not b.idle() and time.monotonic() < deadline and not self._closed:
            time.sleep(0.05)
        b.close()
        log.info("unloaded model %s version %s", b.model, b.version)

    def close(self) -> None:
        """Unload everything now; wait for drains."""
        with self._lock:
            self._closed = True
            backends, self._backends = list(self._backends.values()), {}
            self._placements = {}
        for b in backends:
            b.close()
        for t in self._drains:
            t.join(30)
        self._drains = []


def local_factory(models_dir: Path, engine_config: Any = None) -> BackendFactory:
    """Engines from ``<models_dir>/<model>/<version>/``; a missing directory is a clear error."""

    from edge_agent.runtime import require_runtime

    require_runtime("the local runtime (--runtime-mode local)")

    def make(model: str, version: str) -> Backend:
        d = Path(models_dir) / model / version
        if not (d / "config.json").exists():
            raise FileNotFoundError(
                f"model {model} version {version}: no model at {d} (expected config.json and weights there); "
                f"copy or build it there, e.g. `fleet-agent make-model {d}`")
        return LocalBackend.load(model, version, d, engine_config)

    return make


def external_factory(base_url: str) -> BackendFactory:
    def make(model: str, version: str) -> Backend:
        return ExternalBackend(model, version, base_url)

    return make
