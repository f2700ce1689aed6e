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
                  - with ``inarticle_offsets``, its own article's chunks after the target / before the
                    context (``train.mining.article_negative_rows``, as for LVMs; logit + log
                    ``inarticle_weight``, masked only as near duplicates of the positive),
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

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lvmkit.artifacts import append_jsonl
from lvmkit.bank.bank import VectorBank
from lvmkit.data.splits import Split
from lvmkit.data.windows import WindowBatch, WindowSet
from lvmkit.eval.evaluator import EvalResult
from lvmkit.eval.tuning import tune_anchor
from lvmkit.losses import VectorQueue
from lvmkit.models import build_model, describe
from lvmkit.models.towers import build_doc_tower
from lvmkit.tasks.base import (
    SamplerEpochs,
    final_evaluation,
    inarticle_negatives,
    open_bank_and_split,
    train_sampler,
)
from lvmkit.tasks.twotower.config import HEURISTICS, AbortConfig, TwoTowerConfig, TwoTowerRunConfig
from lvmkit.tasks.twotower.docbank import DocBank, doc_bank, raw_doc_bank
from lvmkit.tasks.twotower.evaluate import TwoTowerModel, evaluate_retrieval, heuristic_models
from lvmkit.tasks.twotower.loss import PairBatch, twotower_logits, twotower_loss
from lvmkit.tasks.twotower.mining import mine_epoch
from lvmkit.tasks.twotower.spec import TWOTOWER_SPEC
from lvmkit.train import distributed as D
from lvmkit.train.checkpoint import bank_stamp, checkpoint_state, save_checkpoint
from lvmkit.train.gradcache import cached_forward, split_batch
from lvmkit.train.mining import NegativeStore, Schedule, format_mining_stats, parse_schedule
from lvmkit.train.runs import RunPaths, log

ABORT_FILE = "abort.pt"
MINING_LOG = "mining.jsonl"


class TwoTowerTask(SamplerEpochs):
    """Two-tower retrieval on one bank. Build it with ``TwoTowerTask.from_config``."""

    def __init__(
        self,
        cfg: TwoTowerRunConfig,
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
        cls,
        cfg: TwoTowerRunConfig,
        run: RunPaths,
        dist: D.DistInfo,
        rng: np.random.Generator,
        resume: bool = False,
    ) -> TwoTowerTask:
        """Open the bank, make (or reload) the split, the train / val / test pairs and both towers."""
        tt = cfg.twotower
        schedule = parse_schedule(tt.schedule)
        bank, split = open_bank_and_split(cfg, run, dist, resume)
        d = cfg.data
        sets = TWOTOWER_SPEC.query_sets(cfg, bank, split)
        train, pair_ids = sets.train, sets.ids("train")
        val, test = sets.val, sets.test
        query = build_model(cfg.model.name, bank.dim, delta=cfg.model.delta, **cfg.model.kwargs)
        tune_anchor(query, val, bank, seed=cfg.seed)  # anchor blend / mix with anchor_w null: chosen on val
        doc = build_doc_tower(tt.doc_tower, bank.dim, **tt.doc_options())
        task = cls(cfg, tt, bank, split, train, pair_ids, val, test, query, doc, dist, run)
        if dist.is_main:
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
        info = {"mining": format_mining_stats(self.store.stats)}
        if self.store.stats.get("warning"):  # a percentile window too narrow for the count: say so apart
            info["WARNING"] = self.store.stats["warning"]
        return info

    def train_batches(self, epoch: int, start_batch: int = 0) -> Iterator[PairBatch]:
        self.sampler.set_epoch(epoch)
        for idx in list(self.sampler)[start_batch:]:
            yield self.make_batch(np.asarray(idx, dtype=np.int64))

    def batch_size_of(self, batch: PairBatch) -> int:
        return len(batch)

    def loss(self, batch: PairBatch) -> tuple[Tensor, dict[str, float]]:
        """InfoNCE over batch documents, other ranks' documents, the memory bank, mined and in-article
        negatives."""
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
        mined = self.encode_documents(batch.negatives) if batch.neg_ids.shape[1] else None
        inarticle, inarticle_valid = self.article_negatives(w)
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
            inarticle=inarticle,
            inarticle_valid=inarticle_valid,
            inarticle_weight=self.tt.inarticle_weight,
        )
        k = 0 if inarticle is None else inarticle.shape[1]
        tt = self.tt
        total, parts = twotower_loss(logits, tt.tau, tt.margin, tt.margin_weight, k, tt.inarticle_weight)
        if self.memory is not None:  # after the loss: a batch never competes with itself through the memory
            self.memory.push(pos.detach(), w.article)
            if gathered is not None:
                self.memory.push(gathered[0].detach(), gathered[1])
        return total, parts

    def evaluate(self, split: str = "val") -> dict[str, float]:
        """The tower's retrieval metrics on the fixed val (or test) pairs, the heuristics' beside them."""
        windows = {"val": self.val, "test": self.test}[split]
        res = self.retrieval(self.query, windows, self.doc_bank(), n_boot=0, name=self.cfg.model.name)
        out = {m: res.metrics[m] for m in self.tt.own_metrics()}
        if split == "val" and self._heuristics is None:
            self._heuristics = {}
            for h, model in heuristic_models(self.tt, self.bank.dim, HEURISTICS).items():
                res = self.retrieval(model.to(self.dist.device), windows, self.raw_bank(), n_boot=0, name=h)
                self._heuristics.update({f"{h}_{k}": res.metrics[k] for k in out})
        return {**out, **(self._heuristics if split == "val" else {})}

    def should_stop(self, epoch: int, metrics: dict[str, Any]) -> str | None:
        """The abort rule, checked after each evaluation; on abort writes RUN/abort.pt and RUN/triage.md and
        returns the reason (the loop then stops the run)."""
        rule = self.tt.abort
        if rule is None:
            return None
        self.evals.append((int(epoch), float(metrics[f"val_{rule.metric}"])))
        if not abort_due(self.evals, rule):
            return None
        recent = self.evals[-rule.consecutive :]
        reason = (
            f"{rule.metric} below {rule.below:g} at {rule.consecutive} consecutive evaluations after epoch "
            f"{rule.after_epoch} (" + ", ".join(f"epoch {e}: {v:.4f}" for e, v in recent) + ")"
        )
        if self.run is not None:
            from lvmkit.train.triage import write_abort_triage

            numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            progress = {"epoch": int(epoch), "aborted": True}
            state = checkpoint_state(self.modules(), self, self.cfg, progress, metrics=numbers)
            save_checkpoint(self.run.root / ABORT_FILE, state)
            write_abort_triage(self.run.root, self.cfg, epoch, reason, self.evals, rule.metric)
        return reason

    def final_eval(self, run: RunPaths) -> dict[str, Any]:
        """The test pairs: the tower beside the heuristics with intervals -> metrics.json / metrics.md (the
        spec's ``evaluate_suite``, which ``lvmkit eval RUN`` calls on the same pairs)."""
        model = TwoTowerModel(self.query, self.doc)
        extra = {"model": describe(self.query), "doc_tower": self.tt.doc_tower}
        title = f"{self.cfg.model.name} two-tower"
        return final_evaluation(TWOTOWER_SPEC, self.cfg, run, model, self.test, self.bank, {}, title, extra)

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

    def encode_documents(self, vectors: Tensor) -> Tensor:
        """The document tower on per-query candidates [B, M, d] (raw bank vectors) -> [B, M, d]."""
        B, M, d = vectors.shape
        return self.doc(vectors.reshape(B * M, d)).reshape(B, M, d)

    def article_negatives(self, windows: WindowBatch) -> tuple[Tensor | None, Tensor | None]:
        """``twotower.inarticle_offsets``: each query's own article's chunks (``inarticle_negatives``, the
        LVM loss's selection), through the document tower like every other candidate, and their validity;
        (None, None) without offsets."""
        rows = inarticle_negatives(self.bank, windows, self.tt.inarticle_offsets)
        if rows is None:
            return None, None
        return self.encode_documents(rows[0]), rows[1]

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
        return doc_bank(self.bank, self.doc, self.dist.device)

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

    def mine(self, epoch: int) -> NegativeStore:
        """Re-encode every train query with the current tower and mine this epoch's negatives."""
        docs = self.doc_bank() if self.tt.doc_tower == "adapter" else self.bank
        return mine_epoch(
            self.query,
            self.train,
            self.train_pair_ids,
            docs,
            self.schedule.at(epoch),
            epoch,
            near_dup=self.tt.false_negative_cos,
            candidate_factor=self.tt.candidate_factor,
            batch_size=self.tt.mining_batch,
            dist=self.dist,
        )


# ------------------------------------------------------------------------------------------ abort rule
def abort_due(evals: list[tuple[int, float]], rule: AbortConfig) -> bool:
    """True when the last ``rule.consecutive`` evaluations all come after ``rule.after_epoch`` and all have
    the metric below ``rule.below`` (a NaN counts as below: a broken metric is no reason to go on)."""
    if len(evals) < rule.consecutive:
        return False
    recent = evals[-rule.consecutive :]
    return all(e > rule.after_epoch and not (v >= rule.below) for e, v in recent)
