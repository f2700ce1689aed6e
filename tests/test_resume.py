"""Exact resume: SIGKILL a real `lvmkit train` process mid-epoch, resume it, and compare with a run that was
never interrupted. On CPU everything that decides the trajectory is restored (weights, AdamW moments, schedule,
RNG states for dropout, the position in the epoch's batch order), so the final weights are bit-identical."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
from test_train import dynamic_bank  # noqa: F401 (a fixture)

from lvmkit.artifacts import read_json, read_jsonl
from lvmkit.train.checkpoint import load_checkpoint
from lvmkit.train.config import load_config
from lvmkit.train.loop import train
from lvmkit.train.runs import RunPaths

pytestmark = pytest.mark.usefixtures("one_thread")

TIMING_KEYS = {"time", "eval_s", "windows_per_s"}


def settings(bank) -> list[str]:
    return [
        f"bank={bank.path}",
        "data.ctx=3",
        "data.batch_size=16",
        "data.max_eval_queries=100",
        "model.kwargs={hidden: 32, layers: 1, dropout: 0.2}",  # dropout: the torch RNG must be restored too
        "loss={cos: 1.0, infonce: 0.1, tau: 0.1, queue: 64}",  # the InfoNCE queue must come back too
        "optim.epochs=2",
        "optim.warmup_steps=5",
        "checkpoint_every_steps=4",
        "log_every_steps=1",
        "final_eval=false",
    ]


def train_cmd(out, bank, *extra):
    sets = [f"--set={s}" for s in settings(bank)]
    return [sys.executable, "-m", "lvmkit.cli.main", "train", "--out", str(out), "--quiet", *sets, *extra]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: one thread is fastest, and the same in every run


def run_to_end(cmd, **kw):
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV, **kw)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def without_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


@pytest.mark.slow
def test_kill9_mid_epoch_then_resume_equals_uninterrupted(make_bank, tmp_path):
    bank = dynamic_bank(make_bank, tmp_path, n_articles=60)
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    env = {**ENV, "LVMKIT_THROTTLE_S": "0.15"}  # slow the first try down so we can hit it mid-epoch
    proc = subprocess.Popen(
        train_cmd(killed, bank), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    run = RunPaths(killed)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if run.last.exists() and load_checkpoint(run.last)["progress"]["step"] >= 4:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.kill()  # SIGKILL: no handler runs, whatever was half-written stays half-written
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    at_kill = load_checkpoint(run.last)["progress"]
    assert at_kill["epoch"] == 1 and at_kill["batch"] > 0, at_kill  # a mid-epoch checkpoint
    assert read_json(run.status)["state"] == "running"  # the killed process could not say otherwise

    run_to_end(train_cmd(killed, bank, "--resume"))
    # the reference runs in this process (one_thread: the same thread count as the subprocesses)
    assert train(load_config(None, settings(bank)), reference)["state"] == "finished"

    a, b = load_checkpoint(run.last), load_checkpoint(RunPaths(reference).last)
    for name in b["modules"]:
        for key, tensor in b["modules"][name].items():
            assert torch.equal(a["modules"][name][key], tensor), (name, key)
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert a["progress"] == b["progress"] and a["scheduler"] == b["scheduler"]

    # the history is complete and identical: every step once, both epochs, the same losses and metrics
    ha, hb = read_jsonl(run.history), read_jsonl(RunPaths(reference).history)
    assert without_timing(ha) == without_timing(hb)
    steps = [r["step"] for r in ha if r["kind"] == "step"]
    assert steps == list(range(1, a["progress"]["step"] + 1))
    assert [r["epoch"] for r in ha if r["kind"] == "epoch"] == [1, 2]
    assert read_json(run.status)["state"] == "finished"
    assert "resumed from last.pt: epoch 1" in run.log.read_text()
