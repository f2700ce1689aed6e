"""Baselines: the numbers every model must beat, as modules usable wherever a model is.

    copy_last      ctx[:, -1]                       (the next sentence resembles the last one)
    mean_ctx       masked mean of the context
    exp_weighted   sum_t w_t ctx_t / sum_t w_t,  w_t = alpha (1 - alpha)^(T-1-t) over real positions
    blend          w ctx[:, -1] + (1 - w) exp_weighted(alpha), normalised; w and alpha are chosen on the val
                   split by a small grid (``lvmkit.eval.tuning.tune_blend``)
    ridge          a closed-form linear map from context features to the target, fitted on training windows

None has trainable parameters (``trainable = False``). Ridge is *fitted*: call ``fit(ctx, mask, target)``
once on training windows; its weights are buffers, so they travel in ``state_dict`` like any model's.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lvmkit.errors import ConfigError, LvmkitError
from lvmkit.models.base import LVM, masked_mean


class CopyLast(LVM):
    """Predict the last context vector."""

    trainable = False

    def predict(self, ctx: Tensor, mask: Tensor | None) -> Tensor:
        return ctx[:, -1]


class MeanCtx(LVM):
    """Predict the mean of the real context vectors."""

    trainable = False

    def predict(self, ctx: Tensor, mask: Tensor | None) -> Tensor:
        return masked_mean(ctx, mask)


def exp_weights(mask: Tensor, alpha: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """[B, T] weights alpha (1 - alpha)^(T-1-t) on real positions, zero on padding, each row summing to 1."""
    T = mask.shape[1]
    age = torch.arange(T - 1, -1, -1, device=mask.device, dtype=dtype)  # T-1-t: 0 for the most recent chunk
    w = alpha * (1.0 - alpha) ** age * mask.to(dtype)
    return w / w.sum(dim=1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)


def exp_weighted_mean(ctx: Tensor, mask: Tensor | None, alpha: float) -> Tensor:
    """[B, d]: the context averaged with ``exp_weights`` (``mask=None``: every position is real)."""
    if mask is None:
        mask = torch.ones(ctx.shape[:2], dtype=torch.bool, device=ctx.device)
    return torch.einsum("bt,btd->bd", exp_weights(mask, alpha, ctx.dtype), ctx)


def check_alpha(alpha: float, name: str) -> float:
    if not 0.0 < float(alpha) <= 1.0:
        raise ConfigError(f"{name} must be in (0, 1], got {alpha}")
    return float(alpha)


class ExpWeighted(LVM):
    """Exponentially weighted context: recent chunks count most (alpha=0.1 halves a weight every ~6.6 steps)."""

    trainable = False

    def __init__(self, dim: int, delta: bool = False, alpha: float = 0.1):
        super().__init__(dim, delta)
        self.alpha = check_alpha(alpha, "exp_weighted alpha")

    def predict(self, ctx: Tensor, mask: Tensor | None) -> Tensor:
        return exp_weighted_mean(ctx, mask, self.alpha)


def blend_query(ctx: Tensor, mask: Tensor | None, w: float | Tensor, alpha: float | Tensor) -> Tensor:
    """[B, d]: ``w * ctx[:, -1] + (1 - w) * exp_weighted_mean(ctx, mask, alpha)`` (unnormalised)."""
    return w * ctx[:, -1] + (1.0 - w) * exp_weighted_mean(ctx, mask, alpha)


def check_weight(w: float, name: str) -> float:
    if not 0.0 <= float(w) <= 1.0:
        raise ConfigError(f"{name} must be in [0, 1], got {w}")
    return float(w)


class Blend(LVM):
    """The tuned blend of copy_last and exp_weighted: ``normalize(w last + (1 - w) exp_weighted(alpha))``.

    ``w`` and ``alpha`` are plain options: the evaluator chooses them on the val split
    (``lvmkit.eval.tuning.fit_blend``) and builds this model with the chosen pair.
    """

    trainable = False

    def __init__(self, dim: int, delta: bool = False, w: float = 0.5, alpha: float = 0.1):
        super().__init__(dim, delta)
        self.w = check_weight(w, "blend w")
        self.alpha = check_alpha(alpha, "blend alpha")

    def predict(self, ctx: Tensor, mask: Tensor | None) -> Tensor:
        return blend_query(ctx, mask, self.w, self.alpha)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, w={self.w}, alpha={self.alpha}"


RIDGE_FEATURES = ("auto", "flat", "pooled")


class Ridge(LVM):
    """Ridge regression from context features to the next vector (closed form, float64).

    Features (``features``):
      ``flat``    the whole context flattened, padding zeroed: [B, T*d]. Fitted for one T; at prediction a
                  shorter context is left-padded with zeros and a longer one keeps its last T vectors.
      ``pooled``  [last, masked mean, exp-weighted mean]: [B, 3d], independent of T.
      ``auto``    ``flat`` when the fitting context has T <= ``max_flat_ctx``, else ``pooled``.
    The map has an intercept; ``alpha`` is the L2 penalty (sklearn's ``Ridge(alpha)`` objective). In delta mode
    it fits the residual ``target - ctx[:, -1]``.
    """

    trainable = False

    def __init__(
        self,
        dim: int,
        delta: bool = False,
        alpha: float = 1.0,
        features: str = "auto",
        max_flat_ctx: int = 16,
        exp_alpha: float = 0.1,
    ):
        super().__init__(dim, delta)
        if features not in RIDGE_FEATURES:
            raise ConfigError(
                f"ridge features {features!r} is not known; allowed: {', '.join(RIDGE_FEATURES)}"
            )
        if float(alpha) < 0:
            raise ConfigError(f"ridge alpha must be >= 0, got {alpha}")
        if int(max_flat_ctx) < 1:
            raise ConfigError(f"ridge max_flat_ctx must be >= 1, got {max_flat_ctx}")
        self.alpha = float(alpha)
        self.features = features
        self.max_flat_ctx = int(max_flat_ctx)
        self.exp_alpha = check_alpha(exp_alpha, "ridge exp_alpha")
        # Fitted state. Empty until fit(); _load_from_state_dict resizes them to what a checkpoint holds.
        self.register_buffer("weight", torch.zeros(0, dim))  # [p, d]
        self.register_buffer("bias", torch.zeros(dim))  # [d]
        self.register_buffer("fit_ctx", torch.zeros((), dtype=torch.long))  # T used in fit; 0 = not fitted

    @property
    def fitted(self) -> bool:
        return int(self.fit_ctx) > 0

    def mode(self, length: int) -> str:
        """The feature layout used for a model fitted on contexts of ``length`` vectors."""
        if self.features == "auto":
            return "flat" if length <= self.max_flat_ctx else "pooled"
        return self.features

    def featurize(self, ctx: Tensor, mask: Tensor | None, fit_ctx: int) -> Tensor:
        n, length, d = ctx.shape
        if mask is None:
            mask = torch.ones(n, length, dtype=torch.bool, device=ctx.device)
        if self.mode(fit_ctx) == "pooled":
            ew = exp_weighted_mean(ctx, mask, self.exp_alpha)
            return torch.cat([ctx[:, -1], masked_mean(ctx, mask), ew], dim=1)
        x = ctx * mask.unsqueeze(-1).to(ctx.dtype)  # zero the padding
        if length > fit_ctx:
            x = x[:, -fit_ctx:]
        elif length < fit_ctx:
            x = torch.cat([x.new_zeros(n, fit_ctx - length, d), x], dim=1)
        return x.reshape(n, fit_ctx * d)

    @torch.no_grad()
    def fit(self, ctx, mask, target) -> Ridge:
        """Fit on training windows: ctx [n, T, d], mask [n, T] or None, target [n, d] (tensors or numpy)."""
        X, Y = self.design(ctx, mask, target)
        return self.fit_design(X, Y, int(torch.as_tensor(ctx).shape[1]))

    @torch.no_grad()
    def design(self, ctx, mask, target) -> tuple[np.ndarray, np.ndarray]:
        """The regression's rows for these windows: features X [n, p] and targets Y [n, d] (float64). Rows are
        independent, so ``fit_design`` on blocks stacked together equals ``fit`` on all windows at once (what
        ``eval.evaluator.fit_ridge`` does, so a long context never holds every window in memory)."""
        ctx, target = torch.as_tensor(ctx, dtype=torch.float32), torch.as_tensor(target, dtype=torch.float32)
        mask = self.check_inputs(ctx, None if mask is None else torch.as_tensor(mask))
        if target.shape != (ctx.shape[0], self.dim):
            raise ValueError(f"target must be [n, d] = {(ctx.shape[0], self.dim)}, got {tuple(target.shape)}")
        X = self.featurize(ctx, mask, int(ctx.shape[1])).double().cpu().numpy()
        Y = target.double().cpu().numpy()
        if self.delta:
            Y = Y - ctx[:, -1].double().cpu().numpy()
        return X, Y

    @torch.no_grad()
    def fit_design(self, X: np.ndarray, Y: np.ndarray, fit_ctx: int) -> Ridge:
        """Solve the ridge on rows from ``design`` of windows with ``fit_ctx`` context vectors."""
        W, b = ridge_solve(X, Y, self.alpha)
        dev = self.bias.device
        self.weight = torch.as_tensor(W, dtype=torch.float32, device=dev)
        self.bias = torch.as_tensor(b, dtype=torch.float32, device=dev)
        self.fit_ctx = torch.tensor(int(fit_ctx), dtype=torch.long, device=dev)
        return self

    def predict(self, ctx: Tensor, mask: Tensor | None) -> Tensor:
        if not self.fitted:
            raise LvmkitError(
                "the ridge baseline is not fitted: call model.fit(ctx, mask, target) on training windows "
                "before predicting (or load a state_dict saved after fitting)"
            )
        x = self.featurize(ctx, mask, int(self.fit_ctx))
        return x.to(self.weight.dtype) @ self.weight + self.bias

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A fitted checkpoint holds a [p, d] weight; make room for it before the shape-checked copy.
        key = prefix + "weight"
        if key in state_dict:
            self.weight = torch.empty_like(state_dict[key], device=self.weight.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha}, features={self.features}, fit_ctx={int(self.fit_ctx)}"


def ridge_solve(X: np.ndarray, Y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Minimise ||Y - X W - b||^2 + alpha ||W||^2 (b unpenalised). Returns (W [p, d], b [d]), float64.

    Centres X and Y (which gives the intercept), then solves the smaller of the two equivalent systems:
    primal (X'X + aI) W = X'Y when p <= n, dual W = X'(XX' + aI)^-1 Y otherwise.
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    xm, ym = X.mean(axis=0), Y.mean(axis=0)
    Xc, Yc = X - xm, Y - ym
    n, p = Xc.shape
    if alpha == 0.0:
        W = np.linalg.lstsq(Xc, Yc, rcond=None)[0]
    elif p <= n:
        W = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(p), Xc.T @ Yc)
    else:
        W = Xc.T @ np.linalg.solve(Xc @ Xc.T + alpha * np.eye(n), Yc)
    return W, ym - xm @ W
