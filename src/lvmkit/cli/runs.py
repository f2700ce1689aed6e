"""``lvmkit runs status RUN`` and ``lvmkit runs list DIR``: where training runs stand."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from lvmkit.cli.common import console, make_app

runs_app = make_app(help="Inspect training runs (status.json, history.jsonl).")

STATE_STYLE = {
    "running": "cyan",
    "finished": "green",
    "early_stopped": "green",
    "stopped_gate": "yellow",
    "stopped_nan": "red",
    "failed": "red",
    "interrupted": "magenta",
}


def _lock_note(s) -> str:
    """Who holds RUN/.lvmkit.lock: ``held by pid 42 on host h since ... (training: lvmkit train ...)``."""
    if s.lock_state == "free" or (s.lock is None and s.lock_state == "stale"):
        return "free"
    if s.lock_state == "held":
        return f"held by {s.lock.describe()}"
    if s.lock_state == "stale":
        return f"stale (pid {s.lock.pid} is gone; the next `lvmkit train --resume` takes it over)"
    return f"written on another host: {s.lock.describe()}"


def _writer(s) -> str:
    """Short form for the runs table: ``pid 42@host`` while a writer holds the run."""
    if s.lock is None or s.lock_state == "free":
        return "-"
    return f"pid {s.lock.pid}@{s.lock.host}" + ("" if s.lock_state == "held" else f" ({s.lock_state})")


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


@runs_app.command("status")
def status(run: Path = typer.Argument(..., help="A run directory made by `lvmkit train --out RUN`.")) -> None:
    """Show one run: state, whether its process is alive, epoch and step, latest and best metrics, ETA.

    Example: lvmkit runs status runs/gru
    """
    from lvmkit.train.runs import RunPaths, format_duration, summarize

    s = summarize(run)
    paths = RunPaths(run)
    state = s.display_state
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("run", str(s.path))
    table.add_row(
        "state", f"[{STATE_STYLE.get(state, 'white')}]{state}[/]" + (f" ({s.message})" if s.message else "")
    )
    pid_note = "alive" if s.alive else "not running"
    table.add_row("process", pid_note)
    table.add_row("lock", _lock_note(s))
    table.add_row("epoch", f"{_fmt(s.epoch)} / {_fmt(s.epochs)}")
    table.add_row("step", _fmt(s.step))
    if s.best_metric:
        table.add_row("best", f"{s.best_metric} = {_fmt(s.best_value)} (epoch {_fmt(s.best_epoch)})")
    latest = s.latest
    if latest:
        shown = [k for k in ("train_loss", s.best_metric, "val_hit@5", "val_cos") if k and k in latest]
        for key in dict.fromkeys(shown):
            base = latest.get(key.replace("val_", "val_copy_last_", 1)) if key.startswith("val_") else None
            table.add_row(
                f"{key} (epoch {latest['epoch']})",
                _fmt(latest[key]) + (f"  (copy_last {_fmt(base)})" if base is not None else ""),
            )
    if s.windows_per_s:
        table.add_row("speed", f"{s.windows_per_s:,.0f} windows/s")
    if s.eta_s is not None:
        table.add_row("eta", format_duration(s.eta_s) + " (training only)")
    for label, path in (("triage", paths.triage), ("test results", paths.metrics_md)):
        if path.exists():
            table.add_row(label, str(path))
    console.print(table)


@runs_app.command("list")
def list_(root: Path = typer.Argument(Path("runs"), help="Directory holding run directories.")) -> None:
    """List the runs under a directory with their state and best metric.

    Example: lvmkit runs list runs/
    """
    from lvmkit.train.runs import list_runs

    runs = list_runs(root)
    if not runs:
        console.print(f"no runs under {root}")
        return
    table = Table(title=f"runs in {root}")
    for col in ("run", "state", "epoch", "step", "best", "latest val_hit@5", "writer"):
        table.add_column(col)
    for s in runs:
        state = s.display_state
        best = f"{s.best_metric} {_fmt(s.best_value)} @{_fmt(s.best_epoch)}" if s.best_metric else "-"
        table.add_row(
            s.path.name,
            f"[{STATE_STYLE.get(state, 'white')}]{state}[/]",
            f"{_fmt(s.epoch)}/{_fmt(s.epochs)}",
            _fmt(s.step),
            best,
            _fmt(s.latest.get("val_hit@5")),
            _writer(s),
        )
    console.print(table)
