"""Mamba: the chunked scans equal their plain sequential recurrences (values and gradients), both variants.

ssd (Mamba-2, scalar decay per head) and s6 (Mamba-1, diagonal decay per channel) each have a step-by-step
reference scan, checked here against the recurrence written out in float64 numpy, and a fast chunked scan,
checked against the reference. The model-level contract (unit output, delta mode, padding, overfitting) is
tested for the default variant with every other model in test_models.py, and here for both variants.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lvmkit.errors import ConfigError
from lvmkit.models import build_model
from lvmkit.models.mamba import (
    LOG_DECAY_FLOOR,
    VARIANTS,
    Mamba2Mixer,
    MambaMixer,
    causal_conv,
    selective_scan,
    selective_scan_chunked,
    selective_scan_reference,
    ssd_scan,
    ssd_scan_chunked,
    ssd_scan_reference,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def max_rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return (got - ref).abs().max().item() / max(1.0, ref.abs().max().item())


# ------------------------------------------------------------------------------------------- ssd scan
def ssd_inputs(b=2, L=45, H=3, P=4, N=5, seed=0, dt_scale=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, H, P, generator=g, dtype=dtype)
    dt = F.softplus(torch.randn(b, L, H, generator=g, dtype=dtype) - 1.0) * dt_scale
    A = -torch.exp(torch.randn(H, generator=g, dtype=dtype))  # a spread of decay rates
    B = torch.randn(b, L, N, generator=g, dtype=dtype)
    C = torch.randn(b, L, N, generator=g, dtype=dtype)
    D = torch.randn(H, generator=g, dtype=dtype)
    return x, dt, A, B, C, D


def numpy_ssd(x, dt, A, B, C, D):
    """s_t = exp(dt_t A) s_{t-1} + dt_t x_t B_t^T per head, y_t = s_t C_t + D x_t, element by element."""
    x, dt, A, B, C, D = (t.double().numpy() for t in (x, dt, A, B, C, D))
    b, L, H, P = x.shape
    y = np.zeros_like(x)
    for i in range(b):
        for h in range(H):
            s = np.zeros((P, B.shape[-1]))
            for t in range(L):
                s = np.exp(dt[i, t, h] * A[h]) * s + dt[i, t, h] * np.outer(x[i, t, h], B[i, t])
                y[i, t, h] = s @ C[i, t] + D[h] * x[i, t, h]
    return y


def test_ssd_reference_scan_is_the_recurrence():
    inputs = ssd_inputs(L=12)
    np.testing.assert_allclose(ssd_scan_reference(*inputs).double().numpy(), numpy_ssd(*inputs), atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
@pytest.mark.parametrize("dt_scale", [0.1, 1.0, 50.0])  # 50: decays down to e^-500 per step, no floor needed
def test_ssd_chunked_scan_equals_sequential(chunk, dt_scale):
    inputs = ssd_inputs(dt_scale=dt_scale, seed=chunk)
    ref = ssd_scan_reference(*inputs)
    got = ssd_scan_chunked(*inputs, chunk_size=chunk)
    assert torch.isfinite(got).all()
    assert max_rel_err(got, ref) <= 1e-4


@pytest.mark.parametrize("dt_scale", [1.0, 50.0])
def test_ssd_chunked_scan_gradients_equal_sequential(dt_scale):
    leaves = [t.clone().requires_grad_(True) for t in ssd_inputs(L=33, seed=3, dt_scale=dt_scale)]
    w = torch.randn(2, 33, 3, 4, generator=torch.Generator().manual_seed(4))
    grads = []
    for fn in (ssd_scan_reference, lambda *a: ssd_scan_chunked(*a, chunk_size=8)):
        for t in leaves:
            t.grad = None
        (fn(*leaves) * w).sum().backward()
        grads.append([t.grad.clone() for t in leaves])
    for g_ref, g_chunk in zip(*grads, strict=True):
        assert torch.isfinite(g_chunk).all()
        torch.testing.assert_close(g_chunk, g_ref, atol=1e-4, rtol=1e-4)


def test_ssd_zero_dt_skips_a_step():
    """dt = 0 is how padding is skipped: the state neither decays nor takes input at that step."""
    x, dt, A, B, C, D = ssd_inputs(b=1, L=40)
    dt[:, :9] = 0.0
    y = ssd_scan_chunked(x, dt, A, B, C, D, chunk_size=8)  # the skipped steps end inside the second chunk
    y_short = ssd_scan_chunked(x[:, 9:], dt[:, 9:], A, B[:, 9:], C[:, 9:], D, chunk_size=8)
    torch.testing.assert_close(y[:, 9:], y_short, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y[:, :9], x[:, :9] * D[:, None])  # only the D skip is left


def test_ssd_dispatch_uses_the_chunked_scan_on_cpu_and_keeps_dtype():
    inputs = ssd_inputs(L=20, dtype=torch.float64)
    y = ssd_scan(*inputs, chunk_size=8)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, ssd_scan_chunked(*(t.float() for t in inputs), chunk_size=8).double())


# -------------------------------------------------------------------------------------------- s6 scan
def scan_inputs(b=2, L=45, d=6, N=4, seed=0, dt_scale=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, d, generator=g, dtype=dtype)
    dt = F.softplus(torch.randn(b, L, d, generator=g, dtype=dtype) - 1.0) * dt_scale
    A = -torch.exp(torch.randn(d, N, generator=g, dtype=dtype))  # spread of decay rates
    B = torch.randn(b, L, N, generator=g, dtype=dtype)
    C = torch.randn(b, L, N, generator=g, dtype=dtype)
    D = torch.randn(d, generator=g, dtype=dtype)
    return x, dt, A, B, C, D


def numpy_scan(x, dt, A, B, C, D):
    """The s6 recurrence written out element by element in float64: an independent check of the reference."""
    x, dt, A, B, C, D = (t.double().numpy() for t in (x, dt, A, B, C, D))
    b, L, d = x.shape
    y = np.zeros((b, L, d))
    for i in range(b):
        s = np.zeros(A.shape)
        for t in range(L):
            decay = np.exp(np.maximum(dt[i, t][:, None] * A, LOG_DECAY_FLOOR))
            s = decay * s + (dt[i, t] * x[i, t])[:, None] * B[i, t][None, :]
            y[i, t] = s @ C[i, t] + D * x[i, t]
    return y


def test_reference_scan_is_the_recurrence():
    inputs = scan_inputs(L=12)
    np.testing.assert_allclose(
        selective_scan_reference(*inputs).double().numpy(), numpy_scan(*inputs), atol=1e-5
    )


@pytest.mark.parametrize("chunk", [1, 7, 16])
@pytest.mark.parametrize("dt_scale", [0.1, 20.0])  # 20: many steps hit the log-decay floor
def test_chunked_scan_equals_sequential(chunk, dt_scale):
    inputs = scan_inputs(dt_scale=dt_scale, seed=chunk)
    assert (
        max_rel_err(selective_scan_chunked(*inputs, chunk_size=chunk), selective_scan_reference(*inputs))
        <= 1e-4
    )


@pytest.mark.parametrize("chunk", [8, 16])
@pytest.mark.parametrize("dt_scale", [1.0, 20.0])  # 20: exponents near the +-64 bound, whose squares overflow
def test_chunked_scan_gradients_equal_sequential(chunk, dt_scale):
    leaves = [t.clone().requires_grad_(True) for t in scan_inputs(L=33, seed=3, dt_scale=dt_scale)]
    w = torch.randn(2, 33, 6, generator=torch.Generator().manual_seed(4))
    grads = []
    for fn in (selective_scan_reference, lambda *a: selective_scan_chunked(*a, chunk_size=chunk)):
        for t in leaves:
            t.grad = None
        (fn(*leaves) * w).sum().backward()
        grads.append([t.grad.clone() for t in leaves])
    for g_ref, g_chunk in zip(*grads, strict=True):
        assert torch.isfinite(g_chunk).all()
        torch.testing.assert_close(g_chunk, g_ref, atol=1e-4, rtol=1e-4)


def test_dispatch_uses_the_chunked_scan_on_cpu_and_keeps_dtype():
    inputs = scan_inputs(L=20, dtype=torch.float64)
    y = selective_scan(*inputs, chunk_size=16)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, selective_scan_chunked(*(t.float() for t in inputs)).double())


def test_zero_dt_skips_a_step():
    x, dt, A, B, C, D = scan_inputs(b=1, L=10)
    dt[:, :4] = 0.0
    y = selective_scan_chunked(x, dt, A, B, C, D)
    y_short = selective_scan_chunked(x[:, 4:], dt[:, 4:], A, B[:, 4:], C[:, 4:], D)
    torch.testing.assert_close(y[:, 4:], y_short)
    torch.testing.assert_close(y[:, :4], x[:, :4] * D)  # only the D skip is left


# --------------------------------------------------------------------------------- mixers and model
def test_causal_conv_equals_padded_conv1d():
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3)
    x = torch.randn(2, 11, 6)
    expected = conv(x.transpose(1, 2))[..., :11].transpose(1, 2)  # zero padding both sides, first L outputs
    torch.testing.assert_close(causal_conv(x, conv), expected)


@pytest.mark.parametrize(
    "mixer, sizes",
    [(lambda cs: Mamba2Mixer(8, d_state=4, headdim=4, chunk_size=cs), (16, 3)),
     (lambda cs: MambaMixer(8, d_state=4, chunk_size=cs), (16, 3))],
    ids=["ssd", "s6"],
)  # fmt: skip
def test_mixer_chunk_size_does_not_change_the_output(mixer, sizes):
    torch.manual_seed(0)
    m = mixer(sizes[0])
    h = torch.randn(2, 40, 8)
    a = m(h, None)
    m.chunk_size = sizes[1]
    torch.testing.assert_close(m(h, None), a, atol=1e-5, rtol=1e-5)


def rand_ctx(B, T, d=16, seed=0):
    return F.normalize(torch.randn(B, T, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def small(variant, **kw):
    torch.manual_seed(0)
    return build_model(
        "mamba", 16, hidden=16, layers=2, d_state=4, headdim=8, variant=variant, chunk_size=4, **kw
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_left_padding_equals_the_shorter_input(variant):
    """Padding spans chunk boundaries (chunk_size 4); whatever sits in the padding must not matter."""
    T, lengths = 11, [11, 6, 1]
    model = small(variant).eval()
    ctx = rand_ctx(3, T, seed=1)
    mask = torch.stack([torch.arange(T) >= T - n for n in lengths])
    noisy = ctx.clone()
    noisy[~mask] = 7.0
    with torch.no_grad():
        padded = model(noisy, mask)
        for b, n in enumerate(lengths):
            torch.testing.assert_close(padded[b : b + 1], model(ctx[b : b + 1, T - n :]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_overfits_eight_windows_in_delta_mode(variant):
    ctx, target = rand_ctx(8, 12, seed=10), rand_ctx(8, 1, seed=11)[:, 0]
    model = small(variant, delta=True).train()
    with torch.no_grad():  # delta mode starts exactly at copy_last with unit outputs
        out = model(ctx)
        torch.testing.assert_close(out, ctx[:, -1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    start = (1 - (out * target).sum(-1)).mean().item()
    for _ in range(100):
        opt.zero_grad()
        loss = (1 - (model(ctx) * target).sum(-1)).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = (1 - (model(ctx) * target).sum(-1)).mean().item()
    assert end < 0.25 * start and end < 0.2, (start, end)


def test_options_are_validated():
    with pytest.raises(ConfigError, match="variant must be one of ssd, s6"):
        build_model("mamba", 16, variant="s4")
    with pytest.raises(ConfigError, match="headdim must divide expand x hidden = 64"):
        build_model("mamba", 16, hidden=32, headdim=48)
    with pytest.raises(ConfigError, match="chunk_size must be in 1..16 for variant 's6'"):
        build_model("mamba", 16, variant="s6", chunk_size=64)
    with pytest.raises(ConfigError, match="chunk_size must be a positive integer"):
        build_model("mamba", 16, chunk_size=0)
    with pytest.raises(ConfigError, match="chunk_size must be in 1..16"):
        selective_scan_chunked(*scan_inputs(L=4), chunk_size=64)
