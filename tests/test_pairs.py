"""Two-tower pairs: dedup against brute force, train-only, caps, target_pairs, save/load provenance."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lvmkit.data import PairSet, make_pairs, make_split, rolling_dedup
from lvmkit.errors import ArtifactError, ConfigError, ProvenanceError

LENGTHS = [30, 3, 18, 45, 7, 25, 12, 60, 9, 21] * 4


def brute_force_dedup(vectors, threshold, window):
    kept = []
    for i, v in enumerate(vectors):
        u = v / np.linalg.norm(v)
        recent = kept[-window:]
        if any(float(u @ (vectors[j] / np.linalg.norm(vectors[j]))) > threshold for j in recent):
            continue
        kept.append(i)
    return kept


def clustered_vectors(n, dim, n_clusters, noise, seed):
    """Vectors that often sit within cos 0.99 of each other (few cluster centres plus small noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim))
    x = centres[rng.integers(0, n_clusters, n)] + noise * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 150),
    window=st.integers(1, 40),
    block=st.integers(1, 64),
    clusters=st.integers(1, 12),
    seed=st.integers(0, 100),
)
def test_rolling_dedup_matches_brute_force(n, window, block, clusters, seed):
    x = clustered_vectors(n, 8, clusters, 0.05, seed)
    keep = rolling_dedup(x, 0.99, window, block=block)
    assert np.flatnonzero(keep).tolist() == brute_force_dedup(x, 0.99, window)


def test_rolling_dedup_reads_rows_in_order():
    x = clustered_vectors(60, 8, 5, 0.05, 1)
    rows = np.arange(0, 60, 2)
    keep = rolling_dedup(x, 0.99, 10, rows=rows, block=7)
    assert np.flatnonzero(keep).tolist() == brute_force_dedup(x[rows], 0.99, 10)


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    from conftest import build_bank

    return build_bank(tmp_path_factory.mktemp("p"), articles=LENGTHS, dim=8, seed=0)


@pytest.fixture(scope="module")
def split(bank):
    return make_split(bank, (0.6, 0.2, 0.2), seed=1)


def brute_force_candidates(bank, articles, first, stride):
    out = []
    for a in articles:
        s, e = bank.article_starts[a], bank.article_starts[a + 1]
        out += list(range(s + first, e, stride))
    return out


def test_pairs_are_train_only_and_match_the_window_rule(bank, split):
    ps = make_pairs(bank, split, ctx=5, stride=3, max_per_article=None, dedup_cos=None)
    ref = brute_force_candidates(bank, split.articles("train"), 5, 3)
    assert ps.targets.tolist() == ref
    assert set(ps.table.column("article").to_numpy().tolist()) <= set(split.articles("train").tolist())
    assert ps.counts["candidates"] == ps.counts["kept"] == len(ref)
    val = make_pairs(bank, split, ctx=5, stride=3, max_per_article=None, dedup_cos=None, split_name="val")
    assert set(val.table.column("article").to_numpy().tolist()) <= set(split.articles("val").tolist())
    assert not set(val.targets.tolist()) & set(ps.targets.tolist())


def test_columns_describe_the_window_and_windows_view_agrees(bank, split):
    ps = make_pairs(bank, split, ctx=6, stride=2, min_ctx=2, max_per_article=None, dedup_cos=None)
    t = ps.table.to_pydict()
    assert t["pair_id"] == list(range(len(ps)))
    for target, start, ctx, art, aid in zip(
        t["target"], t["context_start"], t["ctx"], t["article"], t["article_id"], strict=True
    ):
        assert ctx == target - start and 2 <= ctx <= 6
        assert (
            bank.article_codes[start] == bank.article_codes[target] == art and bank.article_ids[target] == aid
        )
        assert start == max(target - 6, bank.article_starts[art])
    ws = ps.windows()
    assert ws.targets.tolist() == t["target"] and ws.ctx == 6 and ws.min_ctx == 2 and ws.pad
    rows = ws.context_rows(np.arange(len(ws)))
    assert ((rows >= 0).sum(1) == np.array(t["ctx"])).all()
    assert (rows.max(1) == np.array(t["target"]) - 1).all()


def test_per_article_cap(bank, split):
    ps = make_pairs(bank, split, ctx=2, stride=1, max_per_article=4, dedup_cos=None, seed=3)
    per = np.bincount(ps.table.column("article").to_numpy(), minlength=bank.n_articles)
    cand_rows = brute_force_candidates(bank, split.articles("train"), 2, 1)
    cand = np.bincount(bank.article_codes[cand_rows], minlength=bank.n_articles)
    assert per.max() <= 4 and (per == np.minimum(cand, 4)).all()
    assert set(ps.targets.tolist()) <= set(cand_rows)
    assert ps.counts["capped_articles"] == int((cand > 4).sum())
    assert ps.counts["dropped_by_cap"] == int(np.maximum(cand - 4, 0).sum())
    again = make_pairs(bank, split, ctx=2, stride=1, max_per_article=4, dedup_cos=None, seed=3)
    assert again.targets.tolist() == ps.targets.tolist()  # seeded


def test_dedup_in_make_pairs_matches_brute_force(make_bank, tmp_path):
    lengths = [20] * 12
    vecs = clustered_vectors(sum(lengths), 8, 6, 0.04, 0)
    bank = make_bank(tmp_path, articles=lengths, vectors=vecs)
    split = make_split(bank, (1.0, 0.0, 0.0))
    ps = make_pairs(bank, split, ctx=3, stride=2, max_per_article=None, dedup_cos=0.99, dedup_window=15)
    cand = brute_force_candidates(bank, range(12), 3, 2)
    kept = [cand[i] for i in brute_force_dedup(vecs[cand], 0.99, 15)]
    assert 0 < len(kept) < len(cand)  # the test exercises both outcomes
    assert ps.targets.tolist() == kept
    assert ps.counts["dropped_dup"] == len(cand) - len(kept)


def test_target_pairs_chooses_stride_and_reports_actual(bank, split):
    first = 10
    ps = make_pairs(bank, split, ctx=first, stride=1, max_per_article=None, dedup_cos=None, target_pairs=50)
    stride = ps.manifest["chosen"]["stride"]
    arts = split.articles("train")
    assert len(brute_force_candidates(bank, arts, first, stride)) >= 50
    assert len(brute_force_candidates(bank, arts, first, stride + 1)) < 50  # the largest such stride
    assert len(ps) == ps.counts["kept"] == 50 and ps.counts["target_pairs"] == 50
    # unreachable with the cap: the cap is raised as little as needed
    total = len(brute_force_candidates(bank, arts, first, 1))
    ps2 = make_pairs(bank, split, ctx=first, max_per_article=1, dedup_cos=None, target_pairs=total - 5)
    cap = ps2.manifest["chosen"]["max_per_article"]
    assert ps2.manifest["chosen"]["stride"] == 1 and cap > 1 and len(ps2) == total - 5
    # more than exists: everything is kept and the shortfall is visible
    ps3 = make_pairs(bank, split, ctx=first, dedup_cos=None, target_pairs=10 * total)
    assert len(ps3) == total and ps3.counts["target_pairs"] == 10 * total


def test_save_load_round_trip_and_refusals(bank, split, make_bank, tmp_path):
    ps = make_pairs(bank, split, ctx=4, stride=2, max_per_article=5)
    d = ps.save(tmp_path / "pairs")
    assert sorted(p.name for p in d.iterdir()) == ["manifest.json", "pairs.parquet"]
    back = PairSet.load(d, bank, split=split)
    assert back.table.equals(ps.table) and back.manifest == ps.manifest
    other = make_bank(tmp_path, articles=LENGTHS, dim=8, seed=7)
    with pytest.raises(ProvenanceError, match="made from bank"):
        PairSet.load(d, other)
    with pytest.raises(ProvenanceError, match="split"):
        PairSet.load(d, bank, split=make_split(bank, seed=99))
    (d / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="manifest"):
        PairSet.load(d, bank)


@pytest.mark.parametrize(
    "kw",
    [
        {"stride": 0},
        {"max_per_article": 0},
        {"dedup_cos": 1.5},
        {"dedup_window": 0},
        {"target_pairs": 0},
        {"split_name": "dev"},
    ],
)
def test_bad_arguments(bank, split, kw):
    with pytest.raises(ConfigError):
        make_pairs(bank, split, ctx=3, **kw)
