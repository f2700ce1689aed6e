"""Baselines with settings chosen on held-out data: the tuned ``blend`` (and the ``blend`` / ``mix`` anchors).

    fit = tune_blend(val_windows, bank)          # BlendFit(w, alpha, score, grid, n_windows, criterion)
    model = fit_blend(val_windows, bank)         # the ``blend`` baseline built with the chosen pair

``blend`` = normalize(w * ctx[:, -1] + (1 - w) * exp_weighted(ctx, alpha)). Every (w, alpha) of the grid
is scored by full-bank search (context excluded, truth by chunk id, the evaluator's own ranking) on up to
``max_windows`` windows of the split it is given; the pair with the highest mean of Hit@1/5/10/50 wins
(ties: the first in grid order). Callers pass val (or train) windows, never test: like ridge, the blend is
fitted on non-test data only, and the test table then reads it once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from lvmkit.bank.bank import VectorBank
from lvmkit.errors import ConfigError
from lvmkit.eval import metrics as M

BLEND_W_GRID: tuple[float, ...] = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
BLEND_ALPHA_GRID: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5)
BLEND_KS: tuple[int, ...] = (1, 5, 10, 50)
BLEND_MAX_WINDOWS = 1000


@dataclass
class BlendFit:
    """The chosen pair, its score, and every grid point's score (``grid``: [{w, alpha, score}])."""

    w: float
    alpha: float
    score: float
    n_windows: int
    criterion: str
    tuned_on: str = "val"
    grid: list[dict[str, float]] = field(default_factory=list)

    def describe(self) -> str:
        return (
            f"blend w={self.w:g}, alpha={self.alpha:g} chosen on {self.n_windows} {self.tuned_on} windows "
            f"({self.criterion} {100 * self.score:.1f})"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def blend_grid(
    ws: tuple[float, ...] = BLEND_W_GRID, alphas: tuple[float, ...] = BLEND_ALPHA_GRID
) -> list[tuple[float, float]]:
    """The (w, alpha) pairs to try; w = 1 is copy_last whatever alpha, so it is tried once."""
    return [(w, a) for w in ws for a in alphas if w < 1.0 or a == alphas[0]]


def blend_scores(
    windows, bank: VectorBank, grid: list[tuple[float, float]], ks: tuple[int, ...] = BLEND_KS
) -> np.ndarray:
    """[len(grid)]: the mean over ``ks`` of full-bank Hit@k (context excluded) of each blend on ``windows``."""
    from lvmkit.eval.evaluator import rank_with_and_without, resolve_index
    from lvmkit.models.base import l2_normalize
    from lvmkit.models.baselines import blend_query

    batch = windows.batch(np.arange(len(windows)))
    ctx, mask = torch.as_tensor(batch.ctx).float(), torch.as_tensor(batch.mask)
    truth = np.asarray(batch.target_ids, dtype=np.int64)
    ctx_rows = np.asarray(windows.context_rows(np.arange(len(windows))), dtype=np.int64)
    si = resolve_index(bank, None)
    scores = np.zeros(len(grid))
    for g, (w, a) in enumerate(grid):
        q = l2_normalize(blend_query(ctx, mask, w, a)).numpy().astype(np.float32)
        ranked, _ = rank_with_and_without(si, q, ctx_rows, max(ks))
        scores[g] = np.mean([M.hit_at_k(ranked, truth, k).mean() for k in ks])
    return scores


def tune_blend(
    windows,
    bank: VectorBank,
    *,
    max_windows: int = BLEND_MAX_WINDOWS,
    seed: int = 0,
    tuned_on: str = "val",
    ws: tuple[float, ...] = BLEND_W_GRID,
    alphas: tuple[float, ...] = BLEND_ALPHA_GRID,
) -> BlendFit:
    """Choose (w, alpha) on ``windows`` (val, or train; never test) by grid search; see the module doc."""
    if len(windows) == 0:
        raise ConfigError(f"no {tuned_on} windows to tune the blend on (the split is empty at this ctx)")
    windows = windows.sample(max_windows, seed) if len(windows) > max_windows else windows
    grid = blend_grid(tuple(ws), tuple(alphas))
    scores = blend_scores(windows, bank, grid)
    best = int(np.argmax(scores))
    return BlendFit(
        w=float(grid[best][0]),
        alpha=float(grid[best][1]),
        score=float(scores[best]),
        n_windows=len(windows),
        criterion="mean Hit@" + "/".join(map(str, BLEND_KS)),
        tuned_on=tuned_on,
        grid=[{"w": w, "alpha": a, "score": float(s)} for (w, a), s in zip(grid, scores, strict=True)],
    )


def fit_blend(windows, bank: VectorBank, *, seed: int = 0, tuned_on: str = "val", **kwargs):
    """The ``blend`` baseline built with the pair ``tune_blend`` chooses; the fit is at ``model.fit_info``."""
    from lvmkit.models import build_model

    fit = tune_blend(windows, bank, seed=seed, tuned_on=tuned_on, **kwargs)
    model = build_model("blend", bank.dim, w=fit.w, alpha=fit.alpha)
    model.fit_info = fit
    return model


def tune_anchor(model, windows, bank: VectorBank, *, seed: int = 0) -> BlendFit | None:
    """Start a ``blend`` / ``mix`` anchor whose ``anchor_w`` is null at the blend tuned on ``windows`` (the
    run's val windows), and write the chosen pair into ``model.spec``. Other models: no-op (None)."""
    from lvmkit.models.anchors import TUNED_ANCHORS

    anchor = getattr(model, "anchor", None)
    if getattr(anchor, "kind", None) not in TUNED_ANCHORS or anchor.tuned:
        return None
    fit = tune_blend(windows, bank, seed=seed)
    anchor.set_blend(fit.w, fit.alpha)
    if hasattr(model, "spec"):
        model.spec.update(anchor_w=fit.w, anchor_alpha=fit.alpha)
    return fit
