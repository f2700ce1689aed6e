"""``lvmkit eval``: score a run, a checkpoint or a baseline against every baseline, searching the whole bank."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lvmkit.cli.common import console, err_console, make_progress

EXIT_GATES_FAILED = 1
DEFAULT_LATENCY_N = 200  # --latency-n's default; a cascade left at it times what its config says


TargetArg = Annotated[
    str,
    typer.Argument(
        help="A run directory, a checkpoint (.pt), baseline:NAME (copy_last, mean_ctx, exp_weighted, "
        "ridge, blend, oracle), or a cascade config (.yaml: per-stage Contain@K, R@k, latency, ablation).",
        show_default=False,
    ),
]
BankOpt = Annotated[
    Path | None,
    typer.Option(
        "--bank",
        "-b",
        help="The bank to search (its full set of chunks). Default for a run directory: the bank it was "
        "trained on (its config.yaml); required for a checkpoint or a baseline.",
        show_default=False,
    ),
]
SplitOpt = Annotated[
    str, typer.Option("--split", help="Which split's windows are the queries: train, val, test.")
]
IndexOpt = Annotated[
    str,
    typer.Option(
        "--index", help="flat (exact), or the bank's stored ivf / hnsw index. Default: the bank's own."
    ),
]
NprobeOpt = Annotated[int, typer.Option("--nprobe", help="IVF nprobe (HNSW efSearch) for this evaluation.")]
GatesOpt = Annotated[
    Path,
    typer.Option(
        "--gates",
        help="YAML/JSON gates, e.g. {hit@5: {min: 0.4}, p95_ms: {max: 1.45}}: exit 1 if one fails.",
    ),
]
OutOpt = Annotated[
    Path,
    typer.Option(
        "--out",
        "-o",
        help="Where metrics.json / metrics.md go (default RUN/eval-SPLIT, or ./eval-...).",
    ),
]
NoExcludeContextOpt = Annotated[
    bool,
    typer.Option("--no-exclude-context", help="Leave the window's own context chunks among the candidates."),
]
MaxQueriesOpt = Annotated[
    int,
    typer.Option(
        "--max-queries",
        help="Evaluate a seeded sample of at most N windows (default: the run's cap / 10,000).",
    ),
]
SplitFileOpt = Annotated[
    Path,
    typer.Option("--split-file", help="A split.json to use instead of the run's own (must match the bank)."),
]
CtxOpt = Annotated[int, typer.Option("--ctx", help="Context length for a baseline (a run uses its own).")]
LatencyNOpt = Annotated[
    int, typer.Option("--latency-n", help="Requests timed at batch size 1 (0 = skip latency).")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of a baseline's split and query sample.")]
ProtocolOpt = Annotated[
    str,
    typer.Option(
        "--protocol",
        help="open: the whole bank is searched, the article unknown. in-article: the article is known and the "
        "candidates are its chunks outside the context (an easier task; never compare with open numbers). "
        "Default open (a cascade: its config's).",
    ),
]
HeadOpt = Annotated[
    str,
    typer.Option(
        "--head",
        help="Apply an alignment head fitted by `lvmkit align RUN` to the run's prediction: ridge or procrustes.",
    ),
]


def eval_command(
    target: TargetArg,
    bank: BankOpt = None,
    split: SplitOpt = "test",
    index: IndexOpt = None,
    nprobe: NprobeOpt = None,
    gates: GatesOpt = None,
    out: OutOpt = None,
    no_exclude_context: NoExcludeContextOpt = False,
    max_queries: MaxQueriesOpt = None,
    split_file: SplitFileOpt = None,
    ctx: CtxOpt = 5,
    latency_n: LatencyNOpt = DEFAULT_LATENCY_N,
    seed: SeedOpt = 0,
    protocol: ProtocolOpt = None,
    head: HeadOpt = None,
) -> None:
    """Score a run, checkpoint or baseline by full-bank search, beside every baseline.

    On the chosen split's windows: Hit@1/5/10/50, Contain@50, Eff@5, MRR@10, cosine, contrastive accuracy,
    offset sweep and latency, beside copy_last, mean_ctx, exp_weighted, ridge, the tuned blend (w and alpha
    chosen on val windows) and the oracle, with 95% bootstrap intervals. Writes metrics.json and metrics.md; with --gates, exits 1 when a gate fails.

    Example: lvmkit eval runs/gru --bank banks/enwiki --split test --gates gates.yaml
    Cascade: lvmkit eval configs/cascade_heuristic.yaml --gates configs/cascade_gates.yaml
    """
    from lvmkit.cli.cascade import eval_cascade, is_cascade

    if is_cascade(target):
        cascade_latency_n = None if latency_n == DEFAULT_LATENCY_N else latency_n
        eval_cascade(
            target,
            gates=gates,
            out=out,
            max_queries=max_queries,
            latency_n=cascade_latency_n,
            protocol=protocol,
        )
        return
    outcome = _run_with_progress(
        target,
        bank if bank is not None else run_bank(target),
        split=split,
        index=index,
        nprobe=nprobe,
        gates=gates,
        out=out,
        exclude_context=not no_exclude_context,
        max_queries=max_queries,
        split_file=split_file,
        ctx=ctx,
        split_seed=seed,
        latency_n=latency_n,
        seed=seed,
        protocol=protocol or "open",
        head=head,
    )
    _print_outcome(outcome)
    _exit_if_gates_failed(outcome)


def _run_with_progress(target: str, bank: Path, **options):
    """``run_eval`` under a transient progress display: one bar per stage, the predictors of the suite counted."""
    from lvmkit.eval.command import run_eval

    progress = make_progress(transient=True)
    with progress:
        return run_eval(target, bank, progress=_progress_callback(progress), **options)


def _progress_callback(progress):
    """``run_eval``'s progress(stage, done, total) drawn on ``progress``; the suite evaluates one predictor
    after another, each starting its count over, so "evaluating" is relabelled "evaluating predictor N"."""
    tasks: dict[str, int] = {}
    last_done = {"evaluating": 0}
    counter = {"model": 0}

    def on_progress(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = progress.add_task(
                stage, total=total, unit="queries" if stage == "evaluating" else ""
            )
        if stage == "evaluating" and done <= last_done["evaluating"]:
            counter["model"] += 1  # a new predictor of the suite started over
        last_done["evaluating"] = done if stage == "evaluating" else last_done["evaluating"]
        desc = f"evaluating predictor {counter['model']}" if stage == "evaluating" else stage
        progress.update(tasks[stage], completed=done, total=total, description=desc)

    return on_progress


def _print_outcome(outcome) -> None:
    """What was scored, the results table beside the baselines, the comparisons, latency, gates and files."""
    from rich.markup import escape

    _print_heading(outcome)
    console.print(results_table(outcome.suite, outcome.target.name, outcome.columns))
    print_comparisons(outcome.suite)
    for name, why in outcome.suite.skipped.items():
        err_console.print(f"[yellow]{escape(name)} skipped: {escape(why)}[/yellow]")
    if outcome.latency is not None:
        _print_latency(outcome.target.name, outcome.latency)
    if outcome.gates is not None:
        console.print(_gates_table(outcome.gates))
    console.print(f"wrote {outcome.metrics_json} and {outcome.metrics_md}")


def _print_heading(outcome) -> None:
    """The model, the queries, the bank and the protocol; a warning when the run is still training."""
    from rich.markup import escape

    info = outcome.info
    console.print(
        f"[bold]{escape(info['described'])}[/bold] on {info['n_queries']} {info['split']} {info['unit']} of "
        f"{escape(info['bank'])} ({escape(info['encoder'])}); protocol [bold]{info['protocol']}[/bold]"
    )
    if outcome.target.live:
        err_console.print(
            f"[yellow]{escape(str(outcome.target.spec))} is {escape(outcome.target.live)}: these are the numbers "
            f"of its {outcome.target.checkpoint.name} now, and they will change[/yellow]"
        )


def _print_latency(name: str, lat) -> None:
    console.print(
        f"latency of {name} (batch 1, forward + search): P50 {lat.p50_ms:.2f} ms, "
        f"P95 {lat.p95_ms:.2f} ms, P99 {lat.p99_ms:.2f} ms; {lat.qps:,.0f} queries/s batched"
    )


def _gates_table(report):
    """A rich table of a gate report: metric, value, bound and whether it held (no in bold red)."""
    from rich.table import Table

    gt = Table(title="gates", show_lines=False)
    for col in ("metric", "value", "bound", "held"):
        gt.add_column(col, justify="right" if col == "value" else "left")
    for r in report.rows:
        value = "missing" if r.value is None else f"{r.value:.4g}"
        gt.add_row(r.metric, value, r.bound, "[green]yes[/green]" if r.held else "[bold red]no[/bold red]")
    return gt


def _exit_if_gates_failed(outcome) -> None:
    if not outcome.ok:
        err_console.print(
            f"[bold red]{len(outcome.gates.failed)} of {len(outcome.gates.rows)} gates failed[/bold red]"
        )
        raise typer.Exit(EXIT_GATES_FAILED)


def print_comparisons(suite) -> None:
    """One line per model: its paired difference to the best baseline, the interval and the verdict (bold);
    then how the model fares against every baseline at every Hit@k, and the blend's chosen (w, alpha)."""
    for c in suite.comparisons:
        console.print(c.describe(verdict="[bold]{}[/bold]"))
    for model in dict.fromkeys(c.model for c in suite.all_comparisons):
        rows = [c for c in suite.all_comparisons if c.model == model]
        n = {v: sum(c.verdict == v for c in rows) for v in ("better", "no clear difference", "worse")}
        console.print(
            f"{model} vs {len({c.baseline for c in rows})} baselines x {len({c.metric for c in rows})} Hit@k: "
            f"{n['better']} better, {n['no clear difference']} no clear difference, {n['worse']} worse "
            "(every pair in metrics.md)"
        )
    blend = suite.fitted.get("blend")
    if blend:
        console.print(
            f"blend: w={blend['w']:g}, alpha={blend['alpha']:g} chosen on {blend['n_windows']} {blend['tuned_on']} "
            "windows"
        )


def results_table(suite, primary: str, columns: tuple[str, ...] | None = None):
    """A compact rich table of the suite (rates in %; the full table with every interval is in metrics.md):
    the target's row in bold, the oracle dimmed, the compared metric's 95% interval in its own column.
    ``columns``: the task's table columns (default: the LVM's)."""
    from rich.table import Table

    from lvmkit.eval.evaluator import RATE_PREFIXES

    compared = suite.comparisons[0].metric if suite.comparisons else "hit@5"
    default = ("hit@1", "hit@5", "hit@10", "hit@50", "contain@50", "eff@5", "mrr@10", "cos")
    cols = [c for c in (columns or default) if any(c in r.metrics for r in suite.values())]
    cols = [c for c in cols if c not in ("ca_inbatch", "ca_other")]
    table = Table(show_lines=False, pad_edge=False)
    table.add_column("model", no_wrap=True)
    for c in cols:
        table.add_column(c, justify="right", no_wrap=True)
        if c == compared:
            table.add_column(f"{c} 95% CI", justify="right", no_wrap=True)
    table.add_column("margin", justify="right", no_wrap=True)
    for name, r in suite.items():
        m = r.metrics
        cells = []
        for c in cols:
            scale, fmt = (100, "{:.1f}") if c.startswith(RATE_PREFIXES) else (1, "{:.3f}")
            cells.append(fmt.format(scale * m[c]) if c in m else "")
            if c == compared:
                lo, hi = r.intervals.get(c, (float("nan"), float("nan")))
                cells.append(f"{fmt.format(scale * lo)}-{fmt.format(scale * hi)}")
        cells.append(
            f"{m['offset_margin']:+.3f}" + (" [red]collapse[/red]" if r.info.get("collapse") else "")
        )
        style = "bold" if name == primary else ("dim" if name == "oracle" else None)
        table.add_row(name, *cells, style=style)
    return table


def run_bank(target: str) -> Path:
    """The bank a run directory was trained on (``bank:`` in its config.yaml), for ``--bank``'s default."""
    from lvmkit.errors import ConfigError
    from lvmkit.train.config import load_config
    from lvmkit.train.runs import RunPaths

    run = RunPaths(Path(target))
    if not Path(target).is_dir() or not run.config.exists():
        raise ConfigError(f"give --bank: {target!r} is not a run directory, so it does not record a bank")
    bank = Path(load_config(run.config).bank)
    if not bank.exists():
        raise ConfigError(
            f"the run {target} was trained on bank {bank}, which is not there (relative paths are read from "
            "the current directory); give --bank"
        )
    return bank
