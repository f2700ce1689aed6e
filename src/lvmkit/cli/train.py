"""``lvmkit train``: train a model from a YAML config into a run directory."""

from __future__ import annotations

from pathlib import Path

import typer

from lvmkit.cli.common import console, err_console, make_progress

EXIT_STOPPED = 3  # the run stopped on a failed gate or a non-finite loss (see RUN/triage.md)


def train(
    config: Path = typer.Argument(
        None,
        help="YAML run config (see configs/). Left out: the run's config.yaml with --resume, else the defaults "
        "(then give at least --set bank=PATH).",
        show_default=False,
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Run directory to create (or to continue with --resume)."
    ),
    overrides: list[str] = typer.Option(
        [],
        "--set",
        "-s",
        help="Override one config field, e.g. --set optim.lr=3e-4 (repeatable; value is YAML).",
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out from its last checkpoint."
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Start over: delete the run already in --out (its checkpoints, history, metrics) and train anew. "
        "Not needed to restart a run that failed before its first checkpoint.",
    ),
    detach: bool = typer.Option(
        False, "--detach", help="Run in the background (RUN/stdout.log, RUN/train.pid); returns at once."
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="No progress bar (epoch lines are still printed)."
    ),
) -> None:
    """Train a model: LVM (next-chunk prediction) or two-tower, as the config's `task` says.

    The run directory gets config.yaml, split.json, history.jsonl, train.log, status.json, last.pt/best.pt and,
    at the end, metrics.json/metrics.md (test split, beside the baselines). A failed gate or a NaN loss stops
    the run with RUN/triage.md (exit status 3). Multi-process: `torchrun --nproc_per_node=2 -m lvmkit.cli.main
    train ...`.

    Example: lvmkit train configs/gru.yaml --out runs/gru --set optim.epochs=3
    """
    from lvmkit.train.config import load_config
    from lvmkit.train.loop import train as run_training
    from lvmkit.train.runs import RunPaths

    run = RunPaths(out)
    if config is None and resume:
        config = run.config
    cfg = load_config(config, overrides)  # a bad config fails here, before anything starts
    if detach:
        return _detach(cfg, config, out, overrides, resume, overwrite)
    progress = None if quiet else make_progress()
    try:
        status = run_training(cfg, out, resume=resume, overwrite=overwrite, on_event=_on_event(progress, cfg))
    finally:
        if progress is not None:
            progress.stop()
    _report(status, run, cfg)


def _detach(cfg, config: Path | None, out: Path, overrides: list[str], resume: bool, overwrite: bool) -> None:
    """Check what can be checked here (config, bank, model, windows, the directory), then train in the
    background."""
    from lvmkit.errors import ConfigError
    from lvmkit.train.loop import check_run
    from lvmkit.train.runs import RunPaths, failed_before_checkpoint, holds_run, launch_detached, lock_run

    run = RunPaths(out)
    check_run(cfg)  # a bad bank, model or window setting is refused here, not later in the background
    with lock_run(run):  # a run being trained is refused here too
        if not resume and holds_run(run) and not (overwrite or failed_before_checkpoint(run)):
            raise ConfigError(
                f"{out} already holds a run; continue it with --resume, start it over with --overwrite, "
                "or choose another --out"
            )
    argv = ["train", *([str(config)] if config is not None else []), "--out", str(out), "--quiet"]
    argv += [f"--set={o}" for o in overrides] + (["--resume"] if resume else [])
    argv += ["--overwrite"] if overwrite else []
    pid = launch_detached(argv, out)
    console.print(f"started pid {pid} in the background; output in {run.stdout}")
    console.print(f"follow it with: lvmkit runs status {out}")


def _on_event(progress, cfg):
    """The loop's events as a progress bar (steps) and one printed line per epoch."""
    bar = None

    def on_event(kind: str, info: dict) -> None:
        nonlocal bar
        if kind == "start" and progress is not None:
            progress.start()
            bar = progress.add_task(
                "training", total=info["total_steps"], completed=info["step"], unit="steps"
            )
        elif kind == "step" and progress is not None and bar is not None:
            progress.update(
                bar, completed=info["step"], description=f"epoch {info['epoch']} loss {info['loss']:.4f}"
            )
        elif kind == "epoch":
            _print_epoch(info, cfg.early_stopping.metric)

    return on_event


def _report(status: dict, run, cfg) -> None:
    """The final state, the best epoch, where the test results are; exit 3 when the run was stopped."""
    state = status.get("state")
    if state is None or state == "running":  # a non-zero rank under torchrun: rank 0 reports
        return
    console.print(
        f"run {run.root}: [bold]{state}[/bold]" + (f" ({status['message']})" if status.get("message") else "")
    )
    if status.get("best_value") is not None:
        console.print(
            f"best {cfg.early_stopping.metric} = {status['best_value']:.4f} at epoch {status.get('best_epoch')}"
        )
    if run.metrics_md.exists():
        console.print(f"test results: {run.metrics_md}")
    if state in ("stopped_gate", "stopped_nan"):
        err_console.print(f"[yellow]stopped: read {run.triage} for what to try next[/yellow]")
        raise typer.Exit(EXIT_STOPPED)


def _print_epoch(m: dict, metric: str) -> None:
    line = f"epoch {m['epoch']}: train_loss {m.get('train_loss', float('nan')):.4f}"
    for key in dict.fromkeys([metric, "val_hit@5"]):
        if isinstance(m.get(key), float):
            base = m.get(key.replace("val_", "val_copy_last_", 1))
            line += f"  {key} {m[key]:.4f}" + (f" (copy_last {base:.4f})" if isinstance(base, float) else "")
    err_console.print(line, highlight=False)
