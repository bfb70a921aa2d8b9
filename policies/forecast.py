"""Load forecasting: additive Holt-Winters with a damped trend (numpy, pure).

    level    l_t = a (y_t - s_{t-m}) + (1 - a)(l_{t-1} + phi b_{t-1})
    trend    b_t = b (l_t - l_{t-1}) + (1 - b) phi b_{t-1}
    season   s_t = g (y_t - l_t) + (1 - g) s_{t-m}
    forecast y_{t+h} = l_t + (phi + ... + phi^h) b_t + s_{t+h-m*ceil(h/m)}

Parameters are fitted per series by minimising the one-step-ahead squared error over a grid,
evaluated for every grid point and every series at once (arrays of shape grid x series), so a
whole cluster's hosts and devices are fitted in one pass over time. With fewer than two seasons of
history the seasonal part cannot be initialised and the forecaster falls back to Holt's damped
trend; with fewer than three points, to the last value.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from vmmgr.errors import InvalidArgument

_ALPHAS = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7)
_BETAS = (0.0, 0.01, 0.05)
_GAMMAS = (0.01, 0.03, 0.06, 0.1, 0.2, 0.4)
_PHIS = (0.9, 0.98)


@dataclass(frozen=True, slots=True)
class HWParams:
    alpha: float
    beta: float
    gamma: float
    phi: float


@dataclass(frozen=True, slots=True)
class Forecast:
    values: tuple[float, ...]  # the next ``horizon`` points
    method: str  # "holt-winters" | "damped-trend" | "last-value"
    params: HWParams | None = None

    def peak(self) -> float:
        return max(self.values) if self.values else math.nan


def _clean(series: Sequence[float]) -> np.ndarray:
    """Float array with NaNs carried forward (a missed scrape is not a zero load)."""
    y = np.asarray(series, dtype=np.float64)
    if y.size and np.isnan(y[0]):
        first = np.flatnonzero(~np.isnan(y))
        y[0] = y[first[0]] if first.size else 0.0
    for i in range(1, y.size):
        if np.isnan(y[i]):
            y[i] = y[i - 1]
    return y


def _grid(seasonal: bool) -> np.ndarray:
    gammas = _GAMMAS if seasonal else (0.0,)
    return np.array(list(itertools.product(_ALPHAS, _BETAS, gammas, _PHIS)), dtype=np.float64)


def _run(
    y: np.ndarray, m: int, grid: np.ndarray, origins: Sequence[int], horizon: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Filter series ``y`` (S x T) for every grid row (G). Returns the one-step SSE (G x S), the
    squared error of ``horizon``-step forecasts made at each of ``origins`` (G x S), and the final
    level, trend (G x S) and season (G x S x m; one zero slot when m == 0)."""
    s_count, t_count = y.shape
    a, b, g, phi = (grid[:, i][:, None] for i in range(4))
    if m > 0:
        first, second = y[:, :m].mean(axis=1), y[:, m : 2 * m].mean(axis=1)
        level = np.broadcast_to(first, (len(grid), s_count)).copy()
        trend = np.broadcast_to((second - first) / m, (len(grid), s_count)).copy()
        season = np.broadcast_to(y[:, :m] - first[:, None], (len(grid), s_count, m)).copy()
        start = m
    else:
        level = np.broadcast_to(y[:, 0], (len(grid), s_count)).copy()
        trend = np.broadcast_to(y[:, 1] - y[:, 0], (len(grid), s_count)).copy()
        season = np.zeros((len(grid), s_count, 1))
        start = 1
    sse = np.zeros((len(grid), s_count))
    hold = np.zeros((len(grid), s_count))
    wanted = set(origins)
    for t in range(start, t_count):
        if t in wanted:
            steps = min(horizon, t_count - t)
            pred_h = _project(level, trend, season, grid[:, 3], m, t, steps)
            hold += ((y[None, :, t : t + steps] - pred_h) ** 2).mean(axis=2)
        k = t % m if m > 0 else 0
        s_old = season[:, :, k]
        pred = level + phi * trend + s_old
        err = y[:, t][None, :] - pred
        sse += err * err
        new_level = a * (y[:, t][None, :] - s_old) + (1 - a) * (level + phi * trend)
        trend = b * (new_level - level) + (1 - b) * phi * trend
        level = new_level
        if m > 0:
            season[:, :, k] = g * (y[:, t][None, :] - level) + (1 - g) * s_old
    return sse, hold, level, trend, season


def _project(
    level: np.ndarray,
    trend: np.ndarray,
    season: np.ndarray,
    phi: np.ndarray,
    m: int,
    t: int,
    horizon: int,
) -> np.ndarray:
    """Forecasts (... x horizon) of the points t .. t+horizon-1 from the state before point t;
    ``level``/``trend`` have any leading shape, ``season`` that shape + (m,), ``phi`` the first
    axis of it."""
    h = np.arange(1, horizon + 1)
    extra = (1,) * (level.ndim - 1)
    damp = np.cumsum(phi.reshape(phi.shape + extra + (1,)) ** h, axis=-1)
    out = level[..., None] + damp * trend[..., None]
    if m > 0:
        out = out + season[..., (t + h - 1) % m]
    return np.asarray(out)


def _origins(t_count: int, m: int, horizon: int) -> list[int]:
    """Back-test origins for choosing parameters: up to three windows ending at the end."""
    step = max(horizon, m // 2, 1)
    earliest = 2 * m + max(m, 4) if m > 0 else 8
    return [o for o in (t_count - horizon - j * step for j in range(3)) if o >= earliest]


_CHUNK = 64  # series fitted together; bounds memory to grid x chunk x season


def forecast_matrix(
    y: np.ndarray, horizon: int, season_length: int
) -> tuple[np.ndarray, str, list[HWParams | None]]:
    """Forecast every row of ``y`` (S x T, equal lengths): (S x horizon, method, params).

    Parameters are chosen per series by the error of ``horizon``-step forecasts back-tested on
    the last windows of the history (one-step error when the history is too short for that)."""
    if horizon < 1:
        raise InvalidArgument("horizon", "must be at least 1")
    if season_length < 0:
        raise InvalidArgument("season_length", "must not be negative")
    s_count, t_count = y.shape
    if t_count < 3:
        last = y[:, -1] if t_count else np.zeros(s_count)
        return np.repeat(last[:, None], horizon, axis=1), "last-value", [None] * s_count
    m = season_length if season_length >= 2 and t_count >= 2 * season_length + 1 else 0
    grid = _grid(m > 0)
    origins = _origins(t_count, m, horizon)
    out = np.empty((s_count, horizon))
    params: list[HWParams | None] = []
    for lo in range(0, s_count, _CHUNK):
        part = y[lo : lo + _CHUNK]
        sse, hold, level, trend, season = _run(part, m, grid, origins, horizon)
        best = np.argmin(hold if origins else sse, axis=0)
        cols = np.arange(part.shape[0])
        out[lo : lo + part.shape[0]] = _project(
            level[best, cols],
            trend[best, cols],
            season[best, cols],
            grid[best, 3],
            m,
            t_count,
            horizon,
        )
        params += [HWParams(*(float(v) for v in grid[i])) for i in best]
    return out, "holt-winters" if m > 0 else "damped-trend", params


def forecast(
    series: Sequence[float],
    horizon: int,
    season_length: int,
    *,
    lower: float | None = 0.0,
    upper: float | None = None,
) -> Forecast:
    """Next ``horizon`` points of one series (``season_length`` samples per season, e.g. 288
    five-minute samples per day); predictions are clipped to [lower, upper]."""
    y = _clean(series)
    out, method, params = forecast_matrix(y[None, :], horizon, season_length)
    vals = np.clip(out[0], lower, upper) if lower is not None or upper is not None else out[0]
    return Forecast(tuple(float(v) for v in vals), method, params[0])


def forecast_many(
    series: Mapping[str, Sequence[float]],
    horizon: int,
    season_length: int,
    *,
    lower: float | None = 0.0,
    upper: float | None = None,
) -> dict[str, Forecast]:
    """Forecast many series (per host, per device...) at once; series of equal length share one
    vectorised fit."""
    by_len: dict[int, list[str]] = {}
    for key, s in series.items():
        by_len.setdefault(len(s), []).append(key)
    result: dict[str, Forecast] = {}
    for keys in by_len.values():
        y = np.vstack([_clean(series[k]) for k in keys]) if keys else np.zeros((0, 0))
        out, method, params = forecast_matrix(y, horizon, season_length)
        if lower is not None or upper is not None:
            out = np.clip(out, lower, upper)
        for i, k in enumerate(keys):
            result[k] = Forecast(tuple(float(v) for v in out[i]), method, params[i])
    return result


def seasonal_naive(series: Sequence[float], horizon: int, season_length: int) -> np.ndarray:
    """Baseline: each future point repeats the value one season earlier."""
    y = _clean(series)
    if season_length < 1 or y.size < season_length:
        return np.full(horizon, y[-1] if y.size else 0.0)
    last = y[-season_length:]
    return np.array([last[i % season_length] for i in range(horizon)])


def mape(actual: Sequence[float], predicted: Sequence[float]) -> float:
    """Mean absolute percentage error (%), over points whose actual value is not zero."""
    a = np.asarray(actual, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    if a.shape != p.shape:
        raise InvalidArgument("predicted", f"length {p.size} differs from actual {a.size}")
    mask = a != 0
    if not mask.any():
        return 0.0
    return float(np.mean(np.abs((a[mask] - p[mask]) / a[mask])) * 100.0)
