"""A real agent (Agent + HubLink + LocalState) that also queues numbered
"test" and "audit" reports, for the chaos test. Run as a subprocess:

    python tests/chaos/report_agent.py HUB SITE DATA_DIR TARGET LEDGER

It appends reports until LEDGER holds TARGET of them in total, then keeps
running so the link can drain the outbox. LEDGER is a file outside DATA_DIR
(the test may wipe the data dir between kills, as a lost disk would): once
the outbox has committed a report, one line {"inc", "seq", "digest"} is
appended to it, so the test knows every report the agent produced, with
its report stream (incarnation), seq and content digest (`digest`), and can
compare them with what the hub stored. A kill between the commit and that
line leaves at most one report per kill that the hub may hold and the
ledger lacks; the test counts those.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import sys
from pathlib import Path

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig


def digest(kind: str, payload: dict) -> str:
    """The content of one report, as the agent queued it or as the hub stored it (strings only:
    protobuf's Struct would turn numbers into floats on the way)."""
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{kind}\0{body}".encode()).hexdigest()


def ledger_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


async def main(hub: str, site: str, data_dir: Path, target: int, ledger: Path) -> None:
    cfg = AgentConfig(hub=hub, site=site, node="n1", data_dir=data_dir, insecure=True,
                      backoff_initial_s=0.05, backoff_max_s=0.5, report_batch=50)
    agent = Agent(cfg, probe_gpus=False)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    produced = len(ledger_lines(ledger))
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        while produced < target:
            produced += 1
            kind = "audit" if produced % 7 == 0 else "test"  # audit records (residency refusals) too
            payload = {"site": site, "n": str(produced), "nonce": secrets.token_hex(8)}
            seq = agent.link.report(kind, payload)  # returns once the outbox committed it
            line = json.dumps({"inc": agent.state.incarnation, "seq": seq, "digest": digest(kind, payload)})
            os.write(fd, (line + "\n").encode())  # one write: a kill leaves a whole line or none
            await asyncio.sleep(0.004)
    finally:
        os.close(fd)
    await task


if __name__ == "__main__":
    hub, site, data_dir, target, ledger = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
    asyncio.run(main(hub, site, data_dir, target, ledger))
