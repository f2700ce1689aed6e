"""Checkpoints: everything needed to continue a run exactly, and to use its model later on the right bank.

A checkpoint is one ``torch.save`` file written atomically (temp file + fsync + rename), so a run killed
while saving keeps the previous checkpoint intact. It is a plain dict::

    format       CHECKPOINT_FORMAT
    modules      {name: state_dict} for every trainable module of the task ("model", "loss", ...)
    model        the model's ``spec`` (name, dim, every option): ``build_model(**spec)`` rebuilds it
    optimizer    AdamW state            scheduler  LambdaLR state     scaler  AMP grad-scaler state or None
    task         task.state_dict() (e.g. the InfoNCE queue)
    rng          torch / cuda / numpy / python generator states
    progress     epoch, batch (batches done in that epoch), step, best metric, patience counter, ...
    bank         {"bank_id", "encoder"}: the vector space the model reads and writes
    config       the resolved RunConfig as a dict

It loads with ``torch.load(weights_only=True)``: only tensors and plain Python containers are stored.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lvmkit.artifacts import atomic_path
from lvmkit.bank.manifest import EncoderInfo, check_same_space
from lvmkit.errors import ArtifactError, ProvenanceError

CHECKPOINT_FORMAT = 1
REQUIRED_KEYS = ("format", "modules", "model", "progress", "bank", "config")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (the old file stays valid until the new one is complete).
    numpy scalars anywhere in it (a metric, a mining statistic) are stored as Python numbers: ``weights_only``
    loading refuses numpy types, so one np.float64 would make the checkpoint unloadable."""
    state = _plain_scalars({"format": CHECKPOINT_FORMAT, **state})
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)


def _plain_scalars(obj: Any) -> Any:
    """``obj`` with every numpy scalar (np.float64, np.int64, np.bool_) in its dicts, lists and tuples replaced
    by the Python number; tensors and everything else pass through unchanged."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _plain_scalars(v) for k, v in obj.items()}
    if type(obj) in (list, tuple):  # exactly: a namedtuple passes through as it is
        return type(obj)(_plain_scalars(v) for v in obj)
    return obj


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``; ArtifactError if it is missing or not one of ours."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (
        Exception
    ) as e:  # truncated file, foreign pickle, ...: torch's own advice (weights_only=False) is unsafe
        if "numpy" in str(e):  # a numpy scalar: what two-tower runs wrote after a mining epoch before the fix
            raise ArtifactError(
                f"{path} holds a numpy scalar, which torch.load(weights_only=True) refuses; lvmkit wrote such "
                "checkpoints after a mining epoch until 2026-12-03. If you made this file yourself, load it "
                "once with torch.load(path, weights_only=False) and write it again with "
                "lvmkit.train.checkpoint.save_checkpoint (which stores plain numbers); otherwise retrain the run"
            ) from None
        raise ArtifactError(
            f"{path} is damaged or not an lvmkit checkpoint ({path.stat().st_size:,} bytes; torch.load failed "
            f"with {type(e).__name__}); it cannot be used"
        ) from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ArtifactError(f"{path} is not an lvmkit checkpoint (missing {', '.join(missing)})")
    if state["format"] != CHECKPOINT_FORMAT:
        raise ArtifactError(
            f"{path} has checkpoint format {state['format']}; this lvmkit reads format {CHECKPOINT_FORMAT}"
        )
    return state


def checkpoint_state(
    modules: nn.ModuleDict,
    task: Any,
    cfg: Any,
    progress: dict[str, Any],
    *,
    optimizer: Any = None,
    scheduler: Any = None,
    scaler: Any = None,
    np_rng: np.random.Generator | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The one checkpoint dict (see the module docstring): every module's weights and the task's provenance;
    with an ``optimizer``, everything an exact resume needs (optimiser, schedule, scaler, task state, RNG
    states: last.pt, best.pt); without, weights only (nan.pt, the two-tower abort.pt). ``extra`` is added."""
    state: dict[str, Any] = {"modules": {n: m.state_dict() for n, m in modules.items()}, **task.provenance()}
    if optimizer is not None:
        state.update(
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict(),
            task=task.state_dict(),
            rng=rng_state(np_rng),
        )
    return {**state, "progress": progress, "config": cfg.model_dump(mode="json"), **extra}


# ------------------------------------------------------------------------------------------- RNG
def rng_state(np_rng: np.random.Generator) -> dict[str, Any]:
    """Snapshot of every random generator a training step can touch."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np_rng.bit_generator.state,
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any], np_rng: np.random.Generator) -> None:
    """Restore a snapshot from ``rng_state`` (CUDA states only when the devices are there)."""
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    np_rng.bit_generator.state = state["numpy"]
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


# ------------------------------------------------------------------------------------ provenance
def bank_stamp(bank) -> dict[str, Any]:
    """What a checkpoint records about the bank it was trained on."""
    return {"bank_id": bank.manifest.bank_id, "encoder": bank.encoder.model_dump(mode="json")}


def check_bank(ckpt: dict[str, Any], bank, what: str = "the checkpoint") -> None:
    """Refuse (ProvenanceError) a bank whose vector space or contents differ from the training bank's."""
    stamp = ckpt["bank"]
    check_same_space(EncoderInfo.model_validate(stamp["encoder"]), bank.encoder, what, f"bank {bank.path}")
    if stamp["bank_id"] != bank.manifest.bank_id:
        raise ProvenanceError(
            f"{what} was trained on bank {stamp['bank_id']} but bank {bank.path} is {bank.manifest.bank_id}; "
            "its windows, splits and retrieval ids would not line up. Evaluate on the bank the model was "
            "trained on (see its config.yaml), or retrain on this one."
        )


def model_from_checkpoint(
    ckpt: dict[str, Any],
    path: Any = "the checkpoint",
    module: str = "model",
    spec_key: str = "model",
    build=None,
) -> nn.Module:
    """The one checkpoint-to-model loader: ``build(**ckpt[spec_key])`` (default ``build_model``) with the weights
    of ``ckpt["modules"][module]``, in eval mode. Every task's ``load_predictor`` and ``load_model`` use it."""
    if build is None:
        from lvmkit.models import build_model as build
    if module not in ckpt["modules"] or spec_key not in ckpt:
        raise ArtifactError(f"{path} holds no module named {module!r} (it has: {', '.join(ckpt['modules'])})")
    model = build(**ckpt[spec_key])
    model.load_state_dict(ckpt["modules"][module])
    return model.eval()


def load_model(
    path: str | os.PathLike, bank=None, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint, in eval mode, and return (model, checkpoint dict).

    With ``bank`` given, the checkpoint must have been trained on that bank (ProvenanceError otherwise).
    """
    ckpt = load_checkpoint(path, map_location=map_location)
    if bank is not None:
        check_bank(ckpt, bank, what=f"checkpoint {path}")
    return model_from_checkpoint(ckpt, path), ckpt
