"""The LVM zoo: the forward contract, masks, baselines against numpy, delta mode, overfitting, the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge as SkRidge

from lvmkit.errors import ConfigError, LvmkitError
from lvmkit.models import MODEL_NAMES, build_model, count_parameters, describe, model_options

D = 16
SMALL = {  # tiny but real configurations, so the whole module runs in seconds
    "amn": {"hidden": 32, "heads": 2},
    "gru": {"hidden": 32, "layers": 2},
    "lstm": {"hidden": 32, "layers": 2},
    "memory_gru": {"hidden": 32, "slots": 8},
    "hierarchical_gru": {"hidden": 32, "chunk_len": 4},
    "transformer": {"hidden": 32, "layers": 2, "heads": 2, "max_len": 64},
    "mamba": {"hidden": 32, "layers": 2, "d_state": 8},
}
TRAINABLE = [n for n in MODEL_NAMES if n in SMALL]
FIXED = ["copy_last", "mean_ctx", "exp_weighted"]


pytestmark = pytest.mark.usefixtures("one_thread")


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def rand_ctx(B: int, T: int, d: int = D, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(B, T, d, generator=g), dim=-1)


def left_mask(lengths: list[int], T: int) -> torch.Tensor:
    return torch.stack([torch.arange(T) >= T - n for n in lengths])


def make(name: str, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, D, **{**SMALL.get(name, {}), **kw}).eval()


def fitted_ridge(T: int = 5, **kw):
    ctx, target = rand_ctx(64, T, seed=1), rand_ctx(64, 1, seed=2)[:, 0]
    return build_model("ridge", D, **kw).fit(ctx, None, target)


# ------------------------------------------------------------------------------------------ the contract
@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("T", [1, 5, 37])
def test_shape_and_unit_norm(name, T):
    model = fitted_ridge(T) if name == "ridge" else make(name)
    ctx = rand_ctx(3, T)
    mask = left_mask([T, max(1, T - 2), 1], T)
    with torch.no_grad():
        for m in (None, mask):
            out = model(ctx, m)
            assert out.shape == (3, D)
            assert torch.isfinite(out).all()
            np.testing.assert_allclose(out.norm(dim=-1).numpy(), 1.0, atol=1e-5)


def test_inputs_are_checked():
    model = make("mean_ctx")
    with pytest.raises(ConfigError, match="built for 16-d"):
        model(torch.zeros(2, 3, 8))
    with pytest.raises(ValueError, match="left-padded"):
        model(rand_ctx(2, 3), torch.tensor([[True, True, False], [True, True, True]]))
    with pytest.raises(ValueError, match="left-padded"):
        model(rand_ctx(2, 3), torch.tensor([[True, False, True], [True, True, True]]))


# -------------------------------------------------------------------------------------------- masks
@pytest.mark.parametrize("name", [*TRAINABLE, *FIXED])
def test_left_padding_equals_the_shorter_input(name):
    """A window padded on the left predicts exactly what the same window without the padding predicts."""
    T, lengths = 11, [11, 6, 1]
    model = make(name)
    ctx = rand_ctx(3, T, seed=1)
    ctx_noisy = ctx.clone()
    ctx_noisy[~left_mask(lengths, T)] = 7.0  # whatever sits in the padding must not matter
    with torch.no_grad():
        padded = model(ctx_noisy, left_mask(lengths, T))
        for b, n in enumerate(lengths):
            torch.testing.assert_close(padded[b : b + 1], model(ctx[b : b + 1, T - n :]), atol=1e-5, rtol=0)


def test_hierarchical_gru_with_t_not_a_multiple_of_chunk_len():
    model = make("hierarchical_gru", chunk_len=4)
    ctx = rand_ctx(2, 10, seed=2)
    with torch.no_grad():
        # 10 steps = 2 padding + 2 chunks of 4 ... + the first chunk partly padded: same as explicit padding
        explicit = torch.cat([torch.zeros(2, 2, D), ctx], dim=1)
        torch.testing.assert_close(model(ctx), model(explicit, left_mask([10, 10], 12)), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------- delta mode
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_delta_at_zero_residual_returns_the_last_vector(name, monkeypatch):
    model = fitted_ridge(delta=True) if name == "ridge" else make(name, delta=True)
    monkeypatch.setattr(model, "predict", lambda ctx, mask: torch.zeros_like(ctx[:, -1]))
    ctx = rand_ctx(3, 5, seed=4) * 3.0
    expected = unit(ctx[:, -1].numpy())
    np.testing.assert_allclose(model(ctx, left_mask([5, 3, 1], 5)).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("name", TRAINABLE)
def test_untrained_delta_model_is_copy_last(name):
    """Delta mode zeroes the output layer at init: the model starts exactly at the copy_last baseline."""
    model = make(name, delta=True)
    assert model.out_proj.weight.abs().max() == 0
    ctx, mask = rand_ctx(3, 5, seed=5), left_mask([5, 3, 1], 5)
    with torch.no_grad():
        np.testing.assert_allclose(model(ctx, mask).numpy(), ctx[:, -1].numpy(), atol=1e-6)
    assert make(name, delta=False).out_proj.weight.abs().max() > 0 or name == "amn"


def test_untrained_amn_is_the_mean_baseline():
    ctx, mask = rand_ctx(3, 6, seed=6), left_mask([6, 4, 1], 6)
    with torch.no_grad():
        torch.testing.assert_close(make("amn")(ctx, mask), make("mean_ctx")(ctx, mask))


# ------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("name", [*TRAINABLE, "gru+delta", "amn+delta"])
def test_each_trainable_model_overfits_eight_windows(name):
    torch.manual_seed(0)
    ctx, target = rand_ctx(8, 5, seed=10), rand_ctx(8, 1, seed=11)[:, 0]
    model = make(name.split("+")[0], delta=name.endswith("+delta")).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss():
        return (1 - (model(ctx) * target).sum(-1)).mean()

    with torch.no_grad():
        start = loss().item()
    for _ in range(100):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    with torch.no_grad():
        end = loss().item()
    assert end < 0.25 * start and end < 0.2, (start, end)


# -------------------------------------------------------------------------------- baselines vs numpy
def test_fixed_baselines_match_numpy():
    T = 6
    ctx = rand_ctx(4, T, seed=3)
    lengths = [6, 4, 2, 1]
    mask = left_mask(lengths, T)
    c = ctx.numpy()
    alpha = 0.3
    with torch.no_grad():
        last = make("copy_last")(ctx, mask).numpy()
        mean = make("mean_ctx")(ctx, mask).numpy()
        expw = make("exp_weighted", alpha=alpha)(ctx, mask).numpy()
    for b, n in enumerate(lengths):
        real = c[b, T - n :]
        np.testing.assert_allclose(last[b], unit(c[b, -1]), atol=1e-6)
        np.testing.assert_allclose(mean[b], unit(real.mean(0)), atol=1e-6)
        # weights alpha (1-alpha)^(T-1-t) for the real positions t = T-n .. T-1
        w = np.array([alpha * (1 - alpha) ** (T - 1 - t) for t in range(T - n, T)])
        np.testing.assert_allclose(expw[b], unit((w[:, None] * real).sum(0) / w.sum()), atol=1e-6)


def test_exp_weights_formula_and_renormalisation():
    from lvmkit.models.baselines import exp_weights

    mask = left_mask([5, 2], 5)
    w = exp_weights(mask, 0.1).numpy()
    raw = 0.1 * 0.9 ** np.arange(4, -1, -1)
    np.testing.assert_allclose(w[0], raw / raw.sum(), rtol=1e-6)
    np.testing.assert_allclose(w[1], np.r_[0, 0, 0, raw[3:] / raw[3:].sum()], rtol=1e-6)


def test_baselines_are_not_trainable():
    for name in [*FIXED, "ridge"]:
        model = make(name)
        assert model.trainable is False and count_parameters(model) == 0
    assert all(make(n).trainable for n in TRAINABLE)


def test_ridge_recovers_a_known_linear_map():
    rng = np.random.default_rng(0)
    n, T = 400, 3
    ctx = rng.standard_normal((n, T, D)).astype(np.float32)
    W = rng.standard_normal((T * D, D)) / np.sqrt(T * D)
    b = rng.standard_normal(D)
    target = ctx.reshape(n, -1) @ W + b
    model = build_model("ridge", D, alpha=1e-6).fit(ctx, None, target)
    assert model.mode(T) == "flat"
    np.testing.assert_allclose(model.weight.numpy(), W, atol=1e-4)
    np.testing.assert_allclose(model.bias.numpy(), b, atol=1e-4)


@pytest.mark.parametrize(("T", "features"), [(4, "flat"), (4, "pooled"), (20, "auto")])
def test_ridge_matches_sklearn(T, features):
    """Weights and predictions equal sklearn's Ridge on the same features (independent solver)."""
    ctx, target = rand_ctx(50, T, seed=4), rand_ctx(50, 1, seed=5)[:, 0]
    mask = left_mask([T, T - 1, 2] * 16 + [T, 1], T)
    model = build_model("ridge", D, alpha=0.5, features=features).fit(ctx, mask, target)
    expected = "flat" if features == "flat" else "pooled"
    assert model.mode(T) == expected
    c = (ctx * mask[..., None]).numpy()
    if expected == "flat":
        X = c.reshape(50, -1)
    else:
        from lvmkit.models.baselines import exp_weights

        m = mask.numpy()
        w = exp_weights(mask, 0.1).numpy()
        X = np.concatenate([c[:, -1], c.sum(1) / m.sum(1, keepdims=True), (w[..., None] * c).sum(1)], axis=1)
    sk = SkRidge(alpha=0.5).fit(X.astype(np.float64), target.numpy().astype(np.float64))
    np.testing.assert_allclose(model.weight.numpy(), sk.coef_.T, atol=1e-5)
    with torch.no_grad():
        got = model(ctx, mask).numpy()
    np.testing.assert_allclose(got, unit(sk.predict(X)), atol=1e-5)


def test_ridge_dual_form_equals_primal():
    from lvmkit.models.baselines import ridge_solve

    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((10, 30)), rng.standard_normal((10, 4))  # p > n: the dual system is solved
    W, b = ridge_solve(X, Y, 0.7)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    np.testing.assert_allclose(W, np.linalg.solve(Xc.T @ Xc + 0.7 * np.eye(30), Xc.T @ Yc), atol=1e-10)
    np.testing.assert_allclose(b, Y.mean(0) - X.mean(0) @ W, atol=1e-10)


def test_ridge_state_dict_round_trip_and_unfitted_error():
    model = fitted_ridge(T=5)
    fresh = build_model("ridge", D)
    with pytest.raises(LvmkitError, match="not fitted"):
        fresh(rand_ctx(2, 5))
    fresh.load_state_dict(model.state_dict())
    ctx = rand_ctx(3, 5, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(fresh(ctx), model(ctx))
        # a shorter context is left-padded with zeros: identical to passing the padding explicitly
        short = ctx[:, 2:]
        padded = torch.cat([torch.zeros(3, 2, D), short], 1)
        torch.testing.assert_close(model(short), model(padded, left_mask([3, 3, 3], 5)))


def test_ridge_delta_fits_the_residual():
    ctx, target = rand_ctx(80, 3, seed=6), rand_ctx(80, 1, seed=7)[:, 0]
    plain = build_model("ridge", D, alpha=0.0).fit(ctx, None, target)
    delta = build_model("ridge", D, alpha=0.0, delta=True).fit(ctx, None, target)
    # with no penalty, y - last is fitted exactly as well as y (last is one of the flat features)
    with torch.no_grad():
        torch.testing.assert_close(plain(ctx), delta(ctx), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------ registry
def test_registry_names_and_errors():
    assert set(MODEL_NAMES) >= {"copy_last", "mean_ctx", "exp_weighted", "ridge"}
    with pytest.raises(ConfigError, match="unknown model 'grux'.*copy_last"):
        build_model("grux", D)
    with pytest.raises(ConfigError, match="no option 'alpah'.*alpha=0.1"):
        build_model("exp_weighted", D, alpah=0.2)
    with pytest.raises(ConfigError, match=r"must be in \(0, 1\]"):
        build_model("exp_weighted", D, alpha=1.5)
    with pytest.raises(ConfigError, match="features 'x'.*auto, flat, pooled"):
        build_model("ridge", D, features="x")


def test_every_model_accepts_delta_and_records_its_spec():
    for name in MODEL_NAMES:
        assert "delta" in model_options(name)
        model = build_model(name, D, delta=True)
        assert model.delta is True and model.spec["name"] == name and model.spec["dim"] == D
        rebuilt = build_model(**model.spec)
        assert rebuilt.spec == model.spec


def test_describe_is_one_line_with_the_parameter_count():
    model = make(TRAINABLE[0]) if TRAINABLE else make("copy_last")
    line = describe(model)
    assert "\n" not in line and f"{count_parameters(model):,} trainable parameters" in line
    assert "baseline" in describe(fitted_ridge()) and "fitted values" in describe(fitted_ridge())


def test_transformer_sinusoidal_positions_and_max_len():
    from lvmkit.models.transformer import sinusoidal_table

    table = sinusoidal_table(5, 4).numpy()
    p, i = np.arange(5)[:, None], np.arange(2)[None, :]
    np.testing.assert_allclose(table[:, 0::2], np.sin(p / 10000 ** (2 * i / 4)), atol=1e-6)
    np.testing.assert_allclose(table[:, 1::2], np.cos(p / 10000 ** (2 * i / 4)), atol=1e-6)
    model = make("transformer", pos="sinusoidal", max_len=8)
    ctx, mask = rand_ctx(2, 8, seed=3), left_mask([8, 3], 8)
    with torch.no_grad():
        torch.testing.assert_close(model(ctx, mask)[1:], model(ctx[1:, 5:]), atol=1e-5, rtol=0)
        with pytest.raises(ConfigError, match="exceeds the transformer's max_len=8"):
            model(rand_ctx(1, 9))
    with pytest.raises(ConfigError, match="pos 'rope'.*learned, sinusoidal"):
        make("transformer", pos="rope")


@pytest.mark.parametrize("ctx", [3, 20])  # flat features, and pooled ones (ctx > max_flat_ctx)
def test_fit_ridge_in_blocks_equals_one_fit_on_every_window(tmp_path, make_bank, ctx):
    """eval.evaluator.fit_ridge reads the training windows a block at a time (memory at long ctx); its
    weights must equal Ridge.fit on all the same windows at once."""
    from lvmkit.data.windows import make_windows
    from lvmkit.eval.evaluator import BASELINES, fit_ridge

    bank = make_bank(tmp_path, articles=[30] * 12, dim=D, seed=3)
    windows = make_windows(bank, None, "all", ctx=ctx, min_ctx=2, pad=True)
    blocked = fit_ridge(windows, D, max_train=len(windows), block=7)
    batch = windows.batch(np.arange(len(windows)))
    whole = build_model("ridge", D, **BASELINES["ridge"]).fit(batch.ctx, batch.mask, batch.target)
    assert int(blocked.fit_ctx) == int(whole.fit_ctx) == ctx
    np.testing.assert_allclose(blocked.weight.numpy(), whole.weight.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(blocked.bias.numpy(), whole.bias.numpy(), rtol=1e-6, atol=1e-7)
