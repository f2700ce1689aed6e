"""The library behind ``lvmkit eval``: score a run, a checkpoint or a baseline on a split of a bank.

    outcome = run_eval("runs/gru", "banks/enwiki", split="test", gates="gates.yaml")
    outcome.ok            # every gate held (True when there are none)
    outcome.suite         # SuiteResult: the model beside copy_last, mean_ctx, exp_weighted, ridge and oracle

Steps, each refusing what would make the numbers meaningless:

1. resolve the target: a run directory (its best.pt, else last.pt), a checkpoint file, or ``baseline:NAME``
   (``copy_last``, ``mean_ctx``, ``exp_weighted``, ``ridge``, ``blend``, ``oracle``);
2. provenance: a model trained on a bank from another encoder or dimension is refused (ProvenanceError
   naming both encoders). A bank with the same encoder but other contents is allowed (generalisation to
   another corpus); its split is then made from the run's (ratios, seed), which keeps every article the run
   trained on in train, because the split is a hash of each article id;
3. the split: ``--split-file``, else the run's split.json when the bank is the run's bank (Split.load refuses
   a split made for another bank), else a fresh ``make_split``;
4. the queries: the run's task decides them (``spec.query_sets``: the LVM's windows, the two-tower's pairs,
   with the run's data settings and the trainer's sample seeds), so ``lvmkit eval RUN`` on the test split
   scores the same queries as the run's final evaluation; fitted baselines learn from the task's
   ``fit_windows`` (LVM: ridge on the train windows, the blend's (w, alpha) chosen on the val windows);
5. the task's ``evaluate_suite`` (the same call the trainer's final evaluation makes: same baselines, same
   comparison) and ``measure_latency`` on the target;
6. gates (``lvmkit.eval.gates``) on the target's metrics plus latency (``p50_ms``, ``p95_ms``, ``qps``, ...);
7. ``metrics.json`` and ``metrics.md`` in ``out``.

Everything task-specific comes from the run's task spec (``lvmkit.tasks.TASKS``): how its checkpoint becomes
a predictor, which queries it is scored on, its baselines and comparison, its table columns. A baseline target
is scored as an LVM with ``ctx`` (stride 1, padded) and ``max_queries`` or 10,000 queries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lvmkit.artifacts import write_json, write_text
from lvmkit.bank.bank import VectorBank
from lvmkit.bank.manifest import EncoderInfo, check_same_space
from lvmkit.data.splits import SPLIT_NAMES, Split, make_split
from lvmkit.data.windows import WindowSet
from lvmkit.errors import ArtifactError, ConfigError
from lvmkit.eval.evaluator import (
    BASELINES,
    ORACLE,
    SuiteResult,
    fit_ridge,
    format_table,
    oracle,
)
from lvmkit.eval.gates import GateReport, check_gates, load_gates
from lvmkit.eval.latency import LatencyResult, measure_latency
from lvmkit.eval.protocol import DESCRIPTION, OPEN, check_protocol
from lvmkit.eval.tuning import fit_blend
from lvmkit.tasks import SEED_OFFSET, get_task
from lvmkit.tasks.base import config_cap
from lvmkit.train.config import RunConfig

BASELINE_PREFIX = "baseline:"
DEFAULT_MAX_QUERIES = 10_000
Progress = Callable[[str, int, int], None]  # progress(stage, done, total)


# ------------------------------------------------------------------------------------------ the target
@dataclass
class Target:
    """What is being evaluated, with everything known about where it came from."""

    kind: str  # "run", "checkpoint" or "baseline"
    name: str  # the row name in the results table
    spec: str  # what the user typed
    predictor: Any = None  # nn.Module or callable; None for a baseline the suite builds (ridge: fitted there)
    checkpoint: Path | None = None
    config: Any = None  # RunConfig of a run / checkpoint
    trained_on: dict[str, Any] = field(default_factory=dict)  # {"bank_id", "encoder"} from the checkpoint
    split_file: Path | None = None  # the run's split.json
    epoch: int | None = None  # the epoch the checkpoint's weights are from
    live: str | None = None  # "still training (...)" while a process trains the run: its checkpoints change

    def describe(self) -> str:
        if self.kind == "baseline":
            return f"baseline {self.name}"
        what = f"{self.kind} {self.spec}"
        what += f" ({self.checkpoint.name}, epoch {self.epoch})" if self.checkpoint else ""
        return what + (f" [{self.live}: these numbers are of its checkpoint now]" if self.live else "")


def resolve_target(spec: str, bank: VectorBank) -> Target:
    """Turn RUN | CHECKPOINT | baseline:NAME into a ``Target``, refusing a model from another vector space."""
    if spec.startswith(BASELINE_PREFIX):
        name = spec[len(BASELINE_PREFIX) :]
        allowed = [*BASELINES, ORACLE]
        if name not in allowed:
            raise ConfigError(f"unknown baseline {name!r} in {spec!r}; allowed: {', '.join(allowed)}")
        return Target("baseline", name, spec)
    path = Path(spec)
    live = None
    if path.is_dir():
        from lvmkit.train.runs import RunPaths, still_training

        live = still_training(RunPaths(path))
        ckpt_path = next((p for p in (path / "best.pt", path / "last.pt") if p.is_file()), None)
        if ckpt_path is None and live:
            raise ArtifactError(
                f"{path} is {live} and has no checkpoint yet: evaluate it once it has finished an epoch "
                f"(follow it with `lvmkit runs status {path}`)"
            )
        if ckpt_path is None:
            raise ArtifactError(
                f"{path} is a directory without best.pt or last.pt: not a run made by `lvmkit train` (or it has "
                "not finished an epoch yet)"
            )
        kind = "run"
    elif path.is_file():
        ckpt_path, kind = path, "checkpoint"
    else:
        raise ArtifactError(
            f"{spec!r} is not a run directory, a checkpoint file or baseline:NAME "
            f"(baselines: {', '.join([*BASELINES, ORACLE])})"
        )
    from lvmkit.train.checkpoint import load_checkpoint
    from lvmkit.train.config import config_from_dict

    ckpt = load_checkpoint(ckpt_path)
    stamp = ckpt["bank"]
    check_same_space(
        EncoderInfo.model_validate(stamp["encoder"]),
        bank.encoder,
        f"the model in {ckpt_path} (trained on bank {stamp['bank_id']})",
        f"bank {bank.path}",
    )
    cfg = config_from_dict(ckpt["config"], source=f"the config stored in {ckpt_path}")
    name, predictor = get_task(cfg.task).load_predictor(ckpt, ckpt_path)
    if name in BASELINES or name == ORACLE:
        name = f"{name}_model"  # a trained model must not take a baseline's row
    split_file = ckpt_path.parent / "split.json"
    return Target(
        kind,
        name,
        spec,
        predictor,
        ckpt_path,
        cfg,
        dict(stamp),
        split_file if split_file.is_file() else None,
        int(ckpt["progress"].get("epoch", 1)) - 1 if ckpt["progress"].get("batch", 0) == 0 else None,
        live,
    )


# ------------------------------------------------------------------------------------------- the data
def resolve_split(
    target: Target, bank: VectorBank, split_file: str | Path | None, ratios, seed: int
) -> tuple[Split, str]:
    """The split to evaluate on, and a sentence saying where it came from (goes into metrics.md)."""
    if split_file is not None:
        return Split.load(split_file, bank), f"split file {split_file}"
    same_bank = target.trained_on.get("bank_id") == bank.manifest.bank_id
    if target.split_file is not None and same_bank:
        return Split.load(target.split_file, bank), f"the run's split {target.split_file}"
    if target.config is not None:
        ratios, seed = target.config.split.ratios, target.config.split.seed
    split = make_split(bank, ratios=ratios, seed=seed)
    source = f"make_split(ratios={list(split.ratios)}, seed={split.seed}) on this bank"
    if target.trained_on and not same_bank:
        source += (
            f"; the model was trained on bank {target.trained_on['bank_id']}: articles present in both banks keep "
            "their split (the split hashes article ids), so none of its training articles is in val/test"
        )
    return split, source


def baseline_config(bank: VectorBank, ctx: int, max_queries: int | None, seed: int) -> RunConfig:
    """The LVM config a baseline is scored under: ``ctx`` (stride 1, padded), at most ``max_queries`` (or
    10,000) test queries, up to 2,000 val windows (the blend is tuned on them), every train window (ridge)."""
    from lvmkit.train.config import config_from_dict

    cap = max_queries or DEFAULT_MAX_QUERIES
    data = {"ctx": int(ctx), "max_train_windows": None, "max_eval_queries": 2000, "max_test_queries": cap}
    return config_from_dict({"task": "lvm", "bank": str(bank.path), "seed": seed, "data": data}, "baseline")


def build_windows(
    target: Target,
    bank: VectorBank,
    split: Split,
    name: str,
    max_queries: int | None,
    ctx: int,
    seed: int,
    fit: tuple[str, ...] | None = None,
) -> tuple[WindowSet, dict[str, WindowSet], RunConfig, int | None]:
    """The query windows (pairs) of split ``name`` and the windows fitted baselines learn from, from the
    target's task spec (``query_sets``): the run's own settings, caps and sample seeds, so the queries are the
    ones the run was scored on (``max_queries`` overrides the cap). A baseline is scored under
    ``baseline_config`` (``max_queries`` or 10,000 queries of any split). ``fit``: the splits to build for
    fitting (None: the task's ``fit_windows``; a split without windows is left out). Returns (queries,
    {split: windows}, the config that decided them, the query cap)."""
    cfg = target.config if target.config is not None else baseline_config(bank, ctx, max_queries, seed)
    spec = get_task(cfg.task)
    sets = spec.query_sets(cfg, bank, split)
    cap = max_queries
    if target.config is None:
        cap = max_queries or DEFAULT_MAX_QUERIES
    elif cap is None:  # the run's cap (the train split as queries is capped like test)
        cap = cfg.data.max_test_queries if name == "train" else config_cap(cfg, name)
    return sets.get(name, cap), spec.fit_sets(sets, fit), cfg, cap


# ------------------------------------------------------------------------------------------- the outcome
@dataclass
class EvalOutcome:
    target: Target
    suite: SuiteResult
    latency: LatencyResult | None
    gates: GateReport | None
    gate_metrics: dict[str, float]
    metrics_json: Path
    metrics_md: Path
    info: dict[str, Any]
    columns: tuple[str, ...] = ()  # the task's results-table columns

    @property
    def ok(self) -> bool:
        """Every gate held (True without a gates file)."""
        return self.gates is None or self.gates.ok

    @property
    def result(self):
        return self.suite[self.target.name]


def default_out(target: Target, split: str, suffix: str = "") -> Path:
    """RUN/eval-SPLIT, CKPT_DIR/eval-SPLIT-STEM, or ./eval-baseline-NAME-SPLIT; ``suffix`` (e.g.
    ``-in-article``, ``-ridge``) keeps other protocols and heads from overwriting the default."""
    if target.kind == "run":
        return Path(target.spec) / f"eval-{split}{suffix}"
    if target.kind == "checkpoint":
        return target.checkpoint.parent / f"eval-{split}-{target.checkpoint.stem}{suffix}"
    return Path(f"eval-baseline-{target.name}-{split}{suffix}")


def run_eval(
    target: str,
    bank: str | Path | VectorBank,
    *,
    split: str = "test",
    index: str | None = None,
    nprobe: int | None = None,
    gates: str | Path | dict | list | None = None,
    out: str | Path | None = None,
    exclude_context: bool = True,
    max_queries: int | None = None,
    split_file: str | Path | None = None,
    ctx: int = 5,
    split_ratios=(0.8, 0.1, 0.1),
    split_seed: int = 0,
    latency_n: int = 200,
    n_boot: int = 1000,
    seed: int = 0,
    progress: Progress | None = None,
    protocol: str = OPEN,
    head: str | None = None,
) -> EvalOutcome:
    """Evaluate ``target`` (RUN | CHECKPOINT | baseline:NAME) on ``split`` of ``bank``; see the module doc.

    ctx, split_ratios, split_seed  data settings for a baseline (a run brings its own)
    max_queries  cap on evaluated windows (a seeded sample); None: the run's max_test_queries / 10,000
    latency_n    requests timed at batch size 1 (0: no latency measurement)
    gates        a gates file (YAML / JSON) or an already-parsed spec
    protocol     "open" (default) or "in-article" (``lvmkit.eval.protocol``); latency is timed under open only
    head         an alignment head fitted by ``lvmkit align`` (ridge | procrustes), applied to the prediction
    """
    check_protocol(protocol)
    if split not in SPLIT_NAMES:
        raise ConfigError(f"--split {split} is not known; allowed: {', '.join(SPLIT_NAMES)}")
    if max_queries is not None and max_queries < 1:
        raise ConfigError(f"--max-queries must be >= 1, got {max_queries}")
    gate_spec = load_gates(gates) if isinstance(gates, str | Path) else gates
    bank = bank if isinstance(bank, VectorBank) else VectorBank.open(bank)
    t = resolve_target(target, bank)
    if head is not None:
        from lvmkit.heads.align import attach_head

        attach_head(t, head, bank)
    sp, split_source = resolve_split(t, bank, split_file, split_ratios, split_seed)
    windows, fit_on, cfg, cap = build_windows(t, bank, sp, split, max_queries, ctx, seed)
    spec = get_task(cfg.task)

    def stage(name: str):
        return None if progress is None else (lambda done, total: progress(name, done, total))

    models = {} if t.kind == "baseline" else {t.name: t.predictor}
    suite = spec.evaluate_suite(cfg, models, windows, bank, train_windows=fit_on.get("train"),
                                val_windows=fit_on.get("val"), index=index, nprobe=nprobe,
                                exclude_context=exclude_context, n_boot=n_boot, seed=cfg.seed,
                                progress=stage("evaluating"), protocol=protocol)  # fmt: skip
    if t.name not in suite:
        raise ConfigError(
            f"baseline {t.name} could not be evaluated: {suite.skipped.get(t.name, 'unknown reason')}"
        )
    latency = None
    if latency_n > 0 and protocol == OPEN:
        latency = _latency(
            t, spec, windows, bank, fit_on, latency_n, exclude_context, index, nprobe, progress
        )
    gate_metrics = dict(suite[t.name].metrics)
    if latency is not None:
        gate_metrics.update({k: v for k, v in latency.to_dict().items() if k.endswith("_ms") or k == "qps"})
    report = check_gates(gate_metrics, gate_spec) if gate_spec is not None else None

    suffix = ("" if protocol == OPEN else f"-{protocol}") + (f"-{head}" if head else "")
    out = Path(out) if out is not None else default_out(t, split, suffix)
    info = {"protocol": protocol, "head": head, **_target_info(t), "split": split, "split_source": split_source,
            "split_sha256": sp.hash, "task": cfg.task, "unit": spec.unit, "n_queries": len(windows),
            "queries_capped_at": cap, "windows": window_info(cfg, split), **_bank_info(bank, t, suite[t.name]),
            "exclude_context": bool(exclude_context)}  # fmt: skip
    columns = spec.table_columns(cfg)
    metrics_json, metrics_md = _write(out, info, suite, latency, report, columns)
    return EvalOutcome(t, suite, latency, report, gate_metrics, metrics_json, metrics_md, info, columns)


def _target_info(t: Target) -> dict[str, Any]:
    return {"target": t.spec, "kind": t.kind, "primary": t.name, "described": t.describe(),
            "still_training": t.live, "model": _describe_model(t)}  # fmt: skip


def _bank_info(bank: VectorBank, t: Target, primary) -> dict[str, Any]:
    return {"bank": str(bank.path), "bank_id": bank.manifest.bank_id, "encoder": bank.encoder.describe(),
            "trained_on_bank_id": t.trained_on.get("bank_id"), "index": primary.info.get("index"),
            "nprobe": primary.info.get("nprobe")}  # fmt: skip


def _write(out: Path, info, suite: SuiteResult, latency, report, columns) -> tuple[Path, Path]:
    """OUT/metrics.json (info, the suite, latency, gates) and OUT/metrics.md."""
    metrics_json, metrics_md = out / "metrics.json", out / "metrics.md"
    out.mkdir(parents=True, exist_ok=True)
    write_json(metrics_json, {**info, **suite.to_dict(), "latency": latency.to_dict() if latency else None,
                              "gates": report.to_dict() if report is not None else None})  # fmt: skip
    write_text(metrics_md, _markdown(info, suite, latency, report, columns))
    return metrics_json, metrics_md


def target_predictor(t: Target, bank: VectorBank, fit_on: dict[str, WindowSet]):
    """The predictor of a resolved target: a run's model, or a baseline built the way the suite builds it
    (ridge fitted on ``fit_on["train"]``, the blend tuned on ``fit_on["val"]``, oracle = the truth)."""
    if t.kind != "baseline":
        return t.predictor
    return baseline_predictor(t.name, bank, fit_on.get("train"), fit_on.get("val"))


def baseline_predictor(name: str, bank: VectorBank, train: WindowSet | None, val: WindowSet | None):
    from lvmkit.models import build_model

    if name == ORACLE:
        return oracle
    if name == "ridge":
        return fit_ridge(train, bank.dim)
    if name == "blend":
        return fit_blend(
            val if val is not None else train, bank, tuned_on="val" if val is not None else "train"
        )
    return build_model(name, bank.dim, **BASELINES[name])


def _describe_model(t: Target) -> str:
    if t.kind == "baseline":
        return f"baseline {t.name}"
    if isinstance(t.predictor, torch.nn.Module):
        from lvmkit.models import describe

        return describe(t.predictor)
    return t.name


def _latency(t, spec, windows, bank, fit_on, n, exclude_context, index, nprobe, progress) -> LatencyResult:
    """Forward + search latency of the target (a baseline is built, ridge / blend fitted, as the suite does)."""
    if progress is not None:
        progress("timing", 0, 1)
    predictor, space = spec.search_space(target_predictor(t, bank, fit_on), bank)
    lat = measure_latency(
        predictor, windows, space, n=n, exclude_context=exclude_context, index=index, nprobe=nprobe
    )
    if progress is not None:
        progress("timing", 1, 1)
    return lat


def window_info(cfg: RunConfig, split: str) -> dict[str, Any]:
    """The settings that decided the queries (goes into metrics.json)."""
    d = cfg.data
    out = {
        "ctx": d.ctx,
        "stride": d.stride,
        "min_ctx": d.min_ctx,
        "pad": d.pad,
        "seed": cfg.seed + SEED_OFFSET[split],
    }
    if cfg.task == "twotower":
        out.update(pairs=True, eval_stride=cfg.twotower.eval_stride)
    return out


def _markdown(info: dict[str, Any], suite: SuiteResult, latency: LatencyResult | None, gates, columns) -> str:
    lines = [
        f"# {info['primary']}: {info['split']} split, protocol {info['protocol']}",
        "",
        f"Protocol {DESCRIPTION[info['protocol']]}.",
        "",
        info["described"] if info["kind"] == "baseline" else f"{info['described']}: {info['model']}",
        "",
        f"{info['n_queries']} {info['split']} {info['unit']} (ctx {info['windows']['ctx']}) of bank {info['bank']} "
        f"({info['encoder']}); split: {info['split_source']}.",
        "",
        format_table(suite, columns),
        "",
    ]
    if latency is not None:
        lines += [
            f"Latency of {info['primary']} (forward + top-{latency.k} search, batch {latency.batch_size}, "
            f"{latency.torch_threads} torch threads, {latency.index} index): P50 {latency.p50_ms:.2f} ms, "
            f"P95 {latency.p95_ms:.2f} ms, P99 {latency.p99_ms:.2f} ms; {latency.qps:,.0f} queries/s in batches "
            f"of {latency.throughput_batch}.",
            "",
        ]
    if gates is not None:
        lines += ["## Gates", "", gates.to_markdown(), ""]
    return "\n".join(lines)
