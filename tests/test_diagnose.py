"""Diagnostics on constructed banks, where the right answer is known or computed by brute force in numpy:
anisotropic banks warn, planted duplicates are counted, constant and copy-last predictors are flagged, the
preflight finds planted leakage and hashes its inputs, and the CLI exits 1 on a failed finding."""

from __future__ import annotations

import hashlib
import itertools
import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from lvmkit.cli.main import app
from lvmkit.data.pairs import make_pairs
from lvmkit.data.splits import make_split
from lvmkit.data.windows import make_windows
from lvmkit.diagnose import (
    diagnose_bank,
    diagnose_model,
    diagnose_target,
    judge,
    preflight,
    same_article_share,
)
from lvmkit.diagnose.bank import nearest_other

runner = CliRunner()


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def rotation_vectors(n_articles: int, length: int, dim: int, seed: int = 0) -> np.ndarray:
    """Articles where chunk t+1 = normalise(R chunk t + small noise): predictable, and unlike copy-last."""
    rng = np.random.default_rng(seed)
    rot, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    rows = []
    for _ in range(n_articles):
        x = unit(rng.standard_normal(dim))
        for _ in range(length):
            rows.append(x)
            x = unit(rot @ x + 0.1 * rng.standard_normal(dim) / np.sqrt(dim))
    return np.asarray(rows, dtype=np.float32)


# ------------------------------------------------------------------------------------------ findings
def test_judge_statuses_and_threshold_text():
    kw = dict(warn_below=0.1, fail_below=0.0, ok="fine", warn="low", fail="broken")
    assert judge("m", 0.5, **kw).status == "pass"
    assert judge("m", 0.05, **kw).status == "warn" and judge("m", 0.05, **kw).message == "low"
    assert judge("m", -0.2, **kw).status == "fail" and judge("m", -0.2, **kw).message == "broken"
    assert judge("m", float("nan"), **kw).status == "fail"
    assert judge("m", 0.5, **kw).threshold == ">= 0.1 (fail < 0)"
    assert judge("n", 3, fail_above=0).status == "fail" and judge("n", 0, fail_above=0).status == "pass"
    assert judge("b", 0.1, warn_above=0.1).status == "pass"  # bounds are inclusive


# ------------------------------------------------------------------------------------------ bank
def test_isotropic_bank_passes_and_stats_match_numpy(make_bank, tmp_path):
    lengths = [1, 3, 8, 12, 2, 6, 9, 4]
    bank = make_bank(tmp_path, articles=lengths, dim=32, seed=1)
    d = diagnose_bank(bank, sample=10_000, dup_sample=10_000, ctx=5)
    assert d.ok and d.get("mean_pairwise_cos").status == "pass"
    v = unit(bank.vectors)
    brute = np.mean([v[i] @ v[j] for i, j in itertools.permutations(range(len(v)), 2)])
    assert d.get("mean_pairwise_cos").value == pytest.approx(brute, abs=1e-5)
    stats = d.stats["chunks_per_article"]
    assert stats["median"] == np.median(lengths) and stats["max"] == 12 and stats["single_chunk"] == 1
    assert d.get("short_articles@ctx5").value == pytest.approx(np.mean(np.array(lengths) < 6))


def test_anisotropic_bank_warns_and_centering_removes_it(make_bank, tmp_path):
    rng = np.random.default_rng(0)
    common = unit(rng.standard_normal(32))
    vecs = unit(rng.standard_normal((200, 32)) / np.sqrt(32) + 0.6 * common).astype(np.float32)
    bank = make_bank(tmp_path, articles=[10] * 20, vectors=vecs)
    d = diagnose_bank(bank, sample=200)
    f = d.get("mean_pairwise_cos")
    assert f.status == "warn" and f.value > 0.1 and "whiten" in f.message
    gram = vecs.astype(np.float64) @ vecs.T.astype(np.float64)
    assert f.value == pytest.approx((gram.sum() - np.trace(gram)) / (200 * 199), abs=1e-5)
    assert abs(d.stats["anisotropy"]["mean_cos_centred"]) < 0.02
    assert d.ok  # a warning, not a failure


def test_planted_duplicates_are_counted(make_bank, tmp_path):
    rng = np.random.default_rng(2)
    vecs = unit(rng.standard_normal((200, 32)))
    for i in range(5):  # exact copies: rows 100+i == rows i
        vecs[100 + i] = vecs[i]
    for i in range(10, 14):  # near copies at cos ~0.995: in (0.98, 0.999)
        noise = unit(rng.standard_normal(32))
        noise -= (noise @ vecs[i]) * vecs[i]
        vecs[100 + i] = unit(vecs[i] + 0.1 * unit(noise))
    bank = make_bank(tmp_path, articles=[20] * 10, vectors=vecs.astype(np.float32))
    d = diagnose_bank(bank, dup_sample=1000)
    v = unit(bank.vectors)
    gram = v @ v.T
    np.fill_diagonal(gram, -np.inf)
    best = gram.max(axis=1)
    assert d.get("dup_rate@0.999").value == pytest.approx(np.mean(best > 0.999)) == 10 / 200
    assert d.get("dup_rate@0.98").value == pytest.approx(np.mean(best > 0.98)) == 18 / 200
    assert d.get("dup_rate@0.999").status == "warn" and d.get("dup_rate@0.98").status == "warn"
    # the block-wise scan agrees with the full Gram matrix, whatever the block size
    rows = np.arange(0, 200, 3)
    cos, other = nearest_other(bank.vectors, rows, block=7)
    np.testing.assert_allclose(cos, best[rows], atol=1e-5)
    np.testing.assert_allclose(gram[rows, other], best[rows], atol=1e-5)


# ------------------------------------------------------------------------------------------ model
@pytest.fixture
def rot_bank(make_bank, tmp_path):
    return make_bank(tmp_path, articles=[10] * 40, vectors=rotation_vectors(40, 10, 16), seed=0)


def test_constant_predictor_is_flagged(rot_bank):
    windows = make_windows(rot_bank, None, "all", ctx=3)
    const = np.ones(16, dtype=np.float32) / 4.0
    d = diagnose_model(lambda b: np.tile(const, (len(b), 1)), windows, rot_bank)
    f = d.get("prediction_variance")
    assert f.status == "fail" and f.value == pytest.approx(0.0, abs=1e-9) and not d.ok


def test_copy_last_is_flagged_as_collapsed(rot_bank):
    d = diagnose_target("baseline:copy_last", rot_bank, split="train", ctx=3, max_queries=None)
    f = d.get("collapse_margin")
    assert f.status == "fail" and f.details["cos_last"] == pytest.approx(1.0, abs=1e-6)
    # independent: the windows are every train target with 3 earlier chunks in its article
    split = make_split(rot_bank)
    rows = np.array([r for r in split.rows("train") if rot_bank.chunk_index[r] >= 3])
    v = unit(rot_bank.vectors)
    expected = np.mean(np.sum(v[rows] * v[rows - 1], axis=1)) - 1.0
    assert f.value == pytest.approx(expected, abs=1e-5)
    assert d.get("separation_margin").status == "warn"  # the last context chunk is itself a top neighbour


def test_good_predictor_passes_and_separation_matches_brute_force(rot_bank):
    windows = make_windows(rot_bank, None, "all", ctx=3)
    noise = np.random.default_rng(5).standard_normal((len(rot_bank), 16)).astype(np.float32) * 0.05

    def near_truth(batch):
        return batch.target.numpy() + noise[batch.target_ids.numpy()]

    d = diagnose_model(near_truth, windows, rot_bank)
    for name in ("collapse_margin", "prediction_variance", "separation_margin"):
        assert d.get(name).status == "pass", d.get(name)
    v = unit(rot_bank.vectors)
    margins = []
    for t in windows.targets:
        q = unit(v[t] + noise[t])
        sims = v @ q
        others = np.argsort(-np.delete(sims, t))[:16]  # top 16 neighbours, the positive removed
        margins.append(sims[t] - np.delete(sims, t)[others].mean())
    assert d.get("separation_margin").value == pytest.approx(np.mean(margins), abs=1e-4)


def test_same_article_share_against_counting():
    art = np.array([0, 0, 1, 2, 3, 3, 3, 4])
    batches = [[0, 1, 2, 3], [4, 5, 6, 7]]
    # batch 1: one same-article ordered pair twice (0,1),(1,0) of 12; batch 2: 3 windows of article 3 -> 6 of 12
    brute = sum(art[i] == art[j] for b in batches for i, j in itertools.permutations(b, 2)) / 24
    s = same_article_share(batches, art)
    assert s["share"] == pytest.approx(brute) == pytest.approx(8 / 24)
    assert s["worst_batch"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------ data
def write_config(tmp_path, bank, **data):
    cfg = {"bank": str(bank.path), "data": {"ctx": 3, "batch_size": 16, **data}, "optim": {"epochs": 3}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_preflight_config_counts_and_hashes(make_bank, tmp_path):
    lengths = [int(x) for x in np.random.default_rng(0).integers(2, 12, size=60)]
    bank = make_bank(tmp_path, articles=lengths, dim=16, seed=0)
    pf = preflight(write_config(tmp_path, bank))
    d = pf.diagnosis
    split = make_split(bank)
    for name in ("train", "val", "test"):
        expected = sum(max(0, lengths[a] - 3) for a in split.articles(name))
        assert d.stats["splits"][name]["windows"] == expected
    assert d.get("shared_articles").status == "pass" and d.get("leak_exact_test").value == 0
    assert d.stats["batch_shape"]["ctx"] == [16, 3, 16]
    files = pf.manifest["files"]
    assert set(files) == {"config", "bank/manifest.json", "bank/chunks.parquet", "bank/vectors.npy"}
    for entry in files.values():
        with open(entry["path"], "rb") as fh:
            assert entry["sha256"] == hashlib.sha256(fh.read()).hexdigest()
    assert pf.manifest["split_sha256"] == split.hash
    # a run directory: its config.yaml, and the split.json saved beside it is the one checked and hashed
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(write_config(tmp_path, bank).read_text())
    other = make_split(bank, seed=5)
    other.save(run)
    pf = preflight(run)
    assert pf.manifest["split_sha256"] == other.hash and "split.json" in pf.manifest["files"]


def test_preflight_finds_planted_leakage_and_cli_exits_1(make_bank, tmp_path):
    vecs = rotation_vectors(60, 8, 16, seed=3)
    bank0 = make_bank(tmp_path, articles=[8] * 60, vectors=vecs, name="probe")
    split = make_split(bank0)
    train_row, test_rows = split.rows("train")[0], split.rows("test")[:3]
    vecs[test_rows] = vecs[train_row]  # three test chunks are byte copies of a train chunk
    bank = make_bank(tmp_path, articles=[8] * 60, vectors=vecs, name="leaky")
    cfg = write_config(tmp_path, bank)
    d = preflight(cfg, hash_files=False).diagnosis
    f = d.get("leak_exact_test")
    assert f.status == "fail" and f.details["count"] == 3 and not d.ok
    ex = f.details["examples"][0]
    assert (
        ex["row"] in test_rows and ex["train_row"] == train_row and ex["text"] == bank.texts([ex["row"]])[0]
    )
    out = tmp_path / "pre"
    res = runner.invoke(app, ["diagnose", "data", str(cfg), "--out", str(out), "--no-hash"])
    assert res.exit_code == 1, res.output
    saved = json.loads((out / "diagnosis.json").read_text())
    assert saved["ok"] is False and saved["counts"]["fail"] >= 1
    assert (out / "manifest.json").exists()


def test_preflight_pairs_directory(make_bank, tmp_path):
    bank = make_bank(tmp_path, articles=[12] * 40, dim=16, seed=4)
    split = make_split(bank)
    pairs = make_pairs(bank, split, ctx=4, stride=2, max_per_article=3, dedup_cos=None)
    pdir = pairs.save(tmp_path / "pairs")
    pf = preflight(pdir)
    d = pf.diagnosis
    assert d.get("split_reproduced").status == "pass"
    assert d.get("pairs_outside_split").value == 0 and d.get("pairs").value == len(pairs)
    assert {"pairs/pairs.parquet", "pairs/manifest.json", "bank/vectors.npy"} <= set(pf.manifest["files"])
    # a two-tower config that reads these pairs hashes them too
    cfg = tmp_path / "tt.yaml"
    cfg.write_text(
        yaml.safe_dump({"task": "twotower", "bank": str(bank.path), "twotower": {"pairs": str(pdir)}})
    )
    files = preflight(cfg).manifest["files"]
    assert files["pairs/pairs.parquet"]["sha256"] == pf.manifest["files"]["pairs/pairs.parquet"]["sha256"]


def test_curriculum_is_parsed_epoch_by_epoch(make_bank, tmp_path):
    pytest.importorskip("lvmkit.train.mining")
    from lvmkit.diagnose.data import curriculum_findings
    from lvmkit.train.config import load_config

    bank = make_bank(tmp_path, articles=[6] * 10)
    cfg = load_config(
        None,
        [
            f"bank={bank.path}",
            "task=twotower",
            "optim.epochs=4",
            "twotower={schedule: '0-1:none;2-4:8@0.8-0.9'}",
        ],
    )
    rows, findings = curriculum_findings(cfg)
    assert (
        [r["negatives"] for r in rows] == [0, 8, 8, 8]
        and rows[1]["cos_lo"] == 0.8
        and rows[0]["cos_lo"] is None
    )
    assert findings[0].value == 3 and "epoch   2" in findings[0].details["plan"]
    short = load_config(
        None,
        [
            f"bank={bank.path}",
            "task=twotower",
            "optim.epochs=6",
            "twotower={schedule: '0-1:none;2-4:8@0.8-0.9'}",
        ],
    )
    rows, findings = curriculum_findings(short)
    assert rows is None and findings[0].status == "fail" and "epochs 1-6" in findings[0].message


def test_cli_diagnose_bank_and_model(rot_bank, tmp_path):
    res = runner.invoke(app, ["diagnose", "bank", str(rot_bank.path), "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert "mean_pairwise_cos" in res.output and json.loads((tmp_path / "b/diagnosis.json").read_text())["ok"]
    res = runner.invoke(
        app, ["diagnose", "model", "baseline:copy_last", "--bank", str(rot_bank.path), "--ctx", "3", "--split", "train",
              "--out", str(tmp_path / "m")]
    )  # fmt: skip
    assert res.exit_code == 1, res.output
    assert "collapse_margin" in res.output and "fail" in res.output
    assert "E[cos(q," in res.output  # brackets in messages are printed, not eaten as rich markup
