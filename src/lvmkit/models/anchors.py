"""Anchors: the heuristic query a model starts AT. Every LVM's output is ``anchor(ctx) + residual(ctx)``,
L2-normalised, and a family zero-initialises its residual's last layer when it has an anchor
(``LVM.start_at_anchor``), so an untrained model IS its anchor and training moves away only where the loss
says so (a randomly initialised model starts far below the heuristics and, on a small budget, may never
catch up):

    none          no anchor: the family's own output
    last          ctx[:, -1]  (``delta: true`` is an alias of this)
    mean          the masked mean of the context
    exp_weighted  sum_t a(1-a)^(T-1-t) ctx_t / sum_t a(1-a)^(T-1-t), a = ``anchor_alpha`` (0.1)
    blend         w ctx[:, -1] + (1 - w) exp_weighted(alpha): the tuned-blend baseline (fixed, not trained)
    mix           p_last ctx[:, -1] + p_mean mean + p_exp exp_weighted(sigmoid(decay)): a LEARNED blend,
                  p = softmax(logits); it starts at the tuned blend (p = [w, 0.001, 1 - w], renormalised)

``blend`` and ``mix`` take ``anchor_w`` and ``anchor_alpha``. ``anchor_w: null`` means "choose (w, alpha) on
the val split when training starts" (``lvmkit.eval.tuning.tune_anchor``, the same grid as the blend
baseline); the chosen pair is written into the model's spec, and blend/mix keep it in their state_dict.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lvmkit.errors import ConfigError

ANCHORS = ("none", "last", "mean", "exp_weighted", "blend", "mix")
TUNED_ANCHORS = ("blend", "mix")
MIX_FLOOR = 1e-3  # the smallest starting weight of a mix component (softmax logits must be finite)


def resolve_anchor(anchor: str | None, delta: bool, default: str = "none") -> str:
    """The anchor a model uses: ``anchor`` if given, else ``last`` in delta mode, else the family default."""
    if anchor is None:
        return "last" if delta else default
    if anchor not in ANCHORS:
        raise ConfigError(f"anchor {anchor!r} is not known; allowed: {', '.join(ANCHORS)}")
    if delta and anchor == "none":
        return "last"  # towers written before anchors moved here stored delta: true beside anchor: none
    if delta and anchor != "last":
        raise ConfigError(
            f"a model takes either delta: true or anchor: {anchor}, not both (delta: true means anchor: last)"
        )
    return anchor


class Anchor(nn.Module):
    """``forward(ctx, mask) -> [B, d]`` the anchor query, or None for ``none``. See the module docstring."""

    def __init__(self, kind: str, alpha: float = 0.1, w: float | None = None):
        super().__init__()
        from lvmkit.models.baselines import check_alpha, check_weight

        if kind not in ANCHORS:
            raise ConfigError(f"anchor {kind!r} is not known; allowed: {', '.join(ANCHORS)}")
        self.kind = kind
        self.alpha = check_alpha(alpha, "anchor_alpha")
        tuned = w is not None or kind not in TUNED_ANCHORS  # blend / mix: False until chosen on val
        w = 0.5 if w is None else check_weight(w, "anchor_w")
        if kind == "blend":
            self.register_buffer("w", torch.tensor(float(w)))
            self.register_buffer("blend_alpha", torch.tensor(self.alpha))
        elif kind == "mix":
            self.logits = nn.Parameter(torch.zeros(3))  # [last, mean, exp_weighted]
            self.decay = nn.Parameter(torch.zeros(()))  # alpha = sigmoid(decay)
        if kind in TUNED_ANCHORS:
            self.set_blend(w, self.alpha)
        self.tuned = tuned  # set_blend marks it tuned; only an explicit w (or tune_anchor) really is

    @torch.no_grad()
    def set_blend(self, w: float, alpha: float) -> None:
        """Start (or fix) a blend / mix anchor at ``w last + (1 - w) exp_weighted(alpha)``."""
        self.tuned, self.alpha = True, float(alpha)
        if self.kind == "blend":
            self.w.fill_(float(w))
            self.blend_alpha.fill_(float(alpha))
        elif self.kind == "mix":
            p = torch.tensor([max(w, MIX_FLOOR), MIX_FLOOR, max(1.0 - w, MIX_FLOOR)])
            self.logits.copy_(torch.log(p / p.sum()))
            a = min(max(float(alpha), MIX_FLOOR), 1.0 - MIX_FLOOR)
            self.decay.fill_(math.log(a / (1.0 - a)))

    def weights(self) -> Tensor:
        """mix: the softmax weights [last, mean, exp_weighted] (they sum to 1)."""
        return self.logits.softmax(dim=0)

    def forward(self, ctx: Tensor, mask: Tensor | None) -> Tensor | None:
        from lvmkit.models.base import masked_mean
        from lvmkit.models.baselines import blend_query, exp_weighted_mean

        if self.kind == "none":
            return None
        if self.kind == "last":
            return ctx[:, -1]
        if self.kind == "mean":
            return masked_mean(ctx, mask)
        if self.kind == "exp_weighted":
            return exp_weighted_mean(ctx, mask, self.alpha)
        if self.kind == "blend":
            return blend_query(ctx, mask, self.w.to(ctx.dtype), self.blend_alpha.to(ctx.dtype))
        p = self.weights().to(ctx.dtype)
        ew = exp_weighted_mean(ctx, mask, torch.sigmoid(self.decay).to(ctx.dtype))
        return p[0] * ctx[:, -1] + p[1] * masked_mean(ctx, mask) + p[2] * ew

    @torch.no_grad()
    def describe(self) -> str:
        if self.kind == "blend":
            return f"blend(w={float(self.w):.3g}, alpha={float(self.blend_alpha):.3g})"
        if self.kind == "mix":
            p = self.weights().tolist()
            a = float(torch.sigmoid(self.decay))
            return f"mix(last {p[0]:.3f}, mean {p[1]:.3f}, exp {p[2]:.3f}, alpha={a:.3g})"
        return self.kind + (f"(alpha={self.alpha:g})" if self.kind == "exp_weighted" else "")

    def extra_repr(self) -> str:
        return self.describe()
