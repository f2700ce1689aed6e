"""Tasks: what a run trains and how it is scored. ``TASKS`` is the one registry of tasks.

    from lvmkit.tasks import TASKS, get_task
    spec = get_task(cfg.task)                   # TaskSpec
    sets = spec.query_sets(cfg, bank, split)    # the windows / pairs of train, val, test (one sampling rule)
    name, predictor = spec.load_predictor(ckpt, path)
    suite = spec.evaluate_suite(cfg, {name: predictor}, sets.test, bank, train_windows=sets.train)

Each spec owns its typed config (``config_class``: a ``RunConfig`` subclass with ``task: Literal[name]``), its
training task (``build_task``), its query sets, its checkpoint loader, its evaluation beside its baselines and
its metric names. The trainer, ``lvmkit eval``, ``lvmkit diagnose``, the report and the quickstart all ask it.
Importing this package is cheap: the specs import torch and FAISS only inside their methods.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from lvmkit.errors import ConfigError
from lvmkit.tasks.base import SEED_OFFSET, QuerySets, TaskSpec
from lvmkit.tasks.lvm.spec import LVM_SPEC
from lvmkit.tasks.twotower.spec import TWOTOWER_SPEC

TASKS: dict[str, TaskSpec] = {"lvm": LVM_SPEC, "twotower": TWOTOWER_SPEC}


def get_task(name: str) -> TaskSpec:
    """The spec of task ``name``; ConfigError listing the tasks otherwise."""
    if name not in TASKS:
        raise ConfigError(f"task={name!r} is not a task of this lvmkit; available: {', '.join(TASKS)}")
    return TASKS[name]


@cache
def run_config_adapter() -> TypeAdapter:
    """A pydantic validator of the union of every task's config, discriminated on ``task``."""
    classes: Any = tuple(spec.config_class for spec in TASKS.values())
    return TypeAdapter(
        Annotated[classes[0] if len(classes) == 1 else _union(classes), Field(discriminator="task")]
    )


def _union(classes: tuple[type, ...]) -> Any:
    from typing import Union

    return Union[classes]  # noqa: UP007 (built from the registry at run time)


__all__ = ["TASKS", "SEED_OFFSET", "QuerySets", "TaskSpec", "get_task", "run_config_adapter"]
