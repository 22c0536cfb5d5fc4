"""`fleet plan`, `apply`, `get revisions`, `diff`, `rollback` and `explain`.

Bundles are validated here first, so a bad file is reported with its file and
line and nothing is sent; the hub validates again and plans against its latest
revision. `plan` is the hub's dry run of `apply`.
"""

from __future__ import annotations

import getpass
import json
import socket
import sys
from datetime import UTC

from google.protobuf import json_format

from hub.cli.client import Admin
from hub.cli.errors import CliError
from hub.cli.output import age, console, emit
from hub.placement.api import explain
from hub.placement.build import problem_from_bundle
from hub.placement.diff import plan_diff
from hub.placement.model import Placement
from hub.policy import Bundle, PolicyError, diff, load_bundle
from hub.publish import MANAGED_KINDS, desired_objects
from hub.revisions import drift
from hub.store.repo import DesiredPut
from protos.fleet.v1 import admin_pb2


def default_author() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def load(paths: list[str]) -> Bundle:
    """The bundle in ``paths``, or exit 2 with one line per problem."""
    try:
        return load_bundle(paths)
    except PolicyError as exc:
        for p in exc.problems:
            print(str(p), file=sys.stderr)
        n = len(exc.problems)
        raise CliError(f"{n} problem{'s' * (n != 1)} in {', '.join(paths)}; nothing was applied",
                       "fix the lines above and run the command again", code=2) from None


def unverified_versions(bundle: Bundle) -> list[str]:
    """``model:version`` of every Model version that opts out of weights verification (``integrity: none``)."""
    return [f"{name}:{v.name}" for name, m in sorted(bundle.models.items()) for v in m.spec.versions
            if v.integrity == "none"]


def warn_unverified(bundle: Bundle) -> None:
    """Say on stderr which versions agents will serve without checking their weights (after the
    hub answered, so an error is still the first thing on stderr; not for an unchanged bundle,
    which was warned about when it was applied)."""
    names = unverified_versions(bundle)
    if names:
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        print(f"warning: {len(names)} model version(s) state `integrity: none`: agents serve their weights "
              f"unverified ({shown}); `fleet model digest DIR` prints the digest to put there instead",
              file=sys.stderr)


def _apply_request(bundle: Bundle, args, *, dry_run: bool) -> admin_pb2.ApplyRequest:
    req = admin_pb2.ApplyRequest(bundle_json=bundle.to_json(), author=getattr(args, "author", "") or default_author(),
                                 message=getattr(args, "message", "") or "", dry_run=dry_run, solver=args.solver)
    if getattr(args, "base_revision", None) is not None:
        req.base_revision = args.base_revision
    return req


def _print_outcome(resp: admin_pb2.ApplyResponse, fmt: str, *, header: str) -> None:
    if fmt != "table":
        emit([json_format.MessageToDict(resp, preserving_proto_field_name=False)], [], fmt)
        return
    out = console()
    out.print(header)
    if resp.bundle_diff:
        out.print("resources:")
        for line in resp.bundle_diff:
            out.print(f"  {line}", markup=False)
    out.print("placement:")
    for line in resp.diff:
        out.print(f"  {line}", markup=False)
    _print_drift(out, list(resp.drift))


def _print_drift(out, lines: list[str]) -> None:
    if lines:
        out.print("live objects changed outside revisions (drift):")
        for line in lines:
            out.print(f"  {line}", markup=False)


#: Exit status of ``fleet plan``/``fleet apply`` when demand that may not be shed stays unplaced.
EXIT_UNPLACED = 3


def _required_unplaced(resp: admin_pb2.ApplyResponse) -> list[str]:
    """Unplaced demand that is not sheddable, one line each, from the plan the hub returned."""
    plan = json_format.MessageToDict(resp.plan) if resp.HasField("plan") else {}
    return [str(line) for line in plan.get("requiredUnplaced", [])]


def _unplaced_status(resp: admin_pb2.ApplyResponse, *, stored: bool) -> int:
    """0, or EXIT_UNPLACED with the reason on stderr when non-sheddable demand has no place."""
    lines = _required_unplaced(resp)
    if not lines:
        return 0
    what = (f"revision {resp.revision.number} stored (partial service beats none), but "
            if stored else "")
    print(f"fleet: {what}{len(lines)} demand(s) that may not be shed have no place (exit {EXIT_UNPLACED}):",
          file=sys.stderr)
    for line in lines:
        print(f"  {line}", file=sys.stderr)
    print("  next: add GPUs where the residency policy allows, lower the demand or mark it sheddable, "
          "then `fleet plan -f ...` again", file=sys.stderr)
    return EXIT_UNPLACED


def plan(admin: Admin, args) -> int:
    resp = admin.Apply(_apply_request(args.bundle, args, dry_run=True))
    base = resp.revision.number if resp.HasField("revision") and resp.revision.number else 0
    if resp.unchanged:
        header = f"no change: the bundle and its placement equal revision {base}"
    elif resp.drift and not resp.bundle_diff:
        header = (f"drift: the live objects differ from revision {base} (the bundle is the same); "
                  "`fleet apply -f ...` republishes the revision's objects")
    else:
        header = f"plan against revision {base or '(none)'} (dry run: nothing stored; `fleet apply -f ...` commits it)"
    _print_outcome(resp, args.output, header=header)
    if not resp.unchanged:
        warn_unverified(args.bundle)
    return _unplaced_status(resp, stored=False)


def apply(admin: Admin, args) -> int:
    resp = admin.Apply(_apply_request(args.bundle, args, dry_run=False))
    r = resp.revision
    if resp.unchanged:
        header = f"unchanged: revision {r.number} already has this bundle and placement"
    elif resp.drift and not resp.bundle_diff:
        header = (f"revision {r.number} republishes the previous revision's objects over live objects changed "
                  f"outside revisions: {resp.objects_published} objects restored, {resp.objects_deleted} removed")
    else:
        header = (f"revision {r.number} applied by {r.author}: {resp.objects_published} objects published, "
                  f"{resp.objects_deleted} removed, {resp.objects_unchanged} unchanged; "
                  "watch agents apply them: fleet get objects --kind Placement")
    if resp.HasField("policy_revision"):
        p = resp.policy_revision
        header = (f"revision {p.number} published the policies first, before planning: "
                  f"{resp.policy_objects_published} objects published, {resp.policy_objects_deleted} removed; "
                  f"then the placements: {header}")
    _print_outcome(resp, args.output, header=header)
    if not resp.unchanged:
        warn_unverified(args.bundle)
    return _unplaced_status(resp, stored=not resp.unchanged)


def rollback(admin: Admin, args) -> int:
    req = admin_pb2.RollbackRequest(to=args.revision, author=args.author or default_author(), message=args.message or "")
    if args.base_revision is not None:
        req.base_revision = args.base_revision
    resp = admin.Rollback(req)
    r = resp.revision
    _print_outcome(resp, args.output, header=f"revision {r.number} restores revision {args.revision} "
                                             f"({resp.objects_published} objects published, {resp.objects_deleted} removed)")
    return 0


def revision_row(r: admin_pb2.Revision) -> dict:
    s = json_format.MessageToDict(r.summary)
    created = r.created_at.ToDatetime(tzinfo=UTC)
    return {
        "revision": r.number, "author": r.author, "created": created.isoformat(), "age": age(created),
        "message": r.message, "digest": r.digest[:12], "rollbackOf": r.rollback_of or None,
        "replicas": int(s.get("replicas", 0)), "gpus": int(s.get("gpus", 0)),
        "costUsdPerHour": s.get("costUsdPerHour"), "carbonKgPerHour": s.get("carbonKgPerHour"),
        "sloAttainment": s.get("sloAttainment"), "unplaced": int(s.get("unplaced", 0)),
    }


def get_revisions(admin: Admin, fmt: str, wide: bool = False) -> int:
    rows = [revision_row(r) for r in admin.ListRevisions(admin_pb2.ListRevisionsRequest()).revisions]
    if not rows and fmt == "table":
        print("no revisions yet; `fleet apply -f fleet_configs -f policies` creates the first")
        return 0
    emit(rows, [("REVISION", "revision"), ("AGE", "age"), ("AUTHOR", "author"), ("REPLICAS", "replicas"),
                ("GPUS", "gpus"), ("USD/H", "costUsdPerHour"), ("KGCO2E/H", "carbonKgPerHour", True),
                ("SLO", "sloAttainment", True), ("ROLLBACK-OF", "rollbackOf", True), ("DIGEST", "digest", True),
                ("MESSAGE", "message")], fmt, wide=wide)
    return 0


def _revision(admin: Admin, number: int) -> tuple[admin_pb2.Revision, Bundle, Placement]:
    r = admin.GetRevision(admin_pb2.GetRevisionRequest(number=number))
    try:
        bundle = Bundle.from_json(r.bundle_json)
    except PolicyError as exc:  # written by a newer or older hub; say so rather than crash
        raise CliError(f"revision {r.number} holds a bundle this CLI cannot read: {exc.problems[0]}",
                       "use a `fleet` of the hub's version") from None
    return r, bundle, Placement.from_spec(json.loads(r.placement_json or "{}"))


def diff_revisions(admin: Admin, args) -> int:
    a, bundle_a, place_a = _revision(admin, args.rev1)
    b, bundle_b, place_b = _revision(admin, args.rev2 or 0)
    resources = diff(bundle_a, bundle_b).lines()
    placement = plan_diff(place_a, place_b, problem_from_bundle(bundle_b))
    latest = admin.GetRevision(admin_pb2.GetRevisionRequest(number=0)).number if args.rev2 else b.number
    drifted = live_drift(admin, b, bundle_b, place_b) if b.number == latest else None
    if args.output != "table":
        row = {"from": a.number, "to": b.number, "resources": resources, "placement": placement.to_dict()}
        if drifted is not None:
            row["drift"] = drifted
        emit([row], [], args.output)
        return 0
    out = console()
    out.print(f"revision {a.number} -> {b.number}")
    out.print("resources:" if resources else "resources: no change")
    for line in resources:
        out.print(f"  {line}", markup=False)
    out.print("placement:")
    for line in placement.lines():
        out.print(f"  {line}", markup=False)
    if drifted is not None:
        if drifted:
            _print_drift(out, drifted)
            out.print("  next: `fleet apply -f ...` of the revision's files republishes its objects", markup=False)
        else:
            out.print(f"live objects: as revision {b.number} published them (no drift)")
    return 0


def live_drift(admin: Admin, rev: admin_pb2.Revision, bundle: Bundle, placement: Placement) -> list[str]:
    """How the hub's live revision-managed objects differ from what revision ``rev`` published."""
    desired = desired_objects(bundle, placement)
    live = []
    for kind in MANAGED_KINDS:
        for v in admin.ListObjects(admin_pb2.ListObjectsRequest(kind=kind)).objects:
            live.append(DesiredPut(v.object.kind, v.object.name, json_format.MessageToDict(v.object.spec),
                                   v.target.site, v.target.node))
    return drift(desired, live)


def explain_service(admin: Admin, args) -> int:
    r, bundle, placement = _revision(admin, args.revision or 0)
    if args.name not in bundle.services:
        known = ", ".join(sorted(bundle.services)) or "none"
        raise CliError(f"revision {r.number} has no Service {args.name!r} (it has: {known})",
                       "fleet get revisions; fleet explain service NAME --revision N")
    explanations = explain(bundle, placement, args.name)
    if args.output != "table":
        emit([{"service": e.service, "region": e.region, "summary": e.summary,
               "sites": [{"site": v.site, "status": v.status, "constraint": v.constraint, "reason": v.reason,
                          "pool": v.pool} for v in e.sites]} for e in explanations], [], args.output)
        return 0
    out = console()
    out.print(f"Service {args.name} at revision {r.number}:")
    for e in explanations:
        for line in e.lines():
            out.print(f"  {line}", markup=False)
    return 0
