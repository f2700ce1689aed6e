"""Training runs: typed config, one readable loop, checkpoints and exact resume, gates and triage, DDP.

    from lvmkit.train import load_config, train
    cfg = load_config("configs/gru.yaml", ["optim.epochs=3"])
    status = train(cfg, "runs/gru")            # or: lvmkit train configs/gru.yaml --out runs/gru

Modules: config (RunConfig, YAML + overrides), loop (``train`` and the ``Task`` protocol), lvm_task (the LVM
task), checkpoint (save/load, provenance, ``load_model``), triage (gate / NaN notes), runs (run directories,
status, listing), distributed (torchrun helpers).
"""

from lvmkit.train.config import RunConfig, load_config
from lvmkit.train.loop import train

__all__ = ["RunConfig", "load_config", "train"]
