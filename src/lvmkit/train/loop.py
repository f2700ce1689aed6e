"""The training loop: one function, ``train``, that reads top to bottom.

The loop is generic; what is being trained is a ``Task``. The task owns the model(s), the data and the loss
and knows how to evaluate; the loop owns everything around them:

    optimiser (AdamW, weight decay on matrices only) and schedule (linear warm-up, cosine decay, per step)
    gradient accumulation, clipping, AMP autocast (CUDA only), seeding and determinism
    checkpoints (last.pt every N steps and at each epoch end, best.pt) and exact resume
    validation every epoch, early stopping, gates, NaN/inf checks, triage notes
    history.jsonl, train.log, status.json, and progress events for the CLI

A resumed run continues exactly where the checkpoint left off: same epoch, the batches already done are
skipped (the batch order is a pure function of (seed, epoch)), the RNG states are restored. On CPU the final
weights of a killed-and-resumed run equal those of an uninterrupted one, bit for bit.
"""

from __future__ import annotations

import contextlib
import importlib
import json
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

from lvmkit.artifacts import append_jsonl, read_json, read_jsonl, write_text
from lvmkit.errors import ConfigError, LvmkitError
from lvmkit.eval.gates import check_gates
from lvmkit.train import distributed as D
from lvmkit.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from lvmkit.train.config import RunConfig, config_diff, load_config, save_config
from lvmkit.train.runs import RunPaths, lock_run, now, write_status
from lvmkit.train.triage import gate_rules, write_gate_triage, write_nan_triage

# Tasks by config name ("module:Class"); each class has ``from_config(cfg, run, dist, rng, resume)``.
# The two-tower task registers itself here with one line.
TASKS: dict[str, str] = {
    "lvm": "lvmkit.tasks.lvm:LVMTask",
    "twotower": "lvmkit.tasks.twotower.task:TwoTowerTask",
}

# Fields that may change between a run and its resume: they do not alter the trajectory already trained.
RESUMABLE_CHANGES = (
    "optim.epochs",
    "final_eval",
    "checkpoint_every_steps",
    "log_every_steps",
    "gates",
    "early_stopping.patience",
)

# Debugging aid: sleep this many seconds after every optimiser step (lets a demo or a test interrupt a tiny
# run mid-epoch). Not a config field because it must never change what a run computes.
THROTTLE_ENV = "LVMKIT_THROTTLE_S"

Event = Callable[[str, dict[str, Any]], None]  # on_event(kind, info): "start", "step", "epoch", "end"


class Task(Protocol):
    """What the loop needs from a task (see lvm_task.LVMTask for the reference implementation)."""

    def modules(self) -> nn.ModuleDict: ...  # everything trainable, loss heads included

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None: ...  # route forward through DDP

    def num_batches(self, epoch: int) -> int: ...  # batches this rank sees in ``epoch``

    def windows_per_epoch(self) -> int: ...  # training examples per epoch, all ranks together

    def on_epoch_start(self, epoch: int) -> dict[str, Any]: ...  # hook (e.g. hard-negative mining)

    def train_batches(self, epoch: int, start_batch: int) -> Iterator[Any]: ...  # batches start_batch..

    def batch_size_of(self, batch: Any) -> int: ...

    def loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]: ...  # (scalar, parts)

    def evaluate(self, split: str = "val") -> dict[str, float]: ...  # model metrics + baselines'

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


# ------------------------------------------------------------------------------------------ the loop
def train(
    cfg: RunConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    task: Task | None = None,
    on_event: Event | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` into the run directory ``out``; returns the final status.json contents.

    ``task`` replaces the one the config names (tests inject tasks this way); ``on_event(kind, info)`` receives
    "start", "step", "epoch" and "end" events (the CLI turns them into a progress bar).
    """
    run = RunPaths(Path(out))
    dist = D.init_distributed(cfg.device)
    main = dist.is_main
    emit = on_event if (on_event is not None and main) else (lambda kind, info: None)
    owns_run = False  # set once the run directory is ours to mark "failed"
    lock = None
    try:
        # 1. The run directory: locked (one writer), a fresh one gets config.yaml; a resume must match it.
        check_gate_epochs(cfg)
        if main:
            lock = lock_run(run)
            cfg = prepare_run_dir(run, cfg, resume)
            owns_run = True
        cfg = D.broadcast_from_main(cfg, dist)
        seed_everything(cfg.seed + dist.rank, deterministic=dist.device.type == "cpu")
        np_rng = np.random.default_rng(cfg.seed + dist.rank)

        # 2. The task (model, data, loss) and the optimiser around it.
        if task is None:
            task = build_task(cfg, run, dist, np_rng, resume)
        modules = task.modules().to(dist.device)
        if dist.enabled:
            task.distribute(lambda m: D.wrap_ddp(m, dist))
        opt = make_optimizer(modules, cfg.optim.lr, cfg.optim.weight_decay)
        accum = cfg.optim.grad_accum
        n_batches = task.num_batches(1)
        steps_per_epoch = math.ceil(n_batches / accum)
        total_steps = steps_per_epoch * cfg.optim.epochs
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, warmup_cosine(cfg.optim.warmup_steps, total_steps, cfg.optim.min_lr_ratio)
        )
        use_amp = cfg.optim.amp and dist.device.type == "cuda"
        amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

        # 3. Resume: weights, optimiser, schedule, task state, RNG, position, history.
        p = Progress()
        if resume and run.last.exists():
            ckpt = load_checkpoint(run.last, map_location=dist.device)
            for name, module in modules.items():
                module.load_state_dict(ckpt["modules"][name])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            task.load_state_dict(ckpt["task"])
            set_rng_state(ckpt["rng"], np_rng)
            p = Progress(**ckpt["progress"])
            if main:
                truncate_history(run, p.history_rows)
                log(run, f"resumed from {run.last.name}: epoch {p.epoch}, batch {p.batch}, step {p.step}")
            del ckpt
        elif resume and main:  # killed before the first checkpoint: start over, keep nothing of the first try
            truncate_history(run, 0)
            log(run, "resume: no last.pt yet, starting from the beginning")

        def checkpoint(path: Path) -> None:
            save_checkpoint(
                path,
                {
                    "modules": {name: m.state_dict() for name, m in modules.items()},
                    **task.provenance(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "scaler": scaler.state_dict(),
                    "task": task.state_dict(),
                    "rng": rng_state(np_rng),
                    "progress": asdict(p),
                    "config": cfg.model_dump(mode="json"),
                },
            )

        windows_per_epoch = task.windows_per_epoch()
        if main:
            write_status(
                run,
                "running",
                pid=os.getpid(),
                started=now(),
                epoch=p.epoch,
                epochs=cfg.optim.epochs,
                step=p.step,
                total_steps=total_steps,
                windows_per_epoch=windows_per_epoch,
                windows_done_in_epoch=p.windows * dist.world_size,
                world_size=dist.world_size,
                message=None,
            )
            log(
                run,
                f"training {cfg.task}/{cfg.model.name}: {cfg.optim.epochs} epochs x {steps_per_epoch} steps, "
                f"{windows_per_epoch} windows per epoch, device {dist.device}, world size {dist.world_size}",
            )
        emit(
            "start",
            {
                "epoch": p.epoch,
                "step": p.step,
                "total_steps": total_steps,
                "steps_per_epoch": steps_per_epoch,
            },
        )
        throttle = float(os.environ.get(THROTTLE_ENV, "0") or 0)
        last_grad_norm: float | None = None

        if main and cfg.early_stopping.from_start and p.step == 0 and p.best is None:
            start_candidate(
                task, cfg, run, p, checkpoint
            )  # epoch 0: the untrained model competes for best.pt

        # 4. Epochs.
        decision: dict[str, Any] = {}  # the last end-of-epoch decision (stop, message, error)
        while p.epoch <= cfg.optim.epochs and p.stop is None:
            epoch = p.epoch
            hook_info = task.on_epoch_start(epoch)
            if main and hook_info:
                log(run, f"epoch {epoch} start: " + ", ".join(f"{k}={v}" for k, v in hook_info.items()))
            n_batches = task.num_batches(epoch)
            modules.train()
            opt.zero_grad(set_to_none=True)
            tick, tick_windows = time.perf_counter(), 0
            for batch in task.train_batches(epoch, p.batch):
                autocast = torch.autocast("cuda", dtype=amp_dtype) if use_amp else contextlib.nullcontext()
                with autocast:
                    loss, parts = task.loss(batch)
                # NaN / inf: stop before this step touches the weights (all ranks stop together).
                if D.any_rank(not bool(torch.isfinite(loss.detach())), dist):
                    if main:
                        save_checkpoint(
                            run.nan,
                            {
                                "modules": {n: m.state_dict() for n, m in modules.items()},
                                **task.provenance(),
                                "progress": asdict(p),
                                "config": cfg.model_dump(mode="json"),
                            },
                        )
                        write_nan_triage(
                            run.root,
                            cfg,
                            epoch,
                            p.step,
                            p.batch,
                            float(loss.detach()),
                            parts,
                            sched.get_last_lr()[0],
                            last_grad_norm,
                        )
                        log(run, f"STOP: non-finite loss at step {p.step + 1} (epoch {epoch}); see triage.md")
                    return finish(
                        run,
                        "stopped_nan",
                        emit,
                        main,
                        p,
                        dist,
                        message=f"non-finite loss at step {p.step + 1}",
                    )
                scaler.scale(loss / accum).backward()
                n = task.batch_size_of(batch)
                p.batch += 1
                p.windows += n
                tick_windows += n * dist.world_size
                p.sums["loss"] = p.sums.get("loss", 0.0) + float(loss.detach())
                for k, v in parts.items():
                    p.sums[k] = p.sums.get(k, 0.0) + float(v)
                p.sums["batches"] = p.sums.get("batches", 0.0) + 1
                if p.batch % accum and p.batch < n_batches:
                    continue  # accumulate more micro-batches before stepping
                # One optimiser step.
                scaler.unscale_(opt)
                if cfg.optim.clip_norm is not None:
                    last_grad_norm = float(
                        nn.utils.clip_grad_norm_(modules.parameters(), cfg.optim.clip_norm)
                    )
                scaler.step(opt)
                scaler.update()
                sched.step()
                opt.zero_grad(set_to_none=True)
                p.step += 1
                if throttle:
                    time.sleep(throttle)
                if main and p.step % cfg.log_every_steps == 0:
                    elapsed = time.perf_counter() - tick
                    row = {
                        "kind": "step",
                        "epoch": epoch,
                        "step": p.step,
                        "batch": p.batch,
                        "lr": sched.get_last_lr()[0],
                        "grad_norm": last_grad_norm,
                        **{k: v for k, v in parts.items()},
                        "loss": float(loss.detach()),
                        "windows_per_s": tick_windows / max(elapsed, 1e-9),
                        "time": now(),
                    }
                    append_jsonl(run.history, row)
                    p.history_rows += 1
                    write_status(
                        run,
                        "running",
                        epoch=epoch,
                        step=p.step,
                        windows_done_in_epoch=p.windows * dist.world_size,
                    )
                    tick, tick_windows = time.perf_counter(), 0
                emit(
                    "step",
                    {
                        "epoch": epoch,
                        "step": p.step,
                        "batch": p.batch,
                        "n_batches": n_batches,
                        "loss": float(loss.detach()),
                        "lr": sched.get_last_lr()[0],
                    },
                )
                if main and cfg.checkpoint_every_steps and p.step % cfg.checkpoint_every_steps == 0:
                    checkpoint(run.last)

            # 5. End of epoch: validate (rank 0), record, early stopping, gates, checkpoints.
            decision = {"stop": None, "error": None}
            train_windows = D.sum_ranks(p.windows, dist)
            if main:
                try:
                    nb = max(p.sums.get("batches", 0.0), 1.0)
                    metrics: dict[str, Any] = {
                        "kind": "epoch",
                        "epoch": epoch,
                        "step": p.step,
                        "lr": sched.get_last_lr()[0],
                        "train_windows": train_windows,
                    }
                    metrics.update({f"train_{k}": v / nb for k, v in p.sums.items() if k != "batches"})
                    t0 = time.perf_counter()
                    metrics.update({f"val_{k}": v for k, v in task.evaluate("val").items()})
                    metrics.update(eval_s=time.perf_counter() - t0, time=now())
                    metric, mode = cfg.early_stopping.metric, cfg.early_stopping.mode
                    if metric not in metrics:
                        raise ConfigError(
                            f"early_stopping.metric={metric!r} is not measured; available: "
                            + ", ".join(k for k in metrics if isinstance(metrics[k], float))
                        )
                    value = float(metrics[metric])
                    improved = p.best is None or (value > p.best if mode == "max" else value < p.best)
                    if improved:
                        p.best, p.best_epoch, p.bad_epochs = value, epoch, 0
                    else:
                        p.bad_epochs += 1
                    metrics.update(best=p.best, best_epoch=p.best_epoch)
                    append_jsonl(run.history, metrics)
                    p.history_rows += 1
                    log(run, epoch_line(metrics, metric))
                    rules = gate_rules(cfg.gates, epoch)
                    report = check_gates(metrics, rules) if rules else None
                    # A task may have its own stop rule (the two-tower abort): should_stop(epoch, metrics) returns
                    # None or the reason, having written its own triage.md. The run then stops like a failed gate.
                    stop_rule = getattr(task, "should_stop", None)
                    if report is not None and not report.ok:
                        decision["stop"] = "stopped_gate"
                        write_gate_triage(
                            run.root, cfg, epoch, report.to_markdown(), metrics, read_jsonl(run.history)
                        )
                        log(run, f"STOP: gate failed after epoch {epoch}; see triage.md")
                    elif callable(stop_rule) and (reason := stop_rule(epoch, metrics)):
                        decision["stop"], decision["message"] = "stopped_gate", f"{reason}; see triage.md"
                        log(run, f"STOP after epoch {epoch}: {reason}; see triage.md")
                    elif cfg.early_stopping.patience and p.bad_epochs >= cfg.early_stopping.patience:
                        decision["stop"] = "early_stopped"
                        log(
                            run,
                            f"early stop: {metric} has not improved for {p.bad_epochs} epochs "
                            f"(best {p.best:.4f} at epoch {p.best_epoch})",
                        )
                    # The position after this epoch; then best.pt (when improved) and last.pt.
                    p.epoch, p.batch, p.windows, p.sums, p.stop = epoch + 1, 0, 0, {}, decision["stop"]
                    if improved:
                        checkpoint(run.best)
                    checkpoint(run.last)
                    write_status(
                        run,
                        "running",
                        epoch=min(p.epoch, cfg.optim.epochs),
                        step=p.step,
                        windows_done_in_epoch=0,
                        best_metric=metric,
                        best_value=p.best,
                        best_epoch=p.best_epoch,
                    )
                    emit("epoch", metrics)
                except LvmkitError as e:
                    decision["error"] = str(e)
            decision = D.broadcast_from_main(decision, dist)
            if decision["error"]:
                raise ConfigError(decision["error"]) if main else LvmkitError("rank 0 stopped the run")
            if not main:  # keep the other ranks' positions in step with rank 0's
                p.epoch, p.batch, p.windows, p.sums, p.stop = epoch + 1, 0, 0, {}, decision["stop"]

        # 6. The end: final evaluation of the best checkpoint on the test split.
        state = p.stop or "finished"
        if state == "stopped_gate":
            message = decision.get("message") or "a gate failed; see triage.md"
            return finish(run, state, emit, main, p, dist, message=message)
        if main and cfg.final_eval:
            if run.best.exists():
                best = load_checkpoint(run.best, map_location=dist.device)
                for name, module in modules.items():
                    module.load_state_dict(best["modules"][name])
            summary = task.final_eval(run)
            log(run, "final evaluation on the test split written to metrics.json / metrics.md")
            write_status(run, "running", final=summary)
        return finish(run, state, emit, main, p, dist)
    except Exception as e:
        if owns_run:
            write_status(run, "failed", message=f"{type(e).__name__}: {e}")
        raise
    finally:
        if lock is not None:
            lock.release()
        D.shutdown(dist)


def start_candidate(task: Task, cfg: RunConfig, run: RunPaths, p: Progress, checkpoint) -> None:
    """``early_stopping.from_start``: score the untrained model on val as epoch 0 (a history row) and save it
    as best.pt, so the best checkpoint is chosen among epochs 0..N on val."""
    metrics = {f"val_{k}": v for k, v in task.evaluate("val").items()}
    metric = cfg.early_stopping.metric
    if metric not in metrics:
        return  # the first epoch's check names the problem
    p.best, p.best_epoch = float(metrics[metric]), 0
    append_jsonl(
        run.history,
        {"kind": "epoch", "epoch": 0, "step": 0, **metrics, "best": p.best, "best_epoch": 0, "time": now()},
    )
    p.history_rows += 1
    log(run, f"epoch 0 (untrained start) | {metric} {p.best:.4f}")
    checkpoint(run.best)


def finish(
    run: RunPaths,
    state: str,
    emit: Event,
    main: bool,
    p: Progress,
    dist: D.DistInfo,
    message: str | None = None,
) -> dict[str, Any]:
    """Record the final state of the run and tell the caller."""
    if not main:
        return {"state": state}
    status = write_status(
        run, state, step=p.step, best_value=p.best, best_epoch=p.best_epoch, message=message, finished=now()
    )
    log(run, f"run {state}" + (f": {message}" if message else ""))
    emit("end", status)
    return status


# ------------------------------------------------------------------------------------------- helpers
def prepare_run_dir(run: RunPaths, cfg: RunConfig, resume: bool) -> RunConfig:
    """A fresh run needs an empty (or new) directory; a resume needs the same config (see RESUMABLE_CHANGES)."""
    if not resume:
        if run.status.exists() or run.last.exists():
            raise ConfigError(
                f"{run.root} already holds a run; continue it with --resume or choose another --out"
            )
        run.root.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.config)
        return cfg
    if not run.config.exists():
        raise ConfigError(
            f"--resume: {run.root} has no config.yaml, so it is not a run made by `lvmkit train`"
        )
    saved = load_config(run.config)
    changed = [f for f in config_diff(saved, cfg) if not f.startswith(RESUMABLE_CHANGES)]
    if changed:
        raise ConfigError(
            f"--resume: the config differs from the run's {run.config} in {', '.join(changed)}; these change "
            f"what is trained, so start a new run instead (only {', '.join(RESUMABLE_CHANGES)} may change)"
        )
    if run.status.exists():
        state = read_json(run.status).get("state")
        if state in ("stopped_gate", "stopped_nan"):
            raise ConfigError(
                f"--resume: {run.root} {state.replace('_', ' at a ')}; resuming would stop again. "
                f"Read {run.triage} and start a new run with the suggested change."
            )
        if state in ("finished", "early_stopped") and (not cfg.final_eval or run.metrics_json.exists()):
            last = load_checkpoint(run.last) if run.last.exists() else None
            if last is None or last["progress"]["epoch"] > cfg.optim.epochs or last["progress"]["stop"]:
                raise ConfigError(
                    f"--resume: {run.root} has already {state.replace('_', ' ')}; nothing to do"
                )
    if cfg != saved:
        save_config(cfg, run.config)
        log(run, "config changed on resume: " + ", ".join(config_diff(saved, cfg)))
    return cfg


def build_task(
    cfg: RunConfig, run: RunPaths, dist: D.DistInfo, rng: np.random.Generator, resume: bool
) -> Task:
    """Instantiate the task class registered for ``cfg.task``."""
    if cfg.task not in TASKS:
        raise ConfigError(f"task={cfg.task!r} is not available in this lvmkit; available: {', '.join(TASKS)}")
    module_name, _, class_name = TASKS[cfg.task].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls.from_config(cfg, run=run, dist=dist, rng=rng, resume=resume)


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


def truncate_history(run: RunPaths, rows: int) -> None:
    """Drop history rows written after the checkpoint we resume from (they will be written again)."""
    kept = read_jsonl(run.history)[:rows]
    write_text(run.history, "".join(json.dumps(r) + "\n" for r in kept))


def log(run: RunPaths, line: str) -> None:
    """Append one human-readable line to train.log."""
    run.root.mkdir(parents=True, exist_ok=True)
    with open(run.log, "a", encoding="utf-8") as fh:
        fh.write(f"{now()} {line}\n")


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
