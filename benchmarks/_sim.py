"""Shared machinery of the benchmarks: a hub in a subprocess and light-weight
simulated agents in separate processes.

The simulated agent speaks the real `AgentLink.Connect` protocol through the
generated stubs (Hello with held versions, Welcome, resync until
`resync_complete`, `Applied` acks, heartbeats at the hub's interval, report
batches with per-agent sequence numbers kept in an in-memory outbox until the
hub acknowledges them, and resent after a reconnect; reconnect backoff by the
real agent's function and configuration defaults). It does NOT use the real
`edge_agent.link.HubLink`: that keeps a SQLite file per agent, far too heavy
for 10,000 agents on two cores. Many agents share one channel (one HTTP/2
connection, `grpc.use_local_subchannel_pool` so channels do not collapse into
one connection, which lets SO_REUSEPORT spread them over hub workers).

Agent processes are driven by the benchmark over a multiprocessing pipe:
they stream status dicts up and take commands ("reports", "results", "stop").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("benchmarks")

TOKEN = "benchmark-admin-token-0123456789"


def raise_nofile() -> int:
    """Raise the soft fd limit to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(processName)s %(message)s")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = min(len(v) - 1, max(0, round(q / 100 * (len(v) - 1))))
    return v[k]


# ---------------------------------------------------------------------------
# The hub, as `fleet hub serve` in its own process group.


class HubProcess:
    """`fleet hub serve --insecure --workers W` in a subprocess (new session, killable as a group)."""

    def __init__(self, data_dir: Path, *, workers: int = 1, db: str | None = None,
                 port: int | None = None, admin_port: int | None = None) -> None:
        self.data_dir = data_dir
        self.workers = workers
        self.db = db
        self.port = port or free_port()
        self.admin_port = admin_port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir / "hub.log"
        self._log_offset = 0
        self.peak_rss = 0
        self._sampler: threading.Thread | None = None
        self._sampling = False

    @property
    def agent_addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def admin_addr(self) -> str:
        return f"127.0.0.1:{self.admin_port}"

    def start(self, timeout: float = 60.0) -> float:
        """Start and wait until every worker serves; returns seconds taken."""
        t0 = time.time()
        # FLEET_BENCH_PROFILE=FILE runs the hub's main process under cProfile (written on SIGTERM).
        prof = os.environ.get("FLEET_BENCH_PROFILE")
        pre = ["-m", "cProfile", "-o", prof] if prof else []
        cmd = [sys.executable, *pre, "-m", "hub.cli.main", "hub", "serve", "--insecure",
               "--workers", str(self.workers), "--data-dir", str(self.data_dir),
               "--listen", self.agent_addr, "--admin-listen", self.admin_addr]
        if self.db:
            cmd += ["--db", self.db]
        env = dict(os.environ, FLEET_TOKEN=TOKEN)
        logf = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self._log_offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(cmd, stdout=logf, stderr=logf, env=env, start_new_session=True,
                                     preexec_fn=raise_nofile)
        logf.close()
        while True:
            text = self.log_path.read_bytes()[self._log_offset:].decode(errors="replace")
            if text.count("hub serving agents") >= self.workers:
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited with {self.proc.returncode}; see {self.log_path}:\n{text[-3000:]}")
            if time.time() - t0 > timeout:
                raise TimeoutError(f"hub not serving after {timeout}s; see {self.log_path}")
            time.sleep(0.05)
        if not self._sampling:
            self._sampling = True
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return time.time() - t0

    def tree_rss(self) -> int:
        import psutil

        if self.proc is None or self.proc.poll() is not None:
            return 0
        try:
            p = psutil.Process(self.proc.pid)
            procs = [p, *p.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for q in procs:
            with contextlib.suppress(psutil.Error):
                total += q.memory_info().rss
        return total

    def _sample(self) -> None:
        while self._sampling:
            self.peak_rss = max(self.peak_rss, self.tree_rss())
            time.sleep(0.25)

    def kill(self) -> None:
        """SIGKILL the whole process group (parent and workers)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        self._sampling = False
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        # workers are daemons of the parent; make sure none outlives it
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)


def admin_stub(addr: str):
    import grpc

    from protos.fleet.v1 import admin_pb2_grpc

    ch = grpc.aio.insecure_channel(addr, options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)])
    return ch, admin_pb2_grpc.AdminStub(ch)


AUTH = (("authorization", f"Bearer {TOKEN}"),)


@contextlib.contextmanager
def fresh_database(url: str | None):
    """Yield `url` unchanged for SQLite/None; for PostgreSQL create a fresh
    database next to the one named (so benchmarks never touch test data) and
    drop it afterwards."""
    if not url or not url.startswith("postgres"):
        yield url
        return
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    name = f"fleet_bench_{os.getpid()}_{int(time.time())}"
    admin = u.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        yield u.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---------------------------------------------------------------------------
# Simulated agents (run inside agent processes).


def _agent_defaults() -> tuple[float, float]:
    """The real agent's reconnect backoff (initial, max ceiling) from its configuration defaults."""
    from edge_agent.config import AgentConfig

    fields = AgentConfig.model_fields
    return float(fields["backoff_initial_s"].default), float(fields["backoff_max_s"].default)


AGENT_BACKOFF_INITIAL_S, AGENT_BACKOFF_MAX_S = _agent_defaults()


def sim_identity(i: int) -> tuple[str, str]:
    """(site, node) of simulated agent ``i``; the node is named as hub.rollout.synthetic.node_of names it,
    so a synthetic fleet's revision targets these agents."""
    return f"s{i}", f"s{i}-gpu"


def hello(i: int, held: dict[str, int]):
    """The Hello simulated agent ``i`` opens its stream with."""
    from protos.fleet.v1 import agent_pb2, types_pb2

    site, node = sim_identity(i)
    return agent_pb2.AgentMessage(hello=agent_pb2.Hello(
        identity=types_pb2.AgentIdentity(site=site, node=node, agent_version="sim"),
        inventory=types_pb2.Inventory(region="bench", country="DE", jurisdiction="EU"),
        held=held,
        incarnation=f"sim{i}",  # one report stream per simulated agent, kept across its reconnects
    ))


@dataclass
class SimConfig:
    target: str
    first: int              # index of the first agent of this process
    count: int              # agents in this process
    per_channel: int = 100  # agents (streams) per channel / HTTP/2 connection
    connect_concurrency: int = 200
    report_batch: int = 100
    backoff_initial_s: float = AGENT_BACKOFF_INITIAL_S
    backoff_max_s: float = AGENT_BACKOFF_MAX_S
    """The real agent's defaults (edge_agent.config), not gentler ones."""
    held: dict[str, int] = field(default_factory=dict)  # what every agent claims to hold at start


class SimAgent:
    def __init__(self, fleet: SimFleet, i: int, stub) -> None:
        self.fleet = fleet
        self.i = i
        self.stub = stub
        self.held: dict[str, int] = dict(fleet.cfg.held)
        self.outbox: dict[int, object] = {}  # seq -> Report, until acked
        self.next_seq = 1
        self.sent_reports = 0      # distinct reports created
        self.call = None
        self.lock = asyncio.Lock()
        self.resynced = False
        self.resyncs = 0
        self.resync_upserts = 0    # objects received during resyncs
        self.acks: dict[tuple[str, int], float] = {}  # (object id, version) -> time.time() the ack was sent
        self.errors = 0

    async def write(self, msg) -> None:
        async with self.lock:
            await self.call.write(msg)

    def add_reports(self, n: int) -> None:
        from google.protobuf.struct_pb2 import Struct

        from protos.fleet.v1 import types_pb2

        for _ in range(n):
            s = Struct()
            s.update({"agent": self.i, "seq": self.next_seq, "tokens": 123})
            self.outbox[self.next_seq] = types_pb2.Report(seq=self.next_seq, kind="telemetry", payload=s)
            self.next_seq += 1
            self.sent_reports += 1

    async def flush_outbox(self, start: int = 0) -> None:
        """Send the outbox (from seq `start` on) in batches; acks arrive on the reader."""
        from protos.fleet.v1 import agent_pb2

        seqs = sorted(s for s in self.outbox if s >= start)
        b = self.fleet.cfg.report_batch
        for k in range(0, len(seqs), b):
            batch = [self.outbox[s] for s in seqs[k:k + b] if s in self.outbox]
            if batch and self.call is not None:
                await self.write(agent_pb2.AgentMessage(reports=agent_pb2.ReportBatch(reports=batch)))

    async def run(self) -> None:
        import grpc

        from edge_agent.link import backoff_delay

        attempt = 0
        rng = random.Random(self.i)
        while not self.fleet.stopping:
            welcomed = False
            try:
                async with self.fleet.connect_sem:
                    call = await self._open()
                welcomed = True
                await self._serve(call)
            except Exception as exc:  # noqa: BLE001 - any stream failure means reconnect
                self.errors += 1
                if self.fleet.stopping:
                    return
                if isinstance(exc, grpc.aio.AioRpcError) and self.errors <= 3 and self.i % 500 == 0:
                    log.info("agent %d: %s %s", self.i, exc.code().name, exc.details())
            finally:
                self._drop()
            if self.fleet.stopping:
                return
            # the real agent's backoff (edge_agent.link.HubLink.run): reset after a welcome, else one step up
            attempt = 0 if welcomed else attempt + 1
            await asyncio.sleep(backoff_delay(attempt, self.fleet.cfg.backoff_initial_s,
                                              self.fleet.cfg.backoff_max_s, rng))

    def _drop(self) -> None:
        if self.resynced:
            self.fleet.resynced_now -= 1
        self.resynced = False
        if self.call is not None:
            self.call.cancel()
        self.call = None

    async def _open(self):
        import grpc

        call = self.stub.Connect()
        self.call = call
        await call.write(hello(self.i, self.held))
        first = await call.read()
        if first is grpc.aio.EOF or first.WhichOneof("msg") != "welcome":
            raise ConnectionError("no welcome")
        self.interval = max(0.05, first.welcome.heartbeat_interval.ToTimedelta().total_seconds() or 5.0)
        last = first.welcome.last_report_seq
        for s in [s for s in self.outbox if s <= last]:
            del self.outbox[s]  # stored before the hub went away
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                raise ConnectionError("eof during resync")
            if msg.WhichOneof("msg") == "desired":
                self.resync_upserts += len(msg.desired.upserts)
                await self._apply(msg.desired)
                if msg.desired.resync_complete:
                    break
        self.resynced = True
        self.resyncs += 1
        self.fleet.resynced_now += 1
        self.fleet.resync_times.append(time.time())
        return call

    async def _apply(self, upd) -> None:
        from protos.fleet.v1 import agent_pb2

        for o in upd.upserts:
            self.held[o.id] = o.version
            await self.write(agent_pb2.AgentMessage(applied=agent_pb2.Applied(object_id=o.id, version=o.version, ok=True)))
            self.acks.setdefault((o.id, o.version), time.time())
        for d in upd.deletes:
            self.held.pop(d, None)
            await self.write(agent_pb2.AgentMessage(applied=agent_pb2.Applied(object_id=d, deleted=True, ok=True)))

    async def _serve(self, call) -> None:
        import grpc

        hb = asyncio.create_task(self._heartbeats())
        try:
            if self.outbox:
                await self.flush_outbox()
            while True:
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    raise ConnectionError("eof")
                kind = msg.WhichOneof("msg")
                if kind == "desired":
                    await self._apply(msg.desired)
                elif kind == "report_ack":
                    for s in msg.report_ack.seqs:
                        self.outbox.pop(s, None)
        finally:
            hb.cancel()
            with contextlib.suppress(BaseException):
                await hb

    async def _heartbeats(self) -> None:
        from protos.fleet.v1 import agent_pb2

        rng = random.Random(self.i)
        await asyncio.sleep(rng.uniform(0, self.interval))
        while True:
            hb = agent_pb2.Heartbeat()
            hb.sent_at.GetCurrentTime()
            with contextlib.suppress(Exception):
                await self.write(agent_pb2.AgentMessage(heartbeat=hb))
            await asyncio.sleep(self.interval)


class SimFleet:
    """All simulated agents of one process."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.stopping = False
        self.resynced_now = 0
        self.resync_times: list[float] = []
        self.connect_sem = asyncio.Semaphore(cfg.connect_concurrency)
        self.channels: list = []
        self.agents: list[SimAgent] = []

    def status(self) -> dict:
        acked: dict[int, int] = {}  # object version -> agents that acked it (one key per revision, not per object)
        for a in self.agents:
            for (_, v) in a.acks:
                acked[v] = acked.get(v, 0) + 1
        return {
            "resynced": self.resynced_now,
            "resyncs": sum(a.resyncs for a in self.agents),
            "resync_upserts": sum(a.resync_upserts for a in self.agents),
            "acked": acked,
            "outbox": sum(len(a.outbox) for a in self.agents),
            "reports_created": sum(a.sent_reports for a in self.agents),
            "errors": sum(a.errors for a in self.agents),
            "last_resync": max(self.resync_times, default=0.0),
        }

    async def main(self, conn) -> None:
        import grpc

        from protos.fleet.v1 import agent_pb2_grpc

        opts = [
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.enable_retries", 0),
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        cfg = self.cfg
        for k in range(0, cfg.count, cfg.per_channel):
            ch = grpc.aio.insecure_channel(cfg.target, options=[*opts, ("bench.channel", cfg.first + k)])
            stub = agent_pb2_grpc.AgentLinkStub(ch)
            self.channels.append(ch)
            for i in range(cfg.first + k, cfg.first + min(cfg.count, k + cfg.per_channel)):
                self.agents.append(SimAgent(self, i, stub))
        tasks = [asyncio.create_task(a.run()) for a in self.agents]
        loop = asyncio.get_running_loop()
        cmds: asyncio.Queue = asyncio.Queue()

        def reader() -> None:
            while True:
                try:
                    m = conn.recv()
                except (EOFError, OSError):
                    m = ("stop",)
                loop.call_soon_threadsafe(cmds.put_nowait, m)
                if m[0] == "stop":
                    return

        threading.Thread(target=reader, daemon=True).start()
        send_lock = threading.Lock()

        def send(obj) -> None:
            with send_lock:
                conn.send(obj)

        async def statuses() -> None:
            while True:
                send(("status", self.status()))
                await asyncio.sleep(0.2)

        st = asyncio.create_task(statuses())
        while True:
            m = await cmds.get()
            if m[0] == "stop":
                break
            if m[0] == "reports":
                n = m[1]
                starts = {}
                for a in self.agents:
                    starts[a.i] = a.next_seq
                    a.add_reports(n)
                # send the new reports as one wave from all connected agents
                # (older unacked ones are resent by each agent after a reconnect)
                await asyncio.gather(*(a.flush_outbox(starts[a.i]) for a in self.agents if a.resynced),
                                     return_exceptions=True)
            elif m[0] == "prepare":
                # fill the outboxes without sending (so building messages is not timed)
                for a in self.agents:
                    a.add_reports(m[1])
                send(("prepared", []))
            elif m[0] == "flush":
                await asyncio.gather(*(a.flush_outbox() for a in self.agents if a.resynced), return_exceptions=True)
            elif m[0] == "acks_from":
                # per agent: when it first acked an object at version >= m[1] (None: never)
                v0 = m[1]
                send(("acks_from", [min((t for (_, v), t in a.acks.items() if v >= v0), default=None)
                                    for a in self.agents]))
            elif m[0] == "results":
                oid, version = m[1], m[2]
                send(("results", [a.acks.get((oid, version)) for a in self.agents]))
            elif m[0] == "resync_times":
                send(("resync_times", list(self.resync_times)))
        self.stopping = True
        st.cancel()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, st, return_exceptions=True)
        for ch in self.channels:
            await ch.close(None)
        send(("stopped", self.status()))


def _agent_process(cfg: SimConfig, conn) -> None:
    raise_nofile()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setup_logging()
    asyncio.run(SimFleet(cfg).main(conn))


class AgentFleet:
    """Parent side: N agents spread over P processes."""

    def __init__(self, target: str, n: int, procs: int, *, per_channel: int = 100,
                 held: dict[str, int] | None = None, connect_concurrency: int = 200, report_batch: int = 100,
                 backoff_initial_s: float = AGENT_BACKOFF_INITIAL_S, backoff_max_s: float = AGENT_BACKOFF_MAX_S) -> None:
        self.n = n
        self.ctx = mp.get_context("spawn")
        self.procs: list = []
        self.conns: list = []
        self.latest: list[dict] = []
        self.inbox: list[list] = []
        per = -(-n // procs)
        for p in range(procs):
            first, count = p * per, min(per, n - p * per)
            if count <= 0:
                break
            cfg = SimConfig(target, first, count, per_channel=per_channel, held=dict(held or {}),
                            connect_concurrency=connect_concurrency, report_batch=report_batch,
                            backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s)
            a, b = self.ctx.Pipe()
            proc = self.ctx.Process(target=_agent_process, args=(cfg, b), daemon=True, name=f"agents{p}")
            proc.start()
            b.close()
            self.procs.append(proc)
            self.conns.append(a)
            self.latest.append({})
            self.inbox.append([])

    def pump(self, timeout: float = 0.05) -> None:
        from multiprocessing.connection import wait

        for c in wait(self.conns, timeout):
            k = self.conns.index(c)
            while c.poll():
                try:
                    kind, val = c.recv()
                except EOFError:
                    break
                if kind in ("status", "stopped"):
                    self.latest[k] = val
                else:
                    self.inbox[k].append((kind, val))

    def status(self) -> dict:
        self.pump(0)
        out = {"resynced": 0, "resyncs": 0, "resync_upserts": 0, "outbox": 0, "reports_created": 0, "errors": 0,
               "acked": {}, "last_resync": 0.0}
        for s in self.latest:
            for k in ("resynced", "resyncs", "resync_upserts", "outbox", "reports_created", "errors"):
                out[k] += s.get(k, 0)
            out["last_resync"] = max(out["last_resync"], s.get("last_resync", 0.0))
            for key, v in s.get("acked", {}).items():
                out["acked"][key] = out["acked"].get(key, 0) + v
        return out

    def wait_until(self, pred, timeout: float, every: float = 5.0, what: str = "") -> bool:
        t0 = time.time()
        last_log = t0
        while time.time() - t0 < timeout:
            self.pump(0.05)
            st = self.status()
            if pred(st):
                return True
            if time.time() - last_log > every:
                last_log = time.time()
                log.info("waiting %s: resynced=%d resyncs=%d outbox=%d errors=%d", what, st["resynced"],
                         st["resyncs"], st["outbox"], st["errors"])
            if any(not p.is_alive() for p in self.procs):
                raise RuntimeError("an agent process died")
        return False

    def broadcast(self, *cmd) -> None:
        for c in self.conns:
            c.send(cmd)

    def ask(self, cmd: tuple, kind: str, timeout: float = 60.0) -> list:
        for k in range(len(self.conns)):
            self.inbox[k] = [m for m in self.inbox[k] if m[0] != kind]
        self.broadcast(*cmd)
        t0 = time.time()
        while time.time() - t0 < timeout:
            self.pump(0.05)
            if all(any(m[0] == kind for m in box) for box in self.inbox):
                res = []
                for box in self.inbox:
                    res.extend(next(m[1] for m in box if m[0] == kind))
                return res
        raise TimeoutError(f"agents did not answer {cmd[0]}")

    def stop(self) -> dict:
        with contextlib.suppress(Exception):
            self.broadcast("stop")
        t0 = time.time()
        for p in self.procs:
            p.join(max(0.1, 20 - (time.time() - t0)))
        self.pump(0)
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join()
        return self.status()
