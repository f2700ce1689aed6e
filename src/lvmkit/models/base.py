"""What every LVM shares: the forward contract, input checks, the anchor and output normalisation.

The contract (docs/ARCHITECTURE.md, "models"):

    forward(ctx: [B, T, d] float, mask: [B, T] bool | None) -> [B, d], every row a unit vector

``mask[b, t]`` is True for a real context vector. Windows are LEFT padded: padding comes first and the last
position ``T - 1`` is always the most recent real chunk, so ``ctx[:, -1]`` is "the last context vector" for
every row. ``mask=None`` means no padding.

A model family subclasses ``LVM`` and implements ``predict(ctx, mask) -> [B, d]``, an unnormalised vector.
``LVM.forward`` checks the inputs, adds the model's anchor (``lvmkit.models.anchors``: none, last, mean,
exp_weighted, blend or mix; the family predicts a residual on it) and L2-normalises. The anchor is
therefore implemented once, here, for every model: a trainable family takes the options ``anchor``,
``anchor_alpha`` and ``anchor_w`` and passes them on, and passes its output layer to ``start_at_anchor``,
which zero-initialises it when there is an anchor, so that an untrained model IS its anchor.
``delta: true`` is an alias of ``anchor: last`` (checkpoints written with it load unchanged).
"""

from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lvmkit.errors import ConfigError
from lvmkit.models.anchors import Anchor, resolve_anchor


def positive_int(value: int, name: str) -> int:
    """``int(value)``, or a ConfigError naming the option when it is below 1."""
    if int(value) < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value}")
    return int(value)


def l2_normalize(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Rows scaled to unit length (a zero row stays zero instead of becoming NaN)."""
    return F.normalize(x, dim=-1, eps=eps)


def masked_mean(ctx: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over the real positions of each row: sum_t mask[b,t] ctx[b,t] / sum_t mask[b,t]."""
    if mask is None:
        return ctx.mean(dim=1)
    w = mask.to(ctx.dtype).unsqueeze(-1)
    return (ctx * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


def has_padding(mask: Tensor | None) -> bool:
    """True when some position is padding (a fast path skips masking work otherwise)."""
    return mask is not None and not bool(mask.all())


class LVM(nn.Module, abc.ABC):
    """Base class of every model in the zoo. Subclasses implement ``predict``.

    ``trainable`` tells the trainer whether the model has parameters to optimise; baselines set it to False.
    ``default_anchor`` is the family's anchor when neither ``anchor`` nor ``delta`` is given.
    """

    trainable: bool = True
    default_anchor: str = "none"

    def __init__(
        self,
        dim: int,
        delta: bool = False,
        anchor: str | None = None,
        anchor_alpha: float = 0.1,
        anchor_w: float | None = None,
    ):
        super().__init__()
        if int(dim) < 1:
            raise ConfigError(f"model dim must be a positive integer (the bank's vector size), got {dim}")
        self.dim = int(dim)
        self.anchor = Anchor(resolve_anchor(anchor, bool(delta), self.default_anchor), anchor_alpha, anchor_w)

    @property
    def delta(self) -> bool:
        """True when the anchor is the last context vector (the old ``delta`` mode)."""
        return self.anchor.kind == "last"

    @abc.abstractmethod
    def predict(self, ctx: Tensor, mask: Tensor | None) -> Tensor:
        """Return an unnormalised prediction [B, d] (with an anchor: the residual added to it)."""

    def start_at_anchor(self, layer: nn.Linear) -> None:
        """Call with the final output layer. With an anchor it starts at zero, so the untrained model predicts
        exactly the anchor (e.g. copy_last for ``last``) and training moves away from it only where that helps."""
        if self.anchor.kind != "none":
            nn.init.zeros_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def forward(self, ctx: Tensor, mask: Tensor | None = None) -> Tensor:
        mask = self.check_inputs(ctx, mask)
        out = self.predict(ctx, mask)
        base = self.anchor(ctx, mask)
        return l2_normalize(out if base is None else out + base)

    def check_inputs(self, ctx: Tensor, mask: Tensor | None) -> Tensor | None:
        """Validate shapes and the left-padding layout; return the mask as bool (None stays None)."""
        if ctx.dim() != 3 or ctx.shape[1] < 1:
            raise ValueError(f"ctx must be [B, T, d] with T >= 1, got shape {tuple(ctx.shape)}")
        if ctx.shape[-1] != self.dim:
            raise ConfigError(
                f"{type(self).__name__} was built for {self.dim}-d vectors but got {ctx.shape[-1]}-d context; "
                "build the model with dim=bank.dim"
            )
        if mask is None:
            return None
        if mask.shape != ctx.shape[:2]:
            raise ValueError(f"mask must be [B, T] = {tuple(ctx.shape[:2])}, got {tuple(mask.shape)}")
        mask = mask.to(torch.bool)
        # Left padding: each row is False...False True...True and its last position is real.
        if not bool(mask[:, -1].all()) or bool((mask[:, :-1] & ~mask[:, 1:]).any()):
            raise ValueError(
                "mask must be left-padded: padding first, real vectors last, mask[:, -1] all True"
            )
        return mask

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
