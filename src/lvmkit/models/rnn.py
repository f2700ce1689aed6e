"""Recurrent LVMs: gru, lstm, memory_gru and hierarchical_gru.

All of them project the d-dim chunk vectors to a ``hidden`` width, run a recurrence over the context and
project the final state back to d. Padding never changes the result: padded steps are skipped (packed
sequences for the cuDNN-style RNNs, a held state for the step-by-step cell), so a left-padded window gives the
same prediction as the same window without its padding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lvmkit.models.base import LVM, has_padding, positive_int

RNN_CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


class RNNStack(nn.Module):
    """``layers`` single-layer RNNs with pre-LayerNorm residual connections: x <- x + rnn(norm(x)).

    ``forward(x [B, T, w], mask) -> [B, w]``: the (final-normed) output at the last real step of each row.
    """

    def __init__(self, width: int, layers: int = 2, cell: str = "gru", dropout: float = 0.0):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(layers))
        self.rnns = nn.ModuleList(RNN_CELLS[cell](width, width, batch_first=True) for _ in range(layers))
        self.drop = nn.Dropout(dropout)
        self.final_norm = nn.LayerNorm(width)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        if not has_padding(mask):
            for norm, rnn in zip(self.norms, self.rnns, strict=True):
                x = x + self.drop(rnn(norm(x))[0])
            return self.final_norm(x[:, -1])
        # Left padding -> left-aligned rows, then pack: the RNN never sees a padded step.
        B, T, _ = x.shape
        lengths = mask.sum(dim=1)
        idx = (torch.arange(T, device=x.device) + (T - lengths)[:, None]).clamp(max=T - 1)
        x = x.gather(1, idx[..., None].expand_as(x))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        data = packed.data  # [sum(lengths), w]: per-step ops (norm, residual) apply to it directly
        for norm, rnn in zip(self.norms, self.rnns, strict=True):
            out = rnn(packed._replace(data=norm(data)))[0]
            data = data + self.drop(out.data)
        padded, _ = pad_packed_sequence(packed._replace(data=data), batch_first=True)
        last = padded[torch.arange(B, device=x.device), lengths - 1]
        return self.final_norm(last)


class RecurrentLVM(LVM):
    """``gru`` / ``lstm``: d -> hidden, a residual stack of RNN layers, last real state -> d."""

    cell = "gru"

    def __init__(
        self,
        dim: int,
        delta: bool = False,
        hidden: int = 256,
        layers: int = 2,
        dropout: float = 0.0,
        anchor: str | None = None,
        anchor_alpha: float = 0.1,
        anchor_w: float | None = None,
    ):
        super().__init__(dim, delta, anchor, anchor_alpha, anchor_w)
        hidden, layers = positive_int(hidden, "hidden"), positive_int(layers, "layers")
        self.in_proj = nn.Linear(dim, hidden)
        self.stack = RNNStack(hidden, layers, self.cell, dropout)
        self.out_proj = nn.Linear(hidden, dim)
        self.start_at_anchor(self.out_proj)

    def predict(self, ctx: Tensor, mask: Tensor | None) -> Tensor:
        return self.out_proj(self.stack(self.in_proj(ctx), mask))


class GRU(RecurrentLVM):
    cell = "gru"


class LSTM(RecurrentLVM):
    cell = "lstm"


class MemoryGRU(LVM):
    """A GRU that consults an external memory of ``slots`` learned vectors at every step.

    Each step reads the memory by content: weights = softmax(q(h) . keys / sqrt(hidden)) over the slots,
    read = weights @ values. The read vector is fed with the next input, h_t = GRUCell([x_t, read_{t-1}],
    h_{t-1}), and the prediction comes from [h_T, read_T]. Keys and values are nn.Parameters trained with the
    rest: the memory holds patterns shared across documents (the recurrence holds this document's state).
    """

    def __init__(
        self,
        dim: int,
        delta: bool = False,
        hidden: int = 256,
        slots: int = 32,
        dropout: float = 0.0,
        anchor: str | None = None,
        anchor_alpha: float = 0.1,
        anchor_w: float | None = None,
    ):
        super().__init__(dim, delta, anchor, anchor_alpha, anchor_w)
        hidden, slots = positive_int(hidden, "hidden"), positive_int(slots, "slots")
        self.in_proj = nn.Linear(dim, hidden)
        self.query = nn.Linear(hidden, hidden, bias=False)
        self.slot_keys = nn.Parameter(torch.randn(slots, hidden) / math.sqrt(hidden))
        self.slot_values = nn.Parameter(torch.randn(slots, hidden) / math.sqrt(hidden))
        self.cell = nn.GRUCell(2 * hidden, hidden)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(2 * hidden)
        self.out_proj = nn.Linear(2 * hidden, dim)
        self.start_at_anchor(self.out_proj)

    def read(self, h: Tensor) -> Tensor:
        """Content-based read of the memory by hidden state h [B, hidden] -> [B, hidden]."""
        scores = self.query(h) @ self.slot_keys.T / math.sqrt(h.shape[-1])
        return scores.softmax(dim=-1) @ self.slot_values

    def predict(self, ctx: Tensor, mask: Tensor | None) -> Tensor:
        x = self.drop(self.in_proj(ctx))
        h = x.new_zeros(x.shape[0], self.cell.hidden_size)
        r = self.read(h)
        for t in range(x.shape[1]):
            h_new = self.cell(torch.cat([x[:, t], r], dim=-1), h)
            # a padded step keeps the (zero) state, so the padding cannot change anything downstream
            h = h_new if mask is None else torch.where(mask[:, t, None], h_new, h)
            r = self.read(h)
        return self.out_proj(self.norm(torch.cat([h, r], dim=-1)))


class HierarchicalGRU(LVM):
    """Two-level GRU for long contexts: a local GRU summarises each chunk of ``chunk_len`` steps (all chunks
    of all rows in one batched call), a global GRU reads the chunk summaries in order.

    A context of T steps is left-padded to a multiple of ``chunk_len``; chunks that are all padding get no
    summary and are masked out of the global GRU, so e.g. ctx 2,000 = 10 chunks x 200 costs two short
    recurrences instead of one 2,000-step one.
    """

    def __init__(
        self,
        dim: int,
        delta: bool = False,
        hidden: int = 256,
        chunk_len: int = 32,
        local_layers: int = 1,
        global_layers: int = 1,
        dropout: float = 0.0,
        anchor: str | None = None,
        anchor_alpha: float = 0.1,
        anchor_w: float | None = None,
    ):
        super().__init__(dim, delta, anchor, anchor_alpha, anchor_w)
        hidden = positive_int(hidden, "hidden")
        self.chunk_len = positive_int(chunk_len, "chunk_len")
        self.in_proj = nn.Linear(dim, hidden)
        self.local = RNNStack(hidden, positive_int(local_layers, "local_layers"), "gru", dropout)
        self.globl = RNNStack(hidden, positive_int(global_layers, "global_layers"), "gru", dropout)
        self.out_proj = nn.Linear(hidden, dim)
        self.start_at_anchor(self.out_proj)

    def predict(self, ctx: Tensor, mask: Tensor | None) -> Tensor:
        B, T, _ = ctx.shape
        c = self.chunk_len
        if mask is None:
            mask = torch.ones(B, T, dtype=torch.bool, device=ctx.device)
        pad = (-T) % c
        x = self.in_proj(ctx)
        if pad:
            x = torch.cat([x.new_zeros(B, pad, x.shape[-1]), x], dim=1)
            mask = torch.cat([mask.new_zeros(B, pad), mask], dim=1)
        n_chunks = (T + pad) // c
        x = x.reshape(B * n_chunks, c, -1)
        m = mask.reshape(B * n_chunks, c)
        real = m.any(dim=1)  # chunks with at least one real step (a left-padded layout: empty ones first)
        summaries = x.new_zeros(B * n_chunks, x.shape[-1])
        summaries[real] = self.local(x[real], m[real])
        h = self.globl(summaries.reshape(B, n_chunks, -1), real.reshape(B, n_chunks))
        return self.out_proj(h)
