"""Splits: determinism, disjointness, ratios, the split.json round trip and its refusals, leakage checks."""

import hashlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lvmkit.data.splits as splits_mod
from lvmkit.artifacts import read_json, write_json
from lvmkit.data import SPLIT_NAMES, Split, check_leakage, make_split
from lvmkit.errors import ArtifactError, ConfigError, ProvenanceError


def reference_assignment(article_ids, ratios, seed):
    """Independent re-implementation of the documented rule."""
    out = []
    for aid in article_ids:
        h = hashlib.blake2b(f"{seed}:{aid}".encode(), digest_size=8).digest()
        u = int.from_bytes(h, "big") / 2**64
        out.append("train" if u < ratios[0] else "val" if u < ratios[0] + ratios[1] else "test")
    return out


@pytest.fixture(scope="module")
def bank200(tmp_path_factory):
    from conftest import build_bank

    lengths = np.random.default_rng(1).integers(1, 6, size=200)
    return build_bank(tmp_path_factory.mktemp("b"), articles=lengths, dim=8, seed=3)


def test_assignment_follows_the_documented_hash(bank200):
    split = make_split(bank200, (0.7, 0.2, 0.1), seed=5)
    ids = [f"A{a:04d}" for a in range(200)]
    ref = reference_assignment(ids, (0.7, 0.2, 0.1), 5)
    for name in SPLIT_NAMES:
        assert split.article_ids(name) == sorted(i for i, r in zip(ids, ref, strict=True) if r == name)


def test_deterministic_and_seed_dependent(bank200):
    a, b = make_split(bank200, seed=0), make_split(bank200, seed=0)
    assert np.array_equal(a.assignment, b.assignment) and a.hash == b.hash
    assert make_split(bank200, seed=1).hash != a.hash


def test_disjoint_complete_and_rows_match_articles(bank200):
    split = make_split(bank200)
    arts = [set(split.articles(n).tolist()) for n in SPLIT_NAMES]
    assert not (arts[0] & arts[1]) and not (arts[0] & arts[2]) and not (arts[1] & arts[2])
    assert set().union(*arts) == set(range(bank200.n_articles))
    for name, a in zip(SPLIT_NAMES, arts, strict=True):
        rows = split.rows(name)
        assert set(bank200.article_codes[rows].tolist()) == a
        assert len(rows) == sum(bank200.article_starts[x + 1] - bank200.article_starts[x] for x in a)
    c = split.counts()
    assert sum(v["rows"] for v in c.values()) == len(bank200)
    assert sum(v["articles"] for v in c.values()) == 200


def test_ratios_are_approximately_met(make_bank, tmp_path):
    bank = make_bank(tmp_path, articles=[1] * 4000, dim=4)
    c = make_split(bank, (0.8, 0.1, 0.1), seed=2).counts()
    # binomial sd for n=4000, p=0.1 is ~19; allow 4 sd
    assert abs(c["train"]["articles"] - 3200) < 4 * 25
    assert abs(c["val"]["articles"] - 400) < 4 * 19
    assert abs(c["test"]["articles"] - 400) < 4 * 19


@pytest.mark.parametrize(
    "ratios", [(0.5, 0.5), (0.8, 0.1, 0.2), (-0.1, 0.6, 0.5), (1, float("nan"), 0), "abc"]
)
def test_bad_ratios_raise_config_error(bank200, ratios):
    with pytest.raises(ConfigError, match="ratios"):
        make_split(bank200, ratios)


def test_unknown_split_name(bank200):
    with pytest.raises(ConfigError, match="allowed: train, val, test"):
        make_split(bank200).rows("dev")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    w=st.tuples(*[st.integers(0, 10)] * 3).filter(lambda t: sum(t) > 0),
    seed=st.integers(0, 2**31),
)
def test_any_ratios_and_seed_give_disjoint_complete_splits(bank200, w, seed):
    ratios = tuple(x / sum(w) for x in w)
    split = make_split(bank200, ratios, seed)
    ids = [set(split.article_ids(n)) for n in SPLIT_NAMES]
    assert sum(len(s) for s in ids) == 200 and len(set().union(*ids)) == 200
    for name, r in zip(SPLIT_NAMES, ratios, strict=True):
        if r == 0:
            assert split.counts()[name]["articles"] == 0
    masks = np.stack([split.row_mask(n) for n in SPLIT_NAMES])
    assert (masks.sum(0) == 1).all()


def test_save_load_round_trip(bank200, tmp_path):
    split = make_split(bank200, (0.6, 0.2, 0.2), seed=9)
    f = split.save(tmp_path)
    data = read_json(f)
    assert data["bank_id"] == bank200.manifest.bank_id and data["seed"] == 9
    assert data["articles"]["val"] == sorted(data["articles"]["val"])
    back = Split.load(f, bank200)
    assert np.array_equal(back.assignment, split.assignment) and back.hash == split.hash
    assert back.ratios == split.ratios


def test_load_refuses_another_bank(bank200, make_bank, tmp_path):
    f = make_split(bank200).save(tmp_path / "s.json")
    other = make_bank(tmp_path, articles=[3] * 200, dim=8, seed=4)
    with pytest.raises(ProvenanceError, match="made for bank"):
        Split.load(f, other)


def test_load_refuses_unknown_articles(bank200, tmp_path):
    f = make_split(bank200).save(tmp_path)
    data = read_json(f)
    data["articles"]["test"].append("NOT-IN-BANK")
    from lvmkit.data.splits import _lists_hash

    data["sha256"] = _lists_hash(data["articles"])
    write_json(f, data)
    with pytest.raises(ProvenanceError, match="not in bank"):
        Split.load(f, bank200)


def test_load_detects_edited_lists(bank200, tmp_path):
    f = make_split(bank200).save(tmp_path)
    data = read_json(f)
    data["articles"]["train"].pop()
    write_json(f, data)
    with pytest.raises(ArtifactError, match="sha256"):
        Split.load(f, bank200)


# ------------------------------------------------------------------------------------------- leakage
def test_clean_random_bank_has_no_leakage(bank200):
    report = check_leakage(bank200, make_split(bank200))
    assert report.ok and report.shared_articles == 0
    assert report.exact_dups == {"val": 0, "test": 0} and report.near_dups == {"val": 0, "test": 0}
    assert "OK" in report.summary()


def test_planted_exact_and_near_duplicates_are_found(make_bank, tmp_path):
    base = make_bank(tmp_path, articles=[4] * 60, dim=16, seed=0)
    split = make_split(base, seed=0)
    train, test, val = split.rows("train"), split.rows("test"), split.rows("val")
    vecs = np.array(base.vectors)
    rng = np.random.default_rng(0)
    vecs[test[0]] = vecs[train[5]]  # exact copy
    noisy = vecs[train[9]] + 0.01 * rng.standard_normal(16).astype(np.float32)
    vecs[test[3]] = noisy / np.linalg.norm(noisy)  # near copy
    vecs[val[1]] = vecs[train[2]]
    bank = make_bank(tmp_path, articles=[4] * 60, dim=16, seed=0, vectors=vecs)
    split = make_split(bank, seed=0)

    report = check_leakage(bank, split, near_dup=0.98, max_dup_frac=0.0)
    assert report.exact_dups == {"val": 1, "test": 1}
    assert report.near_dups == {"val": 0, "test": 1}
    assert not report.ok
    found = {(e["split"], e["row"], e["train_row"], e["kind"]) for e in report.examples}
    assert found == {
        ("test", test[0], train[5], "exact"),
        ("test", test[3], train[9], "near"),
        ("val", val[1], train[2], "exact"),
    }
    # brute-force cosine of the near copy agrees with the reported one
    near = next(e for e in report.examples if e["kind"] == "near")
    assert near["cos"] == pytest.approx(float(vecs[test[3]] @ vecs[train[9]]), abs=1e-5)
    assert "PROBLEM" in report.summary() and "exact" in report.summary()
    assert check_leakage(bank, split, max_dup_frac=0.5).ok  # a tolerance can accept a few


def test_hash_collisions_are_confirmed_byte_by_byte(make_bank, tmp_path, monkeypatch):
    vecs = np.array(make_bank(tmp_path, articles=[2] * 50, dim=8).vectors)
    split = make_split(make_bank(tmp_path, articles=[2] * 50, dim=8), seed=0)
    train, test = split.rows("train"), split.rows("test")
    vecs[test[1]] = vecs[train[0]]
    bank = make_bank(tmp_path, articles=[2] * 50, dim=8, vectors=vecs)
    split = make_split(bank, seed=0)
    # every row hashes alike: only the byte comparison can tell duplicates apart
    monkeypatch.setattr(splits_mod, "_row_hashes", lambda v, rows, *a: np.zeros(len(rows), dtype=np.uint64))
    report = check_leakage(bank, split)
    assert report.exact_dups == {"val": 0, "test": 1}
    assert [(e["row"], e["train_row"]) for e in report.examples] == [(test[1], train[0])]


def test_leakage_sampling_is_reported(bank200):
    report = check_leakage(bank200, make_split(bank200), sample=5)
    assert report.checked_rows == {"val": 5, "test": 5}
    assert report.total_rows["test"] > 5 and "sampled" in report.summary()
