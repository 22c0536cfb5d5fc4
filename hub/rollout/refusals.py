"""The agents' residency refusals as audit records (pure).

An agent that refuses a request for residency writes a report of kind
``audit`` (edge_agent/serving/gateway.py ``_audit``): ``{"time", "dataClass",
"site", "country", "jurisdiction", "decision", "policy", "rule", "reason",
"requestId", "model"}``. The hub stores it like any report; ``fleet audit``
lists the refusals beside the hub's own trail, as records of action
``residency-deny`` with the agent (SITE/NODE) as actor and ``site/SITE`` as
subject, their details the agent's record as written.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from hub.store.repo import AuditRecord, IncomingReport

KIND = "audit"
"""Report kind the agents' residency decisions arrive as."""
ACTION = "residency-deny"


def _time(payload: dict, fallback: datetime) -> datetime:
    raw = payload.get("time")
    if isinstance(raw, str):
        try:
            t = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            return t if t.tzinfo else t.replace(tzinfo=UTC)
        except ValueError:
            pass
    return fallback


def refusal_records(reports: Iterable[tuple[str, str, IncomingReport]], *, site: str = "", data_class: str = "",
                    subject: str = "", since: datetime | None = None) -> list[AuditRecord]:
    """Audit records of the refusals among ``(site, node, report)``, oldest first, filtered.

    A record's site is the agent's node's site (what the hub authenticated), not the payload's claim.
    """
    out = []
    for rep_site, node, rep in reports:
        p = rep.payload if isinstance(rep.payload, dict) else {}
        if p.get("decision") != "deny":
            continue
        if site and rep_site != site or data_class and p.get("dataClass") != data_class:
            continue
        if subject and subject != f"site/{rep_site}":
            continue
        at = _time(p, rep.created_at)
        if since is not None and at < since:
            continue
        out.append(AuditRecord(at, f"{rep_site}/{node}", ACTION, f"site/{rep_site}", {
            "message": what(p), "node": node, **{k: p.get(k) for k in (
                "dataClass", "policy", "rule", "reason", "requestId", "model", "country", "jurisdiction")}}))
    out.sort(key=lambda a: a.at)
    return out


def what(p: dict) -> str:
    """One line: which data class was refused, by which policy and rule, and why."""
    policy = p.get("policy") or "no policy"
    rule = p.get("rule") or "-"
    return (f"refused {p.get('dataClass') or '?'} data for {p.get('model') or '?'} "
            f"(request {p.get('requestId') or '?'}): policy {policy}, rule {rule}: {p.get('reason') or ''}")


def merge(trail: Sequence[AuditRecord], refusals: Sequence[AuditRecord], limit: int) -> list[AuditRecord]:
    """Both lists by time, oldest first, at most ``limit`` (as the trail alone: the oldest ones)."""
    both = sorted([*trail, *refusals], key=lambda a: a.at)
    return both[:limit] if limit else both
