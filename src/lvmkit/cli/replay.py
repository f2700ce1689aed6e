"""``lvmkit replay``: score a request log offline with several runs beside the baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lvmkit.cli.common import console, make_progress


def replay(
    log: Annotated[
        Path,
        typer.Argument(
            help="A request log: a directory from `lvmkit serve --log-requests DIR`, or one of its files."
        ),
    ],
    run: Annotated[
        list[str],
        typer.Option(
            "--run",
            help="A run directory, checkpoint, or baseline:NAME to replay (repeat: --run A --run B).",
            show_default=False,
        ),
    ],
    bank: Annotated[
        Path | None,
        typer.Option(help="The bank the server searched. Default: the bank the first run was trained on."),
    ] = None,
    k: Annotated[
        int, typer.Option(min=1, max=1000, help="Results per request compared (hit@k, overlap@k).")
    ] = 10,
    max_requests: Annotated[
        int | None, typer.Option(min=1, help="Replay only the first N logged requests.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Also write the result as JSON here.", show_default=False)
    ] = None,
) -> None:
    """Replay the /v1/next requests of a request log through each --run and copy_last, mean_ctx, exp_weighted.

    Two kinds of number, never mixed. hit@1, hit@k and mrr@k only for requests whose context is consecutive
    chunks of one bank article, so that the bank proves the true next chunk (requests from articles a replayed
    run trained on are left out). overlap@k for every request: how much two systems' top k agree, which says
    how differently they answer the same traffic, not which is right. The "logged" row is what the server
    answered.

    Example: lvmkit replay logs/ --run runs/amn --run runs/gru --bank banks/embedded
    """
    from lvmkit.artifacts import write_json
    from lvmkit.bank import VectorBank
    from lvmkit.cli.eval import run_bank
    from lvmkit.serve.replay import replay as run_replay

    vb = VectorBank.open(bank if bank is not None else run_bank(run[0]))
    with make_progress() as progress:
        task = progress.add_task("replaying (encode, then one search per system)", total=None, unit="systems")
        result = run_replay(
            log,
            run,
            vb,
            k=k,
            max_requests=max_requests,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    console.print(
        f"{result.n_requests:,} /v1/next requests from {log}; bank {vb.path}; exact full-bank search, context "
        f"excluded as the server did; {result.n_scored:,} with a known next chunk scored "
        f"({result.n_truth:,} known in all)",
        highlight=False,
    )
    console.print(result.table(), highlight=False, markup=False)
    for note in result.notes:
        console.print(f"- {note}", highlight=False, markup=False)
    if out is not None:
        write_json(out, result.to_dict())
        console.print(f"written: {out}")
