"""Ingest: corpus -> chunks -> encoded shards -> vector bank, streaming and resumable.

    ingest("../shared/data/enwiki2015", "banks/enwiki", chunker="sentence")

How it works, and why it survives being killed:

1. The corpus is read and chunked in its deterministic order, one article at a time. Chunks are grouped
   into shards of ``shard_size`` rows: shard ``i`` always holds bank rows ``i*shard_size ..
   (i+1)*shard_size - 1``, whatever happened before.
2. Each shard is encoded and written under ``OUT/.ingest/`` as ``shard-NNNNN.npy`` (vectors) and then
   ``shard-NNNNN.parquet`` (chunk table), each atomically. A shard whose parquet file exists is complete.
3. ``OUT/.ingest/state.json`` records the arguments that decide the bank's contents (corpus and its
   source hash, format, chunker, encoder, limit, shard size, dtype). A re-run with the same arguments
   re-reads and re-chunks the whole corpus (a fraction of the encoding cost) but re-encodes only the
   missing shards, after checking that each finished shard holds exactly the chunks it re-derived; a
   re-run with different arguments is refused unless ``overwrite=True``.
4. When every shard exists, the bank is assembled shard by shard: vectors.npy is preallocated with
   ``np.lib.format.open_memmap`` on a temporary name and filled, chunks.parquet is written one row
   group per shard, then the manifest (written last: it marks the bank complete), and the shard
   directory is removed.

Only one shard is ever in memory, so peak memory does not grow with the corpus. Articles that produce
no chunks are skipped and counted under ``no_chunks`` beside the reader's own skip counts.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lvmkit.artifacts import atomic_path, read_json, write_json, write_npy
from lvmkit.bank.bank import CHUNK_SCHEMA, VectorBank, lock_bank, text_hash
from lvmkit.bank.checks import vector_problems
from lvmkit.bank.index import INDEX_FILE
from lvmkit.bank.manifest import BankManifest, CorpusInfo
from lvmkit.corpus import (
    ReadStats,
    corpus_source_hash,
    detect_format,
    embedded_corpus_path,
    make_chunker,
    read_corpus,
)
from lvmkit.corpus.chunking import DEFAULT_MAX_CHARS
from lvmkit.corpus.types import Chunk
from lvmkit.errors import ArtifactError, ConfigError, CorpusError, LvmkitError

WORK_DIR = ".ingest"
STATE_FILE = "state.json"
STATE_VERSION = 1
DTYPES = ("float32", "float16")

ProgressFn = Callable[[str, int, "int | None"], None]
"""``progress(stage, done, total)``, called often with absolute counts:

- ``"count"``: articles found by a quick read-only pass (run only when a progress callback is given;
  it reads but does not chunk, since sentence splitting costs about as much as a fifth of encoding);
  total None until the last call, which has done == total.
- ``"skip"``: chunks found already encoded on disk by an earlier, interrupted run (reported once per
  resumed shard; a display should restart its rate estimate from here).
- ``"encode"``: chunks encoded so far (resumed ones included); total = an *estimate* of all chunks,
  chunks-per-article so far times the article count, exact once the last shard is done.
- ``"assemble"``: rows copied into the final bank; total = all chunks.
"""


def ingest(
    corpus: str | Path,
    out: str | Path,
    format: str = "auto",
    chunker: str = "sentence",
    encoder: Any = None,
    backend: str = "st",
    limit_articles: int | None = None,
    batch_size: int | None = None,
    shard_size: int = 4096,
    dtype: str = "float32",
    device: str = "auto",
    progress: ProgressFn | None = None,
    overwrite: bool = False,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> VectorBank:
    """Build the bank ``out`` from ``corpus`` (see the module docstring); resume it if interrupted.

    corpus          a corpus path, or "embedded" for the default corpus that ships with lvmkit
    format          reader format, or "auto" to detect it (see ``lvmkit.corpus.read_corpus``)
    chunker         chunking spec: "sentence", "words:N" or "paragraph"
    max_chars       longest chunk; longer pieces are split at spaces and counted (``long_chunk_split``)
    encoder         model name for ``lvmkit.encode.load_encoder`` (None = offline all-MiniLM-L6-v2), or an
                    already loaded ``Encoder``
    backend         "st", "onnx-int8" or "hash" (ignored when ``encoder`` is an Encoder object)
    limit_articles  read at most this many articles
    batch_size      encoder batch size; None = the encoder's default_batch_size (does not change the bank,
                    so it may differ on resume)
    shard_size      chunks per shard: the unit of resumption and of peak memory
    dtype           storage dtype of vectors.npy: "float32" or "float16"
    device          encoder device: "auto", "cpu", "cuda", ... (may differ on resume)
    overwrite       discard an existing bank or an interrupted ingest with other arguments in ``out``
    """
    out = Path(out)
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is not allowed; use one of: {', '.join(DTYPES)}")
    if shard_size < 1 or (batch_size is not None and batch_size < 1):
        raise ConfigError(f"--shard-size and --batch-size must be >= 1 (got {shard_size} and {batch_size})")
    if limit_articles is not None and limit_articles < 1:
        raise ConfigError(f"--limit-articles must be >= 1 (got {limit_articles})")
    chunk_maker = make_chunker(chunker, max_chars=max_chars)
    source, fmt = _resolve_corpus(corpus, format)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"--out {out} exists and is not a directory")
    with lock_bank(out, "ingest"):
        return _ingest_locked(
            source,
            fmt,
            out,
            chunk_maker,
            encoder,
            backend,
            limit_articles,
            batch_size,
            shard_size,
            dtype,
            device,
            progress,
            overwrite,
        )


def _ingest_locked(
    source: Path,
    fmt: str,
    out: Path,
    chunk_maker,
    encoder: Any,
    backend: str,
    limit_articles: int | None,
    batch_size: int | None,
    shard_size: int,
    dtype: str,
    device: str,
    progress: ProgressFn | None,
    overwrite: bool,
) -> VectorBank:
    """The body of ``ingest``, run while this process holds the bank's lock."""
    work = out / WORK_DIR
    _prepare_out(out, overwrite)
    enc = _load_encoder(encoder, backend, device)

    state = _ingest_state(source, fmt, chunk_maker, enc, limit_articles, shard_size, dtype)
    _check_state(work, state)

    def articles(stats: ReadStats | None = None):
        return read_corpus(source, format=fmt, limit_articles=limit_articles, stats=stats)

    # the counting pass reports nothing: the encode pass below reads the same input and warns once
    n_articles = _count_articles(articles(ReadStats(max_examples=0)), progress) if progress else None
    # ---- encode pass: every shard, re-encoding only those an earlier run did not finish
    stats = ReadStats()
    counts = {"articles": 0, "no_chunks": 0, "chunks": 0}  # so far, updated by _chunks as it streams
    tracker = _EncodeProgress(progress, n_articles, counts)
    shards = _shards(_chunks(articles(stats), chunk_maker, counts, stats), shard_size)
    n_shards = _encode_shards(work, shards, shard_size, enc, batch_size, dtype, tracker)
    done = tracker.done
    if done == 0:
        raise CorpusError(
            f"corpus {source} (format {fmt}) produced no chunks: {counts['no_chunks']} articles had no "
            f"chunks; reader: {stats.summary()}"
        )
    # ---- assembly: the bank files from the shards, then the manifest (last: it marks completion)
    _finish_bank(
        out, work, enc, chunk_maker, source, fmt, state, counts, stats, n_shards, done, dtype, progress
    )
    return VectorBank.open(out)


def _ingest_state(
    source: Path, fmt: str, chunk_maker, enc, limit_articles, shard_size: int, dtype: str
) -> dict:
    """What a resumed ingest must share with the run that wrote the shards (``_check_state`` compares it)."""
    return {
        "version": STATE_VERSION,
        "corpus": str(source),
        "format": fmt,
        "source_hash": corpus_source_hash(source, fmt),
        "chunker": chunk_maker.config(),
        "encoder": enc.info.model_dump(mode="json"),
        "limit_articles": limit_articles,
        "shard_size": shard_size,
        "dtype": dtype,
    }


class _EncodeProgress:
    """Chunks done so far (finished shards + those encoded in the current one) and the running total estimate."""

    def __init__(self, progress: ProgressFn | None, n_articles: int | None, counts: dict[str, int]):
        self.progress, self.n_articles, self.counts, self.done = progress, n_articles, counts, 0

    def estimated_total(self) -> int | None:
        seen = self.counts["articles"] + self.counts["no_chunks"]
        if not self.n_articles or not seen:
            return None
        return max(self.counts["chunks"], round(self.counts["chunks"] / seen * self.n_articles))

    def on_encoded(self, n: int) -> None:
        self.done += n
        self.report("encode")

    def report(self, stage: str, total: int | None = None) -> None:
        if self.progress:
            self.progress(stage, self.done, total if total is not None else self.estimated_total())


def _encode_shards(work: Path, shards, shard_size: int, enc, batch_size, dtype: str, tracker) -> int:
    """Encode and write every shard an earlier run did not finish (finished ones are verified); the shard count."""
    n_shards = 0
    for i, rows in enumerate(shards):
        n_shards, start = i + 1, i * shard_size
        if _shard_done(work, i):
            _verify_shard(work, i, start, rows)
            tracker.done = start + len(rows)
            tracker.report("skip")
            continue
        on_encoded = tracker.on_encoded if tracker.progress else None
        vectors = enc.encode([c.text for c in rows], batch_size=batch_size, progress=on_encoded)
        vectors = _check_vectors(vectors, len(rows), enc.info.dim, enc.info.normalized, start)
        _write_shard(work, i, start, rows, vectors, dtype)
        tracker.done = start + len(rows)
        tracker.report("encode")
    tracker.report("encode", tracker.done)  # the exact total
    return n_shards


def _finish_bank(
    out: Path,
    work: Path,
    enc: Any,
    chunk_maker,
    source: Path,
    fmt: str,
    state: dict[str, Any],
    counts: dict[str, int],
    stats: ReadStats,
    n_shards: int,
    done: int,
    dtype: str,
    progress: ProgressFn | None,
) -> None:
    """Assemble vectors.npy + chunks.parquet from the shards, then write the manifest (last: it marks the
    bank complete) and remove the work directory."""
    content_hash = _assemble(out, work, n_shards, done, enc.info.dim, dtype, progress)
    skipped = {**stats.skipped, "no_chunks": counts["no_chunks"]}
    manifest = BankManifest(
        encoder=enc.info,
        chunker=chunk_maker.config(),
        corpus=CorpusInfo(
            source="embedded" if fmt == "embedded" else str(source),
            format=fmt,
            content_hash=content_hash,
            source_hash=state["source_hash"],
            articles=counts["articles"],
            limit_articles=state["limit_articles"],
            skipped={k: v for k, v in skipped.items() if v},
            repaired=stats.repaired,
        ),
        count=done,
        vector_dtype=dtype,
    )
    write_json(out / VectorBank.MANIFEST, manifest.model_dump(mode="json"))
    shutil.rmtree(work)


# ----------------------------------------------------------------------------------------- streaming
def _chunks(articles: Iterator, chunk_maker, counts: dict[str, int], stats: ReadStats) -> Iterator[Chunk]:
    """All chunks in corpus order; counts articles kept and articles that produced no chunks."""
    for article in articles:
        chunks = chunk_maker.chunk(article, stats)
        if not chunks:
            counts["no_chunks"] += 1
            continue
        counts["articles"] += 1
        counts["chunks"] += len(chunks)
        yield from chunks


def _shards(chunks: Iterator[Chunk], shard_size: int) -> Iterator[list[Chunk]]:
    """Consecutive lists of ``shard_size`` chunks (the last one may be shorter)."""
    while batch := list(itertools.islice(chunks, shard_size)):
        yield batch


def _count_articles(articles: Iterator, progress: ProgressFn) -> int:
    n = 0
    for n, _ in enumerate(articles, 1):
        if n % 500 == 0:
            progress("count", n, None)
    progress("count", n, n)  # done
    return n


# -------------------------------------------------------------------------------------------- shards
def _shard_path(work: Path, i: int, ext: str) -> Path:
    return work / f"shard-{i:05d}.{ext}"


def _shard_done(work: Path, i: int) -> bool:
    """A shard is complete once its parquet file exists: it is written (atomically) after the vectors."""
    return _shard_path(work, i, "parquet").exists() and _shard_path(work, i, "npy").exists()


def _shard_table(start: int, rows: list[Chunk]) -> pa.Table:
    return pa.table(
        {
            "chunk_id": pa.array(np.arange(start, start + len(rows), dtype=np.int64)),
            "article_id": [c.article_id for c in rows],
            "title": [c.title for c in rows],
            "chunk_index": pa.array([c.chunk_index for c in rows], pa.int32()),
            "paragraph_index": pa.array([c.paragraph_index for c in rows], pa.int32()),
            "heading": pa.array([c.heading for c in rows], pa.string()),
            "text": [c.text for c in rows],
            "label": pa.array([c.label for c in rows], pa.string()),
        },
        schema=CHUNK_SCHEMA,
    )


def _write_shard(work: Path, i: int, start: int, rows: list[Chunk], vectors: np.ndarray, dtype: str) -> None:
    write_npy(_shard_path(work, i, "npy"), vectors.astype(dtype, copy=False))
    with atomic_path(_shard_path(work, i, "parquet"), suffix=".parquet") as tmp:
        pq.write_table(_shard_table(start, rows), tmp)


def _verify_shard(work: Path, i: int, start: int, rows: list[Chunk]) -> None:
    """A resumed shard must hold exactly the chunks this run produced for it (same corpus, same chunker)."""
    stored = pq.read_table(_shard_path(work, i, "parquet"), columns=["text"]).column("text").to_pylist()
    if stored != [c.text for c in rows]:
        raise ArtifactError(
            f"{_shard_path(work, i, 'parquet')} does not hold the chunks this run produced for rows "
            f"{start}..{start + len(rows) - 1}: the corpus or the chunker changed since the interrupted ingest. "
            "Re-run with --overwrite to start again."
        )


def _check_vectors(vectors: np.ndarray, n: int, dim: int, normalized: bool, first_row: int) -> np.ndarray:
    """The shard's vectors, checked: shape, NaN / Inf, norm outliers (``bank.checks.vector_problems``)."""
    vectors = np.asarray(vectors)
    if vectors.shape != (n, dim):
        raise LvmkitError(
            f"the encoder returned vectors of shape {vectors.shape} for {n} texts; expected ({n}, {dim})"
        )
    if problem := vector_problems(vectors, normalized, first_row):
        raise LvmkitError(
            f"the encoder returned bad vectors for bank rows {first_row}..{first_row + n - 1}: {problem}; the "
            "bank would be unusable, so nothing was written for them (check the encoder: --encoder, --backend)"
        )
    return vectors


# -------------------------------------------------------------------------------------------- assembly
def _assemble(
    out: Path, work: Path, n_shards: int, total: int, dim: int, dtype: str, progress: ProgressFn | None
) -> str:
    """Stream the shards into vectors.npy and chunks.parquet; return the content hash of the chunk texts."""
    for stale in itertools.chain(
        out.glob(f".{VectorBank.VECTORS}.*.tmp"), out.glob(f".{VectorBank.CHUNKS}.*.tmp")
    ):
        stale.unlink()  # temporaries of an assembly that was killed
    shard_paths = [_shard_path(work, i, "parquet") for i in range(n_shards)]

    with atomic_path(out / VectorBank.VECTORS, suffix=".npy") as tmp:
        np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(total, dim)).flush()
        row = 0
        for i in range(n_shards):
            part = np.load(_shard_path(work, i, "npy"))
            # Re-map per shard, so at most one shard's pages are resident while filling the file.
            mm = np.lib.format.open_memmap(tmp, mode="r+")
            mm[row : row + len(part)] = part
            mm.flush()
            del mm
            row += len(part)
            if progress:
                progress("assemble", row, total)
        if row != total:
            raise ArtifactError(f"{work}: the shards hold {row} rows but the corpus produced {total} chunks")

    with (
        atomic_path(out / VectorBank.CHUNKS, suffix=".parquet") as tmp,
        pq.ParquetWriter(tmp, CHUNK_SCHEMA) as writer,
    ):
        for p in shard_paths:
            writer.write_table(pq.read_table(p, schema=CHUNK_SCHEMA))

    texts = itertools.chain.from_iterable(
        pq.read_table(p, columns=["text"]).column("text").to_pylist() for p in shard_paths
    )
    return text_hash(texts)


# ------------------------------------------------------------------------------------- arguments, state
def _resolve_corpus(corpus: str | Path, format: str) -> tuple[Path, str]:
    """(path of the corpus input, reader format) with "embedded" resolved to the file it names."""
    if str(corpus) == "embedded" or format == "embedded":
        return Path(embedded_corpus_path()).resolve(), "embedded"
    path = Path(corpus).expanduser()
    if not path.exists():
        raise CorpusError(f"corpus {path} does not exist (give a file or directory, or 'embedded')")
    return path.resolve(), detect_format(path) if format == "auto" else format


def _load_encoder(encoder: Any, backend: str, device: str):
    if encoder is not None and hasattr(encoder, "encode") and hasattr(encoder, "info"):
        return encoder  # already loaded
    from lvmkit.encode import load_encoder

    return load_encoder(encoder, backend=backend, device=device)


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse to clobber a finished bank (unless ``overwrite``); with ``overwrite`` remove only lvmkit's
    own files (bank files, index, shards), never anything else that lives in the directory."""
    manifest = out / VectorBank.MANIFEST
    if manifest.exists() and (out / WORK_DIR).exists():
        shutil.rmtree(out / WORK_DIR)  # left by a run killed after its manifest was written: stale
    if overwrite:
        shutil.rmtree(out / WORK_DIR, ignore_errors=True)
        for name in (VectorBank.MANIFEST, VectorBank.VECTORS, VectorBank.CHUNKS, INDEX_FILE):
            (out / name).unlink(missing_ok=True)
    elif manifest.exists():
        raise ArtifactError(
            f"{out} already holds a complete bank; choose another --out, or pass --overwrite to rebuild it"
        )
    out.mkdir(parents=True, exist_ok=True)


def _check_state(work: Path, state: dict[str, Any]) -> None:
    """Record the arguments of a new ingest, or check that a resumed one uses the same arguments."""
    path = work / STATE_FILE
    state = json.loads(json.dumps(state))  # compare in the JSON form it is stored in (tuples -> lists)
    if not path.exists():
        if work.exists():
            shutil.rmtree(work)  # shards without a state file cannot be trusted
        write_json(path, state)
        return
    try:
        old = read_json(path)
    except ValueError as e:
        raise ArtifactError(f"{path} is not valid JSON ({e}); re-run with --overwrite to start again") from e
    diffs = [f"{k}: was {old.get(k)!r}, now {v!r}" for k, v in state.items() if old.get(k) != v]
    if diffs:
        raise ConfigError(
            f"{work.parent} holds an interrupted ingest made with different arguments ({'; '.join(diffs)}). "
            "Re-run with the original arguments to resume it, or pass --overwrite to start again."
        )
    for tmp in work.glob(".*.tmp"):
        tmp.unlink()  # temporaries of shards that were being written when the run was killed
