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
4. windows: the run's data settings (ctx, stride, min_ctx, pad) and its deterministic query sample, so
   ``lvmkit eval RUN`` on the test split scores the same windows as the run's final evaluation; ridge is
   fitted on the train windows and the blend's (w, alpha) chosen on the val windows (``val_windows``);
5. ``evaluate_suite`` (full-bank search, intervals, paired comparison with the best baseline) and
   ``measure_latency`` on the target;
6. gates (``lvmkit.eval.gates``) on the target's metrics plus latency (``p50_ms``, ``p95_ms``, ``qps``, ...);
7. ``metrics.json`` and ``metrics.md`` in ``out``.

A run's task decides how its checkpoint becomes a predictor (``PREDICTOR_LOADERS``): an LVM predicts from the
context; another task (the two-tower retriever's query tower) registers its loader there with one line.
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
from lvmkit.data.windows import WindowSet, make_windows
from lvmkit.errors import ArtifactError, ConfigError
from lvmkit.eval.evaluator import (
    BASELINES,
    ORACLE,
    SuiteResult,
    evaluate_suite,
    fit_ridge,
    format_table,
    oracle,
)
from lvmkit.eval.gates import GateReport, check_gates, load_gates
from lvmkit.eval.latency import LatencyResult, measure_latency
from lvmkit.eval.protocol import DESCRIPTION, OPEN, check_protocol
from lvmkit.eval.tuning import fit_blend

BASELINE_PREFIX = "baseline:"
DEFAULT_MAX_QUERIES = 10_000
SPLIT_SEED_OFFSET = {"train": 0, "val": 1, "test": 2}  # the trainer's query samples (lvm_task.from_config)
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

    def describe(self) -> str:
        if self.kind == "baseline":
            return f"baseline {self.name}"
        what = f"{self.kind} {self.spec}"
        return what + (f" ({self.checkpoint.name}, epoch {self.epoch})" if self.checkpoint else "")


def _lvm_predictor(ckpt: dict[str, Any], path: Path) -> tuple[str, torch.nn.Module]:
    """An LVM checkpoint's model: ``build_model(**spec)`` with the stored weights, in eval mode."""
    from lvmkit.models import build_model

    if "model" not in ckpt["modules"]:
        raise ArtifactError(f"{path} holds no module named 'model' (it has: {', '.join(ckpt['modules'])})")
    model = build_model(**ckpt["model"])
    model.load_state_dict(ckpt["modules"]["model"])
    return str(ckpt["model"].get("name", "model")), model.eval()


def _twotower_predictor(ckpt: dict[str, Any], path: Path) -> tuple[str, torch.nn.Module]:
    """A two-tower checkpoint's query tower (its documents must be the bank itself: ``doc_tower: identity``)."""
    from lvmkit.tasks.twotower.task import load_query_tower

    return load_query_tower(ckpt, path)


# How a checkpoint of each task becomes a predictor ``(name, nn.Module | callable on a WindowBatch)``.
PREDICTOR_LOADERS: dict[str, Callable[[dict[str, Any], Path], tuple[str, Any]]] = {
    "lvm": _lvm_predictor,
    "twotower": _twotower_predictor,
}


def resolve_target(spec: str, bank: VectorBank) -> Target:
    """Turn RUN | CHECKPOINT | baseline:NAME into a ``Target``, refusing a model from another vector space."""
    if spec.startswith(BASELINE_PREFIX):
        name = spec[len(BASELINE_PREFIX) :]
        allowed = [*BASELINES, ORACLE]
        if name not in allowed:
            raise ConfigError(f"unknown baseline {name!r} in {spec!r}; allowed: {', '.join(allowed)}")
        return Target("baseline", name, spec)
    path = Path(spec)
    if path.is_dir():
        ckpt_path = next((p for p in (path / "best.pt", path / "last.pt") if p.is_file()), None)
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
    loader = PREDICTOR_LOADERS.get(cfg.task)
    if loader is None:
        raise ConfigError(
            f"{ckpt_path} is a {cfg.task!r} run; this lvmkit evaluates runs of: {', '.join(PREDICTOR_LOADERS)}"
        )
    name, predictor = loader(ckpt, ckpt_path)
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


def build_windows(
    target: Target, bank: VectorBank, split: Split, name: str, max_queries: int | None, ctx: int, seed: int
) -> tuple[WindowSet, WindowSet | None, dict[str, Any], int | None, int]:
    """The query windows of split ``name`` and the train windows (for ridge, and the sampler in diagnostics).

    A run's own data settings and caps are used, with the trainer's seeds, so the windows are the ones the run
    was scored on; a baseline gets ``ctx`` (stride 1, padded) and ``max_queries`` or 10,000 queries.
    Returns (queries, train or None, window settings, query cap, query sample seed).
    """
    cfg = target.config
    if cfg is not None:
        dc = cfg.data
        wkw = {"ctx": dc.ctx, "stride": dc.stride, "min_ctx": dc.min_ctx, "pad": dc.pad}
        base_seed, train_cap = cfg.seed, dc.max_train_windows
        cap = (
            max_queries
            if max_queries is not None
            else (dc.max_eval_queries if name == "val" else dc.max_test_queries)
        )
    else:
        wkw = {"ctx": int(ctx), "stride": 1, "min_ctx": None, "pad": True}
        base_seed, cap, train_cap = seed, max_queries or DEFAULT_MAX_QUERIES, None
    query_seed = base_seed + SPLIT_SEED_OFFSET[name]
    windows = make_windows(bank, split, name, **wkw).sample(cap, query_seed)
    if len(windows) == 0:
        raise ConfigError(
            f"the {name} split of bank {bank.path} has no windows with ctx={wkw['ctx']}: its articles are too "
            "short or too few (try a smaller --ctx or another split)"
        )
    train = make_windows(bank, split, "train", **wkw).sample(train_cap, base_seed)
    return windows, (train if len(train) else None), wkw, cap, query_seed


def val_windows(
    target: Target, bank: VectorBank, split: Split, wkw: dict[str, Any], base_seed: int
) -> WindowSet | None:
    """The val windows the blend baseline is tuned on: the run's val sample (``max_eval_queries``, the
    trainer's seed) for a run, else up to 2,000 with the same window settings as the queries."""
    cap = target.config.data.max_eval_queries if target.config is not None else 2000
    ws = make_windows(bank, split, "val", **wkw).sample(cap, base_seed + SPLIT_SEED_OFFSET["val"])
    return ws if len(ws) else None


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
        raise ConfigError(f"split {split!r} is not known; allowed: {', '.join(SPLIT_NAMES)}")
    if max_queries is not None and max_queries < 1:
        raise ConfigError(f"max_queries must be >= 1, got {max_queries}")
    gate_spec = load_gates(gates) if isinstance(gates, str | Path) else gates
    bank = bank if isinstance(bank, VectorBank) else VectorBank.open(bank)
    t = resolve_target(target, bank)
    if head is not None:
        from lvmkit.heads.align import attach_head

        attach_head(t, head, bank)
    sp, split_source = resolve_split(t, bank, split_file, split_ratios, split_seed)

    windows, train, wkw, cap, query_seed = build_windows(t, bank, sp, split, max_queries, ctx, seed)
    base_seed = query_seed - SPLIT_SEED_OFFSET[split]
    val = val_windows(t, bank, sp, wkw, base_seed)

    def stage(name: str):
        return None if progress is None else (lambda done, total: progress(name, done, total))

    models = {} if t.kind == "baseline" else {t.name: t.predictor}
    suite = evaluate_suite(
        models,
        windows,
        bank,
        train_windows=train,
        val_windows=val,
        index=index,
        nprobe=nprobe,
        exclude_context=exclude_context,
        n_boot=n_boot,
        seed=base_seed,
        progress=stage("evaluating"),
        protocol=protocol,
    )
    if t.name not in suite:
        raise ConfigError(
            f"baseline {t.name} could not be evaluated: {suite.skipped.get(t.name, 'unknown reason')}"
        )

    latency = None
    if latency_n > 0 and protocol == OPEN:
        if progress is not None:
            progress("timing", 0, 1)
        predictor = t.predictor
        if t.kind == "baseline":
            predictor = _baseline_predictor(t.name, bank, train, val)
        latency = measure_latency(
            predictor, windows, bank, n=latency_n, exclude_context=exclude_context, index=index, nprobe=nprobe
        )
        if progress is not None:
            progress("timing", 1, 1)

    primary = suite[t.name]
    gate_metrics = {k: v for k, v in primary.metrics.items()}
    if latency is not None:
        gate_metrics.update({k: v for k, v in latency.to_dict().items() if k.endswith("_ms") or k == "qps"})
    report = check_gates(gate_metrics, gate_spec) if gate_spec is not None else None

    suffix = ("" if protocol == OPEN else f"-{protocol}") + (f"-{head}" if head else "")
    out = Path(out) if out is not None else default_out(t, split, suffix)
    info = {
        "protocol": protocol,
        "head": head,
        "target": t.spec,
        "kind": t.kind,
        "primary": t.name,
        "described": t.describe(),
        "model": _describe_model(t),
        "split": split,
        "split_source": split_source,
        "split_sha256": sp.hash,
        "n_queries": len(windows),
        "queries_capped_at": cap,
        "windows": {**wkw, "seed": query_seed},
        "bank": str(bank.path),
        "bank_id": bank.manifest.bank_id,
        "encoder": bank.encoder.describe(),
        "trained_on_bank_id": t.trained_on.get("bank_id"),
        "exclude_context": bool(exclude_context),
        "index": primary.info.get("index"),
        "nprobe": primary.info.get("nprobe"),
    }
    metrics_json, metrics_md = out / "metrics.json", out / "metrics.md"
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        metrics_json,
        {
            **info,
            **suite.to_dict(),
            "latency": latency.to_dict() if latency is not None else None,
            "gates": report.to_dict() if report is not None else None,
        },
    )
    write_text(metrics_md, _markdown(info, suite, latency, report))
    return EvalOutcome(t, suite, latency, report, gate_metrics, metrics_json, metrics_md, info)


def _baseline_predictor(name: str, bank: VectorBank, train: WindowSet | None, val: WindowSet | None):
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


def _markdown(info: dict[str, Any], suite: SuiteResult, latency: LatencyResult | None, gates) -> str:
    lines = [
        f"# {info['primary']}: {info['split']} split, protocol {info['protocol']}",
        "",
        f"Protocol {DESCRIPTION[info['protocol']]}.",
        "",
        info["described"] if info["kind"] == "baseline" else f"{info['described']}: {info['model']}",
        "",
        f"{info['n_queries']} {info['split']} windows (ctx {info['windows']['ctx']}) of bank {info['bank']} "
        f"({info['encoder']}); split: {info['split_source']}.",
        "",
        format_table(suite),
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
