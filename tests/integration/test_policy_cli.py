"""`fleet plan/apply/get revisions/diff/rollback/explain` on the shipped examples, end to end.

A real hub process and a real agent process; the agent must end up holding its
own Placement (and the fleet's residency policies and priority classes), and
nothing meant for other nodes.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from edge_agent.state import LocalState
from tests.integration.cliharness import Hub, assert_clean_error, fleet

ROOT = Path(__file__).resolve().parents[2]
FILES = ("-f", str(ROOT / "fleet_configs"), "-f", str(ROOT / "policies"))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    h = Hub(tmp_path_factory.mktemp("policy"))
    try:
        h.wait_ready()
        yield h
    finally:
        h.close()


def revisions(hub: Hub) -> list[dict]:
    proc = fleet(hub, "get", "revisions", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_bad_files_exit_2_with_one_line_per_problem_and_change_nothing(hub, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(ROOT / "policies", bad)
    text = (bad / "residency.yaml").read_text()
    (bad / "residency.yaml").write_text(text.replace("jurisdictions: [EEA]", "jurisdictions: [EEAA]", 1))
    (bad / "broken.yaml").write_text("apiVersion: fleet.edge/v1alpha1\nkind: Site\nmetadata: {name: x\n")
    for cmd in ("plan", "apply"):
        proc = fleet(hub, cmd, "-f", str(ROOT / "fleet_configs"), "-f", str(bad))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        lines = proc.stderr.splitlines()
        assert any("residency.yaml:" in ln and "'EEAA'" in ln and "did you mean 'EEA'" in ln for ln in lines), lines
        assert any(ln.startswith(f"{bad / 'broken.yaml'}:") for ln in lines), lines
        assert "Traceback" not in proc.stderr
        assert "nothing was applied" in proc.stderr
    assert revisions(hub) == []


def test_plan_then_apply_then_agent_receives_its_own_placement(hub):
    proc = fleet(hub, "plan", *FILES)
    assert proc.returncode == 0, proc.stderr
    assert "dry run" in proc.stdout and "cost: 0.00 ->" in proc.stdout and "residency " in proc.stdout
    assert revisions(hub) == []  # plan stores nothing

    proc = fleet(hub, "apply", *FILES, "-m", "first fleet", "--author", "ana")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("revision 1 applied by ana")
    [rev] = revisions(hub)
    assert (rev["revision"], rev["author"], rev["message"]) == (1, "ana", "first fleet")
    assert rev["replicas"] > 0 and rev["costUsdPerHour"] > 0

    objs = json.loads(fleet(hub, "get", "objects", "--kind", "Placement", "-o", "json").stdout)
    mine = next(o for o in objs if o["target"].startswith("fra-1/"))
    site, node = mine["target"].split("/")
    agent = hub.start_agent(site, node, region="eu-central", country="DE", jurisdiction="EU")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        objs = {o["name"]: o for o in json.loads(fleet(hub, "get", "objects", "--kind", "Placement", "-o", "json").stdout)}
        if objs[mine["name"]]["applied"] == "1/1":
            break
        assert agent.poll() is None
        time.sleep(0.3)
    assert objs[mine["name"]]["applied"] == "1/1"
    agent.terminate()
    agent.wait(20)
    state = LocalState(hub.agent_dir(site, node))
    try:
        held = state.objects()
    finally:
        state.close()
    placements = [o for o in held if o.kind == "Placement"]
    assert [o.name for o in placements] == [mine["name"]]
    assert {a["node"] for a in placements[0].spec["assignments"]} == {node}
    assert {o.kind for o in held} == {"SiteLocation", "Placement", "ResidencyPolicy", "PriorityClass"}
    # where the site is comes from the hub's Site record, only this site's (the door decides with it)
    assert [o.spec for o in held if o.kind == "SiteLocation"] == [
        {"site": site, "country": "DE", "jurisdictions": ["EU", "EEA"], "region": "eu-central",
         "regions": ["eu-central", "eu-east", "eu-north", "eu-south", "eu-west", "uk", "us-east"]}]

    again = fleet(hub, "apply", *FILES)
    assert again.returncode == 0 and again.stdout.startswith("unchanged: revision 1"), again.stdout + again.stderr


def test_revisions_diff_rollback_and_explain(hub, tmp_path):
    if not revisions(hub):
        assert fleet(hub, "apply", *FILES).returncode == 0
    services = tmp_path / "services.yaml"
    text = (ROOT / "fleet_configs" / "services.yaml").read_text()
    services.write_text(text.replace("rate: 12rps", "rate: 3rps"))
    conf = tmp_path / "conf"
    conf.mkdir()
    for f in (ROOT / "fleet_configs").glob("*.yaml"):
        (conf / f.name).write_text(services.read_text() if f.name == "services.yaml" else f.read_text())
    proc = fleet(hub, "apply", "-f", str(conf), "-f", str(ROOT / "policies"), "--base-revision", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("revision 2 applied")

    stale = fleet(hub, "apply", *FILES, "--base-revision", "1")
    assert_clean_error(stale)
    assert "revision 2 was applied while this request was based on revision 1" in stale.stderr
    assert [r["revision"] for r in revisions(hub)] == [2, 1]

    d = fleet(hub, "diff", "1", "2")
    assert d.returncode == 0, d.stderr
    assert "~ Service/assistant-de" in d.stdout and "rate" in d.stdout, d.stdout
    dj = json.loads(fleet(hub, "diff", "1", "2", "-o", "json").stdout)[0]
    assert (dj["from"], dj["to"]) == (1, 2) and dj["resources"]

    rb = fleet(hub, "rollback", "1", "-m", "back")
    assert rb.returncode == 0, rb.stderr
    assert rb.stdout.startswith("revision 3 restores revision 1")
    top = revisions(hub)[0]
    assert (top["revision"], top["rollbackOf"], top["message"]) == (3, 1, "back")
    assert json.loads(fleet(hub, "diff", "1", "3", "-o", "json").stdout)[0]["resources"] == []

    missing = fleet(hub, "rollback", "42")
    assert_clean_error(missing, next_line=False)
    assert "revision 42 does not exist" in missing.stderr

    ex = fleet(hub, "explain", "service", "assistant-de")
    assert ex.returncode == 0, ex.stderr
    assert "chosen" in ex.stdout and "rejected" in ex.stdout and "germany-only" in ex.stdout
    nope = fleet(hub, "explain", "service", "no-such")
    assert_clean_error(nope)
    assert "has no Service 'no-such'" in nope.stderr


def test_plan_and_apply_exit_3_when_demand_that_may_not_be_shed_has_no_place(hub, tmp_path):
    """Issue 12: non-sheddable demand left unplaced is not success. Plan says so and exits 3;
    apply still stores the revision (partial service beats none) but exits 3 too."""
    configs = tmp_path / "configs"
    shutil.copytree(ROOT / "fleet_configs", configs)
    text = (configs / "services.yaml").read_text()
    (configs / "services.yaml").write_text(text.replace("{region: eu-central, rate: 12rps, meanPromptTokens: 800",
                                                        "{region: eu-central, rate: 5000rps, meanPromptTokens: 800", 1))
    files = ("-f", str(configs), "-f", str(ROOT / "policies"))
    before = len(revisions(hub))
    proc = fleet(hub, "plan", *files)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "may not be shed have no place (exit 3)" in proc.stderr
    assert "assistant-de (eu-central):" in proc.stderr and "req/s" in proc.stderr
    assert "ResidencyPolicy" in proc.stderr  # Germany-only: the policy is what keeps it off other GPUs
    assert len(revisions(hub)) == before  # plan stores nothing
    proc = fleet(hub, "apply", *files, "-m", "too much demand")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "stored (partial service beats none)" in proc.stderr
    assert len(revisions(hub)) == before + 1


def test_apply_of_a_changed_policy_reports_the_policy_revision_and_the_placement_revision(hub, tmp_path):
    """Issue 10 item 2: a changed ResidencyPolicy is published in a revision of its own before the hub
    plans; `fleet apply` says so and `fleet get revisions` lists both."""
    if not revisions(hub):
        assert fleet(hub, "apply", *FILES).returncode == 0
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policies)
    text = (policies / "residency.yaml").read_text()
    (policies / "residency.yaml").write_text(text.replace("    countries: [DE]\n",
                                                          "    countries: [DE]\n  deny:\n    sites: [ham-1]\n", 1))
    before = revisions(hub)[0]["revision"]
    proc = fleet(hub, "apply", "-f", str(ROOT / "fleet_configs"), "-f", str(policies), "-m", "no hamburg")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith(f"revision {before + 1} published the policies first, before planning: "
                            "1 objects published"), first
    assert f"then the placements: revision {before + 2} applied by" in first, first
    top = revisions(hub)[:2]
    assert [r["revision"] for r in top] == [before + 2, before + 1]
    assert top[1]["message"] == "no hamburg [step 1/2: policies, published before placement planning]"
    assert top[0]["message"] == f"no hamburg [step 2/2: placements (policies in revision {before + 1})]"
    again = fleet(hub, "apply", "-f", str(ROOT / "fleet_configs"), "-f", str(policies))
    assert again.returncode == 0 and again.stdout.startswith(f"unchanged: revision {before + 2}"), again.stdout
