"""Fan-out: how fast one desired-state change reaches N connected agents.

    python -m benchmarks.fanout --agents 1000                 # default, ~1 min
    python -m benchmarks.fanout --agents 10000 --workers 2    # full size (the issue's goal)

A real hub (`fleet hub serve --insecure --workers W`, SQLite in a temporary
directory unless --db) runs in its own process group; N simulated agents
(benchmarks/_sim.py: generated stubs, not the real HubLink, which keeps a
SQLite file per agent) run in --procs separate processes, 100 streams per
HTTP/2 connection. Once all N are connected and resynced, one object
targeting every node is published with Admin.PutObject. Each agent stamps
time.time() when its Applied ack has been written; latency = stamp - publish
time (one clock: all processes share the machine). `all_acked_ms` is when
Admin.ListObjects first reports nodes_applied == N (polled every 0.25 s once
the agents have acked, so polling does not compete with the fan-out).

Prints one JSON line: p50/p99/max ms, all_acked_ms, hub peak RSS (the hub's
whole process tree), lost (agents without an ack within --timeout), connect
time.

What limits a single grpc.aio server to ~5,000-7,000 streams, measured
with a bare bidi server (100 streams per connection, ~120 fds, ~200 MB): not
file descriptors, memory or HTTP/2 stream limits, but gRPC core's backlog of
calls that arrived before the Python server asked for them
(`grpc.server.max_pending_requests`, default 1000, and
`grpc.server.max_pending_requests_hard_limit`, default 3000; calls over the
backlog are shed and the client sees CANCELLED, then INTERNAL on its next
write). A burst of 10,000 opened 4,746-5,328; at 1,000/s 7,853; with both
options at 100,000, all 10,000 in 13 s. The hub keeps the defaults (load
shedding under a connect storm); agents retry with backoff, so all N connect.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
import time
from pathlib import Path

from benchmarks._sim import AUTH, AgentFleet, HubProcess, admin_stub, fresh_database, percentile, raise_nofile, setup_logging

log = logging.getLogger("benchmarks")


async def _put(addr: str, name: str) -> tuple[str, int]:
    from google.protobuf.struct_pb2 import Struct

    from protos.fleet.v1 import admin_pb2

    ch, stub = admin_stub(addr)
    async with ch:
        spec = Struct()
        spec.update({"model": "llama-3-8b", "replicas": 1, "at": time.time()})
        r = await stub.PutObject(admin_pb2.PutObjectRequest(kind="Config", name=name, spec=spec), metadata=AUTH)
        return r.object.id, r.object.version


async def _applied(addr: str, oid: str) -> tuple[int, int]:
    from protos.fleet.v1 import admin_pb2

    ch, stub = admin_stub(addr)
    async with ch:
        r = await stub.ListObjects(admin_pb2.ListObjectsRequest(kind="Config"), metadata=AUTH, timeout=60)
        for o in r.objects:
            if o.object.id == oid:
                return o.nodes_applied, o.nodes_targeted
    return 0, 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=1, help="hub processes sharing the agent port")
    ap.add_argument("--procs", type=int, default=2, help="agent processes")
    ap.add_argument("--per-channel", type=int, default=100, help="agent streams per HTTP/2 connection")
    ap.add_argument("--db", help="database URL (default: SQLite in a temporary directory; PostgreSQL: a fresh database is made)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds an agent has to ack before it counts as lost")
    ap.add_argument("--connect-timeout", type=float, default=600.0)
    args = ap.parse_args()
    setup_logging()
    raise_nofile()
    with tempfile.TemporaryDirectory(prefix="fleet-fanout-") as tmp, fresh_database(args.db) as db:
        hub = HubProcess(Path(tmp), workers=args.workers, db=db)
        fleet = None
        try:
            hub_start = hub.start()
            log.info("hub up in %.1fs on %s (admin %s)", hub_start, hub.agent_addr, hub.admin_addr)
            t0 = time.time()
            fleet = AgentFleet(hub.agent_addr, args.agents, args.procs, per_channel=args.per_channel)
            ok = fleet.wait_until(lambda s: s["resynced"] >= args.agents, args.connect_timeout, what="for connections")
            st = fleet.status()
            connect_s = time.time() - t0
            if not ok:
                log.error("only %d of %d agents connected", st["resynced"], args.agents)
            log.info("%d agents connected and resynced in %.1fs", st["resynced"], connect_s)
            time.sleep(1.0)  # let the connect burst's writes settle
            rss_before = hub.tree_rss()
            t_pub = time.time()
            oid, version = asyncio.run(_put(hub.admin_addr, f"fanout-{int(t_pub)}"))
            put_ms = (time.time() - t_pub) * 1000
            key = f"{oid}@{version}"
            fleet.wait_until(lambda s: s["acked"].get(key, 0) >= st["resynced"], args.timeout, what="for acks")
            agents_done = time.time()
            all_acked_ms = None
            applied = 0
            while time.time() - t_pub < args.timeout + 30:
                applied, targeted = asyncio.run(_applied(hub.admin_addr, oid))
                if applied >= args.agents:
                    all_acked_ms = (time.time() - t_pub) * 1000
                    break
                time.sleep(0.25)
            stamps = fleet.ask(("results", oid, version), "results")
            lat = [(s - t_pub) * 1000 for s in stamps if s is not None and s - t_pub <= args.timeout]
            out = {
                "benchmark": "fanout",
                "agents": args.agents,
                "workers": args.workers,
                "agent_procs": args.procs,
                "per_channel": args.per_channel,
                "db": "postgresql" if args.db and args.db.startswith("postgres") else "sqlite",
                "connected": st["resynced"],
                "connect_s": round(connect_s, 2),
                "p50_ms": round(percentile(lat, 50), 1) if lat else None,
                "p99_ms": round(percentile(lat, 99), 1) if lat else None,
                "max_ms": round(max(lat), 1) if lat else None,
                "put_rpc_ms": round(put_ms, 1),
                "agents_acked_ms": round((agents_done - t_pub) * 1000, 1),
                "all_acked_ms": round(all_acked_ms, 1) if all_acked_ms is not None else None,
                "hub_nodes_applied": applied,
                "lost": args.agents - len(lat),
                "hub_rss_before_publish_mb": round(rss_before / 2**20, 1),
                "hub_peak_rss_mb": round(hub.peak_rss / 2**20, 1),
            }
            print(json.dumps(out), flush=True)
        finally:
            if fleet is not None:
                fleet.stop()
            hub.stop()


if __name__ == "__main__":
    main()
