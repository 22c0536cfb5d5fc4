"""Demand forecaster for one (service, region) series: rate (req/s) at ``now + lead time``.

Model, in log space (``log1p(rate)``, so zeros and multiplicative daily swings are fine):

    log1p(rate(t + h)) = baseline(t + h) + level(t) + slope(t) * h

- ``baseline`` is the seasonal shape. ``holt_winters``: statsmodels' ExponentialSmoothing
  (additive seasonality on 15-minute bucket means, daily period, weekly once two weeks of history
  exist) fitted on the history and refitted rarely (``refit_every_s``); ``seasonal_naive``: the
  same bucket one period ago. Fitting ~300 series takes ~0.1 s each, so refits are cheap when rare.
- ``level`` and ``slope`` are exponentially weighted means of the observations' residual from the
  baseline and of its change: updated on every observation, they follow a surge or a shifted day
  within minutes without a refit.
- The upper quantile (for SLO-critical priority classes) adds ``z(q)`` times the spread of the
  one-step-ahead error (EWMA of its absolute value, clipped so one jump does not dominate).
- Short history (less than ``min_seasonal_days`` of data): no baseline; the forecast is the level
  and slope, and the upper quantile is at least the recent maximum (``recent_window_s``).

Gaps (intervals without observations) are interpolated over in bucket means; the level simply
does not move while no data comes. Pure computation, no I/O; one instance per series.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np
from scipy.stats import norm

Method = Literal["holt_winters", "seasonal_naive"]
METHODS: tuple[Method, ...] = ("holt_winters", "seasonal_naive")
DAY_S = 86_400.0
MAX_TREND_FACTOR = 1.5
"""The short-term trend moves a forecast by at most this factor, either way."""
MAX_STEP_ERROR = 0.25
"""One-step errors (log space) count at most this much in the spread (a jump is the level's job)."""
WEEK_S = 7 * DAY_S


@dataclass(frozen=True)
class ForecastConfig:
    """Settings of a series forecaster (seconds unless stated)."""

    method: Method = "holt_winters"
    """Seasonal baseline: ``holt_winters`` (statsmodels) or ``seasonal_naive``. Default holt_winters."""
    bucket_s: float = 900.0
    """Resolution of the seasonal baseline (bucket means). Default 900 s (96 buckets a day)."""
    min_seasonal_days: float = 1.0
    """History needed before a seasonal baseline is used. Default 1 day."""
    weekly_after_days: float = 14.0
    """History after which the season is a week instead of a day. Default 14 days."""
    refit_every_s: float = 6 * 3600.0
    """How often the seasonal baseline is refitted. Default 6 h."""
    level_halflife_s: float = 120.0
    """Half-life of the short-term level and spread (short: a surge must show within minutes). Default 120 s."""
    slope_halflife_s: float = 180.0
    """Half-life of the slope of the level; also how far ahead the slope is extrapolated. Default 180 s."""
    recent_window_s: float = 600.0
    """Window of the recent maximum used as the upper quantile's floor on short history. Default 600 s."""
    max_history_s: float = 15 * DAY_S
    """Bucket means kept. Default 15 days."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"forecast method {self.method!r} is not one of {', '.join(METHODS)}")
        for name in ("bucket_s", "refit_every_s", "level_halflife_s", "slope_halflife_s", "recent_window_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"forecast setting {name} must be > 0 seconds, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Forecast:
    """Predicted demand (req/s) at ``at``."""

    at: float
    mean: float
    upper: float
    """Demand at the requested quantile (>= mean)."""
    quantile: float
    method: str
    """Which model answered: holt_winters, seasonal_naive or level (short history)."""


@functools.lru_cache(maxsize=64)
def _z(quantile: float) -> float:
    return float(norm.ppf(quantile))


def _alpha(dt: float, halflife: float) -> float:
    return 1.0 - 0.5 ** (max(dt, 0.0) / halflife)


def fit_holt_winters(values: np.ndarray, period: int, horizon: int) -> tuple[np.ndarray, float]:
    """(forecast of the next ``horizon`` buckets, residual std) of ``values`` (log space).

    Additive-seasonal Holt-Winters without trend: the short-term trend is the level's job.
    ``legacy-heuristic`` initialisation needs one season of data (``heuristic`` needs two).
    """
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on flat series; the fit is still usable
        fit = ExponentialSmoothing(values, trend=None, seasonal="add", seasonal_periods=period,
                                   initialization_method="legacy-heuristic").fit()
        out = np.asarray(fit.forecast(horizon), dtype=float)
    resid = np.asarray(fit.resid, dtype=float)
    return out, float(np.std(resid[period:])) if len(resid) > period else float(np.std(resid))


def seasonal_naive(values: np.ndarray, period: int, horizon: int) -> np.ndarray:
    """The next ``horizon`` buckets as the same buckets one ``period`` earlier (repeated)."""
    last = values[-period:]
    return np.array([last[i % period] for i in range(horizon)], dtype=float)


@dataclass
class SeriesForecaster:
    """Forecaster of one series; feed it ``observe`` and ask ``predict`` (see module docstring)."""

    config: ForecastConfig = field(default_factory=ForecastConfig)
    _buckets: dict[int, list[float]] = field(default_factory=dict)
    _first: Optional[float] = None
    _last_t: Optional[float] = None
    _recent: deque = field(default_factory=deque)
    _level: float = 0.0
    _slope: float = 0.0
    _var: float = 0.0
    """EWMA of the absolute one-step error (log space)."""
    _seeded: bool = False
    _baseline: Optional[np.ndarray] = None
    _baseline_start: int = 0
    _method: str = "level"
    _next_fit: float = -math.inf
    fits: int = 0

    def observe(self, t: float, rate: float) -> None:
        """Record the mean rate (req/s) of the interval starting at ``t``; NaN = no data (a gap)."""
        if rate is None or not math.isfinite(rate):
            return
        if self._last_t is not None and t < self._last_t:
            raise ValueError(f"observation at {t} is older than the last one ({self._last_t}); feed them in order")
        rate = max(0.0, float(rate))
        cfg = self.config
        if self._first is None:
            self._first = t
        b = int(t // cfg.bucket_s)
        cell = self._buckets.get(b)
        if cell is None:  # a new bucket: drop those beyond the history kept
            cell = self._buckets[b] = [0.0, 0.0]
            old = b - int(cfg.max_history_s // cfg.bucket_s)
            for k in [k for k in self._buckets if k < old]:
                del self._buckets[k]
        cell[0] += rate
        cell[1] += 1
        self._recent.append((t, rate))
        while self._recent and self._recent[0][0] < t - cfg.recent_window_s:
            self._recent.popleft()
        if t >= self._next_fit or (self._baseline is not None and self._baseline_at(t) is None):
            self._refit(t)
        resid = math.log1p(rate) - (self._baseline_at(t) or 0.0)
        if not self._seeded:
            self._level, self._slope, self._var, self._seeded = resid, 0.0, 0.0, True
        else:
            dt = t - (t if self._last_t is None else self._last_t)
            a = _alpha(dt, cfg.level_halflife_s)
            prev = self._level
            # spread of the one-step-ahead error (a steady ramp is the slope's, not noise), as an
            # EWMA of its absolute value clipped, so one jump does not inflate it for long
            err = min(abs(resid - prev - self._slope * dt), MAX_STEP_ERROR)
            self._var = (1 - a) * self._var + a * err
            self._level = (1 - a) * prev + a * resid
            if dt > 0:
                s = _alpha(dt, cfg.slope_halflife_s)
                self._slope = (1 - s) * self._slope + s * (self._level - prev) / dt
        self._last_t = t

    def history_s(self) -> float:
        return 0.0 if self._first is None or self._last_t is None else self._last_t - self._first

    def _series(self) -> tuple[int, np.ndarray]:
        """(first bucket, log1p bucket means of complete buckets), gaps interpolated."""
        keys = sorted(self._buckets)
        last_complete = int((self._last_t if self._last_t is not None else 0.0) // self.config.bucket_s)  # the current bucket is still filling
        keys = [k for k in keys if k < last_complete]
        if not keys:
            return 0, np.zeros(0)
        idx = np.arange(keys[0], keys[-1] + 1)
        have = np.array(keys)
        vals = np.array([math.log1p(self._buckets[k][0] / self._buckets[k][1]) for k in keys])
        return keys[0], np.interp(idx, have, vals)

    def _refit(self, t: float) -> None:
        cfg = self.config
        first = t if self._first is None else self._first
        hist = t - first
        # refit rarely; on short history, look again as soon as a day's shape could exist
        self._next_fit = t + cfg.refit_every_s
        if hist < cfg.min_seasonal_days * DAY_S:
            self._next_fit = min(self._next_fit, first + cfg.min_seasonal_days * DAY_S)
        start, values = self._series()
        period_s = WEEK_S if hist >= cfg.weekly_after_days * DAY_S else DAY_S
        period = int(round(period_s / cfg.bucket_s))
        if hist < cfg.min_seasonal_days * DAY_S or len(values) < period + 1:
            self._baseline, self._method = None, "level"
            return
        method = cfg.method
        horizon = int(math.ceil((cfg.refit_every_s * 2 + DAY_S) / cfg.bucket_s)) + 2
        if method == "holt_winters":
            base, _ = fit_holt_winters(values, period, horizon)
        else:
            base = seasonal_naive(values, period, horizon)
        old = self._baseline_at(t) if self._baseline is not None else None
        self._baseline, self._baseline_start, self._method = base, start + len(values), method
        self.fits += 1
        new = self._baseline_at(t)
        if self._seeded and new is not None:
            # keep the level continuous across a refit: it is relative to the baseline
            self._level += (old if old is not None else 0.0) - new

    def _baseline_at(self, t: float) -> Optional[float]:
        if self._baseline is None:
            return None
        x = t / self.config.bucket_s - 0.5 - self._baseline_start  # bucket centres
        if x > len(self._baseline) - 1:
            return None
        return float(np.interp(x, np.arange(len(self._baseline)), self._baseline))

    @property
    def method(self) -> str:
        return self._method

    def predict(self, now: float, horizon_s: float, quantile: float = 0.95) -> Forecast:
        """Demand at ``now + horizon_s`` (mean and the ``quantile`` upper bound)."""
        if not 0.5 <= quantile < 1.0:
            raise ValueError(f"quantile must be in [0.5, 1), got {quantile!r}")
        at = now + horizon_s
        if not self._seeded:
            return Forecast(at, 0.0, 0.0, quantile, "none")
        base = self._baseline_at(at)
        if self._baseline is not None and base is None:
            base = self._baseline_at(now)
        cfg = self.config
        # damped trend: a ramp seen now is not extrapolated far, nor beyond MAX_TREND_FACTOR
        trend = self._slope * cfg.slope_halflife_s * (1 - math.exp(-horizon_s / cfg.slope_halflife_s))
        trend = max(-math.log(MAX_TREND_FACTOR), min(math.log(MAX_TREND_FACTOR), trend))
        log_mean = (base or 0.0) + self._level + trend
        z = _z(quantile)
        spread = 1.2533 * self._var  # mean absolute error -> standard deviation (normal errors)
        mean = max(0.0, math.expm1(log_mean))
        upper = max(mean, math.expm1(log_mean + z * spread))
        if self._baseline is None and self._recent:
            upper = max(upper, max(r for _, r in self._recent))
        return Forecast(at, mean, upper, quantile, self._method)
