"""``lvmkit quickstart``: the whole loop on the embedded corpus, in minutes, with the commands it stands for."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from lvmkit.cli.common import console, human_duration


def _stage(n: int, total: int, title: str, command: str) -> None:
    console.rule(f"[bold]{n}/{total} {title}")
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
    from lvmkit.artifacts import write_json, write_text
    from lvmkit.bank import VectorBank
    from lvmkit.cli import bank as bank_cli
    from lvmkit.cli import train as train_cli
    from lvmkit.cli.eval import print_comparisons, results_table
    from lvmkit.eval.evaluator import format_table
    from lvmkit.pipeline import QuickstartSettings, compare_runs, quickstart_config
    from lvmkit.train.config import save_config
    from lvmkit.train.runs import RunPaths, read_status

    t0 = time.perf_counter()
    s = QuickstartSettings(articles=articles, epochs=epochs)
    out.mkdir(parents=True, exist_ok=True)
    bank_dir, total = out / "bank", 6

    _stage(
        1,
        total,
        "ingest",
        f"lvmkit ingest embedded --out {bank_dir} --limit-articles {articles} --backend {backend}",
    )
    if (bank_dir / VectorBank.MANIFEST).exists():
        console.print(f"bank {bank_dir} exists: reusing it")
    else:
        bank_cli.ingest("embedded", bank_dir, limit_articles=articles, backend=backend, encoder=encoder)

    _stage(2, total, "index", f"lvmkit index build {bank_dir} --type flat")
    bank_cli.index_build(bank_dir, type="flat")

    _stage(
        3, total, "search", f'lvmkit search {bank_dir} "the theory of evolution by natural selection" -k 3'
    )
    for q in ("the theory of evolution by natural selection", "a famous painting in a museum"):
        bank_cli.search(bank_dir, q, k=3, backend=backend if backend == "onnx-int8" else None)

    runs = {}
    for model in s.models:
        run = out / "runs" / model
        runs[model] = run
        cfg_path = out / "configs" / f"{model}.yaml"
        save_config(quickstart_config(model, bank_dir, s), cfg_path)
        _stage(4, total, f"train {model}", f"lvmkit train {cfg_path} --out {run}")
        paths = RunPaths(run)
        state = read_status(paths).get("state") if paths.status.exists() else None
        if state in ("finished", "early_stopped"):
            console.print(f"run {run} already {state}: reusing it")
            continue
        train_cli.train(cfg_path, run, [], paths.last.exists(), False, False)

    _stage(
        5, total, "evaluate", "all models and baselines on the same held-out test windows, full-bank search"
    )
    with console.status("evaluating models and baselines (bootstrap intervals)"):
        suite, info = compare_runs(runs, bank_dir, max_queries=s.max_test_queries)
    table = format_table(suite)
    comparison = out / "comparison"  # a results-only directory: `lvmkit report` shows its table
    write_json(comparison / "metrics.json", {**info, **suite.to_dict()})
    write_text(comparison / "metrics.md", f"# quickstart results\n\n{info['n_queries']:,} test windows, ctx {s.ctx}, "
               f"bank of {info['bank_chunks']:,} chunks ({info['encoder']}).\n\n{table}\n")  # fmt: skip

    dirs = [*runs.values(), comparison]
    _stage(6, total, "report", f"lvmkit report {' '.join(str(d) for d in dirs)} --out {out / 'report.html'}")
    from lvmkit.report import build_report

    report = build_report(dirs, out / "report.html", title="lvmkit quickstart").html

    console.rule("[bold green]done")
    console.print(
        f"{info['n_queries']:,} held-out test windows (article-disjoint), full-bank search over "
        f"{info['bank_chunks']:,} chunks, context chunks excluded from candidates:\n"
    )
    console.print(results_table(suite, s.models[0]))
    print_comparisons(suite)
    console.print(
        f"\nreport: [bold]{report}[/bold]   table: {comparison / 'metrics.md'}   ({human_duration(time.perf_counter() - t0)})"
    )
