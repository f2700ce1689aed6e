"""The training loop on tiny banks: it learns, writes every artifact, early-stops, and stops cleanly on a failed
gate or a NaN loss with a triage note. Banks here have a learnable dynamic (the next chunk vector is a fixed
rotation of the previous one plus noise), so a small GRU has something real to learn in a few seconds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lvmkit.artifacts import read_json, read_jsonl
from lvmkit.errors import ConfigError, ProvenanceError
from lvmkit.tasks.lvm.task import LVMTask
from lvmkit.train.checkpoint import load_checkpoint, load_model
from lvmkit.train.config import load_config
from lvmkit.train.distributed import DistInfo
from lvmkit.train.loop import make_optimizer, train, warmup_cosine
from lvmkit.train.runs import RunPaths

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")


def dynamic_vectors(n_articles: int, length: int, dim: int, seed: int, noise: float = 0.3) -> np.ndarray:
    """Articles whose chunk t+1 is normalise(R @ chunk t + noise) for one random rotation R."""
    rng = np.random.default_rng(seed)
    rot, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    rows = []
    for _ in range(n_articles):
        x = rng.standard_normal(dim)
        for _ in range(length):
            x = x / np.linalg.norm(x)
            rows.append(x)
            x = rot @ x + noise * rng.standard_normal(dim) / math.sqrt(dim)
    return np.asarray(rows, dtype=np.float32)


def dynamic_bank(make_bank, tmp_path, n_articles: int = 60, length: int = 12, dim: int = 16, seed: int = 0):
    vecs = dynamic_vectors(n_articles, length, dim, seed)
    return make_bank(tmp_path, articles=[length] * n_articles, vectors=vecs, seed=seed)


def tiny_config(bank, *extra: str):
    """A GRU run that takes a few seconds on one core."""
    return load_config(
        None,
        [
            f"bank={bank.path}",
            "data.ctx=3",
            "data.batch_size=16",
            "data.max_eval_queries=100",
            "model.name=gru",
            "model.kwargs={hidden: 32, layers: 1}",
            "optim.lr=0.01",
            "optim.warmup_steps=5",
            "optim.epochs=3",
            "checkpoint_every_steps=10",
            "log_every_steps=5",
            *extra,
        ],
    )


def test_schedule_and_weight_decay_groups():
    f = warmup_cosine(warmup=4, total=14, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0) and f(9) == pytest.approx(0.1 + 0.9 * 0.5)  # half way down the cosine
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    opt = make_optimizer(net, lr=0.1, weight_decay=0.05)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.05 and [p.shape for p in decayed["params"]] == [(4, 3)]
    assert plain["weight_decay"] == 0.0 and len(plain["params"]) == 3  # bias + LayerNorm weight and bias
    with pytest.raises(ConfigError, match="no trainable parameters"):
        make_optimizer(torch.nn.Identity(), lr=0.1, weight_decay=0.0)


def test_short_run_learns_and_writes_every_artifact(make_bank, tmp_path):
    bank = dynamic_bank(make_bank, tmp_path)
    cfg = tiny_config(bank)
    out = tmp_path / "run"
    events = []
    status = train(cfg, out, on_event=lambda kind, info: events.append(kind))
    run = RunPaths(out)
    assert status["state"] == "finished"
    for path in (
        run.config,
        run.split,
        run.history,
        run.log,
        run.status,
        run.last,
        run.best,
        run.metrics_json,
        run.metrics_md,
    ):
        assert path.exists(), path
    assert load_config(run.config) == cfg

    rows = read_jsonl(run.history)
    epochs = [r for r in rows if r["kind"] == "epoch"]
    steps = [r for r in rows if r["kind"] == "step"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert [r["step"] for r in steps] == list(range(5, epochs[-1]["step"] + 1, 5))
    # the loss goes down: last epoch's mean training loss well below the first logged steps
    assert epochs[-1]["train_loss"] < 0.7 * np.mean([r["loss"] for r in steps[:1]])
    # the model beats copy_last on the val windows (the dynamic is a rotation: copying is wrong)
    assert epochs[-1]["val_cos"] > epochs[-1]["val_copy_last_cos"] + 0.1
    assert epochs[-1]["val_hit@5"] >= epochs[-1]["val_copy_last_hit@5"]
    assert events[0] == "start" and events[-1] == "end" and events.count("epoch") == 3

    # status, checkpoint and final metrics agree with the history
    st = read_json(run.status)
    best_row = max(epochs, key=lambda r: r["val_hit@5"])
    assert st["best_metric"] == "val_hit@5" and st["best_value"] == pytest.approx(best_row["val_hit@5"])
    last = load_checkpoint(run.last)
    assert last["progress"]["epoch"] == 4 and last["progress"]["step"] == epochs[-1]["step"]
    assert last["bank"]["bank_id"] == bank.manifest.bank_id
    metrics = read_json(run.metrics_json)
    assert metrics["split"] == "test" and {"gru", "copy_last", "ridge", "oracle"} <= set(metrics["results"])
    assert "| gru |" in run.metrics_md.read_text() and "| copy_last |" in run.metrics_md.read_text()

    # the stored model reproduces the trained one and refuses a bank from another space / contents
    model, ckpt = load_model(run.best, bank=bank)
    assert ckpt["progress"]["best_epoch"] == best_row["epoch"]
    other = make_bank(tmp_path, articles=[12] * 60, dim=16, seed=1)
    with pytest.raises(ProvenanceError, match="trained on bank"):
        load_model(run.best, bank=other)
    with pytest.raises(ProvenanceError, match="different encoders"):
        load_model(run.best, bank=make_bank(tmp_path, articles=[3, 3], dim=8, seed=2))


def test_fresh_run_refuses_existing_dir_and_resume_refuses_other_config(make_bank, tmp_path):
    bank = dynamic_bank(make_bank, tmp_path, n_articles=30)
    cfg = tiny_config(bank, "optim.epochs=1", "final_eval=false")
    out = tmp_path / "run"
    assert train(cfg, out)["state"] == "finished"
    with pytest.raises(ConfigError, match="already holds a run"):
        train(cfg, out)
    with pytest.raises(ConfigError, match="optim.lr"):
        train(tiny_config(bank, "optim.epochs=1", "final_eval=false", "optim.lr=0.5"), out, resume=True)
    with pytest.raises(ConfigError, match="already finished"):
        train(cfg, out, resume=True)
    # more epochs is a change resume accepts: training continues from the checkpoint
    status = train(tiny_config(bank, "optim.epochs=2", "final_eval=false"), out, resume=True)
    assert status["state"] == "finished"
    assert [r["epoch"] for r in read_jsonl(RunPaths(out).history) if r["kind"] == "epoch"] == [1, 2]


def test_early_stopping_with_patience(make_bank, tmp_path):
    bank = dynamic_bank(make_bank, tmp_path, n_articles=30)
    # copy_last's score never changes, so it never improves after epoch 1
    cfg = tiny_config(bank, "optim.epochs=5", "early_stopping={metric: val_copy_last_hit@5, patience: 2}")
    status = train(cfg, tmp_path / "run")
    assert status["state"] == "early_stopped" and status["best_epoch"] == 1
    rows = read_jsonl(RunPaths(tmp_path / "run").history)
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [1, 2, 3]
    assert (tmp_path / "run" / "metrics.json").exists()  # the final evaluation still runs


def test_unknown_early_stopping_metric_lists_available(make_bank, tmp_path):
    bank = dynamic_bank(make_bank, tmp_path, n_articles=30)
    cfg = tiny_config(bank, "optim.epochs=1", "early_stopping.metric=val_hit@7")
    with pytest.raises(ConfigError, match=r"val_hit@7.*available: .*val_hit@5"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the run directory was made


def test_failed_gate_stops_with_triage(make_bank, tmp_path):
    from lvmkit.cli.main import app

    bank = dynamic_bank(make_bank, tmp_path, n_articles=30)
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--quiet"]
    overrides = [
        f"bank={bank.path}", "data.ctx=3", "data.batch_size=16", "data.max_eval_queries=100",
        "model.kwargs={hidden: 32, layers: 1}", "optim.epochs=3",
        "gates=[{epoch: 1, metric: val_hit@5, min: 0.0}, {epoch: 2, metric: val_hit@5, min: 1.01}]",
    ]  # fmt: skip
    res = runner.invoke(app, args + [f"--set={o}" for o in overrides])
    assert res.exit_code == 3, res.output
    run = RunPaths(out)
    st = read_json(run.status)
    assert st["state"] == "stopped_gate" and "gate failed" in st["message"]
    assert [r["epoch"] for r in read_jsonl(run.history) if r["kind"] == "epoch"] == [
        1,
        2,
    ]  # stopped after epoch 2
    text = run.triage.read_text()
    assert "gate failed after epoch 2" in text and "val_hit@5 (epoch 2)" in text and ">= 1.01" in text
    assert "Learning rate" in text and text.index("Learning rate") < text.index("Delta mode")
    assert load_checkpoint(run.last)["progress"]["stop"] == "stopped_gate"
    assert not run.metrics_json.exists()
    res = runner.invoke(app, ["train", "--out", str(out), "--resume"])
    assert res.exit_code == 2 and "triage.md" in res.output


class NaNAfter(LVMTask):
    """Test hook: the loss becomes NaN at the 7th batch (as a diverging run's would)."""

    calls = 0

    def loss(self, batch):
        total, parts = super().loss(batch)
        NaNAfter.calls += 1
        if NaNAfter.calls >= 7:
            total = total * float("nan")
            parts = {k: float("nan") for k in parts}
        return total, parts


def test_nan_loss_stops_with_triage(make_bank, tmp_path):
    bank = dynamic_bank(make_bank, tmp_path, n_articles=30)
    cfg = tiny_config(bank, "checkpoint_every_steps=5")
    out = tmp_path / "run"
    run = RunPaths(out)
    NaNAfter.calls = 0
    task = NaNAfter.from_config(cfg, run=run, dist=DistInfo(), rng=np.random.default_rng(0))
    status = train(cfg, out, task=task)
    assert status["state"] == "stopped_nan" and status["step"] == 6 and "step 7" in status["message"]
    text = run.triage.read_text()
    assert "non-finite loss at step 7 (epoch 1, batch 7)" in text and "| cos | nan |" in text
    assert "Lower the learning rate" in text
    assert load_checkpoint(run.last)["progress"]["step"] == 5  # the last good checkpoint is kept
    assert load_checkpoint(run.nan)["progress"]["step"] == 6
    for p in load_checkpoint(run.nan)["modules"]["model"].values():
        assert torch.isfinite(p).all()  # stopped before the NaN reached the weights
