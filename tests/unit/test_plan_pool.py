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


def test_the_worker_exits_when_its_hub_is_killed(tmp_path):
    """A hub killed with SIGKILL runs no clean-up; its planning process must not outlive it (CI found
    a dozen orphaned 180 MB planners after the chaos tests had killed their hubs)."""
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import os, sys, time\n"
        "from hub import plan_pool\n"
        "def pid(): return os.getpid()\n"
        "if __name__ == '__main__':\n"
        "    import asyncio\n"
        "    print(asyncio.run(plan_pool.run(os.getpid)), flush=True)\n"
        "    time.sleep(600)\n"
    )
    path = tmp_path / "hub_stand_in.py"
    path.write_text(script)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plan_pool.__file__).rsplit("/hub/", 1)[0],
                                                       os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        worker = int(proc.stdout.readline())
        assert worker != proc.pid, "planned in the hub's own process, not a worker"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(worker):
            time.sleep(0.1)
        assert not _alive(worker), f"planning process {worker} outlived its killed hub"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False
