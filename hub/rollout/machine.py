"""The rollout state machine: explicit states, one pure transition function, plain-dict state.

States (:class:`Phase`)::

    Pending ──► Scheduled ──► Progressing ──► Completed
       │            │          │  wave i: Applying → Soaking → Gating (→ CatchingUp after the last wave)
       │            │          ├──► Paused ──resume──► Progressing (a resumed wave soaks again)
       │            │          └──► RollingBack ──► RolledBack | Failed (sites did not return in time)
       └────────────┴──────────┴──► Aborted (by command; sites stay)
    Completed / Aborted / Paused / Failed ──undo──► RollingBack

:func:`step` takes the state, an :class:`Observation` (per-site facts and
per-site, per-version traffic) and the time, and returns the new state, the
:class:`Action` s the controller must carry out (publish a version to sites,
revert sites) and :class:`AuditEntry` s saying what happened with numbers.
:func:`command` does the same for ``pause``, ``resume``, ``abort`` and
``undo``, raising :class:`IllegalCommand` (message and the command to run
instead) when a command does not apply.

Rules, in the order :func:`step` applies them:

1. Facts first, in every phase: a published (or failed) site that reports
   the new version is *applied* (a failed site that comes back "caught
   up"); a reverting site that reports the old version is *reverted*.
2. A published site that has not applied within ``progress_deadline`` is
   *failed* (unreachable, or reachable but still on the old version) and
   counts against ``max_failures``; its desired state stays published, so
   it catches up when it returns (rule 1). More failures than allowed is a
   breach (``on_breach``). ``resume`` accepts the failures seen so far.
3. Sites are published to in plan order, at most ``max_unavailable``
   published-but-not-applied at a time, and only inside the schedule's
   window. A site in maintenance is *deferred*: it does not hold up its
   wave and is published when its maintenance ends. A site that opts out
   before its turn is *skipped*.
4. When every site of the wave is applied, failed or deferred, the wave
   *soaks* for ``min_success_time`` of real traffic, then its gate is
   judged on the new version's traffic on every applied site (SLO gate; on
   the canary wave also the TTFT/ITL and error-rate comparisons with the
   old version on the same sites, see :mod:`hub.rollout.gates`). Not enough
   traffic by ``progress_deadline`` after the soak began pauses the rollout.
5. After the last wave, deferred sites still in maintenance get one more
   ``progress_deadline`` to catch up, then are listed as not updated.

Idempotence: a site is published to at most once and reverted at most once
per rollback; actions are emitted only on the transition that needs them,
so the same observation twice yields no second action. The state holds
no telemetry, only facts and verdict sentences; :meth:`RolloutState.to_dict`
and :meth:`RolloutState.from_dict` round-trip it exactly, and stepping a
restored state equals stepping the original.

The controller (not here) runs: observe -> ``step`` -> carry out actions
(they set desired state, so repeating them is harmless) -> persist. The
telemetry it observes for gates is the traffic since
:attr:`RolloutState.soak_since`, per site and version; for the canary's
old version, the same sites' old-version traffic over a comparable window.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Optional

from hub.rollout import gates
from hub.rollout.gates import Outcome, TrafficStats, Verdict
from hub.rollout.plan import SiteState, plan
from hub.rollout.spec import RolloutSpec, format_duration

STATE_SCHEMA = 1
"""Version of the serialised state."""


class Phase(StrEnum):
    PENDING = "Pending"
    SCHEDULED = "Scheduled"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    ROLLING_BACK = "RollingBack"
    COMPLETED = "Completed"
    ABORTED = "Aborted"
    FAILED = "Failed"
    ROLLED_BACK = "RolledBack"

    @classmethod
    def terminal(cls) -> frozenset["Phase"]:
        """Phases in which :func:`step` changes nothing but site facts."""
        return frozenset({cls.COMPLETED, cls.ABORTED, cls.FAILED, cls.ROLLED_BACK})

    @classmethod
    def active(cls) -> frozenset["Phase"]:
        return frozenset(cls) - cls.terminal()

    @classmethod
    def failed(cls) -> frozenset["Phase"]:
        """Phases that mean the new version did not make it."""
        return frozenset({cls.ABORTED, cls.FAILED, cls.ROLLED_BACK, cls.ROLLING_BACK})


class Stage(StrEnum):
    """Where a progressing wave is."""

    APPLYING = "Applying"
    SOAKING = "Soaking"
    GATING = "Gating"
    CATCHING_UP = "CatchingUp"


class SiteStatus(StrEnum):
    PENDING = "pending"
    DEFERRED = "deferred"
    PUBLISHED = "published"
    APPLIED = "applied"
    FAILED = "failed"
    SKIPPED = "skipped"
    REVERTING = "reverting"
    REVERTED = "reverted"

    @classmethod
    def touched(cls) -> frozenset["SiteStatus"]:
        """Statuses of sites that were given the new version (what a rollback reverts)."""
        return frozenset({cls.PUBLISHED, cls.APPLIED, cls.FAILED})


@dataclass(frozen=True)
class SiteRecord:
    site: str
    wave: int
    status: SiteStatus = SiteStatus.PENDING
    since: Optional[datetime] = None
    """When the status last changed."""
    published_at: Optional[datetime] = None
    reason: str = ""


@dataclass(frozen=True)
class SiteFacts:
    """What the hub knows about a site now."""

    reachable: bool = True
    applied_version: Optional[str] = None
    """The version the agent acknowledged as applied."""
    in_maintenance: bool = False
    opted_out: bool = False
    has_agent: bool = True
    """Some node of the site has ever connected (a site without one never ran any version it was given)."""


@dataclass(frozen=True)
class Observation:
    sites: Mapping[str, SiteFacts] = field(default_factory=dict)
    """Facts per site; a site missing here is treated as unreachable."""
    telemetry: Mapping[str, Mapping[str, TrafficStats]] = field(default_factory=dict)
    """site -> version -> traffic since :attr:`RolloutState.soak_since`."""
    slo_ttft_p95_s: Optional[float] = None
    """The service's p95 TTFT objective in seconds (None: none)."""
    slo_tpot_p95_s: Optional[float] = None


@dataclass(frozen=True)
class Action:
    """Something the controller must do: set a site's desired version."""

    kind: str
    """'publish' (the new version) or 'revert' (back to the old one)."""
    version: str
    sites: tuple[str, ...]
    reason: str = ""

    def to_dict(self) -> dict:
        return {"kind": self.kind, "version": self.version, "sites": list(self.sites), "reason": self.reason}


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    event: str
    message: str
    sites: tuple[str, ...] = ()
    actor: str = ""

    def to_dict(self) -> dict:
        return {"at": _iso(self.at), "event": self.event, "message": self.message, "sites": list(self.sites),
                "actor": self.actor}

    @classmethod
    def from_dict(cls, d: Mapping) -> "AuditEntry":
        return cls(datetime.fromisoformat(d["at"]), d["event"], d["message"], tuple(d.get("sites", ())),
                   d.get("actor", ""))


class IllegalCommand(ValueError):
    """A command that does not apply in the rollout's phase; ``hint`` is the command to run instead."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(f"{message}; {hint}" if hint else message)
        self.hint = hint


@dataclass(frozen=True)
class RolloutState:
    """Everything a rollout needs to continue after a crash. Treat as a value: transitions return new ones."""

    spec: RolloutSpec
    from_version: str
    phase: Phase
    waves: tuple[tuple[str, ...], ...]
    sites: tuple[SiteRecord, ...]
    """One record per planned site, in plan order."""
    max_unavailable: int
    created_at: datetime
    updated_at: datetime
    phase_since: datetime
    excluded: tuple[tuple[str, str], ...] = ()
    stage: Optional[Stage] = None
    wave: int = 0
    soak_since: Optional[datetime] = None
    catchup_since: Optional[datetime] = None
    paused_phase: Optional[Phase] = None
    reason: str = ""
    """Why the rollout is in its phase (breach, command, schedule...), with numbers."""
    verdicts: tuple[Verdict, ...] = ()
    """The last gate verdicts."""
    verdicts_wave: Optional[int] = None
    """The wave (0-based) the last gate verdicts judged; the current wave may be the next one already."""
    warnings: tuple[str, ...] = ()
    """What the operator should know when the rollout starts (sites without a connected agent...)."""
    accepted_failures: tuple[str, ...] = ()
    """Failed sites an operator accepted by resuming; they no longer count against max_failures."""
    revision: int = 0
    """Bumped on every change (for optimistic concurrency in the store)."""

    @property
    def service(self) -> str:
        return self.spec.service

    @property
    def to_version(self) -> str:
        return self.spec.to_version

    def record(self, site: str) -> SiteRecord:
        for r in self.sites:
            if r.site == site:
                return r
        raise KeyError(site)

    def count(self, *statuses: SiteStatus) -> int:
        return sum(1 for r in self.sites if r.status in statuses)

    # -------------------------------------------------------- serialising

    def to_dict(self) -> dict:
        """Plain JSON-ready dict; :meth:`from_dict` restores an equal state."""
        return {
            "schema": STATE_SCHEMA,
            "spec": self.spec.to_dict(),
            "fromVersion": self.from_version,
            "phase": self.phase.value,
            "stage": self.stage.value if self.stage else None,
            "wave": self.wave,
            "waves": [list(w) for w in self.waves],
            "excluded": [[s, why] for s, why in self.excluded],
            "maxUnavailable": self.max_unavailable,
            "sites": [{"site": r.site, "wave": r.wave, "status": r.status.value, "since": _iso(r.since),
                       "publishedAt": _iso(r.published_at), "reason": r.reason} for r in self.sites],
            "createdAt": _iso(self.created_at),
            "updatedAt": _iso(self.updated_at),
            "phaseSince": _iso(self.phase_since),
            "soakSince": _iso(self.soak_since),
            "catchupSince": _iso(self.catchup_since),
            "pausedPhase": self.paused_phase.value if self.paused_phase else None,
            "reason": self.reason,
            "verdicts": [v.to_dict() for v in self.verdicts],
            "verdictsWave": self.verdicts_wave,
            "warnings": list(self.warnings),
            "acceptedFailures": list(self.accepted_failures),
            "revision": self.revision,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "RolloutState":
        if d.get("schema") != STATE_SCHEMA:
            raise ValueError(f"rollout state schema {d.get('schema')!r} is not {STATE_SCHEMA}")
        return cls(
            spec=RolloutSpec.from_dict(d["spec"]),
            from_version=d["fromVersion"],
            phase=Phase(d["phase"]),
            stage=Stage(d["stage"]) if d.get("stage") else None,
            wave=int(d["wave"]),
            waves=tuple(tuple(w) for w in d["waves"]),
            excluded=tuple((s, why) for s, why in d.get("excluded", [])),
            max_unavailable=int(d["maxUnavailable"]),
            sites=tuple(SiteRecord(r["site"], int(r["wave"]), SiteStatus(r["status"]), _time(r.get("since")),
                                   _time(r.get("publishedAt")), r.get("reason", "")) for r in d["sites"]),
            created_at=_time(d["createdAt"]),
            updated_at=_time(d["updatedAt"]),
            phase_since=_time(d["phaseSince"]),
            soak_since=_time(d.get("soakSince")),
            catchup_since=_time(d.get("catchupSince")),
            paused_phase=Phase(d["pausedPhase"]) if d.get("pausedPhase") else None,
            reason=d.get("reason", ""),
            verdicts=tuple(Verdict.from_dict(v) for v in d.get("verdicts", [])),
            verdicts_wave=int(d["verdictsWave"]) if d.get("verdictsWave") is not None else None,
            warnings=tuple(d.get("warnings", [])),
            accepted_failures=tuple(d.get("acceptedFailures", [])),
            revision=int(d.get("revision", 0)),
        )


def _iso(t: Optional[datetime]) -> Optional[str]:
    return t.isoformat() if t is not None else None


def _time(s: Optional[str]) -> Optional[datetime]:
    return datetime.fromisoformat(s) if s else None


# ---------------------------------------------------------------- start


def start(spec: RolloutSpec, sites: Sequence[SiteState], from_version: str, now: datetime) -> RolloutState:
    """A new Pending rollout with its wave plan. Raises ValueError when no site is eligible."""
    if now.tzinfo is None:
        raise ValueError("now must carry a time zone (UTC)")
    if from_version == spec.to_version:
        raise ValueError(f"{spec.service} already runs {spec.to_version}; nothing to roll out")
    p = plan(sites, spec)
    if not p.waves:
        why = "; ".join(f"{s}: {r}" for s, r in p.excluded) or "the service has no sites"
        raise ValueError(f"no site of {spec.service} is eligible for {spec.to_version} ({why})")
    records = tuple(SiteRecord(s, i, SiteStatus.PENDING, now) for i, w in enumerate(p.waves) for s in w)
    return RolloutState(spec=spec, from_version=from_version, phase=Phase.PENDING, waves=p.waves, sites=records,
                        max_unavailable=p.max_unavailable, created_at=now, updated_at=now, phase_since=now,
                        excluded=p.excluded, reason="created", warnings=start_warnings(spec, sites, p.sites))


def start_warnings(spec: RolloutSpec, sites: Sequence[SiteState], planned: Sequence[str]) -> tuple[str, ...]:
    """Warnings for the operator at start: planned sites that cannot apply the version now."""
    by_name = {s.name: s for s in sites}
    deadline = format_duration(spec.progress_deadline)
    out = []
    for what, pick in (("no agent that has ever connected", lambda s: not s.has_agent),
                       ("no agent connected now", lambda s: s.has_agent and not s.reachable)):
        names = [n for n in planned if n in by_name and pick(by_name[n])]
        if names:
            out.append(f"{len(names)} of {len(planned)} site(s) {'has' if len(names) == 1 else 'have'} {what}: "
                       f"{', '.join(names)}; each fails after the {deadline} progress deadline unless an agent "
                       f"connects and applies {spec.to_version}")
    return tuple(out)


# ---------------------------------------------------------- transitions


class _Tx:
    """One transition being built: mutable copies, then a new immutable state."""

    def __init__(self, state: RolloutState, now: datetime, actor: str = ""):
        if now.tzinfo is None:
            raise ValueError("now must carry a time zone (UTC)")
        self.old = state
        self.now = now
        self.actor = actor
        self.records = {r.site: r for r in state.sites}
        self.fields: dict = {}
        self.publish: list[str] = []
        self.revert: list[str] = []
        self.audit: list[AuditEntry] = []

    # state access
    def get(self, name: str):
        return self.fields.get(name, getattr(self.old, name))

    def set(self, **kw) -> None:
        self.fields.update(kw)

    @property
    def spec(self) -> RolloutSpec:
        return self.old.spec

    def log(self, event: str, message: str, sites: Sequence[str] = ()) -> None:
        self.audit.append(AuditEntry(self.now, event, message, tuple(sites), self.actor))

    def mark(self, site: str, status: SiteStatus, reason: str = "", published: bool = False) -> None:
        r = self.records[site]
        self.records[site] = replace(r, status=status, since=self.now, reason=reason,
                                     published_at=self.now if published else r.published_at)

    def in_status(self, *statuses: SiteStatus, wave: Optional[int] = None) -> list[str]:
        return [s for s, r in self.records.items() if r.status in statuses and (wave is None or r.wave == wave)]

    def set_phase(self, phase: Phase, reason: str) -> None:
        self.set(phase=phase, phase_since=self.now, reason=reason)

    def result(self) -> tuple[RolloutState, list[Action], list[AuditEntry]]:
        # A site published and reverted in the same transition (a catch-up just before a breach) never left
        # the old version: it needs neither action.
        both = set(self.publish) & set(self.revert)
        self.publish = [s for s in self.publish if s not in both]
        self.revert = [s for s in self.revert if s not in both]
        new = replace(self.old, sites=tuple(self.records[r.site] for r in self.old.sites), **self.fields)
        actions = []
        if self.publish:
            actions.append(Action("publish", self.spec.to_version, tuple(self.publish),
                                  f"rollout of {self.spec.service} to {self.spec.to_version}"))
        if self.revert:
            actions.append(Action("revert", self.old.from_version, tuple(self.revert),
                                  f"rollback of {self.spec.service} to {self.old.from_version}"))
        if new == self.old and not actions:
            return self.old, [], []
        return replace(new, revision=self.old.revision + 1, updated_at=self.now), actions, self.audit


def _facts(obs: Observation, site: str) -> SiteFacts:
    return obs.sites.get(site) or SiteFacts(reachable=False)


def _record_facts(tx: _Tx, obs: Observation) -> None:
    to, old = tx.spec.to_version, tx.old.from_version
    active = tx.old.phase in Phase.active()
    for site, r in list(tx.records.items()):
        f = _facts(obs, site)
        if r.status in (SiteStatus.PUBLISHED, SiteStatus.FAILED) and f.applied_version == to:
            if r.status is SiteStatus.FAILED:
                tx.log("site-caught-up", f"{site} applied {to} after failing ({r.reason})", [site])
            else:
                tx.log("site-applied", f"{site} applied {to}", [site])
            tx.mark(site, SiteStatus.APPLIED)
        elif r.status is SiteStatus.REVERTING and not f.has_agent:
            # Nothing ever ran the new version there: there is nothing to revert, and "reverted" would claim
            # an agent acknowledged the old one.
            why = f"no agent has ever connected; not reverted (its desired version is {old} again)"
            tx.log("site-not-reverted", f"{site}: {why}", [site])
            tx.mark(site, SiteStatus.SKIPPED, why)
        elif r.status is SiteStatus.REVERTING and f.applied_version == old:
            tx.log("site-reverted", f"{site} is back on {old}", [site])
            tx.mark(site, SiteStatus.REVERTED)
        elif active and r.status in (SiteStatus.PENDING, SiteStatus.DEFERRED) and f.opted_out:
            tx.log("site-skipped", f"{site} opted out of rollouts before its turn; it keeps {old}", [site])
            tx.mark(site, SiteStatus.SKIPPED, "opted out")


def _deadlines(tx: _Tx, obs: Observation) -> None:
    limit = timedelta(seconds=tx.spec.progress_deadline)
    for site in tx.in_status(SiteStatus.PUBLISHED):
        r = tx.records[site]
        if r.published_at is not None and tx.now - r.published_at >= limit:
            f = _facts(obs, site)
            why = "unreachable" if not f.reachable else f"reachable but still on {f.applied_version or 'no version'}"
            reason = f"did not apply {tx.spec.to_version} within the {format_duration(limit.total_seconds())} " \
                     f"progress deadline ({why})"
            tx.mark(site, SiteStatus.FAILED, reason)
            tx.log("site-failed", f"{site} {reason}; it counts against --max-failures and catches up when it "
                                  "applies", [site])


def _failing(tx: _Tx) -> list[str]:
    accepted = set(tx.get("accepted_failures"))
    return [s for s in tx.in_status(SiteStatus.FAILED) if s not in accepted]


def _publish(tx: _Tx, obs: Observation, candidates: Sequence[str]) -> None:
    """Publish to candidates in order within the window and the max-unavailable budget."""
    to = tx.spec.to_version
    in_window = tx.spec.in_window(tx.now)
    in_flight = len(tx.in_status(SiteStatus.PUBLISHED))
    published: list[str] = []
    for site in candidates:
        r, f = tx.records[site], _facts(obs, site)
        if r.status not in (SiteStatus.PENDING, SiteStatus.DEFERRED):
            continue
        if f.applied_version == to:
            tx.log("site-applied", f"{site} already runs {to}", [site])
            tx.mark(site, SiteStatus.APPLIED)
            continue
        if f.in_maintenance:
            if r.status is SiteStatus.PENDING:
                tx.log("site-deferred", f"{site} is in maintenance; it is updated when the maintenance ends and "
                                        "does not hold up its wave", [site])
                tx.mark(site, SiteStatus.DEFERRED, "in maintenance")
            continue
        if not in_window or in_flight >= tx.old.max_unavailable:
            continue
        tx.mark(site, SiteStatus.PUBLISHED, published=True)
        published.append(site)
        in_flight += 1
    if published:
        tx.publish.extend(published)
        tx.log("published", f"published {to} to {', '.join(published)}", published)


def _breach(tx: _Tx, reason: str, action: str) -> None:
    if action == "rollback":
        _begin_rollback(tx, f"{reason}; rolling back (on breach: rollback)")
    else:
        tx.set_phase(Phase.PAUSED, f"{reason}; paused (on breach: pause)")
        tx.set(paused_phase=Phase.PROGRESSING)
        tx.log("paused", f"paused: {reason}. Inspect with `fleet rollout status {tx.spec.service}`, then "
                         f"`fleet rollout resume {tx.spec.service}` or `fleet rollout undo {tx.spec.service}`")


def _begin_rollback(tx: _Tx, reason: str) -> None:
    sites = tx.in_status(*SiteStatus.touched(), SiteStatus.REVERTING)
    for site in sites:
        tx.mark(site, SiteStatus.REVERTING)
    tx.revert.extend(sites)
    tx.set(stage=None)
    if sites:
        tx.set_phase(Phase.ROLLING_BACK, reason)
        tx.log("rolling-back", f"{reason}: reverting {', '.join(sites)} to {tx.old.from_version}", sites)
    else:
        tx.set_phase(Phase.ROLLED_BACK, f"{reason}; no site had been given {tx.spec.to_version}")
        tx.log("rolled-back", f"{reason}; nothing to revert")


def _gate(tx: _Tx, obs: Observation) -> list[Verdict]:
    spec, to, old = tx.spec, tx.spec.to_version, tx.old.from_version
    applied = tx.in_status(SiteStatus.APPLIED)
    new_stats = gates.merge_stats(obs.telemetry.get(s, {}).get(to, TrafficStats()) for s in applied)
    verdicts = [gates.slo_gate(new_stats, obs.slo_ttft_p95_s, obs.slo_tpot_p95_s, spec.min_requests, to)]
    if spec.strategy == "canary" and tx.get("wave") == 0:
        c = spec.canary
        canary_sites = [s for s in applied if tx.records[s].wave == 0]
        new_c = gates.merge_stats(obs.telemetry.get(s, {}).get(to, TrafficStats()) for s in canary_sites)
        old_c = gates.merge_stats(obs.telemetry.get(s, {}).get(old, TrafficStats()) for s in canary_sites)
        verdicts += [
            gates.latency_comparison(new_c, old_c, "ttft", c.max_ttft_p95_ratio, c.alpha, c.min_requests),
            gates.latency_comparison(new_c, old_c, "itl", c.max_itl_p95_ratio, c.alpha, c.min_requests),
            gates.error_rate_comparison(new_c, old_c, c.max_error_rate_increase, c.alpha, c.min_requests),
        ]
    return verdicts


def _progress(tx: _Tx, obs: Observation) -> None:
    spec = tx.spec
    _deadlines(tx, obs)
    failing = _failing(tx)
    if len(failing) > spec.max_failures:
        detail = "; ".join(f"{s}: {tx.records[s].reason}" for s in failing)
        _breach(tx, f"{len(failing)} site(s) failed, more than --max-failures {spec.max_failures} ({detail})",
                spec.on_breach)
        return
    waves = tx.old.waves
    # A deferred site of any earlier wave catches up first, then the current wave in plan order.
    for _ in range(len(waves) + 1):  # at most one wave change per loop
        wave, stage = tx.get("wave"), tx.get("stage")
        deferred = tx.in_status(SiteStatus.DEFERRED)
        if stage is Stage.CATCHING_UP:
            _publish(tx, obs, deferred)
            return _finish_catch_up(tx, obs)
        current = [s for s in waves[wave] if tx.records[s].status is SiteStatus.PENDING]
        _publish(tx, obs, deferred + current)
        if stage is Stage.APPLYING:
            if tx.in_status(SiteStatus.PENDING, SiteStatus.PUBLISHED, wave=wave):
                return
            done = tx.in_status(SiteStatus.APPLIED, wave=wave)
            tx.set(stage=Stage.SOAKING, soak_since=tx.now, verdicts=())
            tx.log("soaking", f"wave {wave + 1}/{len(waves)} is applied on {len(done)} site(s); it serves real "
                              f"traffic for {format_duration(spec.min_success_time)} before its gate", done)
            stage = Stage.SOAKING
        soak_since = tx.get("soak_since")
        if stage is Stage.SOAKING:
            if tx.now - soak_since < timedelta(seconds=spec.min_success_time):
                return
            tx.set(stage=Stage.GATING)
        verdicts = _gate(tx, obs)
        tx.set(verdicts=tuple(verdicts), verdicts_wave=wave)
        failed = [v for v in verdicts if v.outcome is Outcome.FAIL]
        if failed:
            action = spec.canary.on_breach if any(v.gate != "slo" for v in failed) else spec.on_breach
            _breach(tx, f"wave {wave + 1}/{len(waves)} gate failed: " + "; ".join(v.sentence for v in failed),
                    action)
            return
        waiting = [v for v in verdicts if v.outcome is Outcome.INSUFFICIENT]
        if waiting:
            if tx.now - soak_since >= timedelta(seconds=spec.progress_deadline):
                reason = (f"not enough traffic to judge wave {wave + 1}/{len(waves)} within the "
                          f"{format_duration(spec.progress_deadline)} progress deadline: "
                          + "; ".join(v.sentence for v in waiting))
                tx.set_phase(Phase.PAUSED, reason + "; paused")
                tx.set(paused_phase=Phase.PROGRESSING)
                tx.log("paused", f"paused: {reason}. Resume to soak again: `fleet rollout resume {spec.service}`")
            return
        tx.log("wave-passed", f"wave {wave + 1}/{len(waves)} passed: " + "; ".join(v.sentence for v in verdicts),
               tx.in_status(SiteStatus.APPLIED, wave=wave))
        if wave + 1 < len(waves):
            tx.set(wave=wave + 1, stage=Stage.APPLYING, soak_since=None)
            continue
        tx.set(stage=Stage.CATCHING_UP, catchup_since=tx.now, soak_since=None)
    return None


def _finish_catch_up(tx: _Tx, obs: Observation) -> None:
    waiting = tx.in_status(SiteStatus.DEFERRED, SiteStatus.PUBLISHED)
    expired = tx.now - tx.get("catchup_since") >= timedelta(seconds=tx.spec.progress_deadline)
    if waiting and not expired:
        return
    for site in tx.in_status(SiteStatus.DEFERRED):
        where = "in maintenance" if _facts(obs, site).in_maintenance else "outside the update window"
        reason = f"still {where} {format_duration(tx.spec.progress_deadline)} after the last wave; not " \
                 f"updated (start a new rollout for it later)"
        tx.mark(site, SiteStatus.SKIPPED, reason)
        tx.log("site-skipped", f"{site} {reason}", [site])
    applied = tx.in_status(SiteStatus.APPLIED)
    missing = tx.in_status(SiteStatus.FAILED, SiteStatus.SKIPPED, SiteStatus.PUBLISHED)
    reason = f"{len(applied)} of {len(tx.records)} site(s) run {tx.spec.to_version}"
    if missing:
        reason += "; not updated: " + ", ".join(f"{s} ({tx.records[s].status.value})" for s in missing)
    tx.set(stage=None, catchup_since=None)
    tx.set_phase(Phase.COMPLETED, reason)
    tx.log("completed", reason)


def _rollback_progress(tx: _Tx, obs: Observation) -> None:
    waiting = tx.in_status(SiteStatus.REVERTING)
    if not waiting:
        reverted = tx.in_status(SiteStatus.REVERTED)
        why = tx.get("reason")
        # Keep why it rolled back in the status line, not only in the audit.
        tx.set_phase(Phase.ROLLED_BACK, f"{len(reverted)} site(s) back on {tx.old.from_version}"
                     + (f" after: {why}" if why else ""))
        tx.log("rolled-back", why, reverted)
        return
    if tx.now - tx.old.phase_since >= timedelta(seconds=tx.spec.progress_deadline):
        def where(site: str) -> str:
            f = _facts(obs, site)
            return "unreachable" if not f.reachable else f"on {f.applied_version or 'no version'}"

        detail = ", ".join(f"{s} ({where(s)})" for s in waiting)
        reason = (f"{len(waiting)} site(s) did not return to {tx.old.from_version} within the "
                  f"{format_duration(tx.spec.progress_deadline)} progress deadline: {detail}; their desired "
                  f"version is {tx.old.from_version}, so they revert when they reconnect")
        tx.set_phase(Phase.FAILED, reason)
        tx.log("failed", f"{reason}. Retry: `fleet rollout undo {tx.spec.service}`", waiting)


def step(state: RolloutState, obs: Observation, now: datetime) -> tuple[RolloutState, list[Action], list[AuditEntry]]:
    """Advance a rollout on new facts. Pure: same inputs, same outputs."""
    tx = _Tx(state, now)
    _record_facts(tx, obs)
    phase = state.phase
    if phase in (Phase.PENDING, Phase.SCHEDULED):
        if not state.spec.in_window(now):
            if phase is Phase.PENDING:
                nxt = state.spec.next_window(now)
                tx.set_phase(Phase.SCHEDULED, f"waiting for the next window ({state.spec.schedule} UTC, "
                                              f"{format_duration(state.spec.window or 0)}), next opens "
                                              f"{_iso(nxt)}")
                tx.log("scheduled", tx.get("reason"))
            return tx.result()
        tx.set_phase(Phase.PROGRESSING, "started")
        tx.set(stage=Stage.APPLYING, wave=0)
        tx.log("started", f"rolling out {state.to_version} to {len(state.sites)} site(s) of {state.service} in "
                          f"{len(state.waves)} wave(s) ({' + '.join(str(len(w)) for w in state.waves)}), "
                          f"replacing {state.from_version}")
        _progress(tx, obs)
    elif phase is Phase.PROGRESSING:
        _progress(tx, obs)
    elif phase is Phase.ROLLING_BACK:
        _rollback_progress(tx, obs)
    return tx.result()


# ------------------------------------------------------------- commands

COMMANDS = ("pause", "resume", "abort", "undo")


def command(state: RolloutState, name: str, now: datetime, actor: str = "",
            note: str = "") -> tuple[RolloutState, list[Action], list[AuditEntry]]:
    """Apply an operator command. Raises :class:`IllegalCommand` where it does not apply."""
    if name not in COMMANDS:
        raise IllegalCommand(f"unknown command {name!r}", f"use one of {', '.join(COMMANDS)}")
    tx = _Tx(state, now, actor)
    svc, phase = state.service, state.phase
    by = f" by {actor}" if actor else ""
    why = f": {note}" if note else ""
    status = f"`fleet rollout status {svc}`"
    if name == "pause":
        if phase is Phase.PAUSED:
            raise IllegalCommand(f"the rollout of {svc} is already paused ({state.reason})",
                                 f"resume it with `fleet rollout resume {svc}`")
        if phase is Phase.ROLLING_BACK:
            raise IllegalCommand(f"the rollout of {svc} is rolling back; a rollback cannot be paused",
                                 f"watch it with {status}")
        if phase in Phase.terminal():
            raise IllegalCommand(f"the rollout of {svc} to {state.to_version} is {phase.value}; nothing to pause",
                                 f"revert it with `fleet rollout undo {svc}`" if phase is Phase.COMPLETED
                                 else f"start a new one with `fleet rollout start {svc} --to VERSION`")
        tx.set_phase(Phase.PAUSED, f"paused{by}{why}")
        tx.set(paused_phase=phase)
        tx.log("paused", f"paused{by}{why}; sites already published keep applying")
    elif name == "resume":
        if phase is not Phase.PAUSED:
            hint = (f"pause it first with `fleet rollout pause {svc}`" if phase in Phase.active()
                    else f"start a new one with `fleet rollout start {svc} --to VERSION`")
            raise IllegalCommand(f"the rollout of {svc} is {phase.value}, not Paused; nothing to resume", hint)
        back = state.paused_phase or Phase.PROGRESSING
        failing = sorted(set(state.accepted_failures) | {r.site for r in state.sites
                                                          if r.status is SiteStatus.FAILED})
        tx.set_phase(back, f"resumed{by}{why}")
        tx.set(paused_phase=None, accepted_failures=tuple(failing))
        msg = f"resumed{by}{why}"
        if back is Phase.PROGRESSING and state.stage in (Stage.SOAKING, Stage.GATING):
            tx.set(stage=Stage.SOAKING, soak_since=now, verdicts=())
            msg += f"; wave {state.wave + 1} soaks again for {format_duration(state.spec.min_success_time)}"
        if failing:
            msg += f"; failed site(s) accepted: {', '.join(failing)}"
        tx.log("resumed", msg)
    elif name == "abort":
        if phase is Phase.ROLLING_BACK:
            raise IllegalCommand(f"the rollout of {svc} is rolling back; a rollback cannot be aborted",
                                 f"watch it with {status}")
        if phase in Phase.terminal():
            raise IllegalCommand(f"the rollout of {svc} is already {phase.value}; nothing to abort",
                                 f"revert it with `fleet rollout undo {svc}`" if phase is Phase.COMPLETED
                                 else f"see {status}")
        touched = [r.site for r in state.sites if r.status in SiteStatus.touched()]
        tx.set(stage=None)
        tx.set_phase(Phase.ABORTED, f"aborted{by}{why}")
        hint = f"; {len(touched)} site(s) keep {state.to_version}: revert them with `fleet rollout undo {svc}`" \
            if touched else ""
        tx.log("aborted", f"aborted{by}{why}{hint}", touched)
    else:  # undo
        if phase is Phase.ROLLING_BACK:
            raise IllegalCommand(f"the rollout of {svc} is already rolling back", f"watch it with {status}")
        if phase is Phase.ROLLED_BACK:
            raise IllegalCommand(f"the rollout of {svc} is already rolled back to {state.from_version}",
                                 f"see `fleet rollout history {svc}`")
        if not any(r.status in SiteStatus.touched() | {SiteStatus.REVERTING} for r in state.sites):
            raise IllegalCommand(f"nothing to undo: no site of {svc} was given {state.to_version}",
                                 f"cancel the rollout with `fleet rollout abort {svc}`" if phase in Phase.active()
                                 else f"see {status}")
        tx.set(paused_phase=None)
        _begin_rollback(tx, f"undo{by}{why}")
    return tx.result()


# --------------------------------------------------------------- display


def display_status(state: RolloutState, now: Optional[datetime] = None) -> str:
    """One line for ``fleet rollout status``, derived from the recorded facts."""
    n = len(state.sites)
    counts = {s: state.count(s) for s in SiteStatus}
    tally = ", ".join(f"{c} {s.value}" for s, c in counts.items() if c)
    head = f"{state.phase.value}"
    if state.phase is Phase.PROGRESSING and state.stage is not None:
        if state.stage is Stage.CATCHING_UP:
            head += " (catching up deferred sites)"
        else:
            head += f" (wave {state.wave + 1}/{len(state.waves)} {state.stage.value.lower()}"
            if state.stage is Stage.SOAKING and state.soak_since is not None and now is not None:
                left = state.soak_since + timedelta(seconds=state.spec.min_success_time) - now
                head += f", {format_duration(max(1.0, round(left.total_seconds())))} left"
            head += ")"
        if state.stage is Stage.GATING:
            waiting = [v.sentence for v in state.verdicts if v.outcome is Outcome.INSUFFICIENT]
            if waiting:
                head += f"; waiting for traffic: {'; '.join(waiting)}"
        if now is not None and not state.spec.in_window(now):
            head += f"; outside the update window, next opens {_iso(state.spec.next_window(now))}"
    line = f"{head}: {state.service} {state.from_version} -> {state.to_version}, {n} site(s): {tally}"
    if state.reason and state.phase is not Phase.PROGRESSING:
        line += f". {state.reason}"
    return line
