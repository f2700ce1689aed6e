"""Which lever helps an LVM beat the baselines? Anchors and in-article negatives, measured on VAL windows.

Each VARIANT is a named set of config overrides (``NAME=key=value;key=value``) applied to a base config:
``quickstart`` (the quickstart's own run config, ``lvmkit.pipeline.quickstart_config``) or ``configs``
(configs/MODEL.yaml). Every (model, variant) is trained on BANK's train split; then all of them are evaluated
TOGETHER with the baselines (copy_last, mean_ctx, exp_weighted, ridge, blend) on the runs' val windows,
searching the full bank (context excluded), with every model compared with every baseline at every Hit@k by
a paired bootstrap. Settings are chosen on val; the test split is not read here.

Note: the blend's (w, alpha) are tuned on these same val windows, which favours the blend (conservative for
the models).

    python benchmarks/bench_levers.py --bank /work/qs/bank --base quickstart --models gru,amn \
        --variant delta=model.delta=true --variant blend=model.kwargs.anchor=blend \
        --out benchmarks/results/levers_quickstart.json

Runs are reused when finished (benchmarks/work/levers/TAG/MODEL-VARIANT), resumed when interrupted.
``--run NAME=DIR`` (repeatable) adds a finished run trained elsewhere (same bank, split and ctx) to the same
val comparison, e.g. a ``lvmkit train --detach`` run, or a two-tower run whose document tower is ``identity``
(its query tower then IS an LVM: it predicts a vector of the bank's own space). ``--models ""`` with ``--run``
trains nothing:

    python benchmarks/bench_levers.py --bank banks/enwiki8k --models "" \
        --run amn=benchmarks/work/scaling_big/ctx5-n250000 --run mined=runs/amn_mined --out ...
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from lvmkit.artifacts import write_json, write_text
from lvmkit.bank import VectorBank
from lvmkit.data import Split, make_windows
from lvmkit.eval.evaluator import evaluate_suite, format_table
from lvmkit.pipeline import QuickstartSettings, quickstart_config
from lvmkit.train.checkpoint import load_model
from lvmkit.train.config import RunConfig, load_config, save_config
from lvmkit.train.loop import train
from lvmkit.train.runs import RunPaths, read_status

ROOT = Path(__file__).resolve().parents[1]
DONE = ("finished", "early_stopped", "stopped_gate")


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, rest = text.partition("=")
    if not name or not rest:
        raise SystemExit(f"--variant wants NAME=key=value;key=value, got {text!r}")
    return name, [o.strip() for o in rest.split(";") if o.strip()]


def base_config(model: str, args, overrides: list[str]) -> RunConfig:
    if args.base == "quickstart":
        tmp = Path(args.work) / f"_base_{model}.yaml"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        save_config(quickstart_config(model, args.bank, QuickstartSettings(epochs=args.epochs)), tmp)
        return load_config(tmp, overrides)
    return load_config(
        ROOT / "configs" / f"{model}.yaml", [f"bank={args.bank}", f"optim.epochs={args.epochs}", *overrides]
    )


def train_variant(model: str, name: str, overrides: list[str], args) -> tuple[Path, float]:
    run_dir = Path(args.work) / f"{model}-{name}"
    extra = ["final_eval=false"]
    if args.max_train_windows:
        extra.append(f"data.max_train_windows={args.max_train_windows}")
    if args.ctx:
        extra.append(f"data.ctx={args.ctx}")
    cfg = base_config(model, args, [*args.override, *extra, *overrides])
    run = RunPaths(run_dir)
    if run.status.exists() and read_status(run).get("state") in DONE:
        print(f"  {model}-{name}: reusing {run_dir}", flush=True)
        return run_dir, float("nan")
    resume = run.last.exists()
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)
    print(f"  {model}-{name}: training{' (resume)' if resume else ''} -> {run_dir}", flush=True)
    t0 = time.perf_counter()
    status = train(cfg, run_dir, resume=resume)
    if status["state"] not in DONE:
        raise SystemExit(f"{model}-{name} ended in state {status['state']}: {status.get('message')}")
    save_config(cfg, run_dir / "bench_config.yaml")
    return run_dir, time.perf_counter() - t0


def parse_run(text: str) -> tuple[str, Path]:
    name, _, path = text.partition("=")
    run = RunPaths(Path(path))
    if not name or not path or not run.best.exists():
        raise SystemExit(f"--run wants NAME=RUN_DIR of a run with a best.pt, got {text!r}")
    cfg = load_config(run.config)
    if cfg.task == "twotower" and cfg.twotower.doc_tower != "identity":
        raise SystemExit(
            f"--run {name}: a two-tower run with a {cfg.twotower.doc_tower} document tower does not "
            "predict in the bank's space; only identity towers compare with LVMs"
        )
    return name, Path(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bank", required=True)
    ap.add_argument("--base", choices=["quickstart", "configs"], default="configs")
    ap.add_argument("--models", default="gru")
    ap.add_argument("--variant", action="append", default=[], help="NAME=key=value;key=value (repeatable)")
    ap.add_argument("--override", action="append", default=[], help="key=value for every run")
    ap.add_argument(
        "--max-queries", type=int, default=None, help="val windows (default: the first run's cap)"
    )
    ap.add_argument("--run", action="append", default=[], help="NAME=RUN_DIR: a finished run to compare too")
    ap.add_argument("--ctx", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--max-train-windows", type=int, default=None)
    ap.add_argument("--tag", default="default", help="work directory name under benchmarks/work/levers")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/levers.json"))
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    args.work = str(ROOT / "benchmarks/work/levers" / args.tag)
    variants = dict(parse_variant(v) for v in args.variant) or {"default": []}
    models = [m for m in args.models.split(",") if m]
    bank = VectorBank.open(args.bank)
    t_start = time.perf_counter()

    runs, seconds = {}, {}
    for m in models:
        for name, ov in variants.items():
            runs[f"{m}-{name}"], seconds[f"{m}-{name}"] = train_variant(m, name, ov, args)
    for name, path in map(parse_run, args.run):
        runs[name], seconds[name] = path, float("nan")
    if not runs:
        raise SystemExit("nothing to compare: give --models and/or --run")
    first = RunPaths(next(iter(runs.values())))
    cfg0 = load_config(first.config)
    d = cfg0.data
    split = Split.load(first.split, bank)
    for key, r in runs.items():
        if (
            Split.load(RunPaths(r).split, bank).hash != split.hash
            or load_config(RunPaths(r).config).data.ctx != d.ctx
        ):
            raise SystemExit(f"run {key} used another split or ctx; cannot compare on the same windows")
    val = make_windows(bank, split, "val", d.ctx, stride=d.stride, min_ctx=d.min_ctx, pad=d.pad)
    val = val.sample(args.max_queries or d.max_eval_queries, cfg0.seed + 1)  # the runs' own val sample
    train_w = make_windows(bank, split, "train", d.ctx, stride=d.stride, min_ctx=d.min_ctx, pad=d.pad)
    predictors = {k: load_model(RunPaths(r).best, bank=bank)[0] for k, r in runs.items()}
    suite = evaluate_suite(
        predictors, val, bank, train_windows=train_w, val_windows=val, seed=0, n_boot=args.n_boot
    )
    table = format_table(suite)
    print(table, flush=True)
    payload = {
        "bank": str(args.bank),
        "bank_id": bank.manifest.bank_id,
        "bank_chunks": len(bank),
        "split": "val",
        "n_val_windows": len(val),
        "n_train_windows": {k: read_status(RunPaths(r)).get("windows_per_epoch") for k, r in runs.items()},
        "ctx": d.ctx,
        "args": {k: v for k, v in vars(args).items()},
        "variants": variants,
        "train_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "best_epoch": {k: read_status(RunPaths(r)).get("best_epoch") for k, r in runs.items()},
        "suite": suite.to_dict(),
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    write_json(args.out, payload)
    write_text(Path(args.out).with_suffix(".md"), f"VAL split, ctx {d.ctx}, {len(val)} windows\n\n{table}\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
