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
import math
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct

from edge_agent.cancel import Cancelled, CancelToken
from edge_agent.config import AgentConfig
from edge_agent.inventory import Inventory
from edge_agent.report_check import report_problem
from edge_agent.state import LocalObject, LocalState, PendingReport
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


POLICY_KINDS = frozenset({"SiteLocation", "ResidencyPolicy", "PriorityClass"})
"""Kinds applied as soon as they arrive, never queued behind a model load: they decide who is let in."""


class _Deleted:
    def __repr__(self) -> str:
        return "<delete>"


_DELETE = _Deleted()


@dataclass
class _Lane:
    """One object's pending work: what is being applied, what comes next, and how to cancel it."""

    next: LocalObject | _Deleted | None = None
    current: LocalObject | _Deleted | None = None
    token: CancelToken | None = None
    superseded: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None


def _settle(fut: asyncio.Future, result: object) -> None:
    if fut.done():
        return
    if isinstance(result, BaseException):
        fut.set_exception(result)
    else:
        fut.set_result(result)


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
        self._redial = asyncio.Event()
        self._outbox_wake = asyncio.Event()
        self._inventory_changed = asyncio.Event()
        self._sent_inventory: dict | None = None
        self.on_applied: Callable[[LocalObject], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lanes: dict[str, _Lane] = {}
        """Object id -> its pending non-policy work (a model load), see _enqueue."""
        self._lane_waiters: list[Callable[[], None]] = []
        self._acks: asyncio.Queue | None = None
        """The current session's outgoing queue: lanes that finish after a reconnect ack there."""

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

    def reconnect(self) -> None:
        """End the current session; the run loop dials again at once (e.g. with a renewed certificate)."""
        self._redial.set()

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
        await self._close_lanes()

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
                incarnation=self.state.incarnation,
            )
        )

    async def _session(self) -> bool:
        self._redial.clear()  # this session dials with the credentials on disk now
        async with self._channel() as channel:
            call = agent_pb2_grpc.AgentLinkStub(channel).Connect()
            outq: asyncio.Queue[agent_pb2.AgentMessage] = asyncio.Queue()
            await call.write(self._hello())
            first = await call.read()
            if first is grpc.aio.EOF or first.WhichOneof("msg") != "welcome":
                await call.done_writing()
                raise ConnectionError("hub did not answer hello with welcome")
            interval = max(0.05, first.welcome.heartbeat_interval.ToTimedelta().total_seconds() or 5.0)
            # Before anything is sent: no new report may reuse a seq the hub already
            # stored for this incarnation (it would be dropped as a duplicate).
            hub_last = first.welcome.last_report_seq
            own_last = self.state.last_seq()
            moved = self.state.resume_after(hub_last)
            if hub_last > own_last:
                log.warning(
                    "the hub stored reports through seq %d of this agent's incarnation but its own counter was at %d "
                    "(local state restored from an older copy?): continuing after %d, %d queued reports renumbered",
                    hub_last, own_last, hub_last, moved,
                )
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
            redial = asyncio.create_task(self._redial.wait())
            try:
                done, _ = await asyncio.wait([*tasks, stop, redial], return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    if t not in (stop, redial) and t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
            finally:
                for t in [*tasks, stop, redial]:
                    t.cancel()
                await asyncio.gather(*tasks, stop, redial, return_exceptions=True)
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
                # Policy objects apply here and now (a stricter policy is in force before the next
                # message is read); everything else (a model load) runs on its object's own lane,
                # so nothing waits behind it. See _apply.
                self._acks = outq
                for ack in self._apply(msg.desired):
                    outq.put_nowait(agent_pb2.AgentMessage(applied=ack))
                if msg.desired.resync_complete:
                    self._after_lanes(self.status.resynced.set)
            elif kind == "report_ack":
                seqs = list(msg.report_ack.seqs)
                self.state.ack(seqs)
                for s in seqs:
                    inflight.pop(s, None)
                self._outbox_wake.set()

    def _apply(self, upd: agent_pb2.DesiredUpdate) -> list[agent_pb2.Applied]:
        """Apply one update: policy kinds at once (their acks returned), the rest handed to lanes.

        Called on the event loop. Policy objects (:data:`POLICY_KINDS`) are quick to apply and
        must never wait behind a model load, so they are applied here, in message order; their
        acks are returned. Every other object goes to its own lane (:meth:`_enqueue`), which
        acks it when done.
        """
        acks: list[agent_pb2.Applied] = []
        for o in upd.upserts:
            obj = LocalObject(o.id, o.kind, o.name, o.version, json_format.MessageToDict(o.spec))
            if o.kind in POLICY_KINDS:
                acks.append(self._upsert(obj))
            else:
                self._enqueue(o.id, obj)
        for object_id in upd.deletes:
            prev = self.state.get(object_id)
            lane = self._lanes.get(object_id)
            if lane is not None or (prev is not None and prev.kind not in POLICY_KINDS):
                self._enqueue(object_id, None)
            else:
                acks.append(self._delete(object_id, prev))
        return acks

    # -- applying, one object at a time ---------------------------------------------------

    def _upsert(self, obj: LocalObject, cancel: CancelToken | None = None) -> agent_pb2.Applied:
        """Apply one object (any thread) and record it as held; the ack says whether it applied."""
        prev = self.state.get(obj.id)
        if prev is not None and prev.version >= obj.version:
            return agent_pb2.Applied(object_id=obj.id, version=prev.version, ok=True)
        applier = self.appliers.get(obj.kind, RecordOnly())
        try:
            if cancel is not None and getattr(applier, "cancellable", False):
                applier.apply(obj, prev, cancel=cancel)  # type: ignore[call-arg]
            else:
                applier.apply(obj, prev)
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - reported to the hub, old version kept
            log.warning("applying %s/%s v%d failed: %s", obj.kind, obj.name, obj.version, exc)
            self.status.error(f"{obj.kind}/{obj.name} v{obj.version}: {exc}")
            return agent_pb2.Applied(object_id=obj.id, version=obj.version, ok=False, error=str(exc)[:2000])
        self.state.save(obj)
        self.report("event", {"reason": "Applied", "kind": obj.kind, "name": obj.name, "version": obj.version})
        if self.on_applied:
            self.on_applied(obj)
        return agent_pb2.Applied(object_id=obj.id, version=obj.version, ok=True)

    def _delete(self, object_id: str, prev: LocalObject | None) -> agent_pb2.Applied:
        if prev is not None:
            try:
                self.appliers.get(prev.kind, RecordOnly()).remove(prev)
            except Exception as exc:  # noqa: BLE001
                log.warning("removing %s/%s failed: %s", prev.kind, prev.name, exc)
                self.status.error(f"remove {prev.kind}/{prev.name}: {exc}")
                return agent_pb2.Applied(object_id=object_id, deleted=True, ok=False, error=str(exc)[:2000])
            self.state.remove(object_id)
            self.report("event", {"reason": "Removed", "kind": prev.kind, "name": prev.name})
        return agent_pb2.Applied(object_id=object_id, deleted=True, ok=True)

    def _enqueue(self, object_id: str, obj: LocalObject | None) -> None:
        """Give an object's lane its newest desired state (None: delete), superseding older work.

        A load in flight for an older version (or for an object now deleted) is cancelled and
        its result thrown away; it gets no ack (a newer one follows). The same version again
        (a resync after a reconnect) leaves a load in flight alone.
        """
        lane = self._lanes.get(object_id)
        if lane is None:
            lane = self._lanes[object_id] = _Lane()
        current = lane.current
        if (obj is not None and current is not None and current is not _DELETE and lane.next is None
                and current.version == obj.version):
            return
        lane.next = obj if obj is not None else _DELETE
        if lane.token is not None and lane.token.cancel(
                f"superseded by version {obj.version}" if obj is not None else "the object was deleted"):
            lane.superseded.set()
        if lane.task is None or lane.task.done():
            lane.task = asyncio.get_running_loop().create_task(self._run_lane(object_id, lane))

    async def _run_lane(self, object_id: str, lane: _Lane) -> None:
        """Apply an object's desired states in order, newest wins; acks go to the current session."""
        try:
            while lane.next is not None:
                op, lane.next = lane.next, None
                lane.current = op
                if op is _DELETE:
                    ack = await asyncio.to_thread(self._delete, object_id, self.state.get(object_id))
                else:
                    ack = await self._load(op, lane)
                lane.current, lane.token = None, None
                if ack is not None and self._acks is not None:
                    self._acks.put_nowait(agent_pb2.AgentMessage(applied=ack))
        except Exception:  # noqa: BLE001 - a lane never takes the link down
            log.exception("applying object %s failed", object_id)
        finally:
            lane.current = None
            if lane.next is None and self._lanes.get(object_id) is lane:
                del self._lanes[object_id]
            self._lanes_idle()

    async def _load(self, obj: LocalObject, lane: _Lane) -> agent_pb2.Applied | None:
        """Apply ``obj`` off the loop, bounded by ``model_load_timeout_s``; None when superseded.

        A load that hangs in torch cannot be interrupted: it is abandoned (its token cancelled,
        its result thrown away by the applier when it comes) and its executor thread stays busy
        until the load returns. Policy objects never need that executor (they apply on the loop).
        """
        loop = asyncio.get_running_loop()
        token = lane.token = CancelToken()
        lane.superseded = asyncio.Event()
        done: asyncio.Future[agent_pb2.Applied] = loop.create_future()

        def work() -> None:
            try:
                result: object = self._upsert(obj, token)
            except BaseException as exc:  # noqa: BLE001 - handed to the loop
                result = exc
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(_settle, done, result)

        loop.run_in_executor(None, work)  # work() never raises: its outcome goes to `done`
        superseded = asyncio.ensure_future(lane.superseded.wait())
        try:
            await asyncio.wait([done, superseded], timeout=self.cfg.model_load_timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the agent is stopping: the thread's result goes nowhere
            token.cancel("the agent is stopping")
            done.cancel()
            raise
        finally:
            superseded.cancel()
        if not done.done():
            timeout = self.cfg.model_load_timeout_s
            if token.cancel(f"not done within model_load_timeout_s {timeout:g}s"):
                done.cancel()  # the abandoned thread's result, when it comes, goes nowhere
                if lane.superseded.is_set():
                    log.info("%s/%s v%d: superseded while applying (%s)", obj.kind, obj.name, obj.version,
                             token.reason)
                    return None
                prev = self.state.get(obj.id)
                keeps = f"version {prev.version} keeps serving" if prev is not None else "nothing was serving it"
                msg = (f"{obj.kind}/{obj.name} v{obj.version}: not applied within {timeout:g}s "
                       f"(--model-load-timeout); abandoned, {keeps}")
                log.error("%s", msg)
                self.status.error(msg)
                self.report("event", {"reason": "ApplyTimedOut", "kind": obj.kind, "name": obj.name,
                                      "version": obj.version, "error": msg})
                return agent_pb2.Applied(object_id=obj.id, version=obj.version, ok=False, error=msg[:2000])
            # It committed just as we gave up: its result stands; wait for its ack.
        try:
            return await done
        except Cancelled:
            return None

    def _after_lanes(self, then: Callable[[], None]) -> None:
        """Run ``then`` once every lane running now has finished (at once when none runs)."""
        if not self._lanes:
            then()
        else:
            self._lane_waiters.append(then)

    def _lanes_idle(self) -> None:
        if self._lanes:
            return
        waiters, self._lane_waiters = self._lane_waiters, []
        for then in waiters:
            then()

    async def _close_lanes(self) -> None:
        """At stop: abandon loads in flight and wait for the lanes' tasks to end."""
        tasks = []
        for lane in list(self._lanes.values()):
            if lane.token is not None and lane.token.cancel("the agent is stopping"):
                lane.superseded.set()
            lane.next = None
            if lane.task is not None:
                tasks.append(lane.task)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

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
        """Send unacknowledged reports in order, at most `report_window` batches ahead.

        A report the hub could not store (`report_problem`) is never sent: it goes to
        the dead-letter table, once, with a log line and an entry in recent_errors.
        """
        sent_through = 0
        batch_id = 0
        while True:
            self._outbox_wake.clear()
            while len(set(inflight.values())) < self.cfg.report_window:
                pending = self.state.pending(sent_through, self.cfg.report_batch)
                if not pending:
                    break
                sent_through = pending[-1].seq
                batch = agent_pb2.ReportBatch()
                for p in pending:
                    r = self._encode(p)
                    if r is not None:
                        batch.reports.append(r)
                if not batch.reports:
                    continue
                batch_id += 1
                for r in batch.reports:
                    inflight[r.seq] = batch_id
                outq.put_nowait(agent_pb2.AgentMessage(reports=batch))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._outbox_wake.wait()

    def _encode(self, p: PendingReport) -> types_pb2.Report | None:
        """The report as sent, or None after setting it aside as a dead letter."""
        problem = report_problem(p)
        if problem is None:
            try:
                r = types_pb2.Report(seq=p.seq, kind=p.kind)
                secs = math.floor(p.created_at)
                r.created_at.seconds = secs
                r.created_at.nanos = min(999_999_999, int((p.created_at - secs) * 1e9))
                payload = Struct()
                payload.update(p.payload)
                r.payload.CopyFrom(payload)
                return r
            except (ValueError, TypeError, OverflowError) as exc:
                problem = f"report seq {p.seq}: cannot be encoded: {exc}"
        self.state.dead_letter(p.seq, problem)
        log.error("report set aside, never to be sent (dead letter %d in %s): %s",
                  self.state.dead_letter_count(), self.state.path, problem)
        self.status.error(f"dead letter: {problem}")
        return None
