"""Evaluate a cascade (``lvmkit eval CASCADE.yaml``): per-stage quality and latency, an ablation, baselines, gates.

    outcome = evaluate_cascade("configs/cascade_heuristic.yaml", gates="configs/cascade_gates.yaml")

For the queries of one split under one protocol (the windows read the longest context any stage needs; a stage
reads only its own last ``ctx`` chunks):

- per stage: Contain@K (share of truths still among the stage's K candidates), R@1/5/10 and MRR@10 of its
  order, Eff@5 = R@5 / Contain@50 where Contain@50 is the retrieval stage's top 50 (before any reranking);
- latency at batch 1: P50/P95/P99 per stage and in total over ``latency_n`` queries. The text encoder is
  excluded (the query's context vectors are read from the bank: that read is timed apart, as ``gather``);
- an ablation: the cascade with each stage after the first removed in turn (final-stage numbers);
- the baselines (copy_last, mean_ctx, exp_weighted) searched directly, on the same queries, same protocol;
- gates on the final stage: contain@50, eff@5, hit@1/5/10 (r@k aliases), mrr@10, p50/p95/p99_ms.

Every check (config, stages, heads, rerankers, gates file) runs before anything is written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lvmkit.artifacts import write_json, write_text
from lvmkit.bank.bank import VectorBank
from lvmkit.cascade.config import CascadeConfig, load_cascade
from lvmkit.cascade.stages import Stage, build_stages
from lvmkit.eval import metrics as M
from lvmkit.eval.protocol import DESCRIPTION, OPEN
from lvmkit.heads.features import QueryBatch, load_source
from lvmkit.heads.reranker import single_thread
from lvmkit.tasks.base import SEED_OFFSET

BASELINE_SOURCES = ("copy_last", "mean_ctx", "exp_weighted")


def padded(ids: np.ndarray, depth: int = 50) -> np.ndarray:
    """``ids`` with -1 columns up to ``depth`` (a stage that keeps 3 candidates has R@10 = R@3)."""
    return np.pad(ids, ((0, 0), (0, max(0, depth - ids.shape[1]))), constant_values=-1)


def stage_metrics(ids: np.ndarray, truth: np.ndarray, contain50: float) -> dict[str, float]:
    """Contain@K of the stage's K candidates, R@1/5/10, MRR@10, and Eff@5 against the retrieval's Contain@50."""
    out = {"k": int(ids.shape[1]), "contain@k": float(M.contain_at_k(ids, truth, ids.shape[1]).mean())}
    ids = padded(ids)
    for k in (1, 5, 10):
        out[f"hit@{k}"] = float(M.hit_at_k(ids, truth, k).mean())
    out["mrr@10"] = float(M.mrr_at_k(ids, truth, 10).mean())
    out["eff@5"] = out["hit@5"] / contain50 if contain50 > 0 else float("nan")
    return out


def run_stages(stages: list[Stage], batches: list[QueryBatch], first=None) -> list[np.ndarray]:
    """Every stage's candidate ids [Q, K_s] over all batches; ``first`` = cached retrieval pools per batch."""
    per_stage: list[list[np.ndarray]] = [[] for _ in stages]
    for b, qb in enumerate(batches):
        pool = None
        for i, st in enumerate(stages):
            pool = first[b] if (i == 0 and first is not None) else st.run(qb, pool)
            per_stage[i].append(pool.ids)
    return [np.concatenate(x) for x in per_stage]


def percentiles(ms: np.ndarray) -> dict[str, float]:
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99)}


def time_stages(
    stages: list[Stage], windows, protocol: str, n: int, seed: int, warmup: int = 10
) -> dict[str, Any]:
    """Batch-1 latency per stage and in total (ms), plus the context gather from the bank (not in the total)."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(windows), size=n + warmup, replace=n + warmup > len(windows))
    rows = []
    with single_thread():
        for j, w in enumerate(picks):
            t0 = time.perf_counter()
            qb = QueryBatch(windows, [w], protocol)
            times = [time.perf_counter() - t0]
            pool = None
            for st in stages:
                t = time.perf_counter()
                pool = st.run(qb, pool)
                times.append(time.perf_counter() - t)
            if j >= warmup:
                rows.append(times)
    a = np.asarray(rows) * 1000.0
    out: dict[str, Any] = {"n": int(n), "batch_size": 1}
    names = ["gather"] + [f"{i}:{st.name}" for i, st in enumerate(stages)]
    for j, name in enumerate(names):
        out[name] = percentiles(a[:, j])
    out["total"] = percentiles(a[:, 1:].sum(1))
    return out


def _quality(stages, batches, truth, ablation: bool, step):
    """Per-stage rows, the ablation rows (each stage after the first removed in turn), and the retrieval's
    Contain@50. The retrieval pools are computed once and shared by every variant."""
    first = [stages[0].run(qb, None) for qb in batches]
    ids = run_stages(stages, batches, first)
    contain50 = float(M.contain_at_k(padded(ids[0]), truth, 50).mean())  # the whole pool when k < 50
    rows = [
        {"stage": st.name, "describe": st.describe(), **stage_metrics(x, truth, contain50)}
        for st, x in zip(stages, ids, strict=True)
    ]
    abl = []
    for i in range(1, len(stages)) if ablation else ():
        step(f"ablation without stage {i} ({stages[i].name})")
        final = run_stages([st for j, st in enumerate(stages) if j != i], batches, first)[-1]
        abl.append({"removed": f"{i}:{stages[i].name}", **stage_metrics(final, truth, contain50)})
    return rows, abl, contain50


@dataclass
class CascadeOutcome:
    config: CascadeConfig
    stages: list[dict[str, Any]]  # per stage: name, describe, metrics, latency
    ablation: list[dict[str, Any]]
    baselines: dict[str, dict[str, float]]
    latency: dict[str, Any] | None
    gates: Any
    gate_metrics: dict[str, float]
    info: dict[str, Any]
    out: Path

    @property
    def ok(self) -> bool:
        return self.gates is None or self.gates.ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.config.protocol,
            "config": self.config.model_dump(mode="json"),
            "info": self.info,
            "stages": self.stages,
            "ablation": self.ablation,
            "baselines": self.baselines,
            "latency": self.latency,
            "gate_metrics": self.gate_metrics,
            "gates": self.gates.to_dict() if self.gates is not None else None,
        }


def _windows(cfg: CascadeConfig, bank: VectorBank, stages: list[Stage]):
    from lvmkit.data.splits import make_split
    from lvmkit.data.windows import make_windows
    from lvmkit.heads.reranker import check_run_split

    sources = [s for st in stages for s in st.sources]
    for s in sources:
        check_run_split(s, cfg.split_ratios, cfg.split_seed)
    longest = max(s.ctx for s in sources)
    ctx = cfg.window_ctx or longest
    if ctx < longest:
        from lvmkit.errors import ConfigError

        raise ConfigError(
            f"window_ctx={ctx} is shorter than the {longest} context chunks a stage reads; raise it"
        )
    min_ctx = cfg.min_ctx or min(s.ctx for s in sources)
    split = make_split(bank, ratios=cfg.split_ratios, seed=cfg.split_seed)
    ws = make_windows(bank, split, cfg.split, ctx=ctx, min_ctx=min(min_ctx, ctx), pad=True)
    ws = ws.sample(cfg.max_queries, cfg.seed + SEED_OFFSET[cfg.split])
    if len(ws) == 0:
        from lvmkit.errors import ConfigError

        raise ConfigError(
            f"the {cfg.split} split of {bank.path} has no windows with at least {min_ctx} context chunks"
        )
    return ws


def _baselines(cfg: CascadeConfig, bank: VectorBank, ws, index) -> dict[str, dict[str, float]]:
    from lvmkit.eval.evaluator import evaluate

    out = {}
    for name in BASELINE_SOURCES:
        r = evaluate(
            load_source(f"baseline:{name}", bank, ctx=cfg.ctx), ws, bank, protocol=cfg.protocol, index=cfg.index,
            nprobe=cfg.nprobe, n_boot=0, labels=False, name=name,
        )  # fmt: skip
        m = r.metrics
        out[name] = {k: m[k] for k in ("hit@1", "hit@5", "hit@10", "mrr@10", "contain@50", "eff@5")}
    return out


def evaluate_cascade(
    config: str | Path | CascadeConfig,
    *,
    overrides: tuple[str, ...] = (),
    gates=None,
    out: str | Path | None = None,
    max_queries: int | None = None,
    latency_n: int | None = None,
    protocol: str | None = None,
    ablation: bool = True,
    baselines: bool = True,
    batch_size: int = 256,
    progress=None,
) -> CascadeOutcome:
    """Run the cascade on its split's queries; see the module docstring. Nothing is written until it all ran."""
    from lvmkit.eval.gates import check_gates, load_gates

    cfg = config if isinstance(config, CascadeConfig) else load_cascade(config, overrides)
    upd = {
        k: v
        for k, v in (("max_queries", max_queries), ("latency_n", latency_n), ("protocol", protocol))
        if v is not None
    }
    cfg = cfg.model_validate({**cfg.model_dump(), **upd}) if upd else cfg
    gate_spec = load_gates(gates) if isinstance(gates, str | Path) else gates
    bank = VectorBank.open(cfg.bank)
    from lvmkit.eval.evaluator import resolve_index

    index = resolve_index(bank, cfg.index) if cfg.protocol == OPEN else None
    stages = build_stages(cfg, bank, index)
    ws = _windows(cfg, bank, stages)
    step = progress or (lambda s: None)

    step("running the cascade")
    batches = [
        QueryBatch(ws, np.arange(s, min(len(ws), s + batch_size)), cfg.protocol)
        for s in range(0, len(ws), batch_size)
    ]
    truth = ws.targets
    with single_thread():  # a gradient-boosting reranker's OpenMP threads only spin on a small busy machine
        rows, abl, contain50 = _quality(stages, batches, truth, ablation, step)
    base = {}
    if baselines:
        step("baselines")
        base = _baselines(cfg, bank, ws, index)
    lat = None
    if cfg.latency_n > 0:
        step("latency at batch 1")
        lat = time_stages(stages, ws, cfg.protocol, cfg.latency_n, cfg.seed)
        for r, st_i in zip(rows, range(len(stages)), strict=True):
            r["latency"] = lat[f"{st_i}:{stages[st_i].name}"]

    final = rows[-1]
    gm = {"contain@50": contain50, **{k: final[k] for k in ("hit@1", "hit@5", "hit@10", "mrr@10", "eff@5")}}
    gm.update({f"r@{k}": final[f"hit@{k}"] for k in (1, 5, 10)})
    if lat is not None:
        gm.update(lat["total"])
    report = check_gates(gm, gate_spec) if gate_spec is not None else None
    info = {
        "name": cfg.name,
        "protocol": cfg.protocol,
        "protocol_description": DESCRIPTION[cfg.protocol],
        "split": cfg.split,
        "n_queries": len(ws),
        "ctx": ws.ctx,
        "min_ctx": ws.min_ctx,
        "bank": str(bank.path),
        "bank_id": bank.manifest.bank_id,
        "bank_size": len(bank),
        "encoder": bank.encoder.describe(),
        "index": index.params.get("type") if index is not None else "exact (in-article)",
        "nprobe": cfg.nprobe if index is not None and index.params.get("type") in ("ivf", "hnsw") else None,
        "encoder_in_latency": False,
    }
    out = Path(out) if out is not None else Path(f"eval-cascade-{cfg.name}-{cfg.protocol}-{cfg.split}")
    outcome = CascadeOutcome(cfg, rows, abl, base, lat, report, gm, info, out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "cascade.json", outcome.to_dict())
    write_text(out / "cascade.md", format_cascade(outcome))
    return outcome


def _pct(v: float) -> str:
    return "nan" if v != v else f"{100 * v:.1f}"


def format_cascade(o: CascadeOutcome) -> str:
    """Markdown: the settings (protocol named), per-stage table, ablation, baselines, gates."""
    i = o.info
    nprobe = f", nprobe {i['nprobe']}" if i["nprobe"] else ""
    lines = [
        f"# Cascade {i['name']}: {i['split']} split, protocol {i['protocol']}",
        "",
        f"Protocol {i['protocol_description']}. {i['n_queries']} queries (context up to {i['ctx']} chunks, at "
        f"least {i['min_ctx']}; all {i['ctx']} excluded from the candidates) of bank {i['bank']} ({i['bank_size']} chunks, {i['encoder']}; {i['index']} "
        f"index{nprobe}). Latency at batch 1, text encoder excluded (context vectors read from the bank). "
        "Contain@K: truths among the stage's K candidates; Eff@5 = R@5 / Contain@50 of the retrieval's top 50 "
        "(before any reranking), above 100% when a reranking stage lifts truths from below that top 50.",
        "",
        "| stage | K | Contain@K | R@1 | R@5 | R@10 | MRR@10 | Eff@5 | P50 ms | P95 ms | P99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, r in enumerate(o.stages):
        lat = r.get("latency") or {}
        ms = " | ".join(f"{lat[k]:.3f}" if k in lat else "" for k in ("p50_ms", "p95_ms", "p99_ms"))
        lines.append(
            f"| {n}: {r['describe']} | {r['k']} | {_pct(r['contain@k'])} | {_pct(r['hit@1'])} | {_pct(r['hit@5'])} | "
            f"{_pct(r['hit@10'])} | {r['mrr@10']:.3f} | {_pct(r['eff@5'])} | {ms} |"
        )
    if o.latency is not None:
        t, g = o.latency["total"], o.latency["gather"]
        lines.append(
            f"| **total** (stages) | | | | | | | | {t['p50_ms']:.3f} | {t['p95_ms']:.3f} | {t['p99_ms']:.3f} |"
        )
        lines += [
            "",
            f"Context gather from the bank (not in the total): P50 {g['p50_ms']:.3f} ms, P95 {g['p95_ms']:.3f} ms.",
        ]
    if o.ablation:
        lines += ["", "Ablation (final stage, protocol " + i["protocol"] + "):", "",
                  "| removed | K | Contain@K | R@1 | R@5 | R@10 | MRR@10 | Eff@5 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        full = o.stages[-1]
        lines.append(
            f"| (none: full cascade) | {full['k']} | {_pct(full['contain@k'])} | {_pct(full['hit@1'])} | "
            f"{_pct(full['hit@5'])} | {_pct(full['hit@10'])} | {full['mrr@10']:.3f} | {_pct(full['eff@5'])} |"
        )
        for r in o.ablation:
            lines.append(
                f"| {r['removed']} | {r['k']} | {_pct(r['contain@k'])} | {_pct(r['hit@1'])} | {_pct(r['hit@5'])} | "
                f"{_pct(r['hit@10'])} | {r['mrr@10']:.3f} | {_pct(r['eff@5'])} |"
            )
    if o.baselines:
        lines += ["", f"Baselines searched directly, same queries, protocol {i['protocol']}:", "",
                  "| baseline | R@1 | R@5 | R@10 | MRR@10 | Contain@50 | Eff@5 |", "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for name, m in o.baselines.items():
            lines.append(
                f"| {name} | {_pct(m['hit@1'])} | {_pct(m['hit@5'])} | {_pct(m['hit@10'])} | {m['mrr@10']:.3f} | "
                f"{_pct(m['contain@50'])} | {_pct(m['eff@5'])} |"
            )
    if o.gates is not None:
        lines += ["", "## Gates", "", o.gates.to_markdown()]
    return "\n".join(lines) + "\n"
