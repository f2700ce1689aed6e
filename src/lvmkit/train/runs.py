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
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from lvmkit import locking
from lvmkit.artifacts import read_json, read_jsonl, write_json, write_text
from lvmkit.errors import ArtifactError, ConfigError, LvmkitError

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


# Fields that may change between a run and its resume: they do not alter the trajectory already trained.
RESUMABLE_CHANGES = (
    "optim.epochs",
    "final_eval",
    "checkpoint_every_steps",
    "log_every_steps",
    "gates",
    "early_stopping.patience",
)


def claim_run_dir(run: RunPaths, cfg, resume: bool, overwrite: bool = False):
    """Make ``run`` this process's run directory: take its lock (one writer; ``LockedError`` naming the
    holder), then ``prepare_run_dir``. Returns (the config to train, the lock to release at the end)."""
    lock = lock_run(run)
    try:
        return prepare_run_dir(run, cfg, resume, overwrite), lock
    except BaseException:
        lock.release()
        raise


def prepare_run_dir(run: RunPaths, cfg, resume: bool, overwrite: bool = False):
    """A fresh run needs a new or empty directory, or ``overwrite``, or a failed run that never wrote a
    checkpoint (restarted with the corrected config); a resume needs the same config (RESUMABLE_CHANGES
    aside) and its last.pt whenever the run wrote one."""
    if not resume:
        if holds_run(run):
            if not (overwrite or failed_before_checkpoint(run)):
                raise ConfigError(
                    f"{run.root} already holds a run; continue it with --resume, start it over with --overwrite, "
                    "or choose another --out"
                )
            clear_run(run)
        run.root.mkdir(parents=True, exist_ok=True)
        _save_config(cfg, run.config)
        return cfg
    if overwrite:
        raise ConfigError("--resume continues a run and --overwrite starts it over: give one of them")
    saved = _check_resumable(run, cfg)
    if cfg != saved:
        from lvmkit.train.config import config_diff

        _save_config(cfg, run.config)
        log(run, "config changed on resume: " + ", ".join(config_diff(saved, cfg)))
    return cfg


def _check_resumable(run: RunPaths, cfg):
    """The run's saved config, after refusing a resume that would not continue it (see prepare_run_dir)."""
    from lvmkit.train.config import config_diff, load_config

    if not run.config.exists():
        raise ConfigError(
            f"--resume: {run.root} has no config.yaml, so it is not a run made by `lvmkit train`"
        )
    saved = load_config(run.config)
    changed = [f for f in config_diff(saved, cfg) if not f.startswith(RESUMABLE_CHANGES)]
    if changed and failed_before_checkpoint(run):
        return saved  # nothing was trained yet: the corrected config starts it (the caller saves it)
    if changed:
        raise ConfigError(
            f"--resume: the config differs from the run's {run.config} in {', '.join(changed)}; these change "
            f"what is trained, so start a new run instead (only {', '.join(RESUMABLE_CHANGES)} may change)"
        )
    if not run.last.exists() and wrote_checkpoint(run):
        raise ArtifactError(
            f"--resume: {run.last} is missing, but this run wrote it (it has trained {_trained(run)}): starting "
            f"over would overwrite best.pt and history.jsonl. Restore {run.last}, or start the run over with "
            f"`lvmkit train CONFIG --out {run.root} --overwrite`"
        )
    state = status_state(run)
    if state in ("stopped_gate", "stopped_nan"):
        raise ConfigError(
            f"--resume: {run.root} {state.replace('_', ' at a ')}; resuming would stop again. "
            f"Read {run.triage} and start a new run with the suggested change."
        )
    if state in ("finished", "early_stopped") and (not cfg.final_eval or run.metrics_json.exists()):
        last = load_last(run) if run.last.exists() else None
        if last is None or last["progress"]["epoch"] > cfg.optim.epochs or last["progress"]["stop"]:
            raise ConfigError(f"--resume: {run.root} has already {state.replace('_', ' ')}; nothing to do")
    return saved


def load_last(run: RunPaths, map_location: Any = "cpu") -> dict[str, Any]:
    """The run's last.pt for --resume; a damaged one is named with the two ways out."""
    from lvmkit.train.checkpoint import load_checkpoint

    try:
        return load_checkpoint(run.last, map_location=map_location)
    except ArtifactError as e:
        raise ArtifactError(
            f"--resume: {e}. Restore {run.last} from a copy, or start the run over with "
            f"`lvmkit train CONFIG --out {run.root} --overwrite`"
        ) from None


def check_checkpoint_config(run: RunPaths, ckpt: dict[str, Any], cfg) -> None:
    """last.pt stores the config it was trained with; a config.yaml that differs from it in what is trained
    (edited, or damaged: a truncated YAML still parses, with defaults) is refused before any weight loads."""
    from lvmkit.train.config import config_diff, config_from_dict

    try:
        trained = config_from_dict(ckpt["config"], source=str(run.last))
    except (KeyError, TypeError, LvmkitError):
        return  # an older checkpoint without a readable config: the weights' own shapes decide
    changed = [f for f in config_diff(trained, cfg) if not f.startswith(RESUMABLE_CHANGES)]
    if changed:
        raise ArtifactError(
            f"--resume: {run.config} differs from the config {run.last} was trained with in {', '.join(changed)}: "
            f"config.yaml was edited or damaged. Restore it (last.pt holds the original under 'config'), or "
            f"start the run over with `lvmkit train CONFIG --out {run.root} --overwrite`"
        )


def _save_config(cfg, path: Path) -> None:
    from lvmkit.train.config import save_config

    save_config(cfg, path)


def still_training(run: RunPaths) -> str | None:
    """ "still training (epoch E of N, HOLDER)" while a live process trains the run (its lock is held and
    status.json says running), else None."""
    h, state = locking.holder(run.root)
    if state != "held" or not run.status.exists():
        return None
    status = status_dict(run)
    if status.get("state") != "running":
        return None
    where = f"epoch {status.get('epoch', '?')} of {status.get('epochs', '?')}"
    return f"still training ({where}, {h.describe()})" if h else f"still training ({where})"


def holds_run(run: RunPaths) -> bool:
    return run.status.exists() or run.last.exists()


def wrote_checkpoint(run: RunPaths) -> bool:
    """Whether the run ever wrote last.pt (status.json records the step of every checkpoint; a run of an
    older lvmkit: best.pt or an epoch row in history.jsonl)."""
    status = status_dict(run)
    if status.get("checkpoint_step") is not None or run.best.exists():
        return True
    return any(r.get("kind") == "epoch" for r in read_jsonl(run.history))


def failed_before_checkpoint(run: RunPaths) -> bool:
    """A run that failed (or was killed) before its first checkpoint: nothing to keep, safe to restart. Asked
    only while holding the run's lock, so a "running" state is a process that died."""
    if run.last.exists() or wrote_checkpoint(run):
        return False
    state = status_state(run)
    return state in (None, "failed", "running")


def _trained(run: RunPaths) -> str:
    status = status_dict(run)
    return f"up to step {status.get('checkpoint_step') or status.get('step', '?')}"


def clear_run(run: RunPaths) -> None:
    """Remove what a run wrote into its directory (every file but the lock), to start it over."""
    for p in run.root.iterdir():
        if p.name == locking.LOCK_FILE:
            continue
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def truncate_history(run: RunPaths, rows: int) -> None:
    """Drop history rows written after the checkpoint we resume from (they will be written again)."""
    kept = read_jsonl(run.history)[:rows]
    write_text(run.history, "".join(json.dumps(r) + "\n" for r in kept))


def log(run: RunPaths, line: str) -> None:
    """Append one human-readable line to train.log."""
    run.root.mkdir(parents=True, exist_ok=True)
    with open(run.log, "a", encoding="utf-8") as fh:
        fh.write(f"{now()} {line}\n")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_status(run: RunPaths, state: str, **fields: Any) -> dict[str, Any]:
    """Update status.json (fields not given keep their previous values); returns the new status."""
    if state not in STATES:
        raise ValueError(f"unknown run state {state!r}; allowed: {', '.join(STATES)}")
    status = status_dict(run)  # a damaged one is rewritten from scratch
    status.update(fields)
    status.update(state=state, updated=now())
    write_json(run.status, status)
    return status


def read_status(run: RunPaths) -> dict[str, Any]:
    try:
        return read_json(run.status)
    except FileNotFoundError:
        raise ArtifactError(f"{run.root} is not a run directory (no status.json)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(
            f"{run.status} is damaged (not valid JSON: {e}); `lvmkit train --out {run.root} --resume` rewrites it "
            "(the run's progress is in last.pt)"
        ) from None


def status_dict(run: RunPaths) -> dict[str, Any]:
    """status.json, or {} when it is missing or damaged (it only mirrors the run's progress: writers replace
    it, and decisions fall back to the checkpoints)."""
    try:
        return read_status(run)
    except ArtifactError:
        return {}


def status_state(run: RunPaths) -> str | None:
    """The run's recorded state, or None when status.json is missing or damaged."""
    return status_dict(run).get("state")


def pid_alive(pid: int | None) -> bool:
    """True when a process with this id exists and is not a zombie."""
    if not pid:
        return False
    try:
        return psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


PROGRESS_FIELDS = (
    "epoch",
    "epochs",
    "step",
    "best_metric",
    "best_value",
    "best_epoch",
    "latest",
    "windows_per_s",
    "eta_s",
    "message",
)


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

    def progress(self) -> dict[str, Any]:
        """The training-progress fields by name (``PROGRESS_FIELDS``): what the runs API shows of a run
        beside its name, state and liveness (``lvmkit.serve.runs.summary_out``)."""
        return {k: getattr(self, k) for k in PROGRESS_FIELDS}


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
