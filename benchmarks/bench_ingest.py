"""Benchmark: `lvmkit ingest` end to end on real Wikipedia -- throughput and peak memory.

Each size runs `python -m lvmkit.cli.main ingest` as a fresh subprocess on the first N articles of
../shared/data/enwiki2015 and records wall time, chunks/s and the peak resident memory of the process
(sampled with psutil every 100 ms). Two sizes show whether peak memory grows with the corpus: it should
not, since ingest keeps one shard in memory at a time (the difference between sizes should be noise plus
the reader's per-file state).

    python benchmarks/bench_ingest.py                      # sizes 1000 and 250, the default encoder
    python benchmarks/bench_ingest.py --sizes 2000,500 --backend onnx-int8
    python benchmarks/bench_ingest.py --smoke              # seconds: hash encoder, 20 and 5 articles

Writes benchmarks/results/ingest.json and ingest.md (a smoke run writes under benchmarks/work/ instead,
so it never replaces real results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
ENWIKI = ROOT.parent / "shared/data/enwiki2015"


def peak_rss_of(cmd: list[str], interval: float = 0.1) -> tuple[int, float, int]:
    """Run ``cmd``; return (exit code, wall seconds, peak RSS in bytes of the process and its children)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass  # the process ended between poll() and memory_info()
        time.sleep(interval)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr.read().decode(errors="replace"))
    return proc.returncode, wall, peak


def run_size(n: int, args, work: Path) -> dict:
    out = work / f"bank_{n}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "lvmkit.cli.main", "ingest", str(args.corpus), "--out", str(out)]
    cmd += ["--limit-articles", str(n), "--chunker", args.chunker, "--backend", args.backend]
    cmd += ["--batch-size", str(args.batch_size)] if args.batch_size else []
    cmd += [
        "--shard-size",
        str(args.shard_size),
        "--device",
        args.device,
    ]
    if args.encoder:
        cmd += ["--encoder", args.encoder]
    code, wall, peak = peak_rss_of(cmd)
    if code != 0:
        raise SystemExit(f"ingest of {n} articles failed (exit {code}): {' '.join(cmd)}")
    manifest = json.loads((out / "manifest.json").read_text())
    chunks = manifest["count"]
    row = {
        "articles_requested": n,
        "articles": manifest["corpus"]["articles"],
        "chunks": chunks,
        "wall_s": round(wall, 2),
        "chunks_per_s": round(chunks / wall, 1),
        "peak_rss_mib": round(peak / 2**20, 1),
        "encoder": manifest["encoder"]["name"],
        "backend": manifest["encoder"]["backend"],
        "batch_size": args.batch_size or "backend default",
        "bank_mib": round(sum(p.stat().st_size for p in out.iterdir() if p.is_file()) / 2**20, 2),
    }
    if not args.keep:
        shutil.rmtree(out)
    return row


def markdown(rows: list[dict]) -> str:
    lines = [
        "| articles | chunks | wall (s) | chunks/s | peak RSS (MiB) | encoder (backend, batch) |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['articles']:,} | {r['chunks']:,} | {r['wall_s']:.1f} | {r['chunks_per_s']:,.1f} | "
            f"{r['peak_rss_mib']:,.0f} | {r['encoder']} ({r['backend']}, {r.get('batch_size', '?')}) |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=ENWIKI, help="WikiExtractor corpus (default: %(default)s)")
    ap.add_argument(
        "--sizes", default="1000,250", help="article counts, comma-separated (default: %(default)s)"
    )
    ap.add_argument("--encoder", default=None, help="encoder name (default: offline all-MiniLM-L6-v2)")
    ap.add_argument("--backend", default="st", help="st, onnx-int8 or hash (default: %(default)s)")
    ap.add_argument("--chunker", default="sentence", help="chunking spec (default: %(default)s)")
    ap.add_argument(
        "--batch-size", type=int, default=None, help="encoder batch size (default: the backend's own)"
    )
    ap.add_argument("--shard-size", type=int, default=4096, help="chunks per shard (default: %(default)s)")
    ap.add_argument("--device", default="auto", help="encoder device (default: %(default)s)")
    ap.add_argument("--keep", action="store_true", help="keep the banks under the work directory")
    ap.add_argument("--smoke", action="store_true", help="seconds-long check: hash encoder, sizes 20,5")
    ap.add_argument(
        "--out", type=Path, default=None, help="results JSON (default: benchmarks/results/ingest.json)"
    )
    args = ap.parse_args()
    if args.smoke:
        args.sizes, args.backend, args.encoder, args.shard_size = "20,5", "hash", "hash:64", 256
    if not args.corpus.exists():
        raise SystemExit(f"corpus not found: {args.corpus}")
    work = ROOT / "benchmarks/work/ingest"
    work.mkdir(parents=True, exist_ok=True)
    out = args.out or (work / "ingest.json" if args.smoke else ROOT / "benchmarks/results/ingest.json")

    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        print(f"ingesting {n} articles ...", flush=True)
        rows.append(run_size(n, args, work))
        print(f"  {rows[-1]}", flush=True)
    rss = [r["peak_rss_mib"] for r in rows]
    result = {
        "benchmark": "ingest",
        "smoke": args.smoke,
        "corpus": str(args.corpus),
        "chunker": args.chunker,
        "batch_size": args.batch_size,
        "shard_size": args.shard_size,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "rows": rows,
        "peak_rss_spread_mib": round(max(rss) - min(rss), 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(rows)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"peak RSS spread across sizes: {result['peak_rss_spread_mib']} MiB; wrote {out}")


if __name__ == "__main__":
    main()
