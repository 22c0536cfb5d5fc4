"""The Rollouts gRPC service: start, inspect and command rollouts; read the audit trail.

Protobuf stays here. Errors: a bad spec or an unknown version is
INVALID_ARGUMENT (one line per problem), an unknown service or rollout is
NOT_FOUND, a command that does not apply is FAILED_PRECONDITION; every
message ends with ``next: <command>`` on its own line.

Commands (pause, resume, abort, undo) are checked against the current
state at once (a clear refusal without waiting), then queued for the hub
process that drives the rollout, which applies them on its next tick; the
call waits for that (``poke`` makes it immediate on this process).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import grpc
from pydantic import ValidationError

from hub import convert
from hub.report import integrity
from hub.rollout import fleetview, machine, refusals
from hub.rollout.controller import RolloutController
from hub.rollout.machine import IllegalCommand, RolloutState
from hub.rollout.spec import RolloutSpec, cli_errors
from hub.store import Store
from hub.store.repo import AuditRecord, RolloutConflict, RolloutRecord
from protos.fleet.v1 import rollout_pb2, rollout_pb2_grpc

log = logging.getLogger(__name__)

COMMAND_WAIT_S = 20.0


def _msg(message: str, hint: str = "") -> str:
    return f"{message}\nnext: {hint}" if hint else message


def rollout_proto(r: RolloutRecord, now: datetime | None = None) -> rollout_pb2.Rollout:
    state = RolloutState.from_dict(r.state)
    driver = r.lease_owner or ""
    if r.lease_until is not None and now is not None and r.lease_until < now:
        driver = ""
    return rollout_pb2.Rollout(
        id=r.id, service=r.service, from_version=r.from_version, to_version=r.to_version, phase=r.phase,
        status=machine.display_status(state, now or datetime.now(UTC)), created_by=r.created_by,
        created_at=convert.ts(r.created_at), updated_at=convert.ts(r.updated_at), state_json=json.dumps(r.state),
        driver=driver,
    )


def audit_proto(a: AuditRecord) -> rollout_pb2.AuditRecord:
    return rollout_pb2.AuditRecord(id=a.id, at=convert.ts(a.at), actor=a.actor, action=a.action, subject=a.subject,
                                   details_json=json.dumps(a.details, sort_keys=True))


class RolloutService(rollout_pb2_grpc.RolloutsServicer):
    def __init__(self, store: Store, controller: RolloutController) -> None:
        self.store = store
        self.controller = controller

    # ------------------------------------------------------------- start

    async def Start(self, request, context):  # noqa: N802
        try:
            raw = json.loads(request.spec_json or "{}")
            spec = RolloutSpec.from_dict(raw)
        except ValidationError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "\n".join(cli_errors(exc)))
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"spec_json is not JSON: {exc}")
        try:
            rec, state = await begin(self.store, self.controller, spec, request.actor or "unknown",
                                     datetime.now(UTC))
        except StartRefused as exc:
            await context.abort(exc.code, _msg(exc.message, exc.hint))
        return rollout_proto(rec, rec.created_at)

    # -------------------------------------------------------------- reads

    async def _find(self, context, service: str, rid: str = "") -> RolloutRecord:
        rec = await self.store.get_rollout(rid) if rid else await self.store.latest_rollout(service)
        if rec is None:
            what = f"rollout {rid}" if rid else f"rollout of {service!r}"
            await context.abort(grpc.StatusCode.NOT_FOUND, _msg(
                f"there is no {what}", "fleet rollout start SERVICE --to VERSION (`fleet rollout status` lists them)"))
        return rec

    async def Get(self, request, context):  # noqa: N802
        return rollout_proto(await self._find(context, request.service, request.id), datetime.now(UTC))

    async def List(self, request, context):  # noqa: N802
        now = datetime.now(UTC)
        recs = await self.store.list_rollouts(active_only=request.active_only)
        return rollout_pb2.ListRolloutsResponse(rollouts=[rollout_proto(r, now) for r in recs])

    async def History(self, request, context):  # noqa: N802
        now = datetime.now(UTC)
        recs = await self.store.list_rollouts(service=request.service or None, limit=request.limit or 20)
        if request.service and not recs:
            await self._find(context, request.service)
        records: list[AuditRecord] = []
        for r in recs:
            records += await self.store.list_audit(subject=f"rollout/{r.id}")
        records.sort(key=lambda a: a.id)
        return rollout_pb2.RolloutHistoryResponse(rollouts=[rollout_proto(r, now) for r in recs],
                                                  records=[audit_proto(a) for a in records])

    async def Audit(self, request, context):  # noqa: N802
        since = request.since.ToDatetime(tzinfo=UTC) if request.HasField("since") else None
        limit = request.limit or 100_000
        only_refusals = bool(request.site or request.data_class)
        trail = [] if only_refusals else await self.store.list_audit(
            since=since, subject=request.subject or None, limit=limit)
        found = refusals.refusal_records(await self.store.reports_of_kind(refusals.KIND, since=since),
                                         site=request.site, data_class=request.data_class,
                                         subject=request.subject, since=since)
        if not request.data_class:  # the agents' refused model weights (they have no data class)
            found += [a for a in integrity.refusal_records(
                await self.store.reports_of_kind(integrity.KIND, since=since), site=request.site, since=since)
                if not request.subject or a.subject == request.subject]
        return rollout_pb2.AuditResponse(records=[audit_proto(a) for a in refusals.merge(trail, found, limit)])

    # ----------------------------------------------------------- commands

    async def _command(self, name: str, request, context):
        rec = await self._find(context, request.service)
        now = datetime.now(UTC)
        actor = request.actor or "unknown"
        try:  # refuse at once what does not apply now (the driver checks again when it applies it)
            machine.command(RolloutState.from_dict(rec.state), name, now, actor, request.note)
        except IllegalCommand as exc:
            message = str(exc).removesuffix(f"; {exc.hint}") if exc.hint else str(exc)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, _msg(message, exc.hint))
        cmd_id = uuid.uuid4().hex
        self.controller.ensure_job(rec.id)
        await self.store.enqueue_command(rec.id, {"id": cmd_id, "name": name, "actor": actor, "note": request.note,
                                                  "at": now.isoformat()})
        self.controller.poke(rec.id)
        deadline = asyncio.get_running_loop().time() + COMMAND_WAIT_S
        while asyncio.get_running_loop().time() < deadline:
            cur = await self.store.get_rollout(rec.id)
            if cur is not None and cmd_id in cur.command_results:
                result = cur.command_results[cmd_id]
                if result:
                    message, _, hint = result.partition("\nnext: ")
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, _msg(message, hint))
                return rollout_proto(cur, datetime.now(UTC))
            await asyncio.sleep(0.05)
        cur = await self.store.get_rollout(rec.id)
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, _msg(
            f"{name} is queued but the hub driving rollout {rec.id} ({cur.lease_owner if cur else '?'}) has not "
            f"applied it within {COMMAND_WAIT_S:.0f}s; it will when it ticks", f"fleet rollout status {rec.service}"))

    async def Pause(self, request, context):  # noqa: N802
        return await self._command("pause", request, context)

    async def Resume(self, request, context):  # noqa: N802
        return await self._command("resume", request, context)

    async def Abort(self, request, context):  # noqa: N802
        return await self._command("abort", request, context)

    async def Undo(self, request, context):  # noqa: N802
        return await self._command("undo", request, context)


def blocking_rollouts_message(active: list[RolloutRecord]) -> str:
    """Why `fleet apply`/`fleet rollback` is refused while rollouts run, with the next commands."""
    names = ", ".join(f"{r.service} -> {r.to_version} ({r.phase})" for r in active)
    svc = active[0].service
    return _msg(f"rollout(s) in progress: {names}; applying a revision now would undo their progress, so nothing "
                "changed", f"wait for them (`fleet rollout status {svc}`), or `fleet rollout abort {svc}` "
                f"(then `fleet rollout undo {svc}` to revert) before applying")



class StartRefused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, hint: str) -> None:
        super().__init__(message)
        self.code, self.message, self.hint = code, message, hint


async def begin(store: Store, controller: RolloutController, spec: RolloutSpec, actor: str,
                now: datetime) -> tuple[RolloutRecord, RolloutState]:
    """Check a new rollout against the latest revision, plan its waves, store it and give it its job.

    Raises :class:`StartRefused` (with the gRPC code, message and next command) when it cannot start.
    """
    try:
        rev, bundle, placement = await controller.latest()
    except LookupError:
        raise StartRefused(grpc.StatusCode.FAILED_PRECONDITION,
                           "no policy revision has been applied yet, so no service runs anywhere",
                           "fleet apply -f fleet_configs -f policies") from None
    svc = bundle.services.get(spec.service)
    if svc is None:
        known = ", ".join(sorted(bundle.services)) or "none"
        raise StartRefused(grpc.StatusCode.NOT_FOUND,
                           f"service {spec.service!r} is not in revision {rev.number} (services: {known})",
                           "fleet rollout start SERVICE --to VERSION with one of them")
    model = bundle.models[svc.spec.model].spec
    if model.version(spec.to_version) is None:
        known = ", ".join(v.name for v in model.versions)
        raise StartRefused(grpc.StatusCode.INVALID_ARGUMENT,
                           f"--to: model {svc.spec.model} has no version {spec.to_version!r} (versions: {known})",
                           f"add it to Model {svc.spec.model} and `fleet apply`, or roll out one of: {known}")
    active = await store.latest_rollout(spec.service)
    if active is not None and active.active:
        raise StartRefused(grpc.StatusCode.FAILED_PRECONDITION,
                           f"a rollout of {spec.service} to {active.to_version} is already {active.phase} "
                           f"(id {active.id}, started by {active.created_by}); one rollout per service at a time",
                           f"fleet rollout status {spec.service}, then wait for it or "
                           f"`fleet rollout abort {spec.service}`")
    from_version = svc.spec.version
    facts = await controller.facts(bundle, placement, spec.service, now)
    if not facts:
        raise StartRefused(grpc.StatusCode.FAILED_PRECONDITION,
                           f"service {spec.service} is placed nowhere in revision {rev.number}",
                           f"fleet explain service {spec.service}")
    check = await asyncio.to_thread(fleetview.switch, bundle, placement, spec.service, spec.to_version,
                                    list(facts), now)
    sites = [s for s in fleetview.site_states(bundle, placement, spec.service, facts) if s.name not in check.refused]
    try:
        state = machine.start(spec, sites, from_version, now)
    except ValueError as exc:
        why = "; ".join(f"{s}: {r}" for s, r in sorted(check.refused.items()))
        raise StartRefused(grpc.StatusCode.FAILED_PRECONDITION,
                           f"{exc}" + (f"; the current policy revision forbids {spec.to_version} at: {why}"
                                       if why else ""),
                           f"fleet explain service {spec.service}") from None
    forbidden = tuple((s, f"the current policy revision forbids {spec.to_version} here: {why}")
                      for s, why in sorted(check.refused.items()))
    if forbidden:
        state = replace(state, excluded=state.excluded + forbidden)
    rid = uuid.uuid4().hex[:12]
    details = {"rollout": rid, "service": spec.service, "from": from_version, "to": spec.to_version,
               "spec": spec.to_dict(), "waves": [list(w) for w in state.waves],
               "excluded": [list(x) for x in state.excluded], "revision": rev.number,
               "message": f"rollout of {spec.service} from {from_version} to {spec.to_version} requested"}
    rec = RolloutRecord(id=rid, service=spec.service, from_version=from_version, to_version=spec.to_version,
                        phase=state.phase.value, state=state.to_dict(), state_revision=state.revision,
                        created_by=actor, created_at=now, updated_at=now)
    try:
        rec = await store.create_rollout(rec, [AuditRecord(now, actor, "rollout.start", f"rollout/{rid}", details)])
    except RolloutConflict:
        raise StartRefused(grpc.StatusCode.FAILED_PRECONDITION, f"another rollout of {spec.service} started just now",
                           f"fleet rollout status {spec.service}") from None
    controller.ensure_job(rid, state)
    log.info("rollout %s of %s to %s started by %s: waves %s", rid, spec.service, spec.to_version, actor,
             [len(w) for w in state.waves])
    return rec, state
