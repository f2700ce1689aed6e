"""Which model answers ``/v1/next``: a run's checkpoint turned into a predictor, and the object that chooses.

    pred = load_predictor("runs/gru", bank)             # or a checkpoint file, or "baseline:exp_weighted"
    vec = pred.predict(context_vectors)                 # [T, d] oldest first -> [d] unit vector
    models = SingleRun(pred)                            # the app holds one ``Predictors`` object ...
    run_name, vec = models.answer(request_id, context)  # ... and asks it for every request

This module is the one adapter between serving and the training side: it turns a run into a predictor with
``lvmkit.eval.command.resolve_target`` (the same refusal of another encoder's model, naming both encoders, and
the same per-task checkpoint loaders as ``lvmkit eval``). Routing (several runs behind one server) implements
``Predictors`` too and replaces ``SingleRun`` without touching the routes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from lvmkit.bank.bank import VectorBank
from lvmkit.errors import ConfigError

DEFAULT_BASELINE_CTX = 5
SERVABLE_BASELINES = ("copy_last", "mean_ctx", "exp_weighted")  # ridge needs fitting, the oracle the answer


@dataclass
class RunPredictor:
    """One servable model: reads the last ``ctx`` context vectors, predicts the next chunk's vector."""

    name: str  # what responses call it: the run directory's name, or baseline:NAME
    model: torch.nn.Module
    ctx: int
    info: dict[str, Any] = field(default_factory=dict)  # provenance for /v1/info
    # one forward at a time per model: modules are not promised to be re-entrant, and a forward over a few
    # context vectors takes well under a millisecond, so requests queue here only briefly
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def predict(self, context: np.ndarray) -> np.ndarray:
        """``context`` float32 [T, d] (oldest first, T >= 1) -> unit float32 [d]. Longer contexts keep the last
        ``ctx`` vectors; shorter ones are left-padded and masked, as the trainer's windows are."""
        context = np.asarray(context, dtype=np.float32)[-self.ctx :]
        t, d = context.shape
        ctx = np.zeros((1, self.ctx, d), dtype=np.float32)
        ctx[0, self.ctx - t :] = context
        mask = np.zeros((1, self.ctx), dtype=bool)
        mask[0, self.ctx - t :] = True
        with self._lock, torch.inference_mode():
            out = self.model(torch.from_numpy(ctx), torch.from_numpy(mask))
        vec = out[0].detach().float().cpu().numpy()
        return vec / max(float(np.linalg.norm(vec)), 1e-12)


class Predictors(Protocol):
    """The one object the app asks which run answers a request (``app.state.models``)."""

    def answer(self, request_id: str, context: np.ndarray) -> tuple[str, np.ndarray]:
        """The name of the run that answered, and its predicted vector [d] for ``context`` [T, d]."""
        ...

    def describe(self) -> list[dict[str, Any]]:
        """Provenance of every model it may use (for /v1/info)."""
        ...

    def names(self) -> list[str]: ...


class SingleRun:
    """Every request answered by one run (``lvmkit serve BANK --run RUN``)."""

    def __init__(self, predictor: RunPredictor):
        self.predictor = predictor

    def answer(self, request_id: str, context: np.ndarray) -> tuple[str, np.ndarray]:
        return self.predictor.name, self.predictor.predict(context)

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": self.predictor.name, "ctx": self.predictor.ctx, **self.predictor.info}]

    def names(self) -> list[str]:
        return [self.predictor.name]


def resolve_run_spec(spec: str, runs_dir: Path | None) -> str:
    """A run given by name (a directory under ``runs_dir``) becomes its path; paths and baselines pass through."""
    if spec.startswith("baseline:") or Path(spec).exists() or runs_dir is None:
        return spec
    candidate = Path(runs_dir) / spec
    return str(candidate) if candidate.exists() else spec


def load_predictor(spec: str, bank: VectorBank, runs_dir: Path | None = None) -> RunPredictor:
    """A run directory, a checkpoint file, a run name under ``runs_dir``, or ``baseline:NAME``.

    A model trained in another vector space than ``bank`` is refused (ProvenanceError naming both encoders);
    the same encoder over other bank contents is allowed (its provenance says so)."""
    from lvmkit.eval.command import resolve_target

    spec = resolve_run_spec(spec, runs_dir)
    if spec.startswith("baseline:"):
        return _baseline(spec.removeprefix("baseline:"), bank)
    target = resolve_target(spec, bank)
    if not isinstance(target.predictor, torch.nn.Module):
        raise ConfigError(f"{spec} does not hold a model that predicts from context vectors")
    name = Path(spec).name if target.kind == "run" else Path(spec).stem
    cfg = target.config
    from lvmkit.tasks import get_task

    query, space = get_task(cfg.task).search_space(target.predictor, bank)
    if space is not bank:  # a two-tower run with an adapter document tower: its queries live in that space
        raise ConfigError(
            f"{spec} searches the bank through its document tower ({cfg.twotower.doc_tower}); the server searches "
            "the bank as stored, so it can serve only runs whose document tower is identity"
        )
    info = {
        "source": str(Path(spec).resolve()),
        "kind": target.kind,
        "task": cfg.task,
        "model": dict(target.predictor.spec) if hasattr(target.predictor, "spec") else target.name,
        "checkpoint": str(target.checkpoint),
        "epoch": target.epoch,
        "trained_on_bank_id": target.trained_on.get("bank_id"),
        "same_bank": target.trained_on.get("bank_id") == bank.manifest.bank_id,
    }
    return RunPredictor(name=name, model=query.eval(), ctx=int(cfg.data.ctx), info=info)


def _baseline(name: str, bank: VectorBank) -> RunPredictor:
    from lvmkit.eval.evaluator import BASELINES
    from lvmkit.models import build_model

    if name not in SERVABLE_BASELINES:
        raise ConfigError(
            f"baseline {name!r} cannot be served (ridge must be fitted, the oracle needs the answer); "
            f"servable baselines: {', '.join(SERVABLE_BASELINES)}"
        )
    model = build_model(name, bank.dim, **BASELINES[name]).eval()
    info = {"source": f"baseline:{name}", "kind": "baseline", "task": "lvm", "model": dict(model.spec)}
    return RunPredictor(name=f"baseline:{name}", model=model, ctx=DEFAULT_BASELINE_CTX, info=info)
