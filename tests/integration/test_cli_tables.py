"""`fleet get|report|rollout status` tables at 80 and 120 columns: no value is ever cut.

The views run in process against stub admin clients that answer with real
protobuf messages and a real merged report; stdout is a terminal of the given
width (COLUMNS), as a user's is. kubectl's rule: a value appears whole, on
its row's line; what does not fit a terminal is left to ``-o wide``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.struct_pb2 import Struct

from hub.cli import policy_cmd, report_cmd, rollout_cmd, views
from hub.cli.output import shown
from hub.report import build_report, table_rows, to_json
from hub.rollout import machine
from hub.rollout.plan import SiteState
from hub.rollout.spec import RolloutSpec
from protos.fleet.v1 import admin_pb2, rollout_pb2
from tests.integration.fleetdata import payloads

NOW = datetime.now(UTC).replace(microsecond=0)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(params=[80, 120])
def term(request, monkeypatch):
    """Runs a view with stdout a terminal of the given width; returns what it printed."""
    monkeypatch.setenv("COLUMNS", str(request.param))
    monkeypatch.setenv("LINES", "50")

    def run(view, *args, **kw) -> str:
        out = Terminal()
        with contextlib.redirect_stdout(out):
            view(*args, **kw)
        return out.getvalue()

    return run


def ts(dt: datetime):
    from google.protobuf.timestamp_pb2 import Timestamp

    t = Timestamp()
    t.FromDatetime(dt)
    return t


class Admin:
    """Answers the admin RPCs the views call with a fleet of long-named sites and nodes."""

    PHASES = (admin_pb2.NODE_PHASE_CONNECTED, admin_pb2.NODE_PHASE_UNREACHABLE, admin_pb2.NODE_PHASE_STALE)

    def ListSites(self, req):  # noqa: N802
        return admin_pb2.ListSitesResponse(sites=[
            admin_pb2.SiteView(site=s, phase=self.PHASES[i % 3], last_seen=ts(NOW - timedelta(minutes=i)),
                               nodes=3, nodes_connected=2, gpus=8 * (i + 1), region=r, country=c, jurisdiction=j,
                               desired_version=120 + i, applied_version=118 + i)
            for i, (s, r, c, j) in enumerate([("fra-1", "eu-central", "DE", "EU"),
                                              ("iad-1", "us-east-virginia", "US", "US"),
                                              ("sin-1", "ap-southeast", "SG", "SG")])])

    def ListNodes(self, req):  # noqa: N802
        nodes = []
        for i, (site, node) in enumerate([("fra-1", "gpu-node-01"), ("iad-1", "gpu-node-02"),
                                          ("sin-1", "gpu-node-eu-central-03")]):
            n = admin_pb2.NodeView(site=site, node=node, phase=self.PHASES[i % 3],
                                   last_seen=ts(NOW - timedelta(seconds=30 * i)), connected=i == 0,
                                   desired_version=120, applied_version=119, objects_applied=3, objects_desired=4,
                                   agent_version="0.4.1")
            n.inventory.region = "eu-central"
            g = n.inventory.gpus.add()
            g.model, g.count, g.memory_bytes = "NVIDIA A100-SXM4-80GB", 8, 80 * 2**30
            g = n.inventory.gpus.add()
            g.model, g.count, g.memory_bytes = "NVIDIA L4", 2, 24 * 2**30
            nodes.append(n)
        return admin_pb2.ListNodesResponse(nodes=nodes)

    def ListObjects(self, req):  # noqa: N802
        out = []
        for i, (kind, name, site) in enumerate([("Placement", "placement-assistant-eu", "fra-1"),
                                                ("Config", "settings", ""), ("ResidencyPolicy", "eu-personal", "")]):
            o = admin_pb2.ObjectView(nodes_applied=2, nodes_targeted=3)
            o.object.kind, o.object.name, o.object.version = kind, name, 40 + i
            o.object.id = f"7c0e6a52-1b2d-4c3e-9f0a-{i:012d}"
            o.target.site, o.target.node = site, "gpu-node-01" if site else ""
            out.append(o)
        return admin_pb2.ListObjectsResponse(objects=out)

    def ListRevisions(self, req):  # noqa: N802
        revs = []
        for n in (1, 2, 3):
            summary = Struct()
            summary.update({"replicas": 12 * n, "gpus": 16 * n, "costUsdPerHour": 41.25 * n,
                            "carbonKgPerHour": 3.125, "sloAttainment": 0.985, "unplaced": 0})
            revs.append(admin_pb2.Revision(number=n, author="alice@build-host-eu-central-1",
                                           created_at=ts(NOW - timedelta(hours=n)),
                                           message=f"move assistant-eu to v{n} after the quarterly review",
                                           digest="ab12cd34ef56ab12cd34ef56", summary=summary,
                                           rollback_of=1 if n == 3 else 0))
        return admin_pb2.ListRevisionsResponse(revisions=revs)

    def GetReport(self, req):  # noqa: N802
        r = build_report(payloads(), by=list(req.by) or ["site", "model", "version", "priority"])
        rows, columns = table_rows(r)
        return admin_pb2.GetReportResponse(table_json=json.dumps({"rows": rows, "columns": columns}, default=str),
                                           report_json=json.dumps(to_json(r), default=str))


def rollout() -> rollout_pb2.Rollout:
    spec = RolloutSpec(service="assistant-eu", to_version="v2-a100", waves="1,50%,100%")
    sites = [SiteState("fra-1"), SiteState("ber-1"), SiteState("par-1", reachable=False, has_agent=False),
             SiteState("ams-1", reachable=False)]
    state = machine.start(spec, sites, "v1", NOW - timedelta(minutes=40))
    reasons = {"par-1": "did not apply v2-a100 within the 30m progress deadline (unreachable)",
               "ams-1": "did not apply v2-a100 within the 30m progress deadline (reachable but still on v1)"}
    state = replace(state, phase=machine.Phase.PAUSED, sites=tuple(
        replace(r, status=machine.SiteStatus.FAILED if r.site in reasons else machine.SiteStatus.APPLIED,
                reason=reasons.get(r.site, ""), since=NOW - timedelta(minutes=5)) for r in state.sites))
    return rollout_pb2.Rollout(id="3f9a2c1b7d4e", service="assistant-eu", from_version="v1", to_version="v2-a100",
                               phase="Paused", status=machine.display_status(state, NOW), created_by="alice@laptop",
                               created_at=ts(NOW - timedelta(minutes=40)), updated_at=ts(NOW),
                               state_json=json.dumps(state.to_dict()))


class Rollouts:
    def Get(self, req):  # noqa: N802
        return rollout()

    def List(self, req):  # noqa: N802
        return rollout_pb2.ListRolloutsResponse(rollouts=[rollout()])


def row_line(out: str, first: str) -> str:
    lines = [x for x in out.splitlines() if x.split() and x.split()[0] == first]
    assert len(lines) == 1, out
    return lines[0]


def assert_whole(out: str, rows: list[dict], columns, first_key: str, wide: bool = False) -> None:
    """Every shown value of every row appears whole on its row's line; nothing is elided."""
    assert "…" not in out and "..." not in out, out
    for r in rows:
        line = row_line(out, str(r[first_key]))
        for _, key in shown(columns, wide):
            value = r.get(key)
            text = "-" if value in (None, "") else str(value)
            assert text in line, f"{key}={text!r} not whole in {line!r}\n{out}"


@pytest.mark.parametrize("what,columns,first", [("sites", views.SITE_COLUMNS, "site"),
                                                ("nodes", views.NODE_COLUMNS, "site"),
                                                ("objects", views.OBJECT_COLUMNS, "kind")])
@pytest.mark.parametrize("wide", [False, True])
def test_get_tables_never_cut_a_value(term, what, columns, first, wide):
    out = term(views.get, Admin(), what, "table", wide=wide)
    rows = {"sites": lambda: [views.site_row(s) for s in Admin().ListSites(None).sites],
            "nodes": lambda: [views.node_row(n) for n in Admin().ListNodes(None).nodes],
            "objects": lambda: [views.object_row(o) for o in Admin().ListObjects(None).objects]}[what]()
    # The values the issue saw cut: the phase, the region, a GPU list.
    for r in rows:
        for key in ("phase", "gpus", "region", "name", "target"):
            if key in r and any(k == key for _, k, *_ in columns) and (wide or key != "region" or what == "sites"):
                assert str(r[key]) in out
    assert_whole(out, rows, columns, first, wide)
    if not wide:
        assert all(len(x) <= 80 for x in out.splitlines()) or what == "nodes", out


def test_get_revisions_never_cuts_a_value(term):
    out = term(policy_cmd.get_revisions, Admin(), "table")
    rows = [policy_cmd.revision_row(r) for r in Admin().ListRevisions(None).revisions]
    for r in rows:
        line = row_line(out, str(r["revision"]))
        for key in ("author", "message", "replicas", "costUsdPerHour"):
            assert str(r[key]) in line, (key, out)


@pytest.mark.parametrize("wide", [False, True])
def test_report_never_cuts_a_value(term, wide, capsys):
    args = argparse.Namespace(by="", since=None, html=None, slo_ttft=None, output="table", wide=wide)
    out = term(report_cmd.run, Admin(), args)
    table = json.loads(Admin().GetReport(admin_pb2.GetReportRequest()).table_json)
    assert "…" not in out
    body = out.splitlines()[1:]
    assert len(body) == len(table["rows"]), out
    keys = [k for _, k in table["columns"]]
    expected = [k for k in keys if wide or k in {"site", "model", "version", "priority", "requests", "errorPct",
                                                 "ttftP95Ms", "itlP95Ms", "tokensPerS", "usdPer1kRequests"}]
    for row, line in zip(table["rows"], body):
        cells = line.split()
        for k in expected:
            v = row.get(k)
            text = "-" if v in (None, "") else str(v)
            assert text in cells, f"{k}={text!r} not a whole cell of {line!r}\n{out}"
    # Units and the way to every column are said once, beside the table, not in each header.
    err = capsys.readouterr().err
    assert "latencies in ms" in err and ("-o wide" in err) is not wide


def test_rollout_status_never_cuts_a_value(term):
    args = argparse.Namespace(service="assistant-eu", output="table", watch=False, wide=False)
    out = term(rollout_cmd.status, Rollouts(), args)
    state = machine.RolloutState.from_dict(json.loads(rollout().state_json))
    for r in state.sites:
        line = row_line(out, r.site)
        assert r.status.value in line and (r.reason or "-") in line, out
    assert "…" not in out


def test_rollout_list_never_cuts_a_value(term):
    args = argparse.Namespace(service="", output="table", watch=False, wide=False)
    out = term(rollout_cmd.status, Rollouts(), args)
    line = row_line(out, "3f9a2c1b7d4e")
    for text in ("assistant-eu", "v2-a100", "Paused", "1/3", "2 applied, 2 failed"):
        assert text in line, out
