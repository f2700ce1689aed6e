"""The LVM task's config: the shared run sections plus ``loss`` (the spec for ``lvmkit.losses.build_loss``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from lvmkit.train.config import RunConfig


class LVMRunConfig(RunConfig):
    """``task: lvm``: predict the next chunk's vector from the previous ``data.ctx`` chunks."""

    task: Literal["lvm"] = "lvm"
    loss: dict[str, Any] = Field(default_factory=lambda: {"cos": 1.0}, description="spec for build_loss")

    @field_validator("loss")
    @classmethod
    def _loss_not_empty(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not v:
            raise ValueError("the loss spec is empty; give at least one term, e.g. {cos: 1.0}")
        return v
