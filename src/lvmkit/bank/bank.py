"""The vector bank: one directory holding everything about one set of chunk vectors.

    BANK/
      vectors.npy      float32 or float16 [N, d], memory-mapped on load; row i is chunk_id i
      chunks.parquet   chunk_id, article_id, title, chunk_index, paragraph_index, heading, text, label
      manifest.json    BankManifest (encoder, chunker, corpus hash, counts, index parameters)
      index.faiss      optional FAISS index (see lvmkit.bank.index)
      .lvmkit.lock     held while `lvmkit ingest` or `lvmkit index build` writes the bank (lvmkit.locking)

Invariants checked on open: rows are grouped by article in corpus order and each article's chunks have
chunk_index 0..n-1 in row order, so "the chunk after row r" is row r+1 when both share an article. The
truth of any retrieval query is therefore a chunk id (= row), never "the row most similar to the target".
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lvmkit import locking
from lvmkit.artifacts import atomic_path, write_json, write_npy
from lvmkit.bank import checks
from lvmkit.bank.manifest import BankManifest, EncoderInfo, check_same_space
from lvmkit.errors import ArtifactError

CHUNK_SCHEMA = pa.schema(
    [
        ("chunk_id", pa.int64()),
        ("article_id", pa.string()),
        ("title", pa.string()),
        ("chunk_index", pa.int32()),
        ("paragraph_index", pa.int32()),
        ("heading", pa.string()),
        ("text", pa.string()),
        ("label", pa.string()),
    ]
)


def text_hash(texts: Iterable[str]) -> str:
    """sha256 over the texts in order (each UTF-8 encoded, NUL-terminated); accepts any iterable, so a
    generator can hash a bank's texts shard by shard."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def lock_bank(path: str | Path, purpose: str) -> locking.Lock:
    """Take the bank directory's writer lock ("ingest", "index build"); a second writer gets LockedError."""
    return locking.acquire(path, purpose, "bank")


class VectorBank:
    """A read-only view of a bank directory. Create one with ``VectorBank.write`` or ``lvmkit ingest``."""

    VECTORS = "vectors.npy"
    CHUNKS = "chunks.parquet"
    MANIFEST = "manifest.json"

    def __init__(self, path: Path, manifest: BankManifest, vectors: np.ndarray, chunks: pa.Table):
        self.path = path
        self.manifest = manifest
        self.vectors = vectors
        self.chunks = chunks
        self._index = None

    # ----------------------------------------------------------------------------------------- creation
    @classmethod
    def write(
        cls, path: str | Path, vectors: np.ndarray, chunks: pa.Table, manifest: BankManifest
    ) -> VectorBank:
        """Write a bank atomically (file by file; the manifest is written last and marks completion)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / cls.MANIFEST).unlink(missing_ok=True)  # an incomplete bank has no manifest
        if "chunk_id" not in chunks.column_names:
            chunks = chunks.append_column("chunk_id", pa.array(np.arange(len(chunks), dtype=np.int64)))
        chunks = chunks.select(CHUNK_SCHEMA.names).cast(CHUNK_SCHEMA)
        write_npy(path / cls.VECTORS, vectors)
        with atomic_path(path / cls.CHUNKS, suffix=".parquet") as tmp:
            pq.write_table(chunks, tmp)
        manifest = manifest.model_copy(update={"count": len(chunks), "vector_dtype": str(vectors.dtype)})
        write_json(path / cls.MANIFEST, manifest.model_dump(mode="json"))
        return cls.open(path)

    # ------------------------------------------------------------------------------------------ loading
    @classmethod
    def open(
        cls,
        path: str | Path,
        expect: EncoderInfo | None = None,
        expect_what: str = "the model",
        check: str = "sample",
    ) -> VectorBank:
        """Open a bank directory; a missing, truncated or damaged file raises ArtifactError naming the file and
        the command that fixes it. ``check``: which rows are checked for NaN / Inf / norm outliers: "sample"
        (<= 2,000 evenly spaced rows, cheap), "full" (every row) or "none" (diagnose bank looks itself)."""
        path = Path(path)
        if not path.is_dir():
            raise ArtifactError(f"no bank at {path}: expected a directory made by `lvmkit ingest`")
        manifest = checks.load_manifest(path)
        if expect is not None:
            check_same_space(manifest.encoder, expect, f"bank {path}", expect_what)
        vectors = checks.load_vectors(path, manifest)
        chunks = checks.load_chunks(path, manifest)
        bank = cls(path, manifest, vectors, chunks)
        bank.validate()
        checks.check_vectors(bank, check)
        return bank

    def validate(self) -> None:
        """Shapes, counts, dtypes and row order agree between the manifest and the files."""
        m, v = self.manifest, self.vectors

        def damaged(problem: str) -> ArtifactError:
            return checks.damaged(self.path, problem, m)

        if v.ndim != 2:
            raise damaged(f"vectors.npy has shape {v.shape}, expected [N, d]")
        if v.shape[0] != m.count or len(self.chunks) != m.count:
            raise damaged(
                f"manifest says {m.count} chunks, vectors.npy has {v.shape[0]} rows and "
                f"chunks.parquet {len(self.chunks)} rows"
            )
        if v.shape[1] != m.encoder.dim:
            raise damaged(f"vectors are {v.shape[1]}-d but the encoder {m.encoder.name} is {m.encoder.dim}-d")
        if v.dtype not in (np.float32, np.float16):
            raise damaged(f"vectors dtype {v.dtype}; expected float32 or float16")
        if str(v.dtype) != m.vector_dtype:
            raise damaged(f"vectors are {v.dtype} but the manifest says {m.vector_dtype}")
        ids = self.chunks.column("chunk_id").to_numpy()
        if len(ids) and not np.array_equal(ids, np.arange(len(ids))):
            raise damaged("chunk_id must equal the row number")
        ci = self.chunk_index
        starts = self.article_starts
        expected = np.arange(len(ci)) - np.repeat(starts[:-1], np.diff(starts))
        if not np.array_equal(ci, expected):
            bad = int(np.flatnonzero(ci != expected)[0])
            raise damaged(f"chunk_index is not 0..n-1 within its article at row {bad}")

    # ------------------------------------------------------------------------------------ structure
    def __len__(self) -> int:
        return int(self.manifest.count)

    @property
    def dim(self) -> int:
        return int(self.manifest.encoder.dim)

    @property
    def encoder(self) -> EncoderInfo:
        return self.manifest.encoder

    @cached_property
    def article_ids(self) -> np.ndarray:
        """Article id string per row (object array)."""
        return self.chunks.column("article_id").to_numpy(zero_copy_only=False)

    @cached_property
    def article_codes(self) -> np.ndarray:
        """Dense article number 0..A-1 per row, in bank order (int32)."""
        aid = self.chunks.column("article_id")
        if len(aid) == 0:
            return np.zeros(0, dtype=np.int32)
        change = np.empty(len(aid), dtype=bool)
        change[0] = True
        change[1:] = pc.not_equal(aid.slice(1), aid.slice(0, len(aid) - 1)).to_numpy(zero_copy_only=False)
        codes = np.cumsum(change, dtype=np.int64) - 1
        return codes.astype(np.int32)

    @cached_property
    def article_starts(self) -> np.ndarray:
        """Row offsets [A+1]: article a occupies rows article_starts[a] .. article_starts[a+1]-1."""
        codes = self.article_codes
        if len(codes) == 0:
            return np.zeros(1, dtype=np.int64)
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        return np.r_[starts, len(codes)].astype(np.int64)

    @property
    def n_articles(self) -> int:
        return len(self.article_starts) - 1

    @cached_property
    def chunk_index(self) -> np.ndarray:
        return self.chunks.column("chunk_index").to_numpy().astype(np.int64)

    @cached_property
    def labels(self) -> np.ndarray:
        return self.chunks.column("label").to_numpy(zero_copy_only=False)

    def texts(self, rows: Sequence[int] | np.ndarray) -> list[str]:
        return self.chunks.column("text").take(pa.array(np.asarray(rows, dtype=np.int64))).to_pylist()

    def titles(self, rows: Sequence[int] | np.ndarray) -> list[str]:
        return self.chunks.column("title").take(pa.array(np.asarray(rows, dtype=np.int64))).to_pylist()

    def get(self, rows: np.ndarray) -> np.ndarray:
        """float32 copy of the given rows (memmap-friendly: sorted gather)."""
        return np.asarray(self.vectors[np.asarray(rows)], dtype=np.float32)

    # --------------------------------------------------------------------------------------- search
    def index(self):
        """The bank's search index: the stored FAISS index if one was built, else exact inner product."""
        if self._index is None:
            from lvmkit.bank.index import load_or_flat

            self._index = load_or_flat(self)
        return self._index

    def search(self, queries: np.ndarray, k: int, exclude=None, nprobe: int | None = None, searcher=None):
        """Top-k chunk ids and inner-product scores for each query, over the whole bank.

        ``exclude``: per query, chunk ids that must not be returned (e.g. the query's own context);
        an int array [Q, E] padded with -1, or a list of arrays. Returns (scores [Q,k], ids [Q,k]),
        ids padded with -1 when fewer than k candidates exist. ``searcher``: what runs the search instead of
        ``self.index()``, with the contract of ``SearchIndex.search`` over this bank's rows (the server's
        ``MicroBatcher``, an exact index of the same vectors). Every search of the bank comes through here,
        so every result gets the score check (``checks.check_scores``).
        """
        searcher = self.index() if searcher is None else searcher
        scores, ids = searcher.search(queries, k, exclude=exclude, nprobe=nprobe)
        checks.check_scores(self, queries, scores, ids)  # a damaged row that the open-time sample missed
        return scores, ids
