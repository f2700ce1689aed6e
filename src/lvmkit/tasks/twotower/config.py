"""The two-tower task's config: the shared run sections plus the typed ``twotower:`` section.

The query tower itself is ``model:``; ``twotower:`` holds the pairs, the document tower, the loss, the
hard-negative curriculum, the evaluation and the abort rule. Every key is checked (errors name
``twotower.<field>``); the LVM ``loss:`` section does not exist for this task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lvmkit.errors import ConfigError
from lvmkit.train.config import RunConfig
from lvmkit.train.mining import InArticleOffsets, parse_schedule

HEURISTICS = ("exp_weighted", "copy_last")  # beside the tower at every validation (and mean_ctx at the end)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AbortConfig(_Section):
    """Stop when ``metric`` (a key of the task's evaluation, e.g. ``sep_margin``) is below ``below`` at
    ``consecutive`` consecutive evaluations, counting only epochs after ``after_epoch``."""

    metric: str = "sep_margin"
    below: float = 0.04
    after_epoch: int = Field(10, ge=0)
    consecutive: int = Field(2, ge=1)


class AdapterOptions(_Section):
    """Options of the ``adapter`` document tower (``models.towers.AdapterDocTower``); unused by ``identity``."""

    hidden: int = Field(512, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)


class TwoTowerConfig(_Section):
    """The ``twotower:`` section of a run config (the query tower itself is ``model:``)."""

    pairs: Path | None = Field(
        None, description="train pairs from `lvmkit pairs`; None = made from the split"
    )
    pair_stride: int = Field(32, ge=1, description="stride between targets when the task makes the pairs")
    pairs_per_article: int | None = Field(30, ge=1, description="cap on pairs per article (None = no cap)")
    target_pairs: int | None = Field(None, ge=1, description="aim for this many train pairs")
    eval_stride: int = Field(32, ge=1, description="stride of the val / test pairs")
    doc_tower: Literal["identity", "adapter"] = "identity"
    doc_kwargs: AdapterOptions = Field(default_factory=AdapterOptions, description="adapter options")
    tau: float = Field(0.05, gt=0, description="InfoNCE temperature")
    memory: int = Field(50_000, ge=0, description="memory-bank entries (recent document vectors); 0 = off")
    false_negative_cos: float = Field(
        0.98, gt=0, le=1, description="mask candidates this close to the positive"
    )
    margin: float | None = Field(None, ge=0, description="m of relu(m - (s_pos - max s_neg)); None = no term")
    margin_weight: float = Field(1.0, ge=0)
    inarticle_offsets: InArticleOffsets = Field(
        default_factory=list,
        description="in-article hard negatives: k > 0 = the chunk target + k, k < 0 = the |k|-th chunk before "
        "the context (e.g. [1, 2, -1]); [] = none",
    )
    inarticle_weight: float = Field(
        1.0, gt=0, description="each in-article negative counts as this many negatives (logit + log w)"
    )
    schedule: str = Field(
        "none",
        description="hard-negative curriculum: cosine windows (0-5:none;6-30:8@0.82-0.92), percentile windows "
        "(6-30:8@p90-p99) or per-query rank windows (6-30:8@r10-r50)",
    )
    candidate_factor: int = Field(4, ge=1, description="mining looks at factor x count candidates per pair")
    mining_batch: int = Field(512, ge=1, description="queries encoded at once when mining")
    gradcache_chunk: int | None = Field(None, ge=1, description="query sub-batch for GradCache; None = off")
    eval_ks: tuple[int, ...] = (10, 100, 500, 1000)
    compare_on: str = Field("recall@500", description="metric of the final paired comparison")
    sep_neighbours: int = Field(16, ge=1, description="bank neighbours in the separation margin")
    heuristic_alpha: float = Field(0.1, gt=0, le=1, description="alpha of the exp_weighted heuristic")
    abort: AbortConfig | None = Field(default_factory=AbortConfig)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str) -> str:
        try:
            return str(parse_schedule(v))
        except ConfigError as e:
            raise ValueError(str(e)) from None

    @field_validator("eval_ks")
    @classmethod
    def _ks(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or min(v) < 1:
            raise ValueError(f"eval_ks must be positive integers, got {v}")
        return tuple(sorted(set(v)))

    def doc_options(self) -> dict:
        """Keyword arguments of ``build_doc_tower(doc_tower, dim, ...)``."""
        return self.doc_kwargs.model_dump() if self.doc_tower == "adapter" else {}

    def own_metrics(self) -> list[str]:
        """What the tower's per-epoch evaluation measures."""
        return [f"recall@{k}" for k in self.eval_ks] + ["mrr@10", "sep_margin", "cos"]


class TwoTowerRunConfig(RunConfig):
    """``task: twotower``: retrieve the next chunk from the full bank with a query tower (``model:``) and a
    document tower (``twotower.doc_tower``)."""

    task: Literal["twotower"] = "twotower"
    twotower: TwoTowerConfig = Field(default_factory=TwoTowerConfig)


def metric_names(tt: TwoTowerConfig) -> list[str]:
    """What ``TwoTowerTask.evaluate`` measures (the loop prefixes ``val_``): the tower's, then each heuristic's."""
    own = tt.own_metrics()
    return own + [f"{h}_{m}" for h in HEURISTICS for m in own]
