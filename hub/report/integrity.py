"""What weights each node serves, from its agents' ``integrity`` reports (pure).

Before it serves a model version the agent takes the digest of its weight files and reports
the outcome (edge_agent/serving/integrity.py): ``{"time", "model", "version", "decision",
"digest", "expected", "reason", ...}`` with decision ``verified``, ``unverified`` (the Model
spec states ``integrity: none``) or ``refused``. ``fleet describe node`` shows, per model
version the node's Placement assigns, the latest of these; ``fleet audit`` lists the refusals.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from hub.store.repo import AuditRecord, IncomingReport, ObjectRecord

KIND = "integrity"
"""Report kind of the agents' weight checks."""
REFUSED = "integrity-refused"
"""Audit action of a refusal."""


@dataclass(frozen=True)
class Check:
    model: str
    version: str
    decision: str
    digest: str
    expected: str
    reason: str
    at: datetime


def _at(payload: dict, fallback: datetime) -> datetime:
    raw = payload.get("time")
    if isinstance(raw, str):
        try:
            t = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            return t if t.tzinfo else t.replace(tzinfo=UTC)
        except ValueError:
            pass
    return fallback


def check_of(report: IncomingReport) -> Check | None:
    """The check one report records, or None when it is not a well-formed integrity report."""
    p = report.payload if isinstance(report.payload, dict) else {}
    model, version, decision = p.get("model"), p.get("version"), p.get("decision")
    if not (isinstance(model, str) and isinstance(version, str) and isinstance(decision, str)):
        return None
    return Check(model, version, decision, str(p.get("digest") or ""), str(p.get("expected") or ""),
                 str(p.get("reason") or ""), _at(p, report.created_at))


def assigned(objects: Iterable[ObjectRecord], site: str, node: str) -> set[tuple[str, str]]:
    """(model, version) pairs the live Placements for ``site``/``node`` assign."""
    out = set()
    for o in objects:
        if o.kind != "Placement" or o.deleted or not o.targets(site, node):
            continue
        for a in o.spec.get("assignments") or []:
            if isinstance(a, dict) and (not a.get("node") or a.get("node") == node):
                out.add((str(a.get("model") or ""), str(a.get("version") or "")))
    return out


def latest_checks(reports: Iterable[IncomingReport], wanted: set[tuple[str, str]]) -> list[Check]:
    """The latest check per (model, version) in ``wanted``, in (model, version) order."""
    latest: dict[tuple[str, str], Check] = {}
    for r in reports:
        c = check_of(r)
        if c is None or (c.model, c.version) not in wanted:
            continue
        key = (c.model, c.version)
        if key not in latest or c.at >= latest[key].at:
            latest[key] = c
    return [latest[k] for k in sorted(latest)]


def refusal_records(reports: Iterable[tuple[str, str, IncomingReport]], *, site: str = "",
                    since: datetime | None = None) -> list[AuditRecord]:
    """Audit records (action :data:`REFUSED`) of the agents' refused weights, oldest first."""
    out = []
    for rep_site, node, rep in reports:
        c = check_of(rep)
        if c is None or c.decision != "refused" or (site and rep_site != site):
            continue
        if since is not None and c.at < since:
            continue
        out.append(AuditRecord(c.at, f"{rep_site}/{node}", REFUSED, f"model/{c.model}/{c.version}", {
            "message": c.reason, "node": node, "digest": c.digest, "expected": c.expected}))
    out.sort(key=lambda a: a.at)
    return out
