"""The two-tower task as every consumer sees it (``lvmkit.tasks.TASKS["twotower"]``): its pairs, its
retriever, its evaluation beside the heuristic queries, its metric names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lvmkit.errors import ConfigError
from lvmkit.tasks.base import QuerySets, TaskSpec
from lvmkit.tasks.twotower.config import TwoTowerRunConfig, metric_names


class TwoTowerSpec(TaskSpec):
    name = "twotower"
    config_class = TwoTowerRunConfig
    task_class = "lvmkit.tasks.twotower.task:TwoTowerTask"
    unit = "pairs"
    fit_windows = ()  # the heuristics need no fitting

    def check(self, cfg, bank) -> None:
        """Metrics, the curriculum against the epochs, both towers build, the query tower is trainable."""
        from lvmkit.models import build_model
        from lvmkit.models.towers import build_doc_tower
        from lvmkit.train.mining import parse_schedule

        tt = cfg.twotower
        names = metric_names(tt)
        if tt.compare_on not in names:
            raise ConfigError(f"twotower.compare_on={tt.compare_on!r}; allowed: {', '.join(names[:6])}")
        if tt.abort is not None and tt.abort.metric not in names:
            raise ConfigError(
                f"twotower.abort.metric={tt.abort.metric!r} is not measured; choose one of: "
                + ", ".join(tt.own_metrics())
            )
        super().check(cfg, bank)
        parse_schedule(tt.schedule).check_epochs(cfg.optim.epochs)
        query = build_model(cfg.model.name, bank.dim, delta=cfg.model.delta, **cfg.model.kwargs)
        if not getattr(query, "trainable", True):
            raise ConfigError(
                f"model.name={cfg.model.name!r} is a baseline with nothing to train; two-tower runs report "
                "exp_weighted and copy_last beside the trained tower anyway"
            )
        build_doc_tower(tt.doc_tower, bank.dim, **tt.doc_options())

    def query_sets(self, cfg, bank, split) -> QuerySets:
        """(context, next chunk) pairs by chunk id, seen as windows: train pairs from ``twotower.pairs`` (made
        by ``lvmkit pairs``) or made from the split with ``pair_stride``; val / test with ``eval_stride``."""
        from lvmkit.data.pairs import PairSet, make_pairs

        tt, d = cfg.twotower, cfg.data

        def build(name: str):
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
            return ps.windows(), ps.table.column("pair_id").to_numpy()

        def empty(name: str) -> str:
            return (
                f"the {name} split of bank {bank.path} gives no pairs with ctx={d.ctx} (min_ctx={d.min_ctx}): "
                "its articles are too short or too few. Lower data.ctx, set data.min_ctx, or use a larger bank"
            )

        return QuerySets(cfg, build, empty)

    def load_predictor(self, ckpt: dict[str, Any], path: Any) -> tuple[str, Any]:
        """The query and document towers of a two-tower checkpoint as one ``TwoTowerModel`` (eval mode)."""
        from lvmkit.models.towers import build_doc_tower
        from lvmkit.tasks.twotower.evaluate import TwoTowerModel
        from lvmkit.train.checkpoint import model_from_checkpoint

        query = model_from_checkpoint(ckpt, path)
        doc = model_from_checkpoint(ckpt, path, module="doc", spec_key="doc_tower", build=build_doc_tower)
        return str(ckpt["model"].get("name", "query_tower")), TwoTowerModel(query, doc).eval()

    def search_space(self, predictor: Any, bank) -> tuple[Any, Any]:
        """The query tower and the bank as stored (identity document tower), or the bank re-encoded through
        an adapter document tower (a ``DocBank`` with an exact index)."""
        from lvmkit.tasks.twotower.evaluate import TwoTowerModel

        if not isinstance(predictor, TwoTowerModel):
            return predictor, bank
        if predictor.doc.spec.get("name", "identity") == "identity":
            return predictor.query, bank
        return predictor.query, predictor.docs(bank)

    def evaluate_suite(
        self, cfg, models: Mapping[str, Any], windows, bank, train_windows=None, val_windows=None, **kwargs
    ):
        """The towers beside exp_weighted, copy_last and mean_ctx, compared on ``twotower.compare_on`` (nothing
        is fitted: ``train_windows`` / ``val_windows`` are not used)."""
        from lvmkit.tasks.twotower.evaluate import evaluate_twotower_suite

        return evaluate_twotower_suite(cfg.twotower, models, windows, bank, **kwargs)

    def table_columns(self, cfg) -> tuple[str, ...]:
        return tuple(cfg.twotower.own_metrics())

    def metric_names(self, cfg) -> list[str]:
        return metric_names(cfg.twotower)


TWOTOWER_SPEC = TwoTowerSpec()
