"""Windows: against a brute-force construction in plain Python, and batches against direct bank indexing."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lvmkit.data import WindowDataset, WindowSet, make_split, make_windows
from lvmkit.errors import ConfigError, ProvenanceError

LENGTHS = [1, 2, 7, 3, 12, 5, 9, 4, 1, 6]


def brute_force_windows(lengths, articles, ctx, stride, min_ctx, pad):
    """[(article, target_row, context_rows with -1 padding)] built chunk by chunk."""
    need = min_ctx if (pad and min_ctx is not None) else ctx
    out, row0 = [], 0
    starts = {}
    for a, n in enumerate(lengths):
        starts[a] = row0
        row0 += n
    for a in sorted(articles):
        pos = need
        while pos < lengths[a]:
            target = starts[a] + pos
            context = [target - ctx + i if target - ctx + i >= starts[a] else -1 for i in range(ctx)]
            out.append((a, target, context))
            pos += stride
    return out


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    from conftest import build_bank

    return build_bank(tmp_path_factory.mktemp("w"), articles=LENGTHS, dim=6, seed=1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ctx=st.integers(1, 8),
    stride=st.integers(1, 4),
    short=st.integers(0, 7),
    pad=st.booleans(),
    use_split=st.booleans(),
)
def test_windows_match_brute_force(bank, ctx, stride, short, pad, use_split):
    min_ctx = max(1, ctx - short)
    split = make_split(bank, (0.5, 0.25, 0.25), seed=3) if use_split else None
    articles = split.articles("train").tolist() if use_split else list(range(len(LENGTHS)))
    ws = make_windows(bank, split, "train", ctx=ctx, stride=stride, min_ctx=min_ctx, pad=pad)
    ref = brute_force_windows(LENGTHS, articles, ctx, stride, min_ctx, pad)
    assert len(ws) == len(ref)
    if not ref:
        return
    idx = np.arange(len(ws))
    assert ws.targets.tolist() == [t for _, t, _ in ref]
    assert ws.article_of(idx).tolist() == [a for a, _, _ in ref]
    rows = ws.context_rows(idx)
    assert rows.dtype == np.int64 and rows.shape == (len(ref), ctx)
    assert rows.tolist() == [c for _, _, c in ref]
    # never crossing articles, and at least min_ctx real rows (ctx without padding)
    codes = bank.article_codes
    real = rows >= 0
    assert (codes[rows[real]] == np.repeat(codes[ws.targets], real.sum(1))).all()
    assert real.sum(1).min() >= (min_ctx if pad else ctx)
    assert (ws.n_real(idx) == real.sum(1)).all()


def test_batch_equals_direct_bank_indexing(bank):
    ws = make_windows(bank, None, "all", ctx=4, stride=1, min_ctx=1)
    idx = np.array([5, 0, 17, 3, 3])  # unordered, repeated
    b = ws.batch(idx)
    vecs = np.asarray(bank.vectors)
    rows = ws.context_rows(idx)
    assert b.ctx.dtype == torch.float32 and b.ctx.shape == (5, 4, 6)
    assert b.mask.dtype == torch.bool and b.target_ids.dtype == torch.int64 and b.article.dtype == torch.int64
    for i in range(len(idx)):
        for t in range(4):
            if rows[i, t] >= 0:
                assert b.mask[i, t] and np.array_equal(b.ctx[i, t].numpy(), vecs[rows[i, t]])
            else:
                assert not b.mask[i, t] and (b.ctx[i, t] == 0).all()
        tid = ws.targets[idx[i]]
        assert b.target_ids[i] == tid and np.array_equal(b.target[i].numpy(), vecs[tid])
        assert b.article[i] == bank.article_codes[tid]
    assert len(b) == 5 and b.to("cpu").ctx.shape == b.ctx.shape


def test_float16_bank_batches_are_float32(make_bank, tmp_path):
    bank = make_bank(tmp_path, articles=[6, 6], dim=8, dtype=np.float16)
    ws = make_windows(bank, None, "all", ctx=3)
    b = ws.batch([0, 4])
    assert b.ctx.dtype == torch.float32
    assert np.array_equal(b.target.numpy(), np.asarray(bank.vectors[ws.targets[[0, 4]]], dtype=np.float32))


def test_window_set_stores_one_int64_per_window(bank):
    ws = make_windows(bank, None, "all", ctx=2)
    assert ws.nbytes == 8 * len(ws) and ws.targets.dtype == np.int64


def test_dataset_with_dataloader_and_subset(bank):
    ws = make_windows(bank, None, "all", ctx=3, min_ctx=1)
    loader = torch.utils.data.DataLoader(WindowDataset(ws), sampler=[[0, 1, 2], [3, 4]], batch_size=None)
    got = [b.target_ids.tolist() for b in loader]
    assert got == [ws.targets[[0, 1, 2]].tolist(), ws.targets[[3, 4]].tolist()]
    sub = ws.subset([2, 4])
    assert sub.targets.tolist() == ws.targets[[2, 4]].tolist() and sub.ctx == 3


def test_sample_is_the_seeded_sorted_choice_and_keeps_small_sets_whole(bank):
    ws = make_windows(bank, None, "all", ctx=2, min_ctx=1)
    assert ws.sample(None, 0) is ws and ws.sample(len(ws), 0) is ws
    assert ws.sample_index(None, 3).tolist() == list(range(len(ws)))
    for seed in (0, 1, 7):
        expected = sorted(np.random.default_rng(seed).choice(len(ws), size=5, replace=False).tolist())
        assert ws.sample_index(5, seed).tolist() == expected
        assert ws.sample(5, seed).targets.tolist() == ws.targets[expected].tolist()


def test_constructor_refuses_windows_without_enough_context(bank):
    with pytest.raises(ConfigError, match="only 0 earlier chunks"):
        WindowSet(bank, np.array([0]), ctx=2, min_ctx=1)
    with pytest.raises(ConfigError, match="only 1 earlier chunks"):
        WindowSet(bank, np.array([2]), ctx=3, pad=False)  # article 1 is rows 1..2
    with pytest.raises(ConfigError, match="bank rows"):
        WindowSet(bank, np.array([len(bank)]), ctx=1)


@pytest.mark.parametrize(
    "kw", [{"ctx": 0}, {"ctx": 3, "min_ctx": 4}, {"ctx": 3, "min_ctx": 0}, {"ctx": 3, "stride": 0}]
)
def test_bad_arguments(bank, kw):
    with pytest.raises(ConfigError):
        make_windows(bank, None, "all", **kw)


def test_split_from_another_bank_is_refused(bank, make_bank, tmp_path):
    other = make_bank(tmp_path, articles=LENGTHS, dim=6, seed=2)
    with pytest.raises(ProvenanceError):
        make_windows(bank, make_split(other), "train", ctx=2)
