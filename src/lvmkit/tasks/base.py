"""What every task spec offers (``TaskSpec``), the query sets a run uses (``QuerySets``), and the training
pieces both tasks share (the run's bank and split, the article-capped train sampler).

``QuerySets`` is the ONE place that decides which windows (LVM) or pairs (two-tower) a run uses for train, val
and test: the task's ``build(name)`` makes every window / pair of a split, and the cap and seed of each split's
deterministic sample are fixed here (``SEED_OFFSET``). The trainer, ``lvmkit eval``, ``lvmkit diagnose`` and the
quickstart all get their queries from ``spec.query_sets(cfg, bank, split)``, so they score the same queries.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from lvmkit.errors import ConfigError
from lvmkit.train.config import RunConfig

if TYPE_CHECKING:
    import torch

    from lvmkit.bank.bank import VectorBank
    from lvmkit.data.samplers import ArticleCappedBatchSampler
    from lvmkit.data.splits import Split
    from lvmkit.data.windows import WindowBatch, WindowSet
    from lvmkit.eval.evaluator import SuiteResult
    from lvmkit.train import distributed as D
    from lvmkit.train.runs import RunPaths

# The query sample of split s is drawn with seed cfg.seed + SEED_OFFSET[s] (train: the training sample).
SEED_OFFSET = {"train": 0, "val": 1, "test": 2}
FROM_CONFIG = object()  # "use the config's cap" (a cap of None means: no cap)


def config_cap(cfg: RunConfig, name: str) -> int | None:
    """The config's cap on the windows / pairs of split ``name``."""
    d = cfg.data
    return {"train": d.max_train_windows, "val": d.max_eval_queries, "test": d.max_test_queries}[name]


class QuerySets:
    """The windows (or pairs, seen as windows) of each split that a run uses, built once per split.

    ``build(name) -> (windows, ids)``: every window of split ``name`` and, for pairs, their pair ids (else
    None). ``full(name)`` is that; ``get(name)`` is its deterministic sample at the config's cap (or ``cap``),
    drawn with seed ``cfg.seed + SEED_OFFSET[name]``; ``train`` / ``val`` / ``test`` are ``get`` of each.
    """

    def __init__(
        self,
        cfg: RunConfig,
        build: Callable[[str], tuple[WindowSet, np.ndarray | None]],
        empty: Callable[[str], str],
    ):
        self.cfg = cfg
        self._build, self._empty = build, empty
        self._full: dict[str, tuple[WindowSet, np.ndarray | None]] = {}

    def full(self, name: str) -> WindowSet:
        """Every window / pair of split ``name``; ConfigError (the task's message) when there is none."""
        if name not in self._full:
            ws, ids = self._build(name)
            if len(ws) == 0:
                raise ConfigError(self._empty(name))
            self._full[name] = (ws, ids)
        return self._full[name][0]

    def seed(self, name: str) -> int:
        return self.cfg.seed + SEED_OFFSET[name]

    def index(self, name: str, cap: Any = FROM_CONFIG) -> np.ndarray:
        """Positions in ``full(name)`` of the sample (all of them, in order, when nothing is cut)."""
        cap = config_cap(self.cfg, name) if cap is FROM_CONFIG else cap
        return self.full(name).sample_index(cap, self.seed(name))

    def get(self, name: str, cap: Any = FROM_CONFIG) -> WindowSet:
        cap = config_cap(self.cfg, name) if cap is FROM_CONFIG else cap
        return self.full(name).sample(cap, self.seed(name))

    def ids(self, name: str, cap: Any = FROM_CONFIG) -> np.ndarray | None:
        """Pair ids of ``get(name, cap)`` (None for windows, which have no ids of their own)."""
        self.full(name)
        ids = self._full[name][1]
        return None if ids is None else np.asarray(ids, dtype=np.int64)[self.index(name, cap)]

    @property
    def train(self) -> WindowSet:
        return self.get("train")

    @property
    def val(self) -> WindowSet:
        return self.get("val")

    @property
    def test(self) -> WindowSet:
        return self.get("test")


class TaskSpec:
    """One task, as every consumer sees it. Subclasses set ``name``, ``config_class`` and ``task_class`` and
    implement the methods that raise NotImplementedError. Heavy imports (torch, FAISS) happen inside the
    methods, so the registry itself is cheap to import."""

    name: str
    config_class: type[RunConfig]
    task_class: str  # "module:Class" of the training task (``lvmkit.train.loop.Task``)
    unit: str = "windows"  # what its queries are called in messages and tables
    fit_windows: tuple[str, ...] = ("train", "val")  # splits evaluate_suite fits baselines on (ridge, blend)

    # ---------------------------------------------------------------------------- the trainer
    def build_task(
        self, cfg: RunConfig, run: RunPaths, dist: D.DistInfo, rng: np.random.Generator, resume: bool
    ) -> Any:
        """The training task (``Class.from_config(cfg, run=, dist=, rng=, resume=)``)."""
        module_name, _, class_name = self.task_class.partition(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        return cls.from_config(cfg, run=run, dist=dist, rng=rng, resume=resume)

    def check(self, cfg: RunConfig, bank: VectorBank) -> None:
        """Refuse (ConfigError) what would fail later in the run: called before the run directory is made.
        Here: metric names, and windows (pairs) in every split of the split the config makes."""
        from lvmkit.data.splits import SPLIT_NAMES, make_split

        self.check_metrics(cfg)
        sets = self.query_sets(cfg, bank, make_split(bank, ratios=cfg.split.ratios, seed=cfg.split.seed))
        for name in SPLIT_NAMES:
            sets.full(name)

    def check_metrics(self, cfg: RunConfig) -> None:
        """early_stopping.metric and every gate's metric, when a validation metric (``val_...``), must be one
        the task records (the other history keys, ``train_<part>``, ``lr``, ..., are not checked here)."""
        known = [f"val_{m}" for m in self.metric_names(cfg)]
        named = [("early_stopping.metric", cfg.early_stopping.metric)]
        named += [(f"gates.{i}.metric", g.metric) for i, g in enumerate(cfg.gates)]
        for where, metric in named:
            if metric.startswith("val_") and metric not in known:
                raise ConfigError(
                    f"{where}={metric!r} is not measured by {self.name} runs; available: {', '.join(known)}"
                )

    # ---------------------------------------------------------------------------- the data
    def query_sets(self, cfg: RunConfig, bank: VectorBank, split: Split) -> QuerySets:
        raise NotImplementedError

    def fit_sets(self, sets: QuerySets, names: tuple[str, ...] | None = None) -> dict[str, WindowSet]:
        """``{split: windows}`` that fitted baselines learn from (``names``, default ``fit_windows``; the run's
        samples); a split without windows is left out (the suite then skips what needs it, saying why)."""
        out = {}
        for name in self.fit_windows if names is None else names:
            with contextlib.suppress(ConfigError):
                out[name] = sets.get(name)
        return out

    # ---------------------------------------------------------------------------- evaluation
    def load_predictor(self, ckpt: dict[str, Any], path: Any) -> tuple[str, Any]:
        """A checkpoint's predictor ``(name, predictor)`` in eval mode, for ``evaluate_suite``."""
        raise NotImplementedError

    def search_space(self, predictor: Any, bank: VectorBank) -> tuple[Any, Any]:
        """``(query predictor, bank to search)`` for per-query tools (latency, diagnose model)."""
        return predictor, bank

    def evaluate_suite(
        self,
        cfg: RunConfig,
        models: Mapping[str, Any],
        windows: WindowSet,
        bank: VectorBank,
        train_windows: WindowSet | None = None,
        val_windows: WindowSet | None = None,
        **kwargs: Any,
    ) -> SuiteResult:
        """The models beside the task's baselines on the same queries, with the paired comparison. Baselines
        that are fitted learn from ``train_windows`` / ``val_windows`` (see ``fit_windows``)."""
        raise NotImplementedError

    def table_columns(self, cfg: RunConfig) -> tuple[str, ...]:
        """The columns of its results table (``evaluator.format_table(suite, columns)``)."""
        from lvmkit.eval.metrics import TABLE_COLUMNS

        return TABLE_COLUMNS

    def metric_names(self, cfg: RunConfig) -> list[str]:
        """The metrics of ``task.evaluate('val')`` (the trainer records them as ``val_<name>``)."""
        raise NotImplementedError


# ------------------------------------------------------------------------------ shared training pieces
def final_evaluation(
    spec: TaskSpec,
    cfg: RunConfig,
    run: RunPaths,
    predictor: Any,
    test: WindowSet,
    bank: VectorBank,
    fit_on: dict[str, WindowSet],
    title: str,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The trainer's final evaluation, for every task: ``spec.evaluate_suite`` (the call ``lvmkit eval RUN``
    makes) of the best checkpoint on the test queries -> RUN/metrics.json and RUN/metrics.md. ``fit_on``:
    the windows fitted baselines learn from (``{"train": ..., "val": ...}``, as ``spec.fit_windows`` gives
    them to ``lvmkit eval``); ``extra`` (the model's description under "model", ...) goes into metrics.json;
    returns the summary for status.json."""
    from lvmkit.artifacts import write_json, write_text
    from lvmkit.eval.evaluator import format_table

    name = cfg.model.name
    suite = spec.evaluate_suite(
        cfg,
        {name: predictor},
        test,
        bank,
        train_windows=fit_on.get("train"),
        val_windows=fit_on.get("val"),
        seed=cfg.seed,
    )
    info = {
        "split": "test",
        "n_queries": len(test),
        f"test_{spec.unit}_capped_at": cfg.data.max_test_queries,
        "bank": str(bank.path),
        "bank_id": bank.manifest.bank_id,
        **extra,
    }
    write_json(run.metrics_json, {**info, **suite.to_dict()})
    head = (
        f"# {title}: test split\n\n{'; '.join(f'{v}' if k == 'model' else f'{k} {v}' for k, v in extra.items())}"
        f"\n\n{len(test)} test {spec.unit} (ctx {cfg.data.ctx}), best checkpoint (epoch chosen by "
        f"{cfg.early_stopping.metric} on val).\n\n"
    )
    write_text(run.metrics_md, head + format_table(suite, spec.table_columns(cfg)) + "\n")
    cmp = suite.comparisons[0]
    return {
        f"test_{cmp.metric}": suite[name].metrics[cmp.metric],
        "best_baseline": cmp.baseline,
        f"best_baseline_{cmp.metric}": suite[cmp.baseline].metrics[cmp.metric],
        "verdict": cmp.verdict,
    }


def open_bank_and_split(
    cfg: RunConfig, run: RunPaths, dist: D.DistInfo, resume: bool = False
) -> tuple[VectorBank, Split]:
    """The run's bank and its split: on resume the run's split.json, else ``make_split`` from
    ``cfg.split`` (saved to the run by rank 0). Shared by every task."""
    from lvmkit.bank.bank import VectorBank
    from lvmkit.data.splits import Split, make_split

    bank = VectorBank.open(cfg.bank)
    if resume and run.split.exists():
        return bank, Split.load(run.split, bank)
    split = make_split(bank, ratios=cfg.split.ratios, seed=cfg.split.seed)
    if dist.is_main:
        split.save(run.split)
    return bank, split


def train_sampler(train: WindowSet, cfg: RunConfig, dist: D.DistInfo) -> ArticleCappedBatchSampler:
    """This rank's batches of the training windows (``data.batch_size``, ``data.max_per_article``, seed)."""
    from lvmkit.data.samplers import ArticleCappedBatchSampler

    return ArticleCappedBatchSampler(
        train.article_of_all(),
        batch_size=cfg.data.batch_size,
        max_per_article=cfg.data.max_per_article,
        seed=cfg.seed,
        drop_last=False,
        rank=dist.rank,
        world_size=dist.world_size,
    )


def inarticle_negatives(
    bank: VectorBank, batch: WindowBatch, offsets: list[int]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The batch's in-article hard negatives (LVM loss ``inarticle_offsets``, ``twotower.inarticle_offsets``):
    ``(vectors, valid)``, the raw bank vectors float32 [B, K, d] on the batch's device and bool [B, K] (False:
    the article has no chunk at that offset, and the vector is a placeholder to mask); None without offsets.
    Which chunks they are is decided in one place, ``train.mining.article_negative_rows``."""
    if not offsets:
        return None
    import torch

    from lvmkit.train.mining import article_negative_rows

    rows = article_negative_rows(
        bank.article_codes,
        batch.target_ids.cpu().numpy(),
        batch.mask.sum(dim=1).cpu().numpy(),
        offsets,
    )
    vectors = bank.get(np.where(rows >= 0, rows, 0).ravel()).reshape(*rows.shape, bank.dim)
    device = batch.target.device
    return (
        torch.as_tensor(vectors, dtype=torch.float32, device=device),
        torch.as_tensor(rows >= 0, device=device),
    )


class SamplerEpochs:
    """The loop's epoch-size queries, answered from ``self.sampler`` (shared by the LVM and two-tower tasks)."""

    sampler: ArticleCappedBatchSampler

    def num_batches(self, epoch: int) -> int:
        self.sampler.set_epoch(epoch)
        return len(self.sampler)

    def windows_per_epoch(self) -> int:
        return int(self.sampler.stats["windows_all_ranks"])
