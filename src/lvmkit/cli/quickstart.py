"""``lvmkit quickstart``: the whole loop on the embedded corpus, in minutes, with the commands it stands for."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from lvmkit.cli.common import console, human_duration

STEPS = 6  # ingest, index, search, train, evaluate, report


def _stage(n: int, title: str, command: str) -> None:
    console.rule(f"[bold]{n}/{STEPS} {title}")
    console.print(f"[dim]$ {command}[/dim]")


def quickstart(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the bank, runs and report.")] = Path(
        "quickstart_out"
    ),
    articles: Annotated[int, typer.Option(help="Embedded articles to ingest (of 10,033).")] = 5000,
    epochs: Annotated[int, typer.Option(help="Training epochs per model.")] = 6,
    backend: Annotated[
        str, typer.Option(help="Encoder backend: st (fp32), onnx-int8 (faster on CPU), hash.")
    ] = "st",
    encoder: Annotated[
        str | None, typer.Option(help="Encoder model name/path (default: offline all-MiniLM-L6-v2).")
    ] = None,
) -> None:
    """Run the whole pipeline on the embedded Wikipedia corpus and print the results table.

    Steps (each is a command you can run yourself; re-running the quickstart resumes finished steps):
    ingest -> index -> a few searches -> train amn and gru -> evaluate both beside every baseline (copy_last,
    mean_ctx, exp_weighted, ridge, blend, oracle) on the held-out test articles, searching the full bank -> HTML report.

    Example: lvmkit quickstart --out quickstart_out
    """
    from lvmkit.pipeline import QuickstartSettings

    t0 = time.perf_counter()
    s = QuickstartSettings(articles=articles, epochs=epochs)
    out.mkdir(parents=True, exist_ok=True)
    bank_dir = out / "bank"
    _build_bank(bank_dir, articles, backend, encoder)  # steps 1-3: ingest, index, two searches
    runs = _train_models(out, bank_dir, s)  # step 4
    suite, info, comparison = _evaluate(runs, bank_dir, out, s)  # step 5
    report = _report(out, [*runs.values(), comparison])  # step 6
    _summary(suite, info, s, report, comparison, time.perf_counter() - t0)


def _build_bank(bank_dir: Path, articles: int, backend: str, encoder: str | None) -> None:
    from lvmkit.bank import VectorBank
    from lvmkit.cli import bank as bank_cli

    _stage(
        1,
        "ingest",
        f"lvmkit ingest embedded --out {bank_dir} --limit-articles {articles} --backend {backend}",
    )
    if (bank_dir / VectorBank.MANIFEST).exists():
        console.print(f"bank {bank_dir} exists: reusing it")
    else:
        bank_cli.ingest("embedded", bank_dir, limit_articles=articles, backend=backend, encoder=encoder)
    _stage(2, "index", f"lvmkit index build {bank_dir} --type flat")
    bank_cli.index_build(bank_dir, type="flat")
    _stage(3, "search", f'lvmkit search {bank_dir} "the theory of evolution by natural selection" -k 3')
    for q in ("the theory of evolution by natural selection", "a famous painting in a museum"):
        bank_cli.search(bank_dir, q, k=3, backend=backend if backend == "onnx-int8" else None)


def _train_models(out: Path, bank_dir: Path, s) -> dict[str, Path]:
    """Each quickstart model's run directory, trained (or resumed, or reused when finished)."""
    from lvmkit.cli import train as train_cli
    from lvmkit.pipeline import quickstart_config
    from lvmkit.train.config import save_config
    from lvmkit.train.runs import RunPaths, read_status

    runs = {}
    for model in s.models:
        run = runs[model] = out / "runs" / model
        cfg_path = out / "configs" / f"{model}.yaml"
        save_config(quickstart_config(model, bank_dir, s), cfg_path)
        _stage(4, f"train {model}", f"lvmkit train {cfg_path} --out {run}")
        paths = RunPaths(run)
        state = read_status(paths).get("state") if paths.status.exists() else None
        if state in ("finished", "early_stopped"):
            console.print(f"run {run} already {state}: reusing it")
            continue
        train_cli.train(cfg_path, run, [], paths.last.exists(), False, False)
    return runs


def _evaluate(runs: dict[str, Path], bank_dir: Path, out: Path, s):
    """(suite, info, comparison dir): every model and baseline on the same test windows, full-bank search."""
    from lvmkit.artifacts import write_json, write_text
    from lvmkit.eval.evaluator import format_table
    from lvmkit.pipeline import compare_runs

    _stage(5, "evaluate", "all models and baselines on the same held-out test windows, full-bank search")
    with console.status("evaluating models and baselines (bootstrap intervals)"):
        suite, info = compare_runs(runs, bank_dir, max_queries=s.max_test_queries)
    comparison = out / "comparison"  # a results-only directory: `lvmkit report` shows its table
    write_json(comparison / "metrics.json", {**info, **suite.to_dict()})
    write_text(comparison / "metrics.md", f"# quickstart results\n\n{info['n_queries']:,} test windows, ctx {s.ctx}, "
               f"bank of {info['bank_chunks']:,} chunks ({info['encoder']}).\n\n{format_table(suite)}\n")  # fmt: skip
    return suite, info, comparison


def _report(out: Path, dirs: list[Path]) -> Path:
    from lvmkit.report import build_report

    _stage(6, "report", f"lvmkit report {' '.join(str(d) for d in dirs)} --out {out / 'report.html'}")
    return build_report(dirs, out / "report.html", title="lvmkit quickstart").html


def _summary(suite, info: dict, s, report: Path, comparison: Path, seconds: float) -> None:
    from lvmkit.cli.eval import print_comparisons, results_table

    console.rule("[bold green]done")
    console.print(
        f"{info['n_queries']:,} held-out test windows (article-disjoint), full-bank search over "
        f"{info['bank_chunks']:,} chunks, context chunks excluded from candidates:\n"
    )
    console.print(results_table(suite, s.models[0]))
    print_comparisons(suite)
    console.print(
        f"\nreport: [bold]{report}[/bold]   table: {comparison / 'metrics.md'}   ({human_duration(seconds)})"
    )
