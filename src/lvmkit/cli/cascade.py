"""``lvmkit eval CASCADE.yaml``: the cascade's per-stage table, ablation, baselines and gates (called by cli/eval.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from lvmkit.cli.common import console, err_console, make_progress

EXIT_GATES_FAILED = 1


def is_cascade(target: str) -> bool:
    return target.endswith((".yaml", ".yml"))


def eval_cascade(
    target: str,
    *,
    gates: Path | None,
    out: Path | None,
    max_queries: int | None,
    latency_n: int | None,
    protocol: str | None,
) -> None:
    from rich.markdown import Markdown

    from lvmkit.cascade.evaluate import evaluate_cascade, format_cascade

    with make_progress(transient=True) as progress:
        task = progress.add_task("cascade", total=None)
        outcome = evaluate_cascade(
            target, gates=gates, out=out, max_queries=max_queries, latency_n=latency_n, protocol=protocol,
            progress=lambda stage: progress.update(task, description=stage),
        )  # fmt: skip
    console.print(Markdown(format_cascade(outcome)))
    console.print(f"wrote {outcome.out / 'cascade.json'} and {outcome.out / 'cascade.md'}")
    if not outcome.ok:
        err_console.print(
            f"[bold red]{len(outcome.gates.failed)} of {len(outcome.gates.rows)} gates failed[/bold red]"
        )
        raise typer.Exit(EXIT_GATES_FAILED)
