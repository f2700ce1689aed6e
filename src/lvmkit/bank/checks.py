"""Damage checks for bank files. Every message names the file, what is wrong with it, and the command that
fixes it; no file a user can delete, truncate or overwrite ends in a traceback.

    load_manifest(path)            manifest.json: missing (an interrupted ingest), not JSON, not a manifest
    load_vectors(path, manifest)   vectors.npy: missing, not a .npy file, truncated (shorter than its header
                                   promises), longer than it should be
    load_chunks(path, manifest)    chunks.parquet: missing, not Parquet, wrong columns
    vector_problems(block, ...)    NaN / Inf rows, zero rows, norm outliers (off 1 for an L2-normalised bank;
                                   over 100x the median norm otherwise), as one line, or None when healthy
    check_vectors(bank, "sample" | "full")   the open-time sample (<= 2,000 evenly spaced rows) or every row
                                   (blocks of 65,536 rows); ``VectorBank.open`` runs the sample

Ingest checks every shard with ``vector_problems`` before writing it, so a bank is only damaged afterwards.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lvmkit.bank.manifest import BankManifest
from lvmkit.errors import ArtifactError

if TYPE_CHECKING:
    from lvmkit.bank.bank import VectorBank

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"  # what `lvmkit ingest` uses without --encoder
SAMPLE_ROWS = 2000
BLOCK_ROWS = 65536
OUTLIER_FACTOR = 100.0  # an unnormalised bank: a row with norm > 100x the median is an outlier


def ingest_command(path: Path, manifest: BankManifest | None) -> str:
    """The `lvmkit ingest ... --overwrite` command that rebuilds the bank at ``path`` from its manifest."""
    if manifest is None:
        return f"the `lvmkit ingest ... --out {path} --overwrite` command that built it"
    c, e = manifest.corpus, manifest.encoder
    backend = {"sentence-transformers": "st"}.get(e.backend, e.backend)
    args = ["lvmkit", "ingest", c.source, "--out", str(path), "--format", c.format]
    if c.limit_articles:
        args += ["--limit-articles", str(c.limit_articles)]
    args += ["--chunker", str(manifest.chunker.get("spec", "sentence"))]
    if manifest.chunker.get("max_chars"):
        args += ["--max-chars", str(manifest.chunker["max_chars"])]
    if e.name != DEFAULT_ENCODER:
        args += ["--encoder", e.name]
    args += ["--backend", backend, "--dtype", manifest.vector_dtype]
    command = "`" + " ".join(shlex.quote(a) for a in args) + " --overwrite`"
    if "limit_articles" not in c.model_fields_set:  # a manifest written before the limit was recorded
        command += " (plus the --limit-articles it was built with, if any)"
    return command


def damaged(path: Path, problem: str, manifest: BankManifest | None) -> ArtifactError:
    """ArtifactError: ``bank B: PROBLEM. Rebuild the bank with COMMAND``."""
    return ArtifactError(f"bank {path}: {problem}. Rebuild the bank with {ingest_command(path, manifest)}")


def load_manifest(path: Path) -> BankManifest:
    mpath = path / "manifest.json"
    if not mpath.exists():
        raise ArtifactError(
            f"{path} has no manifest.json: the bank is incomplete (an interrupted ingest?). "
            "Re-run the same `lvmkit ingest` command to resume it."
        )
    try:
        return BankManifest.model_validate(json.loads(mpath.read_text(encoding="utf-8")))
    except (ValueError, UnicodeDecodeError) as e:  # bad JSON, or pydantic's ValidationError (a ValueError)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise damaged(path, f"manifest.json is not a valid bank manifest ({first})", None) from None


def load_vectors(path: Path, manifest: BankManifest) -> np.ndarray:
    vpath = path / "vectors.npy"
    if not vpath.exists():
        raise damaged(path, "vectors.npy is missing", manifest)
    try:
        with open(vpath, "rb") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(fh)
            offset = fh.tell()
    except (ValueError, OSError, SyntaxError) as e:
        raise damaged(path, f"vectors.npy is not a NumPy .npy file ({e})", manifest) from None
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    size = vpath.stat().st_size
    if size < expected:
        raise damaged(
            path,
            f"vectors.npy is truncated: {size:,} bytes, but its header promises {expected:,} "
            f"({' x '.join(map(str, shape))} {dtype})",
            manifest,
        )
    if size > expected:
        raise damaged(path, f"vectors.npy has {size - expected:,} bytes after its {shape} array", manifest)
    if fortran:
        raise damaged(path, "vectors.npy is in Fortran order; lvmkit writes C order", manifest)
    return np.load(vpath, mmap_mode="r")


def load_chunks(path: Path, manifest: BankManifest) -> pa.Table:
    cpath = path / "chunks.parquet"
    if not cpath.exists():
        raise damaged(path, "chunks.parquet is missing", manifest)
    try:
        table = pq.read_table(cpath)
    except (pa.ArrowException, OSError) as e:
        raise damaged(path, f"chunks.parquet cannot be read ({e})", manifest) from None
    from lvmkit.bank.bank import CHUNK_SCHEMA

    missing = [n for n in CHUNK_SCHEMA.names if n not in table.column_names]
    if missing:
        raise damaged(path, f"chunks.parquet lacks the columns {', '.join(missing)}", manifest)
    return table


def vector_problems(block: np.ndarray, normalized: bool, first_row: int = 0, rows=None) -> str | None:
    """What is wrong with these vectors, in one line naming the first bad row, or None.

    ``rows``: the bank rows of ``block`` (default ``first_row + arange``)."""
    x = np.asarray(block, dtype=np.float32)
    rows = np.arange(first_row, first_row + len(x)) if rows is None else np.asarray(rows)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        bad = rows[~finite]
        return f"NaN or Inf in {_rows(len(bad))} (first: row {int(bad[0])})"
    norms = np.linalg.norm(x, axis=1)
    if normalized:
        tol = 2e-2 if block.dtype == np.float16 else 1e-3
        off = np.abs(norms - 1) > tol
        what = "a norm off 1 (the bank is L2-normalised)"
    else:
        median = float(np.median(norms)) if len(norms) else 0.0
        off = (norms < 1e-12) | (norms > OUTLIER_FACTOR * max(median, 1e-12))
        what = f"a zero norm or one over {OUTLIER_FACTOR:g}x the median ({median:.3g})"
    if off.any():
        bad = np.flatnonzero(off)
        worst = int(bad[np.argmax(np.abs(norms[bad] - (1 if normalized else 0)))])
        return (
            f"{what} in {_rows(len(bad))} (first: row {int(rows[bad[0]])}, norm {norms[bad[0]]:.4g}; "
            f"worst: row {int(rows[worst])}, norm {norms[worst]:.4g})"
        )
    return None


def scan_vectors(bank: VectorBank, check: str = "sample") -> tuple[str | None, int]:
    """(what is wrong or None, rows checked) for ``check`` "none", "sample" (<= SAMPLE_ROWS evenly spaced rows:
    cheap enough for every open) or "full" (every row, block by block, stopping at the first bad block)."""
    if check not in ("none", "sample", "full"):
        raise ArtifactError(f"--check {check!r} is not known; use none, sample or full")
    v, n = bank.vectors, len(bank.vectors)
    if check == "none" or n == 0:
        return None, 0
    normalized = bank.manifest.encoder.normalized
    if check == "sample":
        rows = np.unique(np.linspace(0, n - 1, min(n, SAMPLE_ROWS)).astype(np.int64))
        return vector_problems(v[rows], normalized, rows=rows), len(rows)
    for start in range(0, n, BLOCK_ROWS):
        if problem := vector_problems(v[start : start + BLOCK_ROWS], normalized, start):
            return problem, min(n, start + BLOCK_ROWS)
    return None, n


def check_vectors(bank: VectorBank, check: str = "sample") -> int:
    """``scan_vectors``, raising ArtifactError (with the rebuild command) on damage; returns the rows checked."""
    problem, checked = scan_vectors(bank, check)
    if problem:
        how = "in a sample of" if check == "sample" else "among the first"
        raise damaged(bank.path, f"vectors.npy is damaged: {problem}, {how} {checked:,} rows", bank.manifest)
    return checked


def check_scores(bank: VectorBank, queries: np.ndarray, scores: np.ndarray, ids: np.ndarray) -> None:
    """After a search of an L2-normalised bank: a returned score must be finite and at most the query's norm
    (Cauchy-Schwarz, with float16 slack). Anything else comes from a damaged row, which is then named."""
    if not bank.manifest.encoder.normalized or scores.size == 0:
        return
    q = np.asarray(queries, dtype=np.float32)
    qnorm = np.linalg.norm(q, axis=1, keepdims=True)
    ok_query = np.isfinite(qnorm)  # a NaN query is the predictor's problem, not the bank's
    bad = (ids >= 0) & ok_query & (~np.isfinite(scores) | (np.abs(scores) > qnorm * 1.05 + 1e-3))
    if bad.any():
        i, j = (int(a[0]) for a in np.nonzero(bad))
        raise damaged(
            bank.path,
            f"vectors.npy is damaged: row {int(ids[i, j])} scored {float(scores[i, j]):.4g} against a query of "
            f"norm {float(qnorm[i, 0]):.4g}, impossible for unit vectors (`lvmkit bank info {bank.path} --check "
            "full` scans every row)",
            bank.manifest,
        )


def _rows(n: int) -> str:
    return f"{n:,} row" + ("" if n == 1 else "s")
