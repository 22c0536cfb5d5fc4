"""Edge inference runtime: model making and loading, continuous batching, priority scheduling.

Public API::

    from edge_agent.runtime import Engine, EngineConfig, SamplingParams
    eng = Engine("/models/tiny", EngineConfig(max_batch=32)).start()
    h = eng.submit("Hello", SamplingParams(max_tokens=32), priority=10, ttft_slo_s=0.5)
    for ev in h: ...            # or: async for ev in h
    h.result().stats.ttft_s
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Engine": "engine", "EngineConfig": "engine", "EngineStats": "engine",
    "KVCache": "kv_cache", "KVUsage": "kv_cache",
    "Completion": "request", "FinishReason": "request", "Rejection": "request", "RequestHandle": "request",
    "RequestStats": "request", "SamplingParams": "request", "TokenEvent": "request",
    "SchedulerConfig": "scheduler",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import lazily, so ``edge_agent.runtime.make_model`` users do not pay for torch at import."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
