"""Query towers (bigru_pool, transformer_pool) and document towers (identity, adapter): the contract,
padding invariance, the pooling they claim (checked against an explicit computation), and the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lvmkit.errors import ConfigError
from lvmkit.models import MODEL_NAMES, build_model
from lvmkit.models.towers import DOC_TOWERS, build_doc_tower

D = 16
SMALL = {
    "bigru_pool": {"hidden": 24, "layers": 2},
    "transformer_pool": {"hidden": 24, "layers": 2, "heads": 2, "max_len": 64},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def rand_ctx(B, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(B, T, D, generator=g), dim=-1)


def left_mask(lengths, T):
    return torch.stack([torch.arange(T) >= T - n for n in lengths])


def make(name, **kw):
    torch.manual_seed(0)
    return build_model(name, D, **{**SMALL[name], **kw}).eval()


def test_towers_are_registered():
    assert {"bigru_pool", "transformer_pool"} <= set(MODEL_NAMES)
    assert set(DOC_TOWERS) == {"identity", "adapter"}


@pytest.mark.parametrize("name", list(SMALL))
def test_unit_outputs_and_padding_invariance(name):
    T, lengths = 9, [9, 4, 1]
    model = make(name)
    ctx = rand_ctx(3, T, seed=1)
    noisy = ctx.clone()
    noisy[~left_mask(lengths, T)] = 5.0  # padding content must not matter
    with torch.no_grad():
        out = model(noisy, left_mask(lengths, T))
        np.testing.assert_allclose(out.norm(dim=-1).numpy(), 1.0, atol=1e-5)
        for b, n in enumerate(lengths):
            torch.testing.assert_close(out[b : b + 1], model(ctx[b : b + 1, T - n :]), atol=1e-5, rtol=0)


def test_bigru_pool_is_a_mean_over_both_directions():
    """Recompute bigru_pool by hand: run the GRU forward and on the reversed sequence, average, project."""
    model = make("bigru_pool", layers=1)
    ctx = rand_ctx(2, 7, seed=2)
    with torch.no_grad():
        x = model.in_proj(ctx)
        g = model.gru
        fwd = torch.nn.GRU(24, 24, batch_first=True)
        bwd = torch.nn.GRU(24, 24, batch_first=True)
        for mod, sfx in ((fwd, ""), (bwd, "_reverse")):
            for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(mod, f"{p}_l0").copy_(getattr(g, f"{p}_l0{sfx}"))
        h = torch.cat([fwd(x)[0], bwd(x.flip(1))[0].flip(1)], dim=-1)
        expected = F.normalize(model.out_proj(h.mean(dim=1)), dim=-1)
        torch.testing.assert_close(model(ctx), expected, atol=1e-6, rtol=0)


def test_transformer_pool_is_bidirectional():
    """Without a causal mask the FIRST position's state depends on the LAST context vector."""
    model = make("transformer_pool")
    ctx = rand_ctx(1, 6, seed=3)
    seen = {}

    def grab(_m, _inp, out):
        seen["x"] = out

    model.blocks[-1].register_forward_hook(grab)
    with torch.no_grad():
        model(ctx)
        first = seen["x"][0, 0].clone()
        ctx2 = ctx.clone()
        ctx2[0, -1] = -ctx2[0, -1]
        model(ctx2)
        assert not torch.allclose(first, seen["x"][0, 0])


@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("anchor", ["exp_weighted", "last", "mean"])
def test_untrained_anchored_tower_is_its_heuristic(name, anchor):
    """anchor + zero-initialised residual: the untrained tower equals the baseline model of that name."""
    T = 7
    ctx, mask = rand_ctx(3, T, seed=4), left_mask([7, 3, 1], T)
    baseline = {"exp_weighted": "exp_weighted", "last": "copy_last", "mean": "mean_ctx"}[anchor]
    kw = {"alpha": 0.3} if anchor == "exp_weighted" else {}
    with torch.no_grad():
        want = build_model(baseline, D, **kw)(ctx, mask)
        got = make(name, anchor=anchor, anchor_alpha=0.3)(ctx, mask)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # ... and the residual is trainable: one gradient step moves it away from the heuristic
    model = make(name, anchor=anchor).train()
    loss = -(model(ctx, mask) * rand_ctx(3, 1, seed=9)[:, 0]).sum()
    loss.backward()
    assert model.out_proj.weight.grad.abs().sum() > 0


def test_tower_options_are_checked():
    with pytest.raises(ConfigError, match="anchor 'middle' is not known"):
        build_model("bigru_pool", D, anchor="middle")
    with pytest.raises(ConfigError, match="either delta: true or anchor"):
        build_model("transformer_pool", D, hidden=8, heads=2, anchor="mean", delta=True)
    with pytest.raises(ConfigError, match="anchor_alpha"):
        build_model("bigru_pool", D, anchor="exp_weighted", anchor_alpha=0)
    with pytest.raises(ConfigError, match="multiple of heads"):
        build_model("transformer_pool", D, hidden=10, heads=3)
    with pytest.raises(ConfigError, match="hidden must be a positive integer"):
        build_model("bigru_pool", D, hidden=0)
    with pytest.raises(ConfigError, match="has no option 'width'"):
        build_model("bigru_pool", D, width=3)
    with pytest.raises(ConfigError, match="max_len=4"):
        make("transformer_pool", max_len=4)(rand_ctx(1, 6))


def test_identity_doc_tower_returns_the_bank_vectors():
    v = F.normalize(torch.randn(5, D), dim=-1)
    tower = build_doc_tower("identity", D)
    assert tower.spec == {"name": "identity", "dim": D}
    assert sum(p.numel() for p in tower.parameters()) == 0
    torch.testing.assert_close(tower(v), v)


def test_adapter_starts_as_identity_then_learns_a_residual():
    torch.manual_seed(0)
    v = F.normalize(torch.randn(5, D), dim=-1)
    tower = build_doc_tower("adapter", D, hidden=8)
    torch.testing.assert_close(tower(v), v, atol=1e-6, rtol=0)
    torch.nn.init.normal_(tower.down.weight)
    with torch.no_grad():
        h = tower.down(F.gelu(tower.up(F.layer_norm(v, (D,), tower.norm.weight, tower.norm.bias))))
        torch.testing.assert_close(tower(v), F.normalize(v + h, dim=-1))
    np.testing.assert_allclose(tower(v).norm(dim=-1).detach().numpy(), 1.0, atol=1e-6)
    rebuilt = build_doc_tower(**tower.spec)
    assert isinstance(rebuilt, type(tower))


def test_doc_tower_errors():
    with pytest.raises(ConfigError, match="unknown document tower 'mlp'; allowed: identity, adapter"):
        build_doc_tower("mlp", D)
    with pytest.raises(ConfigError, match="cannot be built with options"):
        build_doc_tower("identity", D, hidden=3)
