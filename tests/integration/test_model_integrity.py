"""Model integrity on the hub's side (issue 13, item 4): what each node serves in `fleet describe
node`, the digest in the published assignments, `fleet model digest`, and stored revisions from
before integrity (migration 0008). Real SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from edge_agent.serving.integrity import WeightsVerifier
from fleet_contract.weights import manifest
from hub.admin import AdminService
from hub.cli import views
from hub.cli.main import main as fleet
from hub.policy import Bundle, PolicyError, load_bundle, load_bundle_text
from hub.report import integrity
from hub.revisions import apply_bundle
from hub.store import Database, Store
from hub.store.db import alembic_config
from hub.store.repo import IncomingReport
from hub.sync import LivenessPolicy
from protos.fleet.v1 import admin_pb2
from tests.harness.bundles import ONE_NODE as BUNDLE

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
GOOD = "sha256:" + "a" * 64
BAD = "sha256:" + "b" * 64


def _sync_engine(db: Database):
    return create_engine(db.sync_url, poolclass=NullPool)


def pinned(digest: str = GOOD) -> Bundle:
    return load_bundle_text(BUNDLE.replace("integrity: none", f"digest: {digest}"), "fleet.yaml")


def check(seq: int, at: datetime, decision: str, digest: str, version: str = "v3", reason: str = "") -> IncomingReport:
    """A report as the agent's WeightsVerifier sends it (edge_agent/serving/integrity.py Verdict.payload)."""
    return IncomingReport(seq, integrity.KIND, at, {"time": at.isoformat(), "model": "assistant", "version": version,
                                                    "decision": decision, "digest": digest, "expected": GOOD,
                                                    "reason": reason, "files": 3, "sizeBytes": 10})


async def test_describe_node_shows_the_digest_each_node_serves(store):
    out = await apply_bundle(store, pinned(), author="ana", message="", base=0, now=T0, solver="greedy")
    placements = [o for o in await store.live_objects("Placement")]
    assert placements and all(a["digest"] == GOOD and a["integrity"] == "sha256"
                              for o in placements for a in o.spec["assignments"])
    assert out.revision is not None
    node = await store.register_node("fra-1", "gpu-a", "test", {}, T0)
    await store.store_reports(node.id, [
        check(1, T0, "refused", BAD, reason="model assistant version v3: the weights ... have digest " + BAD),
        check(2, T0 + timedelta(minutes=5), "verified", GOOD),
        check(3, T0 + timedelta(minutes=6), "verified", GOOD, version="v-old"),  # not assigned here any more
    ], T0, incarnation="i1")
    svc = AdminService(store, LivenessPolicy(), lambda: None)
    (view,) = (await svc.ListNodes(admin_pb2.ListNodesRequest(site="fra-1"), None)).nodes
    row = views.node_row(view)
    assert row["models"] == [{"model": "assistant", "version": "v3", "weights": "verified", "digest": GOOD,
                              "checkedAt": (T0 + timedelta(minutes=5)).replace(tzinfo=None).isoformat() + "Z"}]
    # a later refusal is what describe shows, with what was expected and why
    await store.store_reports(node.id, [check(4, T0 + timedelta(minutes=9), "refused", BAD, reason="mismatch")], T0,
                              incarnation="i1")
    (view,) = (await svc.ListNodes(admin_pb2.ListNodesRequest(site="fra-1"), None)).nodes
    (m,) = views.node_row(view)["models"]
    assert (m["weights"], m["digest"], m["expected"], m["reason"]) == ("refused", BAD, GOOD, "mismatch")
    found = integrity.refusal_records(await store.reports_of_kind(integrity.KIND))
    assert [(a.actor, a.action, a.subject) for a in found] == [("fra-1/gpu-a", "integrity-refused", "model/assistant/v3")] * 2


def test_fleet_model_digest_prints_what_the_agent_verifies(tmp_path: Path, capsys) -> None:
    d = tmp_path / "models" / "assistant" / "v3"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"\0" * 5000)
    assert fleet(["model", "digest", str(d), "--files"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("digest: "))
    assert line == f"digest: {manifest(d).digest}"
    assert "model.safetensors" in out  # --files lists each file
    bundle = load_bundle_text(BUNDLE.replace("integrity: none", line), "fleet.yaml")  # pastes into the spec as is
    digest = bundle.models["assistant"].spec.version("v3").digest
    assert WeightsVerifier(tmp_path / "models").check("assistant", "v3", digest).decision == "verified"
    assert fleet(["model", "digest", str(tmp_path / "nowhere")]) == 2


def test_a_version_without_digest_or_opt_out_is_refused_at_load() -> None:
    with pytest.raises(PolicyError) as info:
        load_bundle_text(BUNDLE.replace("    integrity: none\n", ""), "fleet.yaml")
    (problem,) = info.value.problems
    assert "digest is missing" in str(problem) and "fleet model digest DIR" in str(problem)
    assert "integrity: none" in str(problem)
    with pytest.raises(PolicyError, match="remove one of them"):
        load_bundle_text(BUNDLE.replace("integrity: none", f"integrity: none\n    digest: {GOOD}"), "fleet.yaml")


def test_migration_0008_keeps_revisions_from_before_integrity_readable(db_url):
    """A revision stored before Model versions had `digest`/`integrity` reads back after the upgrade,
    as `integrity: none` (what agents did then), with its digest taken again over the new JSON."""
    import asyncio

    from alembic import command
    from sqlalchemy import text

    items = json.loads(load_bundle([ROOT / "fleet_configs", ROOT / "policies"]).to_json())
    for item in items:
        for v in item["spec"].get("versions", []) if item["kind"] == "Model" else []:
            v.pop("digest"), v.pop("integrity")
    old = json.dumps(items, sort_keys=True, separators=(",", ":"))
    db = Database(db_url)
    engine = _sync_engine(db)
    try:
        with engine.begin() as conn:
            cfg = alembic_config(db.sync_url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0005")
            conn.execute(text("INSERT INTO revisions (number, author, message, created_at, digest, bundle, placement, "
                              "summary) VALUES (1, 'ana', '', :t, :d, :b, '{}', '{}')"),
                         {"t": T0, "d": hashlib.sha256(old.encode()).hexdigest(), "b": old})
        with pytest.raises(PolicyError):
            Bundle.from_json(old)  # what the hub would have failed on without the migration
        db.migrate()
        rev = asyncio.run(Store(db).get_revision(1))
        bundle = Bundle.from_json(rev.bundle)
        assert {v.integrity for m in bundle.models.values() for v in m.spec.versions} == {"none"}
        assert rev.bundle == bundle.to_json() and rev.digest == bundle.digest()
    finally:
        engine.dispose()
        asyncio.run(db.close())


def test_plan_and_apply_warn_about_versions_served_unverified(capsys) -> None:
    from hub.cli.policy_cmd import unverified_versions, warn_unverified

    shipped = load_bundle([ROOT / "fleet_configs", ROOT / "policies"])
    assert unverified_versions(shipped) == ["assistant:v2", "assistant:v3", "assistant:v3-slow",
                                            "assistant-large:v1", "embedder:v1"]
    warn_unverified(shipped)
    err = capsys.readouterr().err
    assert err.startswith("warning: 5 model version(s) state `integrity: none`") and "fleet model digest" in err
    assert unverified_versions(pinned()) == []
    warn_unverified(pinned())
    assert capsys.readouterr().err == ""
