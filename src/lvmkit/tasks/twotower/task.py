"""The two-tower task: retrieve the next chunk from the full bank, given the context chunks of an article.

A query tower reads the context window (``bigru_pool``, ``transformer_pool`` or any LVM of the zoo, built from
``model:``); a document tower places every bank vector (``identity`` or ``adapter``, from ``twotower:``). Both
sides are unit vectors; the score of a chunk is their inner product. What the loop asks of a task
(``loop.Task``), answered for two towers:

    data        (context, next chunk) pairs by chunk id (``lvmkit.data.make_pairs``, or ``twotower.pairs`` made
                by ``lvmkit pairs``) from the train articles of the run's article-disjoint split; val and test
                pairs from the held-out articles. Train batches: ArticleCappedBatchSampler over the pairs.
    loss        InfoNCE (temperature ``tau``) of each query against
                  - the batch's documents (its own positive on its own row; under DDP every rank's),
                  - a MoCo-style FIFO memory bank of recent document vectors (``memory`` entries),
                  - its mined hard negatives (looked up by pair id in the current ``NegativeStore``),
                with false negatives masked to -inf: a candidate from the query's own article, or with
                cos > ``false_negative_cos`` to the positive. Optional margin term
                ``margin_weight * relu(m - (s_pos - max s_neg))`` on cosines. With ``gradcache_chunk`` the
                query tower runs in sub-batches through GradCache (``lvmkit.train.gradcache``), so the batch
                size (and with it the number of in-batch negatives) is not limited by activation memory.
    epoch start ANCE-style refresh when the curriculum (``twotower.schedule``) asks for negatives: every train
                query is re-encoded with the current tower and mined (``lvmkit.train.mining``); the counts
                per rule go to train.log and RUN/mining.jsonl.
    evaluate    Recall@10/100/500/1000 by exact search over the whole (document-tower) bank, the window's
                own context excluded; MRR@10; separation margin (cos(q, pos) minus the mean cos to the top-16
                other chunks); and the same for the exp_weighted (alpha 0.1) and copy_last queries on the same
                pairs, side by side (``exp_weighted_recall@500``, ``copy_last_recall@500``, ...).
    abort       ``should_stop``: separation margin below ``abort.below`` at ``abort.consecutive`` consecutive
                evaluations after epoch ``abort.after_epoch`` -> RUN/abort.pt + RUN/triage.md, run stopped.
    final_eval  the test pairs: the tower beside the heuristics, bootstrap intervals and a paired difference
                on Recall@500 against the best heuristic -> RUN/metrics.json, RUN/metrics.md.

Everything around it (optimiser, checkpoints and exact resume, gates, status, detach, history) is the loop's,
shared with LVM runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import Tensor, nn

from lvmkit.artifacts import append_jsonl, write_json, write_text
from lvmkit.bank.bank import VectorBank
from lvmkit.bank.index import SearchIndex, exact_index
from lvmkit.data.pairs import PairSet, make_pairs
from lvmkit.data.splits import Split
from lvmkit.data.windows import WindowBatch, WindowSet
from lvmkit.errors import ConfigError
from lvmkit.eval.bootstrap import paired_diff_ci
from lvmkit.eval.evaluator import Comparison, EvalResult, evaluate, separation_on_bank
from lvmkit.eval.tuning import tune_anchor
from lvmkit.losses import VectorQueue
from lvmkit.models import build_model, describe
from lvmkit.models.towers import build_doc_tower
from lvmkit.tasks.lvm import SamplerEpochs, open_bank_and_split, train_sampler
from lvmkit.train import distributed as D
from lvmkit.train.checkpoint import bank_stamp, save_checkpoint
from lvmkit.train.config import RunConfig
from lvmkit.train.gradcache import cached_forward, split_batch
from lvmkit.train.mining import (
    NegativeStore,
    Schedule,
    format_mining_stats,
    mine_negatives,
    parse_schedule,
    resolve_stage,
)
from lvmkit.train.runs import RunPaths

HEURISTICS = ("exp_weighted", "copy_last")
ABORT_FILE = "abort.pt"
MINING_LOG = "mining.jsonl"


# ------------------------------------------------------------------------------------------ config
class AbortConfig(BaseModel):
    """Stop when ``metric`` (a key of the task's evaluation, e.g. ``sep_margin``) is below ``below`` at
    ``consecutive`` consecutive evaluations, counting only epochs after ``after_epoch``."""

    model_config = ConfigDict(extra="forbid")

    metric: str = "sep_margin"
    below: float = 0.04
    after_epoch: int = Field(10, ge=0)
    consecutive: int = Field(2, ge=1)


class TwoTowerConfig(BaseModel):
    """The ``twotower:`` section of a run config (the query tower itself is ``model:``)."""

    model_config = ConfigDict(extra="forbid")

    pairs: Path | None = Field(
        None, description="train pairs from `lvmkit pairs`; None = made from the split"
    )
    pair_stride: int = Field(32, ge=1, description="stride between targets when the task makes the pairs")
    pairs_per_article: int | None = Field(30, ge=1, description="cap on pairs per article (None = no cap)")
    target_pairs: int | None = Field(None, ge=1, description="aim for this many train pairs")
    eval_stride: int = Field(32, ge=1, description="stride of the val / test pairs")
    doc_tower: Literal["identity", "adapter"] = "identity"
    doc_kwargs: dict[str, Any] = Field(default_factory=dict, description="adapter options: hidden, dropout")
    tau: float = Field(0.05, gt=0, description="InfoNCE temperature")
    memory: int = Field(50_000, ge=0, description="memory-bank entries (recent document vectors); 0 = off")
    false_negative_cos: float = Field(
        0.98, gt=0, le=1, description="mask candidates this close to the positive"
    )
    margin: float | None = Field(None, ge=0, description="m of relu(m - (s_pos - max s_neg)); None = no term")
    margin_weight: float = Field(1.0, ge=0)
    schedule: str = Field("none", description="hard-negative curriculum, e.g. 0-5:none;6-30:8@0.82-0.92")
    candidate_factor: int = Field(
        4,
        ge=1,
        description="mining looks at factor x count candidates per pair (raised for percentile windows)",
    )
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


def parse_twotower(raw: dict[str, Any] | None) -> TwoTowerConfig:
    """Validate the ``twotower:`` section; errors name ``twotower.<field>`` and what is allowed."""
    try:
        return TwoTowerConfig.model_validate(raw or {})
    except ValidationError as e:
        lines = []
        for err in e.errors():
            where = ".".join(["twotower", *(str(p) for p in err["loc"])])
            if err["type"] == "extra_forbidden":
                section = AbortConfig if "abort" in err["loc"][:-1] else TwoTowerConfig
                lines.append(f"  - {where}: unknown field; allowed: {', '.join(section.model_fields)}")
            else:
                got = err.get("input")
                shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
                lines.append(f"  - {where}: {err['msg']}{shown}")
        raise ConfigError("the twotower section is invalid:\n" + "\n".join(lines)) from None


def metric_names(tt: TwoTowerConfig) -> list[str]:
    """What ``TwoTowerTask.evaluate`` measures (the loop prefixes ``val_``)."""
    own = [f"recall@{k}" for k in tt.eval_ks] + ["mrr@10", "sep_margin", "cos"]
    return own + [f"{h}_{m}" for h in HEURISTICS for m in own]


# ------------------------------------------------------------------------------------ document space
class DocBank:
    """A bank seen through the document tower: the same rows, chunk ids and articles, other vectors, and an
    exact index over them. It stands in for a ``VectorBank`` wherever the evaluator or the miner searches
    (attributes it does not define come from the underlying bank)."""

    def __init__(self, bank: VectorBank, vectors: np.ndarray, index: SearchIndex):
        self._bank = bank
        self.vectors = vectors
        self._index = index

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bank, name)

    def __len__(self) -> int:
        return len(self._bank)

    def index(self) -> SearchIndex:
        return self._index

    def search(self, queries: np.ndarray, k: int, exclude=None, nprobe: int | None = None):
        return self._index.search(queries, k, exclude=exclude, nprobe=nprobe)

    def get(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.vectors[np.asarray(rows)], dtype=np.float32)


@torch.no_grad()
def encode_bank(bank: VectorBank, tower: nn.Module, device: torch.device, block: int = 16_384) -> np.ndarray:
    """Every bank vector through the document tower (eval mode), float32 [N, d] in memory."""
    was = tower.training
    tower.eval()
    out = np.empty((len(bank), bank.dim), dtype=np.float32)
    for s in range(0, len(bank), block):
        x = torch.from_numpy(bank.get(np.arange(s, min(len(bank), s + block)))).to(device)
        out[s : s + len(x)] = tower(x).float().cpu().numpy()
    tower.train(was)
    return out


def raw_doc_bank(bank: VectorBank) -> DocBank:
    """The bank itself with an exact index (its stored one when that is already exact)."""
    si = bank.index()
    if si.params.get("type") != "flat":
        si = exact_index(bank.vectors)
    return DocBank(bank, bank.vectors, si)


# ------------------------------------------------------------------------------------------ the loss
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
) -> Tensor:
    """Logits [B, B + S + M] of each query against [batch documents | shared negatives | its own mined ones].

    q, pos [B, d] unit vectors (query i's positive is ``pos[i]``, at column i); ``shared`` [S, d] negatives
    every query sees (other ranks' documents, the memory bank); ``mined`` [B, M, d] per-query negatives.
    Entry (i, j) is cos(q_i, c_j) / tau, or -inf for a false negative: j != i and (c_j is from article[i], or
    cos(pos_i, c_j) > fn_cos), or a mined slot that is not valid. Same rule as ``lvmkit.losses.info_nce``.
    """
    B = q.shape[0]
    cands, cand_art = [pos], [article]
    if shared is not None and len(shared):
        cands.append(shared.to(pos.dtype))
        cand_art.append(shared_article.to(article.device))
    c = torch.cat(cands)
    ca = torch.cat(cand_art)
    logits = q @ c.T / tau
    with torch.no_grad():
        bad = ((pos @ c.T) > fn_cos) | ((article[:, None] == ca[None, :]) & (article[:, None] >= 0))
        eye = torch.arange(B, device=q.device)
        bad[eye, eye] = False
    logits = logits.masked_fill(bad, float("-inf"))
    if mined is None or mined.shape[1] == 0:
        return logits
    m_logits = torch.einsum("bd,bmd->bm", q, mined.to(q.dtype)) / tau
    with torch.no_grad():
        m_bad = ~mined_valid.bool()
        m_bad |= torch.einsum("bd,bmd->bm", pos, mined.to(pos.dtype)) > fn_cos
        m_bad |= (mined_article == article[:, None]) & (article[:, None] >= 0)
    return torch.cat([logits, m_logits.masked_fill(m_bad, float("-inf"))], dim=1)


def twotower_loss(
    logits: Tensor, tau: float, margin: float | None = None, margin_weight: float = 1.0
) -> tuple[Tensor, dict[str, float]]:
    """InfoNCE over ``twotower_logits`` (label i for row i) plus the optional margin term on cosines."""
    B = logits.shape[0]
    labels = torch.arange(B, device=logits.device)
    nce = F.cross_entropy(logits, labels)
    s = logits * tau
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
    return total, parts


# ------------------------------------------------------------------------------------------ the task
class TwoTowerTask(SamplerEpochs):
    """Two-tower retrieval on one bank. Build it with ``TwoTowerTask.from_config``."""

    def __init__(
        self,
        cfg: RunConfig,
        tt: TwoTowerConfig,
        bank: VectorBank,
        split: Split,
        train: WindowSet,
        train_pair_ids: np.ndarray,
        val: WindowSet,
        test: WindowSet,
        query: nn.Module,
        doc: nn.Module,
        dist: D.DistInfo,
        run: RunPaths | None = None,
    ):
        self.cfg, self.tt, self.bank, self.split = cfg, tt, bank, split
        self.train, self.val, self.test = train, val, test
        self.train_pair_ids = np.asarray(train_pair_ids, dtype=np.int64)
        self.query, self.doc, self.dist, self.run = query, doc, dist, run
        self.schedule: Schedule = parse_schedule(tt.schedule)
        self.memory = VectorQueue(tt.memory, bank.dim) if tt.memory > 0 else None
        self.store = NegativeStore.empty()
        self.evals: list[tuple[int, float]] = []  # (epoch, abort metric) of every evaluation so far
        self.sampler = train_sampler(train, cfg, dist)
        self._raw: DocBank | None = None  # the bank with an exact index (heuristics; identity documents)
        self._heuristics: dict[str, float] | None = None  # heuristics on the fixed val pairs, computed once

    # --------------------------------------------------------------------------------- construction
    @classmethod
    def from_config(
        cls, cfg: RunConfig, run: RunPaths, dist: D.DistInfo, rng: np.random.Generator, resume: bool = False
    ) -> TwoTowerTask:
        """Open the bank, make (or reload) the split, the train / val / test pairs and both towers."""
        tt = parse_twotower(cfg.twotower)
        if cfg.loss != RunConfig.model_fields["loss"].default_factory():
            raise ConfigError(
                f"loss={cfg.loss} is not used by two-tower runs: their loss is set in the twotower section "
                "(tau, memory, false_negative_cos, margin); remove the loss section"
            )
        schedule = parse_schedule(tt.schedule)
        schedule.check_epochs(cfg.optim.epochs)
        known = [f"val_{m}" for m in metric_names(tt)]
        if cfg.early_stopping.metric not in known:
            raise ConfigError(
                f"early_stopping.metric={cfg.early_stopping.metric!r} is not measured by two-tower runs; "
                f"choose one of: {', '.join(known[: len(tt.eval_ks) + 3])} (e.g. val_recall@500)"
            )
        if tt.compare_on not in metric_names(tt):
            raise ConfigError(
                f"twotower.compare_on={tt.compare_on!r}; allowed: {', '.join(metric_names(tt)[:6])}"
            )
        bank, split = open_bank_and_split(cfg, run, dist, resume)
        d = cfg.data

        def pairs(name: str) -> PairSet:
            if name == "train" and tt.pairs is not None:
                ps = PairSet.load(tt.pairs, bank, split)
                a = ps.manifest["arguments"]
                if a["ctx"] != d.ctx or a["split_name"] != "train":
                    raise ConfigError(
                        f"twotower.pairs={tt.pairs} holds {a['split_name']} pairs with ctx={a['ctx']}; this run "
                        f"needs train pairs with data.ctx={d.ctx} (remake them with `lvmkit pairs --ctx {d.ctx}`)"
                    )
            else:
                ps = make_pairs(
                    bank,
                    split,
                    ctx=d.ctx,
                    stride=tt.pair_stride if name == "train" else tt.eval_stride,
                    max_per_article=tt.pairs_per_article,
                    target_pairs=tt.target_pairs if name == "train" else None,
                    min_ctx=d.min_ctx,
                    seed=cfg.seed,
                    split_name=name,
                )
            if len(ps) == 0:
                raise ConfigError(
                    f"the {name} split of bank {bank.path} gives no pairs with ctx={d.ctx} (min_ctx={d.min_ctx}): "
                    "its articles are too short or too few. Lower data.ctx, set data.min_ctx, or use a larger bank"
                )
            return ps

        train_pairs = pairs("train")
        train_all = train_pairs.windows()
        idx = train_all.sample_index(d.max_train_windows, cfg.seed)
        train = train_all.subset(idx)
        pair_ids = train_pairs.table.column("pair_id").to_numpy()[idx]
        val = pairs("val").windows().sample(d.max_eval_queries, cfg.seed + 1)
        test = pairs("test").windows().sample(d.max_test_queries, cfg.seed + 2)
        query = build_model(cfg.model.name, bank.dim, delta=cfg.model.delta, **cfg.model.kwargs)
        tune_anchor(query, val, bank, seed=cfg.seed)  # anchor blend / mix with anchor_w null: chosen on val
        if not getattr(query, "trainable", True):
            raise ConfigError(
                f"model.name={cfg.model.name!r} is a baseline with nothing to train; two-tower runs report "
                f"{' and '.join(HEURISTICS)} beside the trained tower anyway"
            )
        doc = build_doc_tower(tt.doc_tower, bank.dim, **tt.doc_kwargs)
        task = cls(cfg, tt, bank, split, train, pair_ids, val, test, query, doc, dist, run)
        if dist.is_main:
            from lvmkit.train.loop import log

            log(run, f"two-tower on bank {bank.path} ({len(bank)} chunks, {bank.manifest.bank_id}); pairs train "
                     f"{len(train)}, val {len(val)}, test {len(test)} (ctx {d.ctx}); query tower {describe(query)}; "
                     f"document tower {tt.doc_tower}")  # fmt: skip
            for line in schedule.describe(cfg.optim.epochs).splitlines():
                log(run, line)
        return task

    # ----------------------------------------------------------------------------------- loop API
    def modules(self) -> nn.ModuleDict:
        mods = {"model": self.query, "doc": self.doc}
        if self.memory is not None:
            mods["memory"] = self.memory
        return nn.ModuleDict(mods)

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Under DDP, average every gradient across ranks as it is accumulated.

        GradCache re-encodes the queries inside the backward pass, where DistributedDataParallel's reducer
        cannot follow, so this task does not use ``wrap``: a post-accumulate hook on each parameter
        all-reduces its gradient (averaging is linear, so it is also right under gradient accumulation)."""
        world = self.dist.world_size

        def average(p: Tensor) -> None:
            torch.distributed.all_reduce(p.grad)
            p.grad.div_(world)

        for p in self.modules().parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(average)

    def on_epoch_start(self, epoch: int) -> dict[str, Any]:
        """Set the sampler's epoch and, when the curriculum asks for negatives, mine them (ANCE refresh)."""
        self.sampler.set_epoch(epoch)
        stage = self.schedule.at(epoch)
        if not stage.mines:
            self.store = NegativeStore.empty()
            return {}
        if self.store.epoch == epoch and self.store.width == stage.count:
            return {"negatives": "restored from the checkpoint"}  # resumed mid-epoch: same negatives
        self.store = self.mine(epoch)
        if self.dist.is_main and self.run is not None:
            append_jsonl(self.run.root / MINING_LOG, {"epoch": epoch, **self.store.stats})
        return {"mining": format_mining_stats(self.store.stats)}

    def train_batches(self, epoch: int, start_batch: int = 0) -> Iterator[PairBatch]:
        self.sampler.set_epoch(epoch)
        for idx in list(self.sampler)[start_batch:]:
            yield self.make_batch(np.asarray(idx, dtype=np.int64))

    def batch_size_of(self, batch: PairBatch) -> int:
        return len(batch)

    def loss(self, batch: PairBatch) -> tuple[Tensor, dict[str, float]]:
        """InfoNCE over batch documents, other ranks' documents, the memory bank and mined negatives."""
        w = batch.windows
        q = self.encode_queries(w.ctx, w.mask)
        pos = self.doc(w.target)
        shared, shared_art = [], []
        gathered = D.gather_negatives(pos, w.article)  # other ranks' documents (None without DDP)
        if gathered is not None:
            shared.append(gathered[0])
            shared_art.append(gathered[1])
        if self.memory is not None and len(self.memory):
            mv, ma = self.memory.get()
            shared.append(mv)
            shared_art.append(ma)
        mined = None
        if batch.neg_ids.shape[1]:
            B, M, d = batch.negatives.shape
            mined = self.doc(batch.negatives.reshape(B * M, d)).reshape(B, M, d)
        logits = twotower_logits(
            q,
            pos,
            w.article,
            self.tt.tau,
            self.tt.false_negative_cos,
            shared=torch.cat(shared) if shared else None,
            shared_article=torch.cat(shared_art) if shared else None,
            mined=mined,
            mined_article=batch.neg_article,
            mined_valid=batch.neg_ids >= 0,
        )
        total, parts = twotower_loss(logits, self.tt.tau, self.tt.margin, self.tt.margin_weight)
        if self.memory is not None:  # after the loss: a batch never competes with itself through the memory
            self.memory.push(pos.detach(), w.article)
            if gathered is not None:
                self.memory.push(gathered[0].detach(), gathered[1])
        return total, parts

    def evaluate(self, split: str = "val") -> dict[str, float]:
        """The tower's retrieval metrics on the fixed val (or test) pairs, the heuristics' beside them."""
        windows = {"val": self.val, "test": self.test}[split]
        out = self.retrieval(self.query, windows, self.doc_bank(), n_boot=0, name=self.cfg.model.name).metrics
        out = {m: out[m] for m in metric_names(self.tt)[: len(self.tt.eval_ks) + 3]}
        if split == "val" and self._heuristics is None:
            self._heuristics = {}
            for h, model in self.heuristic_models().items():
                res = self.retrieval(model, windows, self.raw_bank(), n_boot=0, name=h).metrics
                self._heuristics.update({f"{h}_{k}": res[k] for k in out})
        return {**out, **(self._heuristics if split == "val" else {})}

    def should_stop(self, epoch: int, metrics: dict[str, Any]) -> str | None:
        """The abort rule, checked after each evaluation; on abort writes RUN/abort.pt and RUN/triage.md and
        returns the reason (the loop then stops the run)."""
        rule = self.tt.abort
        if rule is None:
            return None
        key = f"val_{rule.metric}"
        if key not in metrics:
            raise ConfigError(
                f"twotower.abort.metric={rule.metric!r} is not measured; choose one of: "
                + ", ".join(metric_names(self.tt)[: len(self.tt.eval_ks) + 3])
            )
        self.evals.append((int(epoch), float(metrics[key])))
        if not abort_due(self.evals, rule):
            return None
        recent = self.evals[-rule.consecutive :]
        reason = (
            f"{rule.metric} below {rule.below:g} at {rule.consecutive} consecutive evaluations after epoch "
            f"{rule.after_epoch} (" + ", ".join(f"epoch {e}: {v:.4f}" for e, v in recent) + ")"
        )
        if self.run is not None:
            from lvmkit.train.triage import write_abort_triage

            save_checkpoint(
                self.run.root / ABORT_FILE,
                {
                    "modules": {n: m.state_dict() for n, m in self.modules().items()},
                    **self.provenance(),
                    "progress": {"epoch": int(epoch), "aborted": True},
                    "config": self.cfg.model_dump(mode="json"),
                    "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                },
            )
            write_abort_triage(self.run.root, self.cfg, epoch, reason, self.evals, rule.metric)
        return reason

    def final_eval(self, run: RunPaths) -> dict[str, Any]:
        """The test pairs: the tower beside the heuristics with intervals -> metrics.json / metrics.md."""
        name = self.cfg.model.name
        results = {name: self.retrieval(self.query, self.test, self.doc_bank(), n_boot=1000, name=name)}
        for h, model in self.heuristic_models(with_mean=True).items():
            results[h] = self.retrieval(model, self.test, self.raw_bank(), n_boot=1000, name=h)
        cmp = compare_to_best(results, [name], self.tt.compare_on, seed=self.cfg.seed)[0]
        info = {
            "split": "test",
            "n_queries": len(self.test),
            "test_pairs_capped_at": self.cfg.data.max_test_queries,
            "bank": str(self.bank.path),
            "bank_id": self.bank.manifest.bank_id,
            "model": describe(self.query),
            "doc_tower": self.tt.doc_tower,
        }
        write_json(
            run.metrics_json,
            {**info, "results": {k: r.to_dict() for k, r in results.items()}, "comparisons": [cmp.to_dict()]},
        )
        head = (
            f"# {name} two-tower: test split\n\n{info['model']}; document tower {self.tt.doc_tower}.\n\n"
            f"{len(self.test)} test pairs (ctx {self.cfg.data.ctx}), best checkpoint (epoch chosen by "
            f"{self.cfg.early_stopping.metric} on val).\n\n"
        )
        write_text(run.metrics_md, head + retrieval_table(results, self.tt.eval_ks, [cmp]) + "\n")
        return {
            f"test_{cmp.metric}": results[name].metrics[cmp.metric],
            "best_baseline": cmp.baseline,
            f"best_baseline_{cmp.metric}": results[cmp.baseline].metrics[cmp.metric],
            "verdict": cmp.verdict,
        }

    def provenance(self) -> dict[str, Any]:
        return {
            "model": dict(self.query.spec),
            "doc_tower": dict(self.doc.spec),
            "bank": bank_stamp(self.bank),
        }

    def state_dict(self) -> dict[str, Any]:
        """Task state outside the modules: the current mined negatives and the abort rule's memory."""
        return {"negatives": self.store.state_dict(), "evals": [list(e) for e in self.evals]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.store = NegativeStore.from_state(state["negatives"])
        self.evals = [(int(e), float(v)) for e, v in state.get("evals", [])]

    # ----------------------------------------------------------------------------------- helpers
    def encode_queries(self, ctx: Tensor, mask: Tensor) -> Tensor:
        """The query tower on a batch; through GradCache sub-batches when ``gradcache_chunk`` is set."""
        chunks = split_batch(len(ctx), self.tt.gradcache_chunk)
        if len(chunks) == 1 or not torch.is_grad_enabled():
            return self.query(ctx, mask)
        return cached_forward(lambda s: self.query(ctx[s], mask[s]), chunks, list(self.query.parameters()))

    def make_batch(self, idx: np.ndarray) -> PairBatch:
        """Windows ``idx`` of the train pairs with the negatives mined for THEIR pair ids."""
        device = self.dist.device
        w = self.train.batch(idx, device=device)
        pair_ids = self.train_pair_ids[idx]
        neg = self.store.lookup(pair_ids)
        valid = neg >= 0
        vecs = np.zeros((*neg.shape, self.bank.dim), dtype=np.float32)
        art = np.full(neg.shape, -1, dtype=np.int64)
        if valid.any():
            rows = np.unique(neg[valid])
            got = self.bank.get(rows)
            vecs[valid] = got[np.searchsorted(rows, neg[valid])]
            art[valid] = self.bank.article_codes[neg[valid]]
        return PairBatch(
            windows=w,
            pair_ids=torch.from_numpy(pair_ids.copy()).to(device),
            negatives=torch.from_numpy(vecs).to(device),
            neg_ids=torch.from_numpy(neg.copy()).to(device),
            neg_article=torch.from_numpy(art).to(device),
        )

    def raw_bank(self) -> DocBank:
        if self._raw is None:
            self._raw = raw_doc_bank(self.bank)
        return self._raw

    def doc_bank(self) -> DocBank:
        """The document side for search: the bank itself (identity) or re-encoded through the adapter into
        a temporary exact index (rebuilt on every call: the adapter changes as it trains)."""
        if self.tt.doc_tower == "identity":
            return self.raw_bank()
        vectors = encode_bank(self.bank, self.doc, self.dist.device)
        return DocBank(self.bank, vectors, exact_index(vectors))

    def heuristic_models(self, with_mean: bool = False) -> dict[str, nn.Module]:
        models = {
            "exp_weighted": build_model("exp_weighted", self.bank.dim, alpha=self.tt.heuristic_alpha),
            "copy_last": build_model("copy_last", self.bank.dim),
        }
        if with_mean:
            models["mean_ctx"] = build_model("mean_ctx", self.bank.dim)
        return {k: m.to(self.dist.device) for k, m in models.items()}

    def retrieval(
        self, model: nn.Module, windows: WindowSet, docs: DocBank, n_boot: int, name: str
    ) -> EvalResult:
        return evaluate_retrieval(
            model,
            windows,
            docs,
            ks=self.tt.eval_ks,
            n_neighbours=self.tt.sep_neighbours,
            n_boot=n_boot,
            seed=self.cfg.seed,
            name=name,
        )

    @torch.no_grad()
    def mine(self, epoch: int) -> NegativeStore:
        """Re-encode every train query with the current tower and mine this epoch's negatives. Under DDP each
        rank mines a share of the pairs and the shares are exchanged, so every rank holds the whole store."""
        stage = self.schedule.at(epoch)
        rank, world = self.dist.rank, self.dist.world_size
        mine_idx = np.arange(rank, len(self.train), world)
        queries = encode_windows(self.query, self.train, mine_idx, self.tt.mining_batch, self.dist.device)
        docs = self.doc_bank() if self.tt.doc_tower == "adapter" else self.bank
        rule_args = (
            self.train.targets[mine_idx],
            self.bank.article_codes,
            lambda q, k: docs.search(q, k),
            docs.get,
        )
        # a percentile window (8@p90-p99) becomes cosines of this epoch's query-neighbour distribution
        stage, resolved = resolve_stage(
            stage,
            queries,
            *rule_args,
            self.tt.candidate_factor,
            self.tt.false_negative_cos,
            self.cfg.seed + epoch,
        )
        ids, stats = mine_negatives(
            queries,
            self.train_pair_ids[mine_idx],
            *rule_args,
            stage.count,
            stage.lo,
            stage.hi,
            near_dup=self.tt.false_negative_cos,
            candidate_factor=resolved.pop("candidate_factor"),
        )
        stats.update(resolved)
        pair_ids = self.train_pair_ids[mine_idx]
        if world > 1:
            shares: list[Any] = [None] * world
            torch.distributed.all_gather_object(shares, (pair_ids, ids, stats))
            pair_ids = np.concatenate([s[0] for s in shares])
            ids = np.concatenate([s[1] for s in shares])
            stats = merge_mining_stats([s[2] for s in shares])
        order = np.argsort(pair_ids, kind="stable")
        return NegativeStore(pair_ids[order], ids[order], epoch=epoch, stats=stats)


# ------------------------------------------------------------------------------------------ checkpoints
def load_query_tower(ckpt: dict[str, Any], path: str | Path = "the checkpoint") -> tuple[str, nn.Module]:
    """The query tower of a two-tower checkpoint, in eval mode, as ``(name, model)`` (for ``lvmkit eval`` and
    ``lvmkit diagnose model``, which search the bank as stored).

    Only a run whose document tower is ``identity`` can be scored that way: with an ``adapter`` the bank must
    first go through the adapter (``TwoTowerTask.doc_bank``), so such a run is refused with a ConfigError."""
    doc = (ckpt.get("doc_tower") or {}).get("name", "identity")
    if doc != "identity":
        raise ConfigError(
            f"{path} is a two-tower run with document tower {doc!r}: its queries only make sense against the "
            "bank re-encoded through that tower. Its test numbers are in the run's metrics.json (computed that "
            "way); to score it elsewhere use lvmkit.tasks.twotower.task.evaluate_retrieval with "
            "TwoTowerTask.doc_bank()"
        )
    if "model" not in ckpt.get("modules", {}):
        raise ConfigError(f"{path} holds no query tower (no module named 'model')")
    model = build_model(**ckpt["model"])
    model.load_state_dict(ckpt["modules"]["model"])
    return str(ckpt["model"].get("name", "query_tower")), model.eval()


# ------------------------------------------------------------------------------------------ pure helpers
def abort_due(evals: list[tuple[int, float]], rule: AbortConfig) -> bool:
    """True when the last ``rule.consecutive`` evaluations all come after ``rule.after_epoch`` and all have
    the metric below ``rule.below`` (a NaN counts as below: a broken metric is no reason to go on)."""
    if len(evals) < rule.consecutive:
        return False
    recent = evals[-rule.consecutive :]
    return all(e > rule.after_epoch and not (v >= rule.below) for e, v in recent)


def merge_mining_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Mining stats of several shares as one: counts add up, the kept cosine is re-averaged."""
    out = dict(parts[0])
    for key in (
        "pairs",
        "candidates",
        "kept",
        "padded",
        "missing",
        *[k for k in out if k.startswith("dropped_")],
    ):
        out[key] = sum(p[key] for p in parts)
    total = sum(p["kept"] * p["mean_cos_kept"] for p in parts if p["kept"])
    out["mean_cos_kept"] = total / out["kept"] if out["kept"] else float("nan")
    return out


@torch.no_grad()
def encode_windows(
    model: nn.Module, windows: WindowSet, idx: np.ndarray, batch_size: int, device: torch.device
) -> np.ndarray:
    """float32 [len(idx), d] outputs of ``model`` (eval mode) on windows ``idx``."""
    was = model.training
    model.eval()
    out = np.empty((len(idx), windows.bank.dim), dtype=np.float32)
    for s in range(0, len(idx), batch_size):
        b = windows.batch(idx[s : s + batch_size], device=device)
        out[s : s + len(b)] = model(b.ctx, b.mask).float().cpu().numpy()
    model.train(was)
    return out


def evaluate_retrieval(
    model: nn.Module,
    windows: WindowSet,
    docs: DocBank | VectorBank,
    ks: tuple[int, ...] = (10, 100, 500, 1000),
    n_neighbours: int = 16,
    n_boot: int = 1000,
    seed: int = 0,
    name: str = "model",
) -> EvalResult:
    """``lvmkit.eval.evaluate`` over the document bank, plus the two-tower names: ``recall@k`` (= hit@k:
    one true chunk per query, context excluded) and ``sep_margin`` (``separation_on_bank``, with its own
    bootstrap interval)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    queries: list[np.ndarray] = []
    was = model.training
    model.eval()

    def predict(batch: WindowBatch) -> np.ndarray:
        with torch.no_grad():
            q = model(batch.ctx.to(device), batch.mask.to(device)).float().cpu().numpy()
        queries.append(q)
        return q

    try:
        res = evaluate(predict, windows, docs, ks=ks, labels=False, n_boot=n_boot, seed=seed, name=name)
    finally:
        model.train(was)
    sep = separation_on_bank(np.concatenate(queries), windows.targets, docs, n_neighbours)
    res.per_query["sep_margin"] = sep
    res.metrics["sep_margin"] = float(np.nanmean(sep))
    for k in ks:
        res.per_query[f"recall@{k}"] = res.per_query[f"hit@{k}"]
        res.metrics[f"recall@{k}"] = res.metrics[f"hit@{k}"]
        if f"hit@{k}" in res.intervals:
            res.intervals[f"recall@{k}"] = res.intervals[f"hit@{k}"]
    if n_boot > 0:
        from lvmkit.eval.bootstrap import bootstrap_ci

        res.intervals["sep_margin"] = bootstrap_ci(sep, n_boot=n_boot, seed=seed)[1:]
    return res


def compare_to_best(
    results: dict[str, EvalResult], models: list[str], metric: str, seed: int = 0, n_boot: int = 1000
) -> list[Comparison]:
    """Each model against the best heuristic in ``results`` on ``metric`` (ties: the better MRR@10), by a
    paired bootstrap over queries."""
    heuristics = [h for h in results if h not in models]
    best = max(heuristics, key=lambda h: (results[h].metrics[metric], results[h].metrics.get("mrr@10", 0.0)))
    out = []
    for name in models:
        d, lo, hi = paired_diff_ci(
            results[name].per_query[metric], results[best].per_query[metric], n_boot=n_boot, seed=seed
        )
        out.append(Comparison(name, best, metric, d, lo, hi))
    return out


def retrieval_table(
    results: dict[str, EvalResult], ks: tuple[int, ...], comparisons: list[Comparison] | None = None
) -> str:
    """Markdown: Recall@k (%, 95% interval), MRR@10 and separation margin per system, then comparisons."""
    cols = [f"recall@{k}" for k in ks] + ["mrr@10", "sep_margin"]
    lines = ["| system | " + " | ".join(cols) + " | n |", "|---|" + "---:|" * (len(cols) + 1)]
    for name, r in results.items():
        cells = []
        for c in cols:
            v = r.metrics.get(c, float("nan"))
            scale, fmt = (100, "{:.1f}") if c.startswith("recall@") else (1, "{:.3f}")
            cell = "nan" if not math.isfinite(v) else fmt.format(v * scale)
            if c in r.intervals and math.isfinite(r.intervals[c][0]):
                lo, hi = r.intervals[c]
                cell += f" ({fmt.format(lo * scale)}-{fmt.format(hi * scale)})"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r.info['n_queries']} |")
    first = next(iter(results.values())).info
    lines += [
        "",
        f"Exact search over all {first['bank_size']} chunks of bank {first['bank_id']}, each query's own context "
        "excluded; recall in %, 95% bootstrap intervals over queries; separation margin = cos(q, next chunk) "
        "minus the mean cos(q, top-16 other chunks).",
    ]
    for c in comparisons or []:
        scale = 100 if c.metric.startswith("recall@") else 1
        unit = " points" if scale == 100 else ""
        lines.append(
            f"- {c.model} vs best heuristic {c.baseline} on {c.metric}: {scale * c.diff:+.2f}{unit} "
            f"(paired 95% CI {scale * c.lo:+.2f} to {scale * c.hi:+.2f}): {c.verdict}"
        )
    return "\n".join(lines)
