"""The training loop: ``train`` reads top to bottom as named steps.

    train(cfg, out)       check_run -> claim_run_dir -> setup -> restore -> announce
                          -> [train_one_epoch -> end_of_epoch] per epoch -> finish_run
      check_run           everything that can be validated before the run directory is touched (the task
                          spec's ``check``: bank, model and options, loss, metric names, windows per split)
      claim_run_dir       lock the directory (one writer) and apply the fresh / overwrite / restart / resume
                          rules (``lvmkit.train.runs``)
      setup               seeds, the task, optimiser, schedule, AMP -> a ``Trainer``
      restore             weights, optimiser, schedule, task state, RNG, position and history from last.pt
      train_one_epoch     the epoch's batches: loss, NaN check, accumulation, optimiser steps, step logs,
                          mid-epoch checkpoints
      end_of_epoch        validation, early stopping, gates, the task's own stop rule, best.pt and last.pt
      finish_run          the final evaluation of the best checkpoint, the final state

The loop is generic; what is being trained is a ``Task``. The task owns the model(s), the data and the loss
and knows how to evaluate; the loop owns everything around them: AdamW (weight decay on matrices only) with
linear warm-up and cosine decay per step, gradient accumulation, clipping, AMP autocast (CUDA only), seeding
and determinism, checkpoints (``checkpoint_state``: last.pt every N steps and at each epoch end, best.pt) and
exact resume, history.jsonl, train.log, status.json, and progress events for the CLI.

A resumed run continues exactly where the checkpoint left off: same epoch, the batches already done are
skipped (the batch order is a pure function of (seed, epoch)), the RNG states are restored. On CPU the final
weights of a killed-and-resumed run equal those of an uninterrupted one, bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from lvmkit.artifacts import append_jsonl, read_jsonl
from lvmkit.errors import ArtifactError, ConfigError, LvmkitError
from lvmkit.eval.gates import check_gates
from lvmkit.train import distributed as D
from lvmkit.train.checkpoint import checkpoint_state, load_checkpoint, save_checkpoint, set_rng_state
from lvmkit.train.config import RunConfig
from lvmkit.train.runs import (
    RESUMABLE_CHANGES,
    RunPaths,
    check_checkpoint_config,
    claim_run_dir,
    load_last,
    log,
    now,
    prepare_run_dir,
    truncate_history,
    write_status,
)
from lvmkit.train.triage import gate_rules, write_gate_triage, write_nan_triage

__all__ = ["RESUMABLE_CHANGES", "Task", "Progress", "train", "prepare_run_dir", "log"]

# Debugging aid: sleep this many seconds after every optimiser step (lets a demo or a test interrupt a tiny
# run mid-epoch). Not a config field because it must never change what a run computes.
THROTTLE_ENV = "LVMKIT_THROTTLE_S"

Event = Callable[[str, dict[str, Any]], None]  # on_event(kind, info): "start", "step", "epoch", "end"


class Task(Protocol):
    """What the loop needs from a task (``lvmkit.tasks.lvm.task.LVMTask`` is the reference implementation)."""

    def modules(self) -> nn.ModuleDict: ...  # everything trainable, loss heads included

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None: ...  # route forward through DDP

    def num_batches(self, epoch: int) -> int: ...  # batches this rank sees in ``epoch``

    def windows_per_epoch(self) -> int: ...  # training examples per epoch, all ranks together

    def on_epoch_start(self, epoch: int) -> dict[str, Any]: ...  # hook (e.g. hard-negative mining)

    def train_batches(self, epoch: int, start_batch: int) -> Iterator[Any]: ...  # batches start_batch..

    def batch_size_of(self, batch: Any) -> int: ...

    def loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]: ...  # (scalar, parts)

    def evaluate(self, split: str = "val") -> dict[str, float]: ...  # model metrics + baselines'

    def should_stop(self, epoch: int, metrics: dict[str, Any]) -> str | None: ...  # its own stop rule: reason

    def final_eval(self, run: RunPaths) -> dict[str, Any]: ...  # test split -> metrics.json / metrics.md

    def provenance(self) -> dict[str, Any]: ...  # {"model": spec, "bank": stamp} stored in checkpoints

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class Progress:
    """Where a run is. Saved in every checkpoint; restoring it is what makes resume exact."""

    epoch: int = 1  # the epoch in progress (epochs + 1 once training is over)
    batch: int = 0  # batches of ``epoch`` already trained (always at an optimiser-step boundary)
    step: int = 0  # optimiser steps done in the whole run
    best: float | None = None  # best early-stopping metric so far
    best_epoch: int | None = None
    bad_epochs: int = 0  # epochs since the best one (the patience counter)
    history_rows: int = 0  # rows of history.jsonl written up to this state
    windows: int = 0  # training windows this rank has done in ``epoch``
    sums: dict[str, float] = field(default_factory=dict)  # loss parts summed over ``epoch``'s batches
    stop: str | None = None  # set once the run has decided to stop: early_stopped / stopped_gate


@dataclass
class Trainer:
    """Everything the steps of one run share (built by ``setup``)."""

    cfg: RunConfig
    run: RunPaths
    dist: D.DistInfo
    task: Task
    modules: nn.ModuleDict
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    np_rng: np.random.Generator
    emit: Event
    amp_dtype: torch.dtype | None  # None: no autocast
    steps_per_epoch: int
    total_steps: int
    p: Progress = field(default_factory=Progress)
    throttle: float = 0.0
    last_grad_norm: float | None = None
    tick: float = 0.0  # when the current windows-per-second measurement started
    tick_windows: int = 0
    stop_message: str | None = None

    @property
    def main(self) -> bool:
        return self.dist.is_main


# ------------------------------------------------------------------------------------------ the loop
def train(
    cfg: RunConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    task: Task | None = None,
    on_event: Event | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` into the run directory ``out``; returns the final status.json contents.

    ``overwrite`` starts over a run already in ``out``; ``task`` replaces the one the config names (tests
    inject tasks this way); ``on_event(kind, info)`` receives "start", "step", "epoch" and "end" events (the
    CLI turns them into a progress bar).
    """
    run = RunPaths(Path(out))
    dist = D.init_distributed(cfg.device)
    emit = on_event if (on_event is not None and dist.is_main) else (lambda kind, info: None)
    owns_run, lock = False, None  # owns_run: set once the run directory is ours to mark "failed"
    try:
        check_run(cfg, injected_task=task is not None)
        if dist.is_main:
            cfg, lock = claim_run_dir(run, cfg, resume, overwrite)
            owns_run = True
        cfg = D.broadcast_from_main(cfg, dist)
        t = setup(cfg, run, dist, task, resume, emit)
        restore(t, resume)
        announce(t)
        if t.main and cfg.early_stopping.from_start and t.p.step == 0 and t.p.best is None:
            start_candidate(t)  # epoch 0: the untrained model competes for best.pt
        while t.p.epoch <= cfg.optim.epochs and t.p.stop is None:
            if not train_one_epoch(t):
                return finish(t, "stopped_nan", message=t.stop_message)
            end_of_epoch(t)
        return finish_run(t)
    except Exception as e:
        if owns_run:
            write_status(run, "failed", message=f"{type(e).__name__}: {e}")
        raise
    finally:
        if lock is not None:
            lock.release()
        D.shutdown(dist)


def check_run(cfg: RunConfig, injected_task: bool = False) -> None:
    """Refuse, before the run directory is created or touched, what would fail later: gate epochs, and (for a
    task the config names) the bank, the model and its options, the loss, metric names and windows, through
    the task spec's ``check``. A mistake then leaves nothing behind, and the corrected command just runs."""
    check_gate_epochs(cfg)
    if injected_task:
        return
    from lvmkit.bank.bank import VectorBank
    from lvmkit.tasks import get_task

    try:
        bank = VectorBank.open(cfg.bank)
    except ArtifactError as e:
        raise ConfigError(f"bank={cfg.bank}: {e}. Give the bank to train on with --set bank=PATH") from None
    get_task(cfg.task).check(cfg, bank)


def setup(
    cfg: RunConfig, run: RunPaths, dist: D.DistInfo, task: Task | None, resume: bool, emit: Event
) -> Trainer:
    """Seeds, the task (model, data, loss) and the optimiser, schedule and AMP around it."""
    seed_everything(cfg.seed + dist.rank, deterministic=dist.device.type == "cpu")
    np_rng = np.random.default_rng(cfg.seed + dist.rank)
    if task is None:
        task = build_task(cfg, run, dist, np_rng, resume)
    modules = task.modules().to(dist.device)
    if dist.enabled:
        task.distribute(lambda m: D.wrap_ddp(m, dist))
    opt = make_optimizer(modules, cfg.optim.lr, cfg.optim.weight_decay)
    steps_per_epoch = math.ceil(task.num_batches(1) / cfg.optim.grad_accum)
    total_steps = steps_per_epoch * cfg.optim.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, warmup_cosine(cfg.optim.warmup_steps, total_steps, cfg.optim.min_lr_ratio)
    )
    use_amp = cfg.optim.amp and dist.device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    throttle = float(os.environ.get(THROTTLE_ENV, "0") or 0)
    return Trainer(cfg, run, dist, task, modules, opt, sched, scaler, np_rng, emit,
                   amp_dtype if use_amp else None, steps_per_epoch, total_steps, throttle=throttle)  # fmt: skip


def restore(t: Trainer, resume: bool) -> None:
    """On resume: weights, optimiser, schedule, task state, RNG, position and history from last.pt (a run
    killed before its first checkpoint starts from the beginning; ``prepare_run_dir`` refused a resume whose
    last.pt was written and then lost)."""
    run = t.run
    if resume and run.last.exists():
        ckpt = load_last(run, map_location=t.dist.device)
        check_checkpoint_config(run, ckpt, t.cfg)
        for name, module in t.modules.items():
            module.load_state_dict(ckpt["modules"][name])
        t.opt.load_state_dict(ckpt["optimizer"])
        t.sched.load_state_dict(ckpt["scheduler"])
        t.scaler.load_state_dict(ckpt["scaler"])
        t.task.load_state_dict(ckpt["task"])
        set_rng_state(ckpt["rng"], t.np_rng)
        t.p = Progress(**ckpt["progress"])
        if t.main:
            truncate_history(run, t.p.history_rows)
            log(run, f"resumed from {run.last.name}: epoch {t.p.epoch}, batch {t.p.batch}, step {t.p.step}")
    elif resume and t.main:  # killed before the first checkpoint: start over, keep nothing of the first try
        truncate_history(run, 0)
        log(run, "resume: no last.pt yet, starting from the beginning")


def announce(t: Trainer) -> None:
    """status.json "running", the run's first train.log line, and the "start" event."""
    cfg, p = t.cfg, t.p
    windows_per_epoch = t.task.windows_per_epoch()
    if t.main:
        write_status(t.run, "running", pid=os.getpid(), started=now(), epoch=p.epoch, epochs=cfg.optim.epochs,
                     step=p.step, total_steps=t.total_steps, windows_per_epoch=windows_per_epoch,
                     windows_done_in_epoch=p.windows * t.dist.world_size, world_size=t.dist.world_size,
                     message=None)  # fmt: skip
        log(
            t.run,
            f"training {cfg.task}/{cfg.model.name}: {cfg.optim.epochs} epochs x {t.steps_per_epoch} steps, "
            f"{windows_per_epoch} windows per epoch, device {t.dist.device}, world size {t.dist.world_size}",
        )
    info = {
        "epoch": p.epoch,
        "step": p.step,
        "total_steps": t.total_steps,
        "steps_per_epoch": t.steps_per_epoch,
    }
    t.emit("start", info)


# ------------------------------------------------------------------------------------------ one epoch
def train_one_epoch(t: Trainer) -> bool:
    """The batches of the epoch in progress (from ``p.batch`` on); False when a non-finite loss stopped it."""
    p, accum = t.p, t.cfg.optim.grad_accum
    hook_info = t.task.on_epoch_start(p.epoch)
    if t.main and hook_info:
        log(t.run, f"epoch {p.epoch} start: " + ", ".join(f"{k}={v}" for k, v in hook_info.items()))
    n_batches = t.task.num_batches(p.epoch)
    t.modules.train()
    t.opt.zero_grad(set_to_none=True)
    t.tick, t.tick_windows = time.perf_counter(), 0
    for batch in t.task.train_batches(p.epoch, p.batch):
        autocast = torch.autocast("cuda", dtype=t.amp_dtype) if t.amp_dtype else contextlib.nullcontext()
        with autocast:
            loss, parts = t.task.loss(batch)
        # NaN / inf: stop before this step touches the weights (all ranks stop together).
        if D.any_rank(not bool(torch.isfinite(loss.detach())), t.dist):
            stop_on_nan(t, float(loss.detach()), parts)
            return False
        t.scaler.scale(loss / accum).backward()
        count_batch(t, t.task.batch_size_of(batch), float(loss.detach()), parts)
        if p.batch % accum and p.batch < n_batches:
            continue  # accumulate more micro-batches before stepping
        optimizer_step(t)
        after_step(t, float(loss.detach()), parts, n_batches)
    return True


def count_batch(t: Trainer, n: int, loss: float, parts: dict[str, float]) -> None:
    """Position and the epoch's loss sums after one (micro-)batch."""
    p = t.p
    p.batch += 1
    p.windows += n
    t.tick_windows += n * t.dist.world_size
    p.sums["loss"] = p.sums.get("loss", 0.0) + loss
    for k, v in parts.items():
        p.sums[k] = p.sums.get(k, 0.0) + float(v)
    p.sums["batches"] = p.sums.get("batches", 0.0) + 1


def optimizer_step(t: Trainer) -> None:
    """Unscale, clip, step, update the scaler and the schedule, zero the gradients."""
    t.scaler.unscale_(t.opt)
    if t.cfg.optim.clip_norm is not None:
        t.last_grad_norm = float(nn.utils.clip_grad_norm_(t.modules.parameters(), t.cfg.optim.clip_norm))
    t.scaler.step(t.opt)
    t.scaler.update()
    t.sched.step()
    t.opt.zero_grad(set_to_none=True)
    t.p.step += 1
    if t.throttle:
        time.sleep(t.throttle)


def after_step(t: Trainer, loss: float, parts: dict[str, float], n_batches: int) -> None:
    """A step row in history.jsonl every ``log_every_steps``, the "step" event, last.pt every
    ``checkpoint_every_steps``."""
    cfg, p = t.cfg, t.p
    lr = t.sched.get_last_lr()[0]
    if t.main and p.step % cfg.log_every_steps == 0:
        elapsed = time.perf_counter() - t.tick
        row = {"kind": "step", "epoch": p.epoch, "step": p.step, "batch": p.batch, "lr": lr,
               "grad_norm": t.last_grad_norm, **parts, "loss": loss,
               "windows_per_s": t.tick_windows / max(elapsed, 1e-9), "time": now()}  # fmt: skip
        append_jsonl(t.run.history, row)
        p.history_rows += 1
        windows_done = p.windows * t.dist.world_size
        write_status(t.run, "running", epoch=p.epoch, step=p.step, windows_done_in_epoch=windows_done)
        t.tick, t.tick_windows = time.perf_counter(), 0
    info = {
        "epoch": p.epoch,
        "step": p.step,
        "batch": p.batch,
        "n_batches": n_batches,
        "loss": loss,
        "lr": lr,
    }
    t.emit("step", info)
    if t.main and cfg.checkpoint_every_steps and p.step % cfg.checkpoint_every_steps == 0:
        save_last(t)


def stop_on_nan(t: Trainer, loss: float, parts: dict[str, float]) -> None:
    """nan.pt (the weights before the bad step), triage.md and a train.log line; the run then stops."""
    p = t.p
    t.stop_message = f"non-finite loss at step {p.step + 1}"
    if not t.main:
        return
    save_checkpoint(t.run.nan, checkpoint_state(t.modules, t.task, t.cfg, asdict(p)))
    lr = t.sched.get_last_lr()[0]
    write_nan_triage(t.run.root, t.cfg, p.epoch, p.step, p.batch, loss, parts, lr, t.last_grad_norm)
    log(t.run, f"STOP: non-finite loss at step {p.step + 1} (epoch {p.epoch}); see triage.md")


# ------------------------------------------------------------------------------------------ epoch end
def end_of_epoch(t: Trainer) -> None:
    """Validate (rank 0), record, decide (gates, the task's stop rule, early stopping), checkpoint; every
    rank then moves to the next epoch with rank 0's decision."""
    epoch = t.p.epoch
    decision: dict[str, Any] = {"stop": None, "error": None}
    train_windows = D.sum_ranks(t.p.windows, t.dist)
    if t.main:
        try:
            decision.update(validate_and_checkpoint(t, train_windows))
        except LvmkitError as e:
            decision["error"] = str(e)
    decision = D.broadcast_from_main(decision, t.dist)
    if decision["error"]:
        raise ConfigError(decision["error"]) if t.main else LvmkitError("rank 0 stopped the run")
    if not t.main:  # keep the other ranks' positions in step with rank 0's
        advance(t.p, epoch, decision["stop"])
    t.stop_message = decision.get("message")


def start_candidate(t: Trainer) -> None:
    """``early_stopping.from_start``: score the untrained model on val as epoch 0 (a history row) and save it
    as best.pt, so the best checkpoint is chosen among epochs 0..N on val (an anchored model IS its anchor)."""
    metrics = {f"val_{k}": v for k, v in t.task.evaluate("val").items()}
    metric, p = t.cfg.early_stopping.metric, t.p
    if metric not in metrics:
        return  # the first epoch's check names the problem
    p.best, p.best_epoch = float(metrics[metric]), 0
    append_jsonl(
        t.run.history, {"kind": "epoch", "epoch": 0, "step": 0, **metrics, "best": p.best, "best_epoch": 0}
    )
    p.history_rows += 1
    log(t.run, f"epoch 0 (untrained start) | {metric} {p.best:.4f}")
    save_checkpoint(t.run.best, full_state(t))


def validate_and_checkpoint(t: Trainer, train_windows: int) -> dict[str, Any]:
    """Rank 0's part of ``end_of_epoch``; returns the decision ``{"stop", "message"}``."""
    cfg, p, run = t.cfg, t.p, t.run
    epoch = p.epoch
    metrics = epoch_metrics(t, train_windows)
    improved = track_best(t, metrics)
    append_jsonl(run.history, metrics)
    p.history_rows += 1
    log(run, epoch_line(metrics, cfg.early_stopping.metric))
    decision = decide(t, metrics)
    advance(p, epoch, decision["stop"])  # the position after this epoch; then best.pt and last.pt
    if improved:
        save_checkpoint(run.best, full_state(t))
    save_last(t, epoch=min(p.epoch, cfg.optim.epochs), step=p.step, windows_done_in_epoch=0,
              best_metric=cfg.early_stopping.metric, best_value=p.best, best_epoch=p.best_epoch)  # fmt: skip
    t.emit("epoch", metrics)
    return decision


def epoch_metrics(t: Trainer, train_windows: int) -> dict[str, Any]:
    """The epoch row of history.jsonl: position, mean train loss parts, the task's val metrics."""
    p = t.p
    nb = max(p.sums.get("batches", 0.0), 1.0)
    metrics: dict[str, Any] = {"kind": "epoch", "epoch": p.epoch, "step": p.step,
                               "lr": t.sched.get_last_lr()[0], "train_windows": train_windows}  # fmt: skip
    metrics.update({f"train_{k}": v / nb for k, v in p.sums.items() if k != "batches"})
    t0 = time.perf_counter()
    metrics.update({f"val_{k}": v for k, v in t.task.evaluate("val").items()})
    metrics.update(eval_s=time.perf_counter() - t0, time=now())
    return metrics


def track_best(t: Trainer, metrics: dict[str, Any]) -> bool:
    """Early-stopping bookkeeping (best value and epoch, the patience counter); True when this epoch is the
    best so far. ``metrics`` gets ``best`` and ``best_epoch``."""
    p, metric, mode = t.p, t.cfg.early_stopping.metric, t.cfg.early_stopping.mode
    if metric not in metrics:
        raise ConfigError(
            f"early_stopping.metric={metric!r} is not measured; available: "
            + ", ".join(k for k in metrics if isinstance(metrics[k], float))
        )
    value = float(metrics[metric])
    improved = p.best is None or (value > p.best if mode == "max" else value < p.best)
    if improved:
        p.best, p.best_epoch, p.bad_epochs = value, p.epoch, 0
    else:
        p.bad_epochs += 1
    metrics.update(best=p.best, best_epoch=p.best_epoch)
    return improved


def decide(t: Trainer, metrics: dict[str, Any]) -> dict[str, Any]:
    """Whether the run stops after this epoch: a failed gate, then the task's own rule (the two-tower abort:
    it writes its own triage.md), then early stopping. ``{"stop": state | None, "message": str | None}``."""
    cfg, p, run, epoch = t.cfg, t.p, t.run, t.p.epoch
    rules = gate_rules(cfg.gates, epoch)
    report = check_gates(metrics, rules) if rules else None
    if report is not None and not report.ok:
        write_gate_triage(run.root, cfg, epoch, report.to_markdown(), metrics, read_jsonl(run.history))
        log(run, f"STOP: gate failed after epoch {epoch}; see triage.md")
        return {"stop": "stopped_gate", "message": None}
    reason = t.task.should_stop(epoch, metrics)
    if reason:
        log(run, f"STOP after epoch {epoch}: {reason}; see triage.md")
        return {"stop": "stopped_gate", "message": f"{reason}; see triage.md"}
    if cfg.early_stopping.patience and p.bad_epochs >= cfg.early_stopping.patience:
        log(run, f"early stop: {cfg.early_stopping.metric} has not improved for {p.bad_epochs} epochs "
                 f"(best {p.best:.4f} at epoch {p.best_epoch})")  # fmt: skip
        return {"stop": "early_stopped", "message": None}
    return {"stop": None, "message": None}


def advance(p: Progress, epoch: int, stop: str | None) -> None:
    """The position after ``epoch``: the next epoch, nothing done in it yet, and the stop decision."""
    p.epoch, p.batch, p.windows, p.sums, p.stop = epoch + 1, 0, 0, {}, stop


# ------------------------------------------------------------------------------------------ checkpoints
def full_state(t: Trainer) -> dict[str, Any]:
    """The checkpoint of the run as it is now: everything an exact resume needs (``checkpoint_state``)."""
    return checkpoint_state(t.modules, t.task, t.cfg, asdict(t.p), optimizer=t.opt, scheduler=t.sched,
                            scaler=t.scaler, np_rng=t.np_rng)  # fmt: skip


def save_last(t: Trainer, **status: Any) -> None:
    """last.pt, and status.json's ``checkpoint_step`` (a resume then knows a lost last.pt was written)."""
    save_checkpoint(t.run.last, full_state(t))
    write_status(t.run, "running", checkpoint_step=t.p.step, **status)


# ------------------------------------------------------------------------------------------ the end
def finish_run(t: Trainer) -> dict[str, Any]:
    """The final evaluation of the best checkpoint on the test split (unless a gate stopped the run), then
    the final state."""
    state = t.p.stop or "finished"
    if state == "stopped_gate":
        return finish(t, state, message=t.stop_message or "a gate failed; see triage.md")
    if t.main and t.cfg.final_eval:
        if t.run.best.exists():
            best = load_checkpoint(t.run.best, map_location=t.dist.device)
            for name, module in t.modules.items():
                module.load_state_dict(best["modules"][name])
        summary = t.task.final_eval(t.run)
        log(t.run, "final evaluation on the test split written to metrics.json / metrics.md")
        write_status(t.run, "running", final=summary)
    return finish(t, state)


def finish(t: Trainer, state: str, message: str | None = None) -> dict[str, Any]:
    """Record the final state of the run and tell the caller."""
    if not t.main:
        return {"state": state}
    p = t.p
    status = write_status(t.run, state, step=p.step, best_value=p.best, best_epoch=p.best_epoch,
                          message=message, finished=now())  # fmt: skip
    log(t.run, f"run {state}" + (f": {message}" if message else ""))
    t.emit("end", status)
    return status


# ------------------------------------------------------------------------------------------- helpers
def build_task(
    cfg: RunConfig, run: RunPaths, dist: D.DistInfo, rng: np.random.Generator, resume: bool
) -> Task:
    """The training task of ``cfg.task``, from the task registry (``lvmkit.tasks.TASKS``)."""
    from lvmkit.tasks import get_task

    return get_task(cfg.task).build_task(cfg, run, dist, rng, resume)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy's legacy global RNG and torch; on CPU also ask torch for deterministic kernels
    (warn-only: an op without a deterministic kernel warns instead of stopping the run)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def make_optimizer(modules: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (ndim >= 2) only; biases, norms and gains are not decayed."""
    params = [q for q in modules.parameters() if q.requires_grad]
    if not params:
        raise ConfigError(
            "the model has no trainable parameters (a baseline?); evaluate it with `lvmkit eval`"
        )
    decay = [q for q in params if q.ndim >= 2]
    rest = [q for q in params if q.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def warmup_cosine(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier per optimiser step: linear 1/warmup .. 1 over ``warmup`` steps, then cosine to min_ratio."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        span = max(1, total - warmup)
        t = min(1.0, (step - warmup) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


def check_gate_epochs(cfg: RunConfig) -> None:
    late = [f"gates.{i}.epoch={g.epoch}" for i, g in enumerate(cfg.gates) if g.epoch > cfg.optim.epochs]
    if late:
        raise ConfigError(
            f"{', '.join(late)}: after the last epoch (optim.epochs={cfg.optim.epochs}); it would never be checked"
        )


def epoch_line(m: dict[str, Any], metric: str) -> str:
    """``epoch 3 step 120 | train_loss 0.41 | val_hit@5 0.231 (copy_last 0.207) | best 0.231 @3``."""
    parts = [f"epoch {m['epoch']} step {m['step']}", f"train_loss {m.get('train_loss', float('nan')):.4f}"]
    for key in dict.fromkeys([metric, "val_hit@5", "val_cos"]):
        if key in m and isinstance(m[key], float):
            base = m.get(key.replace("val_", "val_copy_last_", 1))
            parts.append(
                f"{key} {m[key]:.4f}" + (f" (copy_last {base:.4f})" if isinstance(base, float) else "")
            )
    parts.append(f"best {m['best']:.4f} @{m['best_epoch']}")
    return " | ".join(parts)
