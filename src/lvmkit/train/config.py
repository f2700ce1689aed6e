"""Run configuration: typed (pydantic), loaded from YAML, every field overridable with ``--set key=value``.

A run is described by one ``RunConfig``. A YAML file gives its fields; overrides like
``optim.lr=3e-4`` or ``model.kwargs.hidden=512`` or ``gates=[{epoch: 1, metric: val_hit@5, min: 0.1}]``
replace single values (the value is parsed as YAML, so numbers, booleans, lists and mappings all work).
Any unknown key or bad value becomes a ``ConfigError`` that names the dotted field and what is allowed::

    cfg = load_config("configs/gru.yaml", ["optim.lr=1e-3", "data.ctx=10"])
    save_config(cfg, "runs/gru/config.yaml")   # the resolved config, exactly what the run used

Every section forbids unknown keys (a typo must not be silently ignored). ``RunConfig`` holds the sections
every task shares; each task (``lvmkit.tasks.TASKS``) subclasses it with its own typed sections (the LVM task:
``loss``; the two-tower task: ``twotower``), and ``config_from_dict`` picks the subclass by ``task``
(a pydantic union discriminated on that field).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lvmkit.artifacts import write_text
from lvmkit.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitConfig(_Section):
    """Article-disjoint train/val/test split (lvmkit.data.make_split)."""

    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0


class DataConfig(_Section):
    """Sequence windows (lvmkit.data.make_windows) and how they are batched."""

    ctx: int = Field(5, ge=1, description="context length in chunks")
    stride: int = Field(1, ge=1, description="step between window starts within an article")
    min_ctx: int | None = Field(
        None, ge=1, description="shortest real context at an article start (None = ctx)"
    )
    pad: bool = True
    batch_size: int = Field(64, ge=1)
    max_per_article: int = Field(2, ge=1, description="windows per article per batch (in-batch negatives)")
    max_train_windows: int | None = Field(
        None, ge=1, description="cap: a deterministic sample of train windows"
    )
    max_eval_queries: int | None = Field(2000, ge=1, description="cap: a deterministic subset of val windows")
    max_test_queries: int | None = Field(
        10_000, ge=1, description="cap: a deterministic subset of test windows for the final evaluation"
    )

    @model_validator(mode="after")
    def _min_ctx_le_ctx(self) -> DataConfig:
        if self.min_ctx is not None and self.min_ctx > self.ctx:
            raise ValueError(f"min_ctx={self.min_ctx} must be <= ctx={self.ctx}")
        return self


class ModelConfig(_Section):
    """Which model to build: ``build_model(name, dim=bank.dim, delta=delta, **kwargs)``."""

    name: str = "gru"
    delta: bool = Field(False, description="predict a residual added to the last context vector")
    kwargs: dict[str, Any] = Field(default_factory=dict)


class OptimConfig(_Section):
    """AdamW with linear warm-up then cosine decay, stepped once per optimiser step."""

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0, description="applied to matrices only (not biases / norms)")
    warmup_steps: int = Field(100, ge=0)
    min_lr_ratio: float = Field(0.05, ge=0, le=1, description="cosine decays to lr * min_lr_ratio")
    epochs: int = Field(10, ge=1)
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimiser step")
    clip_norm: float | None = Field(1.0, gt=0, description="max global grad norm (None = no clipping)")
    amp: bool = Field(True, description="bfloat16 autocast; used on CUDA only")


class EarlyStoppingConfig(_Section):
    """Stop when ``metric`` has not improved for ``patience`` epochs (None = never stop early)."""

    metric: str = "val_hit@5"
    mode: Literal["max", "min"] = "max"
    patience: int | None = Field(3, ge=1)
    from_start: bool = Field(
        False,
        description="score the untrained model on val as epoch 0 and keep it as best.pt unless an epoch beats it "
        "(an anchored model starts AT its heuristic, so training can then never end below it on val)",
    )


class GateConfig(_Section):
    """After epoch ``epoch`` the metric must satisfy the bound(s), or the run stops with a triage note."""

    epoch: int = Field(ge=1)
    metric: str
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> GateConfig:
        if self.min is None and self.max is None:
            raise ValueError("a gate needs a bound: give `min` and/or `max`")
        return self


class RunConfig(_Section):
    """What every training run needs, whatever its task. ``bank`` is a path (relative paths are taken from the
    working directory), e.g. ``banks/enwiki`` made by ``lvmkit ingest ... --out banks/enwiki``. A task's config
    (``lvmkit.tasks.TASKS[name].config_class``) subclasses this with ``task: Literal[name]`` and its sections."""

    task: str = "lvm"
    bank: Path
    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    split: SplitConfig = Field(default_factory=SplitConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    checkpoint_every_steps: int | None = Field(
        500, ge=1, description="also checkpoint mid-epoch (None = epoch ends only)"
    )
    log_every_steps: int = Field(50, ge=1, description="a step row in history.jsonl every N optimiser steps")
    gates: list[GateConfig] = Field(default_factory=list)
    final_eval: bool = Field(True, description="evaluate the best checkpoint on the test split at the end")


# ----------------------------------------------------------------------------------------- loading
def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` -> (["optim", "lr"], 0.0003). The value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} is not of the form dotted.key=value (e.g. optim.lr=3e-4)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML ({e.__class__.__name__})") from e
    return key.split("."), value


def apply_override(raw: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``raw[path[0]][path[1]]... = value``, creating mappings on the way; integers index lists."""
    node: Any = raw
    for i, part in enumerate(path[:-1]):
        where = ".".join(path[: i + 1])
        if isinstance(node, list):
            node = node[_list_index(node, part, where)]
            continue
        if node.get(part) is None:
            if path[i + 1].isdigit():
                raise ConfigError(
                    f"override {'.'.join(path)}: {where} has no items; set the whole list ({where}=[...])"
                )
            node[part] = {}
        node = node[part]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"override {'.'.join(path)}: {where} is a value ({node!r}), not a section")
    last = path[-1]
    if isinstance(node, list):
        node[_list_index(node, last, ".".join(path))] = value
    else:
        node[last] = value


def _list_index(node: list, part: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(
            f"override {where}: the list has {len(node)} items; use an index 0..{len(node) - 1}"
        )
    return int(part)


def config_from_dict(raw: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a plain dict into its task's RunConfig subclass (``task`` discriminates; default ``lvm``),
    turning pydantic errors into one readable ConfigError."""
    from lvmkit.tasks import TASKS, run_config_adapter

    raw = {"task": "lvm", **raw}
    if raw.get("twotower", "") is None:  # written by lvmkit before the task spec: an LVM run's empty section
        raw = {k: v for k, v in raw.items() if k != "twotower"}
    task = raw["task"]
    if not isinstance(task, str) or task not in TASKS:
        allowed = " or ".join(repr(t) for t in TASKS)
        raise ConfigError(f"{source} is invalid:\n  - task: unknown task {task!r}; allowed: {allowed}")
    try:
        return run_config_adapter().validate_python(raw)
    except ValidationError as e:
        cls = TASKS[task].config_class
        lines = [_describe(err, cls, strip_tag=True) for err in e.errors()]
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(lines)) from None


def read_yaml_config(
    path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = (), what: str = "config file"
) -> dict[str, Any]:
    """The mapping in a YAML file ({} for None) with ``key=value`` overrides applied; ConfigError when the file
    is missing, not YAML, or not a mapping (shared by run configs and cascade configs)."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{what} {path} does not exist (see configs/ for examples)")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a mapping of config sections, got {type(raw).__name__}")
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(raw, keys, value)
    return raw


def load_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML config (or start from defaults when ``path`` is None) and apply ``key=value`` overrides."""
    raw = read_yaml_config(path, overrides)
    source = "config" if path is None else str(path)
    if overrides:
        source += " (with --set " + " ".join(overrides) + ")"
    return config_from_dict(raw, source)


def config_to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=False)


def save_config(cfg: RunConfig, dest: str | os.PathLike) -> None:
    """Write the resolved config (every field, defaults included) atomically."""
    write_text(dest, config_to_yaml(cfg))


def config_diff(a: RunConfig, b: RunConfig) -> list[str]:
    """Dotted names of the fields whose values differ between two configs."""
    return sorted(_diff(a.model_dump(mode="json"), b.model_dump(mode="json"), ""))


def _diff(a: Any, b: Any, prefix: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [prefix or "<root>"]


# ------------------------------------------------------------------------------------------ errors
def _describe(err: dict[str, Any], model: type[BaseModel] = RunConfig, strip_tag: bool = False) -> str:
    """One line per pydantic error: the dotted field, what went wrong, what is allowed. ``strip_tag`` drops
    the union's tag (the task name) that a discriminated union puts first in each location."""
    loc = [str(p) for p in err["loc"]][1 if strip_tag else 0 :]
    field = ".".join(loc) or "<root>"
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_fields(model, loc[:-1])
        section = ".".join(loc[:-1]) or "the top level"
        owner = _task_owning(loc[0]) if len(loc) == 1 else None
        hint = f" ({loc[0]} is the section of task: {owner})" if owner else ""
        return f"  - {field}: unknown field{hint}; allowed in {section}: {', '.join(allowed)}"
    if kind == "missing":
        return f"  - {field}: required field is missing"
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
    return f"  - {field}: {err['msg']}{shown}"


describe_error = _describe  # public: other typed configs (the serve routing file) format errors alike


def _allowed_fields(model: Any, loc: list[str]) -> list[str]:
    for part in loc:
        if part.isdigit():
            continue
        info = getattr(model, "model_fields", {}).get(part)
        if info is None:
            return []
        model = info.annotation
        if get_origin(model) is list:
            model = get_args(model)[0]
        elif get_args(model):  # Section | None
            model = next((a for a in get_args(model) if hasattr(a, "model_fields")), model)
    return list(getattr(model, "model_fields", {}))


def _task_owning(section: str) -> str | None:
    """The task whose config has top-level field ``section`` (for "unknown field" messages)."""
    from lvmkit.tasks import TASKS

    return next((n for n, spec in TASKS.items() if section in spec.config_class.model_fields), None)
