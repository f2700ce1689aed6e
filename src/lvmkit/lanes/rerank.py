"""Lane-aware reranking of retrieval candidates.

For query b and candidate k (a chunk in lane ``cand_lanes[b, k]``)::

    lane_alignment[b, k] = query_lane_proba[b, cand_lanes[b, k]]          # in [0, 1]
    score'[b, k]         = (1 - weight) * scores[b, k] + weight * lane_alignment[b, k]

With the default ``weight = 0.3`` this is the predecessor's ``0.7 * cos + 0.3 * lane_alignment``.
``query_lane_proba`` is the lane classifier's distribution for the query (e.g. ``predict_proba`` of the
prediction vector). A padded candidate (``cand_lanes < 0``) gets alignment 0, and a ``-inf`` score (an
excluded candidate) stays ``-inf``. ``weight = 0`` returns the scores unchanged.
"""

from __future__ import annotations

import numpy as np

from lvmkit.errors import ConfigError


def lane_alignment(query_lane_proba: np.ndarray, cand_lanes: np.ndarray) -> np.ndarray:
    """float [B, K]: ``query_lane_proba[b, cand_lanes[b, k]]`` (0 where ``cand_lanes < 0``)."""
    p = np.asarray(query_lane_proba)
    lanes = np.asarray(cand_lanes, dtype=np.int64)
    if p.ndim != 2 or lanes.ndim != 2 or p.shape[0] != lanes.shape[0]:
        raise ConfigError(
            f"query_lane_proba must be [B, L] and cand_lanes [B, K] with the same B, got {p.shape} and {lanes.shape}"
        )
    if lanes.size and lanes.max() >= p.shape[1]:
        raise ConfigError(
            f"cand_lanes holds lane {int(lanes.max())} but query_lane_proba has {p.shape[1]} lanes"
        )
    out = np.take_along_axis(p, np.clip(lanes, 0, None), axis=1)
    return np.where(lanes >= 0, out, 0.0)


def lane_rerank(
    scores: np.ndarray, query_lane_proba: np.ndarray, cand_lanes: np.ndarray, weight: float = 0.3
) -> np.ndarray:
    """``(1 - weight) * scores + weight * lane_alignment`` ([B, K], same dtype as ``scores``)."""
    if not 0.0 <= float(weight) <= 1.0:
        raise ConfigError(f"lane rerank weight must be in [0, 1], got {weight}")
    s = np.asarray(scores)
    if s.shape != np.shape(cand_lanes):
        raise ConfigError(f"scores {s.shape} and cand_lanes {np.shape(cand_lanes)} must have the same shape")
    w = float(weight)
    if w == 0.0:
        return s.copy()
    align = lane_alignment(query_lane_proba, cand_lanes)
    with np.errstate(invalid="ignore"):
        out = (1.0 - w) * s + w * align
    out = np.where(np.isneginf(s), s, out)  # an excluded candidate stays excluded, even at weight 1
    return out.astype(s.dtype, copy=False)


def rerank_order(scores: np.ndarray) -> np.ndarray:
    """int64 [B, K]: column order by descending score (stable: equal scores keep their retrieval order)."""
    return np.argsort(-np.asarray(scores), axis=1, kind="stable")
