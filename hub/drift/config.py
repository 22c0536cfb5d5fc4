"""Drift thresholds per service: the defaults below, overridden by a Service's ``spec.drift`` block.

Why these defaults (the README's "Drift detection" section has the figures):

* ``alpha`` 1e-6 per test. A service is checked every report window (seconds
  to a minute) on several signals, day and night: thousands of tests a day.
  At 1e-6 a stationary service raises well under one false alarm per week
  even counting every check as independent, and a real shift of the size the
  issue names (prompts +30 %, outputs halved, a swapped model) still gives
  p-values far below it within a few hundred requests.
* ``wasserstein`` 0.2 and ``jensenShannon`` 0.1. Evidently's defaults are
  0.1 for both; on real token-count mixes (heavy right tails) a stationary
  1000-request window against a 3000-request reference reaches a normalised
  Wasserstein distance of 0.13 within six simulated hours, so 0.1 would alarm
  several times a day; 0.2 keeps a 1.5x margin over that and still sees a
  30 % prompt-length shift of the code trace (0.31 when fully drifted).
* ``largeSample`` 1000: below it the KS/chi-squared test decides, at or above
  it the distance does (with a thousand requests a side, KS flags shifts of a
  few per cent that no operator would act on).
* ``referenceRequests`` 3000, ``windowRequests`` 300 and
  ``largeWindowRequests`` 1000: a reference this large makes its own noise
  small against the window's; the short window fills within the 500-request
  detection goal and catches large shifts (a swapped model, halved outputs)
  by test; the long one catches a 30 % shift of a widely spread signal (the
  Azure code trace's prompt lengths have a log-scale spread of 1.36, where
  no test on 300 requests can tell 30 % from chance at a false-alarm rate of
  one a week) once a third of it has drifted, by distance.
* ``consecutive`` 2: a verdict holds only if the next window agrees, which
  halves nothing real (a drift persists) but squares the chance of a fluke.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime


@dataclass(frozen=True)
class DriftConfig:
    """Thresholds of the drift detector for one service."""

    reference_requests: int = 3000
    """Requests of the reference window: the first ones of a version after it rolls out."""
    window_requests: int = 300
    """Requests of the short current window (the latest ones), judged by tests (KS, chi-squared)."""
    large_window_requests: int = 1000
    """Requests of the long current window (the latest ones), judged by distances (Wasserstein, Jensen-Shannon):
    more requests see smaller shifts of widely spread signals; 0 turns it off."""
    min_requests: int = 100
    """Fewer requests than this on either side: no verdict (not enough evidence)."""
    large_sample: int = 1000
    """Smaller side at or above this: distances decide (Wasserstein, Jensen-Shannon); below: tests (KS, chi2)."""
    alpha: float = 1e-6
    """Significance level of the KS and chi-squared tests."""
    wasserstein: float = 0.2
    """Normalised Wasserstein distance (in reference standard deviations) that counts as drift on large samples."""
    jensen_shannon: float = 0.1
    """Jensen-Shannon distance (base 2) between finish-reason mixes that counts as drift on large samples."""
    consecutive: int = 2
    """Checks in a row that must agree before a drift is raised."""
    reference_since: datetime | None = None
    """Operator-pinned reference window start (with ``reference_until``); default: the version's first requests."""
    reference_until: datetime | None = None
    signals: tuple[str, ...] = ("promptTokens", "outputTokens", "nll", "ttftS", "itlS", "finish", "empty")
    """Signals checked."""

    def __post_init__(self) -> None:
        if self.large_window_requests < 0:
            raise ValueError(f"drift.largeWindowRequests must be >= 0, got {self.large_window_requests}")
        for name in ("reference_requests", "window_requests", "min_requests", "large_sample", "consecutive"):
            if getattr(self, name) < 1:
                raise ValueError(f"drift.{_camel(name)} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"drift.alpha must be in (0, 1), got {self.alpha}")
        if self.wasserstein <= 0 or not 0 < self.jensen_shannon <= 1:
            raise ValueError("drift.wasserstein must be > 0 and drift.jensenShannon in (0, 1]")
        if (self.reference_since is None) != (self.reference_until is None):
            raise ValueError("drift.referenceSince and drift.referenceUntil go together (pin both or neither)")
        if self.reference_since is not None and self.reference_until <= self.reference_since:  # type: ignore[operator]
            raise ValueError("drift.referenceUntil must be after drift.referenceSince")


DEFAULTS = DriftConfig()


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.capitalize() for w in rest)


FIELDS = {_camel(f.name): f.name for f in fields(DriftConfig)}


def from_spec(spec: Mapping | None, base: DriftConfig = DEFAULTS) -> DriftConfig:
    """A service's ``drift`` block (camelCase keys, as validated by the Service schema) over ``base``."""
    if not spec:
        return base
    changes = {}
    for key, value in spec.items():
        if value is None:
            continue
        if key not in FIELDS:
            raise ValueError(f"drift.{key}: unknown setting; known: {', '.join(sorted(FIELDS))}")
        if key == "signals":
            value = tuple(value)
        elif key in ("referenceSince", "referenceUntil") and isinstance(value, str):
            value = datetime.fromisoformat(value)
        changes[FIELDS[key]] = value
    return replace(base, **changes)
