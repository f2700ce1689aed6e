"""Benchmark: bank search -- queries/s and recall@10 of IVF (several nprobe) against exact flat search, and
the overhead of lvmkit's ``bank.search`` over calling the FAISS index directly (target: <= 10%).

    python benchmarks/bench_search.py BANK                    # a bank made by `lvmkit ingest`
    python benchmarks/bench_search.py BANK --nprobe 1,4,16,64 --queries 2000 --hnsw
    python benchmarks/bench_search.py --smoke                 # seconds: a synthetic 5k x 64 bank

Queries are bank rows drawn at random (seeded), so every number is reproducible; recall@10 is the share of
exact top-10 ids (flat inner product) that an approximate index also returns. Overhead is measured three
ways, each as best-of-``--repeats`` wall time:

    batch         bank.search(Q queries, k) vs faiss_index.search(Q queries, k)
    batch+exclude bank.search(Q, k, exclude=[Q, E]) vs faiss_index.search(Q, k + E) (the minimal FAISS call
                  that can still return k results after dropping E excluded ids)
    single        the same, one query per call (Python overhead is most visible here)

Nothing in the bank is modified (indexes are built in memory). Writes benchmarks/results/search.json and
search.md (a smoke run writes under benchmarks/work/ instead).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from lvmkit.bank import VectorBank
from lvmkit.bank.index import build_index

ROOT = Path(__file__).resolve().parents[1]


def best_time(fn, repeats: int) -> float:
    """Best-of-``repeats`` wall time of ``fn()`` (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def paired_best_times(a, b, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` times of ``a()`` and ``b()``, measured alternately (a, b, a, b, ...) so that
    drifting machine load and cache state hit both alike."""
    a(), b()  # warm-up
    ta, tb = [], []
    for _ in range(repeats):
        for fn, times in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return min(ta), min(tb)


def recall_at_k(truth: np.ndarray, got: np.ndarray) -> float:
    hits = sum(len(set(t[t >= 0]) & set(g[g >= 0])) for t, g in zip(truth, got, strict=True))
    return hits / max(1, int((truth >= 0).sum()))


def overhead(bank: VectorBank, si, queries: np.ndarray, k: int, excl: np.ndarray, repeats: int) -> dict:
    """Wall time of bank.search vs the bare FAISS call, batch and single-query, with and without exclusions."""
    bank._index = si  # benchmark only: search through this in-memory index without saving it to the bank
    e = excl.shape[1]
    single = queries[: min(100, len(queries))]
    cases = {
        "batch": (lambda: bank.search(queries, k), lambda: si.faiss.search(queries, k)),
        "batch+exclude": (
            lambda: bank.search(queries, k, exclude=excl),
            lambda: si.faiss.search(queries, k + e),
        ),
        "single": (
            lambda: [bank.search(q[None], k) for q in single],
            lambda: [si.faiss.search(q[None], k) for q in single],
        ),
    }
    out = {}
    for name, (ours, bare) in cases.items():
        t_ours, t_bare = paired_best_times(ours, bare, repeats)
        n = len(single) if name == "single" else len(queries)
        out[name] = {
            "lvmkit_qps": round(n / t_ours, 1),
            "faiss_qps": round(n / t_bare, 1),
            "overhead_pct": round(100 * (t_ours / t_bare - 1), 2),
        }
    return out


def synthetic_bank(path: Path, n: int, dim: int, seed: int = 0) -> VectorBank:
    """A clustered random bank (unit vectors around n/50 centres), enough structure for IVF to be realistic."""
    import pyarrow as pa

    from lvmkit.bank import BankManifest, CorpusInfo, EncoderInfo
    from lvmkit.bank.bank import text_hash

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 50), dim))
    x = centres[rng.integers(len(centres), size=n)] + 0.5 * rng.standard_normal((n, dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    per = 10
    texts = [f"synthetic chunk {i}" for i in range(n)]
    chunks = pa.table(
        {
            "article_id": [f"A{i // per}" for i in range(n)],
            "title": [f"A{i // per}" for i in range(n)],
            "chunk_index": pa.array([i % per for i in range(n)], pa.int32()),
            "paragraph_index": pa.array(np.zeros(n, dtype=np.int32)),
            "heading": pa.nulls(n, pa.string()),
            "text": texts,
            "label": pa.nulls(n, pa.string()),
        }
    )
    manifest = BankManifest(
        encoder=EncoderInfo(name="synthetic", dim=dim),
        chunker={"spec": "synthetic"},
        corpus=CorpusInfo(
            source="synthetic", format="synthetic", content_hash=text_hash(texts), articles=n // per
        ),
        count=n,
    )
    return VectorBank.write(path, x, chunks, manifest)


def main() -> None:
    args = parse_args()
    tmp = tempfile.TemporaryDirectory() if args.smoke else None
    bank = synthetic_bank(Path(tmp.name) / "bank", 5000, 64) if tmp else VectorBank.open(args.bank)
    out = args.out or ROOT / (
        "benchmarks/work/search.json" if args.smoke else "benchmarks/results/search.json"
    )
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(len(bank), size=min(args.queries, len(bank)), replace=False))
    queries = np.ascontiguousarray(np.asarray(bank.vectors[rows], dtype=np.float32))
    excl = np.stack([rng.choice(len(bank), size=args.exclude, replace=False) for _ in rows]).astype(np.int64)
    print(f"bank {bank.path}: {len(bank):,} x {bank.dim}; {len(queries)} queries, k={args.k}", flush=True)

    flat, ivf, ivf_build, results = measure_indexes(bank, queries, args)
    ivf.set_nprobe(16)
    over = {"flat": overhead(bank, flat, queries, args.k, excl, args.repeats)}
    over["ivf_nprobe16"] = overhead(bank, ivf, queries, args.k, excl, args.repeats)
    for name, cases in over.items():
        print(f"  overhead {name}: {cases}", flush=True)
    write_results(out, args, bank, len(queries), ivf_build, results, over)
    if tmp is not None:
        tmp.cleanup()


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bank", nargs="?", type=Path, help="bank directory (omit with --smoke)")
    ap.add_argument(
        "--queries", type=int, default=1000, help="bank rows used as queries (default: %(default)s)"
    )
    ap.add_argument("--k", type=int, default=10, help="results per query (default: %(default)s)")
    ap.add_argument(
        "--nlist", type=int, default=None, help="IVF clusters (default: ~4*sqrt(N), as index build)"
    )
    ap.add_argument("--nprobe", default="1,4,16,64", help="IVF nprobe values (default: %(default)s)")
    ap.add_argument("--hnsw", action="store_true", help="also measure HNSW (M=32) at efSearch 16,64,256")
    ap.add_argument(
        "--exclude", type=int, default=5, help="exclusion width E per query (default: %(default)s)"
    )
    ap.add_argument("--repeats", type=int, default=5, help="timing repeats, best kept (default: %(default)s)")
    ap.add_argument("--smoke", action="store_true", help="seconds-long check on a synthetic 5k x 64 bank")
    ap.add_argument(
        "--out", type=Path, default=None, help="results JSON (default: benchmarks/results/search.json)"
    )
    args = ap.parse_args()
    if args.smoke:
        args.queries, args.repeats, args.nprobe = 200, 2, "1,8"
    elif args.bank is None:
        ap.error("give a BANK directory, or --smoke")
    return args


def measure_indexes(bank, queries: np.ndarray, args):
    """(flat, ivf, ivf build seconds, rows): q/s and recall@10 against flat of each index and setting."""
    flat = build_index(bank.vectors, type="flat", use_gpu=False)
    _, truth = flat.faiss.search(queries, args.k)

    def row(index, name: str, param: str | None) -> dict:
        t = best_time(lambda: index.faiss.search(queries, args.k), args.repeats)
        got = index.faiss.search(queries, args.k)[1]
        r = {"index": name, "param": param, "qps": round(len(queries) / t, 1)}
        r["recall@10"] = round(recall_at_k(truth, got), 4)
        print(f"  {r}", flush=True)
        return r

    results = [row(flat, "flat", None)]
    t0 = time.perf_counter()
    ivf = build_index(bank.vectors, type="ivf", nlist=args.nlist, use_gpu=False)
    ivf_build = time.perf_counter() - t0
    for nprobe in (int(p) for p in args.nprobe.split(",")):
        ivf.set_nprobe(nprobe)
        results.append(row(ivf, f"ivf{ivf.params['nlist']}", f"nprobe={nprobe}"))
    if args.hnsw:
        hnsw = build_index(bank.vectors, type="hnsw", hnsw_m=32, use_gpu=False)
        for ef in (16, 64, 256):
            hnsw.set_nprobe(ef)
            results.append(row(hnsw, "hnsw32", f"ef_search={ef}"))
    return flat, ivf, ivf_build, results


def write_results(out: Path, args, bank, n_queries: int, ivf_build: float, results: list, over: dict) -> None:
    result = {
        "benchmark": "search",
        "smoke": args.smoke,
        "bank": str(bank.path),
        "bank_rows": len(bank),
        "dim": bank.dim,
        "queries": n_queries,
        "k": args.k,
        "exclude_width": args.exclude,
        "ivf_build_s": round(ivf_build, 2),
        "faiss_threads": faiss.omp_get_max_threads(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "indexes": results,
        "overhead": over,
        "overhead_target_pct": 10.0,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"wrote {out}")


def markdown(r: dict) -> str:
    lines = [
        f"Bank: {r['bank_rows']:,} x {r['dim']}, {r['queries']} queries (bank rows), k={r['k']}.",
        "",
        "| index | parameter | queries/s | recall@10 vs flat |",
        "|---|---|---:|---:|",
    ]
    lines += [
        f"| {x['index']} | {x['param'] or '-'} | {x['qps']:,.0f} | {x['recall@10']:.3f} |"
        for x in r["indexes"]
    ]
    lines += ["", "| index | call | lvmkit q/s | FAISS q/s | overhead |", "|---|---|---:|---:|---:|"]
    for name, cases in r["overhead"].items():
        for call, c in cases.items():
            lines.append(
                f"| {name} | {call} | {c['lvmkit_qps']:,.0f} | {c['faiss_qps']:,.0f} | {c['overhead_pct']:+.1f}% |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
