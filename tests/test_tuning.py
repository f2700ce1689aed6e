"""The tuned ``blend`` baseline against a numpy grid search over full-bank ranks, chosen on val windows only."""

from __future__ import annotations

import numpy as np
import pytest

from lvmkit.data.windows import make_windows
from lvmkit.eval.evaluator import evaluate_suite, format_table
from lvmkit.eval.tuning import BLEND_ALPHA_GRID, BLEND_KS, BLEND_W_GRID, tune_blend

CTX = 4
DIM = 24
N_ART, LEN = 24, 14  # articles 0..11 "persistent" (copy-last wins), 12..23 "topical" (the average wins)


def toy_vectors(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = []
    for a in range(N_ART):
        if a < N_ART // 2:  # a slow random walk: the next chunk is closest to the last one
            x = rng.normal(size=DIM)
            for _ in range(LEN):
                x = x / np.linalg.norm(x)
                rows.append(x)
                x = x + 0.35 * rng.normal(size=DIM) / np.sqrt(DIM)
        else:  # a topic plus large independent noise: the average of the context finds the topic
            topic = rng.normal(size=DIM)
            topic /= np.linalg.norm(topic)
            for _ in range(LEN):
                v = topic + 1.1 * rng.normal(size=DIM) / np.sqrt(DIM)
                rows.append(v / np.linalg.norm(v))
    return np.asarray(rows, dtype=np.float32)


@pytest.fixture
def bank(make_bank, tmp_path):
    return make_bank(tmp_path, articles=[LEN] * N_ART, dim=DIM, vectors=toy_vectors())


def split_windows(bank):
    """(val windows: the persistent articles, test windows: the topical ones), full contexts only."""
    ws = make_windows(bank, None, "all", ctx=CTX, pad=False)
    art = ws.article_of_all()
    return ws.subset(np.flatnonzero(art < N_ART // 2)), ws.subset(np.flatnonzero(art >= N_ART // 2))


def numpy_blend(ctx: np.ndarray, w: float, alpha: float) -> np.ndarray:
    """normalize(w last + (1 - w) sum_t a(1-a)^(T-1-t) x_t / sum_t a(1-a)^(T-1-t)), full contexts."""
    T = ctx.shape[1]
    weights = np.array([alpha * (1 - alpha) ** (T - 1 - t) for t in range(T)])
    ew = (weights[None, :, None] * ctx).sum(axis=1) / weights.sum()
    q = w * ctx[:, -1] + (1 - w) * ew
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def numpy_choice(bank, windows) -> tuple[float, float]:
    """Brute-force grid search: rank the whole bank by inner product, drop the window's context rows,
    score mean Hit@1/5/10/50; the first best pair in (w, alpha) order wins."""
    V = np.asarray(bank.vectors, dtype=np.float64)
    batch = windows.batch(np.arange(len(windows)))
    ctx, truth = np.asarray(batch.ctx, dtype=np.float64), np.asarray(batch.target_ids)
    grid = [(w, a) for w in BLEND_W_GRID for a in BLEND_ALPHA_GRID if w < 1.0 or a == BLEND_ALPHA_GRID[0]]
    best, best_score = None, -1.0
    for w, a in grid:
        q = numpy_blend(ctx, w, a)
        hits = np.zeros(len(BLEND_KS))
        for i, t in enumerate(truth):
            order = [r for r in np.argsort(-(V @ q[i]), kind="stable") if not (t - CTX <= r < t)]
            rank = order.index(t) + 1
            hits += [rank <= k for k in BLEND_KS]
        score = hits.mean() / len(truth)
        if score > best_score + 1e-12:
            best, best_score = (w, a), score
    return best


def test_blend_is_chosen_on_val_only_and_matches_numpy(bank):
    val, test = split_windows(bank)
    want_val, want_test = numpy_choice(bank, val), numpy_choice(bank, test)
    assert want_val != want_test  # the toy is built so that tuning on test would pick another pair
    assert want_val[0] >= 0.8 and want_test[0] <= 0.4
    fit = tune_blend(val, bank)
    assert (fit.w, fit.alpha) == want_val
    assert fit.n_windows == len(val) and len(fit.grid) == len(BLEND_W_GRID[:-1]) * len(BLEND_ALPHA_GRID) + 1

    suite = evaluate_suite({}, test, bank, val_windows=val, n_boot=0)
    assert suite.fitted["blend"]["w"] == want_val[0] and suite.fitted["blend"]["alpha"] == want_val[1]
    assert suite.fitted["blend"]["tuned_on"] == "val"
    # its test numbers are those of the val-chosen blend, computed in numpy
    batch = test.batch(np.arange(len(test)))
    q = numpy_blend(np.asarray(batch.ctx, dtype=np.float64), *want_val)
    V = np.asarray(bank.vectors, dtype=np.float64)
    ranks = []
    for i, t in enumerate(np.asarray(batch.target_ids)):
        order = [r for r in np.argsort(-(V @ q[i]), kind="stable") if not (t - CTX <= r < t)]
        ranks.append(order.index(t) + 1)
    assert suite["blend"].metrics["hit@5"] == pytest.approx(np.mean(np.array(ranks) <= 5))
    text = format_table(suite)
    assert f"blend: w={want_val[0]:g}, alpha={want_val[1]:g}" in text


def test_blend_without_val_windows_is_tuned_on_train_or_skipped(bank):
    val, test = split_windows(bank)
    suite = evaluate_suite({}, test, bank, train_windows=val, n_boot=0)
    assert suite.fitted["blend"]["tuned_on"] == "train"
    suite = evaluate_suite({}, test, bank, n_boot=0)
    assert "blend" in suite.skipped and "blend" not in suite


def test_every_model_is_compared_with_every_baseline_at_every_k(bank):
    val, test = split_windows(bank)
    from lvmkit.models import build_model

    model = build_model("mean_ctx", DIM)
    suite = evaluate_suite({"m": model}, test, bank, train_windows=val, val_windows=val, n_boot=50)
    pairs = {(c.baseline, c.metric) for c in suite.all_comparisons}
    baselines = ("copy_last", "mean_ctx", "exp_weighted", "ridge", "blend")
    assert pairs == {(b, f"hit@{k}") for b in baselines for k in (1, 5, 10, 50)}
    same = next(c for c in suite.all_comparisons if c.baseline == "mean_ctx" and c.metric == "hit@5")
    assert same.diff == 0.0  # the model IS mean_ctx
    d = suite.to_dict()
    assert len(d["all_comparisons"]) == 20 and "blend" in d["fitted"]
    assert "m minus each baseline" in format_table(suite)
