"""`fleet audit` lists the agents' residency refusals: a real hub process on SQLite and PostgreSQL.

The refusals reach the hub as reports of kind ``audit`` (what
edge_agent/serving/gateway.py writes); here they are stored as the link
stores them, then read back through the real CLI and Admin/Rollouts RPCs.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

from hub.store import Database, Store
from hub.store.repo import IncomingReport
from tests.integration.cliharness import Hub, fleet


def refusal(t: datetime, site: str, data_class: str, policy: str, rule: str, rid: str) -> dict:
    """An audit record exactly as the agent's gateway writes it."""
    return {"time": t.isoformat().replace("+00:00", "Z"), "dataClass": data_class, "site": site, "country": "US",
            "jurisdiction": "US", "decision": "deny", "policy": policy, "rule": rule,
            "reason": f"ResidencyPolicy {policy!r} allows jurisdictions EU; {site} is in US", "requestId": rid,
            "model": "assistant:v1"}


async def store_reports(url: str, now: datetime) -> None:
    db = Database(url)
    try:
        store = Store(db)
        iad = await store.register_node("iad-1", "n1", "0.1.0", {}, now)
        fra = await store.register_node("fra-1", "n1", "0.1.0", {}, now)
        old = now - timedelta(hours=3)
        await store.store_reports(iad.id, [
            IncomingReport(1, "audit", now, refusal(now, "iad-1", "personal-eu", "eu-personal", "allow.jurisdictions",
                                                    "req-iad-1")),
            IncomingReport(2, "audit", old, refusal(old, "iad-1", "health", "health-de", "allow.countries",
                                                    "req-iad-old")),
            # An allowed request's record (audit of allows on): not a refusal, not listed.
            IncomingReport(3, "audit", now, {**refusal(now, "iad-1", "public", "public", "anywhere", "req-ok"),
                                             "decision": "allow"}),
        ], now)
        await store.store_reports(fra.id, [
            IncomingReport(1, "audit", now, refusal(now, "fra-1", "health", "health-de", "allow.countries",
                                                    "req-fra-1")),
        ], now)
    finally:
        await db.close()


def audit_json(hub: Hub, *args: str) -> list[dict]:
    proc = fleet(hub, "audit", "-o", "json", *args)
    assert proc.returncode == 0, proc.stderr
    return [r for r in json.loads(proc.stdout) if r["action"] == "residency-deny"]


def test_audit_lists_residency_refusals_with_policy_and_rule_and_filters(tmp_path, db_url):
    hub = Hub(tmp_path, extra=("--db", db_url))
    try:
        hub.wait_ready()
        now = datetime.now(UTC).replace(microsecond=0)
        asyncio.run(store_reports(db_url, now))

        every = audit_json(hub)
        assert sorted(r["details"]["requestId"] for r in every) == ["req-fra-1", "req-iad-1", "req-iad-old"]
        iad = next(r for r in every if r["details"]["requestId"] == "req-iad-1")
        assert (iad["actor"], iad["subject"]) == ("iad-1/n1", "site/iad-1")
        assert (iad["details"]["policy"], iad["details"]["rule"], iad["details"]["dataClass"]) == (
            "eu-personal", "allow.jurisdictions", "personal-eu")

        table = fleet(hub, "audit")
        assert table.returncode == 0, table.stderr
        line = next(x for x in table.stdout.splitlines() if "req-iad-1" in x)
        assert "residency-deny" in line and "eu-personal" in line and "allow.jurisdictions" in line
        assert "personal-eu" in line

        assert [r["details"]["requestId"] for r in audit_json(hub, "--site", "fra-1")] == ["req-fra-1"]
        assert sorted(r["details"]["requestId"] for r in audit_json(hub, "--data-class", "health")) == [
            "req-fra-1", "req-iad-old"]
        assert [r["details"]["requestId"] for r in audit_json(hub, "--site", "iad-1", "--data-class", "health")] == [
            "req-iad-old"]
        assert sorted(r["details"]["requestId"] for r in audit_json(hub, "--since", "1h")) == [
            "req-fra-1", "req-iad-1"]
        assert audit_json(hub, "--site", "nowhere") == []
        # The hub's own trail is still there without the refusal filters, and left out with them.
        proc = fleet(hub, "audit", "-o", "json", "--site", "iad-1")
        assert all(r["action"] == "residency-deny" for r in json.loads(proc.stdout))
    finally:
        hub.close()
