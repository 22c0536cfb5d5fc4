"""The hub's drift view: stored ``drift`` reports → per-version verdicts, audit events and gauges.

:func:`assess` (pure) turns parsed report windows and the services of the
latest revision into :class:`Row` objects, one per (version, site or fleet,
signal) with a verdict: what drifted, where, by how much, since when, against
which reference. :func:`evaluate` reads the store for it; :class:`DriftMonitor`
evaluates on an interval, writes a ``drift.detected`` audit record the first
time each alarm is raised, and keeps the last rows for the Prometheus gauges.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from hub.drift import detect
from hub.drift.config import DEFAULTS, DriftConfig, from_spec
from hub.drift.signals import KIND, Window, parse_payload
from hub.report.telemetry import PayloadError
from hub.store.repo import AuditRecord

log = logging.getLogger(__name__)

ACTION = "drift.detected"
"""Audit action of a newly raised drift."""
MAX_CHECKS = 40
"""Most checks replayed per version per evaluation (the latest ones): bounds the cost of a view."""


@dataclass(frozen=True)
class ServiceDrift:
    name: str
    model: str
    version: str
    config: DriftConfig = DEFAULTS


def services_of(bundle_json: str | None) -> list[ServiceDrift]:
    """The Services of a revision's canonical bundle (validated when it was applied), with their drift config."""
    if not bundle_json:
        return []
    out = []
    for res in json.loads(bundle_json):
        if not isinstance(res, dict) or res.get("kind") != "Service":
            continue
        spec = res.get("spec") or {}
        try:
            cfg = from_spec(spec.get("drift"))
        except (TypeError, ValueError) as exc:  # validated at apply time; a hub default beats a crash
            log.warning("service %s: drift settings ignored (%s)", res["metadata"]["name"], exc)
            cfg = DEFAULTS
        out.append(ServiceDrift(res["metadata"]["name"], spec.get("model", ""), spec.get("version", ""), cfg))
    return out


@dataclass(frozen=True)
class Row:
    """One signal's verdict for one version, fleet-wide (site '') or for one site against the rest."""

    service: str
    model: str
    version: str
    site: str
    finding: detect.Finding
    drifted: bool
    """An alarm is active (held for ``consecutive`` checks)."""
    since: datetime | None
    """When the active alarm's run of drifted checks began."""
    raised: datetime | None
    checked: datetime
    reference_from: datetime | None
    reference_to: datetime | None
    reference_requests: int

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.model, self.version, self.site, self.finding.signal)

    def to_json(self) -> dict:
        def iso(t: datetime | None) -> str | None:
            return t.isoformat().replace("+00:00", "Z") if t else None

        return {"service": self.service, "model": self.model, "version": self.version,
                "site": self.site or "fleet", "status": "Drifted" if self.drifted else "OK",
                "since": iso(self.since), "raised": iso(self.raised), "checked": iso(self.checked),
                "reference": ({"from": None, "to": None, "requests": self.finding.n_reference,
                               "against": "rest of fleet"} if self.site else
                              {"from": iso(self.reference_from), "to": iso(self.reference_to),
                               "requests": self.reference_requests, "against": "reference window"}),
                **self.finding.to_json()}


def _versions(windows: Iterable[Window]) -> dict[tuple[str, str], list[Window]]:
    out: dict[tuple[str, str], list[Window]] = {}
    for w in windows:
        out.setdefault((w.model, w.version), []).append(w)
    return out


def assess(windows: Sequence[Window], services: Sequence[ServiceDrift]) -> list[Row]:
    """Verdicts for every version that sent drift reports (pure).

    A version served by no Service of the latest revision is still assessed, with the defaults, under
    service ``-``. The latest :data:`MAX_CHECKS` checks are replayed to find since when a drift holds.
    """
    by_version = {(s.model, s.version): s for s in services}
    rows: list[Row] = []
    for (model, version), ws in sorted(_versions(windows).items()):
        svc = by_version.get((model, version))
        cfg = svc.config if svc else DEFAULTS
        stride = max(cfg.window_requests // 3, 1)
        total = sum(w.signals.requests for w in ws)
        checks = detect.timeline(ws, cfg, stride=stride, start=total - MAX_CHECKS * stride)
        if not checks:
            continue
        sel = detect.select_windows(ws, cfg)
        ref_from = min((w.start for w in sel.reference), default=None)
        ref_to = max((w.end for w in sel.reference), default=None)
        ref_n = sum(w.signals.requests for w in sel.reference)
        active = {(a.site, a.signal): a for a in detect.alarms(checks, cfg) if a.active}
        last = checks[-1]
        latest = {("", f.signal): f for f in last.findings}
        for sf in last.sites:
            latest.update({(sf.site, f.signal): f for f in sf.findings})
        for (site, signal), f in sorted(latest.items()):
            a = active.get((site, signal))
            rows.append(Row(svc.name if svc else "-", model, version, site, a.finding if a else f, a is not None,
                            a.since if a else None, a.raised if a else None, last.at,
                            ref_from, ref_to, ref_n))
    return rows


def windows_of(reports: Iterable[tuple[str, str, object]]) -> tuple[list[Window], list[str]]:
    """Parse stored ``drift`` reports ((site, node, payload) with the verified identity); bad ones are skipped."""
    out: list[Window] = []
    skipped: list[str] = []
    for site, node, payload in reports:
        try:
            out.extend(parse_payload(payload, site=site, node=node))
        except PayloadError as exc:
            skipped.append(f"{site}/{node}: {exc}")
    return out, skipped


async def evaluate(store) -> tuple[list[Row], list[str]]:
    """Read the latest revision's services and every stored drift report; assess them off the event loop."""
    revs = await store.list_revisions(limit=1)
    rev = await store.get_revision(revs[0].number) if revs else None
    services = services_of(rev.bundle if rev else None)
    rows = await store.reports_of_kind(KIND)
    windows, skipped = windows_of((site, node, r.payload) for site, node, r in rows)
    return await asyncio.to_thread(assess, windows, services), skipped


def audit_records(rows: Sequence[Row], seen: set[tuple], now: datetime) -> list[AuditRecord]:
    """A ``drift.detected`` record for each active alarm not yet audited (``seen`` is updated)."""
    out = []
    for r in rows:
        if not r.drifted:
            continue
        key = (*r.key, r.since.isoformat() if r.since else "")
        if key in seen:
            continue
        seen.add(key)
        out.append(AuditRecord(now, "drift-monitor", ACTION, f"service/{r.service}", r.to_json()))
    return out


@dataclass
class DriftMonitor:
    """Evaluates drift on an interval: audit events for new alarms, the last rows for the gauges."""

    store: object
    interval_s: float = 30.0
    rows: list[Row] = field(default_factory=list)
    _seen: set[tuple] | None = None

    async def tick(self, now: datetime | None = None) -> list[AuditRecord]:
        now = now or datetime.now(UTC)
        if self._seen is None:  # alarms audited before a restart are not audited again
            self._seen = set()
            for a in await self.store.list_audit():
                if a.action == ACTION:
                    d = a.details
                    self._seen.add((d.get("model"), d.get("version"), "" if d.get("site") == "fleet" else d.get("site"),
                                    d.get("signal"), (d.get("since") or "").replace("Z", "+00:00")))
        rows, skipped = await evaluate(self.store)
        for s in skipped:
            log.warning("skipped a drift report: %s", s)
        self.rows = rows
        records = audit_records(rows, self._seen, now)
        await self.store.append_audit(records)
        return records

    async def run(self) -> None:
        """Evaluate every ``interval_s`` (the first time one interval after start, not while the hub starts)."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the loop never dies; the gauges keep the last figures
                log.exception("evaluating drift failed")


def gauges(rows: Sequence[Row]) -> Mapping[tuple[str, str, str, str, str], tuple[float, float]]:
    """(service, model, version, site, signal) -> (drifted 0/1, PSI) for the Prometheus collector."""
    return {(r.service, r.model, r.version, r.site or "fleet", r.finding.signal): (float(r.drifted), r.finding.psi)
            for r in rows}
