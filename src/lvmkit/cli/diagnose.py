"""``lvmkit diagnose bank | data | model | lanes``: findings as pass / warn / fail with the number and the threshold.

Each command prints a table and writes ``diagnosis.json`` (``data`` also ``manifest.json``) into ``--out``.
Exit status: 0 when no finding failed (warnings allowed), 1 when one did, 2 for a user error.
"""

from __future__ import annotations

import re
from pathlib import Path

import typer

from lvmkit.cli.common import console, err_console, make_app

EXIT_FINDING_FAILED = 1
STYLE = {"pass": "green", "info": "cyan", "warn": "yellow", "fail": "bold red"}

diagnose_app = make_app(
    help="Diagnose a bank, a run's data (preflight), a trained model (postmortem) or a bank's domain lanes."
)


def show(diagnosis, title: str) -> None:
    """Print a diagnosis as a rich table, then its verdict."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title), show_lines=False, title_justify="left")
    table.add_column("finding", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("threshold")
    table.add_column("what it means", overflow="fold")
    for f in diagnosis.findings:
        # messages hold brackets like E[cos(q, n)]: printed literally, not as rich markup
        table.add_row(
            escape(f.name),
            f"[{STYLE[f.status]}]{f.status}[/]",
            _value(f.value),
            escape(f.threshold),
            escape(f.message),
        )
    console.print(table)
    counts = diagnosis.counts()
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    console.print(f"[{STYLE[diagnosis.status]}]{diagnosis.status.upper()}[/]: {summary}")


def finish(diagnosis, out: Path) -> None:
    """Write RUN/diagnosis.json; exit 1 when a finding failed."""
    console.print(f"wrote {diagnosis.save(out / 'diagnosis.json')}")
    if not diagnosis.ok:
        raise typer.Exit(EXIT_FINDING_FAILED)


@diagnose_app.command("bank")
def bank_command(
    bank: Path = typer.Argument(..., help="Bank directory (made by `lvmkit ingest`).", show_default=False),
    sample: int = typer.Option(2000, "--sample", help="Rows sampled for norms and the mean pairwise cosine."),
    dup_sample: int = typer.Option(
        2000, "--dup-sample", help="Rows searched against the whole bank for duplicates."
    ),
    ctx: int = typer.Option(
        5, "--ctx", help="Context length for the share of articles too short for a window."
    ),
    seed: int = typer.Option(0, "--seed"),
    check: str = typer.Option(
        "sample",
        "--check",
        help="sample: bad vectors are judged on --sample rows; full: every row is checked for NaN, Inf and "
        "norm outliers too (reads the whole vectors.npy).",
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Output directory (default diagnostics/bank-NAME)."),
) -> None:
    """Norms, mean cosine of random pairs (anisotropy), near-duplicate rates, chunks per article.

    The bank is opened without the open-time vector check, so a bank with NaN or outlier rows is diagnosed
    (bad_vectors fails) rather than refused."""
    from lvmkit.bank.bank import VectorBank
    from lvmkit.diagnose.bank import diagnose_bank

    vb = VectorBank.open(bank, check="none")
    d = diagnose_bank(vb, sample=sample, dup_sample=dup_sample, ctx=ctx, seed=seed, check=check)
    s = d.stats
    show(d, f"bank {bank}: {s['chunks']} chunks, {s['articles']} articles, {s['encoder']}")
    finish(d, out or Path("diagnostics") / f"bank-{_slug(bank)}")


@diagnose_app.command("data")
def data_command(
    target: Path = typer.Argument(
        ..., help="A run config (YAML), a run directory, or a pairs directory.", show_default=False
    ),
    overrides: list[str] = typer.Option(
        [], "--set", "-s", help="Override a config field, as for `lvmkit train`."
    ),
    bank: Path = typer.Option(
        None, "--bank", "-b", help="Use this bank instead of the one the config names."
    ),
    leak_sample: int = typer.Option(
        5000, "--leak-sample", help="Held-out rows checked for duplicates per split."
    ),
    no_hash: bool = typer.Option(
        False, "--no-hash", help="Skip the sha256 of input files (they can be large)."
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Output directory (default diagnostics/data-NAME)."),
) -> None:
    """Preflight: shapes and counts, article-disjointness, leakage, batches, curriculum, input hashes."""
    from lvmkit.diagnose.data import preflight

    pf = preflight(target, overrides=overrides, bank=bank, leak_sample=leak_sample, hash_files=not no_hash)
    d = pf.diagnosis
    splits = d.stats.get("splits")
    if splits:
        console.print(
            "splits: "
            + "; ".join(
                f"{n} {c['articles']} articles / {c['rows']} chunks / {c['windows_used']} windows"
                for n, c in splits.items()
            )
        )
    if "batch_shape" in d.stats:
        console.print(f"batch shapes: {d.stats['batch_shape']}")
    plan = next((f.details.get("plan") for f in d.findings if f.name == "curriculum"), None)
    if plan:
        console.print(plan, highlight=False)
    show(d, f"preflight of {target}")
    paths = pf.save(out or Path("diagnostics") / f"data-{_slug(target)}")
    console.print("wrote " + ", ".join(str(p) for p in paths))
    if not d.ok:
        raise typer.Exit(EXIT_FINDING_FAILED)


@diagnose_app.command("model")
def model_command(
    target: str = typer.Argument(
        ..., help="A run directory, a checkpoint, or baseline:NAME.", show_default=False
    ),
    bank: Path = typer.Option(
        None,
        "--bank",
        "-b",
        help="The bank the model is evaluated against. Default for a run directory: the bank it was trained "
        "on (its config.yaml); required for a checkpoint or a baseline.",
        show_default=False,
    ),
    split: str = typer.Option("val", "--split", help="Held-out split whose windows are diagnosed."),
    max_queries: int = typer.Option(2000, "--max-queries", help="Windows diagnosed (a seeded sample)."),
    split_file: Path = typer.Option(None, "--split-file", help="A split.json to use instead of the run's."),
    ctx: int = typer.Option(5, "--ctx", help="Context length for a baseline."),
    out: Path = typer.Option(
        None, "--out", "-o", help="Output directory (default RUN/diagnose or diagnostics/...)."
    ),
) -> None:
    """Postmortem: separation margin, copy-last collapse, prediction variance, same-article negatives."""
    from lvmkit.cli.eval import run_bank
    from lvmkit.diagnose.model import diagnose_target

    if bank is None:
        bank = run_bank(target)
    d = diagnose_target(target, bank, split=split, max_queries=max_queries, split_file=split_file, ctx=ctx)
    show(d, f"{d.subject}: {d.stats['n_queries']} {split} windows")
    if out is None:
        out = (
            Path(target) / "diagnose"
            if Path(target).is_dir()
            else Path("diagnostics") / f"model-{_slug(target)}"
        )
    if d.get("collapse_margin").status != "pass":
        err_console.print("[yellow]compare with copy_last: lvmkit eval TARGET --bank BANK[/yellow]")
    finish(d, out)


@diagnose_app.command("lanes")
def lanes_command(
    bank: Path = typer.Argument(
        ..., help="A bank with lanes (`lvmkit lanes assign BANK --classifier DIR`).", show_default=False
    ),
    run: str = typer.Option(
        "baseline:copy_last", "--run", help="A run directory, a checkpoint or baseline:NAME scored per lane."
    ),
    split: str = typer.Option("test", "--split", help="Split whose windows are scored per lane."),
    max_queries: int = typer.Option(2000, "--max-queries", help="Windows scored (a seeded sample)."),
    ctx: int = typer.Option(5, "--ctx", help="Context length for a baseline."),
    classifier: Path = typer.Option(
        None, "--classifier", help="Lane classifier for the confusion pairs (default: the one that assigned)."
    ),
    skew_warn: float = typer.Option(
        0.40, "--skew-warn", help="Warn when one lane holds more than this share."
    ),
    weak_gap: float = typer.Option(0.07, "--weak-gap", help="A lane is weak below overall Hit@5 minus this."),
    no_eval: bool = typer.Option(False, "--no-eval", help="Shares and confusions only (no retrieval)."),
    out: Path = typer.Option(None, "--out", "-o", help="Output directory (default diagnostics/lanes-NAME)."),
) -> None:
    """Lane shares (skew), per-lane Hit@5 with weak-lane flags, and the classifier's top confusion pairs."""
    from lvmkit.diagnose.lanes import diagnose_lanes

    d = diagnose_lanes(
        bank,
        None if no_eval else run,
        split=split,
        max_queries=max_queries,
        ctx=ctx,
        classifier=classifier,
        skew_warn=skew_warn,
        weak_gap=weak_gap,
    )
    title = f"lanes of bank {bank}"
    if "n_queries" in d.stats:
        title += f": {d.stats['target']} on {d.stats['n_queries']} {split} windows"
    show(d, title)
    if d.stats.get("weak_lanes"):
        err_console.print(f"[yellow]weak lanes: {', '.join(d.stats['weak_lanes'])}[/yellow]")
    finish(d, out or Path("diagnostics") / f"lanes-{_slug(bank)}")


def _value(v) -> str:
    if v is None:
        return ""
    if isinstance(v, int):
        return str(v)
    return f"{v:.4g}"


def _slug(p) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(p)).stem or str(p)).strip("_") or "target"
