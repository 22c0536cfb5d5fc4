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
import importlib.util
from typing import Any

INSTALL_HINT = "pip install 'edge-fleet[runtime]'"
RUNTIME_PACKAGES = ("torch", "tokenizers", "safetensors")
"""What the in-process engine imports; the hub, the CLI and external-runtime agents need none of it."""


class RuntimeMissing(ImportError):
    """The in-process inference runtime was asked for but its packages are not installed."""


def require_runtime(what: str = "the in-process inference runtime") -> None:
    """Raise :class:`RuntimeMissing` naming the extra to install when torch & co. are absent.

    Checks without importing (``find_spec``), so callers that only ask pay nothing.
    """
    missing = [p for p in RUNTIME_PACKAGES if _absent(p)]
    if missing:
        raise RuntimeMissing(
            f"{what} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: "
            f"run `{INSTALL_HINT}` (or use --runtime-mode external with --external-url, which needs neither)")


def _absent(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):  # a module set to None in sys.modules, or a broken one
        return True

_EXPORTS = {
    "Engine": "engine", "EngineConfig": "engine", "EngineStats": "engine",
    "KVCache": "kv_cache", "KVUsage": "kv_cache", "PagedKVCache": "kv_cache",
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
