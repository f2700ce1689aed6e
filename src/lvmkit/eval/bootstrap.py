"""Bootstrap confidence intervals over queries.

The unit of resampling is the query: draw n queries with replacement, recompute the statistic, repeat
``n_boot`` times, and take the ``alpha/2`` and ``1 - alpha/2`` percentiles (the percentile bootstrap).
Two systems evaluated on the same queries are compared with ``paired_diff_ci``: both are resampled with
the same indices, so the interval is on the difference itself and is much narrower than two separate
intervals would suggest. "Model beats baseline" in lvmkit means the paired interval lies above zero.

NaN entries (queries where a metric is undefined, e.g. no valid distractor) are dropped first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

_BLOCK = 4_000_000  # resampled values held in memory at once (n_boot x n is drawn in blocks of rows)


def _resample_blocks(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Yield index matrices [b, n] whose rows are bootstrap resamples; deterministic given the seed."""
    rng = np.random.default_rng(seed)
    rows = max(1, _BLOCK // max(n, 1))
    done = 0
    while done < n_boot:
        b = min(rows, n_boot - done)
        yield rng.integers(0, n, size=(b, n))
        done += b


def _percentiles(stats: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _check(n_boot: int, alpha: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _bootstrap(
    columns: list[np.ndarray], stat: Callable[..., np.ndarray], n_boot: int, seed: int, alpha: float
) -> tuple[float, float, float]:
    """Point estimate and percentile interval of ``stat(*resampled_columns)`` (each column [b, n])."""
    _check(n_boot, alpha)
    keep = np.ones(len(columns[0]), dtype=bool)
    for c in columns:
        keep &= np.isfinite(c)
    columns = [np.asarray(c, dtype=np.float64)[keep] for c in columns]
    n = len(columns[0])
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    point = float(stat(*(c[None] for c in columns))[0])
    stats = np.concatenate([stat(*(c[idx] for c in columns)) for idx in _resample_blocks(n, n_boot, seed)])
    lo, hi = _percentiles(stats[np.isfinite(stats)], alpha) if np.isfinite(stats).any() else (np.nan, np.nan)
    return point, lo, hi


def bootstrap_ci(
    per_query_values: np.ndarray, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean over queries and its (1 - alpha) percentile-bootstrap interval."""
    return _bootstrap([np.asarray(per_query_values)], lambda v: v.mean(axis=1), n_boot, seed, alpha)


def paired_diff_ci(
    a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float, float]:
    """(mean(a - b), lo, hi) for two systems' per-query values on the SAME queries, resampled together."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values must be on the same queries: shapes {a.shape} and {b.shape}")
    return _bootstrap([a, b], lambda x, y: (x - y).mean(axis=1), n_boot, seed, alpha)


def bootstrap_ratio_ci(
    num: np.ndarray, den: np.ndarray, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float, float]:
    """(mean(num) / mean(den), lo, hi), resampling queries jointly (e.g. eff@5 = hit@5 / contain@50)."""

    def ratio(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        d = y.mean(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(d > 0, x.mean(axis=1) / d, np.nan)

    return _bootstrap([np.asarray(num), np.asarray(den)], ratio, n_boot, seed, alpha)
