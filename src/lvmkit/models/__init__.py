"""The LVM zoo: models that read the previous chunk vectors and predict the next one.

Every model follows one contract (see ``lvmkit.models.base``):
``forward(ctx [B, T, d], mask [B, T] bool | None) -> [B, d]`` unit vectors, with left padding.
Build them by name with ``build_model(name, dim, **options)``; ``MODEL_NAMES`` lists the names.
"""

from lvmkit.models.base import LVM, l2_normalize, masked_mean
from lvmkit.models.registry import (
    BASELINE_NAMES,
    MODEL_NAMES,
    build_model,
    count_parameters,
    describe,
    model_options,
)

__all__ = [
    "BASELINE_NAMES",
    "LVM",
    "MODEL_NAMES",
    "build_model",
    "count_parameters",
    "describe",
    "l2_normalize",
    "masked_mean",
    "model_options",
]
