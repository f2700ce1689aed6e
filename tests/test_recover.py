"""Recoverable runs (issue #9): a mistake is refused before the run directory exists, a failed run that never
checkpointed restarts with the corrected config, --overwrite starts over, a lost or damaged last.pt under
--resume is named with its fix, and `lvmkit eval` / `diagnose model` on a run directory need no --bank and say
when the run is still training."""

from __future__ import annotations

import hashlib

import pytest
import yaml
from test_train import dynamic_bank, tiny_config  # noqa: F401 (fixtures and helpers)
from typer.testing import CliRunner

from lvmkit import locking
from lvmkit.artifacts import read_json, read_jsonl
from lvmkit.cli.main import app
from lvmkit.data import Split, make_windows
from lvmkit.errors import ConfigError
from lvmkit.tasks import TASKS
from lvmkit.train.checkpoint import load_checkpoint
from lvmkit.train.loop import train
from lvmkit.train.runs import RunPaths

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["data.ctx=3", "data.batch_size=16", "data.max_eval_queries=100", "model.name=gru",
        "model.kwargs={hidden: 16, layers: 1}", "optim.warmup_steps=5", "checkpoint_every_steps=10",
        "log_every_steps=5", "final_eval=false"]  # fmt: skip


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_forgotten_bank_then_the_corrected_command(make_bank, tmp_path, monkeypatch):
    """The most common first mistake: the config's bank is not there. Nothing is created, and the corrected
    command (with --set bank=) simply runs."""
    bank = dynamic_bank(make_bank, tmp_path / "b", n_articles=30)
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "gru.yaml"
    cfg.write_text(yaml.safe_dump({"bank": "banks/enwiki", "optim": {"epochs": 1}}))
    out = tmp_path / "runs" / "gru"
    res = invoke("train", cfg, "--out", out, "--quiet", *[f"--set={s}" for s in TINY])
    assert res.exit_code == 2, res.output
    assert "bank=banks/enwiki: no bank at banks/enwiki" in res.output
    assert "--set bank=PATH" in res.output and "Traceback" not in res.output
    assert not out.exists() and not (tmp_path / "runs").exists()
    res = invoke(
        "train", cfg, "--out", out, "--quiet", f"--set=bank={bank.path}", *[f"--set={s}" for s in TINY]
    )
    assert res.exit_code == 0, res.output
    assert read_json(out / "status.json")["state"] == "finished"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("model.name=grux", "unknown model 'grux'"),
        ("model.kwargs={hidden: 16, hiden: 3}", "hiden"),
        ("data.ctx=50", "has no windows with ctx=50"),
        ("model={name: copy_last}", "is a baseline with nothing to train"),
        ("gates=[{epoch: 1, metric: val_hit@7, min: 0.1}]", "gates.0.metric='val_hit@7' is not measured"),
    ],
)
def test_what_can_be_validated_is_refused_before_the_run_directory(make_bank, tmp_path, override, fragment):
    bank = dynamic_bank(make_bank, tmp_path, n_articles=30)
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("(", r"\(")):
        train(tiny_config(bank, "optim.epochs=1", override), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_failed_before_its_first_checkpoint_restarts_without_resume(make_bank, tmp_path):
    bank = dynamic_bank(make_bank, tmp_path, n_articles=30)
    out = tmp_path / "run"

    def crash(kind, info):
        if kind == "start":
            raise RuntimeError("out of memory (simulated)")

    with pytest.raises(RuntimeError):
        train(tiny_config(bank, "optim.epochs=1"), out, on_event=crash)
    assert read_json(out / "status.json")["state"] == "failed" and not (out / "last.pt").exists()
    # a corrected config, no --resume: the failed attempt is cleared and the run starts
    status = train(tiny_config(bank, "optim.epochs=1", "optim.lr=0.003"), out)
    assert status["state"] == "finished"
    assert load_checkpoint(out / "last.pt")["config"]["optim"]["lr"] == 0.003
    assert [r["epoch"] for r in read_jsonl(out / "history.jsonl") if r["kind"] == "epoch"] == [1]
    # a run that did checkpoint is not silently replaced ...
    with pytest.raises(
        ConfigError, match="already holds a run; continue it with --resume, start it over with"
    ):
        train(tiny_config(bank, "optim.epochs=1"), out)
    # ... unless asked: --overwrite starts over (nothing of the old run is left)
    (out / "eval-test").mkdir()
    (out / "eval-test" / "metrics.json").write_text("{}")  # an old evaluation must not outlive its run
    status = train(tiny_config(bank, "optim.epochs=2", "optim.lr=0.004"), out, overwrite=True)
    assert status["state"] == "finished" and not (out / "eval-test").exists()
    assert [r["epoch"] for r in read_jsonl(out / "history.jsonl") if r["kind"] == "epoch"] == [1, 2]
    assert load_checkpoint(out / "best.pt")["config"]["optim"]["lr"] == 0.004


def test_deleted_last_pt_under_resume_is_refused_and_best_pt_kept(make_bank, tmp_path):
    bank = dynamic_bank(make_bank, tmp_path, n_articles=30)
    out = tmp_path / "run"
    sets = [f"--set={s}" for s in [f"bank={bank.path}", *TINY, "optim.epochs=1"]]
    assert invoke("train", "--out", out, "--quiet", *sets).exit_code == 0
    best, history = sha(out / "best.pt"), (out / "history.jsonl").read_text()
    (out / "last.pt").unlink()
    res = invoke("train", "--out", out, "--quiet", "--resume", "--set=optim.epochs=2")
    assert res.exit_code == 2, res.output
    assert f"--resume: {out / 'last.pt'} is missing, but this run wrote it" in " ".join(res.output.split())
    assert "--overwrite" in res.output and "Traceback" not in res.output
    assert sha(out / "best.pt") == best and (out / "history.jsonl").read_text() == history
    assert not (out / "last.pt").exists() and read_json(out / "status.json")["state"] == "finished"


def test_garbage_last_pt_names_the_file_not_torch_advice(make_bank, tmp_path):
    bank = dynamic_bank(make_bank, tmp_path, n_articles=30)
    out = tmp_path / "run"
    sets = [f"--set={s}" for s in [f"bank={bank.path}", *TINY, "optim.epochs=1"]]
    assert invoke("train", "--out", out, "--quiet", *sets).exit_code == 0
    best = sha(out / "best.pt")
    (out / "last.pt").write_bytes(b"garbage" * 100)
    res = invoke("train", "--out", out, "--quiet", "--resume", "--set=optim.epochs=2")
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert f"{out / 'last.pt'} is damaged or not an lvmkit checkpoint (700 bytes" in text
    assert "--overwrite" in text and "weights_only" not in text and "Traceback" not in text
    assert sha(out / "best.pt") == best
    # refused while claiming the directory: the run is left as it was (to restore last.pt, or start over)
    assert read_json(out / "status.json")["state"] == "finished"
    assert (out / "last.pt").read_bytes() == b"garbage" * 100


def test_eval_and_diagnose_of_a_run_directory(make_bank, tmp_path, monkeypatch):
    """No --bank needed for a run directory; a run that is still training is said to be."""
    bank = dynamic_bank(make_bank, tmp_path, n_articles=30)
    out = tmp_path / "run"
    train(tiny_config(bank, "optim.epochs=1", "final_eval=false"), out)
    res = invoke("diagnose", "model", out, "--max-queries", 50)
    diag = read_json(out / "diagnose" / "diagnosis.json")
    assert res.exit_code == (1 if any(f["status"] == "fail" for f in diag["findings"]) else 0), res.output
    val = make_windows(bank, Split.load(out / "split.json", bank), "val", 3)  # every val window (< 50)
    assert diag["stats"]["bank"] == str(bank.path) and diag["stats"]["n_queries"] == len(val) < 50
    # pretend a process is training it now: status "running" and the lock held (by this process)
    status = read_json(out / "status.json")
    (out / "status.json").write_text(__import__("json").dumps({**status, "state": "running", "epoch": 2}))
    with locking.acquire(out, "training", "run"):
        res = invoke("eval", out, "--latency-n", 0, "--max-queries", 50)
        assert res.exit_code == 0, res.output
        text = " ".join(res.output.split())
        assert f"{out} is still training (epoch 2 of 1" in text and "they will change" in text
        assert "still training" in read_json(out / "eval-test" / "metrics.json")["still_training"]
        (out / "best.pt").rename(out / "best.bak")
        (out / "last.pt").rename(out / "last.bak")
        res = invoke("eval", out, "--latency-n", 0)
        assert (
            res.exit_code == 2
            and "has no checkpoint yet: evaluate it once it has finished an epoch"
            in " ".join(res.output.split())
        )


@pytest.mark.parametrize("task", list(TASKS))
def test_metric_names_are_what_the_task_measures(make_bank, tmp_path, task):
    """The spec's metric_names (used to refuse unknown early-stopping / gate metrics before a run) is exactly
    what the task's per-epoch evaluation returns."""
    from lvmkit.train.distributed import DistInfo

    bank = dynamic_bank(make_bank, tmp_path, n_articles=30)
    extra = ["task=twotower", "model.name=bigru_pool", "early_stopping.metric=val_recall@10",
             "twotower.eval_ks=[1, 10]", "twotower.compare_on=recall@10", "twotower.pair_stride=2",
             "twotower.eval_stride=2", "twotower.abort=null"] if task == "twotower" else []  # fmt: skip
    cfg = tiny_config(bank, "optim.epochs=1", *extra)
    if task == "twotower":
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"kwargs": {"hidden": 8}})})
    run = RunPaths(tmp_path / "run")
    run.root.mkdir()
    import numpy as np

    t = TASKS[task].build_task(cfg, run, DistInfo(), np.random.default_rng(0), False)
    assert sorted(t.evaluate("val")) == sorted(TASKS[task].metric_names(cfg))


def test_report_keeps_the_runs_queries(make_bank, tmp_path):
    """The report prefers `lvmkit eval RUN`'s output only when it scored the run's own queries: a full eval
    reproduces metrics.json and is shown; an eval on 5 queries is not silently shown instead."""
    from lvmkit.eval.command import run_eval
    from lvmkit.report import load_run

    bank = dynamic_bank(make_bank, tmp_path, n_articles=30)
    out = tmp_path / "run"
    train(tiny_config(bank, "optim.epochs=1"), out)
    run_eval(str(out), bank, latency_n=0)
    r = load_run(out)
    assert r.metrics_source == out / "eval-test" / "metrics.json"
    assert r.metrics["results"] == read_json(out / "metrics.json")["results"]
    run_eval(str(out), bank, latency_n=0, max_queries=5)
    r = load_run(out)
    assert r.metrics_source == out / "metrics.json" and r.metrics["n_queries"] > 5


def test_numpy_scalars_in_a_checkpoint_still_load_with_weights_only(tmp_path):
    """A mining statistic or a metric that is an np.float64 made the checkpoint unloadable (weights_only
    refuses numpy types): save_checkpoint stores them as Python numbers, and leaves tensors alone."""
    import numpy as np
    import torch

    from lvmkit.train.checkpoint import save_checkpoint

    state = {
        "modules": {"m": {"w": torch.arange(3.0)}},
        "task": {"stats": {"mean": np.float64(0.5), "n": np.int64(7), "ok": np.bool_(True)}, "evals": [(1, np.float32(0.25))]},
        "rng": (3, (1, 2), None),
    }  # fmt: skip
    save_checkpoint(tmp_path / "a.pt", state)
    back = torch.load(tmp_path / "a.pt", weights_only=True)
    assert back["task"] == {"stats": {"mean": 0.5, "n": 7, "ok": True}, "evals": [(1, 0.25)]}
    assert type(back["task"]["stats"]["mean"]) is float and type(back["task"]["stats"]["n"]) is int
    assert back["rng"] == (3, (1, 2), None) and torch.equal(back["modules"]["m"]["w"], torch.arange(3.0))


def test_an_old_checkpoint_with_a_numpy_scalar_names_the_cause_and_the_fix(tmp_path):
    import numpy as np
    import torch

    from lvmkit.errors import ArtifactError

    torch.save(
        {"format": 1, "task": {"mean_cos_kept": np.float64(0.6)}}, tmp_path / "old.pt"
    )  # before the fix
    with pytest.raises(ArtifactError, match="holds a numpy scalar.*save_checkpoint"):
        load_checkpoint(tmp_path / "old.pt")
