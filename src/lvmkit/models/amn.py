"""AMN, the attention mixture network: the mean of the context, corrected by what attention finds in it.

    baseline = masked mean of the context                               [B, d]
    attended = multi-head attention(query = baseline, keys/values = ctx) [B, d]   (learned q/k/v projections)
    residual = MLP(LayerNorm([baseline, attended]))                      [B, d]
    output   = normalise(baseline + residual)

AMN's default anchor is ``mean``: the MLP's last layer starts at zero, so an untrained AMN *is* the
mean-of-context baseline and training can only move it away from there on purpose. Any other anchor
(``delta: true`` = ``last``, ``blend``, ``mix``, ...) replaces the mean in the output, not in the query. The
query is built from the context alone; it never sees the target.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lvmkit.errors import ConfigError
from lvmkit.models.base import LVM, masked_mean


class AMN(LVM):
    default_anchor = "mean"

    def __init__(
        self,
        dim: int,
        delta: bool = False,
        hidden: int = 256,
        heads: int = 4,
        dropout: float = 0.0,
        anchor: str | None = None,
        anchor_alpha: float = 0.1,
        anchor_w: float | None = None,
    ):
        super().__init__(dim, delta, anchor, anchor_alpha, anchor_w)
        if int(hidden) < 1 or int(heads) < 1 or int(hidden) % int(heads):
            raise ConfigError(f"amn hidden ({hidden}) must be a positive multiple of heads ({heads})")
        self.heads, self.hidden = int(heads), int(hidden)
        self.q = nn.Linear(dim, hidden)
        self.k = nn.Linear(dim, hidden)
        self.v = nn.Linear(dim, hidden)
        self.attn_out = nn.Linear(hidden, dim)
        self.mlp = nn.Sequential(
            nn.LayerNorm(2 * dim),
            nn.Linear(2 * dim, 2 * hidden),
            nn.GELU(),
            nn.Dropout(dropout),
        )
        self.out_proj = nn.Linear(2 * hidden, dim)
        self.start_at_anchor(self.out_proj)

    def attend(self, query: Tensor, ctx: Tensor, mask: Tensor | None) -> Tensor:
        """Multi-head attention of one query per row [B, d] over the context [B, T, d] -> [B, d]."""
        B, T, _ = ctx.shape
        H, hd = self.heads, self.hidden // self.heads
        q = self.q(query).view(B, H, 1, hd)
        k = self.k(ctx).view(B, T, H, hd).transpose(1, 2)  # [B, H, T, hd]
        v = self.v(ctx).view(B, T, H, hd).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)  # [B, H, 1, T]
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        out = scores.softmax(dim=-1) @ v  # [B, H, 1, hd]
        return self.attn_out(out.reshape(B, self.hidden))

    def predict(self, ctx: Tensor, mask: Tensor | None) -> Tensor:
        baseline = masked_mean(ctx, mask)
        attended = self.attend(baseline, ctx, mask)
        return self.out_proj(self.mlp(torch.cat([baseline, attended], dim=-1)))  # LVM.forward adds the anchor
