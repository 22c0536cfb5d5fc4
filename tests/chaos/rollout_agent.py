"""A real agent (Agent + HubLink + LocalState, record-only appliers) for the rollout chaos test.

    python tests/chaos/rollout_agent.py HUB SITE NODE DATA_DIR

It acknowledges the Placements the rollout publishes and, every 0.3 s, queues
a ``telemetry`` report for the version of ``chat`` it holds (20 requests at
fixed latencies, standing in for the serving layer), until DATA_DIR/stop
exists; then it keeps running so that its outbox drains.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from tests.harness.telemetry import Requests, telemetry_payload


def payload(node: str, version: str, n: int = 20) -> dict:
    """A telemetry window of ``n`` requests, made by the agent's own telemetry code (tests/harness)."""
    end = datetime.now(UTC)
    ttfts = [0.15 * (1 + i / 100) for i in range(n)]
    return telemetry_payload("", node, [Requests("assistant", version, ttfts, itl=0.02, output_tokens=50,
                                                 prompt_tokens=100)], end - timedelta(seconds=0.3), end)


def held_version(agent: Agent) -> str | None:
    for o in agent.state.objects("Placement"):
        for a in o.spec.get("assignments", ()):
            if a.get("service") == "chat":
                return a["version"]
    return None


def dump_tasks() -> None:
    for t in asyncio.all_tasks():
        print(f"--- {t.get_name()}: {t!r}", file=sys.stderr)
        try:
            t.print_stack(file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - a compiled coroutine (gRPC's) may have no Python frames
            print(f"    (no stack: {exc!r})", file=sys.stderr)
    sys.stderr.flush()


async def main(hub: str, site: str, node: str, data_dir: Path) -> None:
    cfg = AgentConfig(hub=hub, site=site, node=node, data_dir=data_dir, insecure=True, backoff_initial_s=0.05,
                      backoff_max_s=0.5)
    agent = Agent(cfg, probe_gpus=False)
    # SIGUSR1 prints every task's stack to the log: the test asks for it when an agent looks stuck.
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump_tasks)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    while not (data_dir / "stop").exists():
        version = held_version(agent)
        if version is not None:
            agent.link.report("telemetry", payload(node, version))
        await asyncio.sleep(0.3)
    await task


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])))
