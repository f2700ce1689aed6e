"""Mamba on CPU: training-step time of the ssd (Mamba-2) and s6 (Mamba-1) variants, and a memory task.

Step time: forward + backward of the whole model (random unit vectors, batch B, context T, d=384 like
all-MiniLM-L6-v2), the minimum over --repeats timed rounds after one warm-up round, the variants taking turns
within each round (the machine may be shared: the minimum is the least disturbed run).

Quality check, a selective-memory task: --fit-steps Adam steps (lr 3e-3) on fresh batches of 16 random windows
of --fit-ctx unit vectors (in a random 16-d subspace); the target is the normalised sum of the context vectors
on the positive side of a fixed direction (the model has to pick vectors by content and keep them over the
whole context). Reported: the cosine loss 1 - cos on 256 held-out windows (lower is better).

    python benchmarks/bench_mamba_scan.py --ctx 100 --ctx 1000 --threads 2 --repeats 3
    python benchmarks/bench_mamba_scan.py --smoke      # tiny sizes, checks that the script runs

Writes benchmarks/results/mamba_scan.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lvmkit.models import build_model, count_parameters

ROOT = Path(__file__).resolve().parents[1]
DIM = 384


def step_seconds(models: dict[str, torch.nn.Module], batch: int, ctx: int, repeats: int) -> dict[str, float]:
    """Least wall-clock seconds of one forward + backward, per model; the models take turns, so that a burst
    of load from other processes slows every model alike rather than whichever happened to run then."""
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(batch, ctx, DIM, generator=g), dim=-1)
    target = F.normalize(torch.randn(batch, DIM, generator=g), dim=-1)
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(repeats + 1):  # round 0 warms up allocators and is not counted
        for name, model in models.items():
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            (1 - (model(x) * target).sum(-1)).mean().backward()
            if r:
                times[name].append(time.perf_counter() - t0)
    return {name: min(t) for name, t in times.items()}


def memory_task_loss(model: torch.nn.Module, ctx: int, steps: int) -> float:
    g = torch.Generator().manual_seed(1)
    basis = torch.randn(16, DIM, generator=g)

    def windows(n: int) -> tuple[torch.Tensor, torch.Tensor]:  # vectors in a 16-d subspace: fit any width
        x = F.normalize(torch.randn(n, ctx, 16, generator=g) @ basis, dim=-1)
        keep = (x @ basis[0] > 0).float()[..., None]
        return x, F.normalize((x * keep).sum(1), dim=-1)

    held_out = windows(256)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        x, target = windows(16)
        opt.zero_grad(set_to_none=True)
        (1 - (model(x) * target).sum(-1)).mean().backward()
        opt.step()
    with torch.no_grad():
        x, target = held_out
        return (1 - (model(x) * target).sum(-1)).mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="s6,ssd")
    ap.add_argument("--ctx", type=int, action="append")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-state", type=int, default=16)
    ap.add_argument("--headdim", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fit-ctx", type=int, default=50)
    ap.add_argument("--fit-steps", type=int, default=300, help="0 skips the memory task")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: check that the script runs")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mamba_scan.json"))
    args = ap.parse_args()
    if args.smoke:
        args.ctx, args.hidden, args.layers, args.repeats = [20], 32, 1, 1
        args.fit_ctx, args.fit_steps = 10, 3
        args.out = str(Path(args.out).with_name("mamba_scan_smoke.json"))
    torch.set_num_threads(args.threads)

    def build(variant: str):
        torch.manual_seed(0)
        kw = dict(hidden=args.hidden, layers=args.layers, d_state=args.d_state, variant=variant)
        if variant == "ssd":
            kw["headdim"] = args.headdim
        return build_model("mamba", DIM, **kw)

    variants = args.variants.split(",")
    rows = [{"variant": v, "params": count_parameters(build(v))} for v in variants]
    for ctx in args.ctx or [100, 1000]:
        best = step_seconds({v: build(v) for v in variants}, args.batch, ctx, args.repeats)
        for row in rows:
            row[f"step_s_ctx{ctx}"] = best[row["variant"]]
            print(f"{row['variant']:4s} ctx {ctx:5d}: {best[row['variant']]:.3f} s / step", flush=True)
    for row, variant in zip(rows, variants, strict=True):
        if args.fit_steps:
            row["memory_task_loss"] = memory_task_loss(build(variant), args.fit_ctx, args.fit_steps)
            print(f"{variant:4s} memory task: held-out loss {row['memory_task_loss']:.4f}", flush=True)

    from lvmkit.artifacts import write_json, write_text

    write_json(args.out, {"rows": rows, "args": vars(args), "torch": torch.__version__})
    ctxs = args.ctx or [100, 1000]
    md = [
        "| variant | params | " + " | ".join(f"step s, ctx {c}" for c in ctxs) + " | memory task loss |",
        "|---|---:|" + "---:|" * len(ctxs) + "---:|",
    ]
    for r in rows:
        steps = " | ".join(f"{r[f'step_s_ctx{c}']:.3f}" for c in ctxs)
        md.append(
            f"| {r['variant']} | {r['params']:,} | {steps} | {r.get('memory_task_loss', float('nan')):.4f} |"
        )
    write_text(Path(args.out).with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
