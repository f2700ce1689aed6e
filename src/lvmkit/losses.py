"""Training losses for LVMs: regression (mse, cosine), InfoNCE with honest negatives, and the contrastive mix.

    mse_loss(pred, target)      mean squared error per element (F.mse_loss); for unit vectors = 2(1 - cos)/d
    cosine_loss(pred, target)   mean of 1 - cos(pred, target)
    info_nce(pred, target, tau) cross-entropy of cosine logits / tau: row i must pick target i among the batch's
                                targets (+ optional extra negatives: a queue of past targets, or targets
                                gathered from other processes)

False negatives are masked out of InfoNCE (their logit set to -inf; the positive never is): a candidate from
the query's own article (its neighbours are legitimately similar to the answer) and a candidate whose cosine
with the query's target is at least ``dup_threshold`` (the same or a near-identical sentence elsewhere:
``near_duplicates``, the one rule every negative goes through).

In-article hard negatives (``inarticle_offsets``, ``inarticle_weight``): with the window's context excluded,
the chunks that outrank the truth in a full-bank search are mostly the same article's other chunks, which
the same-article mask hides from the loss. These are given per row (``row_negatives`` [B, K, d], chosen by
``lvmkit.train.mining.article_negative_rows``) and join that row's InfoNCE candidates with logit
``cos / tau + log(inarticle_weight)`` (each counts as ``inarticle_weight`` of a negative in the softmax's
denominator); only the near-duplicate rule masks them.

``build_loss(spec)`` turns a config dict into one nn.Module computing a weighted sum, e.g.

    {"mse": 1.0, "cos": 0.5, "infonce": 0.03, "tau": 0.07, "queue": 4096}   regression + InfoNCE on the outputs
    {"lambda_ar": 1.0, "lambda_con": 0.1, "tau": 0.07}                       cosine + InfoNCE between projection-
                                                                            head outputs of pred and target

The module owns the projection head (trainable: give its parameters to the optimiser) and the queue (buffers:
saved in its state_dict), and ``forward(pred, target, article_ids)`` returns ``(total, parts)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from torch import Tensor, nn

from lvmkit.errors import ConfigError
from lvmkit.train.mining import InArticleOffsets


def mse_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean over all elements of (pred - target)^2."""
    return F.mse_loss(pred.float(), target.float())


def cosine_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean over rows of 1 - cos(pred, target)."""
    return (1.0 - F.cosine_similarity(pred.float(), target.float(), dim=-1)).mean()


def _ids(a: Any, device: torch.device) -> Tensor | None:
    if a is None:
        return None
    if isinstance(a, Tensor):
        return a.to(device=device, dtype=torch.long)
    return torch.as_tensor(np.asarray(a, dtype=np.int64), device=device)


def near_duplicates(target: Tensor, cands: Tensor, threshold: float) -> Tensor:
    """Bool mask of candidates that are (near) copies of the target: cos(target, cand) >= ``threshold``.

    target [B, d] with cands [N, d] -> [B, N]; or cands [B, K, d] (one list per row) -> [B, K]. Unit vectors."""
    if cands.dim() == 3:
        return torch.einsum("bd,bkd->bk", target, cands) >= threshold
    return (target @ cands.T) >= threshold


def info_nce(
    pred: Tensor,
    target: Tensor,
    tau: float,
    extra_negatives: Tensor | None = None,
    pred_article: Tensor | None = None,
    target_article: Tensor | None = None,
    neg_article: Tensor | None = None,
    dup_threshold: float = 0.98,
    row_negatives: Tensor | None = None,
    row_valid: Tensor | None = None,
    row_weight: float = 1.0,
) -> Tensor:
    """InfoNCE with in-batch negatives (+ extras), false negatives masked.

    pred, target [B, d]; extra_negatives [E, d]. Vectors are L2-normalised here, so logits are cosines / tau:
    logits[i, j] = cos(pred_i, cand_j) / tau with candidates = [targets; extra_negatives] and label i.
    Masked (set to -inf) for j != i: ``pred_article[i] == article(cand_j)`` (in-batch candidates have
    ``target_article``, defaulting to ``pred_article``; extras have ``neg_article``, unmasked when None), and
    ``cos(target_i, cand_j) >= dup_threshold``. Article ids are non-negative integers (-1 = unknown, never equal).

    ``row_negatives`` [B, K, d] are row i's own extra candidates (e.g. its article's other chunks), with
    ``row_valid`` [B, K] (False = no such chunk); their logits get ``+ log(row_weight)`` and only the
    near-duplicate rule (and ``row_valid``) masks them.
    """
    q = F.normalize(pred.float(), dim=-1)
    t = F.normalize(target.float(), dim=-1)
    cands = t if extra_negatives is None else torch.cat([t, F.normalize(extra_negatives.float(), dim=-1)])
    logits = q @ cands.T / tau  # [B, B + E]
    B, n_cand = logits.shape
    with torch.no_grad():
        query_art = _ids(pred_article, q.device)
        cand_art = None
        if query_art is not None:
            in_batch = _ids(target_article, q.device) if target_article is not None else query_art
            cand_art = torch.full((n_cand,), -1, dtype=torch.long, device=q.device)
            cand_art[:B] = in_batch
            if neg_article is not None and n_cand > B:
                cand_art[B:] = _ids(neg_article, q.device)
        invalid = false_negative_mask(t, cands, query_art, cand_art, dup_threshold)
    labels = torch.arange(B, device=q.device)
    logits = logits.masked_fill(invalid, float("-inf"))
    if row_negatives is not None and row_negatives.shape[1] > 0:
        rows = row_negative_logits(q, t, row_negatives, tau, dup_threshold, row_valid, row_weight)
        logits = torch.cat([logits, rows], dim=1)
    return F.cross_entropy(logits, labels)


def row_negative_logits(
    q: Tensor,
    target: Tensor,
    row_negatives: Tensor,
    tau: float,
    dup_threshold: float,
    row_valid: Tensor | None = None,
    row_weight: float = 1.0,
) -> Tensor:
    """[B, K] logits of each query's own extra candidates (in-article hard negatives), shared by ``info_nce``
    and the two-tower loss: ``cos(q_i, n_ik) / tau + log(row_weight)`` (each counts as ``row_weight`` of a
    negative in the softmax's denominator), -inf where ``row_valid`` is False or n_ik is a near duplicate of
    target i (``false_negative_mask`` without its article term: these ARE the query's article's chunks).

    q, target [B, d]; row_negatives [B, K, d] (normalised here); row_weight > 0."""
    if row_weight <= 0:
        raise ValueError(f"row_weight must be > 0, got {row_weight}")
    rn = F.normalize(row_negatives.float(), dim=-1)
    logits = torch.einsum("bd,bkd->bk", q.float(), rn) / tau + math.log(row_weight)
    with torch.no_grad():
        invalid = false_negative_mask(target.float(), rn, None, None, dup_threshold)
        if row_valid is not None:
            invalid |= ~row_valid.to(torch.bool)
    return logits.masked_fill(invalid, float("-inf"))


@torch.no_grad()
def false_negative_mask(
    target: Tensor,
    cands: Tensor,
    query_article: Tensor | None,
    cand_article: Tensor | None,
    dup_threshold: float,
    positives_on_diagonal: bool = True,
) -> Tensor:
    """The one false-negative rule of every contrastive loss (InfoNCE here, the two-tower loss): True where
    candidate j must not count as a negative of query i, because it comes from the query's article
    (``query_article[i] == cand_article[j]``, ids >= 0; -1 = unknown) or is a near duplicate of the query's
    target (``cos(target_i, cand_j) >= dup_threshold``, ``near_duplicates``).

    ``cands`` [C, d] are shared by every query (then the mask is [B, C] and, with ``positives_on_diagonal``,
    candidate i is query i's positive and never masked) or [B, M, d] per query (mask [B, M], no positives)."""
    if cands.ndim == 3:
        mask = near_duplicates(target, cands.to(target.dtype), dup_threshold)
        if query_article is not None and cand_article is not None:
            mask |= (cand_article == query_article[:, None]) & (query_article[:, None] >= 0)
        return mask
    mask = near_duplicates(target, cands, dup_threshold)
    if query_article is not None and cand_article is not None:
        mask |= (query_article[:, None] == cand_article[None, :]) & (query_article[:, None] >= 0)
    if positives_on_diagonal:
        eye = torch.arange(len(target), device=target.device)
        mask[eye, eye] = False  # never the positive itself
    return mask


class VectorQueue(nn.Module):
    """FIFO of the last ``size`` target vectors (detached) and their article ids, used as extra negatives.

    Its contents are buffers, so a checkpoint of the owning module restores the queue exactly.
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        if int(size) < 1 or int(dim) < 1:
            raise ConfigError(f"queue size and dim must be positive, got size={size}, dim={dim}")
        self.size = int(size)
        self.register_buffer("vectors", torch.zeros(self.size, int(dim)))
        self.register_buffer("articles", torch.full((self.size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # next slot to write
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # filled slots

    def __len__(self) -> int:
        return int(self.count)

    @torch.no_grad()
    def push(self, vectors: Tensor, articles: Tensor | None = None) -> None:
        """Append rows (oldest rows are overwritten once full). ``articles`` None stores -1 (unknown)."""
        v = vectors.detach().to(self.vectors)
        a = _ids(articles, v.device)
        if a is None:
            a = torch.full((len(v),), -1, dtype=torch.long, device=v.device)
        if len(v) > self.size:  # only the newest `size` rows can survive
            v, a = v[-self.size :], a[-self.size :]
        idx = (self.ptr + torch.arange(len(v), device=v.device)) % self.size
        self.vectors[idx] = v
        self.articles[idx] = a
        self.ptr.copy_((self.ptr + len(v)) % self.size)
        self.count.copy_(torch.clamp(self.count + len(v), max=self.size))

    def get(self) -> tuple[Tensor, Tensor]:
        """(vectors [n, d], articles [n]) currently held (slots fill from 0, so the first ``n`` are valid)."""
        n = len(self)
        return self.vectors[:n], self.articles[:n]


class ProjectionHead(nn.Module):
    """d -> hidden (GELU, LayerNorm) -> out without bias, L2-normalised: the space the contrastive term uses."""

    def __init__(self, dim: int, hidden: int = 512, out: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.LayerNorm(hidden), nn.Linear(hidden, out, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.net(x), dim=-1)


class LossSpec(BaseModel):
    """A loss configuration. Either weights for mse / cos / infonce, or lambda_ar + lambda_con (contrastive)."""

    model_config = ConfigDict(extra="forbid")

    mse: float = 0.0
    cos: float = 0.0
    infonce: float = 0.0
    lambda_ar: float | None = None
    lambda_con: float | None = None
    tau: float = 0.07
    queue: int = 0  # size of the queue of past targets used as extra InfoNCE negatives (0 = none)
    dup_threshold: float = 0.98
    mask_same_article: bool = True
    # in-article hard negatives (joined to the InfoNCE candidates of their row): offset k > 0 is the chunk
    # target + k, k < 0 the |k|-th chunk before the window's first context chunk; e.g. [1, 2, 3, -1, -2]
    inarticle_offsets: InArticleOffsets = []
    inarticle_weight: float = 1.0
    proj_hidden: int = 512
    proj_dim: int = 256

    @property
    def contrastive(self) -> bool:
        return self.lambda_ar is not None or self.lambda_con is not None

    @property
    def uses_infonce(self) -> bool:
        return (self.lambda_con or 0.0) > 0 if self.contrastive else self.infonce > 0

    @model_validator(mode="after")
    def _check(self) -> LossSpec:
        weights = {"mse": self.mse, "cos": self.cos, "infonce": self.infonce}
        weights.update(
            {
                k: v
                for k, v in (("lambda_ar", self.lambda_ar), ("lambda_con", self.lambda_con))
                if v is not None
            }
        )
        for k, v in weights.items():
            if v < 0:
                raise ValueError(f"{k} must be >= 0, got {v}")
        if self.contrastive and (self.mse or self.cos or self.infonce):
            raise ValueError(
                "use either mse/cos/infonce weights or lambda_ar/lambda_con (contrastive), not both"
            )
        if not any(v > 0 for v in weights.values()):
            raise ValueError(
                "at least one loss weight must be > 0 (mse, cos, infonce, lambda_ar or lambda_con)"
            )
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.queue < 0 or self.proj_hidden < 1 or self.proj_dim < 1:
            raise ValueError("queue must be >= 0 and proj_hidden, proj_dim >= 1")
        if self.inarticle_offsets and not self.uses_infonce:
            raise ValueError(
                "inarticle_offsets adds negatives to the InfoNCE term: set infonce > 0 (or lambda_con > 0)"
            )
        if self.inarticle_weight <= 0:
            raise ValueError(f"inarticle_weight must be > 0, got {self.inarticle_weight}")
        return self


def parse_loss_spec(spec: dict | LossSpec | None) -> LossSpec:
    """Validate a loss config dict; errors name the key and list the allowed ones."""
    if isinstance(spec, LossSpec):
        return spec
    allowed = ", ".join(LossSpec.model_fields)
    if spec is not None and not isinstance(spec, dict):
        raise ConfigError(f"loss spec must be a mapping of {allowed}; got {type(spec).__name__}")
    try:
        return LossSpec.model_validate(spec or {"cos": 1.0})
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "loss"
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"unknown loss key {key!r}; allowed keys: {allowed}") from None
        raise ConfigError(f"loss {key}: {err['msg']} (allowed keys: {allowed})") from None


class LVMLoss(nn.Module):
    """The configured loss. ``forward(pred, target, article_ids=None, extra_negatives=None,
    extra_article_ids=None) -> (total, parts)`` with ``parts`` a dict of detached scalars (incl. "total").

    ``extra_negatives`` are target-space vectors (e.g. targets gathered from other processes, with gradients);
    they join the queue's vectors as InfoNCE negatives. In training mode the batch's targets are pushed onto the
    queue after the loss is computed, so a batch never competes with itself through the queue.
    """

    def __init__(self, spec: LossSpec, dim: int | None = None):
        super().__init__()
        self.spec = spec
        needs_dim = spec.uses_infonce and (spec.queue > 0 or spec.contrastive)
        if needs_dim and (dim is None or int(dim) < 1):
            raise ConfigError("this loss has a queue or a projection head: build_loss(spec, dim=bank.dim)")
        self.head = (
            ProjectionHead(int(dim), spec.proj_hidden, spec.proj_dim)
            if spec.contrastive and spec.uses_infonce
            else None
        )
        self.queue = VectorQueue(spec.queue, int(dim)) if spec.queue > 0 and spec.uses_infonce else None

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        article_ids: Tensor | None = None,
        extra_negatives: Tensor | None = None,
        extra_article_ids: Tensor | None = None,
        row_negatives: Tensor | None = None,
        row_valid: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        s = self.spec
        rows = (row_negatives, row_valid)
        terms: dict[str, tuple[float, Tensor]] = {}
        if s.contrastive:
            if s.lambda_ar:
                terms["ar"] = (s.lambda_ar, cosine_loss(pred, target))
            if s.uses_infonce:
                terms["con"] = (
                    s.lambda_con,
                    self._info_nce(pred, target, article_ids, extra_negatives, extra_article_ids, rows),
                )
        else:
            if s.mse:
                terms["mse"] = (s.mse, mse_loss(pred, target))
            if s.cos:
                terms["cos"] = (s.cos, cosine_loss(pred, target))
            if s.infonce:
                terms["infonce"] = (
                    s.infonce,
                    self._info_nce(pred, target, article_ids, extra_negatives, extra_article_ids, rows),
                )
        total = sum(w * v for w, v in terms.values())
        if self.training and self.queue is not None:
            self.queue.push(target, article_ids)
        parts = {k: v.detach() for k, (_, v) in terms.items()}
        parts["total"] = total.detach()
        return total, parts

    def _info_nce(self, pred, target, article_ids, extra, extra_articles, rows=(None, None)) -> Tensor:
        negs, neg_art = [], []
        if self.queue is not None and len(self.queue):
            qv, qa = self.queue.get()
            negs.append(qv)
            neg_art.append(qa)
        if extra is not None:
            negs.append(extra)
            neg_art.append(
                _ids(extra_articles, extra.device)
                if extra_articles is not None
                else torch.full((len(extra),), -1, dtype=torch.long, device=extra.device)
            )
        negatives = torch.cat([n.to(target.dtype) for n in negs]) if negs else None
        neg_article = torch.cat(neg_art) if negs else None
        row_negatives, row_valid = rows
        if self.head is not None:
            pred, target = self.head(pred), self.head(target)
            negatives = self.head(negatives) if negatives is not None else None
            row_negatives = self.head(row_negatives) if row_negatives is not None else None
        art = article_ids if self.spec.mask_same_article else None
        return info_nce(
            pred,
            target,
            self.spec.tau,
            extra_negatives=negatives,
            pred_article=art,
            neg_article=neg_article if art is not None else None,
            dup_threshold=self.spec.dup_threshold,
            row_negatives=row_negatives,
            row_valid=row_valid,
            row_weight=self.spec.inarticle_weight,
        )

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.spec.model_dump(exclude_defaults=True).items())


def build_loss(spec: dict | LossSpec | None = None, dim: int | None = None) -> LVMLoss:
    """The loss module for ``spec`` (default ``{"cos": 1.0}``). ``dim`` (the bank's) is needed when the spec
    has a queue or a projection head. Bad keys or values raise ConfigError naming the allowed keys."""
    return LVMLoss(parse_loss_spec(spec), dim)
