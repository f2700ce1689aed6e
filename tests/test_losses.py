"""Losses: InfoNCE against a brute-force per-row computation (both false-negative masks), the queue, the
projection head and build_loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lvmkit.errors import ConfigError
from lvmkit.losses import (
    LossSpec,
    ProjectionHead,
    VectorQueue,
    build_loss,
    cosine_loss,
    info_nce,
    mse_loss,
)

D = 8


pytestmark = pytest.mark.usefixtures("one_thread")


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def brute_force_info_nce(pred, target, tau, extra=None, q_art=None, t_art=None, n_art=None, thr=0.98):
    """Row by row, in float64, with Python loops: the definition written out."""
    pred, target = unit(np.asarray(pred, np.float64)), unit(np.asarray(target, np.float64))
    cands = list(target) + ([] if extra is None else list(unit(np.asarray(extra, np.float64))))
    cand_art = [None] * len(cands)
    if q_art is not None:
        t_art = q_art if t_art is None else t_art
        cand_art[: len(target)] = list(t_art)
        if n_art is not None:
            cand_art[len(target) :] = list(n_art)
    losses = []
    for i in range(len(pred)):
        kept = []
        for j, c in enumerate(cands):
            if j != i:
                if q_art is not None and cand_art[j] is not None and cand_art[j] == q_art[i]:
                    continue
                if float(target[i] @ c) > thr:
                    continue
            kept.append((j, float(pred[i] @ c) / tau))
        logits = np.array([v for _, v in kept])
        pos = [v for j, v in kept if j == i][0]
        losses.append(-(pos - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))))
    return float(np.mean(losses))


def batch(B=6, E=5, seed=0):
    rng = np.random.default_rng(seed)
    pred = unit(rng.standard_normal((B, D))).astype(np.float32)
    target = unit(pred + 0.8 * rng.standard_normal((B, D))).astype(np.float32)
    extra = unit(rng.standard_normal((E, D))).astype(np.float32)
    # plant false negatives: a near-copy of target 0 in the batch and in the extras
    target[3] = unit(target[0] + 0.01 * rng.standard_normal(D))
    extra[1] = target[2]
    return pred, target, extra


def test_mse_and_cosine_losses():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, D)), rng.standard_normal((4, D))
    ta, tb = torch.tensor(a), torch.tensor(b)
    assert math.isclose(mse_loss(ta, tb).item(), ((a - b) ** 2).mean(), rel_tol=1e-6)
    cos = (unit(a) * unit(b)).sum(1)
    assert math.isclose(cosine_loss(ta, tb).item(), (1 - cos).mean(), rel_tol=1e-6)


@pytest.mark.parametrize(
    ("use_extra", "articles", "thr"),
    [(False, False, 1.5), (False, False, 0.98), (True, False, 0.98), (True, True, 0.98), (True, True, 0.3)],
)
def test_info_nce_matches_brute_force(use_extra, articles, thr):
    pred, target, extra = batch()
    q_art = np.array([0, 1, 1, 2, 3, 0]) if articles else None
    n_art = np.array([4, 1, 5, 0, 6]) if articles else None
    got = info_nce(
        torch.tensor(pred),
        torch.tensor(target),
        0.07,
        extra_negatives=torch.tensor(extra) if use_extra else None,
        pred_article=torch.tensor(q_art) if articles else None,
        neg_article=torch.tensor(n_art) if articles else None,
        dup_threshold=thr,
    ).item()
    want = brute_force_info_nce(pred, target, 0.07, extra if use_extra else None, q_art, None, n_art, thr)
    assert math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-5)


def test_info_nce_masks_change_the_loss_and_keep_the_positive():
    pred, target, _ = batch()
    p, t = torch.tensor(pred), torch.tensor(target)
    plain = info_nce(p, t, 0.1, dup_threshold=2.0).item()
    assert info_nce(p, t, 0.1, dup_threshold=0.98).item() != plain  # the planted duplicate pair is masked
    # every candidate in one article: only the positive is left, the loss is exactly 0
    same = torch.zeros(len(p), dtype=torch.long)
    assert info_nce(p, t, 0.1, pred_article=same).item() == pytest.approx(0.0, abs=1e-7)
    # separate target_article ids are honoured
    got = info_nce(p, t, 0.1, pred_article=torch.arange(6), target_article=torch.tensor([1, 0, 3, 2, 5, 4]))
    want = brute_force_info_nce(pred, target, 0.1, None, np.arange(6), np.array([1, 0, 3, 2, 5, 4]))
    assert math.isclose(got.item(), want, rel_tol=1e-4)


def test_vector_queue_is_a_fifo_and_checkpoints():
    q = VectorQueue(5, 2)
    assert len(q) == 0
    rows = torch.arange(14, dtype=torch.float32).view(7, 2)
    q.push(rows[:3], torch.tensor([0, 1, 2]))
    v, a = q.get()
    torch.testing.assert_close(v, rows[:3])
    assert a.tolist() == [0, 1, 2]
    q.push(rows[3:7], torch.tensor([3, 4, 5, 6]))  # wraps: slots 3,4,0,1
    v, a = q.get()
    assert len(q) == 5 and sorted(a.tolist()) == [2, 3, 4, 5, 6]
    torch.testing.assert_close(v[a.argsort()], rows[2:7])
    q.push(torch.ones(9, 2, requires_grad=True) * 7)  # more than the size: the newest 5, detached, ids -1
    v, a = q.get()
    assert not v.requires_grad and (v == 7).all() and (a == -1).all()
    fresh = VectorQueue(5, 2)
    fresh.load_state_dict(q.state_dict())
    torch.testing.assert_close(fresh.get()[0], v)
    assert int(fresh.ptr) == int(q.ptr)


def test_projection_head_shape_norm_and_no_last_bias():
    head = ProjectionHead(D)
    out = head(torch.randn(4, D))
    assert out.shape == (4, 256)
    np.testing.assert_allclose(out.norm(dim=-1).detach().numpy(), 1.0, atol=1e-6)
    last = head.net[-1]
    assert isinstance(last, torch.nn.Linear) and last.bias is None and last.in_features == 512
    assert [type(m).__name__ for m in head.net] == ["Linear", "GELU", "LayerNorm", "Linear"]


def test_build_loss_weighted_sum():
    pred, target, _ = batch()
    p, t = torch.tensor(pred), torch.tensor(target)
    arts = torch.tensor([0, 1, 2, 3, 4, 5])
    loss = build_loss({"mse": 1.0, "cos": 0.5, "infonce": 0.03, "tau": 0.07})
    total, parts = loss(p, t, arts)
    want = mse_loss(p, t) + 0.5 * cosine_loss(p, t) + 0.03 * info_nce(p, t, 0.07, pred_article=arts)
    assert math.isclose(total.item(), want.item(), rel_tol=1e-6)
    assert set(parts) == {"mse", "cos", "infonce", "total"} and not parts["total"].requires_grad
    assert build_loss().spec == LossSpec(cos=1.0)


def test_build_loss_queue_feeds_later_batches_with_article_masks():
    pred, target, _ = batch(B=6)
    p, t = torch.tensor(pred), torch.tensor(target)
    loss = build_loss({"infonce": 1.0, "queue": 8, "tau": 0.1}, dim=D).train()
    a1, a2 = torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([10, 11, 12, 13, 2, 15])
    first, _ = loss(p[:3], t[:3], a1[:3])
    assert math.isclose(first.item(), info_nce(p[:3], t[:3], 0.1, pred_article=a1[:3]).item(), rel_tol=1e-6)
    assert len(loss.queue) == 3
    second, _ = loss(p[3:], t[3:], a2[3:])
    want = brute_force_info_nce(pred[3:], target[3:], 0.1, target[:3], a2[3:].numpy(), None, a1[:3].numpy())
    assert math.isclose(second.item(), want, rel_tol=1e-4)
    loss.eval()
    loss(p, t, a1)
    assert len(loss.queue) == 6  # evaluation never touches the queue
    state = loss.state_dict()
    assert "queue.vectors" in state and "queue.articles" in state


def test_build_loss_contrastive_uses_the_projection_head():
    torch.manual_seed(0)
    pred, target, extra = batch()
    p, t = torch.tensor(pred, requires_grad=True), torch.tensor(target)
    arts = torch.arange(6)
    loss = build_loss({"lambda_ar": 1.0, "lambda_con": 0.1, "tau": 0.07}, dim=D)
    assert isinstance(loss.head, ProjectionHead) and loss.queue is None
    total, parts = loss(p, t, arts, extra_negatives=torch.tensor(extra))
    h = loss.head
    con = info_nce(h(p), h(t), 0.07, extra_negatives=h(torch.tensor(extra)), pred_article=arts)
    assert math.isclose(parts["con"].item(), con.item(), rel_tol=1e-6)
    assert math.isclose(total.item(), cosine_loss(p, t).item() + 0.1 * con.item(), rel_tol=1e-6)
    total.backward()
    assert p.grad is not None and loss.head.net[0].weight.grad is not None


def test_build_loss_errors_name_the_allowed_keys():
    with pytest.raises(ConfigError, match="unknown loss key 'infonse'.*allowed keys: mse, cos, infonce"):
        build_loss({"infonse": 0.1})
    with pytest.raises(ConfigError, match="tau"):
        build_loss({"cos": 1.0, "tau": 0})
    with pytest.raises(ConfigError, match="either mse/cos/infonce weights or lambda_ar"):
        build_loss({"cos": 1.0, "lambda_con": 0.1}, dim=D)
    with pytest.raises(ConfigError, match="at least one loss weight"):
        build_loss({"mse": 0.0})
    with pytest.raises(ConfigError, match="loss tau"):
        build_loss({"cos": 1.0, "tau": "warm"})
    with pytest.raises(ConfigError, match="dim=bank.dim"):
        build_loss({"lambda_ar": 1.0, "lambda_con": 0.1})


def test_regression_only_spec_needs_no_dim_and_has_no_head_or_queue():
    loss = build_loss({"mse": 1.0, "queue": 16})  # a queue is only kept when InfoNCE uses it
    assert loss.head is None and loss.queue is None
    total, parts = loss(torch.ones(2, D), torch.ones(2, D))
    assert total.item() == 0.0 and set(parts) == {"mse", "total"}
