"""The agent's one connection to the hub: dial out, hello + resync, apply and
ack desired state, heartbeat, and drain the durable outbox.

The agent always initiates, so it works behind NAT. When the hub is away the
agent keeps serving what it last applied (persisted in `LocalState`) and keeps
queueing reports; on reconnect it tells the hub what it holds ({id: version})
and receives only what changed, then resends every report not yet
acknowledged. Reconnects back off exponentially with full jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct

from edge_agent.config import AgentConfig
from edge_agent.inventory import Inventory
from edge_agent.state import LocalObject, LocalState
from protos.fleet.v1 import agent_pb2, agent_pb2_grpc, types_pb2

log = logging.getLogger(__name__)
AGENT_VERSION = "0.1.0"


class Applier(Protocol):
    """Makes one kind of desired object real on this node (e.g. start a model)."""

    def apply(self, obj: LocalObject, previous: LocalObject | None) -> None: ...
    def remove(self, obj: LocalObject) -> None: ...


class RecordOnly:
    """For kinds that need no action beyond being held (e.g. Config)."""

    def apply(self, obj: LocalObject, previous: LocalObject | None) -> None:
        return None

    def remove(self, obj: LocalObject) -> None:
        return None


def backoff_delay(attempt: int, initial: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff (AWS architecture blog): U(0, min(cap, initial*2^attempt))."""
    return rng.uniform(0, min(cap, initial * (2 ** min(attempt, 30))))


@dataclass
class LinkStatus:
    connected: bool = False
    session_id: str = ""
    connects: int = 0
    last_error: str = ""
    resynced: asyncio.Event = field(default_factory=asyncio.Event)
    recent_errors: list[str] = field(default_factory=list)

    def error(self, msg: str) -> None:
        self.last_error = msg
        self.recent_errors = [*self.recent_errors[-9:], msg]


class HubLink:
    def __init__(
        self,
        cfg: AgentConfig,
        state: LocalState,
        inventory: Callable[[], Inventory],
        appliers: dict[str, Applier] | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.state = state
        self.inventory = inventory
        self.appliers = appliers or {}
        self.rng = rng or random.Random()
        self.status = LinkStatus()
        self._stop = asyncio.Event()
        self._outbox_wake = asyncio.Event()
        self._inventory_changed = asyncio.Event()
        self._sent_inventory: dict | None = None
        self.on_applied: Callable[[LocalObject], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- public -------------------------------------------------------------

    def report(self, kind: str, payload: dict) -> int:
        """Durably queue a report for the hub (safe from any thread)."""
        seq = self.state.append(kind, payload, time.time())
        self.wake_outbox()
        return seq

    def wake_outbox(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._outbox_wake.set()
        else:
            loop.call_soon_threadsafe(self._outbox_wake.set)

    def inventory_changed(self) -> None:
        """Tell the hub at once (e.g. the node was cordoned)."""
        self._inventory_changed.set()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Connect, serve the stream, reconnect with backoff; until stop()."""
        self._loop = asyncio.get_running_loop()
        attempt = 0
        while not self._stop.is_set():
            welcomed = False
            try:
                welcomed = await self._until_stopped(self._session())
            except grpc.aio.AioRpcError as exc:
                msg = f"{exc.code().name}: {exc.details()}"
                self.status.error(msg)
                level = logging.ERROR if exc.code() in (
                    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED
                ) else logging.WARNING
                log.log(level, "hub link to %s lost: %s", self.cfg.hub, msg)
            except Exception as exc:  # noqa: BLE001 - the link loop never dies
                self.status.error(repr(exc))
                log.exception("hub link failed")
            finally:
                self.status.connected = False
            if self._stop.is_set():
                break
            attempt = 0 if welcomed else attempt + 1
            delay = backoff_delay(attempt, self.cfg.backoff_initial_s, self.cfg.backoff_max_s, self.rng)
            log.debug("reconnecting in %.2fs (attempt %d)", delay, attempt)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop.wait()

    async def _until_stopped(self, work: Coroutine[Any, Any, bool]) -> bool:
        """Run one session, cancelling it as soon as stop() is called.

        Without this a session still dialling (a hub that drops packets: up to
        gRPC's 20 s connect timeout) or saying hello delays the agent's exit on
        SIGTERM. Cancelling is safe: reports leave the outbox only when acked.
        """
        session = asyncio.ensure_future(work)
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({session, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not session.done():
                session.cancel()
            await asyncio.gather(stopped, return_exceptions=True)
        if session.cancelled() or (self._stop.is_set() and not session.done()):
            with contextlib.suppress(asyncio.CancelledError):
                await session
            return False
        return await session

    # -- one stream ---------------------------------------------------------

    def _channel(self) -> grpc.aio.Channel:
        opts = [
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            # We do our own jittered backoff; no hidden retries underneath.
            ("grpc.enable_retries", 0),
        ]
        if self.cfg.insecure:
            return grpc.aio.insecure_channel(self.cfg.hub, options=opts)
        assert self.cfg.ca and self.cfg.cert and self.cfg.key
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.cfg.ca.read_bytes(),
            private_key=self.cfg.key.read_bytes(),
            certificate_chain=self.cfg.cert.read_bytes(),
        )
        if self.cfg.server_name:
            opts.append(("grpc.ssl_target_name_override", self.cfg.server_name))
        return grpc.aio.secure_channel(self.cfg.hub, creds, options=opts)

    def _hello(self) -> agent_pb2.AgentMessage:
        inv = self.inventory().as_dict()
        self._sent_inventory = inv
        pb_inv = types_pb2.Inventory()
        json_format.ParseDict(inv, pb_inv)
        return agent_pb2.AgentMessage(
            hello=agent_pb2.Hello(
                identity=types_pb2.AgentIdentity(site=self.cfg.site, node=self.cfg.node, agent_version=AGENT_VERSION),
                inventory=pb_inv,
                held=self.state.held(),
            )
        )

    async def _session(self) -> bool:
        async with self._channel() as channel:
            call = agent_pb2_grpc.AgentLinkStub(channel).Connect()
            outq: asyncio.Queue[agent_pb2.AgentMessage] = asyncio.Queue()
            await call.write(self._hello())
            first = await call.read()
            if first is grpc.aio.EOF or first.WhichOneof("msg") != "welcome":
                await call.done_writing()
                raise ConnectionError("hub did not answer hello with welcome")
            interval = max(0.05, first.welcome.heartbeat_interval.ToTimedelta().total_seconds() or 5.0)
            self.status.connected = True
            self.status.session_id = first.welcome.session_id
            self.status.connects += 1
            log.info("connected to hub %s (session %s)", self.cfg.hub, first.welcome.session_id[:8])
            inflight: dict[int, int] = {}  # seq -> batch id, sent but not acked
            tasks = [
                asyncio.create_task(self._writer(call, outq)),
                asyncio.create_task(self._reader(call, outq, inflight)),
                asyncio.create_task(self._heartbeats(outq, interval)),
                asyncio.create_task(self._sender(outq, inflight)),
            ]
            stop = asyncio.create_task(self._stop.wait())
            try:
                done, _ = await asyncio.wait([*tasks, stop], return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    if t is not stop and t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
            finally:
                for t in [*tasks, stop]:
                    t.cancel()
                await asyncio.gather(*tasks, stop, return_exceptions=True)
                call.cancel()
            return True

    async def _writer(self, call, outq: asyncio.Queue) -> None:
        while True:
            await call.write(await outq.get())

    async def _reader(self, call, outq: asyncio.Queue, inflight: dict[int, int]) -> None:
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                return
            kind = msg.WhichOneof("msg")
            if kind == "desired":
                # Appliers may take long (loading and warming a model, a
                # Kubernetes call): off the loop, so heartbeats and reports go on.
                # Updates still apply one at a time, in order.
                for ack in await asyncio.to_thread(self._apply, msg.desired):
                    outq.put_nowait(agent_pb2.AgentMessage(applied=ack))
                if msg.desired.resync_complete:
                    self.status.resynced.set()
            elif kind == "report_ack":
                seqs = list(msg.report_ack.seqs)
                self.state.ack(seqs)
                for s in seqs:
                    inflight.pop(s, None)
                self._outbox_wake.set()

    def _apply(self, upd: agent_pb2.DesiredUpdate) -> list[agent_pb2.Applied]:
        acks = []
        for o in upd.upserts:
            obj = LocalObject(o.id, o.kind, o.name, o.version, json_format.MessageToDict(o.spec))
            prev = self.state.get(o.id)
            if prev is not None and prev.version >= obj.version:
                acks.append(agent_pb2.Applied(object_id=o.id, version=prev.version, ok=True))
                continue
            try:
                self.appliers.get(o.kind, RecordOnly()).apply(obj, prev)
            except Exception as exc:  # noqa: BLE001 - reported to the hub, old version kept
                log.warning("applying %s/%s v%d failed: %s", o.kind, o.name, o.version, exc)
                self.status.error(f"{o.kind}/{o.name} v{o.version}: {exc}")
                acks.append(agent_pb2.Applied(object_id=o.id, version=o.version, ok=False, error=str(exc)[:2000]))
                continue
            self.state.save(obj)
            self.report("event", {"reason": "Applied", "kind": o.kind, "name": o.name, "version": o.version})
            acks.append(agent_pb2.Applied(object_id=o.id, version=o.version, ok=True))
            if self.on_applied:
                self.on_applied(obj)
        for object_id in upd.deletes:
            prev = self.state.get(object_id)
            if prev is not None:
                try:
                    self.appliers.get(prev.kind, RecordOnly()).remove(prev)
                except Exception as exc:  # noqa: BLE001
                    log.warning("removing %s/%s failed: %s", prev.kind, prev.name, exc)
                    self.status.error(f"remove {prev.kind}/{prev.name}: {exc}")
                    acks.append(agent_pb2.Applied(object_id=object_id, deleted=True, ok=False, error=str(exc)[:2000]))
                    continue
                self.state.remove(object_id)
                self.report("event", {"reason": "Removed", "kind": prev.kind, "name": prev.name})
            acks.append(agent_pb2.Applied(object_id=object_id, deleted=True, ok=True))
        return acks

    async def _heartbeats(self, outq: asyncio.Queue, interval: float) -> None:
        while True:
            hb = agent_pb2.Heartbeat()
            hb.sent_at.GetCurrentTime()
            inv = self.inventory().as_dict()
            if inv != self._sent_inventory:
                json_format.ParseDict(inv, hb.inventory)
                self._sent_inventory = inv
            hb.recent_errors.extend(self.status.recent_errors)
            outq.put_nowait(agent_pb2.AgentMessage(heartbeat=hb))
            self._inventory_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._inventory_changed.wait()

    async def _sender(self, outq: asyncio.Queue, inflight: dict[int, int]) -> None:
        """Send unacknowledged reports in order, at most `report_window` batches ahead."""
        sent_through = 0
        batch_id = 0
        while True:
            self._outbox_wake.clear()
            while len(set(inflight.values())) < self.cfg.report_window:
                pending = self.state.pending(sent_through, self.cfg.report_batch)
                if not pending:
                    break
                batch_id += 1
                batch = agent_pb2.ReportBatch()
                for p in pending:
                    r = batch.reports.add(seq=p.seq, kind=p.kind)
                    r.created_at.FromNanoseconds(int(p.created_at * 1e9))
                    payload = Struct()
                    payload.update(p.payload)
                    r.payload.CopyFrom(payload)
                    inflight[p.seq] = batch_id
                sent_through = pending[-1].seq
                outq.put_nowait(agent_pb2.AgentMessage(reports=batch))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._outbox_wake.wait()
