"""``lvmkit align RUN``: fit alignment heads (ridge, Procrustes) on a run's train predictions, store them in the run."""

from __future__ import annotations

from pathlib import Path

import typer

from lvmkit.cli.common import console, make_progress


def align(
    run: Path = typer.Argument(
        ..., help="A run directory made by `lvmkit train` (an LVM or a two-tower run).", show_default=False
    ),
    bank: Path | None = typer.Option(
        None, "--bank", "-b", help="The bank (default: the one the run was trained on).", show_default=False
    ),
    max_train: int = typer.Option(
        20_000, "--max-train", help="Train windows whose (prediction, truth) pairs fit the heads."
    ),
    max_val: int = typer.Option(
        2_000, "--max-val", help="Val windows on which ridge's alpha is chosen (val hit@5)."
    ),
    test: bool = typer.Option(
        True,
        "--test/--no-test",
        help="Report the test split once: the run with and without each head, beside the baselines.",
    ),
    max_queries: int = typer.Option(
        None, "--max-queries", help="Cap on test windows (default: the run's own cap)."
    ),
) -> None:
    """Fit a ridge head (alpha chosen on val) and an orthogonal Procrustes head on (prediction -> truth) pairs of the
    run's train split, store them in RUN/heads/ with their provenance (bank, encoder, checkpoint hash), and report
    test hit@5 before and after beside the baselines (protocol open). Apply one later with
    `lvmkit eval RUN --head ridge|procrustes`; a head is refused for another bank, encoder or checkpoint.

    Example: lvmkit align runs/gru
    """
    from rich.table import Table

    from lvmkit.bank.bank import VectorBank
    from lvmkit.cli.eval import print_comparisons, results_table, run_bank
    from lvmkit.heads.align import fit_alignment, report_test

    vb = VectorBank.open(bank if bank is not None else run_bank(str(run)))
    with make_progress(transient=True) as progress:
        task = progress.add_task("fitting", total=None)
        fit = fit_alignment(
            run, vb, max_train=max_train, max_val=max_val,
            progress=lambda stage, done, total: progress.update(task, description=stage),
        )  # fmt: skip
    paths = fit.save()
    sweep = Table(title="ridge alpha on val (open protocol)")
    for c in ("alpha", "val hit@5", "val cos"):
        sweep.add_column(c, justify="right")
    for r in fit.sweep:
        sweep.add_row(f"{r['alpha']:g}", f"{100 * r['val_hit@5']:.1f}", f"{r['val_cos']:.4f}")
    console.print(sweep)
    console.print(
        "val hit@5: "
        + ", ".join(f"{k} {100 * v:.1f}" for k, v in fit.val.items())
        + f" (chosen alpha {fit.heads['ridge'].provenance['alpha']:g}; {fit.info['n_train']} train pairs)"
    )
    console.print("wrote " + ", ".join(str(p) for p in paths))
    if test:
        with make_progress(transient=True) as progress:
            task = progress.add_task("test split", total=None)
            suite = report_test(
                fit,
                vb,
                max_queries=max_queries,
                progress=lambda d, t: progress.update(task, completed=d, total=t),
            )
        console.print("[bold]test split, protocol open[/bold]")
        console.print(results_table(suite, next(iter(fit.heads.values())).provenance.get("run", "")))
        print_comparisons(suite)
        console.print(f"wrote {run / 'heads' / 'align-test.md'}")
