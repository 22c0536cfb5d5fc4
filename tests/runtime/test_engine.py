"""The continuous-batching engine: same tokens as alone, streaming, cancel, priority, preemption."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from edge_agent.runtime.engine import Engine, EngineConfig
from edge_agent.runtime.model import LlamaModel
from edge_agent.runtime.request import FinishReason, SamplingParams
from edge_agent.runtime.scheduler import SchedulerConfig

GREEDY = SamplingParams(max_tokens=24, ignore_eos=True)
PROMPTS = ["The agent serves the models placed on its node", "Hello", "a b c d e f g h i j k l m n o p",
           "Numbers 1 2 3", "def main(argv):"]


@pytest.fixture
def make_engine(tiny_dir: Path, tiny_model: LlamaModel):  # noqa: ANN201
    made: list[Engine] = []

    def factory(**cfg: object) -> Engine:
        sched = cfg.pop("scheduler", None)
        eng = Engine(tiny_dir, EngineConfig(max_len=256, scheduler=sched, **cfg), model=tiny_model)  # type: ignore[arg-type]
        made.append(eng)
        return eng

    yield factory
    for e in made:
        e.shutdown()


@pytest.fixture(scope="module")
def solo(tiny_model: LlamaModel, tiny_dir: Path) -> dict[str, list[int]]:
    """Greedy output of each prompt decoded alone, by the plain loop that
    test_model.py proves equal to transformers' generate."""
    from tokenizers import Tokenizer

    from tests.runtime.test_model import greedy

    tok = Tokenizer.from_file(str(tiny_dir / "tokenizer.json"))
    return {p: greedy(tiny_model, tok.encode(p).ids, GREEDY.max_tokens) for p in PROMPTS}


def test_engine_alone_matches_reference(make_engine, solo) -> None:  # noqa: ANN001
    eng = make_engine(max_batch=1).start()
    for p in PROMPTS[:2]:
        assert eng.submit(p, GREEDY).result(30).token_ids == solo[p]


def test_requests_joining_mid_batch_match_running_alone(make_engine, solo) -> None:  # noqa: ANN001
    eng = make_engine(max_batch=8)
    handles = [eng.submit(PROMPTS[0], GREEDY)]
    for p in PROMPTS[1:]:  # each later prompt joins after a few decode steps of the running batch
        for _ in range(3):
            eng.step()
        handles.append(eng.submit(p, GREEDY))
    while not all(h.done for h in handles):
        eng.step()
    firsts = [h.stats.first_token_ns for h in handles]
    assert firsts == sorted(firsts) and len(set(firsts)) == len(firsts)  # they really joined at different steps
    assert max(eng.step_times.snapshot()) >= 4  # and really shared decode steps
    for p, h in zip(PROMPTS, handles):
        assert h.result(0).token_ids == solo[p], p


def test_chunked_prefill_matches(make_engine, solo) -> None:  # noqa: ANN001
    eng = make_engine(max_batch=4, max_prefill_tokens=4).start()
    res = eng.generate(PROMPTS, GREEDY)
    assert [r.token_ids for r in res] == [solo[p] for p in PROMPTS]


def test_stats_are_measured(make_engine) -> None:  # noqa: ANN001
    eng = make_engine(max_batch=4).start()
    t0 = time.perf_counter_ns()
    res = eng.generate(PROMPTS[:3], SamplingParams(max_tokens=10, ignore_eos=True))
    wall = (time.perf_counter_ns() - t0) / 1e9
    for r in res:
        st = r.stats
        assert r.finish_reason is FinishReason.LENGTH and st.output_tokens == 10 == len(st.token_ns)
        assert st.prompt_tokens == len(eng.tokenizer.encode(PROMPTS[res.index(r)]).ids)
        assert st.arrival_ns <= st.admitted_ns <= st.first_token_ns <= st.token_ns[-1] <= st.finished_ns
        assert 0 <= st.queue_time_s <= st.ttft_s <= st.e2e_s <= wall
        assert len(st.itl_s) == 9 and all(x >= 0 for x in st.itl_s)
        assert st.tpot_s == pytest.approx(sum(st.itl_s) / 9)
        assert 0 < st.gpu_seconds < st.e2e_s
    # The attributed device time adds up to no more than the wall time the engine ran.
    assert sum(r.stats.gpu_seconds for r in res) <= wall
    assert eng.stats().generation_tokens_total == 30


async def test_async_streaming_yields_tokens_as_produced(make_engine, solo) -> None:  # noqa: ANN001
    eng = make_engine(max_batch=4).start()
    h = eng.submit(PROMPTS[0], GREEDY)
    seen = []
    async for ev in h:
        seen.append(ev)
        if len(seen) == 1:
            assert not h.done  # the first token arrives before the request ends
    assert [e.index for e in seen] == list(range(24))
    assert [e.token_id for e in seen] == solo[PROMPTS[0]]
    assert "".join(e.text for e in seen) == eng.tokenizer.decode(solo[PROMPTS[0]])
    assert (await h.wait()).finish_reason is FinishReason.LENGTH
    # Several concurrent async consumers.
    outs = await asyncio.gather(*(eng.submit(p, GREEDY).wait() for p in PROMPTS))
    assert [o.token_ids for o in outs] == [solo[p] for p in PROMPTS]


def test_sync_streaming(make_engine, solo) -> None:  # noqa: ANN001
    eng = make_engine(max_batch=2).start()
    assert [e.token_id for e in eng.submit(PROMPTS[1], GREEDY)] == solo[PROMPTS[1]]


def test_cancel_storm_returns_kv_to_baseline(make_engine, solo) -> None:  # noqa: ANN001
    eng = make_engine(max_batch=8).start()
    baseline = eng.kv_usage()
    survivor = eng.submit(PROMPTS[0], SamplingParams(max_tokens=24, ignore_eos=True))
    handles = []
    for i in range(60):
        h = eng.submit(PROMPTS[i % len(PROMPTS)], SamplingParams(max_tokens=200, ignore_eos=True))
        handles.append(h)
        if i % 3 == 0:
            h.cancel()  # some before they start
    # let the rest start streaming, then cancel them mid-stream
    deadline = time.monotonic() + 20
    while eng.kv_usage().slots_used < 8 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert eng.kv_usage().slots_used == 8
    for h in handles:
        h.cancel()
    for h in handles:
        assert h.result(20).finish_reason is FinishReason.ABORT
    assert survivor.result(30).token_ids == solo[PROMPTS[0]]  # unaffected by the storm
    assert not survivor.cancel() and not eng.cancel("no-such-request")
    deadline = time.monotonic() + 5
    while eng.kv_usage() != baseline and time.monotonic() < deadline:
        time.sleep(0.005)
    assert eng.kv_usage() == baseline
    assert eng.stats().running == 0 and eng.stats().waiting == 0


def test_priority_then_deadline_order(make_engine) -> None:  # noqa: ANN001
    eng = make_engine(max_batch=1, scheduler=SchedulerConfig(preemption=False))
    p = SamplingParams(max_tokens=2, ignore_eos=True)
    hs = {
        "low": eng.submit("x", p, priority=0),
        "high-late": eng.submit("x", p, priority=5, ttft_slo_s=100),
        "high-soon": eng.submit("x", p, priority=5, ttft_slo_s=10),
        "mid": eng.submit("x", p, priority=2),
    }
    while not all(h.done for h in hs.values()):
        eng.step()
    order = sorted(hs, key=lambda k: hs[k].stats.first_token_ns)
    assert order == ["high-soon", "high-late", "mid", "low"]


def test_preemption_and_resume_give_identical_greedy_output(make_engine, solo) -> None:  # noqa: ANN001
    eng = make_engine(max_batch=1)
    low = eng.submit(PROMPTS[0], GREEDY, priority=0)
    for _ in range(8):
        eng.step()
    assert low.stats.output_tokens >= 5
    high = eng.submit(PROMPTS[2], GREEDY, priority=10, ttft_slo_s=0.001)
    eng.step()
    assert low.stats.preemptions == 1 and eng.kv_usage().slots_used == 1
    while not (low.done and high.done):
        eng.step()
    assert high.stats.finished_ns < low.stats.finished_ns
    assert high.result(0).token_ids == solo[PROMPTS[2]]
    assert low.result(0).token_ids == solo[PROMPTS[0]]
    gaps = low.stats.itl_s
    assert max(gaps) > 10 * sorted(gaps)[len(gaps) // 2]  # the pause while "high" ran is visible


def test_sheddable_rejected_with_retry_after(make_engine) -> None:  # noqa: ANN001
    eng = make_engine(max_batch=1, scheduler=SchedulerConfig(shed_queue_depth=2))
    p = SamplingParams(max_tokens=4, ignore_eos=True)
    normal = [eng.submit("x", p, priority=0) for _ in range(3)]
    shed = eng.submit("x", p, priority=-1)
    eng.step()
    res = shed.result(0)
    assert res.finish_reason is FinishReason.REJECTED and res.token_ids == []
    assert res.rejection is not None and "saturated" in res.rejection.reason and res.rejection.retry_after_s >= 1
    while not all(h.done for h in normal):
        eng.step()
    assert all(h.finish_reason is FinishReason.LENGTH for h in normal)


def test_sampling_seeded_and_top_p(make_engine, solo) -> None:  # noqa: ANN001
    eng = make_engine(max_batch=4).start()
    hot = SamplingParams(max_tokens=24, temperature=1.5, seed=7, ignore_eos=True)
    a, b = eng.generate([PROMPTS[0], PROMPTS[0]], hot)
    assert a.token_ids == b.token_ids != solo[PROMPTS[0]]
    narrow = SamplingParams(max_tokens=24, temperature=1.0, top_p=1e-6, seed=1, ignore_eos=True)
    assert eng.submit(PROMPTS[0], narrow).result(30).token_ids == solo[PROMPTS[0]]


def test_stop_tokens_and_eos(make_engine, solo) -> None:  # noqa: ANN001
    eng = make_engine(max_batch=2).start()
    target = solo[PROMPTS[0]][5]
    r = eng.submit(PROMPTS[0], SamplingParams(max_tokens=24, stop_token_ids=(target,))).result(30)
    assert r.finish_reason is FinishReason.STOP and r.token_ids[-1] == target
    assert r.token_ids == solo[PROMPTS[0]][: solo[PROMPTS[0]].index(target) + 1]
    eng.eos_token_ids = frozenset({target})
    assert eng.submit(PROMPTS[0], SamplingParams(max_tokens=24)).result(30).finish_reason is FinishReason.STOP


def test_bad_input(make_engine) -> None:  # noqa: ANN001
    eng = make_engine(max_batch=1)
    with pytest.raises(ValueError, match="empty"):
        eng.submit([])
    with pytest.raises(ValueError, match="at most"):
        eng.submit(list(range(300)))
    with pytest.raises(ValueError, match="vocabulary"):
        eng.submit([10**7])
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    with pytest.raises(ValueError, match="at most 7"):
        eng.submit(list(range(1, 250)), SamplingParams(max_tokens=50))
    # A request filling the context exactly ends with "length" and frees its slot.
    r = eng.submit(list(range(1, 250)), SamplingParams(max_tokens=7, ignore_eos=True), request_id="full")
    with pytest.raises(ValueError, match="in flight"):
        eng.submit("x", request_id="full")
    while not r.done:
        eng.step()
    assert r.finish_reason is FinishReason.LENGTH and r.stats.output_tokens == 7
    assert eng.kv_usage().slots_used == 0
    eng.submit("x", SamplingParams(max_tokens=1), request_id="full").cancel()  # the id is free again
    eng.step()


def test_bucketed_static_decode_matches(make_engine, solo) -> None:  # noqa: ANN001
    """The padded, fixed-length decode path used for CUDA graphs gives the same tokens."""
    eng = make_engine(max_batch=8, decode_mode="bucketed").start()
    assert eng.decoder.buckets == [1, 2, 4, 8]
    res = eng.generate(PROMPTS, GREEDY)  # 5 rows run in the 8-row bucket
    assert [r.token_ids for r in res] == [solo[p] for p in PROMPTS]
    with pytest.raises(ValueError, match="CUDA"):
        make_engine(max_batch=2, decode_mode="graphs")


def test_every_request_carries_the_mean_logprob_of_its_tokens(make_engine) -> None:  # noqa: ANN001
    """The drift signal: filled whether or not the request asked for logprobs, and equal to the mean of
    the per-token log-probabilities a request that asks for them receives."""
    eng = make_engine(max_batch=4)
    plain = eng.submit(PROMPTS[0], GREEDY)
    asked = eng.submit(PROMPTS[0], SamplingParams(max_tokens=24, ignore_eos=True, logprobs=0))
    eng.start()
    a, b = plain.result(30), asked.result(30)
    per_token = [e.logprobs.chosen.logprob for e in asked if e.logprobs is not None]
    assert len(per_token) == 24 and a.stats.logprob_tokens == b.stats.logprob_tokens == 24
    assert b.stats.mean_logprob == pytest.approx(sum(per_token) / 24, abs=1e-5)
    assert a.stats.mean_logprob == pytest.approx(b.stats.mean_logprob, abs=1e-5)
    assert a.stats.mean_logprob < 0
