"""The agent-facing stream (`AgentLink.Connect`): hello, resync, desired-state
push, applied acks, heartbeats and exactly-once report ingestion.

One `Session` per connected agent. A `Broker` per hub process watches the
store's version counter and hands every change to the sessions it concerns,
so hub processes that share one database all push what any of them wrote.
Heartbeats and applied-acks are batched by a `Recorder` (thousands arrive per
second); reports are stored before they are acknowledged, one transaction per
batch, de-duplicated by (node, incarnation, seq): the incarnation, sent in the
Hello, names the agent's report stream, which starts again at seq 1 when the
agent has lost its local state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc
from google.protobuf.duration_pb2 import Duration

from hub import convert
from hub.config import Limits
from hub.security.certs import identity_from_pem
from hub.store import Store
from hub.store.repo import AppliedRecord, Heartbeat, IncomingReport, NodeRecord, ObjectRecord, ReportBatch, StoredReports
from hub.sync import Delta, delta_for, resync
from protos.fleet.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)
WRITE_DRAIN_S = 1.0  # how long a closing stream waits for a write in flight


def _now() -> datetime:
    return datetime.now(UTC)


class StreamError(Exception):
    """Ends one agent's stream with a gRPC status; other agents are unaffected."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.stamp = float(burst), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass(eq=False)
class Session:
    site: str
    node: str
    node_id: int
    held: dict[str, int]
    queue: asyncio.Queue[agent_pb2.HubMessage]
    incarnation: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_reason: StreamError | None = None
    # What this stream was told, so that an agent acknowledges only that:
    # object id -> highest version sent (or held and meant, per the Hello), and
    # ids it was told to delete.
    sent: dict[str, int] = field(default_factory=dict)
    sent_deletes: set[str] = field(default_factory=set)

    def close(self, reason: StreamError) -> None:
        if not self.closed.is_set():
            self.close_reason = reason
            self.closed.set()

    def send(self, msg: agent_pb2.HubMessage) -> None:
        try:
            self.queue.put_nowait(msg)
        except asyncio.QueueFull:
            self.close(StreamError(grpc.StatusCode.RESOURCE_EXHAUSTED, "agent is not reading its stream; closing it"))

    def push(
        self, delta: Delta, *, resync_complete: bool = False, msg: agent_pb2.HubMessage | None = None
    ) -> None:
        """Queue a delta and remember what the agent will hold after applying it.

        `msg` is the delta already converted (`update_message`), so a broadcast
        builds one message for all sessions instead of one per session.
        """
        for o in delta.upserts:
            self.held[o.id] = o.version
            if o.version > self.sent.get(o.id, 0):
                self.sent[o.id] = o.version
        for i in delta.deletes:
            self.held.pop(i, None)
            self.sent_deletes.add(i)
        self.send(msg if msg is not None else update_message(delta, resync_complete=resync_complete))


def update_message(delta: Delta, *, resync_complete: bool = False) -> agent_pb2.HubMessage:
    upd = agent_pb2.DesiredUpdate(
        upserts=[convert.object_to_proto(o) for o in delta.upserts],
        deletes=list(delta.deletes),
        resync_complete=resync_complete,
    )
    return agent_pb2.HubMessage(desired=upd)


class Broker:
    """Hands desired-state changes to the sessions of this hub process.

    It also keeps the live desired objects in memory, indexed by target, as of
    `version`: a Hello's resync reads them from here instead of the store (a
    reconnect storm of thousands of agents would otherwise queue one query
    each on the database). The cache and the sessions change together in
    `dispatch`, with no await in between, so an agent that attaches and reads
    its snapshot in one step misses nothing and gets nothing twice.
    """

    GONE_KEPT = 10_000

    def __init__(self, store: Store, poll_interval: float) -> None:
        self.store = store
        self.poll_interval = poll_interval
        self.sessions: dict[tuple[str, str], Session] = {}
        self.version = 0
        self._wake = asyncio.Event()
        self._live: dict[str, ObjectRecord] = {}
        self._by_target: dict[tuple[str, str], dict[str, ObjectRecord]] = {}
        self._stopping = False
        # Objects deleted while this process watched, newest last (bounded): an
        # agent may still acknowledge one it was applying when it was deleted.
        self._gone: OrderedDict[str, ObjectRecord] = OrderedDict()

    async def start(self) -> None:
        # Version first: objects written in between are read here *and* come
        # again from changed_since(version), which is harmless (same version).
        self.version = await self.store.current_version()
        self._remember(await self.store.live_objects())

    def _remember(self, changed: Iterable[ObjectRecord]) -> None:
        for o in changed:
            old = self._live.pop(o.id, None)
            if old is not None:
                self._by_target.get((old.target_site, old.target_node), {}).pop(o.id, None)
            if not o.deleted:
                self._live[o.id] = o
                self._by_target.setdefault((o.target_site, o.target_node), {})[o.id] = o
                self._gone.pop(o.id, None)
            else:
                self._gone[o.id] = o  # a tombstone keeps its targets
                self._gone.move_to_end(o.id)
                while len(self._gone) > self.GONE_KEPT:
                    self._gone.popitem(last=False)

    def was_meant_for(self, object_id: str, site: str, node: str, version: int | None = None) -> bool:
        """Whether an object (up to ``version``, if given) is, or when deleted lately was, meant for a node."""
        o = self._live.get(object_id) or self._gone.get(object_id)
        return o is not None and o.targets(site, node) and (version is None or 0 < version <= o.version)

    def objects_for(self, site: str, node: str) -> list[ObjectRecord]:
        """Live objects meant for one node, in version order (as `Store.objects_for`)."""
        out: list[ObjectRecord] = []
        for key in {("", ""), (site, ""), ("", node), (site, node)}:
            out.extend(self._by_target.get(key, {}).values())
        out.sort(key=lambda o: o.version)
        return out

    def attach(self, s: Session) -> None:
        old = self.sessions.get((s.site, s.node))
        if old is not None:
            old.close(StreamError(grpc.StatusCode.ABORTED, "a newer stream from the same node replaced this one"))
        self.sessions[(s.site, s.node)] = s

    def detach(self, s: Session) -> bool:
        """Remove a session; True if it was still the node's current one."""
        if self.sessions.get((s.site, s.node)) is s:
            del self.sessions[(s.site, s.node)]
            return True
        return False

    def poke(self) -> None:
        """Look for changes now instead of at the next poll (after a local write)."""
        self._wake.set()

    def dispatch(self, changed: list[ObjectRecord]) -> None:
        self._remember(changed)
        # Most sessions get the same delta (an object for every node): convert
        # each distinct delta to protobuf once. Messages are immutable once
        # queued, so sessions may share one.
        built: dict[tuple, agent_pb2.HubMessage] = {}
        for s in list(self.sessions.values()):
            d = delta_for(s.site, s.node, s.held, changed)
            if d:
                key = (tuple((o.id, o.version) for o in d.upserts), d.deletes)
                msg = built.get(key)
                if msg is None:
                    msg = built[key] = update_message(d)
                s.push(d, msg=msg)

    def stop(self) -> None:
        """End :meth:`run` after the poll in flight, if any (cancelling a query mid-way can leave its
        database connection to be closed by the garbage collector)."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                current = await self.store.current_version()
                if current > self.version:
                    changed = await self.store.changed_since(self.version)
                    if changed:
                        self.version = max(o.version for o in changed)
                        self.dispatch(changed)
            except Exception:  # control loops never die
                log.exception("broker: polling the store failed; retrying")
                await asyncio.sleep(self.poll_interval)


class Recorder:
    """Batches heartbeats and applied-acks into one transaction per interval."""

    def __init__(self, store: Store, interval: float) -> None:
        self.store = store
        self.interval = interval
        self.beats: dict[int, Heartbeat] = {}
        self.acks: list[AppliedRecord] = []
        self.deletions: list[tuple[int, str]] = []
        self._stop = asyncio.Event()

    def heartbeat(self, hb: Heartbeat) -> None:
        prev = self.beats.get(hb.node_id)
        if prev is not None and hb.inventory is None and hb.recent_errors is None:
            hb = Heartbeat(hb.node_id, hb.at, prev.inventory, prev.recent_errors)
        self.beats[hb.node_id] = hb

    def applied(self, ack: AppliedRecord) -> None:
        self.acks.append(ack)

    def deleted(self, node_id: int, object_id: str) -> None:
        self.deletions.append((node_id, object_id))

    async def flush(self) -> None:
        beats, self.beats = list(self.beats.values()), {}
        acks, self.acks = self.acks, []
        dels, self.deletions = self.deletions, []
        if beats:
            await self.store.record_heartbeats(beats)
        if acks or dels:
            await self.store.record_applied(acks, dels)

    def stop(self) -> None:
        """End :meth:`run` after the flush in flight, if any; the caller flushes what is left."""
        self._stop.set()

    async def run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._stop.wait()
            if self._stop.is_set():
                return
            try:
                await self.flush()
            except Exception:
                log.exception("recorder: writing heartbeats/acks failed; will retry with the next batch")


@dataclass(frozen=True, slots=True)
class NodeHello:
    site: str
    node: str
    agent_version: str
    inventory: dict
    incarnation: str


class Registrar:
    """Registers the nodes of Hellos in batches: every agent that says hello in
    the same moment (a reconnect storm after a hub restart) shares one
    transaction instead of queueing one each on the store's connection."""

    MAX_BATCH = 500

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending: list[tuple[NodeHello, asyncio.Future]] = []
        self._task: asyncio.Task | None = None

    async def register(self, h: NodeHello) -> tuple[NodeRecord, int]:
        """The node's record and the highest report seq stored for its incarnation."""
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.append((h, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="hello-registrar")
        return await fut

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # Hellos that arrive in this turn of the loop join the batch
        while self._pending:
            batch, self._pending = self._pending[: self.MAX_BATCH], self._pending[self.MAX_BATCH:]
            live = [(h, f) for h, f in batch if not f.done()]  # a cancelled stream needs nothing
            if not live:
                continue
            try:
                got = await self.store.register_nodes(
                    [(h.site, h.node, h.agent_version, h.inventory, h.incarnation) for h, _ in live], _now())
            except Exception as exc:  # noqa: BLE001 - each waiting stream reports it
                for _, f in live:
                    if not f.done():
                        f.set_exception(exc)
                continue
            for h, f in live:
                if not f.done():
                    f.set_result(got[(h.site, h.node, h.incarnation)])


class ReportWriter:
    """Group commit for report batches: the batches of every stream that arrive while one write is in
    flight are stored together in the next transaction (`Store.store_report_batches`), instead of one
    transaction each queueing on the store's connections.

    Each caller still learns exactly what of its own batch was new, and only after the transaction
    that stored it has committed (the agent is acknowledged then, as before). A batch whose stream
    (node, incarnation) is already in the group waits for the next one, so a row belongs to one batch.
    If a group's transaction fails, its batches are tried again one by one: a batch the database
    refuses fails only its own stream.
    """

    MAX_RECORDS = 20_000  # per transaction; a bigger group waits for the next one

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending: list[tuple[ReportBatch, asyncio.Future]] = []
        self._task: asyncio.Task | None = None

    async def write(self, node_id: int, incarnation: str, reports: list[IncomingReport],
                    received_at: datetime) -> StoredReports:
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.append((ReportBatch(node_id, incarnation, reports, received_at), fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="report-writer")
        return await fut

    def _next_group(self) -> list[tuple[ReportBatch, asyncio.Future]]:
        group: list[tuple[ReportBatch, asyncio.Future]] = []
        rest: list[tuple[ReportBatch, asyncio.Future]] = []
        streams: set[tuple[int, str]] = set()
        records = 0
        for item in self._pending:
            b, f = item
            if f.done():  # its stream was cancelled before the write began: the agent resends it
                continue
            key = (b.node_id, b.incarnation)
            if key in streams or (group and records + len(b.reports) > self.MAX_RECORDS):
                rest.append(item)
                continue
            group.append(item)
            streams.add(key)
            records += len(b.reports)
        self._pending = rest
        return group

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # batches that arrive in this turn of the loop join the first group
        while self._pending:
            group = self._next_group()
            if not group:
                continue
            try:
                results = await self.store.store_report_batches([b for b, _ in group])
            except Exception as exc:  # noqa: BLE001 - retried alone, then reported to its stream
                if len(group) == 1:
                    if not group[0][1].done():
                        group[0][1].set_exception(exc)
                    continue
                log.warning("storing %d report batches together failed (%s); storing them one by one",
                            len(group), exc)
                for b, f in group:
                    try:
                        one = (await self.store.store_report_batches([b]))[0]
                    except Exception as exc1:  # noqa: BLE001 - that stream reports it
                        if not f.done():
                            f.set_exception(exc1)
                    else:
                        if not f.done():
                            f.set_result(one)
                continue
            for (_, f), r in zip(group, results):
                if not f.done():
                    f.set_result(r)


def peer_identity(context: grpc.aio.ServicerContext) -> tuple[str, str] | None:
    """(site, node) from the client certificate, or None on a plaintext stream."""
    auth = context.auth_context() or {}
    pems = auth.get("x509_pem_cert")
    if not pems:
        return None
    ident = identity_from_pem(pems[0])
    if ident is None:
        raise StreamError(grpc.StatusCode.PERMISSION_DENIED, "client certificate names no fleet agent identity")
    return ident.site, ident.node


class AgentLinkService(agent_pb2_grpc.AgentLinkServicer):
    def __init__(
        self,
        store: Store,
        broker: Broker,
        recorder: Recorder,
        limits: Limits,
        heartbeat_interval: float,
        *,
        require_identity: bool,
    ) -> None:
        self.store = store
        self.broker = broker
        self.recorder = recorder
        self.limits = limits
        self.heartbeat_interval = heartbeat_interval
        self.require_identity = require_identity
        self.registrar = Registrar(store)
        self.report_writer = ReportWriter(store)
        # Streams whose handler has not finished (its clean-up writes to the store).
        self._streams = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until every stream handler has finished its clean-up; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def Connect(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[agent_pb2.AgentMessage], context: grpc.aio.ServicerContext
    ) -> None:
        peer = context.peer()
        session: Session | None = None
        self._streams += 1
        self._idle.clear()
        try:
            session = await self._open(request_iterator, context)
            await self._serve(session, request_iterator, context)
        except StreamError as err:
            who = f"{session.site}/{session.node}" if session else peer
            log.warning("agent stream %s closed: %s: %s", who, err.code.name, err.message)
            # Set the status and return rather than abort: grpc then sends it
            # after any message still being written, whereas an abort racing
            # a write turns the status into INTERNAL and the agent never
            # learns why its stream ended.
            context.set_code(err.code)
            context.set_details(err.message)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("agent stream %s failed", peer)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error in the hub; see the hub's log")
        finally:
            try:
                if session is not None and self.broker.detach(session):
                    with contextlib.suppress(Exception):
                        # The store finishes it even though this handler is being cancelled.
                        await self.store.mark_disconnected(session.node_id, _now())
            finally:
                self._streams -= 1
                if self._streams == 0:
                    self._idle.set()

    async def _open(
        self, request_iterator: AsyncIterator[agent_pb2.AgentMessage], context: grpc.aio.ServicerContext
    ) -> Session:
        identity = peer_identity(context)
        if identity is None and self.require_identity:
            raise StreamError(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
        try:
            async with asyncio.timeout(self.limits.hello_timeout_s):
                first = await anext(request_iterator)
        except TimeoutError:
            raise StreamError(grpc.StatusCode.DEADLINE_EXCEEDED, "no Hello within the hello timeout") from None
        except StopAsyncIteration:
            raise StreamError(grpc.StatusCode.CANCELLED, "stream closed before Hello") from None
        if first.WhichOneof("msg") != "hello":
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, f"first message must be hello, got {first.WhichOneof('msg')}")
        hello = first.hello
        site, node = hello.identity.site, hello.identity.node
        if not site or not node:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, "hello.identity needs both site and node")
        if len(site) > 128 or len(node) > 128:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, "hello.identity site/node longer than 128 characters")
        if identity is not None and identity != (site, node):
            raise StreamError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"certificate is for {identity[0]}/{identity[1]} but hello claims {site}/{node}",
            )
        problem = convert.incarnation_problem(hello.incarnation)
        if problem is not None:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, problem)
        rec, last_seq = await self.registrar.register(NodeHello(
            site, node, hello.identity.agent_version, convert.inventory_from_proto(hello.inventory), hello.incarnation
        ))
        session = Session(site, node, rec.id, dict(hello.held), asyncio.Queue(self.limits.send_queue),
                          incarnation=hello.incarnation)
        welcome = agent_pb2.Welcome(
            session_id=session.id,
            heartbeat_interval=Duration(
                seconds=int(self.heartbeat_interval), nanos=int((self.heartbeat_interval % 1) * 1e9)
            ),
            last_report_seq=last_seq,
        )
        session.send(agent_pb2.HubMessage(welcome=welcome))
        # Attach and take the snapshot in one step (no await): every later
        # change reaches this session through dispatch.
        self.broker.attach(session)
        wanted = self.broker.objects_for(site, node)
        # What the agent says it holds is applied: record it as if acknowledged again. The ack of
        # an earlier stream may never have reached the store (the hub died before the recorder's
        # next batch), and the agent, holding the object, will not acknowledge it a second time.
        # (From the Hello itself: after the push, `session.held` is what the agent *will* hold.)
        held, now = dict(hello.held), _now()
        for o in wanted:
            if o.id in held:
                self.recorder.applied(AppliedRecord(rec.id, o.id, held[o.id], True, "", now))
                session.sent[o.id] = held[o.id]
        session.push(resync(session.held, wanted), resync_complete=True)
        log.info("agent %s/%s connected (%d objects held, %d meant, reports stored through seq %d of incarnation %s)",
                 site, node, len(hello.held), len(wanted), last_seq, hello.incarnation[:8])
        return session

    async def _serve(
        self,
        session: Session,
        request_iterator: AsyncIterator[agent_pb2.AgentMessage],
        context: grpc.aio.ServicerContext,
    ) -> None:
        inflight: list[asyncio.Future] = []  # the write the writer is waiting on, if any
        reader = asyncio.create_task(self._read(session, request_iterator))
        writer = asyncio.create_task(self._write(session, context, inflight))
        closed = asyncio.create_task(session.closed.wait())
        tasks = (reader, writer, closed)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            # A write blocked on a client that never reads must not hold the
            # stream open: `closed` wins over it and the stream is aborted.
            if closed in done and session.close_reason is not None:
                raise session.close_reason
            for t in (reader, writer):
                if t in done and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Cancelling the writer does not cancel a message already handed to
            # gRPC. Aborting while it is in flight makes the status batch fail
            # (the agent would never learn why its stream ended), so let it
            # finish unless the agent is not reading at all.
            if inflight and not inflight[0].done():
                await asyncio.wait(inflight, timeout=WRITE_DRAIN_S)

    @staticmethod
    async def _write(session: Session, context: grpc.aio.ServicerContext, inflight: list[asyncio.Future]) -> None:
        while True:
            msg = await session.queue.get()
            fut = asyncio.ensure_future(context.write(msg))
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no "never retrieved" noise
            inflight[:] = [fut]
            await asyncio.shield(fut)

    async def _read(self, session: Session, request_iterator: AsyncIterator[agent_pb2.AgentMessage]) -> None:
        bucket = TokenBucket(self.limits.messages_per_second, self.limits.burst)
        async for msg in request_iterator:
            if not bucket.take():
                raise StreamError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"agent sends more than {self.limits.messages_per_second:g} messages/s; slow down and reconnect",
                )
            kind = msg.WhichOneof("msg")
            if kind == "heartbeat":
                hb = msg.heartbeat
                self.recorder.heartbeat(
                    Heartbeat(
                        session.node_id,
                        _now(),
                        convert.inventory_from_proto(hb.inventory) if hb.HasField("inventory") else None,
                        list(hb.recent_errors)[:20] if hb.recent_errors else None,
                    )
                )
            elif kind == "applied":
                self._applied(session, msg.applied)
            elif kind == "reports":
                await self._reports(session, msg.reports)
            elif kind == "hello":
                raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, "hello may only be the first message of a stream")
            else:
                raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, "empty or unknown message")

    def _applied(self, session: Session, a: agent_pb2.Applied) -> None:
        if not a.object_id or len(a.object_id) > 36:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, "applied.object_id must be an object id")
        if not a.deleted and a.version <= 0:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, "applied.version must be positive")
        if not self._meant(session, a):
            what = "deletion of" if a.deleted else f"version {a.version} of"
            raise StreamError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"applied: {what} object {a.object_id} was never meant for {session.site}/{session.node}; "
                "an agent acknowledges only what the hub sent it",
            )
        if a.deleted:
            self.recorder.deleted(session.node_id, a.object_id)
        else:
            self.recorder.applied(AppliedRecord(session.node_id, a.object_id, a.version, a.ok, a.error[:2000], _now()))

    def _meant(self, session: Session, a: agent_pb2.Applied) -> bool:
        """Whether an ack is for something this node was meant to apply (or delete): sent on this
        stream, or, for an ack that crosses a change (retargeted, deleted while it was applying),
        meant for the node as the broker knows the object, tombstones of late included."""
        if a.deleted:
            if a.object_id in session.sent_deletes or a.object_id in session.sent:
                return True
            return self.broker.was_meant_for(a.object_id, session.site, session.node)
        if a.version <= session.sent.get(a.object_id, 0):
            return True
        return self.broker.was_meant_for(a.object_id, session.site, session.node, a.version)

    async def _reports(self, session: Session, batch: agent_pb2.ReportBatch) -> None:
        n = len(batch.reports)
        if n == 0:
            return
        if n > self.limits.max_reports_per_batch:
            raise StreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"report batch of {n} exceeds the limit of {self.limits.max_reports_per_batch}",
            )
        prev = 0
        for r in batch.reports:
            if r.seq <= prev:
                raise StreamError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"report sequence numbers must be positive and strictly increasing within a batch (got {r.seq} after {prev})",
                )
            prev = r.seq
        now = _now()
        try:
            incoming = [convert.report_from_proto(r, now) for r in batch.reports]
        except convert.BadReport as exc:  # the whole batch is refused: nothing half-stored
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, f"{exc} (nothing of this batch was stored)") from None
        # A stream cancelled mid-transaction (agent gone, hub stopping) does not cut the
        # write short: store operations run to completion (Database.run_to_completion).
        # Stored (with whatever other streams sent meanwhile: group commit) before it is acknowledged.
        stored = await self.report_writer.write(session.node_id, session.incarnation, incoming, now)
        if stored.duplicate:
            log.info(
                "agent %s/%s re-sent %d reports already stored (seq %d..%d of incarnation %s); acknowledged again",
                session.site, session.node, len(stored.duplicate), stored.duplicate[0], stored.duplicate[-1],
                session.incarnation[:8],
            )
        session.send(agent_pb2.HubMessage(report_ack=agent_pb2.ReportAck(seqs=[r.seq for r in batch.reports])))
