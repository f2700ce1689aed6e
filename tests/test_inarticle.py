"""In-article hard negatives: the selection against a brute-force list on a toy bank, the loss against numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lvmkit.data.windows import make_windows
from lvmkit.errors import ConfigError
from lvmkit.losses import build_loss, info_nce, near_duplicates
from lvmkit.train.mining import article_negative_rows

LENGTHS = [6, 2, 9, 4, 7]
OFFSETS = [1, 2, 3, -1, -2]


def brute_negatives(article_of_row: list[int], target: int, n_ctx: int, offsets) -> list[int]:
    """Walk the article: the chunk k after the target, or |k| before the first context chunk, if it exists."""
    out = []
    for k in offsets:
        r = target + k if k > 0 else target - n_ctx + k
        ok = 0 <= r < len(article_of_row) and article_of_row[r] == article_of_row[target]
        out.append(r if ok else -1)
    return out


@pytest.mark.parametrize("ctx", [1, 3])
def test_selection_matches_a_brute_force_list(make_bank, tmp_path, ctx):
    bank = make_bank(tmp_path, articles=LENGTHS, dim=8)
    windows = make_windows(bank, None, "all", ctx=ctx, min_ctx=1, pad=True)  # padded windows included
    idx = np.arange(len(windows))
    batch = windows.batch(idx)
    n_real = batch.mask.sum(dim=1).numpy()
    got = article_negative_rows(bank.article_codes, batch.target_ids.numpy(), n_real, OFFSETS)
    article_of_row = [a for a, n in enumerate(LENGTHS) for _ in range(n)]
    for i, t in enumerate(batch.target_ids.numpy()):
        want = brute_negatives(article_of_row, int(t), int(n_real[i]), OFFSETS)
        assert got[i].tolist() == want
        ctx_rows = set(windows.context_rows(idx[i : i + 1])[0].tolist()) - {-1}  # -1: padding
        assert not ({int(t)} | ctx_rows) & (set(got[i].tolist()) - {-1})  # never the target or its context
    assert (got >= 0).any() and (got < 0).any()
    with pytest.raises(ConfigError, match="non-zero"):
        article_negative_rows(bank.article_codes, np.array([3]), np.array([1]), [0, 1])


def numpy_info_nce(q, t, rn, valid, tau, weight, dup):
    """Cross-entropy of row i over [its target, the other targets (not same article here), its own row
    negatives with log(weight) added], near-duplicates of the target (cos >= dup) and invalid rows masked."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    rn = rn / np.linalg.norm(rn, axis=2, keepdims=True)
    losses = []
    for i in range(len(q)):
        logits = [q[i] @ t[i] / tau]
        for j in range(len(t)):
            if j != i and t[i] @ t[j] < dup:
                logits.append(q[i] @ t[j] / tau)
        for k in range(rn.shape[1]):
            if valid[i, k] and t[i] @ rn[i, k] < dup:
                logits.append(q[i] @ rn[i, k] / tau + math.log(weight))
        logits = np.array(logits)
        losses.append(np.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[0])
    return float(np.mean(losses))


@pytest.mark.parametrize("weight", [1.0, 0.25])
def test_info_nce_with_row_negatives_matches_numpy(weight):
    rng = np.random.default_rng(0)
    B, K, d = 5, 4, 8
    q, t, rn = rng.normal(size=(B, d)), rng.normal(size=(B, d)), rng.normal(size=(B, K, d))
    rn[2, 1] = t[2] * 3.0  # a copy of row 2's target among its own negatives: masked (near-duplicate)
    valid = rng.random((B, K)) > 0.3
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    got = info_nce(f(q), f(t), 0.1, row_negatives=f(rn), row_valid=torch.tensor(valid), row_weight=weight)
    want = numpy_info_nce(q, t, rn, valid, 0.1, weight, 0.98)
    assert float(got) == pytest.approx(want, rel=1e-5)
    # the row negatives count: without them the loss is lower
    assert float(info_nce(f(q), f(t), 0.1)) < float(got)


def test_one_near_duplicate_rule():
    t = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    c = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0]]), dim=-1)
    np.testing.assert_array_equal(near_duplicates(t, c, 0.98).numpy(), [[1, 1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(
        near_duplicates(t, c[None].expand(2, 3, 2), 0.98).numpy(), [[1, 1, 0], [0, 0, 1]]
    )


def test_loss_spec_checks_the_option():
    with pytest.raises(ConfigError, match="distinct and non-zero"):
        build_loss({"infonce": 1.0, "inarticle_offsets": [1, 0]})
    with pytest.raises(ConfigError, match="set infonce > 0"):
        build_loss({"cos": 1.0, "inarticle_offsets": [1]})
    with pytest.raises(ConfigError, match="inarticle_weight"):
        build_loss({"infonce": 1.0, "inarticle_offsets": [1], "inarticle_weight": 0})
    loss = build_loss({"cos": 1.0, "infonce": 0.5, "inarticle_offsets": [1, -1], "inarticle_weight": 0.5})
    pred, target = torch.randn(3, 4), torch.randn(3, 4)
    rn = torch.randn(3, 2, 4)
    total, parts = loss(
        pred, target, torch.arange(3), row_negatives=rn, row_valid=torch.ones(3, 2, dtype=bool)
    )
    base, _ = loss(pred, target, torch.arange(3))
    assert float(total) > float(base) and "infonce" in parts


def test_a_run_trains_with_in_article_negatives(make_bank, tmp_path):
    from lvmkit.train.config import load_config
    from lvmkit.train.loop import train

    bank = make_bank(tmp_path, articles=[10] * 20, dim=8, seed=2)
    cfg = load_config(
        None,
        [
            f"bank={bank.path}",
            "data.ctx=3",
            "data.batch_size=16",
            "data.max_eval_queries=30",
            "model.name=gru",
            "model.kwargs={hidden: 8, layers: 1, anchor: last}",
            "loss={cos: 1.0, infonce: 0.1, inarticle_offsets: [1, 2, -1], inarticle_weight: 0.5}",
            "optim.epochs=1",
            "final_eval=false",
        ],
    )
    assert train(cfg, tmp_path / "run")["state"] == "finished"
