"""Scaling curves: is the best LVM config data-limited or capacity-limited?

Trains ONE config (configs/MODEL.yaml plus --override, e.g. the anchor validation chose) at several
training-set sizes (log-spaced, at --base-ctx) and at several context lengths (at --ctx-train-windows), and
evaluates every run on held-out TEST windows beside every baseline (copy_last, mean_ctx, exp_weighted,
ridge, blend; ridge fitted on train, blend tuned on val), searching the full bank with the context excluded:

    size sweep   the same test windows for every size (one suite: the baselines are computed once and are
                 horizontal lines on the plot)
    ctx sweep    windows with at least --min-ctx real context chunks, left-padded to ctx, so every ctx has the
                 same test TARGETS; one suite per ctx

Every model is compared with every baseline at every Hit@k (paired bootstrap; ``all_comparisons`` in the
JSON). Writes benchmarks/results/scaling.json, scaling.md and scaling.png (``report.plots.scaling_curves``).
Runs are reused when finished and resumed when interrupted (benchmarks/work/scaling/...).

    python benchmarks/bench_scaling.py --bank banks/enwiki --model gru \
        --override "model.delta=false" --override "model.kwargs.anchor=blend" \
        --sizes 16000,64000,250000,1000000 --ctxs 5,20,100,500 --ctx-train-windows 64000 --epochs 3
    python benchmarks/bench_scaling.py --smoke      # a synthetic bank, tiny sizes: checks the script runs
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_lvm_quality import train_one  # noqa: E402  (the same training step as the quality table)

from lvmkit.artifacts import write_json, write_text  # noqa: E402
from lvmkit.bank import VectorBank  # noqa: E402
from lvmkit.data import Split, make_windows  # noqa: E402
from lvmkit.eval.evaluator import BASELINES, evaluate_suite, format_table  # noqa: E402
from lvmkit.report.plots import scaling_curves  # noqa: E402
from lvmkit.train.checkpoint import load_model  # noqa: E402
from lvmkit.train.runs import RunPaths  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KS = (1, 5, 10, 50)


def windows_for(bank, split, name: str, ctx: int, min_ctx: int, cap: int | None, seed: int):
    ws = make_windows(bank, split, name, ctx, stride=1, min_ctx=min(ctx, min_ctx), pad=True)
    return ws.sample(cap, seed)


def run(args, ctx: int, size: int | None, tag: str) -> Path:
    """One training run of the config at (ctx, size)."""
    targs = SimpleNamespace(
        bank=args.bank,
        epochs=args.epochs,
        max_eval_queries=args.max_eval_queries,
        max_train_windows=size,
        min_ctx=min(ctx, args.min_ctx),
    )
    return train_one(args.model, ctx, targs, Path(args.work) / tag, args.override)


def evaluate(args, bank, runs: dict[str, Path], ctx: int):
    """All runs (same ctx) and the baselines on one set of test windows; the runs' split."""
    split = Split.load(RunPaths(next(iter(runs.values()))).split, bank)
    test = windows_for(bank, split, "test", ctx, args.min_ctx, args.max_test_queries, 12345)
    val = windows_for(bank, split, "val", ctx, args.min_ctx, args.max_eval_queries, 1)
    train = windows_for(bank, split, "train", ctx, args.min_ctx, 20_000, 0)
    models = {name: load_model(RunPaths(r).best, bank=bank)[0] for name, r in runs.items()}
    suite = evaluate_suite(models, test, bank, train_windows=train, val_windows=val, seed=0, ks=KS)
    return suite, len(test)


def point(sweep: str, suite, model_key: str, ctx: int, n_train: int, args) -> dict:
    names = [model_key, *[b for b in BASELINES if b in suite]]
    res = {(args.model if n == model_key else n): suite[n].metrics for n in names}
    comps = [c.to_dict() for c in suite.all_comparisons if c.model == model_key]
    return {
        "sweep": sweep,
        "ctx": ctx,
        "train_windows": n_train,
        "model": args.model,
        "results": res,
        "comparisons": comps,
    }


def smoke_args(args) -> None:
    from bench_twotower import synthetic_bank

    work = ROOT / "benchmarks/work/scaling_smoke"
    shutil.rmtree(work, ignore_errors=True)
    args.bank = str(synthetic_bank(work / "bank", n_articles=80, dim=16).path)
    args.work, args.out = str(work / "runs"), str(work / "scaling.json")
    args.sizes, args.ctxs, args.ctx_train_windows, args.epochs = "200,800", "3,8", 400, 1
    args.max_eval_queries, args.max_test_queries, args.min_ctx = 100, 200, 3
    args.override = [*args.override, "model.kwargs={hidden: 16, layers: 1}", "data.batch_size=32"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bank")
    ap.add_argument("--model", default="gru", help="configs/MODEL.yaml")
    ap.add_argument("--override", action="append", default=[], help="key=value for every run (repeatable)")
    ap.add_argument("--base-ctx", type=int, default=5, help="ctx of the size sweep")
    ap.add_argument(
        "--sizes",
        default="16000,64000,250000,1000000",
        help='training windows of the size sweep (capped: all; "" = none)',
    )
    ap.add_argument("--ctxs", default="5,20,100,500", help='context lengths of the ctx sweep ("" = none)')
    ap.add_argument("--ctx-train-windows", type=int, default=64000, help="training windows in the ctx sweep")
    ap.add_argument("--min-ctx", type=int, default=5, help="real context chunks every window has")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-eval-queries", type=int, default=1000)
    ap.add_argument("--max-test-queries", type=int, default=5000)
    ap.add_argument("--work", default=str(ROOT / "benchmarks/work/scaling"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/scaling.json"))
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        smoke_args(args)
    elif not args.bank:
        ap.error("give --bank, or --smoke")
    bank = VectorBank.open(args.bank)
    sizes = [int(s) for s in args.sizes.split(",") if s]  # "" = no size sweep
    ctxs = [int(c) for c in args.ctxs.split(",") if c]  # "" = no ctx sweep
    t0 = time.perf_counter()
    payload = {"bank": str(args.bank), "bank_id": bank.manifest.bank_id, "bank_chunks": len(bank),
               "args": vars(args), "points": [], "suites": {}}  # fmt: skip
    md = []

    def save() -> None:
        payload["total_seconds"] = round(time.perf_counter() - t0, 1)
        write_json(args.out, payload)
        write_text(Path(args.out).with_suffix(".md"), "\n".join(md))
        png = scaling_curves(payload["points"])
        if png:
            Path(args.out).with_suffix(".png").write_bytes(png)

    if sizes:
        runs = {f"{args.model}@{s}": run(args, args.base_ctx, s, f"ctx{args.base_ctx}-n{s}") for s in sizes}
        suite, n_test = evaluate(args, bank, runs, args.base_ctx)
        for key, r in runs.items():
            payload["points"].append(point("size", suite, key, args.base_ctx, _train_windows(r), args))
        payload["suites"][f"size@ctx{args.base_ctx}"] = suite.to_dict()
        md.append(f"### size sweep, ctx {args.base_ctx}, {n_test} test windows\n\n{format_table(suite)}\n")
        save()
    for ctx in ctxs:
        key = f"{args.model}@ctx{ctx}"
        r = run(args, ctx, args.ctx_train_windows, f"ctx{ctx}-n{args.ctx_train_windows}")
        suite, n_test = evaluate(args, bank, {key: r}, ctx)
        payload["points"].append(point("ctx", suite, key, ctx, _train_windows(r), args))
        payload["suites"][f"ctx{ctx}"] = suite.to_dict()
        md.append(f"### ctx {ctx}, {n_test} test windows\n\n{format_table(suite)}\n")
        save()
    print(f"wrote {args.out}")


def _train_windows(run_dir: Path) -> int | None:
    from lvmkit.train.runs import read_status

    return read_status(RunPaths(run_dir)).get("windows_per_epoch")


if __name__ == "__main__":
    main()
