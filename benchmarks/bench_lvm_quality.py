"""LVM quality table: every baseline and every trained model on the same held-out test windows.

For each context length, trains each model from its configs/<model>.yaml (with the overrides below) on the
article-disjoint train split of BANK, then evaluates all of them together with the baselines (copy_last,
mean_ctx, exp_weighted, ridge) and the oracle on one set of test windows, searching the full bank with the
window's own context excluded. Bootstrap 95% intervals; the best model is compared with the best baseline on
Hit@5 by a paired bootstrap of the difference.

Runs are resumable: a finished run directory is reused, an interrupted one is resumed.

    python benchmarks/bench_lvm_quality.py --bank banks/enwiki --ctx 5 --ctx 100 \
        --models amn,gru,lstm,transformer,memory_gru,hierarchical_gru,mamba --epochs 3

Writes benchmarks/results/lvm_quality.json and prints (and writes) a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from lvmkit.artifacts import write_json, write_text
from lvmkit.bank import VectorBank
from lvmkit.data import Split, make_windows
from lvmkit.eval.evaluator import evaluate_suite, format_table
from lvmkit.train.checkpoint import load_model
from lvmkit.train.config import load_config, save_config
from lvmkit.train.loop import train
from lvmkit.train.runs import RunPaths, read_status

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("hit@1", "hit@5", "hit@10", "mrr@10", "cos")


def train_one(model: str, ctx: int, args, run_dir: Path, extra: list[str]) -> Path:
    """Train (or reuse / resume) one run; returns its run directory."""
    overrides = [
        f"bank={args.bank}",
        f"data.ctx={ctx}",
        f"optim.epochs={args.epochs}",
        "final_eval=false",
        f"data.max_eval_queries={args.max_eval_queries}",
        *([f"data.max_train_windows={args.max_train_windows}"] if args.max_train_windows else []),
        *([f"data.min_ctx={args.min_ctx}"] if args.min_ctx else []),
        *extra,
    ]
    cfg = load_config(ROOT / "configs" / f"{model}.yaml", overrides)
    run = RunPaths(run_dir)
    if run.config.exists() and Path(load_config(run.config).bank).resolve() != Path(cfg.bank).resolve():
        raise SystemExit(
            f"{run_dir} was trained on another bank ({load_config(run.config).bank}); use another --work"
        )
    state = read_status(run).get("state") if run.status.exists() else None
    if state in ("finished", "early_stopped", "stopped_gate"):
        print(f"  {model} ctx {ctx}: reusing finished run {run_dir}")
        return run_dir
    resume = run.last.exists()
    if not resume and run_dir.exists():  # killed before its first checkpoint: nothing to resume
        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    print(f"  {model} ctx {ctx}: training{' (resuming)' if resume else ''} -> {run_dir}", flush=True)
    status = train(cfg, run_dir, resume=resume)
    print(
        f"    {status.get('state')} in {time.perf_counter() - t0:.0f}s, best {status.get('best_value')}",
        flush=True,
    )
    save_config(cfg, run_dir / "bench_config.yaml")
    return run_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bank", required=True)
    ap.add_argument("--ctx", type=int, action="append", help="context lengths (repeatable); default 5")
    ap.add_argument("--models", default="amn,gru,lstm,transformer,memory_gru,hierarchical_gru,mamba")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-train-windows", type=int, default=None)
    ap.add_argument("--max-eval-queries", type=int, default=1000)
    ap.add_argument("--max-test-queries", type=int, default=5000)
    ap.add_argument(
        "--min-ctx", type=int, default=None, help="allow left-padded windows with >= this context"
    )
    ap.add_argument("--set", dest="extra", action="append", default=[], help="MODEL:key=value override")
    ap.add_argument("--override", action="append", default=[], help="key=value override for every model")
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / "work" / "lvm_quality"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lvm_quality.json"))
    args = ap.parse_args()
    ctxs = args.ctx or [5]
    models = [m for m in args.models.split(",") if m]
    bank = VectorBank.open(args.bank)
    results: dict = {
        "bank": str(args.bank),
        "bank_id": bank.manifest.bank_id,
        "encoder": bank.encoder.describe(),
        "bank_chunks": len(bank),
        "bank_articles": bank.n_articles,
        "args": vars(args),
        "by_ctx": {},
    }
    md = []
    for ctx in ctxs:
        print(f"ctx {ctx}", flush=True)
        runs = {}
        for m in models:
            extra = args.override + [e.split(":", 1)[1] for e in args.extra if e.startswith(f"{m}:")]
            runs[m] = train_one(m, ctx, args, Path(args.work) / f"ctx{ctx}" / m, extra)
        # one split for everything (all configs use the same split ratios/seed: checked here)
        first = RunPaths(runs[models[0]])
        split = Split.load(first.split, bank)
        for m in models[1:]:
            other = Split.load(RunPaths(runs[m]).split, bank)
            if other.hash != split.hash:
                raise SystemExit(
                    f"run {m} used another split than {models[0]}; cannot compare on the same windows"
                )
        cfg0 = load_config(first.config)
        d = cfg0.data
        test = make_windows(bank, split, "test", ctx, stride=d.stride, min_ctx=d.min_ctx, pad=d.pad)
        trainw = make_windows(bank, split, "train", ctx, stride=d.stride, min_ctx=d.min_ctx, pad=d.pad)
        if len(test) > args.max_test_queries:
            rng = np.random.default_rng(12345)
            test = test.subset(np.sort(rng.choice(len(test), args.max_test_queries, replace=False)))
        valw = make_windows(bank, split, "val", ctx, stride=d.stride, min_ctx=d.min_ctx, pad=d.pad)
        valw = valw.sample(d.max_eval_queries, cfg0.seed + 1)  # the blend's (w, alpha) are chosen here
        predictors = {m: load_model(RunPaths(runs[m]).best, bank=bank)[0] for m in models}
        t0 = time.perf_counter()
        suite = evaluate_suite(predictors, test, bank, train_windows=trainw, val_windows=valw, seed=0)
        print(f"  evaluated {len(test)} test windows in {time.perf_counter() - t0:.0f}s", flush=True)
        table = format_table(suite)
        print(table, flush=True)
        results["by_ctx"][str(ctx)] = {
            "n_test_windows": len(test),
            "n_train_windows": len(trainw),
            "suite": suite.to_dict(),
            "configs": {m: (RunPaths(runs[m]).config).read_text() for m in models},
            "status": {m: read_status(RunPaths(runs[m])) for m in models},
        }
        md.append(f"### ctx {ctx} ({len(test):,} test windows)\n\n{table}\n")
        write_json(args.out, results)  # after every ctx: a long run keeps what it finished
        write_text(Path(args.out).with_suffix(".md"), "\n".join(md))
    print(f"wrote {args.out}")
    print(
        json.dumps({c: v["suite"].get("comparisons") for c, v in results["by_ctx"].items()}, indent=1)[:3000]
    )


if __name__ == "__main__":
    main()
