"""Training throughput (windows/s) and peak RSS per model and context length.

Each (model, ctx) cell runs in a fresh subprocess: build the model with its configs/<model>.yaml kwargs, make
train windows on BANK (left-padded with min_ctx=1 so that ctx 1,000 has windows on any bank: the compute per
window is the same as for real long contexts), run --warmup then --steps optimiser steps of the cosine loss
with AdamW, and report windows/s over the timed steps and the child's peak RSS next to the bank's size.

    python benchmarks/bench_train_throughput.py --bank banks/enwiki --models amn,gru,transformer,mamba \
        --ctx 5 --ctx 100 --ctx 1000

Writes benchmarks/results/train_throughput.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cell(
    bank_path: str, model_name: str, ctx: int, batch: int, steps: int, warmup: int, threads: int
) -> dict:
    import numpy as np
    import torch

    from lvmkit.bank import VectorBank
    from lvmkit.data import make_split, make_windows
    from lvmkit.losses import cosine_loss
    from lvmkit.models import build_model, count_parameters
    from lvmkit.train.config import load_config

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config(ROOT / "configs" / f"{model_name}.yaml", [f"bank={bank_path}", f"data.ctx={ctx}"])
    bank = VectorBank.open(bank_path)
    ws = make_windows(bank, make_split(bank), "train", ctx, min_ctx=1, pad=True)
    model = build_model(cfg.model.name, bank.dim, delta=cfg.model.delta, **cfg.model.kwargs)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    model.train()
    t0 = None
    for step in range(warmup + steps):
        if step == warmup:
            t0 = time.perf_counter()
        b = ws.batch(np.sort(rng.choice(len(ws), batch, replace=False)))
        loss = cosine_loss(model(b.ctx, b.mask), b.target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    dt = time.perf_counter() - t0
    return {
        "model": model_name,
        "ctx": ctx,
        "batch": batch,
        "params": count_parameters(model),
        "windows_per_s": steps * batch / dt,
        "step_ms": 1000 * dt / steps,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "bank_mib": os.path.getsize(Path(bank_path) / "vectors.npy") / 2**20,
        "window_index_mib": ws.nbytes / 2**20 if hasattr(ws, "nbytes") else None,
        "threads": threads,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bank", required=True)
    ap.add_argument("--models", default="amn,gru,transformer,mamba")
    ap.add_argument("--ctx", type=int, action="append")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_throughput.json"))
    ap.add_argument("--cell", nargs=2, metavar=("MODEL", "CTX"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cell:
        r = cell(
            args.bank, args.cell[0], int(args.cell[1]), args.batch, args.steps, args.warmup, args.threads
        )
        print("RESULT " + json.dumps(r))
        return
    rows = []
    for ctx in args.ctx or [5, 100, 1000]:
        for m in args.models.split(","):
            cmd = [sys.executable, __file__, "--bank", args.bank, "--cell", m, str(ctx), "--batch", str(args.batch),
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]  # fmt: skip
            p = subprocess.run(cmd, capture_output=True, text=True)
            line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
            if p.returncode or not line:
                print(f"{m} ctx {ctx}: FAILED\n{p.stderr[-2000:]}", flush=True)
                rows.append({"model": m, "ctx": ctx, "error": p.stderr[-500:]})
                continue
            r = json.loads(line[0][7:])
            rows.append(r)
            print(f"{m:12s} ctx {ctx:5d}: {r['windows_per_s']:9.1f} windows/s  peak RSS {r['peak_rss_mib']:.0f} MiB "
                  f"(bank {r['bank_mib']:.0f} MiB)", flush=True)  # fmt: skip
    from lvmkit.artifacts import write_json, write_text

    write_json(args.out, {"bank": args.bank, "rows": rows, "args": vars(args)})
    md = [
        "| model | ctx | params | windows/s | step ms | peak RSS MiB | bank MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            md.append(f"| {r['model']} | {r['ctx']} | failed | | | | |")
        else:
            md.append(f"| {r['model']} | {r['ctx']} | {r['params']:,} | {r['windows_per_s']:.0f} | {r['step_ms']:.0f} | "
                      f"{r['peak_rss_mib']:.0f} | {r['bank_mib']:.0f} |")  # fmt: skip
    write_text(Path(args.out).with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
