"""`fleet get` and `fleet describe`: admin responses as rows."""

from __future__ import annotations

from datetime import UTC

from google.protobuf import json_format

from hub.cli.errors import CliError
from hub.cli.output import age, emit
from protos.fleet.v1 import admin_pb2

PHASE = {
    admin_pb2.NODE_PHASE_CONNECTED: "Connected",
    admin_pb2.NODE_PHASE_STALE: "Stale",
    admin_pb2.NODE_PHASE_UNREACHABLE: "Unreachable",
    admin_pb2.NODE_PHASE_UNSPECIFIED: "Unknown",
}


def _gpus(inv) -> str:
    return ", ".join(f"{g.count}x {g.model} ({g.memory_bytes / 2**30:.0f}GiB)" for g in inv.gpus) or "none"


def node_row(n: admin_pb2.NodeView) -> dict:
    return {
        "site": n.site,
        "node": n.node,
        "phase": PHASE[n.phase],
        "lastSeen": n.last_seen.ToDatetime().isoformat() + "Z",
        "age": age(n.last_seen.ToDatetime(tzinfo=UTC)),
        "connected": n.connected,
        "gpus": _gpus(n.inventory),
        "region": n.inventory.region,
        "country": n.inventory.country,
        "jurisdiction": n.inventory.jurisdiction,
        "unschedulable": n.inventory.unschedulable,
        "desiredVersion": n.desired_version,
        "appliedVersion": n.applied_version,
        "objects": f"{n.objects_applied}/{n.objects_desired}",
        "agentVersion": n.agent_version,
        "recentErrors": list(n.recent_errors),
        "inventory": json_format.MessageToDict(n.inventory),
        "models": [model_row(m) for m in n.models],
    }


def model_row(m: admin_pb2.ModelIntegrity) -> dict:
    """The weights one node serves for a model version, as its agent last checked them."""
    row = {"model": m.model, "version": m.version, "weights": m.decision, "digest": m.digest,
           "checkedAt": m.checked_at.ToDatetime().isoformat() + "Z"}
    if m.decision != "verified":
        row["expected"] = m.expected
        row["reason"] = m.reason
    return row


def site_row(s: admin_pb2.SiteView) -> dict:
    return {
        "site": s.site,
        "phase": PHASE[s.phase],
        "lastSeen": s.last_seen.ToDatetime().isoformat() + "Z",
        "age": age(s.last_seen.ToDatetime(tzinfo=UTC)),
        "nodes": f"{s.nodes_connected}/{s.nodes}",
        "gpus": s.gpus,
        "region": s.region,
        "country": s.country,
        "jurisdiction": s.jurisdiction,
        "desiredVersion": s.desired_version,
        "appliedVersion": s.applied_version,
    }


def object_row(o: admin_pb2.ObjectView) -> dict:
    return {
        "kind": o.object.kind,
        "name": o.object.name,
        "id": o.object.id,
        "version": o.object.version,
        "target": f"{o.target.site or '*'}/{o.target.node or '*'}",
        "applied": f"{o.nodes_applied}/{o.nodes_targeted}",
        "spec": json_format.MessageToDict(o.object.spec),
    }


# kubectl-style: what fits 80 columns by default, the rest with -o wide (third field True).
SITE_COLUMNS = [("SITE", "site"), ("PHASE", "phase"), ("LAST SEEN", "age"), ("NODES", "nodes"), ("GPUS", "gpus"),
                ("REGION", "region"), ("APPLIED", "appliedVersion"), ("COUNTRY", "country", True),
                ("JURISDICTION", "jurisdiction", True), ("DESIRED", "desiredVersion", True)]
NODE_COLUMNS = [("SITE", "site"), ("NODE", "node"), ("PHASE", "phase"), ("LAST SEEN", "age"), ("GPUS", "gpus"),
                ("OBJECTS", "objects"), ("DESIRED", "desiredVersion", True), ("APPLIED", "appliedVersion", True),
                ("REGION", "region", True), ("AGENT", "agentVersion", True)]
OBJECT_COLUMNS = [("KIND", "kind"), ("NAME", "name"), ("VERSION", "version"), ("TARGET", "target"),
                  ("APPLIED", "applied"), ("ID", "id", True)]


def get(admin, what: str, fmt: str, site: str = "", kind: str = "", wide: bool = False) -> int:
    if what == "sites":
        emit([site_row(s) for s in admin.ListSites(admin_pb2.ListSitesRequest()).sites], SITE_COLUMNS, fmt, wide=wide)
    elif what == "nodes":
        emit([node_row(n) for n in admin.ListNodes(admin_pb2.ListNodesRequest(site=site)).nodes], NODE_COLUMNS, fmt, wide=wide)
    elif what == "objects":
        emit([object_row(o) for o in admin.ListObjects(admin_pb2.ListObjectsRequest(kind=kind)).objects], OBJECT_COLUMNS, fmt,
             wide=wide)
    return 0


def describe(admin, what: str, name: str, fmt: str) -> int:
    if what == "node":
        if "/" not in name:
            raise CliError(f"node {name!r} must be given as SITE/NODE", "list them with `fleet get nodes`", code=2)
        site, node = name.split("/", 1)
        rows = [node_row(n) for n in admin.ListNodes(admin_pb2.ListNodesRequest(site=site)).nodes if n.node == node]
    else:
        rows = [site_row(s) for s in admin.ListSites(admin_pb2.ListSitesRequest()).sites if s.site == name]
        if rows:
            rows[0]["nodeList"] = [node_row(n) for n in admin.ListNodes(admin_pb2.ListNodesRequest(site=name)).nodes]
    if not rows:
        raise CliError(f"{what} {name!r} not found", f"list them with `fleet get {what}s`", code=1)
    fmt = "yaml" if fmt == "table" else fmt
    emit(rows, [], fmt)
    return 0
