"""Holt-Winters forecaster and its fallbacks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from policies.forecast import forecast, forecast_many, forecast_matrix, mape, seasonal_naive
from vmmgr.errors import InvalidArgument

M = 24  # hourly samples, daily season


def diurnal(days: int, trend: float = 0.0, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    t = np.arange(days * M)
    rng = np.random.default_rng(seed)
    return 0.5 + 0.3 * np.sin(2 * np.pi * t / M) + trend * t + rng.normal(0, noise, t.size)


def test_clean_seasonal_series_is_forecast_almost_exactly() -> None:
    y = diurnal(8)
    f = forecast(y, M, M)
    truth = 0.5 + 0.3 * np.sin(2 * np.pi * np.arange(8 * M, 9 * M) / M)
    assert f.method == "holt-winters" and f.params is not None
    assert mape(truth, f.values) < 1.0


def test_trend_is_followed_and_damped() -> None:
    y = diurnal(10, trend=0.002)
    f = forecast(y, 2 * M, M, lower=None)
    truth = (
        0.5
        + 0.3 * np.sin(2 * np.pi * np.arange(10 * M, 12 * M) / M)
        + 0.002 * np.arange(10 * M, 12 * M)
    )
    assert mape(truth, f.values) < 3.0
    assert np.mean(f.values) > np.mean(y[-M:])  # the trend carried on


def test_beats_seasonal_naive_on_noisy_series() -> None:
    y = diurnal(12, noise=0.05, seed=1)
    truth = 0.5 + 0.3 * np.sin(2 * np.pi * np.arange(11 * M, 12 * M) / M)
    hw = forecast(y[: 11 * M], M, M)
    naive = seasonal_naive(y[: 11 * M], M, M)
    assert mape(truth, hw.values) < mape(truth, naive)


def test_short_history_falls_back_to_damped_trend() -> None:
    y = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    f = forecast(y, 3, M, lower=None)
    assert f.method == "damped-trend"
    assert f.params is not None and f.params.gamma == 0.0
    assert 6.0 < f.values[0] < f.values[1] < f.values[2] < 9.5


def test_two_points_fall_back_to_the_last_value() -> None:
    assert forecast([3.0, 4.0], 2, M) == forecast([4.0], 2, M)
    f = forecast([3.0, 4.0], 2, M)
    assert f.values == (4.0, 4.0) and f.method == "last-value" and f.params is None
    assert forecast([], 2, M).values == (0.0, 0.0)


def test_missing_samples_are_carried_forward_and_output_clipped() -> None:
    y = list(diurnal(4))
    y[0] = math.nan
    y[30] = math.nan
    f = forecast(y, M, M, lower=0.0, upper=0.7)
    assert all(0.0 <= v <= 0.7 for v in f.values)
    assert not any(math.isnan(v) for v in f.values)


def test_many_series_at_once_equal_one_by_one() -> None:
    series = {f"h{i}": list(diurnal(6, noise=0.02, seed=i)) for i in range(3)}
    series["short"] = [1.0, 1.0, 1.0, 1.0]
    many = forecast_many(series, 5, M)
    for k, s in series.items():
        assert many[k] == forecast(s, 5, M)
    assert many["short"].method == "damped-trend"


def test_vectorised_fit_spans_chunks() -> None:
    y = np.vstack([diurnal(5, noise=0.01, seed=i) for i in range(70)])  # > one chunk of 64
    out, method, params = forecast_matrix(y, 4, M)
    assert out.shape == (70, 4) and method == "holt-winters" and len(params) == 70
    single, _, _ = forecast_matrix(y[65:66], 4, M)
    assert np.allclose(out[65], single[0])


@pytest.mark.parametrize(
    ("horizon", "season", "field"), [(0, M, "horizon"), (3, -1, "season_length")]
)
def test_bad_arguments_name_the_field(horizon: int, season: int, field: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        forecast([1.0, 2.0, 3.0], horizon, season)
    assert exc.value.field == field


def test_mape_and_its_errors() -> None:
    assert mape([1.0, 2.0, 0.0], [1.1, 1.8, 5.0]) == pytest.approx(10.0)
    assert mape([0.0], [1.0]) == 0.0
    with pytest.raises(InvalidArgument, match="length"):
        mape([1.0], [1.0, 2.0])


def test_seasonal_naive_repeats_the_last_season() -> None:
    y = list(range(10))
    assert list(seasonal_naive(y, 5, 4)) == [6, 7, 8, 9, 6]
    assert list(seasonal_naive([1.0, 2.0], 3, 4)) == [2.0, 2.0, 2.0]
