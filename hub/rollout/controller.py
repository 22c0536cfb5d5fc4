"""The rollout controller: drives every rollout's state machine from the store, on APScheduler.

Each active rollout has an interval job ``rollout:<id>`` in APScheduler's
persistent SQLAlchemyJobStore (table ``apscheduler_jobs`` in the hub's
PostgreSQL database, or in a SQLite file beside the store, see
:meth:`hub.store.db.Database.scheduler_engine`), so a restarted hub resumes every rollout where it was; a
per-process sweep (in memory) re-adopts rollouts without a job (created by
another replica, or just before a crash) and keeps the scheduler awake for
jobs other replicas add. A rollout whose schedule opens a window also gets
a cron job ``rollout-window:<id>`` that ticks it the moment the window opens.

One tick of a rollout, under its lease:

1. take or renew the lease (``Store.acquire_lease``: one conditional UPDATE,
   so with several hub replicas on PostgreSQL only one drives a rollout);
2. apply queued operator commands (pause, resume, abort, undo) with
   :func:`hub.rollout.machine.command` (the API queues them; only the driver
   changes the state);
3. observe (:mod:`hub.rollout.fleetview`), :func:`~hub.rollout.machine.step`;
4. carry out the actions: each publish/revert is a new policy revision
   (author ``rollout/<id>``) whose placement is the latest one with the
   service switched at those sites; a revision is written only when it
   changes something, so actions re-emitted after a crash are harmless;
   on Completed (RolledBack after an undo) the bundle's Service version
   follows;
5. persist the state, the consumed commands and the audit records in one
   transaction, only if this process still holds the lease and nobody saved
   since it read the state.

A crash anywhere before 5 repeats the tick from the last saved state. Ticks
never raise: errors are logged with the traceback and retried next tick.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Optional

from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.jobstores.base import ConflictingIdError, JobLookupError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from hub.placement.model import Placement
from hub.policy import Bundle
from hub.publish import MANAGED_KINDS, desired_objects
from hub.rollout import fleetview, machine
from hub.rollout.machine import Action, AuditEntry, IllegalCommand, Observation, Phase, RolloutState, SiteStatus, Stage
from hub.store import Store
from hub.store.repo import AuditRecord, RevisionRecord, StaleRevision
from hub.sync import LivenessPolicy

log = logging.getLogger(__name__)

GATE_EVENTS = frozenset({"wave-passed", "paused", "rolling-back", "rolled-back", "completed", "failed"})
"""Audit events that carry the gate figures behind the decision."""


_QUIET = logging.getLogger("hub.rollout.scheduler")
_QUIET.setLevel(logging.ERROR)


def job_id(rollout_id: str) -> str:
    return f"rollout:{rollout_id}"


async def tick_rollout(rollout_id: str) -> None:  # pragma: no cover - run through RolloutController's executor
    """The persistent job's target. Jobs are run by :class:`_ControllerExecutor`, which calls the owning
    controller's :meth:`RolloutController.tick`; this reference only names the job in the store."""
    raise RuntimeError("rollout jobs run through the hub's RolloutController")


class _ControllerExecutor(AsyncIOExecutor):
    """Runs a rollout job as its controller's tick (the persisted job names only the rollout)."""

    def __init__(self, controller: "RolloutController") -> None:
        super().__init__()
        self.controller = controller

    def _do_submit_job(self, job, run_times):
        if job.id == "sweep":
            coro = self.controller.sweep()
        else:
            coro = self.controller.tick(job.args[0])

        def done(f):
            self._pending_futures.discard(f)
            if not f.cancelled() and f.exception() is not None:  # tick() never raises; belt and braces
                self._run_job_error(job.id, f.exception(), None)
            else:
                self._run_job_success(job.id, [])

        f = self._eventloop.create_task(coro, name=f"rollout-job {job.id}")
        f.add_done_callback(done)
        self._pending_futures.add(f)


@dataclass
class _Cache:
    """Parsed bundle and placement of the latest revision (parsing a large bundle takes a while)."""

    number: int = -1
    bundle: Optional[Bundle] = None
    placement: Optional[Placement] = None
    bundle_json: str = ""
    digest: str = ""
    rev: Optional[RevisionRecord] = None
    """The revision itself, so that a tick whose revision is unchanged reads only its number."""


@dataclass
class _TelemetryCache:
    """Telemetry of one soaking wave, added up as it arrives: the reports seen and the running totals."""

    key: tuple
    fetched: Optional[datetime] = None
    seen: set = field(default_factory=set)
    """(site, node, seq) of the reports already added."""
    acc: dict = field(default_factory=dict)
    """(site, version) -> [requests, errors, ttft, itl, tpot sketches]."""


@dataclass
class TickStats:
    """Decision time of the last ticks (observe + step + act + persist), for the benchmark."""

    ticks: int = 0
    seconds: float = 0.0
    max_tick: float = 0.0
    per_wave: dict = field(default_factory=dict)
    log: list = field(default_factory=list)
    """(wave, phase/stage, seconds, changed, {load, observe, step, act, persist: seconds}) of the last 1000 ticks."""


class RolloutController:
    def __init__(self, store: Store, *, liveness: LivenessPolicy, on_change: Callable[[], None] = lambda: None,
                 tick_s: float = 2.0, lease_s: float = 15.0, owner: Optional[str] = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.store = store
        self.liveness = liveness
        self.on_change = on_change
        self.tick_s = tick_s
        self.lease_s = max(lease_s, 2 * tick_s)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.clock = clock
        self.scheduler: Optional[AsyncIOScheduler] = None
        self._cache = _Cache()
        self._problems: dict = {}
        self._objects: dict[str, tuple] = {}
        self._tele: dict[str, _TelemetryCache] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.stats = TickStats()
        self.recent_errors: list[str] = []

    # ----------------------------------------------------------- lifecycle

    async def start(self) -> None:
        engine = self.store.db.scheduler_engine()
        self.scheduler = AsyncIOScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=engine), "local": MemoryJobStore()},
            executors={"default": _ControllerExecutor(self)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
            event_loop=asyncio.get_running_loop(),
            # "skipped: maximum number of running instances" is normal when a tick outlasts the interval.
            logger=_QUIET,
        )
        self._engine = engine
        self.scheduler.start()
        self.scheduler.add_job(tick_rollout, "interval", seconds=max(self.tick_s, 0.5), id="sweep",
                               jobstore="local", args=["*"], next_run_time=datetime.now(UTC))

    async def stop(self) -> None:
        if self.scheduler is None:
            return
        sched, self.scheduler = self.scheduler, None
        executor = sched._lookup_executor("default")
        pending = [f for f in executor._pending_futures if not f.done()]
        try:
            sched.shutdown(wait=False)
            # Let running ticks finish (they are short); cancel what does not.
            if pending:
                _, late = await asyncio.wait(pending, timeout=5.0)
                for f in late:
                    f.cancel()
                await asyncio.gather(*late, return_exceptions=True)
            for rec in await self.store.list_rollouts(active_only=True):
                if rec.lease_owner == self.owner:
                    await self.store.release_lease(rec.id, self.owner)
        finally:
            # Even when releasing the leases failed (they expire on their own): the job store's
            # connections are closed, not left to the garbage collector.
            self._engine.dispose()

    def ensure_job(self, rollout_id: str, state: Optional[RolloutState] = None) -> None:
        """Give a rollout its persistent interval job (and its window job) unless it has them."""
        if self.scheduler is None:
            return
        try:
            self.scheduler.add_job(tick_rollout, "interval", seconds=self.tick_s, id=job_id(rollout_id),
                                   args=[rollout_id], next_run_time=datetime.now(UTC))
        except ConflictingIdError:
            pass
        if state is not None and state.spec.schedule:
            try:
                self.scheduler.add_job(tick_rollout, CronTrigger.from_crontab(state.spec.schedule, timezone=UTC),
                                       id=f"rollout-window:{rollout_id}", args=[rollout_id])
            except ConflictingIdError:
                pass

    def poke(self, rollout_id: str) -> None:
        """Tick a rollout now (after a command or a start)."""
        if self.scheduler is None:
            return
        try:
            self.scheduler.modify_job(job_id(rollout_id), next_run_time=datetime.now(UTC))
        except JobLookupError:
            self.ensure_job(rollout_id)

    def _drop_jobs(self, rollout_id: str) -> None:
        if self.scheduler is None:
            return
        for jid in (job_id(rollout_id), f"rollout-window:{rollout_id}"):
            try:
                self.scheduler.remove_job(jid)
            except JobLookupError:
                pass

    async def sweep(self) -> None:
        """Adopt active rollouts that have no job (made by another replica, or before a crash)."""
        try:
            for rec in await self.store.list_rollouts(active_only=True, limit=10_000):
                if self.scheduler is not None and self.scheduler.get_job(job_id(rec.id)) is None:
                    self.ensure_job(rec.id)
        except Exception as exc:  # noqa: BLE001 - control loops never die
            self._error("sweep", exc)

    def _error(self, what: str, exc: BaseException) -> None:
        log.exception("rollout controller: %s failed; retrying next tick", what)
        self.recent_errors = [*self.recent_errors[-9:], f"{what}: {type(exc).__name__}: {exc}"]

    # ------------------------------------------------------------- context

    async def latest(self) -> tuple[RevisionRecord, Bundle, Placement]:
        # Every tick asks; the whole revision (bundle text and placement of every site, megabytes at
        # 1000 sites) is read again only when its number moved.
        if self._cache.rev is not None and await self.store.latest_revision_number() == self._cache.number:
            rev = self._cache.rev
        else:
            got = await self.store.get_revision()
            if got is None:
                raise LookupError("no revision has been applied yet")
            rev = got
        if self._cache.number != rev.number or self._cache.rev is None:
            bundle = (self._cache.bundle if self._cache.digest == rev.digest and self._cache.bundle is not None
                      else await asyncio.to_thread(Bundle.from_json, rev.bundle))
            self._cache = _Cache(rev.number, bundle, Placement.from_spec(rev.placement), rev.bundle, rev.digest, rev)
        assert self._cache.bundle is not None and self._cache.placement is not None
        return rev, self._cache.bundle, self._cache.placement

    async def facts(self, bundle: Bundle, placement: Placement, service: str, now: datetime,
                    versions: tuple[str, str] = ("", "")) -> dict[str, machine.SiteFacts]:
        nodes = await self.store.node_liveness()
        heads = await self.store.object_heads("Placement")
        # Specs are read again only for objects whose version changed since the last tick.
        stale = [i for i, v, _, _ in heads if self._objects.get(i, (None, -1))[1] != v]
        if stale:
            for o in await self.store.objects_by_id(stale):
                self._objects[o.id] = (o, o.version)
        live = {i for i, *_ in heads}
        for gone in [i for i in self._objects if i not in live]:
            del self._objects[gone]
        objects = [self._objects[i][0] for i in live if i in self._objects]
        applied = await self.store.applied_of_kind("Placement")
        return fleetview.site_facts(bundle, placement, service, nodes=nodes, objects=objects, applied=applied,
                                    now=now, liveness=self.liveness, versions=versions)

    async def observe(self, state: RolloutState, bundle: Bundle, placement: Placement, now: datetime) -> Observation:
        svc = bundle.services.get(state.service)
        facts = await self.facts(bundle, placement, state.service, now, (state.from_version, state.to_version))
        telemetry: dict = {}
        soak = state.soak_since
        if svc is not None and state.phase is Phase.PROGRESSING and state.stage in (Stage.SOAKING, Stage.GATING) \
                and soak is not None:
            telemetry = await self._telemetry(state, svc.spec.model, soak, now)
        return Observation(
            sites=facts, telemetry=telemetry,
            slo_ttft_p95_s=svc.spec.slo.ttft_p95 if svc else None,
            slo_tpot_p95_s=svc.spec.slo.tpot_p95 if svc else None,
        )

    async def _telemetry(self, state: RolloutState, model: str, soak: datetime, now: datetime) -> dict:
        """The gates' traffic, read incrementally while the wave soaks: each tick decodes only the reports
        received since the last one, so the gate itself merges what is already decoded."""
        # The canary wave also needs the old version's traffic on the same sites, from before the switch.
        canary = state.spec.strategy == "canary" and state.wave == 0
        old_since = soak - timedelta(seconds=state.spec.progress_deadline) if canary else soak
        # Only what a gate reads (machine._gate): the sites given the new version, and the old version's
        # traffic only for the canary comparison; reports of other sites or versions are not even decoded.
        sites = frozenset(r.site for r in state.sites if r.status in SiteStatus.touched())
        key = (soak, old_since, state.to_version, state.from_version, sites)
        cache = self._tele.get(state.service)
        if cache is None or cache.key != key:
            cache = self._tele[state.service] = _TelemetryCache(key)
        fetch = self.clock()
        # windowEnd decides what counts; an agent creates a report when its window ends, so reports created
        # before old_since cannot count (5 s of slack for clocks that disagree slightly). Reports received
        # before the last fetch are added already (1 s of overlap for transactions still committing then;
        # duplicates are keyed out).
        rows = await self.store.reports_of_kind(
            "telemetry", old_since - timedelta(seconds=5),
            received_since=cache.fetched - timedelta(seconds=1) if cache.fetched else None, sites=sites)
        since = {state.to_version: soak, state.from_version: old_since} if canary else {state.to_version: soak}
        fresh = [(site, node, r) for site, node, r in rows
                 if site in sites and (site, node, r.incarnation, r.seq) not in cache.seen]

        def add() -> None:
            decoded = [(site, fleetview.decode_report(r.payload, model, since)) for site, node, r in fresh]
            cache.seen.update((site, node, r.incarnation, r.seq) for site, node, r in fresh)
            fleetview.aggregate(decoded, cache.acc)  # running totals: the gate merges nothing again

        if fresh:
            await asyncio.to_thread(add)
        cache.fetched = fetch
        if now - soak < timedelta(seconds=state.spec.min_success_time):
            return {}  # still soaking: the gate is not judged yet
        return fleetview.aggregate((), cache.acc)

    # --------------------------------------------------------------- acting

    async def publish_version(self, rollout_id: str, service: str, version: str, sites: tuple[str, ...],
                              message: str, now: datetime, check: bool) -> dict[str, str]:
        """Write a revision that switches ``service`` to ``version`` at ``sites``; returns refused sites."""
        for attempt in range(5):
            rev, bundle, placement = await self.latest()
            sw = await asyncio.to_thread(fleetview.switch, bundle, placement, service, version, sites, now, check,
                                         self._problems)
            if not sw.changed:
                return dict(sw.refused)
            try:
                await self._write(rev, bundle, sw.placement, f"rollout/{rollout_id}", message, now)
                return dict(sw.refused)
            except StaleRevision:
                await asyncio.sleep(0.05 * (attempt + 1))
        raise RuntimeError("the latest revision kept changing while publishing; retrying next tick")

    async def set_bundle_version(self, rollout_id: str, service: str, version: str, message: str,
                                 now: datetime) -> None:
        for attempt in range(5):
            rev, bundle, placement = await self.latest()
            svc = bundle.services.get(service)
            if svc is None or svc.spec.version == version:
                return
            # Only the version changes, to one the rollout already checked: no fleet-wide validation again.
            new = fleetview.with_service_version(bundle, service, version, validate=False)
            try:
                await self._write(rev, new, placement, f"rollout/{rollout_id}", message, now)
                return
            except StaleRevision:
                await asyncio.sleep(0.05 * (attempt + 1))
        raise RuntimeError("the latest revision kept changing; retrying next tick")

    async def _write(self, rev: RevisionRecord, bundle: Bundle, placement: Placement, author: str, message: str,
                     now: datetime) -> None:
        objects = await asyncio.to_thread(desired_objects, bundle, placement)
        if bundle is self._cache.bundle and self._cache.bundle_json:
            text, digest = self._cache.bundle_json, self._cache.digest  # unchanged bundle: no re-serialising
        else:
            text = bundle.to_json()
            digest = hashlib.sha256(text.encode()).hexdigest()  # = Bundle.digest()
        published = await self.store.add_revision(
            author=author, message=message, digest=digest, bundle=text,
            placement=placement.to_spec(), summary=dict(rev.summary), objects=objects,
            managed_kinds=MANAGED_KINDS, base=rev.number, now=now,
        )
        self._cache = _Cache(published.revision.number, bundle, placement, text, digest, published.revision)
        log.info("revision %d by %s: %s (%d objects changed)", published.revision.number, author, message,
                 len(published.upserted))
        self.on_change()

    async def carry_out(self, rollout_id: str, state: RolloutState, actions: list[Action],
                        now: datetime) -> list[AuditEntry]:
        """Carry out the machine's actions as revisions; returns audit entries for refused sites."""
        extra: list[AuditEntry] = []
        for a in actions:
            wave = f"wave {state.wave + 1}/{len(state.waves)}" if a.kind == "publish" else "rollback"
            msg = f"{a.reason}, {wave}: {', '.join(a.sites)}"
            refused = await self.publish_version(rollout_id, state.service, a.version, a.sites, msg, now,
                                                 check=a.kind == "publish")
            for site, why in sorted(refused.items()):
                extra.append(AuditEntry(now, "site-refused", f"{site} not given {a.version}: the current policy "
                                                             f"revision forbids it ({why})", (site,)))
        if state.phase is Phase.COMPLETED:
            await self.set_bundle_version(rollout_id, state.service, state.to_version,
                                          f"rollout of {state.service} to {state.to_version} completed", now)
        elif state.phase is Phase.ROLLED_BACK:
            await self.set_bundle_version(rollout_id, state.service, state.from_version,
                                          f"rollout of {state.service} to {state.to_version} rolled back", now)
        return extra

    # ----------------------------------------------------------------- tick

    async def tick(self, rollout_id: str) -> None:
        """One observe-step-act-persist round for one rollout. Never raises."""
        lock = self._locks.setdefault(rollout_id, asyncio.Lock())
        if lock.locked():
            return
        async with lock:
            try:
                await self._tick(rollout_id)
            except Exception as exc:  # noqa: BLE001 - control loops never die
                self._error(f"tick of rollout {rollout_id}", exc)

    async def _tick(self, rollout_id: str) -> None:
        now = self.clock()
        if not await self.store.acquire_lease(rollout_id, self.owner, now, now + timedelta(seconds=self.lease_s)):
            return  # another hub process drives it
        t0 = time.perf_counter()
        rec = await self.store.get_rollout(rollout_id)
        if rec is None:
            self._drop_jobs(rollout_id)
            return
        state = RolloutState.from_dict(rec.state)
        actions: list[Action] = []
        audit: list[tuple[AuditEntry, tuple]] = []
        consumed: dict[str, str] = {}
        for cmd in rec.commands:
            try:
                state, acts, entries = machine.command(state, cmd["name"], now, cmd.get("actor", ""),
                                                       cmd.get("note", ""))
                consumed[cmd["id"]] = ""
                actions += acts
                audit += [(e, state.verdicts) for e in entries]
            except IllegalCommand as exc:
                consumed[cmd["id"]] = f"{exc}" if not exc.hint else f"{str(exc).removesuffix('; ' + exc.hint)}" \
                                                                     f"\nnext: {exc.hint}"
                audit.append((AuditEntry(now, "command-refused", f"{cmd['name']} refused: {exc}",
                                         actor=cmd.get("actor", "")), ()))
        rev, bundle, placement = await self.latest()
        t_obs = time.perf_counter()
        obs = await self.observe(state, bundle, placement, now)
        t_step = time.perf_counter()
        state, acts, entries = machine.step(state, obs, now)
        actions += acts
        audit += [(e, state.verdicts) for e in entries]
        t_act = time.perf_counter()
        audit += [(e, ()) for e in await self.carry_out(rollout_id, state, actions, now)]
        records = [self._audit(rollout_id, state, e, verdicts, actions) for e, verdicts in audit]
        t_persist = time.perf_counter()
        parts = {"load": t_obs - t0, "observe": t_step - t_obs, "step": t_act - t_step, "act": t_persist - t_act}
        if state.revision == rec.state_revision and not consumed and not records:
            self._account(state, t0, changed=False, parts=parts)
            if state.phase in Phase.terminal():
                self._drop_jobs(rollout_id)
                await self.store.release_lease(rollout_id, self.owner)
            return
        saved = await self.store.save_rollout(
            rollout_id, owner=self.owner, expected_revision=rec.state_revision, state=state.to_dict(),
            phase=state.phase.value, active=state.phase in Phase.active(), now=now, consumed=consumed,
            audit=records)
        if not saved:
            log.warning("rollout %s: lost the lease or the state changed under us; the next tick repeats", rollout_id)
            return
        parts["persist"] = time.perf_counter() - t_persist
        self._account(state, t0, parts=parts)
        if state.stage not in (Stage.SOAKING, Stage.GATING):
            self._tele.pop(state.service, None)
        if state.phase in Phase.terminal():
            self._drop_jobs(rollout_id)
            await self.store.release_lease(rollout_id, self.owner)
            log.info("rollout %s of %s is %s: %s", rollout_id, state.service, state.phase.value, state.reason)

    def _account(self, state: RolloutState, t0: float, changed: bool = True, parts: Optional[dict] = None) -> None:
        dt = time.perf_counter() - t0
        what = f"{state.phase.value}/{state.stage.value if state.stage else '-'}"
        self.stats.log = [*self.stats.log[-999:], (state.wave, what, dt, changed, parts or {})]
        self.stats.ticks += 1
        self.stats.seconds += dt
        self.stats.max_tick = max(self.stats.max_tick, dt)
        self.stats.per_wave[state.wave] = self.stats.per_wave.get(state.wave, 0.0) + dt

    def _audit(self, rollout_id: str, state: RolloutState, e: AuditEntry, verdicts: tuple,
               actions: list[Action]) -> AuditRecord:
        details: dict = {"rollout": rollout_id, "service": state.service, "from": state.from_version,
                         "to": state.to_version, "message": e.message, "sites": list(e.sites),
                         "phase": state.phase.value, "wave": state.wave + 1, "waves": len(state.waves)}
        if e.event in GATE_EVENTS and verdicts:
            details["gates"] = [v.to_dict() for v in verdicts]
        if e.event in ("published", "rolling-back"):
            details["actions"] = [a.to_dict() for a in actions]
        return AuditRecord(at=e.at, actor=e.actor or f"rollout-controller ({self.owner})",
                           action=f"rollout.{e.event}", subject=f"rollout/{rollout_id}", details=details)
