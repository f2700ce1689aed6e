"""The two-tower loss: InfoNCE of each query against its positive, the batch's other documents, shared
negatives (other ranks' documents, the memory bank), its own mined negatives and (``inarticle_offsets``) its
own article's chunks, with false negatives masked by the same rule as the LVM InfoNCE
(``lvmkit.losses.false_negative_mask``), plus an optional margin term. The in-article negatives join with the
LVM loss's weighting (``lvmkit.losses.row_negative_logits``: logit + log(weight), near duplicates masked)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lvmkit.data.windows import WindowBatch
from lvmkit.losses import false_negative_mask, row_negative_logits


@dataclass
class PairBatch:
    """One training batch: the windows, their pair ids, and each pair's mined negatives."""

    windows: WindowBatch
    pair_ids: Tensor  # int64 [B]
    negatives: Tensor  # float32 [B, M, d] raw bank vectors (zeros where neg_ids == -1)
    neg_ids: Tensor  # int64 [B, M], -1 = none
    neg_article: Tensor  # int64 [B, M], -1 = none

    def __len__(self) -> int:
        return len(self.windows)


def twotower_logits(
    q: Tensor,
    pos: Tensor,
    article: Tensor,
    tau: float,
    fn_cos: float = 0.98,
    shared: Tensor | None = None,
    shared_article: Tensor | None = None,
    mined: Tensor | None = None,
    mined_article: Tensor | None = None,
    mined_valid: Tensor | None = None,
    inarticle: Tensor | None = None,
    inarticle_valid: Tensor | None = None,
    inarticle_weight: float = 1.0,
) -> Tensor:
    """Logits [B, B + S + M + K] of each query against [batch documents | shared negatives | its own mined
    ones | its own in-article ones].

    q, pos [B, d] unit vectors (query i's positive is ``pos[i]``, at column i); ``shared`` [S, d] negatives
    every query sees (other ranks' documents, the memory bank); ``mined`` [B, M, d] per-query negatives.
    Entry (i, j) is cos(q_i, c_j) / tau, or -inf for a false negative: j != i and (c_j is from article[i], or
    cos(pos_i, c_j) >= fn_cos), or a mined slot that is not valid. The mask is ``lvmkit.losses.false_negative_mask``, the rule of ``info_nce``.
    ``inarticle`` [B, K, d] (document-tower vectors of the query's own article's chunks, ``inarticle_valid``
    [B, K]) come last, as ``losses.row_negative_logits``: cos / tau + log(``inarticle_weight``), masked only
    when invalid or a near duplicate of the positive (the article rule would hide them all).
    """
    cands, cand_art = [pos], [article]
    if shared is not None and len(shared):
        cands.append(shared.to(pos.dtype))
        cand_art.append(shared_article.to(article.device))
    c = torch.cat(cands)
    logits = q @ c.T / tau
    bad = false_negative_mask(pos, c, article, torch.cat(cand_art), fn_cos)
    out = [logits.masked_fill(bad, float("-inf"))]
    if mined is not None and mined.shape[1] > 0:
        m_logits = torch.einsum("bd,bmd->bm", q, mined.to(q.dtype)) / tau
        m_bad = false_negative_mask(pos, mined, article, mined_article, fn_cos) | ~mined_valid.bool()
        out.append(m_logits.masked_fill(m_bad, float("-inf")))
    if inarticle is not None and inarticle.shape[1] > 0:
        rows = row_negative_logits(q, pos, inarticle, tau, fn_cos, inarticle_valid, inarticle_weight)
        out.append(rows.to(logits.dtype))
    return torch.cat(out, dim=1) if len(out) > 1 else out[0]


def twotower_loss(
    logits: Tensor,
    tau: float,
    margin: float | None = None,
    margin_weight: float = 1.0,
    inarticle: int = 0,
    inarticle_weight: float = 1.0,
) -> tuple[Tensor, dict[str, float]]:
    """InfoNCE over ``twotower_logits`` (label i for row i) plus the optional margin term on cosines.

    ``inarticle``: the number of in-article columns at the end of ``logits`` (their log(``inarticle_weight``)
    is taken off again for the margin and the statistics, which are about cosines)."""
    B = logits.shape[0]
    labels = torch.arange(B, device=logits.device)
    nce = F.cross_entropy(logits, labels)
    prior = torch.zeros(logits.shape[1], dtype=logits.dtype, device=logits.device)
    if inarticle:
        prior[-inarticle:] = math.log(inarticle_weight)
    s = (logits - prior) * tau
    s_pos = s[labels, labels]
    neg = s.clone()
    neg[labels, labels] = float("-inf")
    s_neg = neg.max(dim=1).values  # -inf for a row without any negative
    has_neg = torch.isfinite(s_neg)
    total = nce
    parts = {"infonce": float(nce.detach())}
    if margin is not None:
        gap = s_pos - torch.where(has_neg, s_neg, s_pos - margin)  # rows without negatives: no penalty
        m = F.relu(margin - gap).mean()
        total = total + margin_weight * m
        parts["margin"] = float(m.detach())
    with torch.no_grad():
        parts["pos_cos"] = float(s_pos.mean())
        parts["hardest_neg_cos"] = float(s_neg[has_neg].mean()) if bool(has_neg.any()) else float("nan")
        parts["negatives"] = float(torch.isfinite(neg).sum(dim=1).float().mean())
        parts["acc"] = float((logits.argmax(dim=1) == labels).float().mean())
        if inarticle:
            parts["inarticle_negatives"] = float(
                torch.isfinite(neg[:, -inarticle:]).sum(dim=1).float().mean()
            )
    return total, parts
