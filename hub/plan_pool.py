"""Placement planning in a worker process, off the hub's event loop and its GIL.

Why not a thread: the solvers are CPU-bound Python. In a thread of the hub process they hold the GIL
for seconds, and the hub's event loop, which at that moment fans the apply's policy revision out to
every connected agent (`hub.revisions` publishes policies before it plans), gets the GIL back only
between switch intervals: with the greedy solver running, an I/O-bound asyncio loop ran about half as
fast (measured on the 2-core development machine). A separate process has its own GIL.

It runs at the hub's own CPU priority. (A ``nice`` planner was tried: on a busy machine it starved,
and `fleet plan` of a large bundle ran past the CLI's deadline.)

One worker, started when the admin API starts (`warm`) or on first use, with the ``spawn`` method (no fork of a process that runs gRPC
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
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

log = logging.getLogger(__name__)

PARENT_POLL_S = 1.0
_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None


def _executor() -> ProcessPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_follow_parent, initargs=(os.getpid(),))
        return _pool


def _follow_parent(parent: int) -> None:
    """In the worker: exit when the hub that started it is gone. A hub killed with SIGKILL (the chaos
    tests do it; so does the kernel's OOM killer) runs no clean-up, and its idle worker would otherwise
    wait for work forever, holding ~180 MB."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="follow-hub", daemon=True).start()


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


def warm(fn: Callable[[], Any]) -> None:
    """Start the planning process now and have it run ``fn`` (a module-level no-op whose module the
    planner needs), so that the first apply does not wait for a Python start and its imports (seconds
    on a busy machine). Returns at once; a failure here only means the first `run` starts it."""
    try:
        _executor().submit(fn)
    except (OSError, RuntimeError, BrokenProcessPool) as exc:
        log.warning("cannot start the planning process yet (%s); the first apply will", exc)


def shutdown() -> None:
    """Stop the planning process now (tests, and a hub that stops for good); the next `run` starts one."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
