"""``lvmkit pairs``: two-tower (context window, next chunk) pairs from the train articles of a bank."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lvmkit.cli.common import console


def pairs(
    bank: Annotated[
        Path, typer.Argument(help="Bank directory (made by `lvmkit ingest`).", show_default=False)
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Directory to write pairs.parquet + manifest.json (+ split.json)."),
    ],
    ctx: Annotated[
        int, typer.Option(help="Context chunks per pair (the query tower reads up to this many).")
    ] = 100,
    min_ctx: Annotated[
        int | None,
        typer.Option(
            help="Shortest real context allowed (left-padded up to --ctx); default: --ctx, i.e. full windows only."
        ),
    ] = None,
    stride: Annotated[int, typer.Option(help="Step between consecutive targets within an article.")] = 32,
    max_per_article: Annotated[
        int,
        typer.Option(
            help="Cap on pairs per article (a seeded random subset of longer articles); 0 = no cap."
        ),
    ] = 30,
    target_pairs: Annotated[
        int | None,
        typer.Option(
            help="Aim for this many pairs: the largest stride (then the smallest cap) that reaches it is chosen, "
            "a surplus after dedup is thinned at random. The report shows target vs actual."
        ),
    ] = None,
    dedup_cos: Annotated[
        float,
        typer.Option(
            help="Drop a pair whose target has cosine above this with a recently kept target; 0 = no dedup."
        ),
    ] = 0.999,
    dedup_window: Annotated[
        int, typer.Option(help="How many recently kept targets the dedup compares with.")
    ] = 1000,
    split_name: Annotated[
        str, typer.Option("--split", help="Which split's articles: train, val or test.")
    ] = "train",
    ratios: Annotated[
        str,
        typer.Option(help="Train,val,test fractions of the article-disjoint split (must match the run's)."),
    ] = "0.8,0.1,0.1",
    split_seed: Annotated[
        int, typer.Option(help="Seed of the article split (must match the run's split.seed).")
    ] = 0,
    seed: Annotated[
        int, typer.Option(help="Seed for the per-article cap and the thinning to --target-pairs.")
    ] = 0,
) -> None:
    """Make (context window, next chunk) pairs for two-tower training, by chunk id (no vectors copied).

    Pairs come from one split (train by default) of the article-disjoint split that `lvmkit train` makes from split.ratios / split.seed, so a run with the same values accepts them.

    Each article yields a target every --stride chunks once --ctx (or --min-ctx) earlier chunks exist, at most --max-per-article of them; a target with cosine > --dedup-cos to a recently kept one is dropped.

    OUT gets pairs.parquet, manifest.json (bank id, split hash, arguments, counts) and split.json.

    Example: lvmkit pairs banks/enwiki --ctx 100 --stride 32 --max-per-article 30 --out pairs/enwiki
    """
    from lvmkit.bank.bank import VectorBank
    from lvmkit.data.pairs import make_pairs
    from lvmkit.data.splits import make_split
    from lvmkit.errors import ConfigError

    try:
        split_ratios = tuple(float(x) for x in ratios.split(","))
    except ValueError:
        raise ConfigError(
            f"--ratios {ratios!r} must be three comma-separated numbers, e.g. 0.8,0.1,0.1"
        ) from None
    b = VectorBank.open(bank)
    split = make_split(b, ratios=split_ratios, seed=split_seed)
    ps = make_pairs(
        b,
        split,
        ctx=ctx,
        stride=stride,
        max_per_article=max_per_article or None,
        target_pairs=target_pairs,
        dedup_cos=dedup_cos or None,
        dedup_window=dedup_window,
        min_ctx=min_ctx,
        seed=seed,
        split_name=split_name,
    )
    ps.save(out)
    split.save(out / "split.json")
    console.print(pairs_report(ps.manifest))
    console.print(f"wrote {len(ps):,} pairs to {out}")


def pairs_report(manifest: dict) -> Table:
    """The counts of a pair set: candidates, what each step removed, and actual vs target pairs."""
    c, a, chosen = manifest["counts"], manifest["arguments"], manifest["chosen"]
    t = Table(title=f"pairs from the {a['split_name']} split ({c['articles']:,} articles, ctx {a['ctx']})")
    t.add_column("step")
    t.add_column("pairs", justify="right")
    t.add_column("note")
    cap = chosen["max_per_article"]
    t.add_row("candidates", f"{c['candidates']:,}", f"stride {chosen['stride']} (asked {a['stride']})")
    t.add_row(
        "dropped by per-article cap",
        f"{c['dropped_by_cap']:,}",
        f"cap {cap if cap is not None else 'none'} (asked {a['max_per_article']}); "
        f"{c['capped_articles']:,} articles capped",
    )
    dedup = f"cos > {a['dedup_cos']}" if a["dedup_cos"] is not None else "dedup off"
    t.add_row("dropped as duplicate targets", f"{c['dropped_dup']:,}", dedup)
    if a["target_pairs"] is not None:
        t.add_row("dropped to meet the target", f"{c['dropped_by_target']:,}", "random thinning")
    t.add_row("kept", f"{c['kept']:,}", "")
    if a["target_pairs"] is not None:
        gap = c["kept"] - a["target_pairs"]
        note = (
            "target met" if gap == 0 else (f"{-gap:,} short of the target" if gap < 0 else f"{gap:,} above")
        )
        t.add_row("target", f"{a['target_pairs']:,}", note)
    return t
