"""Reconnect: SIGKILL the hub under N connected agents, restart it on the same
port and store, and time until every agent has reconnected and resynced.

    python -m benchmarks.reconnect --agents 1000                  # default, ~1 min
    python -m benchmarks.reconnect --agents 10000 --workers 2     # full size (the issue's goal)

A real hub (`fleet hub serve --insecure --workers W`, SQLite in a temporary
directory unless --db) and N simulated agents in --procs processes
(benchmarks/_sim.py: generated stubs, not the real HubLink, which keeps a
SQLite file per agent; the outbox is in memory, which is enough here because
only the hub is killed). Steps:

1. one object is published for every node; agents connect, receive and ack it,
   so each then holds state and says so in Hello (`held`): a resync after the
   restart must send nothing (`resync_upserts_after_restart` = 0);
2. every agent sends --reports reports (per-agent sequence numbers) and the
   hub acknowledges them; then every agent sends another --reports and the
   hub's whole process group is SIGKILLed --kill-after seconds later, while
   they are in flight;
3. the hub is restarted on the same port and store; agents reconnect with
   the real agent's full-jitter backoff and its configuration defaults
   (edge_agent.config: 0.5 s doubling to 30 s; --backoff-max to compare a
   gentler ceiling, e.g. the 5 s this benchmark used to assume), drop what
   Welcome says is stored, and resend the rest;
4. after every agent has resynced, a third wave is sent; once all outboxes are
   empty, Admin.ReportStats is compared with what agents created:
   `lost` = created - stored, `double_counted` = counted - stored.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
import time
from pathlib import Path

from benchmarks._sim import AGENT_BACKOFF_INITIAL_S, AGENT_BACKOFF_MAX_S, AUTH, AgentFleet, HubProcess, admin_stub, fresh_database, raise_nofile, setup_logging

log = logging.getLogger("benchmarks")


async def _put(addr: str) -> None:
    from google.protobuf.struct_pb2 import Struct

    from protos.fleet.v1 import admin_pb2

    ch, stub = admin_stub(addr)
    async with ch:
        spec = Struct()
        spec.update({"model": "llama-3-8b", "replicas": 1})
        await stub.PutObject(admin_pb2.PutObjectRequest(kind="Config", name="reconnect-base", spec=spec), metadata=AUTH)


async def _stats(addr: str):
    from protos.fleet.v1 import admin_pb2

    ch, stub = admin_stub(addr)
    async with ch:
        return await stub.ReportStats(admin_pb2.ReportStatsRequest(), metadata=AUTH, timeout=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=1, help="hub processes sharing the agent port")
    ap.add_argument("--procs", type=int, default=2, help="agent processes")
    ap.add_argument("--per-channel", type=int, default=100, help="agent streams per HTTP/2 connection")
    ap.add_argument("--reports", type=int, default=10, help="reports per agent per wave (three waves)")
    ap.add_argument("--kill-after", type=float, default=0.02, help="seconds after the second wave starts")
    ap.add_argument("--db", help="database URL (default: SQLite in a temporary directory; PostgreSQL: a fresh database is made)")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--backoff-max", type=float, default=AGENT_BACKOFF_MAX_S,
                    help=f"agents' reconnect backoff ceiling, s (default: the real agent's, {AGENT_BACKOFF_MAX_S:g})")
    ap.add_argument("--backoff-initial", type=float, default=AGENT_BACKOFF_INITIAL_S,
                    help=f"agents' first backoff ceiling, s (default: the real agent's, {AGENT_BACKOFF_INITIAL_S:g})")
    args = ap.parse_args()
    setup_logging()
    raise_nofile()
    n = args.agents
    with tempfile.TemporaryDirectory(prefix="fleet-reconnect-") as tmp, fresh_database(args.db) as db:
        hub = HubProcess(Path(tmp), workers=args.workers, db=db)
        fleet = None
        try:
            hub.start()
            asyncio.run(_put(hub.admin_addr))
            t0 = time.time()
            fleet = AgentFleet(hub.agent_addr, n, args.procs, per_channel=args.per_channel,
                               backoff_initial_s=args.backoff_initial, backoff_max_s=args.backoff_max)
            if not fleet.wait_until(lambda s: s["resynced"] >= n and sum(s["acked"].values()) >= n, args.timeout,
                                    what="for connections"):
                raise SystemExit(f"only {fleet.status()['resynced']} of {n} agents connected")
            connect_s = time.time() - t0
            log.info("%d agents connected in %.1fs", n, connect_s)
            before = fleet.status()
            # wave 1: delivered and acknowledged
            fleet.broadcast("reports", args.reports)
            fleet.wait_until(lambda s: s["reports_created"] >= n * args.reports and s["outbox"] == 0,
                             args.timeout, what="for wave 1 acks")
            # wave 2: in flight when the hub dies
            fleet.broadcast("reports", args.reports)
            time.sleep(args.kill_after)
            t_kill = time.time()
            hub.kill()
            fleet.wait_until(lambda s: s["resynced"] == 0, 30, what="for agents to notice")
            noticed_s = time.time() - t_kill
            time.sleep(0.3)  # a fresh status from every agent process
            in_flight = fleet.status()["outbox"]
            log.info("hub killed (%d reports unacknowledged at the kill)", in_flight)
            t_restart = time.time()
            restart_s = hub.start()
            log.info("hub restarted in %.1fs", restart_s)
            ok = fleet.wait_until(lambda s: s["resynced"] >= n and s["resyncs"] >= before["resyncs"] + n,
                                  args.timeout, what="for reconnects")
            t_all = time.time()
            after = fleet.status()
            # wave 3 after the restart, then drain
            fleet.broadcast("reports", args.reports)
            drained = fleet.wait_until(lambda s: s["reports_created"] >= 3 * n * args.reports and s["outbox"] == 0,
                                       args.timeout, what="for outboxes to drain")
            created = fleet.status()["reports_created"]
            stats = asyncio.run(_stats(hub.admin_addr))
            stored = sum(a.reports for a in stats.agents)
            counted = sum(a.counted for a in stats.agents)
            gaps = sum(1 for a in stats.agents if a.reports != a.max_seq)
            out = {
                "benchmark": "reconnect",
                "agents": n,
                "workers": args.workers,
                "agent_procs": args.procs,
                "db": "postgresql" if db and db.startswith("postgres") else "sqlite",
                "backoff_initial_s": args.backoff_initial, "backoff_max_s": args.backoff_max,
                "backoff_is_agent_default": (args.backoff_initial, args.backoff_max) == (AGENT_BACKOFF_INITIAL_S,
                                                                                         AGENT_BACKOFF_MAX_S),
                "connect_s": round(connect_s, 2),
                "reconnected": after["resynced"],
                "all_resynced": ok,
                "reconnect_s": round(t_all - t_kill, 2),
                "reconnect_after_hub_up_s": round(t_all - t_restart - restart_s, 2),
                "hub_restart_s": round(restart_s, 2),
                "agents_noticed_s": round(noticed_s, 2),
                "resync_upserts_after_restart": after["resync_upserts"] - before["resync_upserts"],
                "reports_unacked_at_kill": in_flight,
                "reports_created": created,
                "reports_stored": stored,
                "reports_counted": counted,
                "duplicates_dropped": sum(a.duplicates for a in stats.agents),
                "agents_with_seq_gaps": gaps,
                "outboxes_drained": drained,
                "lost": created - stored,
                "double_counted": counted - stored,
                "hub_peak_rss_mb": round(hub.peak_rss / 2**20, 1),
            }
            print(json.dumps(out), flush=True)
        finally:
            if fleet is not None:
                fleet.stop()
            hub.stop()


if __name__ == "__main__":
    main()
