"""The LVM task: learn to predict the next chunk's vector from the vectors of the previous ``ctx`` chunks.

What the loop asks of a task (see ``loop.Task``), answered for LVMs:

    data        article-disjoint split of the bank (RUN/split.json) -> train / val / test windows;
                train batches from ArticleCappedBatchSampler (at most ``max_per_article`` windows of one
                article per batch, reshuffled per epoch from (seed, epoch), sharded across DDP ranks)
    modules     {"model": the LVM, "loss": the loss module (it may own a projection head / a queue)}
    loss        model(ctx, mask) -> prediction; loss(prediction, target, article) -> (total, parts);
                under DDP the other ranks' targets are gathered (with gradients) as extra InfoNCE negatives
    evaluate    full-bank retrieval on the val windows (capped at ``max_eval_queries``, a fixed sample),
                the copy_last baseline on the same windows beside it (``copy_last_<metric>``)
    final_eval  the test windows through ``evaluate_suite``: the model beside every baseline, with
                intervals and a paired comparison -> RUN/metrics.json and RUN/metrics.md
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from lvmkit.bank.bank import VectorBank
from lvmkit.data.splits import Split
from lvmkit.data.windows import WindowBatch, WindowSet
from lvmkit.errors import ArtifactError
from lvmkit.eval.evaluator import evaluate
from lvmkit.eval.tuning import tune_anchor
from lvmkit.losses import build_loss
from lvmkit.models import build_model, describe
from lvmkit.models.experts import balance_term
from lvmkit.tasks.base import (
    SamplerEpochs,
    final_evaluation,
    inarticle_negatives,
    open_bank_and_split,
    train_sampler,
)
from lvmkit.tasks.lvm.config import LVMRunConfig
from lvmkit.tasks.lvm.spec import LVM_SPEC
from lvmkit.train import distributed as D
from lvmkit.train.checkpoint import bank_stamp
from lvmkit.train.runs import RunPaths, log


class LVMStep(nn.Module):
    """Model and loss as one module, so that DistributedDataParallel can wrap the whole forward pass."""

    def __init__(self, model: nn.Module, loss_fn: nn.Module):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn
        accepts = inspect.signature(loss_fn.forward).parameters
        self.takes_negatives = "extra_negatives" in accepts and "extra_article_ids" in accepts

    def forward(
        self, ctx: torch.Tensor, mask: torch.Tensor, target: torch.Tensor, article: torch.Tensor, **rows
    ):
        """``rows``: the in-article negatives (``row_negatives``, ``row_valid``) when the loss uses them."""
        pred = self.model(ctx, mask)
        total, parts = self._loss(pred, target, article, rows)
        balance = balance_term(self.model)  # lane experts' load-balance term (lvmkit.models.experts)
        if balance is not None:
            total, parts = total + balance, {**parts, "balance": balance.detach()}
        return total, parts

    def _loss(self, pred: torch.Tensor, target: torch.Tensor, article: torch.Tensor, rows: dict):
        if self.takes_negatives:
            gathered = D.gather_negatives(target, article)  # None unless running under DDP
            if gathered is not None:
                total, parts = self.loss_fn(
                    pred, target, article, extra_negatives=gathered[0], extra_article_ids=gathered[1], **rows
                )
                return total, {**parts, "gathered_negatives": float(gathered[0].shape[0])}
        return self.loss_fn(pred, target, article, **rows)


class LVMTask(SamplerEpochs):
    """Next-chunk prediction on one bank. Build it with ``LVMTask.from_config``."""

    def __init__(
        self,
        cfg: LVMRunConfig,
        bank: VectorBank,
        split: Split,
        train: WindowSet,
        val: WindowSet,
        test: WindowSet,
        model: nn.Module,
        loss_fn: nn.Module,
        dist: D.DistInfo,
    ):
        self.cfg, self.bank, self.split = cfg, bank, split
        self.train, self.val, self.test = train, val, test
        self.model, self.loss_fn, self.dist = model, loss_fn, dist
        self.step_module: nn.Module = LVMStep(model, loss_fn)
        self._forward: nn.Module = self.step_module
        self.sampler = train_sampler(train, cfg, dist)
        self._copy_last: dict[str, float] | None = (
            None  # the baseline on the fixed val windows, computed once
        )

    @classmethod
    def from_config(
        cls,
        cfg: LVMRunConfig,
        run: RunPaths,
        dist: D.DistInfo,
        rng: np.random.Generator,
        resume: bool = False,
    ) -> LVMTask:
        """Open the bank, make (or, on resume, reload) the split, build windows, model and loss."""
        bank, split = open_bank_and_split(cfg, run, dist, resume)
        sets = LVM_SPEC.query_sets(cfg, bank, split)
        train, val, test = sets.train, sets.val, sets.test
        model = build_model(cfg.model.name, bank.dim, delta=cfg.model.delta, **cfg.model.kwargs)
        tune_anchor(model, val, bank, seed=cfg.seed)  # anchor blend / mix with anchor_w null: chosen on val
        loss_fn = build_loss(cfg.loss, dim=bank.dim)
        task = cls(cfg, bank, split, train, val, test, model, loss_fn, dist)
        if dist.is_main:
            counts = f"windows train {len(train)}, val {len(val)}, test {len(test)}"
            log(
                run,
                f"bank {bank.path} ({len(bank)} chunks, {bank.manifest.bank_id}); {counts}; {describe(model)}",
            )
        return task

    # ----------------------------------------------------------------------------------- loop API
    def modules(self) -> nn.ModuleDict:
        return nn.ModuleDict({"model": self.model, "loss": self.loss_fn})

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        self._forward = wrap(self.step_module)

    def on_epoch_start(self, epoch: int) -> dict[str, Any]:
        self.sampler.set_epoch(epoch)
        return {}

    def train_batches(self, epoch: int, start_batch: int = 0) -> Iterator[WindowBatch]:
        self.sampler.set_epoch(epoch)
        for idx in list(self.sampler)[start_batch:]:
            yield self.train.batch(np.asarray(idx, dtype=np.int64), device=self.dist.device)

    def batch_size_of(self, batch: WindowBatch) -> int:
        return len(batch)

    def loss(self, batch: WindowBatch) -> tuple[torch.Tensor, dict[str, float]]:
        rows = self.article_negatives(batch)
        total, parts = self._forward(batch.ctx, batch.mask, batch.target, batch.article, **rows)
        return total, {k: float(v) for k, v in parts.items() if k != "total"}  # the loop logs the total

    def article_negatives(self, batch: WindowBatch) -> dict[str, torch.Tensor]:
        """The batch's in-article hard negatives (loss ``inarticle_offsets``): {} when the loss has none."""
        rows = inarticle_negatives(self.bank, batch, self.loss_fn.spec.inarticle_offsets)
        return {} if rows is None else {"row_negatives": rows[0], "row_valid": rows[1]}

    def evaluate(self, split: str = "val") -> dict[str, float]:
        """Full-bank retrieval metrics of the model on the fixed val windows, copy_last's beside them."""
        windows = {"val": self.val, "test": self.test}[split]
        kw = {"n_boot": 0, "labels": False, "seed": self.cfg.seed}
        out = evaluate(self.model, windows, self.bank, name=self.cfg.model.name, **kw).metrics
        if split == "val" and self._copy_last is None:
            baseline = build_model("copy_last", self.bank.dim).to(self.dist.device)
            self._copy_last = evaluate(baseline, windows, self.bank, name="copy_last", **kw).metrics
        base = self._copy_last if split == "val" else {}
        return {**out, **{f"copy_last_{k}": v for k, v in base.items()}}

    def final_eval(self, run: RunPaths) -> dict[str, Any]:
        """The model (best checkpoint) beside every baseline on the test windows -> metrics.json/.md."""
        extra = {"model": describe(self.model)}
        name = self.cfg.model.name
        fit_on = {"train": self.train, "val": self.val}  # ridge is fitted on train, the blend tuned on val
        return final_evaluation(
            LVM_SPEC, self.cfg, run, self.model, self.test, self.bank, fit_on, name, extra
        )

    def should_stop(self, epoch: int, metrics: dict[str, Any]) -> str | None:
        """No stop rule of its own (gates and early stopping are the loop's)."""
        return None

    def provenance(self) -> dict[str, Any]:
        return {"model": dict(self.model.spec), "bank": bank_stamp(self.bank)}

    def state_dict(self) -> dict[str, Any]:
        """What the run trains on, to check on resume. (The InfoNCE queue is a buffer of the loss module, so
        it is saved with ``modules()``.)"""
        return {"split_sha256": self.split.hash, "train_windows": len(self.train), "ctx": self.train.ctx}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self.state_dict()
        if state != mine:
            raise ArtifactError(
                f"the checkpoint was trained on other data ({state}) than this run now builds ({mine}); "
                "the bank or split changed since. Start a new run."
            )
