"""In-article hard negatives, for LVMs and two-tower towers: the selection against a brute-force list on a toy
bank, the losses against numpy and a hand-computed value, the config checks, a tiny run of each."""

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


# ------------------------------------------------------------------------------------- two-tower
def tower_task(make_bank, tmp_path, *extra, lengths=LENGTHS * 6):
    """A two-tower task on a toy bank (every article's pairs, ctx 3, shortest context 1)."""
    from lvmkit.tasks.twotower.task import TwoTowerTask
    from lvmkit.train import distributed as Dist
    from lvmkit.train.config import load_config
    from lvmkit.train.runs import RunPaths

    bank = make_bank(tmp_path, articles=lengths, dim=8, seed=3)
    cfg = load_config(
        None,
        [
            "task=twotower",
            f"bank={bank.path}",
            "data.ctx=3",
            "data.min_ctx=1",
            "data.batch_size=8",
            "split.ratios=[0.5, 0.25, 0.25]",
            "model.name=bigru_pool",
            "model.kwargs={hidden: 8, layers: 1, dropout: 0.0}",
            "twotower.pair_stride=1",
            "twotower.eval_stride=1",
            "twotower.memory=0",
            "twotower.eval_ks=[1, 5]",
            "twotower.compare_on=recall@5",
            "early_stopping.metric=val_recall@5",
            "optim.warmup_steps=1",
            *extra,
        ],
    )
    run = RunPaths(tmp_path / "run")
    run.root.mkdir()
    return bank, TwoTowerTask.from_config(cfg, run, Dist.DistInfo(), np.random.default_rng(0))


def test_tower_selection_matches_a_brute_force_list(make_bank, tmp_path):
    """The towers' in-article negatives are the brute-force list's chunks, through the document tower."""
    bank, task = tower_task(
        make_bank, tmp_path, "twotower.inarticle_offsets=[1, 2, 3, -1, -2]", "twotower.doc_tower=adapter"
    )
    with torch.no_grad():
        for p in task.doc.parameters():  # an adapter that is not the identity
            p.add_(0.3 * torch.randn_like(p))
    article_of_row = [a for a, n in enumerate(LENGTHS * 6) for _ in range(n)]
    idx = np.arange(len(task.train))
    w = task.make_batch(idx).windows
    with torch.no_grad():
        vectors, valid = task.article_negatives(w)
    n_real = w.mask.sum(dim=1).numpy()
    seen = 0
    for i, t in enumerate(w.target_ids.numpy()):
        want = brute_negatives(article_of_row, int(t), int(n_real[i]), OFFSETS)
        assert valid[i].tolist() == [r >= 0 for r in want]
        rows = [r for r in want if r >= 0]
        if rows:
            with torch.no_grad():
                encoded = task.doc(torch.from_numpy(bank.get(np.asarray(rows))))
            np.testing.assert_allclose(vectors[i][valid[i]].numpy(), encoded.numpy(), atol=1e-6)
            seen += len(rows)
    assert seen > 0 and not bool(valid.all())
    _, plain = tower_task(make_bank, tmp_path / "plain")
    assert plain.article_negatives(w) == (None, None)


def test_tower_loss_with_weight_is_the_hand_computed_value():
    """One query equal to its positive (cos 1), one in-article negative at cos c and weight w:
    loss = -log(e^(1/tau) / (e^(1/tau) + w e^(c/tau))) = log(1 + w e^((c - 1)/tau))."""
    from lvmkit.tasks.twotower.loss import twotower_logits, twotower_loss

    tau, w, c = 0.1, 0.3, 0.6
    q = torch.tensor([[1.0, 0.0]])
    neg = torch.tensor([[[c, math.sqrt(1 - c * c)]]])
    logits = twotower_logits(
        q,
        q,
        torch.tensor([0]),
        tau,
        inarticle=neg,
        inarticle_valid=torch.ones(1, 1, dtype=bool),
        inarticle_weight=w,
    )
    total, parts = twotower_loss(logits, tau, margin=0.5, inarticle=1, inarticle_weight=w)
    margin = max(0.0, 0.5 - (1 - c))  # on cosines: log(w) does not enter the margin
    assert float(total) == pytest.approx(math.log(1 + w * math.exp((c - 1) / tau)) + margin, rel=1e-6)
    assert parts["hardest_neg_cos"] == pytest.approx(c) and parts["inarticle_negatives"] == 1


@pytest.mark.parametrize("weight", [1.0, 0.2])
def test_tower_loss_with_in_article_negatives_matches_numpy(weight):
    """A batch where two queries share an article (masked in-batch) and the in-article slots hold a near
    duplicate of the positive (masked) and an invalid slot: numpy's loss over the same candidates."""
    from lvmkit.tasks.twotower.loss import twotower_logits, twotower_loss

    rng = np.random.default_rng(1)
    B, K, d, tau = 4, 3, 8, 0.07
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    q, pos, rn = (
        unit(rng.normal(size=(B, d))),
        unit(rng.normal(size=(B, d))),
        unit(rng.normal(size=(B, K, d))),
    )
    rn[1, 0] = pos[1]  # a copy of query 1's positive: masked
    art = np.array([0, 0, 1, 2])
    valid = np.ones((B, K), dtype=bool)
    valid[3, 2] = False
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    logits = twotower_logits(
        f(q), f(pos), torch.tensor(art), tau, inarticle=f(rn), inarticle_valid=torch.tensor(valid),
        inarticle_weight=weight,
    )  # fmt: skip
    total, parts = twotower_loss(logits, tau, inarticle=K, inarticle_weight=weight)
    losses, n_ia = [], []
    for i in range(B):
        row = [q[i] @ pos[i] / tau]
        row += [
            q[i] @ pos[j] / tau for j in range(B) if j != i and art[j] != art[i] and pos[i] @ pos[j] < 0.98
        ]
        ia = [
            q[i] @ rn[i, k] / tau + math.log(weight)
            for k in range(K)
            if valid[i, k] and pos[i] @ rn[i, k] < 0.98
        ]
        row, n_ia = row + ia, n_ia + [len(ia)]
        row = np.array(row)
        losses.append(np.log(np.exp(row - row.max()).sum()) + row.max() - row[0])
    assert float(total) == pytest.approx(float(np.mean(losses)), rel=1e-5)
    assert parts["inarticle_negatives"] == pytest.approx(np.mean(n_ia))
    assert np.mean(n_ia) < K  # the planted copy and the invalid slot are not counted


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({"inarticle_offsets": [1, 0]}, "twotower.inarticle_offsets: Value error, in-article negative offsets must be distinct and non-zero"),
        ({"inarticle_offsets": [1, -1, 1]}, "twotower.inarticle_offsets: Value error, in-article negative offsets must be distinct"),
        ({"inarticle_offsets": [1.5]}, "twotower.inarticle_offsets.0: Input should be a valid integer"),
        ({"inarticle_weight": 0}, "twotower.inarticle_weight: Input should be greater than 0"),
        ({"inarticle_weight": "big"}, "twotower.inarticle_weight: Input should be a valid number"),
    ],
)  # fmt: skip
def test_tower_config_errors_name_the_field(raw, fragment):
    from lvmkit.train.config import config_from_dict

    with pytest.raises(ConfigError) as e:
        config_from_dict({"task": "twotower", "bank": "b", "twotower": raw})
    assert fragment in str(e.value)


def test_a_tower_run_trains_with_in_article_negatives(make_bank, tmp_path):
    from lvmkit.artifacts import read_jsonl
    from lvmkit.train.config import load_config
    from lvmkit.train.loop import train

    bank = make_bank(tmp_path, articles=[10] * 20, dim=8, seed=2)
    cfg = load_config(
        None,
        [
            "task=twotower",
            f"bank={bank.path}",
            "data.ctx=3",
            "data.batch_size=16",
            "model.name=bigru_pool",
            "model.kwargs={hidden: 8, layers: 1}",
            "twotower.pair_stride=1",
            "twotower.eval_stride=1",
            "twotower.eval_ks=[1, 5]",
            "twotower.compare_on=recall@5",
            "twotower.inarticle_offsets=[1, 2, -1]",
            "twotower.inarticle_weight=0.5",
            "early_stopping.metric=val_recall@5",
            "optim.epochs=1",
            "final_eval=false",
        ],
    )
    assert train(cfg, tmp_path / "run")["state"] == "finished"
    epoch = [r for r in read_jsonl(tmp_path / "run" / "history.jsonl") if r.get("kind") == "epoch"][-1]
    assert 0 < epoch["train_inarticle_negatives"] <= 3 and np.isfinite(epoch["train_loss"])
