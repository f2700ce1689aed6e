"""Which run answers a request: routes by context length, a canary share, shadow runs and a latency guardrail.

A routing file (YAML) names the runs a server loads and says which one answers each request::

    runs:                      # name -> run directory (relative to this file), checkpoint or baseline:NAME
      amn: runs/amn
      gru: runs/gru
    default: amn               # answers whatever no route claims
    routes:                    # first match wins; bounds are inclusive, on the number of context chunks
      - {max_context: 2, run: gru}
    canary: {run: gru, share: 0.05}    # 5% of the default's traffic, chosen by a hash of the request id
    shadows: [gru]             # computed and logged for every request, never returned
    guardrail: {p95_factor: 1.2, min_samples: 50}   # canary P95 > 1.2 x default's P95 -> canary off
    latency_window: 1000       # rolling window (requests per run) for P50 / P95

Rules, each tested in tests/test_serve_routing.py:

- routes are tried in order; a request whose number of context chunks lies in ``[min_context, max_context]``
  goes to that route's run, else to ``default``;
- the canary takes only the default's traffic (a request a route sends elsewhere stays there). A request id
  is hashed (blake2b, salted with the canary's name) to a number u in [0, 1); the canary answers when
  u < share. The same id always gets the same run, so a client that sends its own id sees one model;
- shadows run for every request (except the one answering it) and their answers are logged, never returned;
- the guardrail compares rolling P95s once both the canary and the default have ``min_samples`` requests in
  the window; when the canary's P95 exceeds ``p95_factor`` times the default's, the canary is switched off
  for the life of the router (``canary_state()`` says when and why; a warning goes to the ``lvmkit.serve``
  logger). Nothing switches it back on but a restart (or ``Router.reset_canary``).

This module has no web framework in it: the server asks ``Router.choose`` before answering and calls
``Router.record`` with each run's latency afterwards.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lvmkit.errors import ConfigError

log = logging.getLogger("lvmkit.serve")

BASELINE_PREFIX = "baseline:"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Route(_Section):
    """Send requests with ``min_context <= n_context <= max_context`` chunks to ``run``."""

    run: str
    min_context: int = Field(1, ge=1, description="fewest context chunks (inclusive)")
    max_context: int | None = Field(
        None, ge=1, description="most context chunks (inclusive); None = no limit"
    )

    @model_validator(mode="after")
    def _bounds(self) -> Route:
        if self.max_context is not None and self.max_context < self.min_context:
            raise ValueError(f"max_context={self.max_context} is below min_context={self.min_context}")
        return self

    def matches(self, n_context: int) -> bool:
        return n_context >= self.min_context and (self.max_context is None or n_context <= self.max_context)

    def describe(self) -> str:
        hi = "" if self.max_context is None else f" <= {self.max_context}"
        return f"route {self.min_context} <= n_context{hi} -> {self.run}"


class Canary(_Section):
    """A share of the default run's traffic goes to ``run`` (by a hash of the request id)."""

    run: str
    share: float = Field(ge=0.0, le=1.0, description="fraction of the default's requests, 0..1")


class Guardrail(_Section):
    """Turn the canary off when its rolling P95 latency exceeds ``p95_factor`` x the default's."""

    p95_factor: float = Field(1.2, gt=0, description="allowed canary P95 / default P95 (1.2 = +20%)")
    min_samples: int = Field(50, ge=1, description="requests each run needs in the window before judging")


class RoutingConfig(_Section):
    """A routing file: the runs to load, the default, routes, a canary, shadows and a guardrail."""

    runs: dict[str, str] = Field(
        default_factory=dict,
        description="name -> run directory, checkpoint or baseline:NAME (relative paths: to the routing file)",
    )
    default: str
    routes: list[Route] = Field(default_factory=list)
    canary: Canary | None = None
    shadows: list[str] = Field(default_factory=list)
    guardrail: Guardrail | None = None
    latency_window: int = Field(1000, ge=10, description="requests per run kept for the rolling P50 / P95")

    @model_validator(mode="after")
    def _names_known(self) -> RoutingConfig:
        used = {"default": [self.default], "shadows": self.shadows}
        used["routes"] = [r.run for r in self.routes]
        if self.canary is not None:
            used["canary.run"] = [self.canary.run]
            if self.canary.run == self.default:
                raise ValueError(
                    f"canary.run is the default run {self.default!r}; a canary must be another run"
                )
        if self.runs:
            for where, names in used.items():
                unknown = sorted(set(names) - set(self.runs))
                if unknown:
                    raise ValueError(
                        f"{where} names {', '.join(map(repr, unknown))}, not in runs: {', '.join(self.runs)}"
                    )
        if len(set(self.shadows)) != len(self.shadows):
            raise ValueError(f"shadows lists a run twice: {self.shadows}")
        if self.guardrail is not None and self.canary is None:
            raise ValueError("guardrail is set but there is no canary for it to guard")
        return self

    def answering_runs(self) -> list[str]:
        """Runs that may answer a request (default first), without repeats."""
        names = [self.default, *(r.run for r in self.routes)]
        if self.canary is not None:
            names.append(self.canary.run)
        return list(dict.fromkeys(names))

    def all_runs(self) -> list[str]:
        """Every run the server must load: the answering runs, then the shadows."""
        return list(dict.fromkeys([*self.answering_runs(), *self.shadows]))

    def summary(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def load_routing(path: str | os.PathLike, overrides: tuple[str, ...] | list[str] = ()) -> RoutingConfig:
    """Read a routing YAML file (plus ``key=value`` overrides); relative run paths resolve against its folder.

    Every problem is one ConfigError naming the field, e.g. ``canary.share: Input should be less than or equal
    to 1 (got 1.5)``."""
    from lvmkit.train.config import apply_override, describe_error, parse_override

    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"routing file {path} does not exist (see the README's `lvmkit serve --routing` example)"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path} must hold a mapping (default, routes, canary, ...), got {type(raw).__name__}"
        )
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(raw, keys, value)
    try:
        cfg = RoutingConfig.model_validate(raw)
    except ValidationError as e:
        lines = "\n".join(describe_error(err, RoutingConfig) for err in e.errors())
        raise ConfigError(f"routing file {path} is invalid:\n{lines}") from None
    runs = {name: _resolve_run(spec, path.parent) for name, spec in cfg.runs.items()}
    return cfg.model_copy(update={"runs": runs})


def _resolve_run(spec: str, base: Path) -> str:
    if spec.startswith(BASELINE_PREFIX) or Path(spec).is_absolute():
        return spec
    return str((base / spec).resolve())


def canary_bucket(request_id: str, salt: str) -> float:
    """A deterministic number in [0, 1) for a request id: blake2b(salt, id), first 8 bytes / 2**64."""
    h = hashlib.blake2b(request_id.encode("utf-8"), digest_size=8, key=salt.encode("utf-8")[:64])
    return int.from_bytes(h.digest(), "big") / 2.0**64


# --------------------------------------------------------------------------------------- latencies
class LatencyWindow:
    """The last ``size`` latencies of one run (milliseconds), with percentiles over them."""

    def __init__(self, size: int):
        self._values: deque[float] = deque(maxlen=size)
        self.total = 0  # every request ever recorded, not just the window

    def add(self, ms: float) -> None:
        self._values.append(float(ms))
        self.total += 1

    def __len__(self) -> int:
        return len(self._values)

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(np.fromiter(self._values, float), q)) if self._values else None

    def summary(self) -> dict[str, Any]:
        return {
            "n": len(self),
            "total": self.total,
            "p50_ms": self.percentile(50),
            "p95_ms": self.percentile(95),
        }


# ----------------------------------------------------------------------------------------- the router
@dataclass(frozen=True)
class Decision:
    """The run that answers a request, the shadow runs to compute beside it, and why."""

    run: str
    shadows: tuple[str, ...] = ()
    reason: str = "default"


@dataclass
class CanaryState:
    run: str
    share: float
    enabled: bool = True
    tripped_at: str | None = None  # ISO time the guardrail switched it off
    reason: str | None = None
    answered: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Router:
    """Chooses the run for each request and keeps rolling latencies; safe to call from several threads."""

    config: RoutingConfig
    _windows: dict[str, LatencyWindow] = field(default_factory=dict, init=False)
    _canary: CanaryState | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self._windows = {name: LatencyWindow(self.config.latency_window) for name in self.config.all_runs()}
        c = self.config.canary
        self._canary = CanaryState(c.run, c.share) if c is not None else None

    @classmethod
    def single(cls, run: str) -> Router:
        """A router that sends everything to one run (a server started with ``--run``)."""
        return cls(RoutingConfig(default=run))

    def choose(self, request_id: str, n_context: int) -> Decision:
        cfg = self.config
        run, reason = cfg.default, "default"
        for route in cfg.routes:
            if route.matches(n_context):
                run, reason = route.run, route.describe()
                break
        if run == cfg.default and self._canary is not None:
            run, reason = self._canary_choice(request_id, run, reason)
        return Decision(run, tuple(s for s in cfg.shadows if s != run), reason)

    def _canary_choice(self, request_id: str, run: str, reason: str) -> tuple[str, str]:
        c = self._canary
        assert c is not None
        u = canary_bucket(request_id, c.run)
        if u >= c.share:
            return run, reason
        if not c.enabled:
            return run, f"{reason} (canary {c.run} is off: {c.reason})"
        with self._lock:
            c.answered += 1
        return c.run, f"canary {c.run} (bucket {u:.4f} < share {c.share})"

    def record(self, run: str, latency_ms: float) -> None:
        """Add one latency of ``run`` (answering or shadow) and apply the guardrail."""
        with self._lock:
            window = self._windows.get(run)
            if window is None:
                window = self._windows[run] = LatencyWindow(self.config.latency_window)
            window.add(latency_ms)
            c = self._canary
            if c is not None and c.enabled and run in (c.run, self.config.default):
                self._check_guardrail(c)

    def _check_guardrail(self, c: CanaryState) -> None:
        g = self.config.guardrail
        if g is None:
            return
        canary, default = self._windows[c.run], self._windows[self.config.default]
        if len(canary) < g.min_samples or len(default) < g.min_samples:
            return
        p95_c, p95_d = canary.percentile(95), default.percentile(95)
        assert p95_c is not None and p95_d is not None
        if p95_c > g.p95_factor * p95_d:
            c.enabled = False
            c.tripped_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            c.reason = (
                f"guardrail: canary {c.run} P95 {p95_c:.1f} ms > {g.p95_factor} x default "
                f"{self.config.default} P95 {p95_d:.1f} ms (over the last {len(canary)} / {len(default)} requests)"
            )
            log.warning("canary switched off: %s", c.reason)

    def reset_canary(self) -> None:
        """Switch the canary back on and forget its latencies (an operator's decision, never automatic)."""
        with self._lock:
            if self._canary is not None:
                self._canary = CanaryState(self._canary.run, self._canary.share)
                self._windows[self._canary.run] = LatencyWindow(self.config.latency_window)

    def latency(self, run: str) -> dict[str, Any]:
        with self._lock:
            return self._windows[run].summary() if run in self._windows else LatencyWindow(1).summary()

    def canary_state(self) -> dict[str, Any] | None:
        with self._lock:
            return self._canary.to_dict() if self._canary is not None else None

    def info(self) -> dict[str, Any]:
        """What ``/v1/info`` shows: the routing config, the canary's state and each run's rolling latency."""
        with self._lock:
            latency = {name: w.summary() for name, w in self._windows.items()}
            canary = self._canary.to_dict() if self._canary is not None else None
        return {"config": self.config.summary(), "canary": canary, "latency": latency}


# ------------------------------------------------------------------------------ the runs behind a router
@dataclass
class ShadowAnswer:
    run: str
    latency_ms: float
    chunk_ids: list[int]
    scores: list[float]
    overlap: float  # |shadow top-k & answer top-k| / k


class RoutedRuns:
    """Several loaded runs behind one ``Router``: the ``Predictors`` the server asks when ``--routing`` is given.

    ``answer`` chooses the run, predicts and records the forward's latency (the predict stage: encoding and
    search are the same work whichever run answers, so they would only dilute the comparison the guardrail
    makes). ``run_shadows`` computes the shadow runs' answers after the response has been sent."""

    def __init__(self, router: Router, predictors: dict[str, Any]):
        missing = sorted(set(router.config.all_runs()) - set(predictors))
        if missing:
            raise ConfigError(f"routing names runs that were not loaded: {', '.join(missing)}")
        self.router, self.predictors = router, predictors
        self._agreement: dict[str, list[float]] = {s: [0.0, 0.0] for s in router.config.shadows}  # [n, sum]
        self._lock = threading.Lock()

    @classmethod
    def open(cls, config: RoutingConfig, bank, runs_dir: Path | None = None) -> RoutedRuns:
        """Load every run the config names (each refused when trained in another vector space than ``bank``)."""
        from dataclasses import replace

        from lvmkit.serve.predictors import load_predictor

        if not config.runs:
            raise ConfigError(
                "the routing file has no 'runs:' mapping (name -> run directory or baseline:NAME)"
            )
        loaded = {}
        for name in config.all_runs():
            pred = load_predictor(config.runs[name], bank, runs_dir)
            loaded[name] = replace(pred, name=name, info={**pred.info, "spec": config.runs[name]})
        return cls(Router(config), loaded)

    # ---- Predictors
    def answer(self, request_id: str, context: np.ndarray) -> tuple[str, np.ndarray]:
        decision = self.router.choose(request_id, len(context))
        t0 = time.perf_counter()
        vec = self.predictors[decision.run].predict(context)
        self.router.record(decision.run, (time.perf_counter() - t0) * 1000.0)
        return decision.run, vec

    def describe(self) -> list[dict[str, Any]]:
        roles = self._roles()
        return [{"name": n, "ctx": p.ctx, "role": roles[n], **p.info} for n, p in self.predictors.items()]

    def names(self) -> list[str]:
        return list(self.predictors)

    # ---- shadows and /v1/info
    def shadows_for(self, run: str) -> tuple[str, ...]:
        return tuple(s for s in self.router.config.shadows if s != run)

    def run_shadows(self, run: str, context: np.ndarray, answer_ids: list[int], search) -> list[ShadowAnswer]:
        """Each shadow's answer for a request ``run`` answered: ``search(vec) -> (scores [k], ids [k])`` is the
        same search (k, exclusions) the answer used. Latencies go into the router's windows."""
        out = []
        k = max(1, len(answer_ids))
        for name in self.shadows_for(run):
            t0 = time.perf_counter()
            vec = self.predictors[name].predict(context)
            latency = (time.perf_counter() - t0) * 1000.0
            self.router.record(name, latency)
            scores, ids = search(vec)
            keep = [int(i) for i in ids if i >= 0]
            overlap = len(set(keep) & set(answer_ids)) / k
            with self._lock:
                stats = self._agreement.setdefault(name, [0.0, 0.0])
                stats[0] += 1
                stats[1] += overlap
            out.append(ShadowAnswer(name, latency, keep, [float(s) for s in scores[: len(keep)]], overlap))
        return out

    def info(self) -> dict[str, Any]:
        info = self.router.info()
        with self._lock:
            info["shadow_agreement"] = {
                name: {"requests": int(n), "mean_overlap_at_k": (s / n if n else None)}
                for name, (n, s) in self._agreement.items()
            }
        return info

    def _roles(self) -> dict[str, str]:
        cfg = self.router.config
        roles = dict.fromkeys(self.predictors, "route")
        roles.update(dict.fromkeys(cfg.shadows, "shadow"))
        if cfg.canary is not None:
            roles[cfg.canary.run] = "canary"
        roles[cfg.default] = "default"
        return roles
