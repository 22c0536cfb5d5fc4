"""Chaos: SIGKILL the hub and agents at random moments while reports flow;
every report must be counted exactly once.

Real processes throughout: `fleet hub serve` on the store under test, and
agents that are the real Agent/HubLink/LocalState (tests/chaos/report_agent.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hub.store import Database, Store

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

AGENTS = 4
TARGET = 600          # reports per agent
CHAOS_SECONDS = 20.0
SEED = int(os.environ.get("FLEET_CHAOS_SEED", "20261127"))
HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Fleet:
    def __init__(self, tmp: Path, db_url: str) -> None:
        self.tmp = tmp
        self.db_url = db_url
        self.port = free_port()
        self.admin_port = free_port()
        self.hub: subprocess.Popen | None = None
        self.agents: dict[str, subprocess.Popen] = {}
        self.logs: list = []

    def _log(self, name: str):
        f = open(self.tmp / f"{name}.log", "a")  # noqa: SIM115 - closed in stop_all
        self.logs.append(f)
        return f

    def start_hub(self) -> None:
        self.hub = subprocess.Popen(
            [sys.executable, "-m", "hub.cli.main", "hub", "serve", "--insecure", "--data-dir", str(self.tmp / "hub"),
             "--db", self.db_url, "--listen", f"127.0.0.1:{self.port}",
             "--admin-listen", f"127.0.0.1:{self.admin_port}", "--heartbeat-interval", "0.5"],
            stdout=self._log("hub"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )

    def start_agent(self, site: str) -> None:
        self.agents[site] = subprocess.Popen(
            [sys.executable, str(HERE / "report_agent.py"), f"127.0.0.1:{self.port}", site,
             str(self.tmp / "agents" / site), str(TARGET)],
            stdout=self._log(site), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(HERE.parent.parent)},
        )

    @staticmethod
    def kill(p: subprocess.Popen | None) -> None:
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()

    def stop_all(self) -> None:
        for p in [self.hub, *self.agents.values()]:
            if p is not None and p.poll() is None:
                p.terminate()
        for p in [self.hub, *self.agents.values()]:
            if p is not None:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for f in self.logs:
            f.close()


def agent_outbox(data_dir: Path) -> tuple[int, int]:
    """(last sequence number handed out, reports still queued) from the agent's own SQLite."""
    import sqlite3

    with sqlite3.connect(data_dir / "agent.db") as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
        queued = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
    return (int(row[0]) if row else 0), int(queued)


async def hub_counts(db_url: str) -> dict[str, tuple[int, int, int]]:
    """site -> (rows stored, node's counter, highest seq)."""
    db = Database(db_url)
    try:
        store = Store(db)
        counts = await store.report_counts()
        return {n.site: (counts.get(n.id, (0, 0))[0], n.reports_received, counts.get(n.id, (0, 0))[1])
                for n in await store.list_nodes()}
    finally:
        await db.close()


def test_every_report_counted_exactly_once_under_sigkill(tmp_path, db_url):
    rng = random.Random(SEED)
    fleet = Fleet(tmp_path, db_url)
    sites = [f"chaos-{i}" for i in range(AGENTS)]
    kills = {"hub": 0, "agent": 0}
    try:
        fleet.start_hub()
        for s in sites:
            fleet.start_agent(s)
        end = time.monotonic() + CHAOS_SECONDS
        while time.monotonic() < end:
            time.sleep(rng.uniform(0.2, 1.2))
            if rng.random() < 0.4:
                fleet.kill(fleet.hub)
                kills["hub"] += 1
                time.sleep(rng.uniform(0.0, 0.5))
                fleet.start_hub()
            else:
                site = rng.choice(sites)
                fleet.kill(fleet.agents[site])
                kills["agent"] += 1
                time.sleep(rng.uniform(0.0, 0.3))
                fleet.start_agent(site)
        # Calm: let every agent finish producing and drain its outbox.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            outboxes = {s: agent_outbox(tmp_path / "agents" / s) for s in sites}
            if all(last >= TARGET and queued == 0 for last, queued in outboxes.values()):
                break
            time.sleep(0.5)
        fleet.stop_all()
        outboxes = {s: agent_outbox(tmp_path / "agents" / s) for s in sites}
        counts = asyncio.run(hub_counts(db_url))
    finally:
        fleet.stop_all()

    figures = {
        "kills": kills["hub"] + kills["agent"], "hub_kills": kills["hub"], "agent_kills": kills["agent"],
        "sent": sum(last for last, _ in outboxes.values()),
        "stored": sum(c[0] for c in counts.values()),
        "lost": sum(max(0, outboxes[s][0] - counts.get(s, (0, 0, 0))[0]) for s in sites),
        "doubled": sum(max(0, counts.get(s, (0, 0, 0))[1] - outboxes[s][0]) for s in sites),
        "still_queued": sum(q for _, q in outboxes.values()),
    }
    print(json.dumps(figures))
    assert kills["hub"] >= 3 and kills["agent"] >= 3, f"too little chaos to mean anything: {kills}"
    for s in sites:
        last, queued = outboxes[s]
        rows, counted, max_seq = counts[s]
        assert last >= TARGET, f"{s} produced only {last} reports"
        assert queued == 0, f"{s} still has {queued} unacknowledged reports"
        assert rows == last and max_seq == last, f"{s}: agent handed out {last} seqs, hub stored {rows} (max {max_seq})"
        assert counted == last, f"{s}: hub counted {counted} reports for {last} sent"
