"""Lane experts: top-k routing, the load-balance term against a hand computation, the forward pass against a
per-row recomputation, start-at-backbone, the registry hook and the trainer's loss term."""

from __future__ import annotations

import pytest
import torch

from lvmkit.errors import ConfigError
from lvmkit.losses import build_loss
from lvmkit.models import build_model
from lvmkit.models.base import masked_mean
from lvmkit.models.experts import LaneExperts, balance_loss, balance_term
from lvmkit.tasks.lvm.task import LVMStep

pytestmark = pytest.mark.usefixtures("one_thread")


def test_balance_loss_matches_a_hand_computation():
    probs = torch.tensor([[0.5, 0.3, 0.1, 0.1], [0.6, 0.1, 0.2, 0.1]])
    top = torch.tensor([[0, 1], [0, 2]])
    # f = slots per expert / (B k) = [2, 1, 1, 0] / 4; P = column means = [.55, .2, .15, .1]
    # L = E * sum f P = 4 * (0.5*0.55 + 0.25*0.2 + 0.25*0.15 + 0) = 1.45
    assert balance_loss(probs, top, 4).item() == pytest.approx(1.45)
    uniform = torch.full((4, 4), 0.25)
    assert balance_loss(uniform, torch.tensor([[0, 1], [2, 3], [0, 1], [2, 3]]), 4).item() == pytest.approx(
        1.0
    )


def trained_like(model: LaneExperts, seed: int = 0) -> LaneExperts:
    """Give the zero-initialised expert outputs random weights (as after training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def test_gate_routes_top2_and_forward_matches_per_row_recomputation():
    torch.manual_seed(0)
    model = trained_like(build_model("gru", 8, hidden=8, experts=5, top_k=2, expert_hidden=6))
    ctx = torch.nn.functional.normalize(torch.randn(7, 3, 8), dim=-1)
    mask = torch.ones(7, 3, dtype=torch.bool)
    mask[0, 0] = False
    probs, top, w = model.route(ctx, mask)
    assert top.shape == (7, 2) and w.shape == (7, 2)
    for b in range(7):  # the two largest router probabilities, renormalised
        order = torch.argsort(probs[b], descending=True)
        assert set(top[b].tolist()) == set(order[:2].tolist())
        torch.testing.assert_close(w[b].sum(), torch.tensor(1.0))
        torch.testing.assert_close(w[b], probs[b, top[b]] / probs[b, top[b]].sum())
    model.train()
    out = model(ctx, mask)
    y = model.backbone(ctx, mask)
    u = masked_mean(ctx, mask)
    for b in range(7):  # only the chosen experts contribute
        x = torch.cat([y[b], u[b]])[None]
        mix = sum(w[b, j] * model.experts[int(top[b, j])](x)[0] for j in range(2))
        torch.testing.assert_close(out[b], torch.nn.functional.normalize(y[b] + mix, dim=0))
    torch.testing.assert_close(model.balance, balance_loss(probs, top, 5))
    model.eval()
    model(ctx, mask)
    assert model.balance is None


def test_untrained_experts_equal_the_backbone_and_spec_rebuilds():
    torch.manual_seed(0)
    model = build_model("gru", 8, hidden=8, delta=True, experts=4, top_k=2)
    ctx = torch.nn.functional.normalize(torch.randn(5, 3, 8), dim=-1)
    torch.testing.assert_close(model(ctx), model.backbone(ctx))
    torch.testing.assert_close(model(ctx), ctx[:, -1])  # delta backbone: copy_last
    again = build_model(**model.spec)
    assert isinstance(again, LaneExperts) and again.n_experts == 4 and again.top_k == 2
    again.load_state_dict(model.state_dict())
    assert model.spec["experts"] == 4 and model.spec["balance_weight"] == 0.01
    assert not isinstance(build_model("gru", 8, hidden=8, experts=0), LaneExperts)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"experts": 4, "top_k": 5}, "top_k <= experts"),
        ({"experts": 1}, "experts must be >= 2"),
        ({"experts": 4, "balance_weight": -1}, "balance_weight"),
    ],
)
def test_bad_expert_options(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_model("gru", 8, hidden=8, **kwargs)


def test_baselines_cannot_take_experts():
    with pytest.raises(ConfigError, match="baseline"):
        build_model("copy_last", 8, experts=4)


def test_trainer_adds_the_weighted_balance_term():
    torch.manual_seed(0)
    model = trained_like(build_model("amn", 8, experts=4, top_k=2, balance_weight=0.5))
    loss_fn = build_loss({"cos": 1.0})
    step = LVMStep(model, loss_fn).train()
    ctx = torch.nn.functional.normalize(torch.randn(6, 3, 8), dim=-1)
    mask = torch.ones(6, 3, dtype=torch.bool)
    target = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    article = torch.arange(6)
    total, parts = step(ctx, mask, target, article)
    plain, _ = loss_fn(model(ctx, mask), target, article)
    torch.testing.assert_close(total, plain + 0.5 * model.balance)
    assert float(parts["balance"]) == pytest.approx(0.5 * float(model.balance.detach()))
    assert balance_term(build_model("amn", 8)) is None
    total.backward()
    assert model.gate.weight.grad is not None and model.gate.weight.grad.abs().sum() > 0
