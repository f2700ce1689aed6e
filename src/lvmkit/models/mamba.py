"""A Mamba-style selective state-space model in pure PyTorch (Gu & Dao, 2023), for long contexts on CPU.

One mixer (``MambaMixer``), per step t of a sequence, with channels c = 1..d_inner and state size N:

    x, z   = in_proj(h).split(2)                     two branches of width d_inner
    x      = SiLU(causal depthwise conv1d(x))        local mixing over d_conv steps
    dt     = softplus(dt_proj(x_proj_dt(x)))         [d_inner] input-dependent step size (rank dt_rank)
    B, C   = x_proj_B(x), x_proj_C(x)                [N] input-dependent input / output maps
    A      = -exp(A_log)                             [d_inner, N], S4D-real init: A[c, n] = -(n+1)
    s_t    = exp(dt A) * s_{t-1} + (dt x) B          the selective scan, state s [d_inner, N]
    y      = s_t . C + D x                           D: a learned skip
    out    = out_proj(y * SiLU(z))

The model stacks ``layers`` residual blocks h <- h + mixer(RMSNorm(h)) between d -> hidden and hidden -> d
projections and predicts from the last position.

The scan. ``selective_scan_reference`` is the recurrence above, one step at a time. ``selective_scan_chunked``
computes the same thing chunk by chunk: with S_t = sum_{r<=t} dt_r A (cumulative log-decay from the chunk
start) and u_r = dt_r x_r B_r, s_t = exp(S_t) s_0 + sum_{r<=t} exp(S_t - S_r) u_r, which is two cumulative
sums evaluated for every step of the chunk at once; the state is carried from chunk to chunk. The exponentials are taken relative to
the chunk's middle step, and each step's log-decay is floored at ``LOG_DECAY_FLOOR`` (a step keeps at least
e^-8 = 0.03% of the state; the reference scan uses the same floor), which bounds every exponent by 8 x 8 = 64
for chunks of up to 16 steps: float32-safe. On CUDA, when the ``mamba_ssm`` package is installed, its fused
``selective_scan_fn`` kernel is used instead (it has no floor; the difference is below 3.4e-4 per such step).

Cost on CPU: the scan materialises the states [B, L, d_inner, N] (B=8, L=1,000, d_inner=256, N=16: 33M floats
per intermediate) and is memory-bound; chunking mainly cuts the Python steps and autograd nodes from L to
L/16. For ctx 1,000 on CPU keep hidden ~128 (d_inner = expand x hidden) and batch ~8 with gradient accumulation.

Padding: padded steps get dt = 0 (decay 1, input 0: the state stays zero) and a zero conv input, so a
left-padded window gives the same prediction as the unpadded one.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lvmkit.errors import ConfigError
from lvmkit.models.base import LVM

LOG_DECAY_FLOOR = -8.0
MAX_CHUNK = 16  # with the floor above: every exponent in a chunk stays within +-64


def selective_scan_reference(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> Tensor:
    """The plain sequential scan. x, dt: [b, L, d]; A: [d, N]; B, C: [b, L, N]; D: [d] -> y [b, L, d]."""
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
    """The same scan, ``chunk_size`` steps at a time in parallel (see the module docstring for the maths)."""
    if not 1 <= chunk_size <= MAX_CHUNK:
        raise ConfigError(f"mamba chunk_size must be in 1..{MAX_CHUNK}, got {chunk_size}")
    b, L, d = x.shape
    s = x.new_zeros(b, d, A.shape[1])
    ys = []
    for start in range(0, L, chunk_size):
        sl = slice(start, min(L, start + chunk_size))
        k = sl.stop - sl.start
        S = (dt[:, sl, :, None] * A).clamp_min(LOG_DECAY_FLOOR).cumsum(dim=1)  # [b, k, d, N]
        R = S[:, (k - 1) // 2, None]  # reference point (middle step): exponents stay within +-64
        E = torch.exp(S - R)  # exp(S_t - R); exp(S_t - S_s) = E_t / E_s
        u = (dt[:, sl] * x[:, sl])[..., None] * B[:, sl, None, :]  # [b, k, d, N]
        states = E * (torch.exp(R) * s[:, None] + torch.cumsum(u / E, dim=1))
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


class MambaMixer(nn.Module):
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
        # dt starts log-uniform in [dt_min, dt_max]: bias = softplus^-1(dt)
        nn.init.uniform_(self.dt_proj.weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        dt = torch.exp(torch.rand(inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(
            torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(inner, 1)
        )
        self.D = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, width, bias=False)

    def forward(self, h: Tensor, mask: Tensor | None) -> Tensor:
        L = h.shape[1]
        x, z = self.in_proj(h).chunk(2, dim=-1)
        if mask is not None:
            x = x * mask[..., None]  # padding enters the conv as the zeros a shorter input would see
        x = F.silu(self.conv(x.transpose(1, 2))[..., :L].transpose(1, 2))  # causal: keep the first L outputs
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt))
        if mask is not None:
            dt = dt * mask[..., None]  # dt = 0: decay 1 and no input, the state skips padded steps
        y = selective_scan(x, dt, -torch.exp(self.A_log), B, C, self.D, self.chunk_size)
        return self.out_proj(y * F.silu(z))


class Mamba(LVM):
    """Stacked residual Mamba blocks; predicts from the last position."""

    def __init__(
        self,
        dim: int,
        delta: bool = False,
        hidden: int = 256,
        layers: int = 4,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        chunk_size: int = MAX_CHUNK,
        dropout: float = 0.0,
    ):
        super().__init__(dim, delta)
        for name, value in [
            ("hidden", hidden),
            ("layers", layers),
            ("d_state", d_state),
            ("d_conv", d_conv),
            ("expand", expand),
        ]:
            if int(value) < 1:
                raise ConfigError(f"mamba {name} must be a positive integer, got {value}")
        if not 1 <= int(chunk_size) <= MAX_CHUNK:
            raise ConfigError(f"mamba chunk_size must be in 1..{MAX_CHUNK}, got {chunk_size}")
        self.in_proj = nn.Linear(dim, hidden)
        self.norms = nn.ModuleList(nn.RMSNorm(hidden) for _ in range(layers))
        self.mixers = nn.ModuleList(
            MambaMixer(hidden, d_state, d_conv, expand, dt_rank, int(chunk_size)) for _ in range(layers)
        )
        self.drop = nn.Dropout(dropout)
        self.norm_f = nn.RMSNorm(hidden)
        self.out_proj = nn.Linear(hidden, dim)
        self.start_at_copy_last(self.out_proj)

    def predict(self, ctx: Tensor, mask: Tensor | None) -> Tensor:
        h = self.in_proj(ctx)
        for norm, mixer in zip(self.norms, self.mixers, strict=True):
            h = h + self.drop(mixer(norm(h), mask))
        return self.out_proj(self.norm_f(h[:, -1]))
