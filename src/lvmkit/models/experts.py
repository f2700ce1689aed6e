"""Lane experts: a learned top-k gate over expert heads on a shared backbone (an option of any trainable LVM).

    build_model("gru", dim=384, delta=True, hidden=256, experts=16, top_k=2)

With ``experts: E`` the registry wraps the backbone (the model ``name`` would build) in ``LaneExperts``::

    y      = backbone(ctx, mask)                        # the backbone's prediction, a unit vector [B, d]
    u      = masked_mean(ctx, mask)                     # what the gate sees: the document's topic so far
    p      = softmax(W_g u + b_g)                       # [B, E] router probabilities
    S_b    = the top_k experts of p[b]                  # ties: the lower expert index
    w_b,e  = p_b,e / sum_{j in S_b} p_b,j  for e in S_b, else 0        (renormalised top-k weights)
    out    = normalise(y + sum_e w_b,e * expert_e([y; u]))

Each expert is a small MLP ``Linear(2d, H) -> GELU -> Linear(H, d)`` whose last layer starts at zero, so an
untrained model equals its backbone exactly (and, in delta mode, copy_last). Only the selected experts run on
each row (a loop over experts with index_add; E small).

Load balance (Switch Transformer / GShard, counted over the k routing slots)::

    f_e   = (1 / (B k)) * #{(b, j): S_b[j] = e}         share of routing slots sent to expert e
    P_e   = (1 / B) * sum_b p_b,e                       mean router probability of expert e
    L_bal = E * sum_e f_e * P_e                         = 1 when routing is uniform, up to E when collapsed

In training mode ``forward`` stores ``L_bal`` in ``self.balance``; the LVM task adds ``balance_weight * L_bal``
to the loss (``balance_term(model)``) and logs it as ``train_balance``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lvmkit.errors import ConfigError
from lvmkit.models.base import l2_normalize, masked_mean, positive_int

# model options the registry takes away from the backbone's kwargs (defaults when ``experts`` is set)
EXPERT_OPTIONS: dict[str, Any] = {"experts": 0, "top_k": 2, "expert_hidden": 128, "balance_weight": 0.01}


def balance_loss(probs: Tensor, top_idx: Tensor, n_experts: int) -> Tensor:
    """``E * sum_e f_e * P_e`` for router probabilities [B, E] and chosen experts [B, k] (see the docstring)."""
    b, k = top_idx.shape
    f = torch.bincount(top_idx.reshape(-1), minlength=n_experts).to(probs.dtype) / (b * k)
    return n_experts * (f * probs.mean(dim=0)).sum()


class ExpertMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.up = nn.Linear(2 * dim, hidden)
        self.down = nn.Linear(hidden, dim)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(x)))


class LaneExperts(nn.Module):
    """``backbone`` plus a top-k mixture of expert residual heads; same forward contract as every LVM."""

    trainable = True

    def __init__(
        self,
        backbone: nn.Module,
        experts: int = 16,
        top_k: int = 2,
        expert_hidden: int = 128,
        balance_weight: float = 0.01,
    ):
        super().__init__()
        experts, top_k = positive_int(experts, "experts"), positive_int(top_k, "top_k")
        if experts < 2 or top_k > experts:
            raise ConfigError(
                f"experts must be >= 2 and top_k <= experts, got experts={experts}, top_k={top_k}"
            )
        if float(balance_weight) < 0:
            raise ConfigError(f"balance_weight must be >= 0, got {balance_weight}")
        self.backbone = backbone
        self.dim = int(backbone.dim)
        self.n_experts, self.top_k, self.balance_weight = experts, top_k, float(balance_weight)
        self.gate = nn.Linear(self.dim, experts)
        self.experts = nn.ModuleList(
            ExpertMLP(self.dim, positive_int(expert_hidden, "expert_hidden")) for _ in range(experts)
        )
        self.balance: Tensor | None = None

    def route(self, ctx: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """(router probabilities [B, E], chosen experts [B, k], renormalised weights [B, k])."""
        probs = torch.softmax(self.gate(masked_mean(ctx, mask)), dim=-1)
        top_p, top_idx = probs.topk(self.top_k, dim=-1)
        return probs, top_idx, top_p / top_p.sum(dim=-1, keepdim=True)

    def forward(self, ctx: Tensor, mask: Tensor | None = None) -> Tensor:
        y = self.backbone(ctx, mask)
        probs, top_idx, weights = self.route(ctx, mask)
        x = torch.cat([y, masked_mean(ctx, mask)], dim=-1)
        mix = torch.zeros_like(y)
        for e, expert in enumerate(self.experts):
            rows, slot = (top_idx == e).nonzero(as_tuple=True)
            if len(rows):
                mix = mix.index_add(0, rows, weights[rows, slot, None] * expert(x[rows]))
        self.balance = balance_loss(probs, top_idx, self.n_experts) if self.training else None
        return l2_normalize(y + mix)

    def extra_repr(self) -> str:
        return f"experts={self.n_experts}, top_k={self.top_k}, balance_weight={self.balance_weight}"


def split_expert_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove the expert options from a model's kwargs (in place); returns them, or {} when ``experts`` is 0."""
    opts = {k: kwargs.pop(k) for k in list(kwargs) if k in EXPERT_OPTIONS}
    if not opts.get("experts"):
        return {}
    return {**EXPERT_OPTIONS, **opts}


def with_experts(backbone: nn.Module, name: str, **opts: Any) -> LaneExperts:
    """The registry's hook: wrap ``backbone`` (model ``name``) in ``LaneExperts``; baselines are refused."""
    if not getattr(backbone, "trainable", True):
        raise ConfigError(f"model {name!r} is a baseline (no parameters): it cannot take experts")
    return LaneExperts(backbone, **opts)


def balance_term(model: nn.Module) -> Tensor | None:
    """``balance_weight * L_bal`` of the last training forward of ``model`` (DDP-wrapped or not), or None."""
    m = getattr(model, "module", model)
    if isinstance(m, LaneExperts) and m.balance is not None and m.balance_weight > 0:
        return m.balance_weight * m.balance
    return None
