"""Request-facing types: sampling parameters, per-request stats, stream handles.

A :class:`RequestHandle` is what :meth:`Engine.submit` returns. The engine
thread pushes :class:`TokenEvent` objects into it; callers read them with a
plain ``for`` loop (blocking), ``async for`` (asyncio, woken thread-safely),
or wait for the whole :class:`Completion`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop."""

    max_tokens: int = 16
    """Maximum number of generated tokens."""
    temperature: float = 0.0
    """0 means greedy (argmax); otherwise logits are divided by it before sampling."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    ignore_eos: bool = False
    """Keep generating past EOS (benchmarks use this for fixed-length outputs)."""
    stop_token_ids: tuple[int, ...] = ()
    """Extra token ids that end the request (finish reason ``stop``)."""
    seed: int | None = None
    """Per-request RNG seed for reproducible sampling."""
    stop: tuple[str, ...] = ()
    """Stop strings: output ends (finish reason ``stop``) just before the first of them, which is
    not emitted; text that may begin one is held back until it is decided (:class:`StopMatcher`)."""
    logprobs: int | None = None
    """None (default): no log-probabilities. Else each token carries its log-probability and
    this many top alternatives (0..20), from the model's distribution before temperature and top-p."""

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not isinstance(x, str) or not x for x in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise ValueError(f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}")


MAX_LOGPROBS = 20
"""Most alternatives per token a request may ask for (OpenAI's ``top_logprobs`` bound)."""


class StopMatcher:
    """Finds stop strings in streamed text; pure, one per request.

    :meth:`feed` returns the text that is safe to emit now: everything before a
    stop string, less the longest tail that is still the beginning of some stop
    string (held back until the next piece decides it). :meth:`flush` releases
    what is held when the output ends for another reason.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        buf = self.held + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held, self.stopped = "", True
            return buf[: min(hits)]
        keep = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), keep, -1):
                if buf.endswith(s[:k]):
                    keep = k
                    break
        self.held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out


class FinishReason(str, enum.Enum):
    """Why a request ended (OpenAI's ``stop``/``length`` plus ours)."""

    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"
    REJECTED = "rejected"
    ERROR = "error"


@dataclass(frozen=True)
class Rejection:
    """Why a request was refused admission; the HTTP layer maps it to 503 + Retry-After."""

    reason: str
    retry_after_s: float


@dataclass(frozen=True)
class Logprob:
    """One token's log-probability under the model."""

    token_id: int
    text: str
    """The token decoded on its own (may hold U+FFFD for part of a multi-byte character)."""
    logprob: float


@dataclass(frozen=True)
class TokenLogprobs:
    """The sampled token's log-probability and the top alternatives (most likely first)."""

    chosen: Logprob
    top: tuple[Logprob, ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    """One generated token as streamed to the caller."""

    index: int
    """0-based position in the output."""
    token_id: int
    text: str
    """Newly decodable text (may be empty while a multi-byte character is incomplete)."""
    time_ns: int
    """``time.perf_counter_ns()`` when the token was produced."""
    logprobs: TokenLogprobs | None = None
    """Only when the request asked for them (``SamplingParams.logprobs``)."""


@dataclass
class RequestStats:
    """Per-request timing and cost facts, all from ``time.perf_counter_ns``.

    Raw timestamps are stored; the latency figures are derived properties
    (names follow vLLM's metrics where the meaning is the same).
    """

    request_id: str
    priority: int
    arrival_ns: int
    prompt_tokens: int
    admitted_ns: int | None = None
    """First admission into the running batch."""
    first_token_ns: int | None = None
    token_ns: list[int] = field(default_factory=list)
    """Production time of every output token."""
    finished_ns: int | None = None
    output_tokens: int = 0
    gpu_seconds: float = 0.0
    """Device-seconds attributed to this request: the sum over the batch steps it
    took part in of step time / rows in that step (CPU-seconds on a CPU)."""
    preemptions: int = 0
    finish_reason: FinishReason | None = None
    logprob_sum: float = 0.0
    """Sum of the generated tokens' log-probabilities under the model (drift signal; the engine
    always fills it, an external runtime only when its server sends logprobs)."""
    logprob_tokens: int = 0
    """How many tokens ``logprob_sum`` covers (0: unknown)."""

    @property
    def mean_logprob(self) -> float | None:
        """Mean log-probability of the generated tokens; None when not known."""
        return self.logprob_sum / self.logprob_tokens if self.logprob_tokens else None

    @property
    def queue_time_s(self) -> float | None:
        """Arrival to first admission (``request_queue_time_seconds``)."""
        return None if self.admitted_ns is None else (self.admitted_ns - self.arrival_ns) / 1e9

    @property
    def ttft_s(self) -> float | None:
        """Arrival to first token, queueing and prefill included."""
        return None if self.first_token_ns is None else (self.first_token_ns - self.arrival_ns) / 1e9

    @property
    def itl_s(self) -> list[float]:
        """Gaps between consecutive tokens (``inter_token_latency_seconds``)."""
        return [(b - a) / 1e9 for a, b in zip(self.token_ns, self.token_ns[1:])]

    @property
    def e2e_s(self) -> float | None:
        """Arrival to finish (``e2e_request_latency_seconds``)."""
        return None if self.finished_ns is None else (self.finished_ns - self.arrival_ns) / 1e9

    @property
    def tpot_s(self) -> float | None:
        """(e2e - TTFT) / (N - 1), None with fewer than two tokens."""
        if self.output_tokens < 2 or self.first_token_ns is None or not self.token_ns:
            return None
        return (self.token_ns[-1] - self.first_token_ns) / 1e9 / (self.output_tokens - 1)


@dataclass(frozen=True)
class Completion:
    """The finished result of a request."""

    request_id: str
    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    stats: RequestStats
    rejection: Rejection | None = None


_deferred = threading.local()


def _set_all(events: list[asyncio.Event]) -> None:
    for ev in events:
        ev.set()


@contextlib.contextmanager
def coalesced_wakes() -> Iterator[None]:
    """Within this block, waking asyncio readers of handles is deferred and done
    with one ``call_soon_threadsafe`` per event loop when it ends.

    The engine wraps each step in it: 32 streams on one HTTP loop then cost one
    cross-thread wake per step instead of 32 (each a self-pipe write and a loop
    iteration, under the GIL the engine thread needs).
    """
    if getattr(_deferred, "wakes", None) is not None:  # nested: the outer block flushes
        yield
        return
    _deferred.wakes = {}
    try:
        yield
    finally:
        wakes, _deferred.wakes = _deferred.wakes, None
        for loop, events in wakes.items():
            if not loop.is_closed():
                loop.call_soon_threadsafe(_set_all, events)


class RequestHandle:
    """A caller's view of one submitted request: stream it, wait for it, cancel it.

    Thread-safe: the engine thread writes, any thread or event loop reads.
    """

    def __init__(self, request_id: str, stats: RequestStats, cancel: Callable[[str], bool]) -> None:
        self.request_id = request_id
        self.stats = stats
        self.rejection: Rejection | None = None
        self._cancel = cancel
        self._cond = threading.Condition()
        self._events: list[TokenEvent] = []
        self._finish: FinishReason | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    # -- engine side -------------------------------------------------------
    def _push(self, event: TokenEvent) -> None:
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()
            waiters = list(self._waiters)
        self._wake(waiters)

    def _finished(self, reason: FinishReason, rejection: Rejection | None = None) -> None:
        with self._cond:
            if self._finish is not None:
                return
            self.rejection = rejection
            self._finish = reason
            self.stats.finish_reason = reason
            self._cond.notify_all()
            waiters = list(self._waiters)
        self._wake(waiters)

    @staticmethod
    def _wake(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]) -> None:
        batch = getattr(_deferred, "wakes", None)
        if batch is not None:  # inside `coalesced_wakes()`: one wake per loop at the end
            for loop, ev in waiters:
                batch.setdefault(loop, []).append(ev)
            return
        for loop, ev in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(ev.set)

    # -- caller side -------------------------------------------------------
    @property
    def done(self) -> bool:
        with self._cond:
            return self._finish is not None

    @property
    def finish_reason(self) -> FinishReason | None:
        with self._cond:
            return self._finish

    def cancel(self) -> bool:
        """Abort the request; its KV slot is freed at the engine's next step.

        Returns False when it had already finished.
        """
        if self.done:
            return False
        return self._cancel(self.request_id)

    def __iter__(self) -> Iterator[TokenEvent]:
        """Blocking iteration over tokens as they are produced."""
        i = 0
        while True:
            with self._cond:
                while i >= len(self._events) and self._finish is None:
                    self._cond.wait()
                batch = self._events[i:]
                finished = self._finish is not None
            yield from batch
            i += len(batch)
            if finished and not batch:
                return

    async def __aiter__(self) -> AsyncIterator[TokenEvent]:
        """Asyncio iteration; the engine thread wakes this loop thread-safely."""
        loop = asyncio.get_running_loop()
        ev = asyncio.Event()
        with self._cond:
            self._waiters.append((loop, ev))
        try:
            i = 0
            while True:
                with self._cond:
                    batch = self._events[i:]
                    finished = self._finish is not None
                    if not batch and not finished:
                        ev.clear()
                if batch:
                    for e in batch:
                        yield e
                    i += len(batch)
                    continue
                if finished:
                    return
                await ev.wait()
        finally:
            with self._cond:
                self._waiters.remove((loop, ev))

    def result(self, timeout: float | None = None) -> Completion:
        """Block until the request ends and return it."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._finish is not None, timeout):
                raise TimeoutError(f"request {self.request_id} not finished after {timeout} s")
        return self._completion()

    async def wait(self) -> Completion:
        """Await the end of the request."""
        async for _ in self:
            pass
        return self._completion()

    def _completion(self) -> Completion:
        with self._cond:
            events = list(self._events)
            assert self._finish is not None
            return Completion(
                request_id=self.request_id,
                token_ids=[e.token_id for e in events],
                text="".join(e.text for e in events),
                finish_reason=self._finish,
                stats=self.stats,
                rejection=self.rejection,
            )
