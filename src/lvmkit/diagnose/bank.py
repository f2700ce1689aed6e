"""``lvmkit diagnose bank``: is this bank a good space to predict and search in?

What is measured, on seeded samples so it stays fast on a 10 M-row bank:

    norms           min / mean / max vector norm; non-finite or zero vectors fail. A bank whose manifest says
                    L2-normalised must have unit norms (inner-product search == cosine search).
    mean cosine     mean cos(u_i, u_j) over all pairs i != j of a sample of rows. Sentence encoders are
                    anisotropic: every vector leans towards a common direction, so unrelated chunks look alike
                    (random pairs at cos 0.2-0.4) and cosine losses can be "won" by predicting that direction.
                    |mean| > 0.10 warns; the finding also reports the same mean after centering (subtracting
                    the sample mean vector), the length of that mean vector and the top principal
                    component's share of the variance, and recommends centering / whitening.
    near duplicates share of sampled rows whose nearest OTHER row of the bank (exact FAISS inner-product
                    search, in blocks) has cos > 0.98 and > 0.999. Duplicates tie with the truth in retrieval
                    (the truth is a chunk id, so a copy ranked first is a miss) and leak across splits.
    chunk counts    per-article chunk counts (min, median, mean, p95, max) and the share of articles too short
                    for one window of ``ctx`` context chunks (they contribute no training example).
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from lvmkit.bank.bank import VectorBank
from lvmkit.bank.checks import ingest_command, scan_vectors
from lvmkit.diagnose.findings import Diagnosis, Finding, info, judge
from lvmkit.errors import ConfigError

MEAN_COS_WARN = 0.10
DUP_THRESHOLDS = (0.98, 0.999)
DUP_RATE_WARN = {0.98: 0.05, 0.999: 0.01}
SHORT_ARTICLES_WARN = 0.5


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """``min(n, size)`` distinct rows, sorted (sequential reads of a memmap), chosen by ``seed``."""
    if size >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False)).astype(np.int64)


def mean_pairwise_cosine(x: np.ndarray) -> tuple[float, float]:
    """(mean, std) of cos(x_i, x_j) over all ordered pairs i != j of the rows of ``x``."""
    u = _unit(x)
    n = len(u)
    if n < 2:
        return float("nan"), float("nan")
    gram = u @ u.T
    off = gram[~np.eye(n, dtype=bool)]
    return float(off.mean()), float(off.std())


def nearest_other(
    vectors: np.ndarray, rows: np.ndarray, block: int = 65_536
) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``rows``: (cosine to, row of) its most similar other row of ``vectors``, by exact search.

    The bank is scanned in blocks (a flat FAISS index per block, top-2 so the row itself can be skipped), so
    memory stays at one block whatever the bank size.
    """
    q = _unit(vectors[rows])
    best = np.full(len(rows), -np.inf, dtype=np.float32)
    best_row = np.full(len(rows), -1, dtype=np.int64)
    for s in range(0, len(vectors), block):
        b = _unit(vectors[s : s + block])
        index = faiss.IndexFlatIP(b.shape[1])
        index.add(b)
        scores, ids = index.search(q, min(2, len(b)))
        ids = ids.astype(np.int64) + s
        scores = np.where(ids == rows[:, None], -np.inf, scores)  # never the row itself
        j = scores.argmax(axis=1)
        cand = scores[np.arange(len(rows)), j]
        better = cand > best
        best[better], best_row[better] = cand[better], ids[np.arange(len(rows)), j][better]
    return best, best_row


def diagnose_bank(
    bank: VectorBank,
    *,
    sample: int = 2000,
    dup_sample: int = 2000,
    ctx: int = 5,
    seed: int = 0,
    mean_cos_warn: float = MEAN_COS_WARN,
    dup_thresholds: tuple[float, ...] = DUP_THRESHOLDS,
    check: str = "sample",
) -> Diagnosis:
    """Diagnose ``bank`` (see the module docstring). ``sample`` rows for norms and the mean cosine,
    ``dup_sample`` rows searched against the whole bank for near duplicates, ``ctx`` for the short-article
    share. ``check="full"`` adds ``vector_scan``: every row checked for NaN, Inf and norm outliers."""
    if sample < 2 or dup_sample < 1 or ctx < 1:
        raise ConfigError(
            f"sample must be >= 2, dup_sample >= 1 and ctx >= 1; got {sample}, {dup_sample}, {ctx}"
        )
    n = len(bank)
    d = Diagnosis("bank", str(bank.path))
    d.stats.update(_bank_stats(bank))
    for finding in _vector_scan(bank, check):
        d.add(finding)
    if n < 2:
        d.add(judge("chunks", n, warn_below=2, warn="a bank needs at least 2 chunks to diagnose"))
        return d
    x = np.asarray(bank.get(sample_rows(n, sample, seed)), dtype=np.float32)
    finite = np.isfinite(x).all(axis=1)
    _record(d, "norms", _norms(bank, x, finite))
    _record(d, "anisotropy", _anisotropy(x[finite], mean_cos_warn))
    _record(
        d, "near_duplicates", _near_duplicates(bank, sample_rows(n, dup_sample, seed + 1), dup_thresholds)
    )
    _record(d, "chunks_per_article", _chunk_counts(bank, ctx))
    return d


Step = tuple[dict[str, Any], list[Finding]]  # one check's stats (d.stats[key]) and its findings, in order


def _record(d: Diagnosis, key: str, step: Step) -> None:
    stats, findings = step
    d.stats[key] = stats
    for finding in findings:
        d.add(finding)


def _bank_stats(bank: VectorBank) -> dict[str, Any]:
    """What the bank is: sizes, dtype, encoder, id and index type."""
    return {
        "chunks": len(bank),
        "articles": bank.n_articles,
        "dim": bank.dim,
        "dtype": str(bank.vectors.dtype),
        "encoder": bank.encoder.describe(),
        "bank_id": bank.manifest.bank_id,
        "index": (bank.manifest.index or {}).get("type", "none (exact search)"),
    }


def _vector_scan(bank: VectorBank, check: str) -> list[Finding]:
    """``check="full"``: every row checked for NaN, Inf and norm outliers; ``"sample"``: nothing here."""
    if check == "sample":
        return []
    if check != "full":
        raise ConfigError(f"--check {check!r} is not known; use sample or full")
    problem, checked = scan_vectors(bank, "full")
    return [
        judge(
            "vector_scan",
            int(problem is not None),
            fail_above=0,
            ok=f"all {checked:,} rows finite, norms as the manifest says",
            fail=f"{problem}: rebuild the bank with {ingest_command(bank.path, bank.manifest)}",
        )
    ]


def _norms(bank: VectorBank, x: np.ndarray, finite: np.ndarray) -> Step:
    """Norms of the sampled vectors: bad (non-finite or zero) vectors fail; off-unit norms fail when the
    manifest says L2-normalised, warn otherwise."""
    norms = np.linalg.norm(np.where(finite[:, None], x, 0), axis=1)
    stats = {
        "sampled": len(x),
        "min": float(norms.min()),
        "mean": float(norms.mean()),
        "max": float(norms.max()),
    }
    bad = int((~finite).sum() + (norms[finite] < 1e-6).sum())
    bad_vectors = judge(
        "bad_vectors",
        bad,
        fail_above=0,
        ok=f"all {len(x)} sampled vectors finite and non-zero",
        fail=f"{bad} of {len(x)} sampled vectors are NaN/inf or zero: re-encode those chunks",
    )
    dev = float(np.abs(norms[finite] - 1).max()) if finite.any() else float("nan")
    if bank.encoder.normalized:
        tol = 2e-2 if bank.vectors.dtype == np.float16 else 1e-3
        deviation = judge(
            "norm_deviation",
            dev,
            fail_above=tol,
            ok=f"unit norms ({norms.min():.4f}..{norms.max():.4f}): inner product = cosine",
            fail=f"the manifest says L2-normalised but norms range {norms.min():.4f}..{norms.max():.4f}",
        )
    else:
        deviation = judge(
            "norm_deviation",
            dev,
            warn_above=1e-3,
            ok="unit norms",
            warn=f"unnormalised vectors (norms {norms.min():.3f}..{norms.max():.3f}): search ranks by inner "
            "product, so long vectors win regardless of direction; re-encode with normalisation",
        )
    return stats, [bad_vectors, deviation]


def _anisotropy(xf: np.ndarray, mean_cos_warn: float) -> Step:
    """Mean pairwise cosine of the finite sampled vectors, raw and centred, and the top PC's variance share."""
    mean_cos, std_cos = mean_pairwise_cosine(xf)
    mu = _unit(xf).mean(axis=0)
    centred_cos, _ = mean_pairwise_cosine(_unit(xf) - mu)
    sv = np.linalg.svd(_unit(xf) - mu, compute_uv=False) if len(xf) > 1 else np.zeros(1)
    top_pc = float(sv[0] ** 2 / max(float((sv**2).sum()), 1e-12))
    stats = {
        "mean_cos": mean_cos,
        "std_cos": std_cos,
        "mean_cos_centred": centred_cos,
        "mean_vector_norm": float(np.linalg.norm(mu)),
        "top_pc_variance_share": top_pc,
    }
    finding = judge(
        "mean_pairwise_cos",
        mean_cos,
        warn_above=mean_cos_warn,
        warn_below=-mean_cos_warn,
        ok=f"random pairs are nearly orthogonal (std {std_cos:.3f})",
        warn=f"random pairs share a common direction (|mean cos| > {mean_cos_warn:g}; mean vector length "
        f"{np.linalg.norm(mu):.3f}); centering brings it to {centred_cos:+.3f}. Cosine losses can be lowered "
        "by predicting the mean direction: center (subtract the train mean) or whiten the vectors, and "
        "always read results beside the baselines",
        details={"centred": centred_cos, "std": std_cos, "top_pc_variance_share": top_pc},
    )
    return stats, [finding]


def _near_duplicates(bank: VectorBank, drows: np.ndarray, thresholds: tuple[float, ...]) -> Step:
    """Share of the sampled rows ``drows`` whose nearest other row of the whole bank is above each threshold."""
    best, best_row = nearest_other(bank.vectors, drows)
    findings = []
    for t in thresholds:
        hit = best > t
        rate = float(hit.mean())
        examples = [
            {"row": int(r), "other": int(o), "cos": float(c)}
            for r, o, c in zip(drows[hit][:3], best_row[hit][:3], best[hit][:3], strict=True)
        ]
        findings.append(
            judge(
                f"dup_rate@{t:g}",
                rate,
                warn_above=DUP_RATE_WARN.get(t, 0.01),
                ok=f"{int(hit.sum())} of {len(drows)} sampled chunks have another chunk at cos > {t:g}",
                warn=f"{int(hit.sum())} of {len(drows)} sampled chunks ({100 * rate:.1f}%) have another chunk at "
                f"cos > {t:g}: copies tie with the truth in retrieval and leak across splits; deduplicate at "
                "ingest (or pairs with dedup_cos) and check leakage with `lvmkit diagnose data`",
                details={"count": int(hit.sum()), "examples": examples},
            )
        )
    return {"sampled": len(drows), "searched": len(bank)}, findings


def _chunk_counts(bank: VectorBank, ctx: int) -> Step:
    """Per-article chunk counts and the share of articles too short for one window of ``ctx``."""
    lengths = np.diff(bank.article_starts)
    stats = {
        "articles": int(len(lengths)),
        "min": int(lengths.min()),
        "median": float(np.median(lengths)),
        "mean": float(lengths.mean()),
        "p95": float(np.percentile(lengths, 95)),
        "max": int(lengths.max()),
        "single_chunk": int((lengths == 1).sum()),
    }
    short = float((lengths < ctx + 1).mean())
    short_articles = judge(
        f"short_articles@ctx{ctx}",
        short,
        warn_above=SHORT_ARTICLES_WARN,
        ok=f"chunks per article: median {np.median(lengths):g}, max {lengths.max()}; "
        f"{100 * short:.1f}% of articles are too short for one window of ctx {ctx}",
        warn=f"{100 * short:.1f}% of articles have fewer than {ctx + 1} chunks and give no window at ctx "
        f"{ctx}: lower ctx, allow padded windows (data.min_ctx) or use longer chunks' articles",
        details={"articles_too_short": int((lengths < ctx + 1).sum())},
    )
    articles = info("articles", int(len(lengths)), f"{len(bank)} chunks in {len(lengths)} articles")
    return stats, [short_articles, articles]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
