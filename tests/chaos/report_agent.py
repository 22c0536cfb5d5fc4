"""A real agent (Agent + HubLink + LocalState) that also queues numbered
"test" reports, for the chaos test. Run as a subprocess:

    python tests/chaos/report_agent.py HUB SITE DATA_DIR TARGET

It appends reports until its outbox has handed out TARGET sequence numbers
in total (across restarts: the counter lives in the agent's own SQLite), then
keeps running so the link can drain the outbox.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig


async def main(hub: str, site: str, data_dir: Path, target: int) -> None:
    cfg = AgentConfig(hub=hub, site=site, node="n1", data_dir=data_dir, insecure=True,
                      backoff_initial_s=0.05, backoff_max_s=0.5, report_batch=50)
    agent = Agent(cfg, probe_gpus=False)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    # The outbox's own sequence counter survives SIGKILL, so a restarted
    # agent resumes exactly where its last committed report left off.
    while agent.state.last_seq() < target:
        agent.link.report("test", {"site": site, "at": agent.state.last_seq() + 1})
        await asyncio.sleep(0.004)
    await task


if __name__ == "__main__":
    hub, site, data_dir, target = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    asyncio.run(main(hub, site, data_dir, target))
