"""Gates: named bounds that a run's metrics must meet before it counts as good enough to ship.

A gate spec maps metric names to bounds::

    {"contain@50": {"min": 0.60}, "eff@5": {"min": 0.68}, "hit@5": {"min": 0.40}, "p95_ms": {"max": 1.45}}

or, equivalently, is a list of rules ``[{"metric": "hit@5", "min": 0.40}, ...]``; a rule may carry an
``epoch`` (the trainer's epoch gates, e.g. ``{epoch: 2, metric: val_cosine, min: 0.5}``): the trainer picks
the rules due at an epoch and calls ``check_gates`` on them, which compares and records the epoch.
Bounds are inclusive. A missing or NaN value fails its gate; an unknown metric name is a ConfigError that
lists the metrics available, so a typo cannot silently pass.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lvmkit.errors import ConfigError

BOUND_KEYS = ("min", "max")
RULE_KEYS = ("metric", "min", "max", "epoch")


@dataclass(frozen=True)
class Gate:
    metric: str
    min: float | None = None
    max: float | None = None
    epoch: int | None = None

    def bound(self) -> str:
        parts = []
        if self.min is not None:
            parts.append(f">= {self.min:g}")
        if self.max is not None:
            parts.append(f"<= {self.max:g}")
        return " and ".join(parts)


@dataclass(frozen=True)
class GateRow:
    metric: str
    value: float | None
    bound: str
    held: bool
    epoch: int | None = None


@dataclass
class GateReport:
    rows: list[GateRow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.held for r in self.rows)

    @property
    def failed(self) -> list[GateRow]:
        return [r for r in self.rows if not r.held]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "rows": [asdict(r) for r in self.rows]}

    def to_markdown(self) -> str:
        lines = ["| metric | value | bound | held |", "|---|---:|---|:---:|"]
        for r in self.rows:
            value = "missing" if r.value is None else f"{r.value:.4g}"
            name = r.metric if r.epoch is None else f"{r.metric} (epoch {r.epoch})"
            lines.append(f"| {name} | {value} | {r.bound} | {'yes' if r.held else '**no**'} |")
        lines.append("")
        lines.append(
            "All gates held." if self.ok else f"{len(self.failed)} of {len(self.rows)} gates failed."
        )
        return "\n".join(lines)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    return float(value)


def _gate(metric: Any, bounds: Mapping[str, Any], where: str) -> Gate:
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"{where}: the metric name must be a non-empty string, got {metric!r}")
    if not any(k in bounds for k in BOUND_KEYS):
        raise ConfigError(f"{where} ({metric}) needs a bound: 'min' and/or 'max'")
    lo = _number(bounds["min"], f"{where}.min") if "min" in bounds else None
    hi = _number(bounds["max"], f"{where}.max") if "max" in bounds else None
    if lo is not None and hi is not None and lo > hi:
        raise ConfigError(f"{where} ({metric}): min {lo} is above max {hi}")
    epoch = bounds.get("epoch")
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
        raise ConfigError(f"{where}.epoch must be a non-negative integer, got {epoch!r}")
    return Gate(metric, lo, hi, epoch)


def _check_mapping(obj: Any, where: str, allowed: tuple[str, ...], example: str) -> None:
    """``obj`` must be a mapping whose keys are all in ``allowed`` (errors name ``where``)."""
    if not isinstance(obj, Mapping):
        raise ConfigError(f"{where} must be a mapping like {example}, got {obj!r}")
    extra = set(obj) - set(allowed)
    if extra:
        raise ConfigError(f"{where} has unknown keys {sorted(extra)}; allowed: {', '.join(allowed)}")


def parse_gates(spec: Mapping[str, Any] | list[Mapping[str, Any]]) -> list[Gate]:
    """Validate a gate spec (mapping or list of rules, see the module docstring) into ``Gate`` objects."""
    gates = []
    if isinstance(spec, Mapping):
        for metric, bounds in spec.items():
            where = f"gates[{metric!r}]"
            _check_mapping(bounds, where, BOUND_KEYS, "{min: 0.4}")
            gates.append(_gate(metric, bounds, where))
    elif isinstance(spec, list):
        for i, rule in enumerate(spec):
            where = f"gates[{i}]"
            _check_mapping(rule, where, RULE_KEYS, "{metric: hit@5, min: 0.4}")
            gates.append(_gate(rule.get("metric"), rule, where))
    else:
        raise ConfigError(f"a gate spec must be a mapping or a list of rules, got {type(spec).__name__}")
    return gates


def check_gates(metrics: Mapping[str, Any], spec: Mapping[str, Any] | list[Mapping[str, Any]]) -> GateReport:
    """Compare ``metrics`` (name -> number) against every gate in ``spec``; one report row per gate."""
    gates = parse_gates(spec)
    unknown = sorted({g.metric for g in gates} - set(metrics))
    if unknown:
        raise ConfigError(
            f"gate metric(s) {', '.join(unknown)} not among the measured metrics; available: "
            f"{', '.join(sorted(metrics))}"
        )
    rows = []
    for g in gates:
        raw = metrics[g.metric]
        if raw is not None and (isinstance(raw, bool) or not isinstance(raw, int | float)):
            try:
                raw = float(raw)  # numpy scalars and 0-d arrays
            except (TypeError, ValueError):
                raise ConfigError(f"gate metric {g.metric} is not a number (value {raw!r})") from None
        value = None if raw is None else float(raw)
        held = value is not None and not math.isnan(value)
        if held and g.min is not None:
            held = value >= g.min
        if held and g.max is not None:
            held = value <= g.max
        rows.append(GateRow(g.metric, value, g.bound(), held, g.epoch))
    return GateReport(rows)


def load_gates(path: str | Path) -> Mapping[str, Any] | list[Mapping[str, Any]]:
    """Read and validate a gate spec from YAML or JSON; a top-level ``gates:`` key is unwrapped."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"gate file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        spec = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(
            f"gate file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}"
        ) from e
    if isinstance(spec, Mapping) and set(spec) == {"gates"}:
        spec = spec["gates"]
    try:
        parse_gates(spec)
    except ConfigError as e:
        raise ConfigError(f"gate file {path}: {e}") from e
    return spec
