"""`lvmkit eval` end to end: baselines and a short real training run, gates and exit codes, and the refusals
(a bank from another encoder, a split made for another bank). Numbers are checked against an independent
brute-force ranking in numpy and against the run's own final evaluation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from lvmkit.cli.main import app
from lvmkit.data.splits import make_split
from lvmkit.errors import ConfigError, ProvenanceError
from lvmkit.eval.command import run_eval
from lvmkit.train.config import load_config
from lvmkit.train.loop import train

runner = CliRunner()
CTX = 3
N_ART, LENGTH, DIM = 40, 10, 16


def rotation_vectors(n_articles: int, length: int, dim: int, seed: int) -> np.ndarray:
    """Chunk t+1 = normalise(R chunk t + noise): a GRU learns R in seconds; copy_last cannot."""
    rng = np.random.default_rng(seed)
    rot, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    rows = []
    for _ in range(n_articles):
        x = rng.standard_normal(dim)
        for _ in range(length):
            x = x / np.linalg.norm(x)
            rows.append(x)
            x = rot @ x + 0.3 * rng.standard_normal(dim) / math.sqrt(dim)
    return np.asarray(rows, dtype=np.float32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A bank and a short GRU run on it (2 epochs, a few seconds), shared by the tests of this module."""
    from conftest import build_bank

    root = tmp_path_factory.mktemp("evalcmd")
    labels = ["history", "science"] * (N_ART // 2)
    bank = build_bank(root, [LENGTH] * N_ART, vectors=rotation_vectors(N_ART, LENGTH, DIM, 0), labels=labels)
    cfg = load_config(
        None,
        [f"bank={bank.path}", f"data.ctx={CTX}", "data.batch_size=32", "data.max_eval_queries=50",
         "model.name=gru", "model.kwargs={hidden: 16, layers: 1}", "optim.epochs=2", "optim.warmup_steps=2",
         "optim.lr=0.01"],
    )  # fmt: skip
    train(cfg, root / "run")
    return bank, root / "run"


def brute_hit5(bank, targets: np.ndarray, preds: np.ndarray) -> float:
    """hit@5 by ranking every bank row with numpy, each window's own context rows removed."""
    v = bank.vectors.astype(np.float64)
    hits = []
    for t, p in zip(targets, preds, strict=True):
        scores = v @ p
        ctx = [r for r in range(t - CTX, t) if bank.article_codes[r] == bank.article_codes[t]]
        scores[ctx] = -np.inf
        hits.append(t in np.argsort(-scores, kind="stable")[:5])
    return float(np.mean(hits))


def test_baseline_copy_last_metrics_json_and_brute_force(trained, tmp_path):
    bank, _ = trained
    out = tmp_path / "ev"
    o = run_eval("baseline:copy_last", bank, ctx=CTX, out=out, latency_n=5)
    data = json.loads((out / "metrics.json").read_text())
    assert set(data["results"]) == {"copy_last", "mean_ctx", "exp_weighted", "ridge", "blend", "oracle"}
    assert data["fitted"]["blend"]["tuned_on"] == "val"
    assert data["primary"] == "copy_last" and data["split"] == "test" and data["gates"] is None
    assert {"p50_ms", "p95_ms", "p99_ms", "qps"} <= set(data["latency"])
    for key in (
        "hit@1",
        "hit@5",
        "hit@10",
        "hit@50",
        "contain@50",
        "eff@5",
        "mrr@10",
        "cos",
        "ca_inbatch",
        "ca_other",
    ):
        assert key in data["results"]["copy_last"]["metrics"], key
        assert key in data["results"]["copy_last"]["intervals"] or key == "eff@5"
    assert data["results"]["oracle"]["metrics"]["hit@1"] == 1.0
    # the queries are exactly the test articles' windows with CTX real context chunks
    split = make_split(bank)
    targets = np.array([r for r in split.rows("test") if bank.chunk_index[r] >= CTX])
    assert data["n_queries"] == len(targets)
    assert o.result.metrics["hit@5"] == pytest.approx(brute_hit5(bank, targets, bank.vectors[targets - 1]))
    md = (out / "metrics.md").read_text()
    assert "| copy_last |" in md and "| oracle |" in md and "Latency" in md


def test_run_matches_its_own_final_evaluation(trained, tmp_path):
    bank, run = trained
    o = run_eval(str(run), bank.path, out=tmp_path / "ev", latency_n=0)
    own = json.loads((run / "metrics.json").read_text())
    again = json.loads((tmp_path / "ev/metrics.json").read_text())
    assert o.target.name == "gru" and o.target.kind == "run" and o.target.checkpoint.name == "best.pt"
    # the same windows, the same model, the same suite call: exactly the same numbers and comparison
    assert again["n_queries"] == own["n_queries"]
    assert again["results"] == own["results"] and again["comparisons"] == own["comparisons"]
    assert again["skipped"] == own["skipped"]
    assert o.result.metrics["cos"] > o.suite["copy_last"].metrics["cos"] + 0.1  # it learned something
    assert o.info["split_source"].startswith("the run's split")


def test_gates_exit_codes(trained, tmp_path):
    bank, run = trained
    easy, hard = tmp_path / "easy.yaml", tmp_path / "hard.yaml"
    easy.write_text(yaml.safe_dump({"hit@5": {"min": 0.0}, "p95_ms": {"max": 1e6}}))
    hard.write_text(
        yaml.safe_dump({"gates": {"hit@1": {"min": 1.01}, "cos": {"min": -1.0}}}, sort_keys=False)
    )
    args = ["eval", str(run), "--bank", str(bank.path), "--latency-n", "5", "--out"]
    ok = runner.invoke(app, [*args, str(tmp_path / "a"), "--gates", str(easy)])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(app, [*args, str(tmp_path / "b"), "--gates", str(hard)])
    assert bad.exit_code == 1, bad.output
    assert "1 of 2 gates failed" in bad.output
    gates = json.loads((tmp_path / "b/metrics.json").read_text())["gates"]
    assert gates["ok"] is False and [r["held"] for r in gates["rows"]] == [False, True]
    typo = runner.invoke(app, [*args, str(tmp_path / "c"), "--gates", str(tmp_path / "missing.yaml")])
    assert typo.exit_code == 2 and "does not exist" in typo.output


def test_refuses_bank_from_another_encoder(trained, make_bank, tmp_path):
    _, run = trained
    other = make_bank(tmp_path, [LENGTH] * N_ART, dim=DIM, encoder="other-encoder")
    with pytest.raises(ProvenanceError) as e:
        run_eval(str(run), other, latency_n=0, out=tmp_path / "x")
    assert "test-random" in str(e.value) and "other-encoder" in str(e.value)
    res = runner.invoke(app, ["eval", str(run / "best.pt"), "--bank", str(other.path), "--latency-n", "0"])
    assert res.exit_code == 2 and "other-encoder" in res.output


def test_split_file_for_another_bank_is_refused(trained, make_bank, tmp_path):
    bank, run = trained
    other = make_bank(tmp_path, [LENGTH] * N_ART, dim=DIM, seed=7)  # same encoder, other contents
    foreign = make_split(other).save(tmp_path / "other_split")
    with pytest.raises(ProvenanceError, match="was made for bank"):
        run_eval(str(run), bank, split_file=foreign, latency_n=0, out=tmp_path / "x")
    # the same encoder with other contents is allowed: the split is rebuilt from the run's (ratios, seed)
    o = run_eval(str(run), other, latency_n=0, out=tmp_path / "y", n_boot=0)
    assert (
        "trained on bank" in o.info["split_source"] and o.info["trained_on_bank_id"] == bank.manifest.bank_id
    )


def test_run_directory_defaults_to_its_own_bank(trained, tmp_path):
    bank, run = trained
    res = runner.invoke(app, ["eval", str(run), "--latency-n", "0", "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    explicit = run_eval(str(run), bank.path, out=tmp_path / "ev2", latency_n=0)
    assert got["results"]["gru"]["metrics"]["hit@5"] == pytest.approx(explicit.result.metrics["hit@5"])
    res = runner.invoke(app, ["eval", str(run / "best.pt"), "--latency-n", "0"])
    assert res.exit_code == 2 and "give --bank" in res.output


def test_bad_targets(trained, tmp_path):
    bank, _ = trained
    with pytest.raises(ConfigError, match="allowed: copy_last"):
        run_eval("baseline:magic", bank)
    res = runner.invoke(app, ["eval", str(tmp_path / "nowhere"), "--bank", str(bank.path)])
    assert res.exit_code == 2 and "not a run directory" in res.output
