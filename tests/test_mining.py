"""Curriculum grammar (valid, overlaps, gaps, bad ranges, round trip) and hard-negative mining against a
brute-force loop over the whole bank; the negative store answers by pair id whatever the order asked."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lvmkit.data import ArticleCappedBatchSampler
from lvmkit.errors import ConfigError
from lvmkit.train.mining import (
    NegativeStore,
    Schedule,
    Stage,
    describe_schedule,
    format_mining_stats,
    mine_negatives,
    parse_schedule,
)

# ------------------------------------------------------------------------------------------ grammar


def test_parse_the_issue_example():
    s = parse_schedule("0-5:none;6-10:8@0.82-0.92;11-30:16@0.84-0.96")
    assert s.stages == (Stage(0, 5), Stage(6, 10, 8, 0.82, 0.92), Stage(11, 30, 16, 0.84, 0.96))
    assert s.at(1) == Stage(0, 5) and not s.at(5).mines
    assert s.at(6).count == 8 and s.at(10).lo == 0.82
    assert s.at(30) == Stage(11, 30, 16, 0.84, 0.96)
    assert s.max_count == 16
    s.check_epochs(30)
    with pytest.raises(ConfigError, match="extend the last stage to 31"):
        s.check_epochs(31)
    with pytest.raises(ConfigError, match="epoch 31 is outside"):
        s.at(31)


def test_spaces_single_epochs_and_zero_count():
    s = parse_schedule(" 1-2 : none ; 3:4@-0.5--0.1 ; 4-6:0@0.1-0.2 ")
    assert s.stages == (Stage(1, 2), Stage(3, 3, 4, -0.5, -0.1), Stage(4, 6))
    assert str(s) == "1-2:none;3:4@-0.5--0.1;4-6:none"


@pytest.mark.parametrize("text", [None, "", "none", " NONE "])
def test_no_schedule_means_no_mining(text):
    s = parse_schedule(text)
    assert s.stages == () and s.max_count == 0 and not s.at(123).mines
    s.check_epochs(1000)
    assert "in-batch and memory-bank negatives only, every epoch" in s.describe()


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("0-5:none;5-10:8@0.8-0.9", "overlap (epoch 5 is in both)"),
        ("1-5:none;3-4:none", "overlap (epoch 3 is in both)"),
        ("0-5:none;7-10:8@0.8-0.9", "gap: epoch 6 between"),
        ("1-2:none;6-7:none", "gap: epochs 3-5 between"),
        ("2-5:none", "must start at epoch 0 or 1"),
        ("5-1:none", "the epoch range 5-1 is empty"),
        ("1-5:8@0.9-0.8", "window 0.9-0.8 is empty (LO >= HI)"),
        ("1-5:8@0.9-0.9", "window 0.9-0.9 is empty"),
        ("1-5:8@0.9-1.2", "cosines must lie in [-1, 1]"),
        ("1-5:8@-1.5-0.2", "cosines must lie in [-1, 1]"),
        ("1-5:-1@0.1-0.2", "count must be >= 0, got -1"),
        ("1-5:lots", "is not 'none', COUNT@LO-HI"),
        ("1-5", "is not FIRST-LAST:none"),
        ("1-5:none;", "empty stage"),
        ("a-b:none", "is not FIRST-LAST:none"),
    ],
)
def test_bad_schedules_name_the_problem(text, fragment):
    with pytest.raises(ConfigError) as e:
        parse_schedule(text)
    assert fragment in str(e.value)


def test_describe_prints_every_epoch():
    text = describe_schedule("0-2:none;3-4:8@0.82-0.92", epochs=5)
    lines = text.splitlines()
    assert lines[0] == "mining schedule 0-2:none;3-4:8@0.82-0.92"
    assert [ln.split(":")[0].split() for ln in lines[1:]] == [["epoch", str(e)] for e in range(1, 6)]
    assert "no mining" in lines[2] and "8 mined negatives per pair, cos(q, n) in [0.82, 0.92]" in lines[3]
    assert "not covered" in lines[5]


@st.composite
def schedules(draw):
    n = draw(st.integers(1, 6))
    first = draw(st.integers(0, 1))
    stages = []
    for _ in range(n):
        last = first + draw(st.integers(0, 20))
        count = draw(st.integers(0, 64))
        if count:
            lo = draw(st.floats(-1, 0.999, allow_nan=False))
            hi = draw(st.floats(lo, 1, allow_nan=False).filter(lambda h, lo=lo: h > lo))
            stages.append(Stage(first, last, count, lo, hi))
        else:
            stages.append(Stage(first, last))
        first = last + 1
    return Schedule(tuple(stages))


@settings(max_examples=100, deadline=None)
@given(schedules())
def test_str_then_parse_round_trips(s):
    assert parse_schedule(str(s)) == s
    lines = s.describe().splitlines()[1:]
    assert len(lines) == s.last_epoch - max(1, s.first_epoch) + 1


# ------------------------------------------------------------------------------------------- mining


def brute_force_mine(q, pos, art, bank, count, lo, hi, k):
    """The rules of the module docstring, one query at a time, over an exact ranking of the whole bank."""
    out, stats = [], dict(positive=0, same_article=0, near_dup=0, window=0)
    for i in range(len(q)):
        s = bank @ q[i]
        cand = np.argsort(-s, kind="stable")[:k]
        good, spare = [], []
        for n in cand:
            if n == pos[i]:
                stats["positive"] += 1
            elif art[n] == art[pos[i]]:
                stats["same_article"] += 1
            elif bank[pos[i]] @ bank[n] > 0.98 or s[n] > 0.98:
                stats["near_dup"] += 1
            elif not lo <= s[n] <= hi:
                stats["window"] += 1
                spare.append(n)
            else:
                good.append(n)
        row = good[:count] + spare[: max(0, count - len(good))]
        out.append(row + [-1] * (count - len(row)))
    return np.array(out), stats


def planted_bank(seed=0, n=600, dim=24, n_queries=40):
    """Random unit vectors plus, for each query, rows planted at chosen cosines (inside and outside the
    window, near-duplicates of the positive and of the query, and rows of the query's own article)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    art = np.repeat(np.arange(n // 10), 10)
    q = rng.standard_normal((n_queries, dim))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    pos = rng.choice(n, n_queries, replace=False)

    def at_cos(v, c):
        u = rng.standard_normal(dim)
        u -= (u @ v) * v
        u /= np.linalg.norm(u)
        return c * v + np.sqrt(1 - c * c) * u

    free = [r for r in range(n) if r not in set(pos)]
    rng.shuffle(free)
    it = iter(free)
    for i in range(n_queries):
        x[pos[i]] = at_cos(q[i], 0.93)  # the answer is close to the query, as after some training
        for c in rng.uniform(0.75, 0.995, size=5):
            x[next(it)] = at_cos(q[i], c)
        x[next(it)] = at_cos(x[pos[i]], 0.99)  # a paraphrase of the answer
        same = next(r for r in it if art[r] != art[pos[i]])
        x[same] = at_cos(q[i], 0.9)
        art[same] = art[pos[i]]  # ... moved into the positive's article
    return q.astype(np.float32), pos, art, x.astype(np.float32)


@pytest.mark.parametrize("count, lo, hi", [(3, 0.8, 0.95), (4, 0.84, 0.96), (2, -1.0, 1.0), (6, 0.97, 0.99)])
def test_mining_matches_brute_force(count, lo, hi):
    q, pos, art, bank = planted_bank()

    def search(queries, k):
        s = queries @ bank.T
        ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(s, ids, 1), ids

    ids, stats = mine_negatives(
        q, np.arange(len(q)), pos, art, search, lambda r: bank[r], count, lo, hi, block=7
    )
    want, want_stats = brute_force_mine(q, pos, art, bank, count, lo, hi, 4 * count)
    np.testing.assert_array_equal(ids, want)
    for rule, v in want_stats.items():
        assert stats[f"dropped_{rule}"] == v
    kept_mask = np.array([[n >= 0 and lo <= bank[n] @ q[i] <= hi for n in row] for i, row in enumerate(ids)])
    assert stats["kept"] == kept_mask.sum()
    assert stats["padded"] + stats["missing"] == ids.size - stats["kept"]
    assert stats["missing"] == (ids < 0).sum()
    if stats["kept"]:
        cos = np.array(
            [bank[n] @ q[i] for i, row in enumerate(ids) for n, m in zip(row, kept_mask[i], strict=True) if m]
        )
        assert stats["mean_cos_kept"] == pytest.approx(cos.mean(), abs=1e-5)
    assert "kept" in format_mining_stats(stats)
    if (lo, hi) == (0.84, 0.96):  # the planted rows exercise every rule
        assert all(stats[f"dropped_{rule}"] > 0 for rule in want_stats), stats
        assert stats["kept"] > 0 and stats["padded"] > 0
    assert not (ids == pos[:, None]).any()
    real = ids >= 0
    assert not (art[np.where(real, ids, 0)] == art[pos][:, None])[real].any()


def test_mining_validates_arguments():
    q, pos, art, bank = planted_bank(n_queries=2)
    with pytest.raises(ConfigError, match="count >= 1"):
        mine_negatives(q, [0, 1], pos, art, None, None, 0, 0.1, 0.2)
    with pytest.raises(ConfigError, match="lo <= hi|-1 <= lo < hi"):
        mine_negatives(q, [0, 1], pos, art, None, None, 2, 0.5, 0.2)


# -------------------------------------------------------------------------------------------- store


def test_store_lookup_follows_pair_ids_through_a_reshuffling_sampler():
    """Negatives are found by pair id: after every reshuffle each window gets the row mined for it."""
    rng = np.random.default_rng(0)
    pair_ids = np.sort(rng.choice(10_000, size=200, replace=False))  # not 0..P-1, not in batch order
    ids = np.stack([pair_ids * 10 + j for j in range(3)], axis=1)  # "negatives" that name their pair
    store = NegativeStore(pair_ids, ids, epoch=4)
    articles = rng.integers(0, 40, size=200)
    sampler = ArticleCappedBatchSampler(articles, batch_size=16, max_per_article=2, seed=3)
    orders = []
    for epoch in (1, 2, 3):
        sampler.set_epoch(epoch)
        order = []
        for idx in sampler:
            got = store.lookup(pair_ids[idx])
            np.testing.assert_array_equal(got // 10, np.repeat(pair_ids[idx][:, None], 3, axis=1))
            order += idx
        orders.append(order)
    assert orders[0] != orders[1]  # the sampler did reshuffle
    with pytest.raises(KeyError, match="no mined negatives"):
        store.lookup([pair_ids[0] + 1 if pair_ids[0] + 1 not in pair_ids else -5])
    back = NegativeStore.from_state(store.state_dict())
    np.testing.assert_array_equal(back.lookup(pair_ids[::-1]), ids[::-1])
    assert NegativeStore.empty().lookup([1, 2]).shape == (2, 0)
