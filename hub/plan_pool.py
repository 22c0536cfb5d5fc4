"""Placement planning in a worker process, at a lower CPU priority than the hub.

Why not a thread: the solvers are CPU-bound Python. In a thread of the hub process they hold the GIL
for seconds, and the hub's event loop, which at that moment fans the apply's policy revision out to
every connected agent (`hub.revisions` publishes policies before it plans), gets the GIL back only
between switch intervals: with the greedy solver running, an I/O-bound asyncio loop ran about half as
fast (measured on the 2-core development machine). A separate process has its own GIL, and its
``nice`` value lets the agents' link win the CPU when both want it.

One worker, started on first use with the ``spawn`` method (no fork of a process that runs gRPC
threads), kept for later applies and shut down at interpreter exit (concurrent.futures joins it).
When the worker cannot be used (it died, or the platform refuses processes) planning falls back to a
thread, as before, with a warning: slower agents' updates, never a failed apply.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

log = logging.getLogger(__name__)

NICE = 10
"""How much lower the planner's CPU priority is than the hub's (`os.nice` increment)."""

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None


def _lower_priority() -> None:
    try:
        os.nice(NICE)
    except (AttributeError, OSError):  # not on this platform, or not permitted: plan at normal priority
        pass


def _executor() -> ProcessPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_lower_priority)
        return _pool


def _discard(pool: ProcessPoolExecutor) -> None:
    global _pool
    with _lock:
        if _pool is pool:
            _pool = None
    pool.shutdown(wait=False, cancel_futures=True)


async def run(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in the planning process (``fn`` and ``args`` must pickle); in a thread if that fails."""
    pool = _executor()
    try:
        future = pool.submit(fn, *args)
    except (OSError, RuntimeError, BrokenProcessPool) as exc:  # cannot start a process here, or shut down
        _discard(pool)
        log.warning("cannot plan in a worker process (%s); planning in a thread instead", exc)
        return await asyncio.to_thread(fn, *args)
    try:
        return await asyncio.wrap_future(future)
    except BrokenProcessPool as exc:  # the worker died (killed, out of memory): fn itself did not fail
        _discard(pool)
        log.warning("the planning process died (%s); planning in a thread instead", exc)
    return await asyncio.to_thread(fn, *args)


def shutdown() -> None:
    """Stop the planning process now (tests, and a hub that stops for good); the next `run` starts one."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
