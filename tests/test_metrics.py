"""Metrics and bootstrap intervals against brute-force Python loops on random data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lvmkit.eval import metrics as M
from lvmkit.eval.bootstrap import bootstrap_ci, bootstrap_many, bootstrap_ratio_ci, paired_diff_ci


def _ranked(rng, q=200, k=60, n=300):
    """Random rankings: distinct ids per row, with a few -1 pads at the end of some rows."""
    ids = np.stack([rng.permutation(n)[:k] for _ in range(q)])
    ids[rng.random(q) < 0.1, -5:] = -1
    truth = np.where(rng.random(q) < 0.5, ids[np.arange(q), rng.integers(0, k, q)], rng.integers(0, n, q))
    truth[truth < 0] = 0
    return ids, truth


def _cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# ------------------------------------------------------------------------------------------ ranking metrics
@pytest.mark.parametrize("k", [1, 5, 10, 50])
def test_hit_mrr_contain_match_loops(k):
    rng = np.random.default_rng(k)
    ids, truth = _ranked(rng)
    hit = [1.0 if int(t) in [int(x) for x in row[:k]] else 0.0 for row, t in zip(ids, truth, strict=True)]
    rr = []
    for row, t in zip(ids, truth, strict=True):
        ranks = [i + 1 for i, x in enumerate(row[:k]) if x == t]
        rr.append(1.0 / ranks[0] if ranks else 0.0)
    np.testing.assert_array_equal(M.hit_at_k(ids, truth, k), hit)
    np.testing.assert_array_equal(M.contain_at_k(ids, truth, k), hit)
    np.testing.assert_allclose(M.mrr_at_k(ids, truth, k), rr)
    assert 0 < np.mean(hit) < 1  # the data exercises both outcomes


def test_hit_at_k_rejects_depth_beyond_ranking():
    ids, truth = _ranked(np.random.default_rng(0), k=10)
    with pytest.raises(ValueError, match="k=11"):
        M.hit_at_k(ids, truth, 11)


def test_eff_at_5_is_ratio_of_means():
    rng = np.random.default_rng(1)
    ids, truth = _ranked(rng)
    h5, c50 = M.hit_at_k(ids, truth, 5), M.contain_at_k(ids, truth, 50)
    assert M.eff_at_5(h5, c50) == pytest.approx(sum(h5) / sum(c50))
    assert math.isnan(M.eff_at_5(np.zeros(3), np.zeros(3)))


def test_recall_at_k_multiple_positives():
    rng = np.random.default_rng(2)
    ids, _ = _ranked(rng, q=100, k=100, n=400)
    pos = rng.integers(0, 400, size=(100, 3))
    pos[:30, 0] = ids[:30, 4]  # some certain hits
    pos[rng.random((100, 3)) < 0.2] = -1
    pos[0] = -1  # a query without positives -> NaN
    got = M.recall_at_k(ids, pos, ks=(10, 100))
    for k in (10, 100):
        for q in range(100):
            p = [int(x) for x in pos[q] if x >= 0]
            if not p:
                assert math.isnan(got[k][q])
                continue
            expected = sum(1 for x in p if x in set(ids[q, :k].tolist())) / len(p)
            assert got[k][q] == pytest.approx(expected)
    # one positive per query: recall@k is hit@k
    truth = pos[:, 0].clip(min=0)
    np.testing.assert_array_equal(M.recall_at_k(ids, truth, [10])[10], M.hit_at_k(ids, truth, 10))


# ------------------------------------------------------------------------------------------ vector metrics
def test_mean_cosine_matches_loop():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(50, 16)), rng.normal(size=(50, 16)) * 3
    np.testing.assert_allclose(
        M.mean_cosine(a, b), [_cos(x, y) for x, y in zip(a, b, strict=True)], atol=1e-6
    )


def test_contrastive_accuracy_matches_loop():
    rng = np.random.default_rng(4)
    pred, target = rng.normal(size=(40, 8)), rng.normal(size=(40, 8))
    dist = rng.normal(size=(60, 8))
    valid = rng.random((40, 60)) < 0.5
    valid[3] = False
    got = M.contrastive_accuracy(pred, target, dist, valid)
    for q in range(40):
        ds = [d for d, v in zip(dist, valid[q], strict=True) if v]
        if not ds:
            assert math.isnan(got[q])
            continue
        wins = sum(_cos(pred[q], d) < _cos(pred[q], target[q]) for d in ds)
        assert got[q] == pytest.approx(wins / len(ds))


def test_separation_margin_matches_loop():
    rng = np.random.default_rng(5)
    q, pos, nb = rng.normal(size=(20, 8)), rng.normal(size=(20, 8)), rng.normal(size=(20, 16, 8))
    valid = rng.random((20, 16)) < 0.8
    valid[:, 0] = True
    got = M.separation_margin(q, pos, nb, valid)
    for i in range(20):
        ns = [_cos(q[i], nb[i, j]) for j in range(16) if valid[i, j]]
        assert got[i] == pytest.approx(_cos(q[i], pos[i]) - sum(ns) / len(ns), abs=1e-6)


# ------------------------------------------------------------------------------------------ offset sweep
def _articles(rng, lengths=(6, 3, 8, 1, 5), d=12):
    codes = np.repeat(np.arange(len(lengths)), lengths)
    vecs = rng.normal(size=(len(codes), d)).astype(np.float32)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True), codes


def test_offset_sweep_matches_loop():
    rng = np.random.default_rng(6)
    vecs, codes = _articles(rng)
    targets = np.array([r for r in range(len(codes)) if r > 0 and codes[r - 1] == codes[r]])
    pred = rng.normal(size=(len(targets), vecs.shape[1]))
    sweep = M.offset_sweep(pred, vecs, targets, codes)
    for j, k in enumerate(range(-3, 4)):
        vals = [
            _cos(p, vecs[t + k])
            for p, t in zip(pred, targets, strict=True)
            if 0 <= t + k < len(codes) and codes[t + k] == codes[t]
        ]
        assert sweep.counts[k] == len(vals)
        assert sweep.means[k] == pytest.approx(np.mean(vals), abs=1e-6)
        assert np.isfinite(sweep.cos[:, j]).sum() == len(vals)
    others = [sweep.means[k] for k in range(-3, 4) if k != 0]
    assert sweep.margin == pytest.approx(sweep.means[0] - max(others))
    assert sweep.to_dict()["n"]["0"] == len(targets)


def test_offset_sweep_flags_copy_of_last_context_chunk():
    vecs, codes = _articles(np.random.default_rng(7))
    targets = np.array([r for r in range(len(codes)) if r > 0 and codes[r - 1] == codes[r]])
    copy_last = M.offset_sweep(vecs[targets - 1], vecs, targets, codes)
    assert copy_last.means[-1] == pytest.approx(1.0, abs=1e-6)
    assert copy_last.collapse and copy_last.margin < 0
    perfect = M.offset_sweep(vecs[targets], vecs, targets, codes)
    assert perfect.means[0] == pytest.approx(1.0, abs=1e-6)
    assert not perfect.collapse and perfect.margin > 0


# ------------------------------------------------------------------------------------------ bootstrap
def test_bootstrap_ci_contains_mean_and_is_deterministic():
    v = np.random.default_rng(8).random(500) < 0.3
    mean, lo, hi = bootstrap_ci(v, n_boot=500, seed=1)
    assert mean == pytest.approx(v.mean())
    assert lo < mean < hi
    assert bootstrap_ci(v, n_boot=500, seed=1) == (mean, lo, hi)
    assert bootstrap_ci(v, n_boot=500, seed=2) != (mean, lo, hi)


def test_bootstrap_ci_matches_loop_and_normal_width():
    v = np.random.default_rng(9).normal(size=400)
    mean, lo, hi = bootstrap_ci(v, n_boot=2000, seed=0)
    # independent computation: same resampling stream, one resample at a time
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 400, size=(2000, 400))
    stats = [v[row].mean() for row in idx]
    assert (lo, hi) == pytest.approx(tuple(np.quantile(stats, [0.025, 0.975])))
    se = v.std(ddof=1) / math.sqrt(400)
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_bootstrap_ci_shrinks_with_n_and_drops_nan():
    rng = np.random.default_rng(10)
    small, big = rng.random(100) < 0.4, rng.random(10_000) < 0.4
    _, lo_s, hi_s = bootstrap_ci(small, n_boot=300)
    _, lo_b, hi_b = bootstrap_ci(big, n_boot=300)
    assert hi_b - lo_b < (hi_s - lo_s) / 5  # width ~ 1/sqrt(n): 10x for 100x the queries
    with_nan = np.r_[small.astype(float), [np.nan] * 7]
    assert bootstrap_ci(with_nan, n_boot=300) == bootstrap_ci(small.astype(float), n_boot=300)
    assert all(math.isnan(x) for x in bootstrap_ci(np.array([np.nan]), n_boot=10))


def test_paired_diff_is_tighter_than_unpaired_and_matches_loop():
    rng = np.random.default_rng(11)
    easy = rng.random(2000) < 0.5  # shared per-query difficulty makes the two systems correlated
    a = (easy | (rng.random(2000) < 0.05)).astype(float)
    b = easy.astype(float)
    d, lo, hi = paired_diff_ci(a, b, n_boot=1000, seed=3)
    assert d == pytest.approx(a.mean() - b.mean())
    assert 0 < lo < d < hi  # a is strictly better on some queries and never worse
    _, alo, ahi = bootstrap_ci(a, n_boot=1000, seed=3)
    assert hi - lo < (ahi - alo) / 2
    idx = np.random.default_rng(3).integers(0, 2000, size=(1000, 2000))
    stats = [(a[r] - b[r]).mean() for r in idx]
    assert (lo, hi) == pytest.approx(tuple(np.quantile(stats, [0.025, 0.975])))
    with pytest.raises(ValueError, match="same queries"):
        paired_diff_ci(a, b[:10])


def test_bootstrap_ratio_ci():
    rng = np.random.default_rng(12)
    den = (rng.random(1000) < 0.6).astype(float)
    num = den * (rng.random(1000) < 0.7)
    r, lo, hi = bootstrap_ratio_ci(num, den, n_boot=500)
    assert r == pytest.approx(num.sum() / den.sum())
    assert lo < r < hi


def test_bootstrap_many_shares_draws_with_the_single_metric_functions():
    rng = np.random.default_rng(13)
    h5 = (rng.random(800) < 0.3).astype(float)
    c50 = np.maximum(h5, rng.random(800) < 0.5)
    cos = rng.normal(0.4, 0.1, 800)
    ca = rng.random(800)
    ca[::50] = np.nan  # undefined for some queries
    cols = {"hit@5": h5, "contain@50": c50, "cos": cos, "ca": ca}
    got = bootstrap_many(cols, {"eff": ("hit@5", "contain@50")}, n_boot=400, seed=5)
    for name, v in (("hit@5", h5), ("contain@50", c50), ("cos", cos)):
        assert got[name] == pytest.approx(bootstrap_ci(v, n_boot=400, seed=5)[1:])
    assert got["eff"] == pytest.approx(bootstrap_ratio_ci(h5, c50, n_boot=400, seed=5)[1:])
    # the NaN column: each resample averages its finite entries; the loop below does the same
    idx = np.random.default_rng(5).integers(0, 800, size=(400, 800))
    stats = [np.nanmean(ca[r]) for r in idx]
    assert got["ca"] == pytest.approx(tuple(np.quantile(stats, [0.025, 0.975])))
