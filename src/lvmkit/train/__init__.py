"""Training runs: typed config, one readable loop, checkpoints and exact resume, gates and triage, DDP.

    from lvmkit.train import load_config, train
    cfg = load_config("configs/gru.yaml", ["optim.epochs=3"])
    status = train(cfg, "runs/gru")            # or: lvmkit train configs/gru.yaml --out runs/gru

Modules: config (RunConfig, YAML + overrides), loop (``train`` as named steps and the ``Task`` protocol),
checkpoint (``checkpoint_state``, save/load, provenance, ``load_model``), triage (gate / NaN notes), runs (run
directories: claiming one, status, listing), mining (the hard-negative curriculum), gradcache, distributed
(torchrun helpers). The tasks themselves (LVM, two-tower) live in ``lvmkit.tasks``.
"""

from typing import Any

from lvmkit.train.config import RunConfig, load_config

__all__ = ["RunConfig", "load_config", "train"]


def __getattr__(name: str) -> Any:
    """``train`` is imported on first use: the loop loads torch, the config (and the task registry) must not."""
    if name == "train":
        from lvmkit.train.loop import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
