"""The LVM task as every consumer sees it (``lvmkit.tasks.TASKS["lvm"]``): its windows, its predictor, its
evaluation beside every baseline, its metric names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lvmkit.tasks.base import QuerySets, TaskSpec
from lvmkit.tasks.lvm.config import LVMRunConfig

VAL_KS = (1, 5, 10, 50)  # ks of the per-epoch evaluation (``evaluate``'s default)


class LVMSpec(TaskSpec):
    name = "lvm"
    config_class = LVMRunConfig
    task_class = "lvmkit.tasks.lvm.task:LVMTask"
    unit = "windows"

    def check(self, cfg, bank) -> None:
        """The model and its options build, it has something to train, and the loss spec builds."""
        from lvmkit.errors import ConfigError
        from lvmkit.losses import build_loss
        from lvmkit.models import build_model

        super().check(cfg, bank)
        model = build_model(cfg.model.name, bank.dim, delta=cfg.model.delta, **cfg.model.kwargs)
        if not getattr(model, "trainable", True):
            raise ConfigError(
                f"model.name={cfg.model.name!r} is a baseline with nothing to train; the trainer reports it "
                "beside every model anyway (or score it alone with `lvmkit eval`)"
            )
        build_loss(cfg.loss, dim=bank.dim)

    def query_sets(self, cfg, bank, split) -> QuerySets:
        """Sequence windows of each split with the run's ``data`` settings (ctx, stride, min_ctx, pad)."""
        from lvmkit.data.windows import make_windows

        d = cfg.data

        def build(name: str):
            return make_windows(bank, split, name, d.ctx, stride=d.stride, min_ctx=d.min_ctx, pad=d.pad), None

        def empty(name: str) -> str:
            return (
                f"the {name} split of bank {bank.path} has no windows with ctx={d.ctx} (min_ctx={d.min_ctx}, "
                f"pad={d.pad}): its articles are too short or too few. Lower data.ctx, set data.min_ctx, change "
                "split.ratios, or use a larger bank"
            )

        return QuerySets(cfg, build, empty)

    def load_predictor(self, ckpt: dict[str, Any], path: Any) -> tuple[str, Any]:
        from lvmkit.train.checkpoint import model_from_checkpoint

        return str(ckpt["model"].get("name", "model")), model_from_checkpoint(ckpt, path)

    def evaluate_suite(
        self, cfg, models: Mapping[str, Any], windows, bank, train_windows=None, val_windows=None, **kwargs
    ):
        """``lvmkit.eval.evaluate_suite``: every baseline (ridge fitted on train, the blend tuned on val) and the
        oracle, compared on hit@5."""
        from lvmkit.eval.evaluator import evaluate_suite

        return evaluate_suite(
            models, windows, bank, train_windows=train_windows, val_windows=val_windows, **kwargs
        )

    def metric_names(self, cfg) -> list[str]:
        from lvmkit.eval.evaluator import CONTAIN_K, MRR_K

        own = [f"hit@{k}{s}" for k in VAL_KS for s in ("", "_excl", "_noexcl")]
        own += [
            f"contain@{CONTAIN_K}",
            f"mrr@{MRR_K}",
            "cos",
            "ca_inbatch",
            "ca_other",
            "eff@5",
            "offset_margin",
        ]
        return own + [f"copy_last_{m}" for m in own]


LVM_SPEC = LVMSpec()
