"""Two-tower evaluation: the tower beside the heuristic queries on the same pairs, by exact search over the
whole (document-tower) bank. The scoring is ``lvmkit.eval.evaluate`` and the comparison and table are the
evaluator's (``compare_to_best``, ``format_table``); this module adds the two-tower names (``recall@k``,
``sep_margin``) and the document side."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from lvmkit.bank.bank import VectorBank
from lvmkit.data.windows import WindowBatch, WindowSet
from lvmkit.errors import ConfigError
from lvmkit.eval.bootstrap import bootstrap_ci
from lvmkit.eval.evaluator import EvalResult, SuiteResult, compare_to_best, evaluate, separation_on_bank
from lvmkit.models import build_model
from lvmkit.tasks.twotower.config import TwoTowerConfig
from lvmkit.tasks.twotower.docbank import DocBank, doc_bank, raw_doc_bank

FINAL_HEURISTICS = ("exp_weighted", "copy_last", "mean_ctx")  # beside the tower in the final table


class TwoTowerModel(nn.Module):
    """A trained retriever as evaluation sees it: ``forward`` is the query tower (the model contract), and
    ``docs(bank)`` is the bank as the document tower places it."""

    def __init__(self, query: nn.Module, doc: nn.Module):
        super().__init__()
        self.query, self.doc = query, doc
        self.spec = dict(getattr(query, "spec", {}))

    def forward(self, ctx: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.query(ctx, mask)

    def docs(self, bank: VectorBank) -> DocBank:
        device = next((p.device for p in self.doc.parameters()), torch.device("cpu"))
        return doc_bank(bank, self.doc, device)


def heuristic_models(tt: TwoTowerConfig, dim: int, names=FINAL_HEURISTICS) -> dict[str, nn.Module]:
    """The heuristic queries the tower is compared with (exp_weighted with ``heuristic_alpha``)."""
    kwargs = {"exp_weighted": {"alpha": tt.heuristic_alpha}}
    return {h: build_model(h, dim, **kwargs.get(h, {})) for h in names}


def evaluate_retrieval(
    model: nn.Module,
    windows: WindowSet,
    docs: DocBank | VectorBank,
    ks: tuple[int, ...] = (10, 100, 500, 1000),
    n_neighbours: int = 16,
    n_boot: int = 1000,
    seed: int = 0,
    name: str = "model",
    **kwargs: Any,
) -> EvalResult:
    """``lvmkit.eval.evaluate`` over the document bank, plus the two-tower names: ``recall@k`` (= hit@k:
    one true chunk per query, context excluded) and ``sep_margin`` (``separation_on_bank``, with its own
    bootstrap interval). ``kwargs`` go to ``evaluate`` (exclude_context, progress)."""
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
        res = evaluate(
            predict, windows, docs, ks=ks, labels=False, n_boot=n_boot, seed=seed, name=name, **kwargs
        )
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
        res.intervals["sep_margin"] = bootstrap_ci(sep, n_boot=n_boot, seed=seed)[1:]
    return res


def evaluate_twotower_suite(
    tt: TwoTowerConfig,
    models: Mapping[str, Any],
    windows: WindowSet,
    bank: VectorBank,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    index: str | None = None,
    nprobe: int | None = None,
    heuristics=FINAL_HEURISTICS,
    **kwargs: Any,
) -> SuiteResult:
    """Each model (a ``TwoTowerModel``, or a query tower over the bank itself) and the heuristic queries on
    the same pairs; each model vs the best heuristic on ``tt.compare_on`` (ties: the better MRR@10)."""
    if index not in (None, "flat") or nprobe is not None:
        raise ConfigError("two-tower runs are scored by exact search over the (document-tower) bank: leave out "
                          "--index and --nprobe")  # fmt: skip
    clash = sorted(set(models) & set(heuristics))
    if clash:
        raise ConfigError(f"model name(s) {clash} collide with the heuristics; rename them")
    kw = {"ks": tt.eval_ks, "n_neighbours": tt.sep_neighbours, "n_boot": n_boot, "seed": seed, **kwargs}
    raw = raw_doc_bank(bank)
    results: dict[str, EvalResult] = {}
    for name, m in models.items():
        docs = m.docs(bank) if isinstance(m, TwoTowerModel) else raw
        results[name] = evaluate_retrieval(m, windows, docs, name=name, **kw)
    for h, m in heuristic_models(tt, bank.dim, heuristics).items():
        results[h] = evaluate_retrieval(m, windows, raw, name=h, **kw)
    comparisons = compare_to_best(
        results, list(models), list(heuristics), tt.compare_on, seed, n_boot, tiebreak="mrr@10"
    )
    return SuiteResult(results, comparisons, {})
