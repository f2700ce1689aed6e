"""Two-tower retrieval: a query tower reads the context, a document tower places bank vectors, and the
next chunk is found by inner product between the two in the bank's space.

Query towers follow the LVM contract (``forward(ctx [B,T,d], mask) -> [B,d]`` unit vectors), so they are
built by name from the model registry, and every LVM of the zoo can serve as a query tower too:

    bigru_pool        bidirectional GRU over the context, masked mean of its outputs, linear to d
                      (the predecessor's design)
    transformer_pool  a bidirectional transformer encoder (recency positions), masked mean, linear to d

Both are L2-normalised by ``LVM.forward``. Mean pooling over a bidirectional encoder sees the whole context
at once: the query is a summary of the window rather than a guess of the next vector.

Like every LVM, a tower takes ``anchor`` (``lvmkit.models.anchors``: none, last, mean, exp_weighted, blend,
mix): its output is ``anchor(ctx) + residual`` and the residual's last layer starts at zero, so an untrained
tower is exactly the heuristic (a randomly initialised tower starts near Recall 0 and, with the few thousand
pairs of a small bank, may never catch up with the heuristic).

Document towers map bank vectors ``[N, d] -> [N, d]`` (unit vectors) and are built with ``build_doc_tower``:

    identity          the bank vectors as they are (no parameters): the index of the bank is the index
    adapter           x + MLP(LayerNorm(x)), L2-normalised; the MLP's last layer starts at zero, so an
                      untrained adapter IS the identity. For evaluation the whole bank is re-encoded
                      through it into a temporary exact index (``lvmkit.tasks.twotower.docbank.DocBank``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lvmkit.errors import ConfigError
from lvmkit.models.base import LVM, has_padding, l2_normalize, masked_mean, positive_int
from lvmkit.models.transformer import TransformerTrunk


def left_align(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Move each row's real (left-padded) steps to the front: returns (x aligned, lengths [B])."""
    B, T, _ = x.shape
    lengths = mask.sum(dim=1)
    idx = (torch.arange(T, device=x.device) + (T - lengths)[:, None]).clamp(max=T - 1)
    return x.gather(1, idx[..., None].expand_as(x)), lengths


class BiGRUPool(LVM):
    """``bigru_pool``: d -> hidden, bidirectional GRU (``layers``), masked mean over time, linear -> d.

    Padding never changes the result: rows are left-aligned and packed, so the GRU (in both directions)
    sees only real steps, and the mean runs over real steps only.
    """

    def __init__(
        self,
        dim: int,
        delta: bool = False,
        hidden: int = 256,
        layers: int = 1,
        dropout: float = 0.0,
        anchor: str | None = None,
        anchor_alpha: float = 0.1,
        anchor_w: float | None = None,
    ):
        super().__init__(dim, delta, anchor, anchor_alpha, anchor_w)
        hidden, layers = positive_int(hidden, "bigru_pool hidden"), positive_int(layers, "bigru_pool layers")
        self.in_proj = nn.Linear(dim, hidden)
        self.gru = nn.GRU(
            hidden,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=True,
            dropout=float(dropout) if layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(float(dropout))
        self.out_proj = nn.Linear(2 * hidden, dim)
        self.start_at_anchor(self.out_proj)

    def predict(self, ctx: Tensor, mask: Tensor | None) -> Tensor:
        x = self.drop(self.in_proj(ctx))
        if not has_padding(mask):
            return self.out_proj(self.gru(x)[0].mean(dim=1))
        x, lengths = left_align(x, mask)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=x.shape[1])
        real = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]  # left-aligned mask
        return self.out_proj(masked_mean(out, real))


class TransformerPool(TransformerTrunk):
    """``transformer_pool``: d -> hidden + recency position, ``layers`` bidirectional pre-LN blocks (padded
    keys masked), masked mean over the real positions, linear -> d."""

    def __init__(
        self,
        dim: int,
        delta: bool = False,
        hidden: int = 256,
        layers: int = 2,
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
        self.build_trunk("transformer_pool", hidden, layers, heads, mlp_ratio, dropout, pos, max_len)
        self.start_at_anchor(self.out_proj)

    def predict(self, ctx: Tensor, mask: Tensor | None) -> Tensor:
        B, T, _ = ctx.shape
        x = self.embed(ctx)
        # Bidirectional: every query position may attend to every real key (an explicit mask also turns
        # off the blocks' causal default). The last position is always real, so no row is empty.
        keys = mask if has_padding(mask) else torch.ones(B, T, dtype=torch.bool, device=ctx.device)
        attn_mask = keys[:, None, None, :].expand(B, 1, T, T)
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.out_proj(masked_mean(self.ln_f(x), mask))


# ---------------------------------------------------------------------------------------- documents
class IdentityDocTower(nn.Module):
    """``identity``: the bank vectors themselves (re-normalised, a no-op for a normalised bank)."""

    trainable = False

    def __init__(self, dim: int):
        super().__init__()
        self.dim = int(dim)

    def forward(self, x: Tensor) -> Tensor:
        return l2_normalize(x)


class AdapterDocTower(nn.Module):
    """``adapter``: ``normalize(x + W2 gelu(W1 LayerNorm(x)))``. W2 starts at zero (identity at init)."""

    trainable = True

    def __init__(self, dim: int, hidden: int = 512, dropout: float = 0.0):
        super().__init__()
        self.dim = int(dim)
        hidden = positive_int(hidden, "adapter hidden")
        self.norm = nn.LayerNorm(self.dim)
        self.up = nn.Linear(self.dim, hidden)
        self.down = nn.Linear(hidden, self.dim)
        self.drop = nn.Dropout(float(dropout))
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, x: Tensor) -> Tensor:
        return l2_normalize(x + self.drop(self.down(nn.functional.gelu(self.up(self.norm(x))))))


DOC_TOWERS: dict[str, type[nn.Module]] = {"identity": IdentityDocTower, "adapter": AdapterDocTower}


def build_doc_tower(name: str, dim: int, **kwargs: Any) -> nn.Module:
    """A document tower by name (``identity`` takes no options; ``adapter``: hidden, dropout).

    The module carries ``spec`` (``build_doc_tower(**spec)`` rebuilds it), like the registry's models.
    """
    if name not in DOC_TOWERS:
        raise ConfigError(f"unknown document tower {name!r}; allowed: {', '.join(DOC_TOWERS)}")
    try:
        tower = DOC_TOWERS[name](int(dim), **kwargs)
    except TypeError as e:
        raise ConfigError(f"document tower {name!r} cannot be built with options {kwargs}: {e}") from None
    tower.spec = {"name": name, "dim": int(dim), **kwargs}
    return tower
