"""Revision-managed objects cannot be changed behind the revisions' back (issue 10, item 4), end to end.

`fleet set ResidencyPolicy germany-only allow={"anywhere":true}` once opened a German-only policy to a US
site; `fleet apply` of the original files then said "unchanged" and `fleet plan` "no change". Now the CLI
and the hub refuse it, and drift that still gets in (a row written straight into the store) is shown by
`fleet diff` and `fleet plan` and repaired by `fleet apply`.
"""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
import yaml

from hub.store import Database, Store
from protos.fleet.v1 import admin_pb2, admin_pb2_grpc
from tests.integration.cliharness import Hub, assert_clean_error, fleet, without_insecure_warning

ROOT = Path(__file__).resolve().parents[2]
FILES = ("-f", str(ROOT / "fleet_configs"), "-f", str(ROOT / "policies"))
OPEN = '{"anywhere": true}'


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    h = Hub(tmp_path_factory.mktemp("guard"))
    try:
        h.wait_ready()
        assert fleet(h, "apply", *FILES).returncode == 0
        yield h
    finally:
        h.close()


def test_fleet_set_and_delete_of_managed_kinds_are_refused_by_the_cli(hub) -> None:
    for args in (("set", "ResidencyPolicy", "germany-only", f"allow={OPEN}"), ("delete", "PriorityClass", "batch"),
                 ("set", "Placement", "x", "a=1")):
        proc = fleet(hub, *args)
        assert_clean_error(proc)
        assert proc.returncode == 2
        assert "change only through them" in proc.stderr and "fleet apply -f" in proc.stderr


def test_the_hub_refuses_them_too_whatever_the_client(hub) -> None:
    cfg = yaml.safe_load((hub.data / "fleetconfig.yaml").read_text())
    md = [("authorization", f"Bearer {cfg['token']}")]
    with grpc.insecure_channel(cfg["hub"]) as ch:
        admin = admin_pb2_grpc.AdminStub(ch)
        before = admin.ListObjects(admin_pb2.ListObjectsRequest(kind="ResidencyPolicy"), metadata=md)
        for kind in ("ResidencyPolicy", "PriorityClass", "Placement"):
            with pytest.raises(grpc.RpcError) as err:
                admin.PutObject(admin_pb2.PutObjectRequest(kind=kind, name="germany-only"), metadata=md)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "next: edit the YAML and run `fleet apply -f ...`" in err.value.details()
            with pytest.raises(grpc.RpcError) as err:
                admin.DeleteObject(admin_pb2.DeleteObjectRequest(kind=kind, name="germany-only"), metadata=md)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as err:
            admin.PutObject(admin_pb2.PutObjectRequest(kind="Config", name="fra-1\n"), metadata=md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        after = admin.ListObjects(admin_pb2.ListObjectsRequest(kind="ResidencyPolicy"), metadata=md)
    assert after == before


async def _open_germany_only(db_path: Path) -> None:
    db = Database(f"sqlite:///{db_path}")
    try:
        store = Store(db)
        (live,) = [o for o in await store.live_objects("ResidencyPolicy") if o.name == "germany-only"]
        spec = copy.deepcopy(live.spec)
        spec["allow"]["anywhere"] = True
        await store.put_object("ResidencyPolicy", "germany-only", spec, now=datetime.now(UTC))
    finally:
        await db.close()


def test_drift_is_shown_by_diff_and_plan_and_repaired_by_apply(hub) -> None:
    proc = fleet(hub, "diff", "1")
    assert proc.returncode == 0 and "no drift" in proc.stdout, proc.stdout + proc.stderr
    asyncio.run(_open_germany_only(hub.data / "fleet.db"))  # a row written straight into the store

    proc = fleet(hub, "diff", "1")
    assert proc.returncode == 0, proc.stderr
    assert "~ ResidencyPolicy/germany-only: changed outside revisions (allow.anywhere)" in proc.stdout
    as_json = json.loads(fleet(hub, "diff", "1", "-o", "json").stdout)
    assert as_json[0]["drift"] == ["~ ResidencyPolicy/germany-only: changed outside revisions (allow.anywhere)"]

    plan = fleet(hub, "plan", *FILES)
    assert plan.returncode == 0 and "no change" not in plan.stdout.splitlines()[0], plan.stdout
    assert plan.stdout.startswith("drift: the live objects differ from revision 1")
    assert "~ ResidencyPolicy/germany-only: changed outside revisions (allow.anywhere)" in plan.stdout

    applied = fleet(hub, "apply", *FILES)
    assert applied.returncode == 0, applied.stderr
    assert not applied.stdout.startswith("unchanged"), applied.stdout
    assert "republishes" in applied.stdout and "ResidencyPolicy/germany-only" in applied.stdout
    objs = json.loads(fleet(hub, "get", "objects", "--kind", "ResidencyPolicy", "-o", "json").stdout)
    (germany,) = [o for o in objs if o["name"] == "germany-only"]
    assert germany["spec"]["allow"]["anywhere"] is False, germany

    again = fleet(hub, "apply", *FILES)
    assert again.returncode == 0 and again.stdout.startswith("unchanged"), again.stdout
    assert "no drift" in fleet(hub, "diff", "1").stdout
    assert without_insecure_warning(again.stderr) == ""
