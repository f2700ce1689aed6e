"""A causal decoder-only transformer over the context vectors (GPT-style, pre-LayerNorm blocks).

    x = in_proj(ctx) + position(recency)        recency = T-1-t: 0 for the most recent chunk
    x = x + attn(ln1(x)); x = x + mlp(ln2(x))   (layers times; causal, padded keys masked)
    prediction = out_proj(ln_f(x[:, -1]))

Positions count back from the most recent chunk, so left padding never shifts them and a padded window
predicts exactly what the unpadded one does. ``pos="learned"`` learns one vector per recency up to
``max_len``; ``pos="sinusoidal"`` uses the fixed sin/cos table of Vaswani et al.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lvmkit.errors import ConfigError
from lvmkit.models.base import LVM, has_padding, positive_int

POSITIONS = ("learned", "sinusoidal")


def sinusoidal_table(n: int, width: int) -> Tensor:
    """[n, width] table: sin(p / 10000^(2i/width)) in even columns, cos in odd ones."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(n, width)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: width // 2])
    return table


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        B, T, W = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            is_causal=attn_mask is None,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.proj(y.transpose(1, 2).reshape(B, T, W))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, dropout)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width),
            nn.GELU(),
            nn.Linear(mlp_ratio * width, width),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        x = x + self.attn(self.ln1(x), attn_mask)
        return x + self.mlp(self.ln2(x))


class TransformerTrunk(LVM):
    """What ``transformer`` (causal, reads the last position) and the two-tower ``transformer_pool``
    (bidirectional, mean-pooled) share: d -> hidden plus a recency position, ``layers`` pre-LN blocks, a
    final LayerNorm, and hidden -> d. Subclasses call ``build_trunk`` in ``__init__`` and ``embed`` first in
    ``predict``; the attention mask and the read-out are theirs."""

    def build_trunk(
        self,
        name: str,
        hidden: int,
        layers: int,
        heads: int,
        mlp_ratio: int,
        dropout: float,
        pos: str,
        max_len: int,
    ) -> None:
        """Check the options (errors name ``name``) and create in_proj, pos, drop, blocks, ln_f, out_proj
        (in this order: the seeded initialisation and the state_dict keys depend on it)."""
        if int(hidden) < 1 or int(heads) < 1 or int(hidden) % int(heads):
            raise ConfigError(f"{name} hidden ({hidden}) must be a positive multiple of heads ({heads})")
        if pos not in POSITIONS:
            raise ConfigError(f"{name} pos {pos!r} is not known; allowed: {', '.join(POSITIONS)}")
        for option, v in (("layers", layers), ("mlp_ratio", mlp_ratio), ("max_len", max_len)):
            positive_int(v, f"{name} {option}")
        self.trunk_name = name
        self.max_len = int(max_len)
        self.in_proj = nn.Linear(self.dim, hidden)
        if pos == "learned":
            self.pos = nn.Parameter(torch.randn(self.max_len, hidden) * 0.02)
        else:
            self.register_buffer("pos", sinusoidal_table(self.max_len, hidden), persistent=False)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(hidden, int(heads), int(mlp_ratio), dropout) for _ in range(int(layers))
        )
        self.ln_f = nn.LayerNorm(hidden)
        self.out_proj = nn.Linear(hidden, self.dim)

    def embed(self, ctx: Tensor) -> Tensor:
        """[B, T, hidden]: ``drop(in_proj(ctx) + position)``, position T-1 (the newest chunk) at recency 0."""
        length = ctx.shape[1]
        if length > self.max_len:
            raise ConfigError(
                f"context of {length} vectors exceeds the {self.trunk_name}'s max_len={self.max_len}; "
                "build it with a larger max_len or use a shorter ctx"
            )
        return self.drop(self.in_proj(ctx) + self.pos[:length].flip(0))


class TransformerLVM(TransformerTrunk):
    def __init__(
        self,
        dim: int,
        delta: bool = False,
        hidden: int = 256,
        layers: int = 4,
        heads: int = 4,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
        pos: str = "learned",
        max_len: int = 2000,
        anchor: str | None = None,
        anchor_alpha: float = 0.1,
        anchor_w: float | None = None,
    ):
        super().__init__(dim, delta, anchor, anchor_alpha, anchor_w)
        self.build_trunk("transformer", hidden, layers, heads, mlp_ratio, dropout, pos, max_len)
        self.start_at_anchor(self.out_proj)

    def predict(self, ctx: Tensor, mask: Tensor | None) -> Tensor:
        length = ctx.shape[1]
        x = self.embed(ctx)
        attn_mask = None
        if has_padding(mask):
            # causal AND (key is real OR key is the query itself): a padded query attends only to itself, so
            # no row is empty, and real queries never see padding
            eye = torch.eye(length, dtype=torch.bool, device=ctx.device)
            causal = torch.ones(length, length, dtype=torch.bool, device=ctx.device).tril()
            attn_mask = (causal & (mask[:, None, :] | eye))[:, None]  # [B, 1, T, T]
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.out_proj(self.ln_f(x[:, -1]))
