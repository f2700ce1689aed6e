"""Cascade stages: candidates in -> fewer candidates out. ``build_stages(cfg, bank)`` loads every model and checks
every provenance before anything runs (an unknown stage, a head or reranker from another bank / encoder / protocol
is refused there).

    class Stage(Protocol):
        name: str            # retrieve, lvm_rerank, reranker, lane_rerank
        k: int               # candidates it keeps
        def run(self, qb: QueryBatch, pool: Pool | None) -> Pool

Timings are taken around ``run`` by the evaluator (``lvmkit.cascade.evaluate``); a stage's time includes the model
forward it triggers (query vectors are memoised per batch, so a source two stages share is computed once, in the
first stage that needs it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from lvmkit.bank.bank import VectorBank
from lvmkit.cascade.config import (
    CascadeConfig,
    LaneRerankConfig,
    LvmRerankConfig,
    RerankerConfig,
    RetrieveConfig,
)
from lvmkit.errors import ConfigError, LvmkitError
from lvmkit.heads.features import Lanes, Pool, QueryBatch, QuerySource, load_source, retrieve


class Stage(Protocol):
    name: str
    k: int

    def run(self, qb: QueryBatch, pool: Pool | None) -> Pool: ...

    def describe(self) -> str: ...


def _cos(qb: QueryBatch, pool: Pool, q: np.ndarray) -> np.ndarray:
    safe = np.where(pool.valid, pool.ids, 0)
    cand = qb.bank.get(safe.ravel()).reshape(*safe.shape, qb.bank.dim)
    return np.einsum("bkd,bd->bk", cand, q.astype(np.float32))


class RetrieveStage:
    name = "retrieve"

    def __init__(self, source: QuerySource, k: int, index=None, nprobe: int | None = None):
        self.source, self.k, self.index, self.nprobe = source, k, index, nprobe

    def run(self, qb: QueryBatch, pool: Pool | None) -> Pool:
        return retrieve(qb, self.source, self.k, index=self.index, nprobe=self.nprobe)

    def describe(self) -> str:
        return f"retrieve top {self.k} by {self.source.spec}"

    @property
    def sources(self) -> list[QuerySource]:
        return [self.source]


class LvmRerankStage:
    name = "lvm_rerank"

    def __init__(self, source: QuerySource, k: int):
        self.source, self.k = source, k

    def run(self, qb: QueryBatch, pool: Pool | None) -> Pool:
        return pool.rerank(_cos(qb, pool, qb.query(self.source)), self.k)

    def describe(self) -> str:
        return f"rerank to top {self.k} by cos to {self.source.spec}"

    @property
    def sources(self) -> list[QuerySource]:
        return [self.source]


class RerankerStage:
    name = "reranker"

    def __init__(self, reranker, sources, k: int):
        self.reranker, self.feature_sources, self.k = reranker, sources, k

    def run(self, qb: QueryBatch, pool: Pool | None) -> Pool:
        return self.reranker.rerank(pool, qb, self.feature_sources, self.k)

    def describe(self) -> str:
        return f"{self.reranker.kind} reranker ({', '.join(self.reranker.spec.features)}) to top {self.k}"

    @property
    def sources(self) -> list[QuerySource]:
        return list(self.feature_sources.roles.values())


class LaneRerankStage:
    name = "lane_rerank"

    def __init__(self, lanes: Lanes, query: QuerySource, weight: float, k: int):
        self.lanes, self.query, self.weight, self.k = lanes, query, weight, k

    def run(self, qb: QueryBatch, pool: Pool | None) -> Pool:
        from lvmkit.lanes import lane_rerank

        q = qb.query(self.query)
        proba = np.asarray(self.lanes.classifier.predict_proba(q))
        cand_lanes = self.lanes.bank_lanes[np.where(pool.valid, pool.ids, 0)]
        return pool.rerank(
            np.asarray(lane_rerank(_cos(qb, pool, q), proba, cand_lanes, weight=self.weight)), self.k
        )

    def describe(self) -> str:
        return f"lane rerank (weight {self.weight}, query {self.query.spec}) to top {self.k}"

    @property
    def sources(self) -> list[QuerySource]:
        return [self.query]


def build_stages(cfg: CascadeConfig, bank: VectorBank, index=None) -> list[Stage]:
    """Load every stage's models and check them against the bank and the protocol; nothing runs yet."""
    from lvmkit.heads.reranker import Reranker, Sources

    stages: list[Stage] = []
    for i, s in enumerate(cfg.stages):
        where = f"stages[{i}] ({s.stage})"
        try:
            if isinstance(s, RetrieveConfig):
                stages.append(RetrieveStage(load_source(s.source, bank, ctx=cfg.ctx), s.k, index, cfg.nprobe))
            elif isinstance(s, LvmRerankConfig):
                stages.append(LvmRerankStage(load_source(s.run, bank, ctx=cfg.ctx, head=s.head), s.k))
            elif isinstance(s, RerankerConfig):
                rr = Reranker.load(s.path, bank, protocol=cfg.protocol)
                check_reranker_pool(rr, cfg, where)
                stages.append(RerankerStage(rr, Sources.load(rr.spec, bank), s.k))
            elif isinstance(s, LaneRerankConfig):
                query = load_source(s.query, bank, ctx=cfg.ctx) if s.query else _last_source(stages, where)
                stages.append(LaneRerankStage(Lanes.load(s.lanes, bank), query, s.weight, s.k))
        except LvmkitError as e:
            raise type(e)(f"{where}: {e}") from None
    return stages


def _last_source(stages: list[Stage], where: str) -> QuerySource:
    for st in reversed(stages):
        if isinstance(st, LvmRerankStage | RetrieveStage):
            return st.source
    raise ConfigError(f"{where}: give query: (a run or baseline:NAME) for the lane classifier")


def check_reranker_pool(rr, cfg: CascadeConfig, where: str) -> None:
    """A reranker reads the retrieval stage's score and rank: it must have been fitted on the same retriever."""
    retr = cfg.stages[0]
    same = (
        Path(rr.spec.retriever).resolve() == Path(retr.source).resolve()
        if not retr.source.startswith("baseline:")
        else rr.spec.retriever == retr.source
    )
    if not same:
        raise ConfigError(
            f"{where}: the reranker was fitted on pools of {rr.spec.retriever!r} but this cascade retrieves with "
            f"{retr.source!r}; its score/rank features would mean something else. Refit it with --retriever {retr.source}"
        )
