"""Chaos: SIGKILL the hub and agents at random moments while reports flow;
every report must be counted exactly once, with the content the agent gave it.

Real processes throughout: `fleet hub serve` on the store under test, and
agents that are the real Agent/HubLink/LocalState (tests/chaos/report_agent.py).

In the `wipe-state` mode some agent kills also delete the agent's data dir
(a lost disk, a replaced pod with an emptyDir): the restarted agent is a new
report stream (incarnation) from seq 1. Reports still queued unacknowledged in
a wiped outbox are legitimately gone with the disk; they are counted apart
(`lost_with_wipe`). Every other report the agents produced must be on the hub
exactly once with the same content digest.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import sqlite3
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hub.store import Database, Store
from tests.chaos.report_agent import digest, ledger_lines
from tests.harness.procs import wait_port

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
             str(self.tmp / "agents" / site), str(TARGET), str(self.ledger(site))],
            stdout=self._log(site), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(HERE.parent.parent)},
        )

    def ledger(self, site: str) -> Path:
        """The agent's record of what it produced, outside its data dir."""
        return self.tmp / "ledgers" / f"{site}.jsonl"

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


def agent_db(data_dir: Path) -> sqlite3.Connection | None:
    """The agent's own SQLite, read-only; None while a (re)started agent has not created it yet."""
    try:
        db = sqlite3.connect(f"file:{data_dir / 'agent.db'}?mode=ro", uri=True)
    except sqlite3.OperationalError:
        return None
    if db.execute("SELECT count(*) FROM sqlite_master WHERE name IN ('meta', 'outbox', 'identity')").fetchone()[0] < 3:
        db.close()
        return None
    return db


def agent_outbox(data_dir: Path) -> tuple[int, int] | None:
    """(last sequence number handed out, reports still queued) from the agent's own SQLite."""
    db = agent_db(data_dir)
    if db is None:
        return None
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
        queued = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
    finally:
        db.close()
    return (int(row[0]) if row else 0), int(queued)


def unacked(data_dir: Path) -> set[tuple[str, int]]:
    """(incarnation, seq) of every report still queued in a (killed) agent's outbox."""
    db = agent_db(data_dir)
    if db is None:
        return set()
    try:
        (inc,) = db.execute("SELECT value FROM identity WHERE key = 'incarnation'").fetchone()
        return {(inc, s) for (s,) in db.execute("SELECT seq FROM outbox")}
    finally:
        db.close()


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


async def hub_reports(db_url: str) -> dict[str, list[tuple[str, int, str]]]:
    """site -> (incarnation, seq, content digest) of every report the hub stored."""
    db = Database(db_url)
    try:
        store = Store(db)
        return {n.site: [(r.incarnation, r.seq, digest(r.kind, r.payload)) for r in await store.reports(n.id)]
                for n in await store.list_nodes()}
    finally:
        await db.close()


def compare(site: str, produced: list[dict], stored: list[tuple[str, int, str]],
            wiped: set[tuple[str, int]]) -> dict[str, int]:
    """What the agent produced (its ledger) against what the hub stored, for one agent."""
    want = {(e["inc"], e["seq"]): e["digest"] for e in produced}
    assert len(want) == len(produced), f"{site}: the agent handed out one (incarnation, seq) twice"
    have = {(inc, seq): d for inc, seq, d in stored}
    f = dict.fromkeys(("produced", "stored", "lost", "lost_with_wipe", "wiped_unacked", "wiped_unacked_but_stored",
                       "mismatched", "doubled", "unrecorded"), 0)
    f["produced"], f["stored"] = len(want), len(stored)
    f["doubled"] = len(stored) - len(set(have.values()))  # every report's content is unique (a nonce)
    f["wiped_unacked"] = len(wiped)
    for key, d in want.items():
        if key not in have:
            f["lost_with_wipe" if key in wiped else "lost"] += 1
        elif have[key] != d:
            f["mismatched"] += 1
        elif key in wiped:
            f["wiped_unacked_but_stored"] += 1
    # Stored but not in the ledger: the agent was killed between committing a report and
    # writing its ledger line. Then it directly follows a ledger line of its stream (or starts it).
    for inc, seq in have.keys() - want.keys():
        assert seq == 1 or (inc, seq - 1) in want, f"{site}: the hub holds {inc}/{seq}, which the agent never produced"
        f["unrecorded"] += 1
    return f


@pytest.mark.parametrize("wipe", [False, True], ids=["keep-state", "wipe-state"])
def test_every_report_counted_exactly_once_under_sigkill(tmp_path, db_url, wipe):
    rng = random.Random(SEED + wipe)
    fleet = Fleet(tmp_path, db_url)
    (tmp_path / "ledgers").mkdir()
    sites = [f"chaos-{i}" for i in range(AGENTS)]
    kills = {"hub": 0, "agent": 0, "wipes": 0}
    wiped: dict[str, set[tuple[str, int]]] = {s: set() for s in sites}
    try:
        fleet.start_hub()
        for s in sites:
            fleet.start_agent(s)
        end = time.monotonic() + CHAOS_SECONDS
        while time.monotonic() < end:
            time.sleep(rng.uniform(0.2, 1.2))
            if rng.random() < 0.4:
                if rng.random() < 0.75:
                    # Mostly kill a hub that serves (after a while), not one still importing Python or
                    # migrating: on a loaded machine a start takes seconds, and kills that only ever hit
                    # starting hubs leave no hub up for the agents to talk to.
                    wait_port(fleet.port, fleet.hub)
                    time.sleep(rng.uniform(0.3, 2.0))
                fleet.kill(fleet.hub)
                kills["hub"] += 1
                time.sleep(rng.uniform(0.0, 0.5))
                fleet.start_hub()
            else:
                site = rng.choice(sites)
                fleet.kill(fleet.agents[site])
                kills["agent"] += 1
                if wipe and rng.random() < 0.5:
                    data_dir = tmp_path / "agents" / site
                    wiped[site] |= unacked(data_dir)  # gone with the disk, unless the hub has them already
                    shutil.rmtree(data_dir, ignore_errors=True)
                    kills["wipes"] += 1
                time.sleep(rng.uniform(0.0, 0.3))
                fleet.start_agent(site)
        # Calm: let every agent finish producing and drain its outbox.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            outboxes = {s: agent_outbox(tmp_path / "agents" / s) for s in sites}
            produced = {s: len(ledger_lines(fleet.ledger(s))) for s in sites}
            if all(produced[s] >= TARGET and outboxes[s] is not None and outboxes[s][1] == 0 for s in sites):
                break
            time.sleep(0.5)
        fleet.stop_all()
        outboxes = {s: agent_outbox(tmp_path / "agents" / s) for s in sites}
        assert all(o is not None for o in outboxes.values()), f"an agent never opened its state: {outboxes}"
        counts = asyncio.run(hub_counts(db_url))
        stored = asyncio.run(hub_reports(db_url))
    finally:
        fleet.stop_all()

    per_site = {s: compare(s, ledger_lines(fleet.ledger(s)), stored.get(s, []), wiped[s]) for s in sites}
    totals = {k: sum(f[k] for f in per_site.values()) for k in next(iter(per_site.values()))}
    figures = {
        "mode": "wipe-state" if wipe else "keep-state", "db": db_url.split(":")[0],
        "kills": kills["hub"] + kills["agent"], "hub_kills": kills["hub"], "agent_kills": kills["agent"],
        "wipes": kills["wipes"], **totals,
        "still_queued": sum(q for _, q in outboxes.values()),
    }
    if not wipe:  # one stream per agent: its own counter is the whole story
        figures["lost_by_count"] = sum(max(0, outboxes[s][0] - counts.get(s, (0, 0, 0))[0]) for s in sites)
        figures["doubled_by_count"] = sum(max(0, counts.get(s, (0, 0, 0))[1] - outboxes[s][0]) for s in sites)
    print(json.dumps(figures))
    assert kills["hub"] >= 3 and kills["agent"] >= 3, f"too little chaos to mean anything: {kills}"
    assert not wipe or kills["wipes"] >= 2, f"too few wipes to mean anything: {kills}"
    for s in sites:
        f = per_site[s]
        assert f["produced"] >= TARGET, f"{s} produced only {f['produced']} reports"
        assert f["lost"] == 0, f"{s}: {f['lost']} acknowledged or still-held reports are not on the hub: {f}"
        assert f["mismatched"] == 0, f"{s}: {f['mismatched']} reports stored with other content: {f}"
        assert f["doubled"] == 0, f"{s}: {f['doubled']} reports stored twice: {f}"
        assert f["unrecorded"] <= kills["agent"], f
        last, queued = outboxes[s]
        rows, counted, max_seq = counts.get(s, (0, 0, 0))  # an agent whose every report was wiped may never connect
        assert queued == 0, f"{s} still has {queued} unacknowledged reports"
        assert counted == rows, f"{s}: hub counted {counted} reports for {rows} rows"
        if not wipe:
            assert last >= TARGET, f"{s} handed out only {last} seqs"
            assert rows == last and max_seq == last, f"{s}: agent handed out {last} seqs, hub stored {rows} (max {max_seq})"
