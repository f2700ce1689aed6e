"""Lane experts vs the same backbone without experts, on the val split of a bank.

    OMP_NUM_THREADS=1 python benchmarks/bench_experts.py --bank quickstart_out/bank --epochs 2 --max-train-windows 6000

Both runs use the backbone's configs/<backbone>.yaml with the same overrides (delta mode, cos + InfoNCE with a
4,096-target queue, ``--epochs``, ``--max-train-windows``, ``--ctx``, ``--min-ctx`` left padding, seed 0); the expert run adds
``model.kwargs.experts=16, top_k=2`` (balance_weight 0.01). Each run's best checkpoint (by val Hit@5) and
copy_last are evaluated on the same val windows (full-bank exact search, context excluded), with a paired
bootstrap CI of experts minus no-experts. Val only: this is a model-choice experiment, the test split is not
read. Also reported: how the gate spreads the val windows over the experts (share of routing slots).

Writes ``--out`` (benchmarks/results/experts.json) and the .md beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lvmkit.bank.bank import VectorBank
from lvmkit.data.splits import Split
from lvmkit.data.windows import make_windows
from lvmkit.eval.bootstrap import paired_diff_ci
from lvmkit.eval.evaluator import evaluate
from lvmkit.models import build_model, describe
from lvmkit.train import train
from lvmkit.train.checkpoint import load_model
from lvmkit.train.config import load_config
from lvmkit.train.runs import RunPaths

ROOT = Path(__file__).resolve().parents[1]
LOSS = "loss={cos: 1.0, infonce: 1.0, tau: 0.05, queue: 4096}"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bank", default="quickstart_out/bank")
    p.add_argument("--backbone", default="amn")
    p.add_argument("--ctx", type=int, default=5)
    p.add_argument("--min-ctx", type=int, default=1)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--max-eval-queries", type=int, default=2000)
    p.add_argument("--max-train-windows", type=int, default=None, help="a seeded sample of the train windows")
    p.add_argument("--warmup", type=int, default=None, help="optim.warmup_steps (default: the config's)")
    p.add_argument("--runs", default="/tmp/experts-bench")
    p.add_argument("--out", default="benchmarks/results/experts.json")
    return p.parse_args()


def train_run(args, out: Path, experts: bool) -> tuple[Path, float]:
    overrides = [
        f"bank={args.bank}",
        f"data.ctx={args.ctx}",
        f"data.min_ctx={args.min_ctx}",
        f"optim.epochs={args.epochs}",
        f"data.max_eval_queries={args.max_eval_queries}",
        "final_eval=false",
        "model.delta=true",
        LOSS,
    ]
    if args.warmup is not None:
        overrides.append(f"optim.warmup_steps={args.warmup}")
    if args.max_train_windows:
        overrides.append(f"data.max_train_windows={args.max_train_windows}")
    if experts:
        overrides += [f"model.kwargs.experts={args.experts}", f"model.kwargs.top_k={args.top_k}"]
    cfg = load_config(ROOT / "configs" / f"{args.backbone}.yaml", overrides)
    if out.exists():
        shutil.rmtree(out)
    t = time.perf_counter()
    status = train(cfg, out)
    print(f"{out.name}: {status.get('state')}, best {status.get('best_value')}", flush=True)
    return out, time.perf_counter() - t


def gate_usage(model, windows) -> list[float]:
    """Share of the val windows' routing slots that each expert receives."""
    counts = torch.zeros(model.n_experts)
    with torch.no_grad():
        for s in range(0, len(windows), 512):
            b = windows.batch(np.arange(s, min(len(windows), s + 512)))
            _, top, _ = model.route(b.ctx, b.mask)
            counts += torch.bincount(top.reshape(-1), minlength=model.n_experts)
    return (counts / counts.sum()).tolist()


def main() -> int:
    args = parse_args()
    runs = Path(args.runs)
    plain, t_plain = train_run(args, runs / f"{args.backbone}", experts=False)
    moe, t_moe = train_run(args, runs / f"{args.backbone}_experts", experts=True)
    bank = VectorBank.open(args.bank)
    split = Split.load(RunPaths(plain).split, bank)
    cfg = load_config(plain / "config.yaml")
    val = make_windows(bank, split, "val", args.ctx, min_ctx=args.min_ctx).sample(
        args.max_eval_queries, cfg.seed + 1
    )
    models = {
        args.backbone: load_model(RunPaths(plain).best, bank=bank)[0].eval(),
        f"{args.backbone}+experts{args.experts}/top{args.top_k}": load_model(RunPaths(moe).best, bank=bank)[
            0
        ].eval(),
        "copy_last": build_model("copy_last", bank.dim),
    }
    res = {name: evaluate(m, val, bank, name=name, seed=0) for name, m in models.items()}
    names = list(models)
    diff = paired_diff_ci(res[names[1]].per_query["hit@5"], res[names[0]].per_query["hit@5"])
    out = {
        "bank": args.bank,
        "split": "val",
        "n_windows": len(val),
        "ctx": args.ctx,
        "min_ctx": args.min_ctx,
        "epochs": args.epochs,
        "max_train_windows": args.max_train_windows,
        "warmup_steps": args.warmup,
        "loss": LOSS,
        "train_seconds": {names[0]: t_plain, names[1]: t_moe},
        "models": {n: describe(m) for n, m in models.items()},
        "metrics": {
            n: {k: r.metrics[k] for k in ("hit@1", "hit@5", "hit@10", "mrr@10", "cos")}
            for n, r in res.items()
        },
        "intervals": {n: {"hit@5": list(r.intervals["hit@5"])} for n, r in res.items()},
        "experts_minus_plain_hit@5": list(diff),
        "gate_usage": gate_usage(models[names[1]], val),
    }
    path = ROOT / args.out
    path.write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "| system (val) | Hit@1 | Hit@5 (95% CI) | Hit@10 | MRR@10 | cos |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for n, m in out["metrics"].items():
        lo, hi = out["intervals"][n]["hit@5"]
        lines.append(
            f"| {n} | {100 * m['hit@1']:.1f} | {100 * m['hit@5']:.1f} ({100 * lo:.1f}-{100 * hi:.1f}) | "
            f"{100 * m['hit@10']:.1f} | {m['mrr@10']:.3f} | {m['cos']:.3f} |"
        )
    d, lo, hi = diff
    lines.append(
        f"\nexperts - plain on Hit@5: {100 * d:+.1f} points (paired 95% CI {100 * lo:+.1f} to {100 * hi:+.1f})"
    )
    lines.append(
        f"gate: largest expert share {100 * max(out['gate_usage']):.1f}% of routing slots, "
        f"{sum(u > 0 for u in out['gate_usage'])} of {args.experts} experts used"
    )
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
