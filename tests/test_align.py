"""Alignment heads: Procrustes against the closed form on a synthetic rotation, ridge against numpy's least
squares, the heads stored with provenance and applied by `lvmkit eval --head`, and the refusals (another bank,
another encoder, a changed checkpoint) with nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from lvmkit.cli.main import app
from lvmkit.errors import ArtifactError, ProvenanceError
from lvmkit.eval.command import run_eval
from lvmkit.eval.evaluator import predict_all
from lvmkit.heads.align import AlignmentHead, fit_alignment, fit_procrustes, fit_ridge_map
from lvmkit.train.config import load_config
from lvmkit.train.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")
CTX, N_ART, LENGTH, DIM = 3, 40, 10, 16


def test_procrustes_recovers_a_rotation():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 8))
    rot, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    np.testing.assert_allclose(fit_procrustes(x, x @ rot), rot, atol=1e-10)
    # with noise: the closed form is the polar factor of M = x^T y, i.e. M (M^T M)^(-1/2)
    y = x @ rot + 0.3 * rng.standard_normal((200, 8))
    m = x.T @ y
    evals, evecs = np.linalg.eigh(m.T @ m)
    polar = m @ evecs @ np.diag(evals**-0.5) @ evecs.T
    r = fit_procrustes(x, y)
    np.testing.assert_allclose(r, polar, atol=1e-8)
    np.testing.assert_allclose(r.T @ r, np.eye(8), atol=1e-10)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 30.0])
def test_ridge_matches_numpy_least_squares(alpha):
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((150, 6)) + 2.0, rng.standard_normal((150, 5)) - 1.0
    w, b = fit_ridge_map(x, y, alpha)
    # independent: augmented least squares on the centred data ([xc; sqrt(a) I] W = [yc; 0]), bias from the means
    xc, yc = x - x.mean(0), y - y.mean(0)
    aug_x = np.vstack([xc, np.sqrt(alpha) * np.eye(6)])
    aug_y = np.vstack([yc, np.zeros((6, 5))])
    w_np = np.linalg.lstsq(aug_x, aug_y, rcond=None)[0]
    np.testing.assert_allclose(w, w_np, atol=1e-9)
    np.testing.assert_allclose(b, y.mean(0) - x.mean(0) @ w_np, atol=1e-9)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import build_bank
    from test_eval_command import rotation_vectors

    root = tmp_path_factory.mktemp("align")
    bank = build_bank(root, [LENGTH] * N_ART, vectors=rotation_vectors(N_ART, LENGTH, DIM, 0))
    cfg = load_config(
        None,
        [f"bank={bank.path}", f"data.ctx={CTX}", "data.batch_size=32", "data.max_eval_queries=50",
         "model.name=gru", "model.kwargs={hidden: 16, layers: 1}", "optim.epochs=1", "optim.warmup_steps=2",
         "final_eval=false"],
    )  # fmt: skip
    train(cfg, root / "run")
    return bank, root / "run"


def test_fit_store_and_apply(trained, tmp_path):
    bank, run = trained
    fit = fit_alignment(run, bank, alphas=(0.1, 10.0))
    assert [r["alpha"] for r in fit.sweep] == [0.1, 10.0]
    chosen = max(fit.sweep, key=lambda r: (r["val_hit@5"], r["val_cos"]))["alpha"]
    assert fit.heads["ridge"].provenance["alpha"] == chosen
    fit.save()
    head = AlignmentHead.load(run, "ridge")
    assert head.provenance["bank_id"] == bank.manifest.bank_id and head.provenance["n_train"] > 0
    np.testing.assert_allclose(head.weight, fit.heads["ridge"].weight, atol=1e-6)
    o = run_eval(str(run), bank, out=tmp_path / "ev", latency_n=0, head="ridge", n_boot=0)
    assert (
        o.target.name == "gru+ridge"
        and json.loads((tmp_path / "ev" / "metrics.json").read_text())["head"] == "ridge"
    )
    # the headed prediction, searched by brute force, gives the same hit@5
    from lvmkit.eval.command import build_windows, resolve_split

    sp, _ = resolve_split(o.target, bank, None, (0.8, 0.1, 0.1), 0)
    plain = run_eval(str(run), bank, out=tmp_path / "ev0", latency_n=0, n_boot=0)
    test, *_ = build_windows(plain.target, bank, sp, "test", None, CTX, 0)
    q = head.apply(predict_all(plain.target.predictor, test))
    scores = q @ np.asarray(bank.vectors).T
    ctx = test.context_rows(np.arange(len(test)))
    for i in range(len(test)):
        scores[i, ctx[i][ctx[i] >= 0]] = -np.inf
    top5 = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    assert o.result.metrics["hit@5"] == pytest.approx(
        np.mean([t in r for t, r in zip(test.targets, top5, strict=True)])
    )


def test_head_refused_for_another_bank_encoder_or_checkpoint(trained, make_bank, tmp_path):
    from test_eval_command import rotation_vectors

    bank, run = trained
    fit_alignment(run, bank, alphas=(1.0,)).save()
    other = make_bank(
        tmp_path, [LENGTH] * N_ART, vectors=rotation_vectors(N_ART, LENGTH, DIM, 7), seed=7, name="other"
    )
    with pytest.raises(ProvenanceError, match="fitted on bank"):
        run_eval(str(run), other, out=tmp_path / "a", latency_n=0, head="ridge")
    alien = make_bank(tmp_path, [LENGTH] * N_ART, dim=DIM, encoder="another-encoder", name="alien")
    with pytest.raises(ProvenanceError, match="encoder"):
        AlignmentHead.load(run, "ridge").check(alien)
    head = AlignmentHead.load(run, "procrustes")
    head.provenance["checkpoint_sha256"] = "0" * 64
    with pytest.raises(ProvenanceError, match="sha256 changed"):
        head.check(bank, run / "best.pt")
    with pytest.raises(ArtifactError, match="lvmkit align"):
        AlignmentHead.load(tmp_path, "ridge")
    assert not (tmp_path / "a").exists()
    res = CliRunner().invoke(
        app, ["eval", str(run), "--bank", str(other.path), "--head", "ridge", "--out", str(tmp_path / "b")]
    )
    assert res.exit_code == 2 and "fitted on bank" in res.output and not (tmp_path / "b").exists()


def test_align_cli(trained):
    bank, run = trained
    res = CliRunner().invoke(app, ["align", str(run), "--max-val", "40"])
    assert res.exit_code == 0, res.output
    assert "val hit@5" in res.output and (run / "heads" / "align-test.md").is_file()
    md = (run / "heads" / "align-test.md").read_text()
    assert "gru+ridge" in md and "gru+procrustes" in md and "copy_last" in md and "protocol open" in md


def test_rerank_fit_cli_on_a_run(trained):
    """`lvmkit rerank fit RUN` (on this module's trained run): the report names its protocol, the files land in
    RUN/heads, and an article feature under open is refused with exit 2 and nothing written."""
    bank, run = trained
    args = [
        "rerank",
        "fit",
        str(run),
        "--retriever",
        str(run),
        "--k",
        "20",
        "--max-train",
        "100",
        "--max-val",
        "40",
    ]
    bad = CliRunner().invoke(app, [*args, "--features", "score,next"])
    assert bad.exit_code == 2 and "open protocol" in bad.output
    assert not (run / "heads" / "reranker-open.json").exists()
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "protocol **open**" in res.output and (run / "heads" / "reranker-open.json").is_file()
