"""Run directories: status.json, summaries and ETA, `lvmkit runs status/list`, detached launch, triage notes."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from lvmkit.artifacts import append_jsonl, write_text
from lvmkit.cli.main import app
from lvmkit.errors import ArtifactError
from lvmkit.train.config import load_config
from lvmkit.train.runs import (
    RunPaths,
    format_duration,
    launch_detached,
    list_runs,
    pid_alive,
    read_status,
    remaining_windows,
    summarize,
    write_status,
)
from lvmkit.train.triage import gate_fixes, gate_rules, nan_fixes, write_gate_triage, write_nan_triage

runner = CliRunner()


def fake_run(root, name, state, pid=None, epochs=3, epoch=2, hit=(0.1, 0.2), rate=100.0):
    """A run directory as the loop leaves it: status.json plus epoch and step rows in history.jsonl."""
    run = RunPaths(root / name)
    write_status(
        run, state, pid=pid, epoch=epoch, epochs=epochs, step=40, windows_per_epoch=1000,
        windows_done_in_epoch=250, best_metric="val_hit@5", best_value=max(hit), best_epoch=1 + hit.index(max(hit)),
    )  # fmt: skip
    for e, h in enumerate(hit, 1):
        append_jsonl(
            run.history, {"kind": "step", "epoch": e, "step": 20 * e - 10, "windows_per_s": rate / 2}
        )
        append_jsonl(
            run.history,
            {
                "kind": "epoch",
                "epoch": e,
                "step": 20 * e,
                "val_hit@5": h,
                "val_copy_last_hit@5": 0.15,
                "train_loss": 0.5,
            },
        )
    append_jsonl(run.history, {"kind": "step", "epoch": epoch, "step": 50, "windows_per_s": rate})
    return run


def test_status_round_trip_and_states(tmp_path):
    run = RunPaths(tmp_path / "r")
    write_status(run, "running", pid=123, epoch=1)
    write_status(run, "finished", step=9)
    st = read_status(run)
    assert st["state"] == "finished" and st["pid"] == 123 and st["epoch"] == 1 and st["step"] == 9
    with pytest.raises(ValueError, match="allowed: running"):
        write_status(run, "exploded")
    with pytest.raises(ArtifactError, match="not a run directory"):
        read_status(RunPaths(tmp_path / "nothing"))


def test_summary_eta_and_interrupted(tmp_path):
    live = fake_run(tmp_path, "live", "running", pid=os.getpid())
    s = summarize(live.root)
    assert s.alive and s.display_state == "running"
    assert s.best_value == 0.2 and s.best_epoch == 2 and s.latest["epoch"] == 2 and s.windows_per_s == 100.0
    # ETA = (rest of epoch 2 + epoch 3) windows / windows per second, from the last step row
    assert remaining_windows(read_status(live)) == 750 + 1000
    assert s.eta_s == pytest.approx(1750 / 100.0)
    dead = fake_run(tmp_path, "dead", "running", pid=2**22 + 12345)
    assert not pid_alive(2**22 + 12345) and summarize(dead.root).display_state == "interrupted"
    assert summarize(dead.root).eta_s is None
    assert (
        format_duration(3725) == "1h02m" and format_duration(75) == "1m15s" and format_duration(None) == "-"
    )


def test_list_runs_sorted_and_tolerant(tmp_path):
    fake_run(tmp_path, "b", "finished")
    fake_run(tmp_path, "a", "stopped_gate")
    (tmp_path / "broken").mkdir()
    write_text(tmp_path / "broken" / "status.json", "{not json")
    (tmp_path / "not_a_run").mkdir()
    runs = list_runs(tmp_path)
    assert [r.path.name for r in runs] == ["a", "b", "broken"]
    assert [r.display_state for r in runs] == ["stopped_gate", "finished", "unreadable"]
    with pytest.raises(ArtifactError):
        list_runs(tmp_path / "missing")


def test_cli_runs_status_and_list(tmp_path):
    fake_run(tmp_path, "gru", "running", pid=os.getpid())
    fake_run(tmp_path, "amn", "early_stopped", hit=(0.3, 0.25))
    res = runner.invoke(app, ["runs", "status", str(tmp_path / "gru")], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for part in (
        "running",
        "alive",
        "2 / 3",
        "val_hit@5 = 0.2000 (epoch 2)",
        "copy_last 0.1500",
        "100 windows/s",
        "eta",
    ):
        assert part in res.output, (part, res.output)
    res = runner.invoke(app, ["runs", "list", str(tmp_path)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "amn" in res.output and "early_stopped" in res.output and "0.3000 @1" in res.output
    assert res.output.index("amn") < res.output.index("gru")
    res = runner.invoke(app, ["runs", "status", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "not a run directory" in res.output


def test_launch_detached_writes_pid_and_log(tmp_path):
    pid = launch_detached(["--help"], tmp_path / "run")
    assert int((tmp_path / "run" / "train.pid").read_text()) == pid
    assert os.getsid(pid) == pid != os.getsid(0)  # its own session: it survives the terminal closing
    os.waitpid(pid, 0)  # our child: reap it (a detached CLI parent simply exits)
    assert "train" in (tmp_path / "run" / "stdout.log").read_text()
    assert not pid_alive(pid)


def test_gate_triage_orders_contrastive_fixes(tmp_path):
    cfg = load_config(
        None,
        [
            "bank=b",
            "loss={lambda_ar: 1.0, lambda_con: 0.1, tau: 0.07}",
            "gates=[{epoch: 1, metric: val_hit@5, min: 0.5}]",
        ],
    )
    fixes = [what for what, _ in gate_fixes(cfg)]
    order = ["loss.tau=0.05", "lambda_con=0.2", "data.batch_size=128", "projection head", "max_per_article=1"]
    pos = [next(i for i, f in enumerate(fixes) if key in f) for key in order]
    assert pos == sorted(pos) == [0, 1, 2, 3, 4]
    assert "lambda_ar=0.5" in fixes[1] and "loss.tau=0.10" in fixes[0]
    history = [{"kind": "epoch", "epoch": 1, "val_hit@5": 0.2}]
    metrics = {"val_hit@5": 0.2, "val_copy_last_hit@5": 0.2}
    from lvmkit.eval.gates import check_gates

    report = check_gates(metrics, gate_rules(cfg.gates, 1))
    assert not report.ok
    text = write_gate_triage(tmp_path, cfg, 1, report.to_markdown(), metrics, history)
    assert (tmp_path / "triage.md").read_text() == text
    assert "gate failed after epoch 1" in text and "| 1 | 0.2000 |" in text
    assert "copy_last 0.2000" in text and "learned to copy" in text
    assert (
        text.index("Temperature sweep") < text.index("More negatives") < text.index("Stricter article mixing")
    )


def test_gate_triage_regression_fixes_and_nan_triage(tmp_path):
    cfg = load_config(None, ["bank=b", "optim.lr=0.003", "loss={cos: 1.0}"])
    fixes = [what for what, _ in gate_fixes(cfg)]
    assert "optim.lr=0.001" in fixes[0] and "optim.lr=0.009" in fixes[0]
    assert "model.delta=true" in fixes[1] and "loss=" in fixes[2] and "data.ctx=10" in fixes[3]
    assert gate_rules(load_config(None, ["bank=b", "gates=[{epoch: 2, metric: m, min: 1}]"]).gates, 1) == []
    nan = [what for what, _ in nan_fixes(cfg)]
    assert "optim.lr=0.0003" in nan[0] and "clip_norm" in nan[1] and any("amp=false" in f for f in nan)
    text = write_nan_triage(tmp_path, cfg, 2, 41, 7, float("nan"), {"cos": float("nan")}, 0.003, 12.5)
    assert "step 42 (epoch 2, batch 8)" in text and "| cos | nan |" in text and "12.5" in text


@pytest.mark.slow
def test_detached_training_run_then_status_and_list(make_bank, tmp_path, monkeypatch):
    """`lvmkit train --detach` returns at once; the background run finishes; `runs status/list` read it."""
    from test_train import dynamic_bank

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the background process inherits it (tiny model: one thread)

    bank = dynamic_bank(make_bank, tmp_path, n_articles=30)
    out = tmp_path / "runs" / "gru"
    sets = [
        f"bank={bank.path}",
        "data.ctx=3",
        "data.batch_size=16",
        "model.kwargs={hidden: 16, layers: 1}",
        "optim.epochs=2",
    ]
    res = runner.invoke(app, ["train", "--out", str(out), "--detach", *[f"--set={s}" for s in sets]])
    assert res.exit_code == 0 and "started pid" in res.output, res.output
    pid = int((out / "train.pid").read_text())
    os.waitpid(pid, 0)  # our child here; from a shell it simply keeps running after the CLI returns
    st = read_status(RunPaths(out))
    assert st["state"] == "finished" and st["pid"] == pid, (out / "stdout.log").read_text()
    res = runner.invoke(app, ["runs", "status", str(out)], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "finished" in res.output and "not running" in res.output
    assert "test results" in res.output and "copy_last" in res.output
    res = runner.invoke(app, ["runs", "list", str(tmp_path / "runs")], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "gru" in res.output and "finished" in res.output and "2/2" in res.output
    # a second --detach into the same directory is refused before anything starts
    res = runner.invoke(app, ["train", "--out", str(out), "--detach", *[f"--set={s}" for s in sets]])
    assert res.exit_code == 2 and "already holds a run" in res.output


def test_runs_api_summary_shows_every_progress_field():
    """The API's run summary is the library's progress fields plus name, state, alive and has_report: a field
    added to one side only fails here (serve.runs.summary_out passes RunSummary.progress() through)."""
    from lvmkit.serve.schemas import RunSummaryOut
    from lvmkit.train.runs import PROGRESS_FIELDS

    assert set(RunSummaryOut.model_fields) == set(PROGRESS_FIELDS) | {"name", "state", "alive", "has_report"}
