"""The LVM task: next-chunk vector prediction (config, spec, and the training task in ``task.py``)."""

from typing import Any

from lvmkit.tasks.lvm.config import LVMRunConfig
from lvmkit.tasks.lvm.spec import LVM_SPEC, LVMSpec

__all__ = ["LVMRunConfig", "LVMSpec", "LVM_SPEC", "LVMTask", "LVMStep"]


def __getattr__(name: str) -> Any:
    """``LVMTask`` / ``LVMStep`` from task.py, imported on first use (it loads torch; the registry must not)."""
    if name in ("LVMTask", "LVMStep"):
        from lvmkit.tasks.lvm import task

        return getattr(task, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
