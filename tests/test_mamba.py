"""The selective scan: the chunked parallel form equals the plain sequential recurrence, gradients included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lvmkit.errors import ConfigError
from lvmkit.models.mamba import (
    LOG_DECAY_FLOOR,
    MambaMixer,
    selective_scan,
    selective_scan_chunked,
    selective_scan_reference,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
    """The recurrence written out element by element in float64: an independent check of the reference."""
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


@pytest.mark.parametrize("chunk", [1, 4, 7, 16])
@pytest.mark.parametrize("dt_scale", [0.1, 1.0, 20.0])  # 20: many steps hit the log-decay floor
def test_chunked_scan_equals_sequential(chunk, dt_scale):
    inputs = scan_inputs(dt_scale=dt_scale, seed=chunk)
    ref = selective_scan_reference(*inputs)
    got = selective_scan_chunked(*inputs, chunk_size=chunk)
    scale = ref.abs().max().item()
    assert (got - ref).abs().max().item() <= 1e-4 * max(1.0, scale)


def test_chunked_scan_gradients_equal_sequential():
    leaves = [t.clone().requires_grad_(True) for t in scan_inputs(L=33, seed=3)]
    w = torch.randn(2, 33, 6)
    grads = []
    for fn in (selective_scan_reference, lambda *a: selective_scan_chunked(*a, chunk_size=8)):
        for t in leaves:
            t.grad = None
        (fn(*leaves) * w).sum().backward()
        grads.append([t.grad.clone() for t in leaves])
    for g_ref, g_chunk in zip(*grads, strict=True):
        torch.testing.assert_close(g_chunk, g_ref, atol=1e-4, rtol=1e-4)


def test_dispatch_uses_the_chunked_scan_on_cpu_and_keeps_dtype():
    inputs = scan_inputs(L=20, dtype=torch.float64)
    y = selective_scan(*inputs, chunk_size=16)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, selective_scan_chunked(*(t.float() for t in inputs)).double())


def test_zero_dt_skips_a_step():
    """dt = 0 is how padding is skipped: the state neither decays nor takes input at that step."""
    x, dt, A, B, C, D = scan_inputs(b=1, L=10)
    dt[:, :4] = 0.0
    y = selective_scan_chunked(x, dt, A, B, C, D)
    y_short = selective_scan_chunked(x[:, 4:], dt[:, 4:], A, B[:, 4:], C[:, 4:], D)
    torch.testing.assert_close(y[:, 4:], y_short)
    torch.testing.assert_close(y[:, :4], x[:, :4] * D)  # only the D skip is left


def test_mixer_chunk_size_does_not_change_the_output():
    torch.manual_seed(0)
    mixer = MambaMixer(8, d_state=4, chunk_size=16)
    h = torch.randn(2, 40, 8)
    a = mixer(h, None)
    mixer.chunk_size = 3
    torch.testing.assert_close(mixer(h, None), a, atol=1e-5, rtol=1e-5)


def test_chunk_size_is_validated():
    with pytest.raises(ConfigError, match="chunk_size must be in 1..16"):
        selective_scan_chunked(*scan_inputs(L=4), chunk_size=64)
