"""Ingest: report records per second the hub persists.

    python -m benchmarks.ingest                                   # SQLite in a temp dir, 100,000 records
    python -m benchmarks.ingest --db postgresql://fleet@127.0.0.1:55432/fleet_test
    python -m benchmarks.ingest --records 1000000                 # longer run

Two paths, both exactly-once (each report stored once per (node, incarnation, seq),
atomically with the node's counters; on PostgreSQL one INSERT .. SELECT FROM
unnest(arrays) per transaction, tried plain in a savepoint and again with ON
CONFLICT DO NOTHING RETURNING only when a resend collides):

* `raw`: `Store.store_reports` called directly, --batch records per call,
  --agents nodes written concurrently (one task each) in this process;
* `grpc`: a real hub (`fleet hub serve --insecure --workers W`) and --agents
  simulated agents (benchmarks/_sim.py, generated stubs; not the real HubLink
  with its SQLite outbox) in one separate process, each streaming ReportBatch
  messages of --batch reports over its Connect stream (the hub group-commits
  the batches of all streams that arrive while a write is in flight:
  hub.link.ReportWriter); the clock stops when
  the hub has acknowledged (ReportAck) every record, and the count is checked
  against Admin.ReportStats.

For PostgreSQL a fresh database is created next to the one named and dropped
afterwards. Prints one JSON line with records/s for each path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks._sim import AUTH, AgentFleet, HubProcess, admin_stub, fresh_database, raise_nofile, setup_logging

log = logging.getLogger("benchmarks")


async def raw(url: str, records: int, batch: int, agents: int) -> dict:
    from hub.store import Database, Store
    from hub.store.repo import IncomingReport

    db = Database(url)
    db.migrate()
    store = Store(db)
    try:
        now = datetime.now(UTC)
        nodes = [(await store.register_node(f"raw{i}", "n", "bench", {}, now)).id for i in range(agents)]
        per = records // agents

        async def one(node_id: int) -> None:
            seq = 1
            while seq <= per:
                k = min(batch, per - seq + 1)
                reps = [IncomingReport(s, "telemetry", now, {"agent": node_id, "seq": s, "tokens": 123})
                        for s in range(seq, seq + k)]
                await store.store_reports(node_id, reps, datetime.now(UTC))
                seq += k

        t0 = time.perf_counter()
        await asyncio.gather(*(one(n) for n in nodes))
        dt = time.perf_counter() - t0
        counts = await store.report_counts()
        stored = sum(counts.get(n, (0, 0))[0] for n in nodes)
        return {"records": per * agents, "stored": stored, "seconds": round(dt, 2),
                "records_per_s": round(stored / dt)}
    finally:
        await db.close()


async def _stats(addr: str):
    from protos.fleet.v1 import admin_pb2

    ch, stub = admin_stub(addr)
    async with ch:
        return await stub.ReportStats(admin_pb2.ReportStatsRequest(), metadata=AUTH, timeout=120)


def via_grpc(url: str | None, data_dir: Path, records: int, batch: int, agents: int, workers: int) -> dict:
    hub = HubProcess(data_dir, workers=workers, db=url)
    fleet = None
    try:
        hub.start()
        fleet = AgentFleet(hub.agent_addr, agents, 1, per_channel=agents, report_batch=batch)
        if not fleet.wait_until(lambda s: s["resynced"] >= agents, 120, what="for agents"):
            raise SystemExit("agents did not connect")
        per = records // agents
        fleet.ask(("prepare", per), "prepared", timeout=600)
        t0 = time.perf_counter()
        fleet.broadcast("flush")
        ok = fleet.wait_until(lambda s: s["reports_created"] >= per * agents and s["outbox"] == 0, 600,
                              what="for report acks")
        dt = time.perf_counter() - t0
        stats = asyncio.run(_stats(hub.admin_addr))
        stored = sum(a.reports for a in stats.agents)
        return {"records": per * agents, "stored": stored, "all_acked": ok, "seconds": round(dt, 2),
                "records_per_s": round(stored / dt), "hub_peak_rss_mb": round(hub.peak_rss / 2**20, 1)}
    finally:
        if fleet is not None:
            fleet.stop()
        hub.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", help="database URL (default: SQLite in a temporary directory)")
    ap.add_argument("--records", type=int, default=100_000, help="records per path")
    ap.add_argument("--batch", type=int, default=500, help="reports per batch / ReportBatch message")
    ap.add_argument("--agents", type=int, default=10, help="concurrent writers (nodes / agent streams)")
    ap.add_argument("--workers", type=int, default=1, help="hub processes for the gRPC path")
    ap.add_argument("--skip-grpc", action="store_true")
    ap.add_argument("--skip-raw", action="store_true")
    args = ap.parse_args()
    setup_logging()
    raise_nofile()
    out: dict = {"benchmark": "ingest", "batch": args.batch, "agents": args.agents, "workers": args.workers}
    with tempfile.TemporaryDirectory(prefix="fleet-ingest-") as tmp:
        with fresh_database(args.db) as db:
            url = db or f"sqlite:///{tmp}/raw.db"
            out["db"] = "postgresql" if url.startswith("postgres") else "sqlite"
            if not args.skip_raw:
                out["raw"] = asyncio.run(raw(url, args.records, args.batch, args.agents))
                log.info("raw: %s", out["raw"])
        with fresh_database(args.db) as db:
            if not args.skip_grpc:
                out["grpc"] = via_grpc(db, Path(tmp), args.records, args.batch, args.agents, args.workers)
                log.info("grpc: %s", out["grpc"])
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
