"""Distributed training on CPU (gloo): the differentiable gather of negatives, and a real two-process
`torchrun ... lvmkit.cli.main train` run on a tiny bank."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_train import dynamic_bank

from lvmkit.artifacts import read_json, read_jsonl
from lvmkit.train.checkpoint import load_checkpoint
from lvmkit.train.distributed import all_gather_with_grad, gather_negatives
from lvmkit.train.runs import RunPaths


def _gather_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        # rank r holds r + 2 rows (unequal sizes, like a short last batch), values depend on the rank
        x = torch.full((rank + 2, 3), float(rank + 1), requires_grad=True)
        pieces = all_gather_with_grad(x)
        sizes = [p.shape[0] for p in pieces]
        # each rank's loss weighs every gathered piece by (its own rank + 1) * (source rank + 1)
        loss = sum((rank + 1) * (src + 1) * p.sum() for src, p in enumerate(pieces))
        loss.backward()
        others, art = gather_negatives(x.detach().clone().requires_grad_(), torch.full((rank + 2,), rank))
        torch.save(
            {"sizes": sizes, "grad": x.grad, "others": others.shape[0], "art": art.tolist()},
            f"{out_file}.{rank}",
        )
        dist.barrier()  # no rank tears gloo down while the other is still in a collective (SIGABRT)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_all_gather_with_grad_sends_gradients_back(tmp_path):
    world = 2
    mp.spawn(
        _gather_worker, args=(world, str(tmp_path / "init"), str(tmp_path / "out")), nprocs=world, join=True
    )
    for rank in range(world):
        got = torch.load(f"{tmp_path / 'out'}.{rank}")
        assert got["sizes"] == [2, 3]
        # d(total loss)/dx_r = sum over ranks q of (q + 1) * (r + 1): the gradient from every rank's loss
        # that used rank r's rows, not only this rank's own loss
        expected = sum((q + 1) * (rank + 1) for q in range(world))
        assert torch.allclose(got["grad"], torch.full((rank + 2, 3), float(expected)))
        other = 1 - rank
        assert got["others"] == other + 2 and got["art"] == [other] * (other + 2)


@pytest.mark.slow
def test_torchrun_two_processes_one_epoch(make_bank, tmp_path):
    bank = dynamic_bank(make_bank, tmp_path, n_articles=40)
    out = tmp_path / "ddp"
    sets = [
        f"bank={bank.path}",
        "device=cpu",
        "data.ctx=3",
        "data.batch_size=8",
        "data.max_eval_queries=60",
        "model.kwargs={hidden: 32, layers: 1}",
        "loss={cos: 1.0, infonce: 0.1, tau: 0.1}",
        "optim.epochs=1",
        "optim.warmup_steps=2",
        "log_every_steps=2",
        "final_eval=false",
    ]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "lvmkit.cli.main", "train", "--out", str(out), "--quiet", *[f"--set={s}" for s in sets],
    ]  # fmt: skip
    res = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run = RunPaths(out)
    st = read_json(run.status)
    assert st["state"] == "finished" and st["world_size"] == 2
    rows = read_jsonl(run.history)
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert len(epochs) == 1  # only rank 0 writes
    # both ranks' windows count: the epoch saw (almost) all training windows, each rank half the batches
    ckpt = load_checkpoint(run.last)
    assert epochs[0]["train_windows"] == st["windows_per_epoch"]
    assert ckpt["progress"]["step"] * 8 * 2 >= st["windows_per_epoch"] > 0
    assert "world size 2" in run.log.read_text()
    # InfoNCE saw the other rank's targets as extra negatives (about one batch of them per step)
    assert all(r["gathered_negatives"] > 0 for r in rows if r["kind"] == "step")
