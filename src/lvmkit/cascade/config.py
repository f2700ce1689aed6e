"""The cascade config (YAML, pydantic): the bank, the protocol, and the stages in order.

    name: tt-gru-lanes
    bank: banks/enwiki
    protocol: open            # or in-article
    split: test
    index: ivf                # the bank's stored index (open protocol); null = the bank's own
    nprobe: 64
    stages:
      - {stage: retrieve, source: runs/twotower, k: 500}        # or source: baseline:exp_weighted
      - {stage: lvm_rerank, run: runs/gru, k: 50}               # head: ridge | procrustes (from lvmkit align)
      - {stage: reranker, path: runs/gru/heads/reranker-open.json, k: 20}
      - {stage: lane_rerank, lanes: lanes/default, weight: 0.3, k: 10}

The first stage retrieves, every later one reorders the previous stage's candidates and keeps its top k, so
k never grows. Errors name the field: an unknown stage, a k larger than the previous stage's, a missing field.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lvmkit.errors import ConfigError
from lvmkit.eval.protocol import PROTOCOLS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetrieveConfig(_Strict):
    """Search the candidates of the protocol (whole bank / the article) with a query source."""

    stage: Literal["retrieve"] = "retrieve"
    source: str = "baseline:exp_weighted"  # baseline:NAME or a run (two-tower query tower or any LVM)
    k: int = Field(500, ge=1)


class LvmRerankConfig(_Strict):
    """Reorder by cos(LVM prediction, candidate)."""

    stage: Literal["lvm_rerank"] = "lvm_rerank"
    run: str
    head: str | None = None  # an alignment head of the run (lvmkit align)
    k: int = Field(50, ge=1)


class RerankerConfig(_Strict):
    """Reorder by a fitted mini reranker (lvmkit rerank fit); its protocol must be the cascade's."""

    stage: Literal["reranker"] = "reranker"
    path: str  # RUN (uses heads/reranker-PROTOCOL.json) or the .json itself
    k: int = Field(10, ge=1)


class LaneRerankConfig(_Strict):
    """Reorder by (1 - weight) cos(query, candidate) + weight P(query lane = candidate lane)."""

    stage: Literal["lane_rerank"] = "lane_rerank"
    lanes: str  # a lane classifier directory (lvmkit lanes)
    weight: float = Field(0.3, ge=0.0, le=1.0)
    query: str | None = None  # source of the query vector; default: the previous model stage's
    k: int = Field(10, ge=1)


StageConfig = Annotated[
    RetrieveConfig | LvmRerankConfig | RerankerConfig | LaneRerankConfig, Field(discriminator="stage")
]
STAGE_NAMES = ("retrieve", "lvm_rerank", "reranker", "lane_rerank")


class CascadeConfig(_Strict):
    name: str = "cascade"
    bank: str
    protocol: Literal["open", "in-article"] = "open"
    split: Literal["train", "val", "test"] = "test"
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    index: Literal["flat", "ivf", "hnsw"] | None = None
    nprobe: int | None = Field(64, ge=1)
    ctx: int = Field(5, ge=1)  # context length of baseline sources (runs read their own)
    min_ctx: int | None = Field(
        None, ge=1
    )  # fewest real context chunks of a query (default: the smallest ctx)
    # context chunks of each query window, ALL excluded from the candidates (default: the longest ctx any stage
    # reads). Cascades compared with each other must use the same value: excluding more rows is an easier task.
    window_ctx: int | None = Field(None, ge=1)
    max_queries: int = Field(2000, ge=1)
    latency_n: int = Field(200, ge=0)
    seed: int = 0
    stages: list[StageConfig]

    def without(self, i: int) -> CascadeConfig:
        """This cascade with stage ``i`` removed (the ablation)."""
        return self.model_copy(update={"stages": [s for j, s in enumerate(self.stages) if j != i]})


def check_stages(stages: list[StageConfig]) -> None:
    """The first stage retrieves and only it; k never grows from one stage to the next."""
    if not stages:
        raise ConfigError("stages: a cascade needs at least one stage (a retrieve stage)")
    if stages[0].stage != "retrieve":
        raise ConfigError(f"stages[0].stage: the first stage must be 'retrieve', got {stages[0].stage!r}")
    for i, s in enumerate(stages[1:], start=1):
        if s.stage == "retrieve":
            raise ConfigError(
                f"stages[{i}].stage: only the first stage retrieves; later stages reorder its candidates"
            )
        if s.k > stages[i - 1].k:
            raise ConfigError(
                f"stages[{i}].k={s.k} is larger than the previous stage's k={stages[i - 1].k}: a stage can only "
                "keep fewer candidates than it receives"
            )


def cascade_from_dict(raw: Any, source: str = "cascade config") -> CascadeConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must be a mapping with bank: and stages:, got {type(raw).__name__}")
    if raw.get("protocol", "open") not in PROTOCOLS:
        raise ConfigError(
            f"{source}: protocol: {raw['protocol']!r} is not known; allowed: {', '.join(PROTOCOLS)}"
        )
    for i, s in enumerate(raw.get("stages") or []):
        name = s.get("stage") if isinstance(s, dict) else None
        if name not in STAGE_NAMES:
            raise ConfigError(
                f"{source}: stages[{i}].stage: unknown stage {name!r}; allowed: {', '.join(STAGE_NAMES)}"
            )
    try:
        cfg = CascadeConfig.model_validate(raw)
    except ValidationError as e:
        # the discriminator's tag (stages.1.lvm_rerank.run) is dropped from the field name: stages.1.run
        lines = [
            f"  - {'.'.join(str(p) for p in err['loc'] if p not in STAGE_NAMES)}: {err['msg']}"
            for err in e.errors()
        ]
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(lines)) from None
    check_stages(cfg.stages)
    return cfg


def load_cascade(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> CascadeConfig:
    """Read a cascade YAML and apply ``key=value`` overrides (``stages.1.k=20``)."""
    from lvmkit.train.config import read_yaml_config

    return cascade_from_dict(read_yaml_config(path, overrides, "cascade config"), str(path))
