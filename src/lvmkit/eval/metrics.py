"""Evaluation metrics: pure numpy, one small function each, per-query arrays out.

Every function returns one value per query (not the average), so ``lvmkit.eval.bootstrap`` can resample
queries and put an interval on any of them; average with ``np.nanmean``. Retrieval metrics take a ranked
id matrix ``[Q, K]`` (chunk ids, best first, ``-1`` = no candidate) and the true chunk id per query, so the
truth is always identified by id, never by "the most similar row". Vectors are compared by cosine; inputs
need not be normalised.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

# The per-query rates every results table shows, in this order (evaluator tables and the HTML report).
TABLE_COLUMNS = (
    "hit@1",
    "hit@5",
    "hit@10",
    "hit@50",
    "contain@50",
    "eff@5",
    "mrr@10",
    "cos",
    "ca_inbatch",
    "ca_other",
)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _check_depth(ranked_ids: np.ndarray, k: int) -> np.ndarray:
    ranked_ids = np.asarray(ranked_ids)
    if ranked_ids.ndim != 2:
        raise ValueError(f"ranked_ids must be [Q, K], got shape {ranked_ids.shape}")
    if not 1 <= k <= ranked_ids.shape[1]:
        raise ValueError(f"k={k} needs 1 <= k <= {ranked_ids.shape[1]} (the ranking depth)")
    return ranked_ids


def hit_at_k(ranked_ids: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    """hit@k_q = 1[truth_q in ranked_q[:k]]  (= R@k with one true chunk per query)."""
    ranked_ids = _check_depth(ranked_ids, k)
    truth = np.asarray(truth, dtype=np.int64)
    return (ranked_ids[:, :k] == truth[:, None]).any(axis=1).astype(np.float64)


def contain_at_k(candidate_ids: np.ndarray, truth: np.ndarray, k: int = 50) -> np.ndarray:
    """contain@k_q = 1[truth_q in candidates_q[:k]], on the first-stage candidates before any reranking.

    The same computation as ``hit_at_k``; the name says which list it is applied to: the ceiling that a
    reranker over the top-k candidates can reach.
    """
    return hit_at_k(candidate_ids, truth, k)


def mrr_at_k(ranked_ids: np.ndarray, truth: np.ndarray, k: int = 10) -> np.ndarray:
    """mrr@k_q = 1 / rank_q if the truth is at 1-based rank_q <= k, else 0."""
    ranked_ids = _check_depth(ranked_ids, k)
    match = ranked_ids[:, :k] == np.asarray(truth, dtype=np.int64)[:, None]
    found = match.any(axis=1)
    rank = match.argmax(axis=1) + 1
    return np.where(found, 1.0 / rank, 0.0)


def eff_at_5(hit5: np.ndarray, contain50: np.ndarray) -> float:
    """eff@5 = mean(hit@5) / mean(contain@50): the share of reachable truths the top 5 keeps (aggregate)."""
    c = float(np.nanmean(contain50)) if len(contain50) else float("nan")
    return float(np.nanmean(hit5)) / c if c > 0 else float("nan")


def recall_at_k(ranked_ids: np.ndarray, positives: np.ndarray, ks: Iterable[int]) -> dict[int, np.ndarray]:
    """recall@k_q = |positives_q ∩ ranked_q[:k]| / |positives_q| for each k (two-tower: 10/100/500/1000).

    ``positives``: [Q] (one true id per query, then recall@k = hit@k) or [Q, P] padded with -1. Queries
    without any positive get NaN.
    """
    pos = np.asarray(positives, dtype=np.int64)
    if pos.ndim == 1:
        pos = pos[:, None]
    n_pos = (pos >= 0).sum(axis=1)
    out = {}
    for k in ks:
        top = _check_depth(ranked_ids, k)[:, :k]
        found = np.stack([(top == pos[:, j : j + 1]).any(axis=1) for j in range(pos.shape[1])], axis=1)
        found &= pos >= 0
        out[int(k)] = np.where(n_pos > 0, found.sum(axis=1) / np.maximum(n_pos, 1), np.nan)
    return out


def mean_cosine(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """cos_q = <pred_q, truth_q> / (|pred_q| |truth_q|)."""
    return np.sum(_unit(pred) * _unit(truth), axis=-1).astype(np.float64)


def contrastive_accuracy(
    pred: np.ndarray, target: np.ndarray, distractors: np.ndarray, valid_mask: np.ndarray
) -> np.ndarray:
    """CA_q = mean over valid distractors d of 1[cos(pred_q, d) < cos(pred_q, target_q)] (LCM paper).

    ``distractors`` [D, d] is shared by all queries (e.g. the batch's targets); ``valid_mask`` [Q, D] says
    which of them count for query q. Queries with no valid distractor get NaN.
    """
    p = _unit(pred)
    s_true = np.sum(p * _unit(target), axis=1)
    s_dist = p @ _unit(distractors).T
    valid = np.asarray(valid_mask, dtype=bool)
    wins = ((s_dist < s_true[:, None]) & valid).sum(axis=1)
    n = valid.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, wins / n, np.nan)


@dataclass
class OffsetSweep:
    """Mean cosine between predictions and the chunks around the target (see ``offset_sweep``)."""

    offsets: tuple[int, ...]
    cos: (
        np.ndarray
    )  # [Q, K] per-query cosine to chunk[target + k]; NaN where that chunk is in another article
    means: dict[int, float]  # c_k
    counts: dict[int, int]  # windows where target + k exists in the same article
    margin: float  # c_0 - max_{k != 0} c_k
    collapse: bool  # c_-1 > c_0: the prediction sits nearer the last context chunk than the next one

    def to_dict(self) -> dict:
        return {
            "offsets": list(self.offsets),
            "c": {str(k): v for k, v in self.means.items()},
            "n": {str(k): v for k, v in self.counts.items()},
            "margin": self.margin,
            "collapse": self.collapse,
        }


def offset_sweep(
    pred: np.ndarray,
    bank_vectors: np.ndarray,
    target_rows: np.ndarray,
    article_codes: np.ndarray,
    offsets: Iterable[int] = range(-3, 4),
) -> OffsetSweep:
    """c_k = mean_q cos(pred_q, chunk[target_q + k]) over queries where target_q + k is in the same article.

    k = 0 is the true next chunk, k = -1 the last context chunk. A model that learned to copy its input
    has c_-1 > c_0 (``collapse``); a useful one has a positive ``margin`` = c_0 - max_{k != 0} c_k.
    """
    offsets = tuple(int(k) for k in offsets)
    if 0 not in offsets or -1 not in offsets:
        raise ValueError(f"offsets must include 0 and -1, got {offsets}")
    p = _unit(pred)
    t = np.asarray(target_rows, dtype=np.int64)
    codes = np.asarray(article_codes)
    cos = np.full((len(t), len(offsets)), np.nan)
    for j, k in enumerate(offsets):
        r = t + k
        ok = (r >= 0) & (r < len(codes))
        ok[ok] = codes[r[ok]] == codes[t[ok]]
        if ok.any():
            cos[ok, j] = mean_cosine(p[ok], np.asarray(bank_vectors[r[ok]], dtype=np.float32))
    counts = {k: int(np.isfinite(cos[:, j]).sum()) for j, k in enumerate(offsets)}
    means = {k: float(np.nanmean(cos[:, j])) if counts[k] else float("nan") for j, k in enumerate(offsets)}
    others = [means[k] for k in offsets if k != 0 and counts[k]]
    margin = means[0] - max(others) if others else float("nan")
    return OffsetSweep(offsets, cos, means, counts, float(margin), bool(means[-1] > means[0]))


def separation_margin(
    q: np.ndarray, pos: np.ndarray, neighbour_vectors: np.ndarray, valid: np.ndarray | None = None
) -> np.ndarray:
    """sep_q = cos(q, pos_q) - mean_j cos(q, n_qj) over the query's bank neighbours n_qj (not the positive).

    ``neighbour_vectors`` [Q, M, d] (the top-16 in lvmkit), ``valid`` [Q, M] marks real neighbours (padding
    False). The mean over queries is E[cos(q, pos)] - E[cos(q, n)] when every query has M neighbours.
    """
    qu = _unit(q)
    s_pos = np.sum(qu * _unit(pos), axis=1)
    s_n = np.einsum("qd,qmd->qm", qu, _unit(neighbour_vectors))
    valid = np.ones(s_n.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    n = valid.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_n = np.where(n > 0, (s_n * valid).sum(axis=1) / n, np.nan)
    return (s_pos - mean_n).astype(np.float64)
