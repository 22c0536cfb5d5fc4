"""Drift decisions: reference vs current window, and one site vs the rest of the fleet. Pure functions.

:func:`compare` tests every signal of a current window against a reference
and returns one :class:`Finding` per signal with enough data. Which test
decides follows the sample size (see :mod:`hub.drift.stats`): the smaller
side below ``large_sample`` requests → KS (numbers) or chi-squared (finish
reasons, empty outputs) at ``alpha``; at or above → normalised Wasserstein
or Jensen–Shannon distance against its threshold.

:func:`select_windows` picks, from a version's report windows in time order,
the reference (its first ``reference_requests`` requests fleet-wide, or the
operator's pinned interval) and the current window (the latest
``window_requests`` requests, never overlapping the reference).
:func:`cross_site` compares each site's current window with the merge of the
other sites' current windows of the same version, so that a site-local fault
(corrupted weights, a bad driver) stands out even when the fleet as a whole
has not moved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from hub.drift import stats
from hub.drift.config import DriftConfig
from hub.drift.signals import NUMERIC, Signals, Window, merge


@dataclass(frozen=True)
class Finding:
    """One signal compared between a reference and a current sample."""

    signal: str
    test: str
    """``ks``, ``chi2``, ``wasserstein`` or ``jensen-shannon``: the one that decided."""
    score: float
    """The deciding figure: a p-value (ks, chi2: drift when below ``alpha``) or a distance (drift when above)."""
    threshold: float
    drifted: bool
    psi: float
    """Population stability index (summary; bands: < 0.1 stable, < 0.25 moderate, else major)."""
    n_reference: int
    n_current: int
    reference_mean: float | None = None
    current_mean: float | None = None
    note: str = ""
    """Why a difference the test found is not a drift (e.g. a site not confirmed against the others)."""

    def to_json(self) -> dict:
        def num(x: float | None) -> float | None:
            return None if x is None or not math.isfinite(x) else round(x, 6)

        return {"signal": self.signal, "test": self.test, "score": num(self.score), "threshold": self.threshold,
                "drifted": self.drifted, "psi": num(self.psi), "psiBand": stats.psi_band(self.psi),
                "nReference": self.n_reference, "nCurrent": self.n_current,
                "referenceMean": num(self.reference_mean), "currentMean": num(self.current_mean),
                "note": self.note}


def _numeric(name: str, ref: Signals, cur: Signals, cfg: DriftConfig) -> Finding | None:
    a, b = stats.histogram(ref.sketches[name]), stats.histogram(cur.sketches[name])
    # Samples per side: requests, except ITL which has one sample per token (use requests to size the test).
    na, nb = (ref.requests, cur.requests) if name == "itlS" else (int(a.n), int(b.n))
    if min(na, nb) < cfg.min_requests or not a.n or not b.n:
        return None
    psi = stats.psi_numeric(a, b)
    if min(na, nb) < cfg.large_sample:
        if name == "itlS":  # per-token gaps are not independent draws: test the per-request scale on distance only
            d = stats.wasserstein_normed(a, b)
            return Finding(name, "wasserstein", d, cfg.wasserstein, d > cfg.wasserstein, psi, na, nb,
                           a.mean(), b.mean())
        _, p = stats.ks(a, b)
        return Finding(name, "ks", p, cfg.alpha, p < cfg.alpha, psi, na, nb, a.mean(), b.mean())
    d = stats.wasserstein_normed(a, b)
    return Finding(name, "wasserstein", d, cfg.wasserstein, d > cfg.wasserstein, psi, na, nb, a.mean(), b.mean())


def _categorical(name: str, a: dict[str, float], b: dict[str, float], cfg: DriftConfig) -> Finding | None:
    na, nb = int(sum(a.values())), int(sum(b.values()))
    if min(na, nb) < cfg.min_requests:
        return None
    psi = stats.psi_categorical(a, b)
    if min(na, nb) < cfg.large_sample:
        _, p = stats.chi2(a, b)
        return Finding(name, "chi2", p, cfg.alpha, p < cfg.alpha, psi, na, nb)
    d = stats.js_distance(a, b)
    return Finding(name, "jensen-shannon", d, cfg.jensen_shannon, d > cfg.jensen_shannon, psi, na, nb)


def compare(ref: Signals, cur: Signals, cfg: DriftConfig) -> tuple[Finding, ...]:
    """Every enabled signal with enough data on both sides, tested (current against reference)."""
    out: list[Finding] = []
    for name in cfg.signals:
        f: Finding | None
        if name in NUMERIC:
            f = _numeric(name, ref, cur, cfg)
        elif name == "finish":
            f = _categorical(name, dict(ref.finish), dict(cur.finish), cfg)
        elif name == "empty":
            f = _categorical(name, {"empty": ref.empty, "nonEmpty": ref.completed - ref.empty},
                             {"empty": cur.empty, "nonEmpty": cur.completed - cur.empty}, cfg)
        else:
            raise ValueError(f"unknown drift signal {name!r}; known: {', '.join((*NUMERIC, 'finish', 'empty'))}")
        if f is not None:
            out.append(f)
    return tuple(out)


# ---------------------------------------------------------------- windows


@dataclass(frozen=True)
class Selection:
    """The reference and current windows of one version (report windows, in time order)."""

    reference: tuple[Window, ...]
    current: tuple[Window, ...]

    @property
    def reference_signals(self) -> Signals:
        return merge(w.signals for w in self.reference)

    @property
    def current_signals(self) -> Signals:
        return merge(w.signals for w in self.current)


def _take(windows: Sequence[Window], want: int) -> list[Window]:
    out: list[Window] = []
    n = 0
    for w in windows:
        if n >= want:
            break
        out.append(w)
        n += w.signals.requests
    return out


def select_windows(windows: Sequence[Window], cfg: DriftConfig) -> Selection:
    """Reference and current windows among one version's report windows (any order; sorted by end time)."""
    ordered = sorted(windows, key=lambda w: (w.end, w.site, w.node))
    if cfg.reference_since is not None and cfg.reference_until is not None:
        ref = [w for w in ordered if w.start >= cfg.reference_since and w.end <= cfg.reference_until]
    else:
        ref = _take(ordered, cfg.reference_requests)
    taken = {id(w) for w in ref}
    rest = [w for w in ordered if id(w) not in taken]
    cur = _take(list(reversed(rest)), cfg.window_requests)
    return Selection(tuple(ref), tuple(reversed(cur)))


@dataclass(frozen=True)
class SiteFinding:
    site: str
    findings: tuple[Finding, ...]


def latest_per_site(windows: Sequence[Window], cfg: DriftConfig) -> dict[str, list[Window]]:
    """Each site's latest ``window_requests`` requests (windows in time order)."""
    by_site: dict[str, list[Window]] = {}
    for w in windows:
        by_site.setdefault(w.site, []).append(w)
    return {site: list(reversed(_take(sorted(ws, key=lambda w: w.end, reverse=True), cfg.window_requests)))
            for site, ws in sorted(by_site.items())}


def cross_site(windows: Sequence[Window], cfg: DriftConfig) -> tuple[SiteFinding, ...]:
    """Each site's latest window against the other sites' latest windows (same version): site-local outliers.

    Needs at least two sites; the rest of the fleet is the reference, the site the current sample.
    """
    per_site = latest_per_site(windows, cfg)
    if len(per_site) < 2:
        return ()
    return site_outliers({site: merge(w.signals for w in ws) for site, ws in per_site.items()}, cfg)


def site_outliers(by_site: dict[str, Signals], cfg: DriftConfig) -> tuple[SiteFinding, ...]:
    """Each site against the rest of the fleet; a difference stands only if the site also differs from most
    other sites one by one. Otherwise one faulty site would make every healthy site look different from a
    "rest" that contains it (with three sites, half of each healthy site's rest is the faulty one)."""
    out = []
    for site, mine in by_site.items():
        others = {s: m for s, m in by_site.items() if s != site}
        found = []
        for f in compare(merge(others.values()), mine, cfg):
            if f.drifted and len(others) > 1:
                one = replace(cfg, signals=(f.signal,))
                differs = sum(any(g.drifted for g in compare(m, mine, one)) for m in others.values())
                if 2 * differs <= len(others):
                    f = replace(f, drifted=False,
                                note=f"differs from the rest but from only {differs} of {len(others)} other sites")
            found.append(f)
        out.append(SiteFinding(site, tuple(found)))
    return tuple(out)


# ----------------------------------------------------------------- timeline


@dataclass(frozen=True)
class Check:
    """The verdicts at one moment: after the report window ending at ``at``."""

    at: datetime
    requests: int
    """Requests of the version seen fleet-wide up to ``at`` (reference included)."""
    findings: tuple[Finding, ...]
    sites: tuple[SiteFinding, ...]

    def drifted(self) -> dict[tuple[str, str], Finding]:
        """(site or '' for the fleet, signal) -> finding, for every drifted signal."""
        out = {("", f.signal): f for f in self.findings if f.drifted}
        for sf in self.sites:
            out.update({(sf.site, f.signal): f for f in sf.findings if f.drifted})
        return out


@dataclass(frozen=True)
class Alarm:
    """A drift that held for ``consecutive`` checks."""

    site: str
    """'' for a fleet-wide drift against the reference; a site name for a cross-site outlier."""
    signal: str
    since: datetime
    """The first check of the run that raised it."""
    since_requests: int
    raised: datetime
    raised_requests: int
    finding: Finding
    """The latest check's finding."""
    active: bool
    """Still drifted at the last check."""


def timeline(windows: Sequence[Window], cfg: DriftConfig, stride: int = 1, start: int = 0) -> list[Check]:
    """Checks over a version's report windows in time order, as the hub would have made them live.

    A check is made after a window once at least ``stride`` requests arrived since the previous one
    and the reference is complete: the current window is then the latest ``window_requests`` requests
    after the reference, and each site's latest ones are compared with the rest of the fleet's.
    No check is made before ``start`` requests were seen (to replay only the latest ones).
    """
    ordered = sorted(windows, key=lambda w: (w.end, w.site, w.node))
    sel = select_windows(ordered, cfg)
    ref_ids = {id(w) for w in sel.reference}
    ref = sel.reference_signals
    ref_done = max((w.end for w in sel.reference), default=None)
    checks: list[Check] = []
    seen = since_check = 0
    for i, w in enumerate(ordered):
        seen += w.signals.requests
        since_check += w.signals.requests
        if ref_done is None or w.end < ref_done or since_check < stride or seen < start:
            continue
        since_check = 0
        upto = ordered[: i + 1]
        after = [x for x in upto if id(x) not in ref_ids]
        latest = list(reversed(after))
        findings = compare(ref, merge(x.signals for x in _take(latest, cfg.window_requests)), cfg) if after else ()
        if after and cfg.large_window_requests:
            findings += compare_large(ref, merge(x.signals for x in _take(latest, cfg.large_window_requests)), cfg)
        checks.append(Check(w.end, seen, findings, cross_site(upto, cfg)))
    return checks


def compare_large(ref: Signals, cur: Signals, cfg: DriftConfig) -> tuple[Finding, ...]:
    """The long window's verdicts: by distance only, and only once it holds ``large_sample`` requests."""
    if cur.requests < min(cfg.large_sample, cfg.large_window_requests):
        return ()
    return tuple(f for f in compare(ref, cur, cfg) if f.test in ("wasserstein", "jensen-shannon"))


def alarms(checks: Sequence[Check], cfg: DriftConfig) -> list[Alarm]:
    """Drifts that held for ``consecutive`` checks in a row, one per (site, signal) run, in order raised."""
    runs: dict[tuple[str, str], list[Check]] = {}
    open_: dict[tuple[str, str], int] = {}  # key -> index in ``raised`` of its active alarm
    raised: list[Alarm] = []
    for c in checks:
        now = c.drifted()
        for key in [k for k in runs if k not in now]:
            del runs[key]
            if key in open_:
                j = open_.pop(key)
                raised[j] = replace(raised[j], active=False)
        for key, f in now.items():
            run = runs.setdefault(key, [])
            run.append(c)
            if key in open_:
                raised[open_[key]] = replace(raised[open_[key]], finding=f)
            elif len(run) >= cfg.consecutive:
                open_[key] = len(raised)
                raised.append(Alarm(key[0], key[1], run[0].at, run[0].requests, c.at, c.requests, f, True))
    return raised
