"""The CLI-facing Admin service. Bearer-token authentication is an interceptor."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import re
from datetime import UTC, datetime, timedelta

import grpc

from google.protobuf.struct_pb2 import Struct

from hub import convert, plan_pool, report, revisions
from hub.autoscale import demand as autoscale_demand
from hub.autoscale import status as autoscale_status
from hub.drift import monitor as drift_monitor
from hub.policy import Bundle, PolicyError
from hub.publish import MANAGED_KINDS
from hub.report import integrity
from hub.rollout.service import blocking_rollouts_message
from hub.store import Store
from hub.store.repo import NodeRecord, ObjectRecord, RevisionRecord, StaleRevision
from hub.sync import LivenessPolicy, Phase, Progress, phase, progress
from protos.fleet.v1 import admin_pb2, admin_pb2_grpc

log = logging.getLogger(__name__)

_PHASE = {
    Phase.CONNECTED: admin_pb2.NODE_PHASE_CONNECTED,
    Phase.STALE: admin_pb2.NODE_PHASE_STALE,
    Phase.UNREACHABLE: admin_pb2.NODE_PHASE_UNREACHABLE,
}
_KIND = re.compile(r"[A-Z][A-Za-z0-9]{0,63}")
_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")


def object_key_problem(kind: str, name: str) -> str | None:
    """Why ``kind``/``name`` may not be set or deleted through the admin API, or None.

    Whole-string matches only: ``fra-1\\n`` is not a name. Revision-managed kinds
    (`MANAGED_KINDS`) change only through revisions, so that what runs is always
    what a revision says (and `fleet apply` of the same files is a true no-op).
    """
    if kind in MANAGED_KINDS:
        return (f"{kind} objects belong to policy revisions and change only through them; nothing changed"
                "\nnext: edit the YAML and run `fleet apply -f ...` (or `fleet rollback REVISION`)")
    if not _KIND.fullmatch(kind):
        return f"kind {kind!r} must be CamelCase, e.g. Config"
    if not _NAME.fullmatch(name):
        return f"name {name!r} must be lower-case letters, digits, '-' or '.', starting and ending alphanumeric"
    return None


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Rejects any call without `authorization: Bearer <token>` (constant-time compare)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

        async def deny(request, context: grpc.aio.ServicerContext):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or wrong admin token: set FLEET_TOKEN or the token in your fleetconfig",
            )

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    async def intercept_service(self, continuation, handler_call_details):
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization" and hmac.compare_digest(str(value).encode(), self._expected):
                return await continuation(handler_call_details)
        log.warning("admin call %s refused: bad or missing bearer token", handler_call_details.method)
        return self._deny


def node_view(n: NodeRecord, prog: Progress, now: datetime, live: LivenessPolicy,
              checks: list[integrity.Check] | None = None) -> admin_pb2.NodeView:
    return admin_pb2.NodeView(
        site=n.site,
        node=n.node,
        phase=_PHASE[phase(n.last_seen, now, n.connected, live)],
        last_seen=convert.ts(n.last_seen),
        inventory=convert.inventory_to_proto(n.inventory),
        desired_version=prog.desired_version,
        applied_version=prog.applied_version,
        objects_desired=prog.objects_desired,
        objects_applied=prog.objects_applied,
        agent_version=n.agent_version,
        recent_errors=[*n.recent_errors, *prog.failed],
        connected=n.connected,
        models=[admin_pb2.ModelIntegrity(model=c.model, version=c.version, decision=c.decision, digest=c.digest,
                                         expected=c.expected, reason=c.reason, checked_at=convert.ts(c.at))
                for c in checks or ()],
    )


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, store: Store, liveness: LivenessPolicy, on_change) -> None:
        self.store = store
        self.liveness = liveness
        self.on_change = on_change  # called after a desired-state write (pokes the broker)
        plan_pool.warm(revisions.ready)  # the first apply should not wait for the planning process to start

    async def _node_views(self, site: str = "") -> list[admin_pb2.NodeView]:
        nodes = await self.store.list_nodes(site or None)
        objects = await self.store.live_objects()
        applied: dict[int, dict] = {}
        for a in await self.store.applied_rows():
            applied.setdefault(a.node_id, {})[a.object_id] = a
        checks: dict[tuple[str, str], list] = {}
        for site_, node_, rep in await self.store.reports_of_kind(integrity.KIND):
            checks.setdefault((site_, node_), []).append(rep)
        now = datetime.now(UTC)
        return [
            node_view(n, progress([o for o in objects if o.targets(n.site, n.node)], applied.get(n.id, {})), now,
                      self.liveness, integrity.latest_checks(checks.get((n.site, n.node), []),
                                                             integrity.assigned(objects, n.site, n.node)))
            for n in nodes
        ]

    async def ListNodes(self, request, context):  # noqa: N802
        return admin_pb2.ListNodesResponse(nodes=await self._node_views(request.site))

    async def ListSites(self, request, context):  # noqa: N802
        by_site: dict[str, list[admin_pb2.NodeView]] = {}
        for v in await self._node_views():
            by_site.setdefault(v.site, []).append(v)
        sites = []
        for name, views in sorted(by_site.items()):
            best = min((v.phase for v in views), key=lambda p: p)  # CONNECTED=1 is best
            newest = max(views, key=lambda v: v.last_seen.ToDatetime())
            sites.append(
                admin_pb2.SiteView(
                    site=name,
                    phase=best,
                    last_seen=newest.last_seen,
                    nodes=len(views),
                    nodes_connected=sum(v.phase == admin_pb2.NODE_PHASE_CONNECTED for v in views),
                    gpus=sum(g.count for v in views for g in v.inventory.gpus),
                    region=newest.inventory.region,
                    country=newest.inventory.country,
                    jurisdiction=newest.inventory.jurisdiction,
                    desired_version=max(v.desired_version for v in views),
                    applied_version=min(v.applied_version for v in views),
                )
            )
        return admin_pb2.ListSitesResponse(sites=sites)

    async def PutObject(self, request, context):  # noqa: N802
        problem = object_key_problem(request.kind, request.name)
        if problem is not None:
            code = grpc.StatusCode.FAILED_PRECONDITION if request.kind in MANAGED_KINDS else grpc.StatusCode.INVALID_ARGUMENT
            await context.abort(code, problem)
        obj = await self.store.put_object(
            request.kind,
            request.name,
            convert.from_struct(request.spec),
            request.target.site,
            request.target.node,
            now=datetime.now(UTC),
        )
        self.on_change()
        return admin_pb2.PutObjectResponse(object=convert.object_to_proto(obj))

    async def DeleteObject(self, request, context):  # noqa: N802
        if request.kind in MANAGED_KINDS:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, object_key_problem(request.kind, request.name))
        obj = await self.store.delete_object(request.kind, request.name, now=datetime.now(UTC))
        if obj is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"{request.kind}/{request.name} does not exist; `fleet get objects` lists what does",
            )
        self.on_change()
        return admin_pb2.DeleteObjectResponse(version=obj.version)

    async def ListObjects(self, request, context):  # noqa: N802
        objects = await self.store.live_objects(request.kind or None)
        nodes = await self.store.list_nodes()
        applied = {(a.node_id, a.object_id): a for a in await self.store.applied_rows()}
        return admin_pb2.ListObjectsResponse(objects=[self._object_view(o, nodes, applied) for o in objects])

    @staticmethod
    def _object_view(o: ObjectRecord, nodes: list[NodeRecord], applied: dict) -> admin_pb2.ObjectView:
        targeted = [n for n in nodes if o.targets(n.site, n.node)]
        done = 0
        for n in targeted:
            a = applied.get((n.id, o.id))
            done += a is not None and a.ok and a.version >= o.version
        return admin_pb2.ObjectView(
            object=convert.object_to_proto(o),
            target=admin_pb2.ObjectTarget(site=o.target_site, node=o.target_node),
            nodes_targeted=len(targeted),
            nodes_applied=done,
            updated_at=convert.ts(o.updated_at),
        )

    async def ReportStats(self, request, context):  # noqa: N802
        counts = await self.store.report_counts()
        agents = []
        for n in await self.store.list_nodes():
            stored, max_seq = counts.get(n.id, (0, 0))
            agents.append(
                admin_pb2.AgentReportStats(
                    site=n.site, node=n.node, reports=stored, max_seq=max_seq, duplicates=n.reports_duplicate,
                    counted=n.reports_received,
                )
            )
        return admin_pb2.ReportStatsResponse(agents=agents, total_reports=sum(a.reports for a in agents))

    # -- revisions ----------------------------------------------------------

    async def Apply(self, request, context):  # noqa: N802
        if request.solver not in ("", "auto", "greedy", "exact"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"solver {request.solver!r}: use auto, greedy or exact")
        try:
            bundle = Bundle.from_json(request.bundle_json)
        except PolicyError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the bundle is invalid; nothing changed:\n"
                                + "\n".join(str(p) for p in exc.problems))
        base = request.base_revision if request.HasField("base_revision") else None
        if not request.dry_run:
            await self._refuse_during_rollouts(context)
        try:
            out = await revisions.apply_bundle(
                self.store, bundle, author=request.author or "unknown", message=request.message, base=base,
                now=datetime.now(UTC), dry_run=request.dry_run, solver=request.solver or "auto",
                on_published=self._published,
            )
        except StaleRevision as exc:
            await context.abort(grpc.StatusCode.ABORTED, _stale(exc))
        if out.published is not None:
            log.info("revision %d applied by %s: %d objects published, %d deleted", out.revision.number,
                     out.revision.author, len(out.published.upserted), len(out.published.deleted))
        return _apply_response(out)

    def _published(self, p) -> None:
        """A revision was stored: agents get it now. A policy step is published before planning starts."""
        if p.revision.summary.get("step") == "policies":
            log.info("revision %d by %s publishes policies before planning: %d objects published, %d deleted",
                     p.revision.number, p.revision.author, len(p.upserted), len(p.deleted))
        self.on_change()

    async def Rollback(self, request, context):  # noqa: N802
        base = request.base_revision if request.HasField("base_revision") else None
        await self._refuse_during_rollouts(context)
        try:
            out = await revisions.rollback(self.store, request.to, author=request.author or "unknown",
                                           message=request.message, base=base, now=datetime.now(UTC))
        except LookupError:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"revision {request.to} does not exist; `fleet get revisions` lists them")
        except StaleRevision as exc:
            await context.abort(grpc.StatusCode.ABORTED, _stale(exc))
        self.on_change()
        log.info("revision %d restores revision %d (by %s)", out.revision.number, request.to, out.revision.author)
        return _apply_response(out)

    async def _refuse_during_rollouts(self, context) -> None:
        """A revision written now would silently undo an active rollout's progress: refuse it."""
        active = await self.store.list_rollouts(active_only=True)
        if active:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, blocking_rollouts_message(active))

    async def GetRevision(self, request, context):  # noqa: N802
        rev = await self.store.get_revision(request.number or None)
        if rev is None:
            what = f"revision {request.number} does not exist" if request.number else "no revision has been applied yet"
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{what}; `fleet apply -f DIR` creates one")
        return revision_proto(rev, full=True)

    async def ListRevisions(self, request, context):  # noqa: N802
        revs = await self.store.list_revisions(request.limit or 50)
        return admin_pb2.ListRevisionsResponse(revisions=[revision_proto(r, full=False) for r in revs])

    # -- report -------------------------------------------------------------

    async def GetReport(self, request, context):  # noqa: N802
        since = request.since.ToDatetime(tzinfo=UTC) if request.HasField("since") else None
        until = request.until.ToDatetime(tzinfo=UTC) if request.HasField("until") else None
        # A window ends after it starts; fetch a little earlier and let build_report cut exactly.
        rows = await self.store.reports_of_kind("telemetry", since - REPORT_SLACK if since else None)
        payloads = []
        for site, node, r in rows:
            # The identity the hub verified (mTLS) wins over what the payload says.
            payloads.append({**r.payload, "site": site, "node": node} if isinstance(r.payload, dict) else r.payload)
        try:
            out = await asyncio.to_thread(_render_report, payloads, list(request.by), since, until,
                                          request.html, request.slo_ttft_p95_s or None)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return admin_pb2.GetReportResponse(**out)


    # -- autoscale ----------------------------------------------------------

    async def AutoscaleStatus(self, request, context):  # noqa: N802
        window_s = request.window_s or DEFAULT_STATUS_WINDOW_S
        if not (math.isfinite(window_s) and 1 <= window_s <= MAX_STATUS_WINDOW_S):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"window {window_s} s must be between 1 s and {MAX_STATUS_WINDOW_S // 86400:.0f} days")
        now = datetime.now(UTC)
        rev = await self.store.get_revision()
        # A demand report is created when its window ends; fetch a little earlier and let the series cut.
        rows = await self.store.reports_of_kind(
            autoscale_demand.KIND, now - timedelta(seconds=window_s) - REPORT_SLACK)
        try:
            out, skipped = await asyncio.to_thread(_autoscale_status, rev, rows, now, window_s, request.service)
        except autoscale_status.UnknownService as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"{exc}\nnext: fleet autoscale status (every service)")
        return admin_pb2.AutoscaleStatusResponse(regions=[_region_status_proto(r) for r in out],
                                                 revision=rev.number if rev else 0, skipped=skipped)

    # -- drift --------------------------------------------------------------

    async def GetDrift(self, request, context):  # noqa: N802
        since = request.since.ToDatetime(tzinfo=UTC) if request.HasField("since") else None
        rows, skipped = await drift_monitor.evaluate(self.store)
        if request.service:
            rows = [r for r in rows if r.service == request.service]
        if since is not None:  # drifts raised before ``since`` are left out; OK rows stay (the current state)
            rows = [r for r in rows if not r.drifted or (r.raised and r.raised >= since)]
        return admin_pb2.GetDriftResponse(drift_json=json.dumps(
            {"rows": [r.to_json() for r in rows], "skipped": skipped}))


REPORT_SLACK = timedelta(minutes=10)
DEFAULT_STATUS_WINDOW_S = 300.0
MAX_STATUS_WINDOW_S = 7 * 86400.0


def _autoscale_status(rev: RevisionRecord | None, rows, now: datetime, window_s: float, service: str):
    bundle, placement = autoscale_status.from_revision(rev.bundle if rev else None, rev.placement if rev else None)
    reports, skipped = autoscale_demand.reports_from_rows(rows)
    for why in skipped:
        log.warning("demand report skipped: %s", why)
    return autoscale_status.region_status(bundle, placement, reports, now, window_s=window_s,
                                          service=service), skipped


def _region_status_proto(r: autoscale_status.RegionStatus) -> admin_pb2.AutoscaleRegionStatus:
    msg = admin_pb2.AutoscaleRegionStatus(
        service=r.service, region=r.region, autoscale_enabled=r.autoscale_enabled, window_s=r.window_s,
        arrivals=r.arrivals, shed=r.shed, refused=r.refused, replicas_now=r.replicas_now,
        planned_rps=r.planned_rps, next_change=r.next_change, reason=r.reason)
    for name in ("min_replicas", "max_replicas", "target_quantile", "declared_rps", "observed_rps",
                 "mean_prompt_tokens", "mean_output_tokens", "forecast_rps", "planned_replicas"):
        value = getattr(r, name)
        if value is not None:
            setattr(msg, name, value)
    if r.observed_until is not None:
        msg.observed_until.CopyFrom(convert.ts(r.observed_until))
    return msg


def _render_report(payloads, by, since, until, html: bool, slo: float | None) -> dict:
    r = report.build_report(payloads, by or report.DEFAULT_BY, since, until)
    rows, columns = report.table_rows(r)
    return {
        "report_json": json.dumps(report.to_json(r)),
        "table_json": json.dumps({"rows": rows, "columns": columns}, default=str),
        "html": report.render_html(r, slo_ttft_p95_s=slo) if html else "",
    }


def _stale(exc: StaleRevision) -> str:
    return (f"revision {exc.actual} was applied while this request was based on revision {exc.expected}; "
            "nothing changed. Review `fleet diff` and apply again")


def revision_proto(r: RevisionRecord, *, full: bool) -> admin_pb2.Revision:
    summary = Struct()
    summary.update(r.summary)
    return admin_pb2.Revision(
        number=r.number, author=r.author, message=r.message, created_at=convert.ts(r.created_at), digest=r.digest,
        bundle_json=r.bundle if full else "", placement_json=json.dumps(r.placement) if full else "",
        summary=summary, rollback_of=r.rollback_of or 0,
    )


def _apply_response(out: revisions.ApplyOutcome) -> admin_pb2.ApplyResponse:
    plan = Struct()
    plan.update(out.plan.to_dict())
    p = out.published
    return admin_pb2.ApplyResponse(
        revision=revision_proto(out.revision, full=False) if out.revision else None,
        diff=out.plan.lines(), bundle_diff=out.bundle_diff, plan=plan, unchanged=out.unchanged,
        objects_published=len(p.upserted) if p else 0, objects_deleted=len(p.deleted) if p else 0,
        objects_unchanged=p.unchanged if p else 0, drift=out.drift,
        policy_revision=revision_proto(out.policy_step.revision, full=False) if out.policy_step else None,
        policy_objects_published=len(out.policy_step.upserted) if out.policy_step else 0,
        policy_objects_deleted=len(out.policy_step.deleted) if out.policy_step else 0,
    )
