"""Run reports: one self-contained HTML page (and a Markdown twin) for one or several runs.

    paths = build_report(["runs/amn", "runs/gru"], "report.html")   # also writes report.md + report_files/

What a run directory contributes (every part is optional, so a run still training, or an ``lvmkit eval``
output directory, also makes a report):

    history.jsonl     training curves: loss per step / epoch, val metrics per epoch, copy_last beside them
    metrics.json      the results table against the baselines with 95% intervals, the offset sweep, per-label
                      results, latency and gate outcomes. ``RUN/eval-test/metrics.json`` (written by
                      ``lvmkit eval RUN``, with latency and gates) is preferred over the trainer's ``RUN/metrics.json``
                      when it scored the same queries (split, count, bank); else the run's own numbers are shown
    config.yaml       the resolved config, shown verbatim; its epoch gates are re-checked against history.jsonl
    status.json       state, best epoch

A run without a metrics.json of its own (the quickstart's runs train with final_eval off) shows its row of a
comparison given in the same report: a results-only directory whose metrics.json lists the run under
``runs`` (``pipeline.compare_runs`` writes one: every run and baseline on the same queries). The card says so.

``load_run`` reads a directory into a ``RunData``; ``html.render_html`` and ``markdown.render_markdown`` turn a
list of them into text; ``build_report`` does all of it and writes the files.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lvmkit.artifacts import read_jsonl, write_text
from lvmkit.errors import ArtifactError

METRICS_CANDIDATES = ("eval-test/metrics.json", "metrics.json")


@dataclass
class RunData:
    """Everything the report shows about one run, read from its directory."""

    path: Path
    name: str
    history: list[dict[str, Any]] = field(default_factory=list)
    status: dict[str, Any] | None = None
    config_text: str | None = None
    config: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    metrics_source: Path | None = None
    training_gates: list[dict[str, Any]] = field(default_factory=list)
    shared_as: str | None = None  # set when ``metrics`` is a comparison's: this run's row name there

    @property
    def results_only(self) -> bool:
        """An evaluation output (``lvmkit eval``, a comparison) rather than a training run."""
        return bool(self.metrics) and not (self.history or self.config)

    @property
    def primary(self) -> str | None:
        """The row of the results table that is this run's model."""
        if not self.metrics:
            return None
        if self.shared_as:
            return self.shared_as
        if self.metrics.get("primary"):
            return self.metrics["primary"]
        comps = self.metrics.get("comparisons") or []
        if comps:
            return comps[0]["model"]
        model = (self.config or {}).get("model", {}).get("name")
        return model if model in (self.metrics.get("results") or {}) else None

    @property
    def eval_gates(self) -> dict[str, Any] | None:
        return (self.metrics or {}).get("gates")


def recheck_training_gates(
    config: dict[str, Any] | None, history: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The config's epoch gates checked against the history's epoch rows (what the trainer checked)."""
    from lvmkit.eval.gates import check_gates

    rows = []
    epochs = {r.get("epoch"): r for r in history if r.get("kind") == "epoch"}
    for g in (config or {}).get("gates") or []:
        rule = {k: g[k] for k in ("metric", "min", "max", "epoch") if g.get(k) is not None}
        row = epochs.get(g.get("epoch"))
        if row is None:
            rows.append({**rule, "value": None, "held": None, "note": "epoch not reached"})
            continue
        if g["metric"] not in row:
            rows.append({**rule, "value": None, "held": False, "note": "metric not recorded"})
            continue
        r = check_gates(row, [rule]).rows[0]
        rows.append({**rule, "value": r.value, "held": r.held, "bound": r.bound})
    return rows


def load_run(path: str | Path, name: str | None = None) -> RunData:
    """Read a run directory (or an ``lvmkit eval`` output directory) for the report."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(
            f"{path} is not a directory: give run directories made by `lvmkit train` or `lvmkit eval`"
        )
    run = RunData(path=path, name=name or path.name)
    run.history = read_jsonl(path / "history.jsonl")
    if (path / "status.json").is_file():
        run.status = _read(path / "status.json", f"`lvmkit train --out {path} --resume` rewrites it")
    if (path / "config.yaml").is_file():
        run.config_text = (path / "config.yaml").read_text(encoding="utf-8", errors="replace")
        run.config = _read(path / "config.yaml", "every checkpoint of the run holds its config") or {}
    found = []
    for rel in METRICS_CANDIDATES:
        if (path / rel).is_file():
            fix = f"`lvmkit eval {path}` writes it again" + (" (with --out)" if "/" in rel else "")
            found.append((_read(path / rel, fix), path / rel))
    if found:
        run.metrics, run.metrics_source = found[0] if _same_queries(found) else found[-1]
    if not (run.history or run.metrics or run.config):
        raise ArtifactError(
            f"{path} holds none of history.jsonl, metrics.json, config.yaml: not a run directory made by "
            "`lvmkit train` or an `lvmkit eval` output"
        )
    run.training_gates = recheck_training_gates(run.config, run.history)
    return run


def _same_queries(found: list[tuple[dict, Path]]) -> bool:
    """Whether ``lvmkit eval``'s output (first) scored the same queries as the trainer's metrics.json (last):
    same split, count and bank. Otherwise the report keeps the run's own numbers rather than switch query sets
    (e.g. an eval with --max-queries, another --split or bank)."""
    if len(found) < 2:
        return True
    ev, own = found[0][0] or {}, found[-1][0] or {}
    return all(ev.get(k) == own.get(k) for k in ("split", "n_queries", "bank_id"))


def _read(path: Path, fix: str) -> Any:
    """A JSON or YAML file of a run; a damaged one raises ArtifactError naming it and ``fix``."""
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) if path.suffix == ".yaml" else json.loads(text)
    except (ValueError, UnicodeDecodeError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArtifactError(
            f"{path} is damaged ({first}); {fix}, or leave the run out of the report"
        ) from None
    if data is not None and not isinstance(data, dict):
        raise ArtifactError(f"{path} is damaged (not a mapping); {fix}, or leave the run out of the report")
    return data


def unique_names(paths: list[Path]) -> list[str]:
    """Directory names, with the parent prepended where two runs share a name."""
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    markdown: Path
    figures: Path


def build_report(
    runs: list[str | Path], out: str | Path = "report.html", title: str | None = None
) -> ReportPaths:
    """Write ``out`` (self-contained HTML), ``out`` with suffix .md, and the figures as PNG files in
    ``<stem>_files/`` (referenced by the Markdown). Returns the three paths."""
    from lvmkit.report import plots
    from lvmkit.report.html import render_html
    from lvmkit.report.markdown import render_markdown

    if not runs:
        raise ArtifactError("give at least one run directory")
    paths = [Path(r) for r in runs]
    data = share_comparisons([load_run(p, n) for p, n in zip(paths, unique_names(paths), strict=True)])
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        out = out.with_suffix(".html")
    figures = render_figures(data, plots)
    generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = title or ("lvmkit report: " + ", ".join(r.name for r in data))
    write_text(out, render_html(data, figures, title, generated))
    fig_dir = out.parent / f"{out.stem}_files"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for key, png in figures.items():
        (fig_dir / f"{key}.png").write_bytes(png)
    md = out.with_suffix(".md")
    write_text(md, render_markdown(data, {k: f"{fig_dir.name}/{k}.png" for k in figures}, title, generated))
    return ReportPaths(out, md, fig_dir)


def share_comparisons(data: list[RunData]) -> list[RunData]:
    """Give each run without metrics of its own the metrics of a comparison in ``data`` that evaluated it
    (its metrics.json lists the run's directory under ``runs``, with the row name as key)."""
    for r in data:
        if r.metrics:
            continue
        for other in data:
            runs = (other.metrics or {}).get("runs") or {}
            name = next((n for n, p in runs.items() if _same_dir(p, other.path, r.path)), None)
            if name is not None and name in (other.metrics.get("results") or {}):
                r.metrics, r.metrics_source, r.shared_as = other.metrics, other.metrics_source, name
                break
    return data


def _same_dir(recorded: str, base: Path, run: Path) -> bool:
    """``recorded`` (absolute, or relative to where it was written from) names ``run``."""
    p = Path(recorded)
    candidates = [p] if p.is_absolute() else [p, base.parent / p, base.parent.parent / p]
    return any(c.resolve() == run.resolve() for c in candidates)


def render_figures(data: list[RunData], plots) -> dict[str, bytes]:
    """Every figure of the report as PNG bytes, keyed ``curves`` or ``<run index>-<kind>``."""
    figs: dict[str, bytes | None] = {"curves": plots.training_curves([(r.name, r.history) for r in data])}
    for i, r in enumerate(data):
        if r.metrics:
            figs[f"{i}-bars"] = plots.metric_bars(r.metrics)
            figs[f"{i}-offsets"] = plots.offset_sweep({**r.metrics, "primary": r.primary})
            figs[f"{i}-labels"] = plots.label_bars({**r.metrics, "primary": r.primary})
    return {k: v for k, v in figs.items() if v is not None}


__all__ = ["ReportPaths", "RunData", "build_report", "load_run", "recheck_training_gates"]
