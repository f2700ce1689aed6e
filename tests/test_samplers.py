"""ArticleCappedBatchSampler: the cap, exact coverage, determinism, epochs, and DDP rank sharding."""

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lvmkit.data import ArticleCappedBatchSampler
from lvmkit.errors import ConfigError


def articles_of(sizes):
    """article code of each window: sizes[a] windows of article a, shuffled so windows are not grouped."""
    art = np.repeat(np.arange(len(sizes)), sizes)
    return np.random.default_rng(0).permutation(art)


def max_per_article(batch, art):
    return max(Counter(art[batch].tolist()).values())


def test_cap_and_exact_coverage_on_balanced_articles():
    art = articles_of([10] * 50)  # 500 windows, 50 articles
    s = ArticleCappedBatchSampler(art, batch_size=16, max_per_article=2, seed=0)
    batches = list(s)
    flat = [w for b in batches for w in b]
    assert sorted(flat) == list(range(500))  # every window exactly once
    assert all(max_per_article(b, art) <= 2 for b in batches)
    full = [b for b in batches if len(b) == 16]
    assert len(full) >= 500 // 16 - 1  # with many articles nearly everything fits in full batches
    assert s.stats["dropped"] == 0 and len(s) == len(batches)


def test_long_article_is_spread_not_left_in_the_tail():
    # one article holds 30% of the windows; with cap 2 of 16 it can fill at most 1/8 of every batch
    art = articles_of([300] + [7] * 100)
    s = ArticleCappedBatchSampler(art, batch_size=16, max_per_article=2, seed=1, drop_last=True)
    batches = list(s)
    assert all(len(b) == 16 and max_per_article(b, art) <= 2 for b in batches)
    used = Counter(art[np.concatenate(batches)].tolist())
    assert used[0] == 2 * len(batches)  # the long article appears in every batch (it was spread out)
    assert s.stats["dropped"] == len(art) - 16 * len(batches)
    assert s.stats["tail_windows"] == s.stats["dropped"]


def test_tail_batches_respect_the_cap_when_not_dropped():
    art = articles_of([40, 3, 3])  # cannot make full batches of 8 under cap 2 for long
    s = ArticleCappedBatchSampler(art, batch_size=8, max_per_article=2, seed=0, drop_last=False)
    batches = list(s)
    assert sorted(w for b in batches for w in b) == list(range(len(art)))
    assert all(max_per_article(b, art) <= 2 and len(b) <= 8 for b in batches)


def test_deterministic_per_seed_and_epoch():
    art = articles_of([5] * 40)

    def run(seed, epoch):
        s = ArticleCappedBatchSampler(art, batch_size=8, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    assert run(0, 0) == run(0, 0)
    assert run(0, 0) != run(0, 1)
    assert run(0, 0) != run(1, 0)


@settings(max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=40),
    batch_size=st.integers(1, 12),
    cap=st.integers(1, 4),
    world=st.integers(1, 4),
    drop_last=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_property_cap_coverage_and_rank_disjointness(sizes, batch_size, cap, world, drop_last, seed):
    art = articles_of(sizes)
    per_rank = [
        list(
            ArticleCappedBatchSampler(
                art, batch_size, cap, seed=seed, drop_last=drop_last, rank=r, world_size=world
            )
        )
        for r in range(world)
    ]
    assert len({len(b) for b in per_rank}) == 1  # same number of batches on every rank
    seen = [w for batches in per_rank for b in batches for w in b]
    assert len(seen) == len(set(seen))  # disjoint across ranks and batches
    for batches in per_rank:
        for b in batches:
            assert 1 <= len(b) <= batch_size and max_per_article(b, art) <= cap
            if drop_last:
                assert len(b) == batch_size
    stats = ArticleCappedBatchSampler(
        art, batch_size, cap, seed=seed, drop_last=drop_last, world_size=world
    ).stats
    assert stats["dropped"] == len(art) - len(seen)
    if world == 1 and not drop_last:
        assert stats["dropped"] == 0 and sorted(seen) == list(range(len(art)))
    if world == 1 and drop_last:
        # the tail is only what cannot form one more full capped batch
        left = Counter(art[sorted(set(range(len(art))) - set(seen))].tolist())
        assert sum(min(cap, c) for c in left.values()) < batch_size


@pytest.mark.parametrize(
    "kw",
    [
        {"batch_size": 0},
        {"max_per_article": 0},
        {"rank": 2, "world_size": 2},
        {"rank": -1},
        {"world_size": 0},
    ],
)
def test_bad_arguments(kw):
    args = {"batch_size": 4} | kw
    with pytest.raises(ConfigError):
        ArticleCappedBatchSampler(np.zeros(10, dtype=int), **args)
