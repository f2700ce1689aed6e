"""Run directories: what a run leaves on disk, and how ``lvmkit runs`` reads it back.

    RUN/
      config.yaml     the resolved RunConfig (every field)
      split.json      the article-disjoint split the run trained on
      status.json     state + where the run is (epoch, step, pid, best metric, windows per epoch)
      history.jsonl   one row per epoch ("kind": "epoch") and every N steps ("kind": "step")
      train.log       human-readable lines
      last.pt         latest checkpoint (epoch ends and every checkpoint_every_steps)
      best.pt         checkpoint with the best early-stopping metric
      nan.pt          weights at a non-finite loss (only after a NaN stop)
      triage.md       why the run stopped and what to try (gate failure or NaN)
      metrics.json/md final evaluation on the test split beside the baselines
      train.pid       process id of a detached run;  stdout.log  its console output
      .lvmkit.lock    held while a process trains the run (lvmkit.locking): a second writer is refused

``status.json["state"]`` is one of STATES. A run whose state is "running" but whose process is gone was
killed (or crashed hard); ``lvmkit train ... --resume`` continues it from last.pt.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from lvmkit import locking
from lvmkit.artifacts import read_json, read_jsonl, write_json
from lvmkit.errors import ArtifactError

STATES = ("running", "finished", "stopped_gate", "stopped_nan", "early_stopped", "failed")


@dataclass(frozen=True)
class RunPaths:
    """File names inside one run directory."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    config = property(lambda self: self.root / "config.yaml")
    split = property(lambda self: self.root / "split.json")
    status = property(lambda self: self.root / "status.json")
    history = property(lambda self: self.root / "history.jsonl")
    log = property(lambda self: self.root / "train.log")
    last = property(lambda self: self.root / "last.pt")
    best = property(lambda self: self.root / "best.pt")
    nan = property(lambda self: self.root / "nan.pt")
    triage = property(lambda self: self.root / "triage.md")
    metrics_json = property(lambda self: self.root / "metrics.json")
    metrics_md = property(lambda self: self.root / "metrics.md")
    pid = property(lambda self: self.root / "train.pid")
    stdout = property(lambda self: self.root / "stdout.log")


def lock_run(run: RunPaths) -> locking.Lock:
    """Take the run directory's lock for training (``LockedError`` naming the holder if another has it)."""
    return locking.acquire(
        run.root, "training", "run", hint=f"Follow it with `lvmkit runs status {run.root}`."
    )


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_status(run: RunPaths, state: str, **fields: Any) -> dict[str, Any]:
    """Update status.json (fields not given keep their previous values); returns the new status."""
    if state not in STATES:
        raise ValueError(f"unknown run state {state!r}; allowed: {', '.join(STATES)}")
    status = read_status(run) if run.status.exists() else {}
    status.update(fields)
    status.update(state=state, updated=now())
    write_json(run.status, status)
    return status


def read_status(run: RunPaths) -> dict[str, Any]:
    try:
        return read_json(run.status)
    except FileNotFoundError:
        raise ArtifactError(f"{run.root} is not a run directory (no status.json)") from None
    except ValueError as e:
        raise ArtifactError(f"{run.status} is not valid JSON: {e}") from e


def pid_alive(pid: int | None) -> bool:
    """True when a process with this id exists and is not a zombie."""
    if not pid:
        return False
    try:
        return psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


@dataclass
class RunSummary:
    """What ``lvmkit runs status/list`` shows for one run."""

    path: Path
    state: str
    alive: bool
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    best_metric: str | None = None
    best_value: float | None = None
    best_epoch: int | None = None
    latest: dict[str, Any] = field(default_factory=dict)  # the last epoch row of history.jsonl
    windows_per_s: float | None = None
    eta_s: float | None = None
    message: str | None = None
    lock: locking.Holder | None = None  # who holds (or last held) RUN/.lvmkit.lock
    lock_state: str = "free"  # free | held | stale | unknown (see lvmkit.locking.holder)

    @property
    def display_state(self) -> str:
        """``running`` only when the process is alive; a dead "running" run was interrupted."""
        if self.state == "running" and not self.alive:
            return "interrupted"
        return self.state


def summarize(run_dir: str | os.PathLike) -> RunSummary:
    """Read status.json and history.jsonl of one run. ETA counts training windows only (not evaluation)."""
    run = RunPaths(Path(run_dir))
    st = read_status(run)
    rows = read_jsonl(run.history)
    epochs_done = [r for r in rows if r.get("kind") == "epoch"]
    steps = [r for r in rows if r.get("kind") == "step"]
    rate = steps[-1].get("windows_per_s") if steps else None
    summary = RunSummary(
        path=run.root,
        state=st.get("state", "running"),
        alive=pid_alive(st.get("pid")),
        epoch=st.get("epoch"),
        epochs=st.get("epochs"),
        step=st.get("step"),
        best_metric=st.get("best_metric"),
        best_value=st.get("best_value"),
        best_epoch=st.get("best_epoch"),
        latest=epochs_done[-1] if epochs_done else {},
        windows_per_s=rate,
        message=st.get("message"),
    )
    summary.lock, summary.lock_state = locking.holder(run.root)
    if summary.display_state == "running" and rate:
        summary.eta_s = remaining_windows(st) / rate
    return summary


def remaining_windows(status: dict[str, Any]) -> int:
    """Training windows left: the rest of the current epoch plus the epochs after it."""
    per_epoch = int(status.get("windows_per_epoch") or 0)
    epoch, epochs = int(status.get("epoch") or 1), int(status.get("epochs") or 1)
    done_in_epoch = int(status.get("windows_done_in_epoch") or 0)
    return max(0, per_epoch - done_in_epoch) + max(0, epochs - epoch) * per_epoch


def list_runs(root: str | os.PathLike) -> list[RunSummary]:
    """Every run directory directly under ``root`` (those with a status.json), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise ArtifactError(f"{root} is not a directory of runs")
    out = []
    for d in sorted(p for p in root.iterdir() if (p / "status.json").is_file()):
        try:
            out.append(summarize(d))
        except ArtifactError as e:  # one broken run must not hide the others
            out.append(RunSummary(path=d, state="unreadable", alive=False, message=str(e)))
    return out


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def launch_detached(argv: list[str], run_dir: str | os.PathLike) -> int:
    """Start ``python -m lvmkit.cli.main *argv`` in a new session that outlives this one.

    Its stdout and stderr go to RUN/stdout.log and its process id to RUN/train.pid; returns the pid.
    """
    import subprocess
    import sys

    run = RunPaths(Path(run_dir))
    run.root.mkdir(parents=True, exist_ok=True)
    with open(run.stdout, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lvmkit.cli.main", *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    from lvmkit.artifacts import write_text

    write_text(run.pid, f"{proc.pid}\n")
    return proc.pid
