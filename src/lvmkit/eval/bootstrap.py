"""Bootstrap confidence intervals over queries.

The unit of resampling is the query: draw n queries with replacement, recompute the statistic, repeat
``n_boot`` times, and take the ``alpha/2`` and ``1 - alpha/2`` percentiles (the percentile bootstrap).
Two systems evaluated on the same queries are compared with ``paired_diff_ci``: both are resampled with
the same indices, so the interval is on the difference itself and is much narrower than two separate
intervals would suggest. "Model beats baseline" in lvmkit means the paired interval lies above zero.

Every statistic here is a function of column means (a rate, a difference of rates, a ratio of rates), so
a resample is drawn once as a count vector c (how often each query was drawn) and the resampled mean of
any column v is c @ v / n: one matrix product gives the resampled means of all metrics at once
(``resampled_means``), which is what makes intervals on every metric of a 60k-query evaluation cheap.

NaN entries (queries where a metric is undefined, e.g. no valid distractor) are dropped first by the
single-metric functions; ``bootstrap_many`` resamples queries jointly and averages each column over its
finite entries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

_BLOCK = 4_000_000  # count-matrix entries held in memory at once (n_boot x n is built in blocks of rows)


def _check(n_boot: int, alpha: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def resampled_means(columns: np.ndarray, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """[n_boot, m] means of each column of ``columns`` [n, m] over bootstrap resamples of its rows.

    NaN entries are skipped (each column is averaged over the finite entries of the resample); a resample
    with no finite entry in a column gives NaN. Deterministic given the seed.
    """
    cols = np.asarray(columns, dtype=np.float64)
    if cols.ndim == 1:
        cols = cols[:, None]
    n = len(cols)
    finite = np.isfinite(cols)
    all_finite = bool(finite.all())
    values = np.where(finite, cols, 0.0)
    rng = np.random.default_rng(seed)
    rows = max(1, _BLOCK // max(n, 1))
    out = []
    for start in range(0, n_boot, rows):
        b = min(rows, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        offsets = (np.arange(b, dtype=np.int64) * n)[:, None]
        counts = np.bincount((idx + offsets).ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        den = counts @ finite if not all_finite else n  # skip the second product when nothing is NaN
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append((counts @ values) / den)
    return np.concatenate(out)


def _interval(stats: np.ndarray, alpha: float) -> tuple[float, float]:
    stats = stats[np.isfinite(stats)]
    if not len(stats):
        return float("nan"), float("nan")
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _bootstrap(
    columns: list[np.ndarray], stat: Callable[[np.ndarray], np.ndarray], n_boot: int, seed: int, alpha: float
) -> tuple[float, float, float]:
    """Point estimate and percentile interval of ``stat(means)``, ``means`` [.., m] the column means; rows
    with a NaN in any column are dropped first."""
    _check(n_boot, alpha)
    cols = np.stack([np.asarray(c, dtype=np.float64) for c in columns], axis=1)
    cols = cols[np.isfinite(cols).all(axis=1)]
    if not len(cols):
        return float("nan"), float("nan"), float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        point = float(stat(cols.mean(axis=0)[None])[0])
        stats = stat(resampled_means(cols, n_boot, seed))
    return (point, *_interval(stats, alpha))


def bootstrap_ci(
    per_query_values: np.ndarray, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean over queries and its (1 - alpha) percentile-bootstrap interval."""
    return _bootstrap([per_query_values], lambda m: m[:, 0], n_boot, seed, alpha)


def paired_diff_ci(
    a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float, float]:
    """(mean(a - b), lo, hi) for two systems' per-query values on the SAME queries, resampled together."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values must be on the same queries: shapes {a.shape} and {b.shape}")
    return _bootstrap([a, b], lambda m: m[:, 0] - m[:, 1], n_boot, seed, alpha)


def bootstrap_ratio_ci(
    num: np.ndarray, den: np.ndarray, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float, float]:
    """(mean(num) / mean(den), lo, hi), resampling queries jointly (e.g. eff@5 = hit@5 / contain@50)."""
    return _bootstrap(
        [num, den], lambda m: np.where(m[:, 1] > 0, m[:, 0] / m[:, 1], np.nan), n_boot, seed, alpha
    )


def bootstrap_many(
    columns: Mapping[str, np.ndarray],
    ratios: Mapping[str, tuple[str, str]] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, tuple[float, float]]:
    """(lo, hi) for the mean of every column, plus ``ratios`` {name: (num, den)} of column means, all from
    ONE set of query resamples (so intervals of different metrics are computed on the same draws)."""
    _check(n_boot, alpha)
    names = list(columns)
    if not names:
        return {}
    means = resampled_means(
        np.stack([np.asarray(columns[k], dtype=np.float64) for k in names], axis=1), n_boot, seed
    )
    out = {k: _interval(means[:, j], alpha) for j, k in enumerate(names)}
    for name, (num, den) in (ratios or {}).items():
        d = means[:, names.index(den)]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[name] = _interval(np.where(d > 0, means[:, names.index(num)] / d, np.nan), alpha)
    return out
