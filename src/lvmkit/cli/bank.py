"""Bank commands: ``lvmkit ingest``, ``lvmkit index build``, ``lvmkit search``, ``lvmkit bank info``.

Each command parses its arguments and calls one library function; heavy modules (faiss, torch, the
encoders) are imported inside the commands so that ``lvmkit --help`` stays fast.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lvmkit.cli.common import console, human_bytes, human_duration, make_app, make_progress, print_error
from lvmkit.errors import ConfigError

index_app = make_app(help="Build the FAISS index of a bank.")
bank_app = make_app(help="Inspect a bank.")

BankArg = Annotated[
    Path, typer.Argument(help="Bank directory (made by `lvmkit ingest`).", show_default=False)
]


# ------------------------------------------------------------------------------------------------ ingest
def ingest(
    corpus: Annotated[
        str,
        typer.Argument(
            help="Corpus path (WikiExtractor dir/file, .jsonl, .parquet, WikiText, dir of .txt), "
            "or 'embedded' for the default corpus shipped with lvmkit.",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bank directory to create (or resume).")],
    format: Annotated[
        str, typer.Option(help="Reader: auto, wikiextractor, jsonl, parquet, wikitext, textdir, embedded.")
    ] = "auto",
    chunker: Annotated[
        str, typer.Option(help="Chunking: sentence, words:N (pack ~N words), paragraph.")
    ] = "sentence",
    encoder: Annotated[
        str | None,
        typer.Option(
            help="Encoder model name or path; default: offline all-MiniLM-L6-v2 ('hash:64' for tests)."
        ),
    ] = None,
    backend: Annotated[str, typer.Option(help="Encoder backend: st, onnx-int8, hash.")] = "st",
    limit_articles: Annotated[
        int | None, typer.Option(help="Read at most N articles (default: all).")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Encoder batch size [default: the backend's fastest: st 32 on CPU, 128 on GPU; onnx-int8 16].",
            show_default=False,
        ),
    ] = None,
    max_chars: Annotated[
        int,
        typer.Option(
            help="Longest chunk in characters: longer ones are split at spaces and counted as long_chunk_split "
            "(the encoder would silently drop text past its window: all-MiniLM-L6-v2 reads ~1,000-1,300)."
        ),
    ] = 2000,
    shard_size: Annotated[int, typer.Option(help="Chunks per resumable shard.")] = 4096,
    dtype: Annotated[str, typer.Option(help="Vector storage: float32 or float16.")] = "float32",
    device: Annotated[str, typer.Option(help="Encoder device: auto, cpu, cuda, mps.")] = "auto",
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Rebuild OUT even if it holds a bank or an interrupted ingest with other arguments.",
        ),
    ] = False,
) -> None:
    """Chunk and encode a corpus into a vector bank (vectors.npy + chunks.parquet + manifest.json).

    Interrupted runs resume: re-run the same command and only the missing shards are encoded.

    Example: lvmkit ingest embedded --out banks/embedded --chunker sentence
    """
    options = {
        "format": format,
        "chunker": chunker,
        "encoder": encoder,
        "backend": backend,
        "limit_articles": limit_articles,
        "batch_size": batch_size,
        "shard_size": shard_size,
        "dtype": dtype,
        "device": device,
        "overwrite": overwrite,
        "max_chars": max_chars,
    }
    t0 = time.perf_counter()
    bank, bars = _ingest_with_bars(corpus, out, options)
    _print_ingest_summary(bank, bars, time.perf_counter() - t0)


def _ingest_with_bars(corpus: str, out: Path, options: dict):
    """``lvmkit.bank.ingest.ingest`` with one progress bar per stage; Ctrl-C says how to resume (exit 130).
    Returns (the bank, the ``_StageBars`` with the encoding stage's counts and time)."""
    from lvmkit.bank.ingest import ingest as run_ingest

    try:
        with make_progress() as progress:
            bars = _StageBars(progress)
            return run_ingest(corpus, out, progress=bars, **options), bars
    except KeyboardInterrupt:
        print_error(
            f"interrupted; finished shards are kept in {out}/.ingest: re-run the same command to resume"
        )
        raise typer.Exit(130) from None


def _print_ingest_summary(bank, bars: _StageBars, elapsed: float) -> None:
    """What was written: articles, chunks, vectors, skipped / repaired counts, time and encoding rate."""
    m = bank.manifest
    skipped = ", ".join(f"{k} {v:,}" for k, v in sorted(m.corpus.skipped.items())) or "none"
    console.print(f"[bold green]bank written[/bold green] {bank.path}")
    console.print(
        f"  {m.corpus.articles:,} articles, {len(bank):,} chunks, {bank.dim}-d {m.vector_dtype} "
        f"({m.encoder.name}, {m.encoder.backend})"
    )
    console.print(f"  skipped: {skipped}")
    if m.corpus.repaired:
        console.print("  repaired: " + ", ".join(f"{k} {v:,}" for k, v in sorted(m.corpus.repaired.items())))
    rate = bars.encoded / bars.encode_seconds if bars.encode_seconds else float("nan")
    resumed = f", {bars.resumed:,} resumed from an earlier run" if bars.resumed else ""
    console.print(
        f"  time {human_duration(elapsed)} in all; chunk + encode {human_duration(bars.encode_seconds)} for "
        f"{bars.encoded:,} chunks ({rate:,.1f} chunks/s){resumed}"
    )


class _StageBars:
    """The ingest progress callback (``lvmkit.bank.ingest.ProgressFn``): one rich bar per stage (counting
    articles -> encoding, total estimated until the end -> writing bank), and the encoding stage's own
    time and rate for the summary (the total time also holds model loading and the counting pass)."""

    BARS = {
        "count": ("counting articles", "articles"),
        "encode": ("encoding", "chunks"),
        "assemble": ("writing bank", "chunks"),
    }

    def __init__(self, progress):
        self.progress = progress
        self.tasks: dict[str, int] = {}
        self.resumed = 0  # chunks found already encoded by an interrupted run
        self.encoded = 0  # chunks encoded by this run
        self.encode_seconds = 0.0
        self._last_event = time.perf_counter()

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        now = time.perf_counter()
        if stage == "skip":
            self.resumed = done
        elif stage == "encode":
            self.encode_seconds += now - self._last_event
            self.encoded = done - self.resumed
        self._last_event = now
        bar = "encode" if stage == "skip" else stage
        if bar not in self.tasks:
            for old in list(self.tasks):  # one bar at a time: the previous stage is over
                self.progress.remove_task(self.tasks.pop(old))
            label, unit = self.BARS[bar]
            self.tasks[bar] = self.progress.add_task(label, total=total, unit=unit)
        if stage == "skip":  # shards resumed from disk: restart the rate estimate from here
            self.progress.reset(self.tasks[bar], total=total, completed=done)
        else:
            self.progress.update(self.tasks[bar], total=total, completed=done)


# ------------------------------------------------------------------------------------------------- index
@index_app.command("build")
def index_build(
    bank: BankArg,
    type: Annotated[str, typer.Option("--type", "-t", help="Index type: flat (exact), ivf, hnsw.")] = "flat",
    nlist: Annotated[int | None, typer.Option(help="ivf: number of clusters (default ~4*sqrt(N)).")] = None,
    nprobe: Annotated[int, typer.Option(help="ivf: clusters searched per query.")] = 16,
    m: Annotated[int, typer.Option("--m", help="hnsw: neighbours per node (M).")] = 32,
    ef_search: Annotated[int, typer.Option(help="hnsw: search beam width (efSearch).")] = 64,
    recall_sample: Annotated[
        int, typer.Option(help="ivf/hnsw: bank rows used as queries to measure recall@10.")
    ] = 1000,
) -> None:
    """Build a FAISS index over BANK and store it as BANK/index.faiss (parameters in the manifest).

    For ivf and hnsw, recall@10 against exact search is measured on a sample of bank rows and recorded.

    Example: lvmkit index build banks/embedded --type ivf --nprobe 16
    """
    from lvmkit.bank import VectorBank
    from lvmkit.bank.bank import lock_bank
    from lvmkit.bank.index import INDEX_TYPES

    if type not in INDEX_TYPES:
        raise ConfigError(f"--type {type!r} is not an index type; allowed: {', '.join(INDEX_TYPES)}")
    vb = VectorBank.open(bank)
    with lock_bank(vb.path, "index build"):
        _build_and_save(vb, type, nlist, nprobe, m, ef_search, recall_sample)
    params = ", ".join(f"{k}={v}" for k, v in vb.manifest.index.items() if k not in ("built", "dim"))
    console.print(f"[bold green]index saved[/bold green] {vb.path / 'index.faiss'}  ({params})")


def _build_and_save(vb, type: str, nlist, nprobe: int, m: int, ef_search: int, recall_sample: int) -> None:
    from lvmkit.bank.index import build_index, recall_against_exact, save_index

    t0 = time.perf_counter()
    with console.status(f"building {type} index over {len(vb):,} x {vb.dim}-d vectors"):
        index = build_index(vb.vectors, type=type, nlist=nlist, nprobe=nprobe, hnsw_m=m, ef_search=ef_search)
    extra: dict = {"build_seconds": round(time.perf_counter() - t0, 3)}
    if type != "flat":
        with console.status(f"measuring recall@10 against exact search ({recall_sample:,} queries)"):
            extra["recall@10"] = round(recall_against_exact(index, vb.vectors, k=10, sample=recall_sample), 4)
            extra["recall_sample"] = min(recall_sample, len(vb))
    save_index(vb, index, extra=extra)


# ------------------------------------------------------------------------------------------------ search
def search(
    bank: BankArg,
    text: Annotated[str, typer.Argument(help="Query text.", show_default=False)],
    k: Annotated[int, typer.Option("-k", "--k", help="Number of results.")] = 5,
    nprobe: Annotated[
        int | None, typer.Option(help="ivf: clusters to search (hnsw: efSearch); default: the index's own.")
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="Encoder backend for the query (default: the bank's own).")
    ] = None,
    device: Annotated[str, typer.Option(help="Encoder device: auto, cpu, cuda, mps.")] = "cpu",
    width: Annotated[int, typer.Option(help="Characters of chunk text shown per result.")] = 100,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the results as JSON (full texts) instead of a table.")
    ] = False,
) -> None:
    """Encode TEXT with the bank's own encoder and print the k nearest chunks of BANK.

    Example: lvmkit search banks/embedded "the capital of France" -k 5
    """
    from lvmkit.bank import VectorBank
    from lvmkit.bank.query import search_text

    vb = VectorBank.open(bank)
    hits = [h.to_dict() for h in search_text(vb, text, k, backend=backend, device=device, nprobe=nprobe)]
    rows = [h["chunk_id"] for h in hits]
    if as_json:
        console.print_json(data=hits)
        return
    shown_query = text if len(text) <= 60 else text[:59] + "…"
    table = Table(title=f"top {len(rows)} of {len(vb):,} chunks for {shown_query!r}", title_justify="left")
    for name in ("rank", "score", "chunk_id"):
        table.add_column(name, justify="right")
    table.add_column("title")
    table.add_column("text")
    for h in hits:
        chunk = h["text"] if len(h["text"]) <= width else h["text"][: width - 1] + "…"
        table.add_row(str(h["rank"]), f"{h['score']:.4f}", str(h["chunk_id"]), h["title"], chunk)
    console.print(table)


# -------------------------------------------------------------------------------------------- bank info
@bank_app.command("info")
def bank_info(
    bank: BankArg,
    check: Annotated[
        str,
        typer.Option(
            help="Vectors checked for NaN, Inf and norm outliers: sample (<= 2,000 rows, as every command does "
            "at open) or full (every row; reads the whole vectors.npy)."
        ),
    ] = "sample",
) -> None:
    """Summarise BANK: encoder, vectors, chunker, corpus, index, chunks per article, file sizes.

    A damaged file (truncated vectors.npy, missing chunks.parquet, NaN rows...) is named with the command that
    rebuilds it; exit status 2.

    Example: lvmkit bank info banks/embedded --check full
    """
    import numpy as np

    from lvmkit.bank import VectorBank

    if check not in ("sample", "full"):
        raise ConfigError(f"--check {check!r} is not known; use sample or full")
    vb = VectorBank.open(bank, check=check)
    m = vb.manifest
    per_article = np.diff(vb.article_starts)
    table = Table(title=f"bank {vb.path}", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("bank id", m.bank_id)
    table.add_row(
        "encoder", f"{m.encoder.describe()}; backend {m.encoder.backend}, revision {m.encoder.revision}"
    )
    checked = "every row" if check == "full" else f"a sample of {min(len(vb), 2000):,} rows"
    table.add_row(
        "vectors", f"{len(vb):,} x {vb.dim} {m.vector_dtype} (no NaN, Inf or norm outlier in {checked})"
    )
    table.add_row("chunker", ", ".join(f"{k}={v}" for k, v in m.chunker.items()))
    skipped = ", ".join(f"{k} {v:,}" for k, v in sorted(m.corpus.skipped.items())) or "none"
    if m.corpus.repaired:
        skipped += "; repaired: " + ", ".join(f"{k} {v:,}" for k, v in sorted(m.corpus.repaired.items()))
    table.add_row("corpus", f"{m.corpus.source} (format {m.corpus.format})")
    hashes = f"chunk texts {m.corpus.content_hash[:16]}"
    if m.corpus.source_hash:
        hashes += f", source files {m.corpus.source_hash[:16]}"
    table.add_row("sha256", hashes)
    table.add_row("articles", f"{vb.n_articles:,} (skipped: {skipped})")
    if len(per_article):
        table.add_row(
            "chunks/article",
            f"min {per_article.min()}, median {np.median(per_article):g}, mean {per_article.mean():.1f}, "
            f"max {per_article.max()}",
        )
    index = ", ".join(f"{k}={v}" for k, v in m.index.items()) if m.index else "none (exact search on the fly)"
    table.add_row("index", index)
    table.add_row("created", m.created)
    files = sorted(p for p in vb.path.iterdir() if p.is_file() and not p.name.startswith("."))
    table.add_row("files", "\n".join(f"{p.name}  {human_bytes(p.stat().st_size)}" for p in files))
    console.print(table)
