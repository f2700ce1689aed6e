"""``lvmkit lanes fit | assign | schema``: domain lanes (a lane classifier, and lanes written into a bank).

lvmkit lanes schema > my_lanes.yaml                       # the default schema, to edit
lvmkit lanes fit /work/qs/bank --out lanes/clf [--schema my_lanes.yaml]
lvmkit lanes assign banks/enwiki --classifier lanes/clf
lvmkit diagnose lanes banks/enwiki [--run runs/gru]       # shares, per-lane Hit@5, weak lanes, confusions
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lvmkit.cli.common import console, make_app

lanes_app = make_app(help="Domain lanes: fit a lane classifier on labelled chunks, assign lanes to a bank.")


def _floats(text: str, what: str) -> list[float]:
    from lvmkit.errors import ConfigError

    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated numbers, got {text!r}") from None


@lanes_app.command("fit")
def fit(
    bank: Annotated[
        Path,
        typer.Argument(
            help="A labelled bank: its `label` column holds the labels the schema maps to lanes.",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for classifier.json + weights.npz.")],
    schema: Annotated[
        Path | None, typer.Option("--schema", help="Lane schema YAML (default: the packaged 16-lane schema).")
    ] = None,
    ratios: Annotated[
        str, typer.Option(help="Train,val,test fractions of the article-disjoint split.")
    ] = "0.8,0.1,0.1",
    seed: Annotated[int, typer.Option(help="Split seed (and the seed of the train sample).")] = 0,
    cs: Annotated[
        str, typer.Option("--C", help="Inverse regularisation strengths tried; the best on val is kept.")
    ] = "0.3,1,3",
    max_train: Annotated[int, typer.Option(help="Train chunks used (a seeded sample); 0 = all.")] = 60_000,
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels",
            help="Article labels to use instead of the bank's label column: CSV (header article_id,label) or JSONL.",
        ),
    ] = None,
) -> None:
    """Fit a logistic-regression lane classifier; report held-out accuracy and the confusion matrix."""
    from lvmkit.bank.bank import VectorBank
    from lvmkit.lanes import fit_lane_classifier, load_schema, top_confusions
    from lvmkit.lanes.classifier import read_article_labels

    sch = load_schema(schema)
    b = VectorBank.open(bank)
    clf = fit_lane_classifier(
        b,
        sch,
        ratios=_floats(ratios, "--ratios"),
        seed=seed,
        Cs=_floats(cs, "--C"),
        max_train=max_train or None,
        labels=None if labels is None else read_article_labels(labels),
        progress=lambda msg: console.print(msg, highlight=False),
    )
    clf.save(out)
    m = clf.metrics
    console.print(
        f"held-out (test split, {m['test_rows']:,} chunks of {m['test_articles']:,} articles): accuracy "
        f"{m['test_accuracy']:.3f}, balanced {m['test_balanced_accuracy']:.3f}, per article (majority) "
        f"{m['test_article_accuracy']:.3f}; C={m['C']:g} chosen on val ({m['val_accuracy']:.3f})"
    )
    show_confusion(m["confusion"]["lanes"], m["confusion"]["matrix"])
    for c in top_confusions(m["confusion"]["matrix"], m["confusion"]["lanes"]):
        console.print(
            f"  {c['true']} -> {c['predicted']}: {c['count']} ({100 * c['rate']:.1f}% of {c['true']})"
        )
    console.print(f"wrote {out}")


def show_confusion(ids: list[str], matrix: list[list[int]]) -> None:
    """The confusion matrix as a table (lanes without held-out rows or predictions left out)."""
    import numpy as np
    from rich.table import Table

    m = np.asarray(matrix)
    keep = [i for i in range(len(ids)) if m[i].sum() or m[:, i].sum()]
    table = Table(title="confusion (rows: true lane, columns: predicted)", title_justify="left")
    table.add_column("true \\ pred", no_wrap=True)
    for j in keep:
        table.add_column(ids[j][:6], justify="right")
    for i in keep:
        table.add_row(ids[i], *(str(m[i, j]) for j in keep))
    console.print(table)


@lanes_app.command("assign")
def assign(
    bank: Annotated[Path, typer.Argument(help="Bank directory to add lane columns to.", show_default=False)],
    classifier: Annotated[
        Path, typer.Option("--classifier", "-c", help="A directory from `lvmkit lanes fit`.")
    ],
) -> None:
    """Add `lane` (per chunk) and `article_lane` (article majority) columns to the bank; bank_id is unchanged."""
    from lvmkit.bank.bank import VectorBank
    from lvmkit.cli.common import make_progress
    from lvmkit.lanes import LaneClassifier, assign_lanes

    clf = LaneClassifier.load(classifier)
    b = VectorBank.open(bank)
    with make_progress() as progress:
        task = progress.add_task("classifying", total=len(b), unit="chunks")
        result = assign_lanes(b, clf, progress=lambda done, total: progress.update(task, completed=done))
    shares = result.shares()
    console.print(
        "lanes (share of chunks): "
        + ", ".join(f"{k} {100 * v:.1f}%" for k, v in sorted(shares.items(), key=lambda kv: -kv[1]) if v > 0)
    )
    console.print(f"wrote lane, article_lane columns to {b.path / b.CHUNKS} (bank id {b.manifest.bank_id})")


@lanes_app.command("schema")
def schema(
    path: Annotated[
        Path | None, typer.Argument(help="A schema file to validate and print (default: the packaged one).")
    ] = None,
) -> None:
    """Print a lane schema as YAML (the default one when no file is given): a starting point to edit."""
    from lvmkit.lanes import DEFAULT_SCHEMA_YAML, load_schema

    print(DEFAULT_SCHEMA_YAML if path is None else load_schema(path).to_yaml(), end="")
