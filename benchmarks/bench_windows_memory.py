"""Memory of sequence windows: peak RSS while iterating batches vs the size of the bank on disk.

Windows are index views (one int64 per window) and batches gather rows from the memory-mapped bank, so
the process's own (anonymous) memory should stay near "one batch" however large the bank or ctx is. This
script checks that claim:

1. build a bank of random unit vectors on disk (default 200k x 384 float32, long articles so that ctx=1000
   windows are full), or use ``--bank PATH``;
2. in a fresh subprocess: open it, make train windows (ctx=1000, padded down to min_ctx=1), shuffle them
   with ArticleCappedBatchSampler and gather a few hundred batches of 32, sampling RSS after every batch;
3. write benchmarks/results/windows_memory.json.

RSS is split into file-backed pages (``shared``: memmap pages the kernel may drop at any time) and the rest
(``anon``: what the process really holds). Run:

    .venv/bin/python benchmarks/bench_windows_memory.py                 # the real measurement
    .venv/bin/python benchmarks/bench_windows_memory.py --smoke --out /tmp/wm.json   # seconds, tiny bank
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

import numpy as np

HERE = Path(__file__).resolve().parent


def build_bank(path: Path, rows: int, dim: int, article_len: int, seed: int = 0) -> Path:
    """Random unit vectors written block by block (never all in memory), then a regular VectorBank."""
    import pyarrow as pa

    from lvmkit.bank import BankManifest, CorpusInfo, EncoderInfo, VectorBank
    from lvmkit.bank.bank import text_hash

    path.mkdir(parents=True, exist_ok=True)
    scratch = path.parent / f"{path.name}.scratch.npy"
    vecs = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.float32, shape=(rows, dim))
    rng = np.random.default_rng(seed)
    for s in range(0, rows, 65_536):
        x = rng.standard_normal((min(65_536, rows - s), dim)).astype(np.float32)
        vecs[s : s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    vecs.flush()
    art = np.arange(rows) // article_len
    ids = [f"B{a:06d}" for a in art]
    texts = [f"synthetic {seed} row {r}" for r in range(rows)]
    chunks = pa.table(
        {
            "article_id": ids,
            "title": ids,
            "chunk_index": (np.arange(rows) % article_len).astype(np.int32),
            "paragraph_index": np.zeros(rows, dtype=np.int32),
            "heading": pa.nulls(rows, pa.string()),
            "text": texts,
            "label": pa.nulls(rows, pa.string()),
        }
    )
    manifest = BankManifest(
        encoder=EncoderInfo(name="bench-random", dim=dim),
        chunker={"spec": "synthetic"},
        corpus=CorpusInfo(
            source="bench_windows_memory",
            format="synthetic",
            content_hash=text_hash(texts),
            articles=int(art[-1]) + 1,
        ),
        count=rows,
    )
    VectorBank.write(path, np.load(scratch, mmap_mode="r"), chunks, manifest)
    scratch.unlink()
    return path


def measure(bank_path: str, ctx: int, batches: int, batch_size: int) -> dict:
    """Runs in a fresh process: RSS before / after making windows, and its peak while gathering batches."""
    import psutil
    import torch

    from lvmkit.bank import VectorBank
    from lvmkit.data import ArticleCappedBatchSampler, make_split, make_windows

    proc = psutil.Process()

    def mem() -> tuple[int, int]:
        m = proc.memory_info()
        return m.rss, m.rss - m.shared

    rss0, anon0 = mem()
    bank = VectorBank.open(bank_path)
    split = make_split(bank, seed=0)
    ws = make_windows(bank, split, "train", ctx=ctx, stride=1, min_ctx=1, pad=True)
    sampler = ArticleCappedBatchSampler(ws.article_of_all(), batch_size=batch_size, max_per_article=2, seed=0)
    rss1, anon1 = mem()
    peak_rss, peak_anon, done, checksum = rss1, anon1, 0, 0.0
    t0 = time.perf_counter()
    for idx in sampler:
        b = ws.batch(idx)
        checksum += float(b.ctx.sum()) + float(torch.as_tensor(b.mask).sum())
        rss, anon = mem()
        peak_rss, peak_anon = max(peak_rss, rss), max(peak_anon, anon)
        done += 1
        if done >= batches:
            break
    seconds = time.perf_counter() - t0
    bank_bytes = os.path.getsize(Path(bank_path) / "vectors.npy")
    batch_bytes = (
        batch_size * ctx * bank.dim * 4 + batch_size * ctx + batch_size * bank.dim * 4 + 16 * batch_size
    )
    return {
        "bank_rows": len(bank),
        "dim": bank.dim,
        "bank_vectors_bytes": bank_bytes,
        "ctx": ctx,
        "batch_size": batch_size,
        "windows": len(ws),
        "window_index_bytes": ws.nbytes,
        "sampler_index_bytes": int(sampler.article_of_window.nbytes),
        "materialised_windows_would_be_bytes": len(ws) * (ctx + 1) * bank.dim * 4,
        "batch_tensor_bytes": batch_bytes,
        "batches": done,
        "rss_baseline": rss0,
        "rss_after_windows": rss1,
        "peak_rss": peak_rss,
        "peak_anon": peak_anon,
        "anon_after_windows_above_baseline": anon1 - anon0,
        "peak_anon_above_baseline": peak_anon - anon0,
        "peak_anon_growth_during_batches": peak_anon - anon1,
        "peak_anon_above_baseline_over_bank": (peak_anon - anon0) / bank_bytes,
        "seconds_per_batch": seconds / max(1, done),
        "checksum": checksum,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bank", help="use this existing bank instead of building a random one")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--article-len", type=int, default=2_000, help="chunks per synthetic article")
    ap.add_argument("--ctx", type=int, default=1000)
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workdir", default=str(HERE / "work"), help="where the synthetic bank is built")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic bank afterwards")
    ap.add_argument("--out", default=str(HERE / "results" / "windows_memory.json"))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script works in seconds")
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # internal: run the measurement on this bank
    args = ap.parse_args()

    if args.measure:
        print(json.dumps(measure(args.measure, args.ctx, args.batches, args.batch_size)))
        return
    if args.smoke:
        args.rows, args.dim, args.article_len, args.ctx, args.batches = 6_000, 32, 150, 100, 20

    built = None
    if args.bank:
        bank_path = Path(args.bank)
    else:
        built = bank_path = Path(args.workdir) / f"windows_memory_{args.rows}x{args.dim}"
        if bank_path.exists():
            shutil.rmtree(bank_path)
        t = time.perf_counter()
        build_bank(bank_path, args.rows, args.dim, args.article_len)
        print(f"built {bank_path} in {time.perf_counter() - t:.1f}s", file=sys.stderr)

    cmd = [sys.executable, __file__, "--measure", str(bank_path), "--ctx", str(args.ctx)]
    cmd += ["--batches", str(args.batches), "--batch-size", str(args.batch_size)]
    result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    result.update(
        smoke=args.smoke,
        synthetic_bank=built is not None,
        machine={
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        command=" ".join(sys.argv),
    )
    from lvmkit.artifacts import write_json

    write_json(args.out, result)
    if built is not None and not args.keep:
        shutil.rmtree(built)

    mib = 1 << 20
    print(f"bank vectors on disk      {result['bank_vectors_bytes'] / mib:10.1f} MiB")
    print(f"window index ({result['windows']} windows) {result['window_index_bytes'] / mib:10.3f} MiB")
    print(f"materialised would be     {result['materialised_windows_would_be_bytes'] / mib:10.0f} MiB")
    print(f"one batch of tensors      {result['batch_tensor_bytes'] / mib:10.1f} MiB")
    print(
        f"peak RSS                  {result['peak_rss'] / mib:10.1f} MiB (anon {result['peak_anon'] / mib:.1f} MiB)"
    )
    print(f"anon: bank open + windows {result['anon_after_windows_above_baseline'] / mib:10.1f} MiB")
    print(f"anon: growth over batches {result['peak_anon_growth_during_batches'] / mib:10.1f} MiB")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
