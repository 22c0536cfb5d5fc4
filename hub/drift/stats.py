"""Two-sample tests and distances between distributions held as DDSketches or category counts.

Pure functions. A numeric signal arrives as a DDSketch (1 % relative
accuracy, exactly mergeable across nodes and windows): its bins are a
histogram whose bin edges every sketch of the fleet shares, so two sketches
are compared bin by bin with no resampling. Categorical signals (finish
reasons) arrive as counts.

Which test decides depends on the sample size, as Evidently does: with few
requests a statistical test (two-sample Kolmogorov–Smirnov for numbers,
chi-squared for categories) says whether the difference could be chance;
with many, every test finds some difference significant, so a distance
(Wasserstein normalised by the reference's spread, Jensen–Shannon) says
whether it is large enough to matter. The population stability index (PSI)
over the reference's deciles is reported beside either as a familiar summary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from ddsketch.ddsketch import BaseDDSketch
from scipy import special
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon

from hub.report.telemetry import empty_sketch

PSI_EPS = 1e-4
"""Floor for a bin's share in PSI (an empty bin would make it infinite)."""


@dataclass(frozen=True)
class Histogram:
    """A sketch as a histogram: representative values (sorted, distinct) and their counts."""

    values: np.ndarray
    counts: np.ndarray
    n: float

    def mean(self) -> float:
        return float(np.dot(self.values, self.counts) / self.n) if self.n else math.nan

    def std(self) -> float:
        if not self.n:
            return math.nan
        m = self.mean()
        return float(math.sqrt(np.dot((self.values - m) ** 2, self.counts) / self.n))

    def quantiles(self, qs: np.ndarray) -> np.ndarray:
        """Lower quantiles (the bin value where the cumulative count first reaches q * n)."""
        if not self.n:
            return np.full(len(qs), math.nan)
        cum = np.cumsum(self.counts)
        return self.values[np.minimum(np.searchsorted(cum, np.asarray(qs) * self.n, side="left"), len(self.values) - 1)]


def _store_items(store, mapping, sign: float) -> tuple[np.ndarray, np.ndarray]:
    bins = np.asarray(store.bins, dtype=float)
    nz = np.flatnonzero(bins)
    if not len(nz):
        return np.zeros(0), np.zeros(0)
    keys = nz + store.offset
    # LogarithmicMapping.value(key), vectorised: the bin's midpoint in relative terms.
    values = np.power(2.0, (keys - mapping._offset) / mapping._multiplier) * (2.0 / (1 + mapping.gamma))
    return sign * values, bins[nz]


def histogram(sketch: BaseDDSketch) -> Histogram:
    """The sketch's bins (negative, zero, positive) as a sorted histogram."""
    mapping = sketch._mapping
    nv, nc = _store_items(sketch._negative_store, mapping, -1.0)
    pv, pc = _store_items(sketch._store, mapping, 1.0)
    zero = float(sketch._zero_count)
    values = np.concatenate([nv[::-1], [0.0] if zero else [], pv])
    counts = np.concatenate([nc[::-1], [zero] if zero else [], pc])
    return Histogram(values, counts, float(counts.sum()))


def _aligned(a: Histogram, b: Histogram) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both histograms over the union of their bins: (values, counts of a, counts of b)."""
    values = np.union1d(a.values, b.values)
    ca = np.zeros(len(values))
    cb = np.zeros(len(values))
    ca[np.searchsorted(values, a.values)] = a.counts
    cb[np.searchsorted(values, b.values)] = b.counts
    return values, ca, cb


def ks(a: Histogram, b: Histogram) -> tuple[float, float]:
    """Two-sample Kolmogorov–Smirnov on binned samples: (statistic D, asymptotic p-value).

    Values sharing a bin count as ties, which only lowers D: the binned test is
    conservative (never more alarms than the exact one on the raw values).
    """
    if not a.n or not b.n:
        return 0.0, 1.0
    _, ca, cb = _aligned(a, b)
    d = float(np.max(np.abs(np.cumsum(ca) / a.n - np.cumsum(cb) / b.n)))
    en = math.sqrt(a.n * b.n / (a.n + b.n))
    return d, float(special.kolmogorov((en + 0.12 + 0.11 / en) * d))  # Stephens' small-sample correction


def wasserstein_normed(a: Histogram, b: Histogram) -> float:
    """First Wasserstein distance between the two, divided by the reference ``a``'s standard deviation.

    0 for identical distributions; 0.1 means the mass moved on average by a tenth of the
    reference's spread (Evidently's default threshold for numerical drift on large samples).
    """
    if not a.n or not b.n:
        return 0.0
    w = float(sps.wasserstein_distance(a.values, b.values, a.counts, b.counts))
    spread = a.std()
    if not spread or not math.isfinite(spread):
        return 0.0 if w == 0 else math.inf
    return w / spread


def psi_numeric(a: Histogram, b: Histogram, buckets: int = 10) -> float:
    """Population stability index of ``b`` against ``a`` over ``a``'s quantile buckets."""
    if not a.n or not b.n:
        return 0.0
    edges = np.unique(a.quantiles(np.linspace(0, 1, buckets + 1)[1:-1]))
    pa = np.bincount(np.searchsorted(edges, a.values, side="right"), weights=a.counts, minlength=len(edges) + 1)
    pb = np.bincount(np.searchsorted(edges, b.values, side="right"), weights=b.counts, minlength=len(edges) + 1)
    return _psi(pa / a.n, pb / b.n)


def _psi(pa: np.ndarray, pb: np.ndarray) -> float:
    pa = np.maximum(pa, PSI_EPS)
    pb = np.maximum(pb, PSI_EPS)
    return float(np.sum((pb - pa) * np.log(pb / pa)))


def _counts(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    keys = sorted(set(a) | set(b))
    ca = np.asarray([float(a.get(k, 0)) for k in keys])
    cb = np.asarray([float(b.get(k, 0)) for k in keys])
    keep = (ca + cb) > 0
    return ca[keep], cb[keep]


MIN_EXPECTED = 5.0
"""Cochran's rule: categories expected fewer times than this (on either side) are pooled before chi-squared."""


def chi2(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[float, float]:
    """Chi-squared test of homogeneity of two category counts: (statistic, p-value).

    Rare categories (expected count under :data:`MIN_EXPECTED` on either side) are pooled into
    one, where the chi-squared approximation would otherwise give tiny p-values for a single
    unlucky request; with fewer than two categories left there is nothing to test (p = 1).
    """
    ca, cb = _counts(a, b)
    if len(ca) < 2 or not ca.sum() or not cb.sum():
        return 0.0, 1.0
    total = ca + cb
    expected_min = np.minimum(total * ca.sum(), total * cb.sum()) / (ca.sum() + cb.sum())
    rare = expected_min < MIN_EXPECTED
    if rare.any():
        ca = np.append(ca[~rare], ca[rare].sum())
        cb = np.append(cb[~rare], cb[rare].sum())
        pooled_min = (ca[-1] + cb[-1]) * min(ca.sum(), cb.sum()) / (ca.sum() + cb.sum())
        if pooled_min < MIN_EXPECTED:  # even pooled, the rare ones are too rare: leave them out
            ca, cb = ca[:-1], cb[:-1]
    if len(ca) < 2:
        return 0.0, 1.0
    res = sps.chi2_contingency(np.vstack([ca, cb]), correction=False)
    return float(res.statistic), float(res.pvalue)


def js_distance(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Jensen–Shannon distance (base 2, in [0, 1]) between two category distributions."""
    ca, cb = _counts(a, b)
    if not ca.sum() or not cb.sum():
        return 0.0
    return float(jensenshannon(ca / ca.sum(), cb / cb.sum(), base=2))


def psi_categorical(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    ca, cb = _counts(a, b)
    if not ca.sum() or not cb.sum():
        return 0.0
    return _psi(ca / ca.sum(), cb / cb.sum())


def psi_band(psi: float) -> str:
    """The customary reading of a PSI: below 0.1 stable, 0.1-0.25 moderate, above 0.25 major shift."""
    return "stable" if psi < 0.1 else "moderate" if psi < 0.25 else "major"


def merged(sketches: Sequence[BaseDDSketch]) -> BaseDDSketch:
    """One sketch of the union (the inputs are left as they are)."""
    out = empty_sketch()
    for s in sketches:
        if s.count:
            out.merge(s)
    return out
