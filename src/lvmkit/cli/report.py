"""``lvmkit report``: one self-contained HTML page (and report.md) for one or several runs."""

from __future__ import annotations

from pathlib import Path

import typer

from lvmkit.cli.common import console


def report(
    runs: list[Path] = typer.Argument(
        ...,
        help="Run directories (from `lvmkit train`, or `lvmkit eval` output directories).",
        show_default=False,
    ),
    out: Path = typer.Option(
        Path("report.html"), "--out", "-o", help="The HTML file to write (report.md goes beside it)."
    ),
    title: str = typer.Option(None, "--title", help="Page title (default: the run names)."),
) -> None:
    """Write one self-contained HTML report (and report.md) for one or several runs.

    Training curves, the results table against the baselines with intervals, offset sweep, per-label bars,
    gate outcomes and the resolved config; several runs side by side.

    Example: lvmkit report runs/amn runs/gru --out report.html
    """
    from lvmkit.report import build_report

    paths = build_report(list(runs), out, title=title)
    console.print(f"wrote {paths.html} (self-contained) and {paths.markdown} (figures in {paths.figures})")
