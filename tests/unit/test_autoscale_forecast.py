"""The demand forecaster: seasonal series, short history, gaps and zeros."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hub.autoscale.forecast import METHODS, ForecastConfig, SeriesForecaster

DAY = 86_400.0


def true_rate(t: float) -> float:
    """A daily cycle between 4 and 36 req/s."""
    return 20.0 + 16.0 * math.sin(2 * math.pi * t / DAY)


@pytest.mark.parametrize("method", METHODS)
def test_beats_last_value_on_a_seasonal_series(method: str) -> None:
    """Half an hour ahead, the seasonal forecaster is closer to the true rate than the last value."""
    rng = np.random.default_rng(7)
    f = SeriesForecaster(ForecastConfig(method=method))
    horizon = 1800.0
    step = 60.0
    model_err = naive_err = 0.0
    n = 0
    for i in range(int(2.5 * DAY / step)):
        t = i * step
        observed = rng.poisson(true_rate(t) * step) / step
        f.observe(t, observed)
        if t >= 1.25 * DAY:
            fc = f.predict(t, horizon)
            truth = true_rate(t + horizon)
            model_err += abs(fc.mean - truth)
            naive_err += abs(observed - truth)
            n += 1
    assert f.method == method and f.fits >= 1
    assert n > 1000
    assert model_err / n < 0.6 * naive_err / n


def test_short_history_falls_back_to_level_and_recent_max() -> None:
    f = SeriesForecaster()
    for i, r in enumerate([5.0, 5.0, 12.0, 5.0, 5.0]):
        f.observe(i * 60.0, r)
    fc = f.predict(240.0, 120.0)
    assert fc.method == "level" and f.fits == 0
    assert 4.0 < fc.mean < 12.0
    assert fc.upper >= 12.0  # the recent maximum within the window
    assert fc.upper >= fc.mean


def test_upper_quantile_grows_with_the_quantile() -> None:
    rng = np.random.default_rng(3)
    f = SeriesForecaster()
    for i in range(120):
        f.observe(i * 60.0, rng.poisson(600) / 60)
    low, high = f.predict(7200.0, 120.0, 0.6), f.predict(7200.0, 120.0, 0.99)
    assert high.upper > low.upper >= low.mean
    with pytest.raises(ValueError, match="quantile"):
        f.predict(7200.0, 120.0, 1.0)


def test_gaps_and_zeros() -> None:
    """Missing intervals (NaN) are skipped; an all-zero series forecasts zero, not NaN."""
    f = SeriesForecaster(ForecastConfig(method="seasonal_naive"))
    for i in range(int(1.5 * DAY / 300)):
        t = i * 300.0
        f.observe(t, float("nan") if i % 7 == 3 else 0.0)
    fc = f.predict(1.5 * DAY, 120.0)
    assert f.method == "seasonal_naive"
    assert fc.mean == pytest.approx(0.0, abs=1e-9) and fc.upper == pytest.approx(0.0, abs=1e-9)


def test_follows_a_surge_within_minutes() -> None:
    """A tenfold step shows in the forecast within a few intervals (the level is short-term)."""
    f = SeriesForecaster()
    for i in range(60):
        f.observe(i * 60.0, 10.0)
    for i in range(60, 65):
        f.observe(i * 60.0, 100.0)
    assert f.predict(64 * 60.0, 120.0).mean > 60.0


def test_refuses_observations_out_of_order_and_bad_settings() -> None:
    f = SeriesForecaster()
    f.observe(120.0, 1.0)
    with pytest.raises(ValueError, match="older than the last"):
        f.observe(60.0, 1.0)
    with pytest.raises(ValueError, match="not one of"):
        ForecastConfig(method="prophet")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bucket_s"):
        ForecastConfig(bucket_s=0)
