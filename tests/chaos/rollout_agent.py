"""A real agent (Agent + HubLink + LocalState, record-only appliers) for the rollout chaos test.

    python tests/chaos/rollout_agent.py HUB SITE NODE DATA_DIR

It acknowledges the Placements the rollout publishes and, every 0.3 s, queues
a ``telemetry`` report for the version of ``chat`` it holds (20 requests at
fixed latencies, standing in for the serving layer), until DATA_DIR/stop
exists; then it keeps running so that its outbox drains.
"""

from __future__ import annotations

import asyncio
import base64
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ddsketch import DDSketch
from ddsketch.pb.proto import DDSketchProto

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig


def b64(value: float, n: int) -> str:
    sk = DDSketch(relative_accuracy=0.01)
    for i in range(n):
        sk.add(value * (1 + i / 100))
    return base64.b64encode(DDSketchProto.to_proto(sk).SerializeToString()).decode()


def payload(node: str, version: str, n: int = 20) -> dict:
    end = datetime.now(UTC)
    return {"schema": 1, "site": "", "node": node, "windowStart": (end - timedelta(seconds=0.3)).isoformat(),
            "windowEnd": end.isoformat(), "groups": [{
                "model": "assistant", "version": version, "priority": "interactive", "requests": n, "errors": 0,
                "rejected": 0, "cancelled": 0, "forbidden": 0, "promptTokens": 100 * n, "outputTokens": 50 * n,
                "gpuSeconds": 0.1 * n, "costUsd": 0.0, "energyJ": 1.0 * n, "carbonG": 0.001 * n,
                "sketches": {"ttftS": b64(0.15, n), "itlS": b64(0.02, n), "tpotS": b64(0.02, n),
                             "e2eS": b64(1.0, n)}}]}


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
