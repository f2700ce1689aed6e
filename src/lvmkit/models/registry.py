"""Build any model of the zoo by name: ``build_model("gru", dim=384, hidden=256, delta=True)``.

The options a model accepts are exactly its constructor's keyword arguments (after ``dim``), so a typo in a
config is caught here with a message that lists what that model does accept. Any trainable model also takes
``experts`` (with ``top_k``, ``expert_hidden``, ``balance_weight``): lane experts on that backbone
(``lvmkit.models.experts``). The built model carries
``model.spec`` (name, dim and every option, defaults filled in): ``build_model(**model.spec)`` rebuilds it.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from lvmkit.errors import ConfigError
from lvmkit.models.amn import AMN
from lvmkit.models.baselines import Blend, CopyLast, ExpWeighted, MeanCtx, Ridge
from lvmkit.models.experts import split_expert_options, with_experts
from lvmkit.models.mamba import Mamba
from lvmkit.models.rnn import GRU, LSTM, HierarchicalGRU, MemoryGRU
from lvmkit.models.towers import BiGRUPool, TransformerPool
from lvmkit.models.transformer import TransformerLVM

_MODELS: dict[str, type[nn.Module]] = {
    "copy_last": CopyLast,
    "mean_ctx": MeanCtx,
    "exp_weighted": ExpWeighted,
    "ridge": Ridge,
    "blend": Blend,
    "amn": AMN,
    "gru": GRU,
    "lstm": LSTM,
    "transformer": TransformerLVM,
    "memory_gru": MemoryGRU,
    "hierarchical_gru": HierarchicalGRU,
    "mamba": Mamba,
    # two-tower query towers (lvmkit.models.towers); any model above can be a query tower too
    "bigru_pool": BiGRUPool,
    "transformer_pool": TransformerPool,
}
MODEL_NAMES: tuple[str, ...] = tuple(_MODELS)
BASELINE_NAMES: tuple[str, ...] = ("copy_last", "mean_ctx", "exp_weighted", "ridge", "blend")


def model_options(name: str) -> dict[str, Any]:
    """The options ``name`` accepts and their defaults, read from its constructor signature."""
    cls = _model_class(name)
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]  # skip self, dim
    return {p.name: p.default for p in params if p.kind is p.POSITIONAL_OR_KEYWORD}


def build_model(name: str, dim: int, **kwargs: Any) -> nn.Module:
    """A fresh model ``name`` for ``dim``-d vectors. Unknown names or options raise ConfigError."""
    options = model_options(name)
    kwargs = dict(kwargs)
    expert_opts = split_expert_options(kwargs)  # experts / top_k / ...: lvmkit.models.experts
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        allowed = ", ".join(f"{k}={v!r}" for k, v in options.items())
        raise ConfigError(f"model {name!r} has no option {unknown[0]!r}; options for {name} are: {allowed}")
    try:
        model = _model_class(name)(int(dim), **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model {name!r} cannot be built with {kwargs}: {e}") from e
    if expert_opts:
        model = with_experts(model, name, **expert_opts)
    model.spec = {"name": name, "dim": int(dim), **options, **kwargs, **expert_opts}
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of parameter elements (only those with requires_grad unless trainable_only=False)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def describe(model: nn.Module) -> str:
    """One line: name, dimension, parameter count and options, e.g. for a run log or a results table."""
    spec = dict(getattr(model, "spec", {}))
    name = spec.pop("name", type(model).__name__)
    dim = spec.pop("dim", getattr(model, "dim", "?"))
    n = count_parameters(model)
    line = f"{name} (dim {dim}): {n:,} trainable parameters"
    if not getattr(model, "trainable", True):
        line += ", baseline"
        if hasattr(model, "fitted"):  # ridge: fitted, not trained
            n_fit = sum(b.numel() for b in model.buffers() if b.is_floating_point())
            line += f" with {n_fit:,} fitted values" if model.fitted else " (not fitted yet)"
    if spec:
        line += "; " + ", ".join(f"{k}={v}" for k, v in spec.items())
    return line


def _model_class(name: str) -> type[nn.Module]:
    try:
        return _MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; allowed: {', '.join(MODEL_NAMES)}") from None
