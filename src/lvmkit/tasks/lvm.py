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

from lvmkit.artifacts import write_json, write_text
from lvmkit.bank.bank import VectorBank
from lvmkit.data.samplers import ArticleCappedBatchSampler
from lvmkit.data.splits import Split, make_split
from lvmkit.data.windows import WindowBatch, WindowSet, make_windows
from lvmkit.errors import ArtifactError, ConfigError
from lvmkit.eval.evaluator import evaluate, evaluate_suite, format_table
from lvmkit.eval.tuning import tune_anchor
from lvmkit.losses import build_loss
from lvmkit.models import build_model, describe
from lvmkit.train import distributed as D
from lvmkit.train.checkpoint import bank_stamp
from lvmkit.train.config import RunConfig
from lvmkit.train.runs import RunPaths


def open_bank_and_split(
    cfg: RunConfig, run: RunPaths, dist: D.DistInfo, resume: bool = False
) -> tuple[VectorBank, Split]:
    """The run's bank and its split: on resume the run's split.json, else ``make_split`` from
    ``cfg.split`` (saved to the run by rank 0). Shared by every task."""
    bank = VectorBank.open(cfg.bank)
    if resume and run.split.exists():
        return bank, Split.load(run.split, bank)
    split = make_split(bank, ratios=cfg.split.ratios, seed=cfg.split.seed)
    if dist.is_main:
        split.save(run.split)
    return bank, split


def train_sampler(train: WindowSet, cfg: RunConfig, dist: D.DistInfo) -> ArticleCappedBatchSampler:
    """This rank's batches of the training windows (``data.batch_size``, ``data.max_per_article``, seed)."""
    return ArticleCappedBatchSampler(
        train.article_of_all(),
        batch_size=cfg.data.batch_size,
        max_per_article=cfg.data.max_per_article,
        seed=cfg.seed,
        drop_last=False,
        rank=dist.rank,
        world_size=dist.world_size,
    )


class SamplerEpochs:
    """The loop's epoch-size queries, answered from ``self.sampler`` (shared by the LVM and two-tower tasks)."""

    sampler: ArticleCappedBatchSampler

    def num_batches(self, epoch: int) -> int:
        self.sampler.set_epoch(epoch)
        return len(self.sampler)

    def windows_per_epoch(self) -> int:
        return int(self.sampler.stats["windows_all_ranks"])


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
        cfg: RunConfig,
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
        cls, cfg: RunConfig, run: RunPaths, dist: D.DistInfo, rng: np.random.Generator, resume: bool = False
    ) -> LVMTask:
        """Open the bank, make (or, on resume, reload) the split, build windows, model and loss."""
        bank, split = open_bank_and_split(cfg, run, dist, resume)
        d = cfg.data

        def windows(name: str) -> WindowSet:
            ws = make_windows(bank, split, name, d.ctx, stride=d.stride, min_ctx=d.min_ctx, pad=d.pad)
            if len(ws) == 0:
                raise ConfigError(
                    f"the {name} split of bank {bank.path} has no windows with ctx={d.ctx} "
                    f"(min_ctx={d.min_ctx}, pad={d.pad}): its articles are too short or too few. Lower data.ctx, "
                    "set data.min_ctx, change split.ratios, or use a larger bank"
                )
            return ws

        train = windows("train").sample(d.max_train_windows, cfg.seed)
        val = windows("val").sample(d.max_eval_queries, cfg.seed + 1)
        test = windows("test").sample(d.max_test_queries, cfg.seed + 2)
        model = build_model(cfg.model.name, bank.dim, delta=cfg.model.delta, **cfg.model.kwargs)
        tune_anchor(model, val, bank, seed=cfg.seed)  # anchor blend / mix with anchor_w null: chosen on val
        if not getattr(model, "trainable", True):
            raise ConfigError(
                f"model.name={cfg.model.name!r} is a baseline with nothing to train; the trainer reports it "
                "beside every model anyway (or score it alone with `lvmkit eval`)"
            )
        loss_fn = build_loss(cfg.loss, dim=bank.dim)
        task = cls(cfg, bank, split, train, val, test, model, loss_fn, dist)
        if dist.is_main:
            from lvmkit.train.loop import log

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
        offsets = self.loss_fn.spec.inarticle_offsets
        if not offsets:
            return {}
        from lvmkit.train.mining import article_negative_rows

        rows = article_negative_rows(
            self.bank.article_codes,
            batch.target_ids.cpu().numpy(),
            batch.mask.sum(dim=1).cpu().numpy(),
            offsets,
        )
        vectors = self.bank.get(np.where(rows >= 0, rows, 0).ravel()).reshape(*rows.shape, self.bank.dim)
        device = batch.target.device
        return {
            "row_negatives": torch.as_tensor(vectors, dtype=torch.float32, device=device),
            "row_valid": torch.as_tensor(rows >= 0, device=device),
        }

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
        name = self.cfg.model.name
        suite = evaluate_suite(
            {name: self.model},
            self.test,
            self.bank,
            train_windows=self.train,
            val_windows=self.val,
            seed=self.cfg.seed,
        )
        info = {
            "split": "test",
            "n_queries": len(self.test),
            "test_windows_capped_at": self.cfg.data.max_test_queries,
            "bank": str(self.bank.path),
            "bank_id": self.bank.manifest.bank_id,
            "model": describe(self.model),
        }
        write_json(run.metrics_json, {**info, **suite.to_dict()})
        head = (
            f"# {name}: test split\n\n{info['model']}\n\n"
            f"{len(self.test)} test windows (ctx {self.cfg.data.ctx}), best checkpoint (epoch chosen by "
            f"{self.cfg.early_stopping.metric} on val).\n\n"
        )
        write_text(run.metrics_md, head + format_table(suite) + "\n")
        cmp = suite.comparisons[0]
        return {
            f"test_{cmp.metric}": suite[name].metrics[cmp.metric],
            "best_baseline": cmp.baseline,
            f"best_baseline_{cmp.metric}": suite[cmp.baseline].metrics[cmp.metric],
            "verdict": cmp.verdict,
        }

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
