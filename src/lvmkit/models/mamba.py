"""Mamba-style selective state-space models in pure PyTorch, for long contexts on CPU.

Two variants of the same idea, a linear recurrence whose step size and input/output maps depend on the input:

``variant="ssd"`` (the default): Mamba-2's "state space duality" layer (Dao & Gu, 2024). Channels are grouped
in heads of ``headdim`` channels; per head h and step t a scalar step size dt[t, h] and a scalar decay rate A[h]
< 0, and one input map B_t and output map C_t (size N = d_state) shared by all heads:

    x, B, C = SiLU(causal depthwise conv1d(x, B, C))     the conv mixes the last d_conv steps
    dt      = softplus(dt_in + dt_bias)                   [heads] input-dependent step size
    s_t     = exp(dt_t A) s_{t-1} + dt_t x_t B_t^T        state s [heads, headdim, N]
    y_t     = s_t C_t + D x_t                             D: a learned skip per head
    out     = out_proj(RMSNorm(y * SiLU(z)))              z: the gate branch

Because the decay is one scalar per head and step, the scan over a chunk of Lc steps is a masked matrix
product (``ssd_scan_chunked``). With cumulative log-decays S_t = sum_{r<=t} dt_r A inside the chunk:

    y_t = sum_{r<=t} (C_t . B_r) exp(S_t - S_r) dt_r x_r   +   exp(S_t) s_in C_t     (s_in: the state entering)

The first term is (C B^T o Lmask) X, an [Lc, Lc] matrix per chunk and head, the decay mask computed in log space
(``segsum``: sums of log-decays, masked to the lower triangle, never a ratio of two exponentials) so every
exponent is <= 0 and float32 cannot overflow whatever dt is. The second term carries the state from chunk to
chunk; the chunk-to-chunk recurrence is itself a small [chunks, chunks] masked matrix product. All of it is
batched matmuls over [batch, heads, chunks]: no [batch, T, channels, N] tensor is ever built, which is what
makes it fast without custom kernels. On CUDA, when ``mamba_ssm`` is installed, its fused
``mamba_chunk_scan_combined`` kernel computes the same scan.

``variant="s6"``: Mamba-1 (Gu & Dao, 2023), a diagonal state per channel c with its own decay rates A[c, n]
(S4D-real init A[c, n] = -(n+1)), dt of rank ``dt_rank`` per channel, B and C shared by all channels:

    s_t = exp(dt_t A) * s_{t-1} + (dt_t x_t) B_t     state [d_inner, N];   y_t = s_t . C_t + D x_t
    out = out_proj(y * SiLU(z))

Its chunked scan (``selective_scan_chunked``) has to build the states [batch, Lc, d_inner, N] and factor the
per-channel decays exp(S_t - S_r) = exp(S_t - R) exp(R - S_r) around the chunk's middle step R, so its chunks
are at most ``MAX_CHUNK`` = 16 steps with each step's log-decay floored at ``LOG_DECAY_FLOOR`` (a step keeps at
least e^-8 of the state; the reference scan uses the same floor), bounding every exponent by 8 x 8 = 64. It is
memory-bound and several times slower than ssd on CPU at ctx 1,000 (benchmarks/bench_mamba_scan.py). On CUDA with ``mamba_ssm`` installed its fused
``selective_scan_fn`` kernel is used (no floor; the difference is below 3.4e-4 per such step).

Both stack ``layers`` residual blocks h <- h + mixer(RMSNorm(h)) between d -> hidden and hidden -> d
projections and predict from the last position.

Padding: padded steps get dt = 0 (decay 1, no input: the state stays zero) and a zero conv input, so a
left-padded window gives the same prediction as the unpadded one.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lvmkit.errors import ConfigError
from lvmkit.models.base import LVM, has_padding

VARIANTS = ("ssd", "s6")
SSD_CHUNK = 32  # default longest ssd chunk: on CPU 16-32 beat 64 by ~15% per step at ctx 1,000
LOG_DECAY_FLOOR = -8.0  # s6 only
MAX_CHUNK = 16  # s6 only: with the floor above, every exponent in a chunk stays within +-64


# ----------------------------------------------------------------------------- ssd (Mamba-2) scan
def ssd_scan_reference(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> Tensor:
    """The plain sequential ssd recurrence. x: [b, L, H, P]; dt: [b, L, H]; A, D: [H]; B, C: [b, L, N]."""
    b, L, H, P = x.shape
    s = x.new_zeros(b, H, P, B.shape[-1])
    ys = []
    for t in range(L):
        decay = torch.exp(dt[:, t] * A)[..., None, None]  # [b, H, 1, 1]
        s = decay * s + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, None, None, :]
        ys.append(s @ C[:, t, None, :, None])  # [b, H, P, 1]
    return torch.stack(ys, dim=1).squeeze(-1) + x * D[:, None]


def segsum(a: Tensor) -> Tensor:
    """``seg[..., t, r] = a[..., r+1] + ... + a[..., t]`` for r <= t (0 on the diagonal), -inf above it.

    exp(seg) is the lower-triangular decay mask "from step r to step t". It is a cumulative sum down each column
    of a masked copy, not a difference S_t - S_r of running sums, so it stays exact however long the decay has
    run, and exp(-inf) = 0 above the diagonal has a zero gradient (no overflow, no NaN).
    """
    T = a.shape[-1]
    ones = torch.ones(T, T, dtype=torch.bool, device=a.device)
    seg = a[..., :, None].expand(*a.shape, T).masked_fill(~ones.tril(-1), 0.0).cumsum(dim=-2)
    return seg.masked_fill(~ones.tril(), -math.inf)


def ssd_scan_chunked(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, chunk_size: int = SSD_CHUNK
) -> Tensor:
    """The ssd scan as batched matmuls, in chunks of at most ``chunk_size`` steps (see the module docstring).

    The L steps are split into ceil(L / chunk_size) chunks of equal length Lc <= chunk_size (the last one
    completed with a few zero steps, which change nothing before them: the scan is causal), so a short context
    is one small chunk and with chunk_size 64, ctx 100 is two chunks of 50, not two of 64.
    """
    if int(chunk_size) < 1:
        raise ConfigError(f"mamba chunk_size must be a positive integer, got {chunk_size}")
    b, L, H, P = x.shape
    N = B.shape[-1]
    Lc = -(-L // -(-L // int(chunk_size)))  # ceil(L / number of chunks)
    pad = -L % Lc
    xdt = F.pad(x * dt[..., None], (0, 0, 0, 0, 0, pad))
    a, B, C = F.pad(dt * A, (0, 0, 0, pad)), F.pad(B, (0, 0, 0, pad)), F.pad(C, (0, 0, 0, pad))
    c = (L + pad) // Lc
    X = xdt.view(b, c, Lc, H, P).permute(0, 3, 1, 2, 4)  # [b, H, c, Lc, P]
    a = a.view(b, c, Lc, H).permute(0, 3, 1, 2)  # [b, H, c, Lc] log-decay of each step, <= 0
    B, C = B.view(b, 1, c, Lc, N), C.view(b, 1, c, Lc, N)  # shared by the heads

    # Steps t = 0 .. Lc-1 of a chunk; X_r = dt_r x_r; a_t = dt_t A.
    # 1. inside each chunk: y_t = sum_{r<=t} (C_t . B_r) exp(a_{r+1} + ... + a_t) X_r
    decay = torch.exp(segsum(a))  # [b, H, c, Lc, Lc]
    Y = ((C @ B.transpose(-1, -2)) * decay) @ X
    # 2. the state each chunk leaves behind from its own inputs: sum_r exp(a_{r+1} + ... + a_{Lc-1}) X_r B_r^T
    states = (X * decay[..., -1, :, None]).transpose(-1, -2) @ B  # [b, H, c, P, N]
    # 3. the state entering chunk k: sum_{j<k} exp(total log-decay of chunks j+1 .. k-1) states_j
    totals = F.pad(a.sum(-1), (1, 0))  # [b, H, c+1]: 0, then each chunk's total
    carry = torch.exp(segsum(totals))[..., :-1, 1:]  # [b, H, c, c]: row k, column j, zero for j >= k
    entering = (carry @ states.flatten(-2)).view(b, H, c, P, N)
    # 4. what the entering state adds at step t of the chunk: exp(a_0 + ... + a_t) C_t s_in
    Y = Y + (C @ entering.transpose(-1, -2)) * torch.exp(a.cumsum(-1))[..., None]
    y = Y.permute(0, 2, 3, 1, 4).reshape(b, c * Lc, H, P)[:, :L]
    return y + x * D[:, None]


@functools.lru_cache(maxsize=1)
def _ssd_cuda_kernel():
    """mamba_ssm's fused Mamba-2 chunk scan, or None when the package is not installed (the usual case)."""
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception:  # not installed, or installed without a working CUDA/triton build
        return None
    return mamba_chunk_scan_combined


def ssd_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, chunk_size: int) -> Tensor:
    """Dispatch: mamba_ssm's CUDA kernel when available for CUDA tensors, else the chunked scan (in float32)."""
    dtype = x.dtype
    x, dt, A, B, C, D = (t.float() for t in (x, dt, A, B, C, D))
    kernel = _ssd_cuda_kernel() if x.is_cuda else None
    if kernel is not None:  # it takes dt and x separately and B, C as [b, L, groups=1, N]
        y = kernel(x.contiguous(), dt.contiguous(), A, B[:, :, None].contiguous(), C[:, :, None].contiguous(),
                   chunk_size, D=D)  # fmt: skip
        return y.to(dtype)
    return ssd_scan_chunked(x, dt, A, B, C, D, chunk_size).to(dtype)


# ------------------------------------------------------------------------------ s6 (Mamba-1) scan
def selective_scan_reference(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> Tensor:
    """The plain sequential s6 scan. x, dt: [b, L, d]; A: [d, N]; B, C: [b, L, N]; D: [d] -> y [b, L, d]."""
    b, L, d = x.shape
    s = x.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(L):
        decay = torch.exp((dt[:, t, :, None] * A).clamp_min(LOG_DECAY_FLOOR))  # [b, d, N]
        s = decay * s + (dt[:, t] * x[:, t])[..., None] * B[:, t, None, :]
        ys.append((s * C[:, t, None, :]).sum(-1))
    return torch.stack(ys, dim=1) + x * D


def selective_scan_chunked(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, chunk_size: int = MAX_CHUNK
) -> Tensor:
    """The s6 scan, ``chunk_size`` steps at a time in parallel.

    With S_t = sum_{r<=t} dt_r A (cumulative log-decay from the chunk start, per channel and state) and
    u_r = dt_r x_r B_r: s_t = exp(S_t) s_0 + sum_{r<=t} exp(S_t - S_r) u_r, two cumulative sums over the chunk.
    The exponentials are taken relative to the chunk's middle step (exponents within +-64, see MAX_CHUNK).
    """
    if not 1 <= chunk_size <= MAX_CHUNK:
        raise ConfigError(f"mamba chunk_size must be in 1..{MAX_CHUNK} for variant 's6', got {chunk_size}")
    b, L, d = x.shape
    s = x.new_zeros(b, d, A.shape[1])
    ys = []
    for start in range(0, L, chunk_size):
        sl = slice(start, min(L, start + chunk_size))
        k = sl.stop - sl.start
        S = (dt[:, sl, :, None] * A).clamp_min(LOG_DECAY_FLOOR).cumsum(dim=1)  # [b, k, d, N]
        R = S[:, (k - 1) // 2, None]  # reference point (middle step): exponents stay within +-64
        # exp(S_t - S_r) = exp(S_t - R) exp(R - S_r). Two exponentials, not a division by exp(S_r - R): the
        # gradient of u / E is -u / E^2, which overflows float32 (e^128) where E is e^-64.
        E, E_inv = torch.exp(S - R), torch.exp(R - S)
        u = (dt[:, sl] * x[:, sl])[..., None] * B[:, sl, None, :]  # [b, k, d, N]
        states = E * (torch.exp(R) * s[:, None] + torch.cumsum(u * E_inv, dim=1))
        y = states.view(b * k, d, -1) @ C[:, sl].reshape(b * k, -1, 1)  # s_t . C_t
        ys.append(y.view(b, k, d))
        s = states[:, -1]
    return torch.cat(ys, dim=1) + x * D


@functools.lru_cache(maxsize=1)
def _cuda_kernel():
    """mamba_ssm's fused selective scan, or None when the package is not installed (the usual case)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # not installed, or installed without a working CUDA build
        return None
    return selective_scan_fn


def selective_scan(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, chunk_size: int
) -> Tensor:
    """Dispatch: mamba_ssm's CUDA kernel when available for CUDA tensors, else the chunked scan (in float32)."""
    dtype = x.dtype
    x, dt, A, B, C, D = (t.float() for t in (x, dt, A, B, C, D))
    kernel = _cuda_kernel() if x.is_cuda else None
    if kernel is not None:
        y = kernel(
            *(t.transpose(1, 2).contiguous() for t in (x, dt)),
            A.contiguous(),
            *(t.transpose(1, 2).contiguous() for t in (B, C)),
            D,
        )
        return y.transpose(1, 2).to(dtype)
    return selective_scan_chunked(x, dt, A, B, C, D, chunk_size).to(dtype)


# ------------------------------------------------------------------------------------------ mixers
def causal_conv(x: Tensor, conv: nn.Conv1d) -> Tensor:
    """``conv`` (depthwise, kernel K) applied causally to x [b, L, channels]: out_t = bias + sum_k w_k x_{t-K+1+k}.

    The same numbers as ``conv(x.transpose(1, 2))`` with K-1 zeros of padding, first L outputs kept, but written
    as K shifted multiply-adds: on CPU, Conv1d's depthwise backward took over a second per layer at batch 8,
    ctx 1,000 (a third of a whole ssd training step); this costs a few elementwise passes.
    """
    K, L = conv.kernel_size[0], x.shape[1]
    w = conv.weight[:, 0, :]  # [channels, K]
    xp = F.pad(x, (0, 0, K - 1, 0))  # K-1 zero steps before the start
    out = xp[:, :L] * w[:, 0] if conv.bias is None else torch.addcmul(conv.bias, xp[:, :L], w[:, 0])
    for k in range(1, K):
        out = torch.addcmul(out, xp[:, k : k + L], w[:, k])
    return out


def _dt_bias(n: int, dt_min: float, dt_max: float) -> Tensor:
    """softplus^-1 of step sizes drawn log-uniform in [dt_min, dt_max]: softplus(bias) starts there."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    return dt + torch.log(-torch.expm1(-dt))


class Mamba2Mixer(nn.Module):
    """The ssd mixer (Mamba-2): scalar decay per head, B and C shared by the heads, gated RMSNorm output."""

    def __init__(
        self,
        width: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        chunk_size: int = SSD_CHUNK,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
    ):
        super().__init__()
        inner = expand * width
        if inner % headdim:
            raise ConfigError(
                f"mamba headdim must divide expand x hidden = {inner} for variant 'ssd', got {headdim}"
            )
        self.inner, self.heads, self.headdim = inner, inner // headdim, headdim
        self.d_state, self.chunk_size = d_state, chunk_size
        # one projection for the gate z, the conv branch (x, B, C) and the per-head step sizes
        self.in_proj = nn.Linear(width, 2 * inner + 2 * d_state + self.heads, bias=False)
        conv_dim = inner + 2 * d_state
        self.conv = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1)
        self.dt_bias = nn.Parameter(_dt_bias(self.heads, dt_min, dt_max))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.heads).uniform_(1.0, 16.0)))  # Mamba-2's A init
        self.D = nn.Parameter(torch.ones(self.heads))
        self.norm = nn.RMSNorm(inner)
        self.out_proj = nn.Linear(inner, width, bias=False)

    def forward(self, h: Tensor, mask: Tensor | None) -> Tensor:
        b, L, _ = h.shape
        z, xBC, dt = self.in_proj(h).split([self.inner, self.inner + 2 * self.d_state, self.heads], dim=-1)
        if mask is not None:
            xBC = xBC * mask[..., None]  # padding enters the conv as the zeros a shorter input would see
        xBC = F.silu(causal_conv(xBC, self.conv))
        x, B, C = xBC.split([self.inner, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(dt + self.dt_bias)
        if mask is not None:
            dt = dt * mask[..., None]  # dt = 0: decay 1 and no input, the state skips padded steps
        x = x.reshape(b, L, self.heads, self.headdim)
        y = ssd_scan(x, dt, -torch.exp(self.A_log), B, C, self.D, self.chunk_size)
        return self.out_proj(self.norm(y.reshape(b, L, self.inner) * F.silu(z)))


class MambaMixer(nn.Module):
    """The s6 mixer (Mamba-1): per-channel diagonal decays, low-rank dt, output y * SiLU(z)."""

    def __init__(
        self,
        width: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        chunk_size: int = MAX_CHUNK,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
    ):
        super().__init__()
        inner = expand * width
        self.dt_rank = dt_rank or math.ceil(width / 16)
        self.d_state, self.chunk_size = d_state, chunk_size
        self.in_proj = nn.Linear(width, 2 * inner, bias=False)
        self.conv = nn.Conv1d(inner, inner, d_conv, groups=inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, inner)
        nn.init.uniform_(self.dt_proj.weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        with torch.no_grad():
            self.dt_proj.bias.copy_(_dt_bias(inner, dt_min, dt_max))
        self.A_log = nn.Parameter(
            torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(inner, 1)
        )
        self.D = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, width, bias=False)

    def forward(self, h: Tensor, mask: Tensor | None) -> Tensor:
        x, z = self.in_proj(h).chunk(2, dim=-1)
        if mask is not None:
            x = x * mask[..., None]  # padding enters the conv as the zeros a shorter input would see
        x = F.silu(causal_conv(x, self.conv))
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt))
        if mask is not None:
            dt = dt * mask[..., None]  # dt = 0: decay 1 and no input, the state skips padded steps
        y = selective_scan(x, dt, -torch.exp(self.A_log), B, C, self.D, self.chunk_size)
        return self.out_proj(y * F.silu(z))


# ------------------------------------------------------------------------------------------- model
class Mamba(LVM):
    """Stacked residual Mamba blocks; predicts from the last position.

    ``variant``: "ssd" (Mamba-2, fast on CPU; uses ``headdim``) or "s6" (Mamba-1; uses ``dt_rank``).
    ``chunk_size``: the longest scan chunk, default 32 for ssd and 16 (the most it allows) for s6.
    """

    def __init__(
        self,
        dim: int,
        delta: bool = False,
        hidden: int = 256,
        layers: int = 4,
        variant: str = "ssd",
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        dt_rank: int | None = None,
        chunk_size: int | None = None,
        dropout: float = 0.0,
        anchor: str | None = None,
        anchor_alpha: float = 0.1,
        anchor_w: float | None = None,
    ):
        super().__init__(dim, delta, anchor, anchor_alpha, anchor_w)
        if variant not in VARIANTS:
            raise ConfigError(f"mamba variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        for name, value in [
            ("hidden", hidden),
            ("layers", layers),
            ("d_state", d_state),
            ("d_conv", d_conv),
            ("expand", expand),
            ("headdim", headdim),
        ]:
            if int(value) < 1:
                raise ConfigError(f"mamba {name} must be a positive integer, got {value}")
        self.variant = variant
        if variant == "ssd":
            chunk_size = SSD_CHUNK if chunk_size is None else int(chunk_size)
            if chunk_size < 1:
                raise ConfigError(f"mamba chunk_size must be a positive integer, got {chunk_size}")
            mixer = functools.partial(Mamba2Mixer, headdim=headdim)
        else:
            chunk_size = MAX_CHUNK if chunk_size is None else int(chunk_size)
            if not 1 <= chunk_size <= MAX_CHUNK:
                raise ConfigError(
                    f"mamba chunk_size must be in 1..{MAX_CHUNK} for variant 's6', got {chunk_size}"
                )
            mixer = functools.partial(MambaMixer, dt_rank=dt_rank)
        self.in_proj = nn.Linear(dim, hidden)
        self.norms = nn.ModuleList(nn.RMSNorm(hidden) for _ in range(layers))
        self.mixers = nn.ModuleList(
            mixer(hidden, d_state, d_conv, expand, chunk_size=chunk_size) for _ in range(layers)
        )
        self.drop = nn.Dropout(dropout)
        self.norm_f = nn.RMSNorm(hidden)
        self.out_proj = nn.Linear(hidden, dim)
        self.start_at_anchor(self.out_proj)

    def predict(self, ctx: Tensor, mask: Tensor | None) -> Tensor:
        mask = mask if has_padding(mask) else None  # no padding: skip the masking work
        h = self.in_proj(ctx)
        for norm, mixer in zip(self.norms, self.mixers, strict=True):
            h = h + self.drop(mixer(norm(h), mask))
        return self.out_proj(self.norm_f(h[:, -1]))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, variant={self.variant}"
