"""Exact search on the CPU: FAISS's IndexFlatIP against lvmkit's ``exact_topk`` (blocked torch matmul + top-k,
rescored in float64), the path every ``flat`` SearchIndex on the CPU takes since session 4.

    python benchmarks/bench_exact.py banks/enwiki8k --queries 256 --k 60

Queries are bank rows drawn at random (seeded). Both sides answer the same queries once (a warm-up call on 8
queries first); the table gives wall seconds, CPU seconds (process time: all threads), queries/s and the
share of top-k ids that agree position by position (ties and near-ties may order differently). The evaluator
asks for k = 50 + the excluded context, so k = 60 matches a ctx-5 evaluation. Writes
benchmarks/results/exact_search.json and .md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import faiss
import numpy as np

from lvmkit.artifacts import write_json, write_text
from lvmkit.bank import VectorBank
from lvmkit.bank.index import exact_topk

ROOT = Path(__file__).resolve().parents[1]


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bank")
    ap.add_argument("--queries", type=int, default=256)
    ap.add_argument("--k", type=int, default=60)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/exact_search.json"))
    args = ap.parse_args()
    bank = VectorBank.open(args.bank)
    xb = np.ascontiguousarray(np.asarray(bank.vectors, dtype=np.float32))
    rows = np.random.default_rng(0).choice(len(xb), args.queries, replace=False)
    q = np.ascontiguousarray(xb[rows])
    flat = faiss.IndexFlatIP(xb.shape[1])
    flat.add(xb)
    flat.search(q[:8], args.k), exact_topk(xb, q[:8], args.k)  # warm-up
    (_, fi), fw, fc = timed(lambda: flat.search(q, args.k))
    (_, ti), tw, tc = timed(lambda: exact_topk(xb, q, args.k))
    rows_out = {
        "faiss IndexFlatIP": {"wall_s": fw, "cpu_s": fc, "queries_per_s": args.queries / fw},
        "exact_topk (torch)": {"wall_s": tw, "cpu_s": tc, "queries_per_s": args.queries / tw},
    }
    agree = float((fi == ti).mean())
    payload = {"bank": args.bank, "chunks": len(xb), "dim": int(xb.shape[1]), "queries": args.queries,
               "k": args.k, "faiss_threads": faiss.omp_get_max_threads(), "agreement": agree,
               "results": rows_out}  # fmt: skip
    md = [
        f"Exact top-{args.k} of {args.queries} bank-row queries over {len(xb):,} x {xb.shape[1]} "
        f"({args.bank}); ids agreeing position by position: {100 * agree:.2f}%",
        "",
        "| search | wall s | CPU s | queries/s |",
        "|---|---:|---:|---:|",
        *(
            f"| {n} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['queries_per_s']:.0f} |"
            for n, r in rows_out.items()
        ),
    ]
    write_json(args.out, payload)
    write_text(Path(args.out).with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
