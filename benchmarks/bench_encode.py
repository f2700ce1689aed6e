"""Encoder throughput and fidelity on real Wikipedia sentence chunks: raw sentence-transformers vs lvmkit.

    .venv/bin/python benchmarks/bench_encode.py                  # 2,000 chunks, writes the JSON + table
    .venv/bin/python benchmarks/bench_encode.py --smoke          # 100 chunks, prints only

Rows (all with the offline all-MiniLM-L6-v2, on the CPU unless --device; each path at its own default
batch size unless --batch-size sets one for all):
  raw st              SentenceTransformer(path).encode(texts): its defaults (batch 32; it sorts the whole
                      input by length itself); the reference for speed and for cosine
  raw st batch 8      the same at onnx-int8's batch size: shows the int8 gain is not a batch-size effect
  lvmkit st           load_encoder(): length-sorted batches of default_batch_size, one encode call per
                      batch (so the CLI can show progress), normalised float32
  lvmkit st unsorted  the same without length sorting: shows what sorting saves (padding)
  onnx-int8           load_encoder(backend="onnx-int8"): int8 onnxruntime, length-sorted batches of 8,
                      one single-threaded session call per batch on each of --threads workers
  onnx-int8 batch 64  the same with batches of 64
  onnx-int8 unsorted  the same without length sorting

Measured: chunks/s over one timed pass after a warm-up (best of --repeats), speed-up over raw st, and the
mean / min cosine of each row's vectors with raw st's (normalised). Load time is reported too (for
onnx-int8 it includes the one-off export + quantisation when the cache has no entry yet).
Target (issue #2): onnx-int8 >= 1.7x raw st at >= 0.99 mean cosine.

Chunks: the first --n sentence chunks of the corpus (default ../shared/data/enwiki2015), read with
lvmkit.corpus (chunker "sentence"). Text: Wikipedia contributors, CC BY-SA 3.0.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

from lvmkit.artifacts import write_json
from lvmkit.corpus import make_chunker, read_corpus
from lvmkit.encode import SentenceTransformerEncoder, l2_normalize, load_encoder
from lvmkit.encode.st import load_sentence_transformer, resolve_model

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared/data/enwiki2015"
DEFAULT_OUT = REPO / "benchmarks/results/encode.json"
TARGET_SPEEDUP, TARGET_COS = 1.7, 0.99


def load_chunks(corpus: Path, n: int) -> list[str]:
    chunker = make_chunker("sentence")
    texts: list[str] = []
    for article in read_corpus(corpus):
        texts.extend(c.text for c in chunker.chunk(article))
        if len(texts) >= n:
            break
    return texts[:n]


def timed(
    encode: Callable[[list[str]], np.ndarray], texts: list[str], repeats: int
) -> tuple[float, np.ndarray]:
    encode(texts[:32])  # warm-up: first-call allocations, thread pools, kernel selection
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = encode(texts)
        best = min(best, time.perf_counter() - t0)
    return best, l2_normalize(out)


def run(texts: list[str], batch_size: int | None, device: str, repeats: int, threads: int | None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    rows: dict[str, dict] = {}

    def record(
        name: str, load_s: float, batch: int, encode: Callable, ref: np.ndarray | None = None
    ) -> np.ndarray:
        seconds, vecs = timed(encode, texts, repeats)
        cos = (vecs * (vecs if ref is None else ref)).sum(1)
        rows[name] = {
            "batch_size": batch,
            "seconds": round(seconds, 3),
            "chunks_per_s": round(len(texts) / seconds, 1),
            "mean_cos": round(float(cos.mean()), 5),
            "min_cos": round(float(cos.min()), 5),
            "load_s": round(load_s, 2),
        }
        print(f"  {name:24s} {rows[name]['chunks_per_s']:8.1f} chunks/s", file=sys.stderr)
        return vecs

    from lvmkit.encode.onnx_int8 import OnnxInt8Encoder

    onnx_batch = batch_size or OnnxInt8Encoder.default_batch_size

    t0 = time.perf_counter()
    raw_model, source = load_sentence_transformer(resolve_model(None), device)
    load_raw = time.perf_counter() - t0
    raw_batch = batch_size or 32  # SentenceTransformer.encode's own default batch size
    raw = record("raw st", load_raw, raw_batch, lambda t: raw_model.encode(t, batch_size=raw_batch))
    if batch_size is None:  # does raw st gain from onnx-int8's small batches? (it must not explain the gain)
        record(
            f"raw st batch {onnx_batch}",
            load_raw,
            onnx_batch,
            lambda t: raw_model.encode(t, batch_size=onnx_batch),
            raw,
        )

    t0 = time.perf_counter()
    st = load_encoder(device=device)
    load_st = time.perf_counter() - t0
    st_batch = batch_size or st.default_batch_size
    record("lvmkit st", load_st, st_batch, lambda t: st.encode(t, batch_size=st_batch), raw)
    unsorted = SentenceTransformerEncoder(st.model, st.source, sort_by_length=False)
    record("lvmkit st unsorted", load_st, st_batch, lambda t: unsorted.encode(t, batch_size=st_batch), raw)

    t0 = time.perf_counter()
    onnx = load_encoder(backend="onnx-int8")  # a first-ever load exports the model (timed as load)
    load_onnx = time.perf_counter() - t0
    if threads:
        onnx = type(onnx)(onnx.model_dir, threads=threads)
    record("onnx-int8", load_onnx, onnx_batch, lambda t: onnx.encode(t, batch_size=onnx_batch), raw)
    if batch_size is None:
        record("onnx-int8 batch 64", load_onnx, 64, lambda t: onnx.encode(t, batch_size=64), raw)
    onnx_unsorted = type(onnx)(onnx.model_dir, threads=onnx.threads, sort_by_length=False)
    record(
        "onnx-int8 unsorted",
        load_onnx,
        onnx_batch,
        lambda t: onnx_unsorted.encode(t, batch_size=onnx_batch),
        raw,
    )

    base = rows["raw st"]["seconds"]
    for r in rows.values():
        r["speedup_vs_raw"] = round(base / r["seconds"], 2)
    int8 = rows["onnx-int8"]
    return {
        "rows": rows,
        "torch_threads": torch.get_num_threads(),
        "onnx_threads": onnx.threads,
        "target": {
            "onnx_int8_speedup": TARGET_SPEEDUP,
            "onnx_int8_mean_cos": TARGET_COS,
            "met": int8["speedup_vs_raw"] >= TARGET_SPEEDUP and int8["mean_cos"] >= TARGET_COS,
        },
    }


def markdown(result: dict) -> str:
    lines = [
        f"Encoding {result['n']:,} enwiki sentence chunks (mean {result['mean_chars']:.0f} chars), "
        f"all-MiniLM-L6-v2, {result['machine']['cpus']} CPUs (torch threads {result['torch_threads']}, "
        f"onnx-int8 threads {result['onnx_threads']}), best of {result['repeats']} passes",
        "",
        "| encoder | batch | chunks/s | vs raw st | mean cos | min cos | load s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["rows"].items():
        lines.append(
            f"| {name} | {r['batch_size']} | {r['chunks_per_s']:.1f} | {r['speedup_vs_raw']:.2f}x | {r['mean_cos']:.4f} "
            f"| {r['min_cos']:.4f} | {r['load_s']:.1f} |"
        )
    t = result["target"]
    verdict = "met" if t["met"] else "NOT met"
    lines += [
        "",
        f"Target onnx-int8 >= {t['onnx_int8_speedup']}x at >= {t['onnx_int8_mean_cos']} mean cos: {verdict}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--n", type=int, default=2000, help="number of sentence chunks")
    ap.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="one batch size for every row (default: each path's own default, plus comparison rows)",
    )
    ap.add_argument("--device", default="cpu", help="torch device of the st rows (onnx-int8 is CPU only)")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch and onnxruntime threads (default: theirs)"
    )
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per row; the fastest counts")
    ap.add_argument(
        "--out", type=Path, default=None, help=f"JSON output (default {DEFAULT_OUT}; none with --smoke)"
    )
    ap.add_argument("--smoke", action="store_true", help="100 chunks, print only: checks the script works")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n = min(args.n, 100)
    elif args.out is None:
        args.out = DEFAULT_OUT
    if not args.corpus.exists():
        print(f"corpus {args.corpus} not found; pass --corpus", file=sys.stderr)
        return 2
    texts = load_chunks(args.corpus, args.n)
    result = {
        "benchmark": "encode",
        "n": len(texts),
        "mean_chars": float(np.mean([len(t) for t in texts])),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "device": args.device,
        "corpus": str(args.corpus),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        },
        "versions": {
            p: metadata.version(p) for p in ("torch", "sentence-transformers", "onnxruntime", "transformers")
        },
    }
    result.update(run(texts, args.batch_size, args.device, args.repeats, args.threads))
    table = markdown(result)
    print(table)
    if args.out is not None:
        write_json(args.out, {**result, "table": table})
        print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
