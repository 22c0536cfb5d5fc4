"""Edge inference runtime: model making and loading, continuous batching, priority scheduling.

Public API::

    from edge_agent.runtime import Engine, EngineConfig, SamplingParams
    eng = Engine("/models/tiny", EngineConfig(max_batch=32)).start()
    h = eng.submit("Hello", SamplingParams(max_tokens=32), priority=10, ttft_slo_s=0.5)
    for ev in h: ...            # or: async for ev in h
    h.result().stats.ttft_s
"""

from edge_agent.runtime.engine import Engine, EngineConfig, EngineStats
from edge_agent.runtime.kv_cache import KVCache, KVUsage
from edge_agent.runtime.request import (
    Completion,
    FinishReason,
    Rejection,
    RequestHandle,
    RequestStats,
    SamplingParams,
    TokenEvent,
)
from edge_agent.runtime.scheduler import SchedulerConfig

__all__ = [
    "Completion", "Engine", "EngineConfig", "EngineStats", "FinishReason", "KVCache", "KVUsage",
    "Rejection", "RequestHandle", "RequestStats", "SamplingParams", "SchedulerConfig", "TokenEvent",
]
