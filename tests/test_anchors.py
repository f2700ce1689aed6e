"""Anchors for every LVM family: an untrained model IS its anchor (against numpy), mix weights, old checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lvmkit.errors import ConfigError
from lvmkit.models import build_model
from lvmkit.models.anchors import MIX_FLOOR
from lvmkit.train.checkpoint import load_checkpoint, load_model

D = 16
FAMILIES = {  # every trainable family, tiny
    "amn": {"hidden": 16, "heads": 2},
    "gru": {"hidden": 16, "layers": 1},
    "lstm": {"hidden": 16, "layers": 1},
    "memory_gru": {"hidden": 16, "slots": 4},
    "hierarchical_gru": {"hidden": 16, "chunk_len": 3},
    "transformer": {"hidden": 16, "layers": 1, "heads": 2, "max_len": 32},
    "mamba": {"hidden": 16, "layers": 1, "d_state": 4, "headdim": 8},
    "bigru_pool": {"hidden": 16},
    "transformer_pool": {"hidden": 16, "layers": 1, "heads": 2, "max_len": 32},
}
ANCHORS = ["last", "mean", "exp_weighted", "blend", "mix"]
W, ALPHA = 0.4, 0.3
FIXTURE = Path(__file__).parent / "fixtures" / "old_delta_checkpoint.pt"

pytestmark = pytest.mark.usefixtures("one_thread")


def data(T: int = 6):
    g = torch.Generator().manual_seed(3)
    ctx = torch.nn.functional.normalize(torch.randn(4, T, D, generator=g), dim=-1)
    mask = torch.stack([torch.arange(T) >= T - n for n in (T, 3, 1, T - 1)])
    return ctx, mask


def numpy_anchor(kind: str, ctx: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The anchor query written out in numpy, row by row over the real positions only."""
    out = []
    for x, m in zip(ctx.astype(np.float64), mask, strict=True):
        real = x[m]
        n = len(real)
        ew_w = np.array([ALPHA * (1 - ALPHA) ** (n - 1 - t) for t in range(n)])
        ew = (ew_w[:, None] * real).sum(0) / ew_w.sum()
        last, mean = real[-1], real.mean(0)
        if kind == "last":
            q = last
        elif kind == "mean":
            q = mean
        elif kind == "exp_weighted":
            q = ew
        elif kind == "blend":
            q = W * last + (1 - W) * ew
        else:  # mix starts at the blend with a floor weight on the mean: p = [w, f, 1 - w] / (1 + f)
            p = np.array([W, MIX_FLOOR, 1 - W]) / (1 + MIX_FLOOR)
            q = p[0] * last + p[1] * mean + p[2] * ew
        out.append(q / np.linalg.norm(q))
    return np.array(out)


@pytest.mark.parametrize("anchor", ANCHORS)
@pytest.mark.parametrize("name", list(FAMILIES))
def test_untrained_model_is_exactly_its_anchor(name, anchor):
    torch.manual_seed(0)
    model = build_model(name, D, anchor=anchor, anchor_alpha=ALPHA, anchor_w=W, **FAMILIES[name]).eval()
    ctx, mask = data()
    with torch.no_grad():
        got = model(ctx, mask).numpy()
    np.testing.assert_allclose(got, numpy_anchor(anchor, ctx.numpy(), mask.numpy()), atol=2e-6)
    assert model.out_proj.weight.abs().max() == 0  # the residual starts at zero ...
    model.train()  # ... and trains: one step moves it
    loss = -(model(ctx, mask) * torch.roll(ctx[:, -1], 1, 0)).sum()
    loss.backward()
    assert model.out_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["gru", "transformer"])
def test_without_anchor_the_output_layer_is_random(name):
    torch.manual_seed(0)
    model = build_model(name, D, anchor="none", **FAMILIES[name])
    assert model.out_proj.weight.abs().max() > 0 and model.anchor.kind == "none"


def test_mix_weights_sum_to_one_and_learn():
    torch.manual_seed(0)
    model = build_model("gru", D, anchor="mix", anchor_w=W, anchor_alpha=ALPHA, **FAMILIES["gru"])
    p = model.anchor.weights().detach()
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-6) and (p > 0).all()
    np.testing.assert_allclose(
        p.detach().numpy(), np.array([W, MIX_FLOOR, 1 - W]) / (1 + MIX_FLOOR), atol=1e-6
    )
    assert float(torch.sigmoid(model.anchor.decay.detach())) == pytest.approx(ALPHA, abs=1e-6)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    ctx, mask = data()
    for _ in range(3):  # pull towards the mean: the mix weights move and still sum to 1
        opt.zero_grad()
        (-(model(ctx, mask) * ctx.mean(1)).sum()).backward()
        opt.step()
    p2 = model.anchor.weights().detach()
    assert float(p2.sum()) == pytest.approx(1.0, abs=1e-6)
    assert not torch.allclose(p2, p)


def test_blend_and_mix_without_w_wait_for_tuning():
    model = build_model("gru", D, anchor="blend", **FAMILIES["gru"])
    assert model.anchor.tuned is False
    model.anchor.set_blend(0.7, 0.2)
    assert model.anchor.tuned and float(model.anchor.w) == pytest.approx(0.7)
    assert build_model("gru", D, anchor="blend", anchor_w=0.3, **FAMILIES["gru"]).anchor.tuned


def test_anchor_options_are_checked():
    with pytest.raises(ConfigError, match="anchor 'middle' is not known"):
        build_model("gru", D, anchor="middle")
    with pytest.raises(ConfigError, match="either delta: true or anchor: mean"):
        build_model("gru", D, anchor="mean", delta=True)
    with pytest.raises(ConfigError, match="anchor_w"):
        build_model("gru", D, anchor="blend", anchor_w=1.5)
    with pytest.raises(ConfigError, match="anchor_alpha"):
        build_model("amn", D, anchor="exp_weighted", anchor_alpha=0)
    # delta is an alias of anchor: last; AMN's own default stays the mean
    assert build_model("gru", D, delta=True).anchor.kind == "last"
    assert build_model("gru", D, delta=True, anchor="last").delta is True
    assert build_model("amn", D).anchor.kind == "mean" and build_model("amn", D, delta=True).delta


def test_old_delta_checkpoint_loads_and_predicts_as_it_did():
    """tests/fixtures/old_delta_checkpoint.pt was written by lvmkit a9a93eb (``delta: true`` specs, the tower
    ``anchor`` of AnchoredTower); today's code must rebuild each model and give the same outputs."""
    model, ckpt = load_model(FIXTURE)
    assert ckpt["model"]["delta"] is True and "anchor" not in ckpt["model"]
    assert model.anchor.kind == "last"
    ctx, mask = ckpt["ctx"], ckpt["mask"]
    with torch.no_grad():
        torch.testing.assert_close(model(ctx, mask), ckpt["others"]["gru_delta"]["expected"])
    for key, kind in (("amn_delta", "last"), ("amn_plain", "mean"), ("bigru_pool_exp", "exp_weighted")):
        old = load_checkpoint(FIXTURE)["others"][key]
        m = build_model(**old["spec"])
        m.load_state_dict(old["state"])
        assert m.eval().anchor.kind == kind
        with torch.no_grad():
            torch.testing.assert_close(m(ctx, mask), old["expected"])


def tiny_gru_config(bank, anchor: str, *extra: str):
    """A one-layer gru (hidden 8) run at ctx 3 with ``anchor``, no final evaluation."""
    from lvmkit.train.config import load_config

    base = [f"bank={bank.path}", "data.ctx=3", "data.batch_size=16", "model.name=gru"]
    model = f"model.kwargs={{hidden: 8, layers: 1, anchor: {anchor}}}"
    return load_config(None, [*base, model, "final_eval=false", *extra])


def test_a_run_with_anchor_mix_tunes_it_on_val_and_stores_it(make_bank, tmp_path):
    """anchor: mix with anchor_w null -> (w, alpha) chosen on the run's val windows (tune_blend), written
    into the checkpoint's spec; the reloaded model starts there and its mix weights still sum to 1."""
    from lvmkit.data.splits import Split
    from lvmkit.data.windows import make_windows
    from lvmkit.eval.tuning import tune_blend
    from lvmkit.train.loop import train
    from lvmkit.train.runs import RunPaths

    bank = make_bank(tmp_path, articles=[10] * 30, dim=D, seed=5)
    cfg = tiny_gru_config(bank, "mix", "data.max_eval_queries=50", "optim.epochs=1")
    out = tmp_path / "run"
    assert train(cfg, out)["state"] == "finished"
    model, ckpt = load_model(RunPaths(out).best, bank=bank)
    split = Split.load(RunPaths(out).split, bank)
    val = make_windows(bank, split, "val", 3, stride=1, min_ctx=None, pad=True).sample(50, cfg.seed + 1)
    want = tune_blend(val, bank, seed=cfg.seed)
    assert (ckpt["model"]["anchor_w"], ckpt["model"]["anchor_alpha"]) == (want.w, want.alpha)
    assert model.anchor.kind == "mix" and model.anchor.tuned
    assert float(model.anchor.weights().detach().sum()) == pytest.approx(1.0, abs=1e-6)


def test_only_blend_and_mix_are_tuned(make_bank, tmp_path):
    from lvmkit.data.windows import make_windows
    from lvmkit.eval.tuning import tune_anchor

    bank = make_bank(tmp_path, articles=[8] * 6, dim=D)
    windows = make_windows(bank, None, "all", ctx=3)
    for kw in ({"delta": True}, {"anchor": "exp_weighted"}, {"anchor": "blend", "anchor_w": 0.5}):
        model = build_model("gru", D, hidden=8, layers=1, **kw)
        assert tune_anchor(model, windows, bank) is None
        assert model.spec["anchor_w"] == kw.get("anchor_w")  # untouched: None, or the given value
    model = build_model("gru", D, hidden=8, layers=1, anchor="blend")
    fit = tune_anchor(model, windows, bank)
    assert fit is not None and model.spec["anchor_w"] == fit.w
    assert float(model.anchor.w) == pytest.approx(fit.w)


def test_from_start_keeps_the_untrained_anchor_unless_an_epoch_beats_it(make_bank, tmp_path):
    """early_stopping.from_start: epoch 0 (the untrained model = its anchor) is scored on val and saved as
    best.pt; with a learning rate too small to change anything no epoch beats it, so best.pt stays epoch 0."""
    from lvmkit.artifacts import read_jsonl
    from lvmkit.train.loop import train
    from lvmkit.train.runs import RunPaths

    bank = make_bank(tmp_path, articles=[10] * 24, dim=D, seed=7)
    cfg = tiny_gru_config(
        bank,
        "mean",
        "data.max_eval_queries=40",
        "optim.lr=1e-12",
        "optim.epochs=2",
        "early_stopping.from_start=true",
    )
    out = tmp_path / "run"
    status = train(cfg, out)
    rows = [r for r in read_jsonl(RunPaths(out).history) if r["kind"] == "epoch"]
    assert [r["epoch"] for r in rows] == [0, 1, 2] and status["best_epoch"] == 0
    model, ckpt = load_model(RunPaths(out).best, bank=bank)
    assert ckpt["progress"]["best_epoch"] == 0
    ctx, mask = data(3)
    with torch.no_grad():
        np.testing.assert_allclose(
            model(ctx, mask).numpy(), numpy_anchor("mean", ctx.numpy(), mask.numpy()), atol=2e-6
        )
