"""hub.plan_pool: planning runs in a separate process; if that process dies, the
call is planned in a thread instead (an apply never fails for it) and the next call gets a new one."""

from __future__ import annotations

import logging
import os

import pytest

from hub import plan_pool


def where(parent: int) -> str:
    return "thread" if os.getpid() == parent else "worker"


def die_in_worker(parent: int) -> str:
    if os.getpid() != parent:
        os._exit(3)
    return "thread"


def fail_in_worker(parent: int) -> str:
    if os.getpid() != parent:
        raise ValueError("the planner itself failed")
    return "thread"


@pytest.fixture(autouse=True)
def fresh_pool():
    plan_pool.shutdown()
    yield
    plan_pool.shutdown()


async def test_runs_in_a_worker_process_that_later_calls_reuse():
    assert await plan_pool.run(where, os.getpid()) == "worker"
    first = await plan_pool.run(os.getpid)
    assert await plan_pool.run(os.getpid) == first != os.getpid()


async def test_a_dead_worker_falls_back_to_a_thread_and_the_next_call_gets_a_new_worker(caplog):
    caplog.set_level(logging.WARNING, logger="hub.plan_pool")
    assert await plan_pool.run(die_in_worker, os.getpid()) == "thread"
    assert "the planning process died" in caplog.text
    assert await plan_pool.run(where, os.getpid()) == "worker"


async def test_an_error_of_the_planner_itself_is_raised_not_retried_in_a_thread():
    with pytest.raises(ValueError, match="the planner itself failed"):
        await plan_pool.run(fail_in_worker, os.getpid())
