"""The runs dashboard's data: training runs under ``--runs-dir``, read with lvmkit.train.runs and lvmkit.report.

    list_run_summaries(runs_dir)          # every run directly under runs_dir (state, epoch, best, latest)
    run_detail(runs_dir, "gru")           # + the history's epoch and step rows, gates, final metrics, config
    run_report_html(runs_dir, "gru")      # the run's HTML report, rendered in memory (no file is written)

A run is named by its directory's name, one path component: names with a separator, ``..``, a leading dot or
anything outside ``[A-Za-z0-9._-]`` are refused (RequestError), and the directory must exist directly under
``runs_dir`` (NotFoundError), so no request reaches a path outside it.
"""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path

from lvmkit.errors import ArtifactError, NotFoundError, RequestError
from lvmkit.serve.schemas import RunDetail, RunSummaryOut

RUN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")  # one path component, no leading dot
MAX_STEP_ROWS = 500


def run_dir(runs_dir: Path | None, name: str) -> Path:
    """The directory of run ``name`` under ``runs_dir``; refuses any name that is not one plain component."""
    if runs_dir is None:
        raise NotFoundError("this server was started without --runs-dir: it shows no runs")
    if not RUN_NAME.match(name) or ".." in name:
        raise RequestError(
            f"run name {name!r} is not valid: a directory name under the runs directory "
            "(letters, digits, '.', '_', '-'; no path separators)"
        )
    path = Path(runs_dir) / name
    if not (path / "status.json").is_file():
        known = ", ".join(p.name for p in sorted(Path(runs_dir).iterdir()) if (p / "status.json").is_file())
        raise NotFoundError(f"no run named {name!r} under {runs_dir} (runs: {known or 'none'})")
    return path


def summary_out(s) -> RunSummaryOut:
    """A ``lvmkit.train.runs.RunSummary`` as the API shows it (its display state: a dead 'running' run is
    'interrupted')."""
    return RunSummaryOut(
        name=s.path.name,
        state=s.display_state,
        alive=s.alive,
        has_report=any((s.path / f).is_file() for f in ("history.jsonl", "metrics.json", "config.yaml")),
        **s.progress(),
    )


def list_run_summaries(runs_dir: Path | None) -> list[RunSummaryOut]:
    from lvmkit.train.runs import list_runs

    if runs_dir is None or not Path(runs_dir).is_dir():
        return []
    return [summary_out(s) for s in list_runs(runs_dir)]


def run_detail(runs_dir: Path | None, name: str) -> RunDetail:
    from lvmkit.report import load_run
    from lvmkit.train.runs import summarize

    path = run_dir(runs_dir, name)
    summary = summary_out(summarize(path))
    try:
        data = load_run(path)
    except ArtifactError:  # a run that has written only its status so far
        return RunDetail(summary=summary, epochs=[], steps=[], gates=[])
    epochs = [r for r in data.history if r.get("kind") == "epoch"]
    steps = [r for r in data.history if r.get("kind") == "step"]
    if len(steps) > MAX_STEP_ROWS:
        stride = -(-len(steps) // MAX_STEP_ROWS)
        steps = steps[::stride] + ([steps[-1]] if (len(steps) - 1) % stride else [])
    results = {
        k: dict(v.get("metrics") or {}) for k, v in ((data.metrics or {}).get("results") or {}).items()
    }
    return RunDetail(
        summary=summary,
        epochs=epochs,
        steps=steps,
        gates=data.training_gates,
        eval_gates=data.eval_gates,
        results=results,
        primary=data.primary,
        config=data.config,
    )


def run_report_html(runs_dir: Path | None, name: str) -> str:
    """The run's report (``lvmkit report RUN``'s page), rendered in memory."""
    from lvmkit.report import load_run, plots, render_figures
    from lvmkit.report.html import render_html

    data = [load_run(run_dir(runs_dir, name))]
    generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return render_html(data, render_figures(data, plots), f"lvmkit report: {name}", generated)
