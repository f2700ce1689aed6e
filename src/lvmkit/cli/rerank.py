"""``lvmkit rerank fit RUN``: fit the mini reranker over a top-K pool, per protocol, and store it in the run."""

from __future__ import annotations

from pathlib import Path

import typer

from lvmkit.cli.common import console, make_app, make_progress

rerank_app = make_app(help="A small learned reranker (logistic / gradient boosting) over candidate features.")


@rerank_app.command("fit")
def fit(
    run: Path = typer.Argument(
        ..., help="The LVM run whose prediction gives the cos_pred feature.", show_default=False
    ),
    bank: Path | None = typer.Option(
        None, "--bank", "-b", help="The bank (default: the run's).", show_default=False
    ),
    protocol: str = typer.Option(
        "open",
        "--protocol",
        help="open (whole bank) or in-article (the article's chunks; article features allowed).",
    ),
    retriever: str = typer.Option(
        "baseline:exp_weighted",
        "--retriever",
        help="What fills the pool: baseline:NAME or a (two-tower) run directory.",
    ),
    k: int = typer.Option(50, "--k", help="Pool size: candidates per query the reranker orders."),
    twotower: str = typer.Option(None, "--twotower", help="A two-tower run: adds its score as a feature."),
    lanes: str = typer.Option(
        None, "--lanes", help="A lane classifier directory: adds the lane-agreement feature."
    ),
    head: str = typer.Option(
        None, "--head", help="Read the run through its alignment head (ridge | procrustes)."
    ),
    features: str = typer.Option(
        None, "--features", help="Comma-separated feature names (default: all available)."
    ),
    max_train: int = typer.Option(3000, "--max-train", help="Train queries (pools) to fit on."),
    max_val: int = typer.Option(1000, "--max-val", help="Val queries the model kind is chosen on."),
    max_test: int = typer.Option(2000, "--max-test", help="Test queries of the report."),
    nprobe: int = typer.Option(None, "--nprobe", help="IVF nprobe of the retrieval (open protocol)."),
) -> None:
    """Fit logistic regression and gradient boosting on train-split pools, choose on val MRR@10, report test R@k and
    MRR@10 before/after with feature importances; store RUN/heads/reranker-PROTOCOL.{pkl,json}.

    Features: retrieval score and rank, cos to the prediction / last context chunk / context mean, the two-tower
    score (--twotower), lane agreement (--lanes); under --protocol in-article also same_article, gap and next
    (refused under open).

    Example: lvmkit rerank fit runs/gru --retriever runs/twotower --k 50
    """
    from lvmkit.bank.bank import VectorBank
    from lvmkit.cli.eval import run_bank
    from lvmkit.heads.reranker import fit_reranker, format_report

    vb = VectorBank.open(bank if bank is not None else run_bank(str(run)))
    with make_progress(transient=True) as progress:
        task = progress.add_task("reranker", total=None)
        rr = fit_reranker(
            str(run), vb, protocol=protocol, retriever=retriever, k=k, twotower=twotower, lanes=lanes, head=head,
            features=features.split(",") if features else None, max_train=max_train, max_val=max_val,
            max_test=max_test, nprobe=nprobe, progress=lambda stage, d, t: progress.update(task, description=stage),
        )  # fmt: skip
    path = rr.save(run)
    console.print(format_report(rr))
    console.print(f"wrote {path}")
