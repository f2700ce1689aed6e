"""The LVM task: next-chunk vector prediction (config, spec, and the training task in ``task.py``)."""

from lvmkit.tasks.lvm.config import LVMRunConfig
from lvmkit.tasks.lvm.spec import LVM_SPEC, LVMSpec

__all__ = ["LVMRunConfig", "LVMSpec", "LVM_SPEC"]
