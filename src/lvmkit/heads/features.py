"""Candidate pools and their features, per protocol: what a reranker (and the cascade) knows about a candidate.

    src = load_source("runs/gru", bank)                         # a run or baseline:NAME, reading its own ctx
    qb = QueryBatch(windows, idx, protocol="open")              # queries: context, last row, article, memo
    pool = retrieve(qb, load_source("baseline:exp_weighted", bank), k=50)
    X = feature_matrix(["score", "log_rank", "cos_pred"], pool, qb, sources={"pred": src})   # [B, K, F]

Features (``FEATURES``; the article-identity / position ones are ``lvmkit.eval.protocol.ARTICLE_FEATURES`` and
exist only under ``in-article``: ``check_features`` refuses them under ``open``):

    score       the retrieval stage's score (cos of its query to the candidate)
    log_rank    log(1 + the candidate's rank in the retrieval stage), 0-based
    cos_pred    cos(LVM prediction, candidate)                       needs sources["pred"]
    cos_last    cos(last context chunk, candidate)
    cos_mean    cos(normalised mean of the context, candidate)
    twotower    cos(two-tower query, candidate)                      needs sources["twotower"]
    lane        P(query lane = the candidate's lane), lane classifier on the LVM prediction  needs lanes
    same_article, gap, next                                          in-article only
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lvmkit.bank.bank import VectorBank
from lvmkit.errors import ConfigError
from lvmkit.eval.protocol import ARTICLE_FEATURES, IN_ARTICLE, OPEN, check_features, check_protocol, search

FEATURES: dict[str, str] = {
    "score": "retrieval score",
    "log_rank": "log(1 + retrieval rank)",
    "cos_pred": "cos to the LVM prediction",
    "cos_last": "cos to the last context chunk",
    "cos_mean": "cos to the context mean",
    "twotower": "two-tower score",
    "lane": "lane agreement (query lane probability of the candidate's lane)",
    **ARTICLE_FEATURES,
}
NEEDS = {"cos_pred": "pred", "twotower": "twotower"}  # feature -> the query source it reads


def default_features(
    protocol: str, *, pred: bool = True, twotower: bool = False, lanes: bool = False
) -> list[str]:
    """Every feature the protocol allows and the given sources provide."""
    check_protocol(protocol)
    names = ["score", "log_rank"] + (["cos_pred"] if pred else []) + ["cos_last", "cos_mean"]
    names += (["twotower"] if twotower else []) + (["lane"] if lanes else [])
    return names + (list(ARTICLE_FEATURES) if protocol == IN_ARTICLE else [])


def check_feature_names(names, protocol: str, sources, lanes) -> None:
    """Unknown names, article features under open, and features whose source is missing are refused."""
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise ConfigError(f"unknown reranker feature(s) {unknown}; allowed: {', '.join(FEATURES)}")
    check_features(protocol, names, "reranker features")
    for n in names:
        if n in NEEDS and NEEDS[n] not in sources:
            raise ConfigError(
                f"feature {n!r} needs a {NEEDS[n]} query source (e.g. --twotower RUN); none was given"
            )
    if "lane" in names and lanes is None:
        raise ConfigError(
            "feature 'lane' needs a lane classifier (--lanes DIR from `lvmkit lanes`); none was given"
        )


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# ------------------------------------------------------------------------------------------ query sources
class QuerySource:
    """A run or baseline as a query: ``source(batch) -> float32 [B, d]`` reading only its own last ``ctx`` chunks."""

    def __init__(self, spec: str, name: str, predictor, ctx: int, target=None):
        from lvmkit.eval.evaluator import _Predict

        self.spec, self.name, self.predictor, self.ctx, self.target = spec, name, predictor, int(ctx), target
        self._predict = _Predict(predictor)
        # memo key: one source named two ways (relative / absolute path) is computed once per batch
        base, _, head = spec.partition("+")
        self.key = (base if base.startswith("baseline:") else str(Path(base).resolve())) + (
            f"+{head}" if head else ""
        )
        self.key += f"@ctx{self.ctx}"

    def __call__(self, batch) -> np.ndarray:
        from lvmkit.data.windows import WindowBatch

        if batch.ctx.shape[1] > self.ctx:
            batch = WindowBatch(
                batch.ctx[:, -self.ctx :],
                batch.mask[:, -self.ctx :],
                batch.target,
                batch.target_ids,
                batch.article,
            )
        return self._predict(batch)


def load_source(spec: str, bank: VectorBank, *, ctx: int = 5, head: str | None = None) -> QuerySource:
    """``baseline:NAME`` (copy_last, mean_ctx, exp_weighted; reads ``ctx`` chunks) or a run directory / checkpoint
    (reads its own data.ctx; refused for another encoder), optionally through its alignment ``head``."""
    from lvmkit.eval.command import baseline_predictor, resolve_target

    t = resolve_target(spec, bank)
    if t.kind == "baseline":
        if t.name in ("ridge", "oracle"):
            raise ConfigError(
                f"{spec} cannot be a query source here (ridge needs fitting, oracle reads the answer)"
            )
        if head is not None:
            raise ConfigError(f"head {head!r} applies to a run, not to {spec}")
        return QuerySource(spec, t.name, baseline_predictor(t.name, bank, None, None), ctx, t)
    if head is not None:
        from lvmkit.heads.align import attach_head

        attach_head(t, head, bank)
    return QuerySource(spec + (f"+{head}" if head else ""), t.name, t.predictor, t.config.data.ctx, t)


# ------------------------------------------------------------------------------------------ queries, pools
class QueryBatch:
    """A batch of query windows under a protocol: context rows (excluded from candidates), the last context
    row, the article, the last and mean context vectors, and a memo of each source's query vectors."""

    def __init__(self, windows, idx, protocol: str = OPEN):
        self.protocol = check_protocol(protocol)
        self.bank: VectorBank = windows.bank
        self.idx = np.atleast_1d(np.asarray(idx, dtype=np.int64))
        self.batch = windows.batch(self.idx)
        self.ctx_rows = np.asarray(windows.context_rows(self.idx), dtype=np.int64)
        self.article = windows.article_of(self.idx)
        self.truth = windows.targets[self.idx]
        self.last_row = self.ctx_rows[:, -1]
        ctx, mask = self.batch.ctx.numpy(), self.batch.mask.numpy()
        self.last = ctx[:, -1]
        self.mean = _unit((ctx * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1))
        self.memo: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.idx)

    def query(self, source: QuerySource) -> np.ndarray:
        if source.key not in self.memo:
            self.memo[source.key] = source(self.batch)
        return self.memo[source.key]


@dataclass
class Pool:
    """Candidates of each query, best first: ids [B, K] (-1 padded), the current stage's ``scores`` [B, K], and the
    retrieval stage's score and rank of each candidate (features keep reading those after reranking)."""

    ids: np.ndarray
    scores: np.ndarray
    retrieval_score: np.ndarray
    retrieval_rank: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> np.ndarray:
        return self.ids >= 0

    def rerank(self, scores: np.ndarray, k: int) -> Pool:
        """The top ``k`` by ``scores`` (invalid candidates last), with the new scores."""
        scores = np.where(self.valid, scores, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]

        def take(a):
            return np.take_along_axis(a, order, axis=1)

        return Pool(take(self.ids), take(scores), take(self.retrieval_score), take(self.retrieval_rank))


def retrieve(qb: QueryBatch, source: QuerySource, k: int, *, index=None, nprobe: int | None = None) -> Pool:
    """The top ``k`` candidates of ``source``'s queries under the batch's protocol (context rows excluded)."""
    scores, ids = search(
        qb.protocol, qb.bank, qb.query(source), qb.article, qb.ctx_rows, k, index=index, nprobe=nprobe
    )
    rank = np.broadcast_to(np.arange(ids.shape[1]), ids.shape).copy()
    return Pool(ids, scores, scores.copy(), rank)


# ------------------------------------------------------------------------------------------ features
@dataclass
class Lanes:
    """A lane classifier and the bank's lane column, for the ``lane`` feature and the lane rerank stage."""

    classifier: Any  # lvmkit.lanes.LaneClassifier
    bank_lanes: np.ndarray  # [N] int
    path: str = ""

    @classmethod
    def load(cls, path, bank: VectorBank) -> Lanes:
        try:
            from lvmkit.lanes import LaneClassifier, chunk_lanes
        except ImportError as e:  # the lanes package lands from another branch
            raise ConfigError(f"lane features need lvmkit.lanes, which this installation lacks ({e})") from e
        return cls(LaneClassifier.load(path), np.asarray(chunk_lanes(bank), dtype=np.int64), str(path))

    def agreement(self, query: np.ndarray, ids: np.ndarray) -> np.ndarray:
        proba = np.asarray(self.classifier.predict_proba(query))  # [B, L]
        lanes = self.bank_lanes[np.where(ids >= 0, ids, 0)]
        return np.take_along_axis(proba, lanes, axis=1)


def feature_matrix(
    names,
    pool: Pool,
    qb: QueryBatch,
    sources: dict[str, QuerySource] | None = None,
    lanes: Lanes | None = None,
) -> np.ndarray:
    """float32 [B, K, F]: the named features of every candidate (0 for padding)."""
    sources = sources or {}
    check_feature_names(names, qb.protocol, sources, lanes)
    valid = pool.valid
    safe = np.where(valid, pool.ids, 0)
    cand = qb.bank.get(safe.ravel()).reshape(*safe.shape, qb.bank.dim)

    def cos(q: np.ndarray) -> np.ndarray:
        return np.einsum("bkd,bd->bk", cand, q.astype(np.float32))

    cols = []
    for n in names:
        if n == "score":
            v = pool.retrieval_score
        elif n == "log_rank":
            v = np.log1p(pool.retrieval_rank)
        elif n in NEEDS:
            v = cos(qb.query(sources[NEEDS[n]]))
        elif n == "cos_last":
            v = cos(qb.last)
        elif n == "cos_mean":
            v = cos(qb.mean)
        elif n == "lane":
            v = lanes.agreement(qb.query(sources["pred"]) if "pred" in sources else qb.mean, pool.ids)
        else:  # article features (in-article only, checked above)
            same = qb.bank.article_codes[safe] == qb.article[:, None]
            gap = np.where(same, safe - qb.last_row[:, None], 0)
            v = {"same_article": same, "gap": gap, "next": same & (gap == 1)}[n]
        cols.append(np.where(valid, np.asarray(v, dtype=np.float32), 0.0))
    return np.stack(cols, axis=-1).astype(np.float32)
