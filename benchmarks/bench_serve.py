"""Benchmark: ``lvmkit serve`` under load and over a soak, on loopback only, bounded in requests and time.

    python benchmarks/bench_serve.py banks/enwiki --run /work/qs/runs/amn              # the README's table
    python benchmarks/bench_serve.py banks/enwiki --soak-seconds 120 --requests 100    # shorter
    python benchmarks/bench_serve.py --smoke                                           # ~1 minute, hash bank

Steps:

1. **The bank, with an IVF index, untouched.** ``lvmkit index build`` writes BANK/index.faiss and the manifest, so
   the bank is mirrored under ``--work`` (vectors.npy and chunks.parquet symlinked, manifest.json copied) and the
   index (``--type ivf --nprobe 64``) is built there, once.
2. **Load.** A server (``lvmkit serve COPY --run RUN --port 0`` on 127.0.0.1, a subprocess) per search mode:
   ``direct`` (one FAISS call per request, the default) and ``batched`` (``--batch-search``: concurrent
   requests' searches coalesced into one FAISS call). For each endpoint (``/v1/search``: a bank chunk's text;
   ``/v1/next``: 4 consecutive chunks of a bank article as context) and each concurrency (1, 8, 32 clients, each
   sending its next request when the last is answered), at most ``--requests`` requests or ``--phase-seconds``:
   P50/P95/P99 latency, requests/s, errors (non-200 or transport errors; must be 0).
3. **Soak** (direct server): ``--soak-concurrency`` clients alternating search and next for ``--soak-seconds``;
   the server's RSS sampled every second. Growth = median RSS of the last 30 samples over the median of the
   first 30, minus 1 (must be under 5%).

The client (httpx, asyncio) runs in this process on the same machine as the server, so on a small machine the
two share the CPUs: the numbers are the server's speed as seen from a local client under that contention.
Writes benchmarks/results/serve.json and serve.md (a smoke run: under benchmarks/work/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only: this benchmark never exposes a server
CONTEXT = 4


# ------------------------------------------------------------------------------------------ the bank
def mirror_with_ivf(bank: Path, work: Path, nprobe: int) -> Path:
    """A copy of ``bank`` under ``work`` that shares its data files, with its own IVF index (built once)."""
    from lvmkit.bank import VectorBank

    dest = work / f"{bank.resolve().name}_ivf{nprobe}"
    if (dest / "index.faiss").is_file() and VectorBank.open(dest).manifest.index.get("type") == "ivf":
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("vectors.npy", "chunks.parquet"):
        link = dest / name
        if not link.exists():
            link.symlink_to((bank / name).resolve())
    shutil.copyfile(bank / "manifest.json", dest / "manifest.json")
    cmd = [
        sys.executable,
        "-m",
        "lvmkit.cli.main",
        "index",
        "build",
        str(dest),
        "--type",
        "ivf",
        "--nprobe",
        str(nprobe),
    ]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return dest


def make_queries(bank_path: Path, n: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Request bodies: ``n`` searches (a chunk's text) and ``n`` next requests (4 consecutive chunks)."""
    from lvmkit.bank import VectorBank

    bank = VectorBank.open(bank_path)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(bank), size=n, replace=False)
    search = [{"text": t, "k": 10} for t in bank.texts(rows)]
    starts, sizes = bank.article_starts[:-1], np.diff(bank.article_starts)
    ok = np.flatnonzero(sizes > CONTEXT)
    picks = rng.choice(ok, size=n, replace=len(ok) < n)
    nxt = []
    for i, a in enumerate(picks):
        s = int(starts[a]) + int(rng.integers(0, sizes[a] - CONTEXT))
        nxt.append({"context": bank.texts(range(s, s + CONTEXT)), "k": 10, "request_id": f"bench-{i}"})
    return search, nxt


# ---------------------------------------------------------------------------------------- the server
@contextmanager
def server(bank: Path, run: str, batch: bool, extra: list[str]):
    cmd = [
        sys.executable,
        "-m",
        "lvmkit.cli.main",
        "serve",
        str(bank),
        "--run",
        run,
        "--host",
        HOST,
        "--port",
        "0",
    ]
    cmd += (["--batch-search"] if batch else []) + extra
    env = {**os.environ, "COLUMNS": "200"}
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = None
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.rstrip())
            m = re.search(r"serving on (http://127\.0\.0\.1:\d+)/", line)
            if m:
                url = m.group(1)
                break
        if url is None:
            raise RuntimeError("the server did not start:\n" + "\n".join(lines[-20:]))
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # keep draining
        yield proc, url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------------- load
async def _load(
    url: str, bodies: list[tuple[str, dict]], concurrency: int, max_requests: int, seconds: float
):
    latencies, errors = [], []
    counter = iter(range(max_requests))
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120.0) as client:

        async def worker():
            for i in counter:
                if time.perf_counter() > deadline:
                    return
                path, body = bodies[i % len(bodies)]
                t0 = time.perf_counter()
                try:
                    r = await client.post(path, json=body)
                    if r.status_code != 200:
                        errors.append(f"{path} {r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as e:
                    errors.append(f"{path} {type(e).__name__}: {e}")
                latencies.append((time.perf_counter() - t0) * 1000.0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return latencies, errors, wall


def load_phase(url, endpoint, bodies, concurrency, max_requests, seconds) -> dict:
    lat, errors, wall = asyncio.run(
        _load(url, [(endpoint, b) for b in bodies], concurrency, max_requests, seconds)
    )
    p = np.percentile(lat, [50, 95, 99]) if lat else [float("nan")] * 3
    row = {
        "endpoint": endpoint,
        "concurrency": concurrency,
        "requests": len(lat),
        "seconds": round(wall, 2),
        "rps": round(len(lat) / wall, 2),
        "p50_ms": round(float(p[0]), 1),
        "p95_ms": round(float(p[1]), 1),
        "p99_ms": round(float(p[2]), 1),
        "errors": len(errors),
        "error_examples": errors[:3],
    }
    print(json.dumps({k: v for k, v in row.items() if k != "error_examples"}), flush=True)
    return row


def soak(url, pid, search, nxt, concurrency, seconds, max_requests) -> dict:
    proc = psutil.Process(pid)
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    t_start = time.perf_counter()

    def sample():
        while not stop.is_set():
            samples.append((round(time.perf_counter() - t_start, 1), proc.memory_info().rss))
            stop.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    bodies = [
        x for pair in zip(search, nxt, strict=False) for x in (("/v1/search", pair[0]), ("/v1/next", pair[1]))
    ]
    lat, errors, wall = asyncio.run(_load(url, bodies, concurrency, max_requests, seconds))
    stop.set()
    sampler.join()
    rss = [r for _, r in samples]
    head, tail = statistics.median(rss[:30]), statistics.median(rss[-30:])
    row = {
        "concurrency": concurrency,
        "seconds": round(wall, 1),
        "requests": len(lat),
        "rps": round(len(lat) / wall, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "errors": len(errors),
        "error_examples": errors[:3],
        "rss_start_mib": round(head / 2**20, 1),
        "rss_end_mib": round(tail / 2**20, 1),
        "rss_max_mib": round(max(rss) / 2**20, 1),
        "rss_growth_pct": round(100.0 * (tail / head - 1.0), 2),
        "rss_samples": [(t, round(r / 2**20, 1)) for t, r in samples],
    }
    print(
        json.dumps({k: v for k, v in row.items() if k not in ("rss_samples", "error_examples")}), flush=True
    )
    return row


# ------------------------------------------------------------------------ FAISS alone: batched vs direct
def faiss_compare(bank_path: Path, threads: list[int], per_thread: int, seed: int = 0) -> list[dict]:
    """The search stage alone, in this process: ``threads`` callers, each searching ``per_thread`` bank vectors
    one at a time (k=10), through the IVF index directly vs through the MicroBatcher. No HTTP, no encoder."""
    from concurrent.futures import ThreadPoolExecutor

    from lvmkit.bank import VectorBank
    from lvmkit.serve.batcher import MicroBatcher

    bank = VectorBank.open(bank_path)
    index = bank.index()
    rng = np.random.default_rng(seed)
    rows = []
    for n in threads:
        queries = np.asarray(bank.get(np.sort(rng.choice(len(bank), size=n * per_thread, replace=False))))
        for mode in ("direct", "batched"):
            searcher = MicroBatcher(index) if mode == "batched" else index
            lat: list[float] = []

            def caller(t, searcher=searcher, lat=lat, queries=queries):
                for q in queries[t * per_thread : (t + 1) * per_thread]:
                    t0 = time.perf_counter()
                    searcher.search(q[None], 10)
                    lat.append((time.perf_counter() - t0) * 1000.0)

            t0 = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:
                list(pool.map(caller, range(n)))
            wall = time.perf_counter() - t0
            row = {
                "mode": mode,
                "threads": n,
                "searches": len(lat),
                "qps": round(len(lat) / wall, 1),
                "p50_ms": round(float(np.percentile(lat, 50)), 2),
                "p95_ms": round(float(np.percentile(lat, 95)), 2),
            }
            if mode == "batched":
                row["mean_rows_per_faiss_call"] = round(searcher.stats.to_dict()["mean_rows_per_call"], 2)
                searcher.close()
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


# -------------------------------------------------------------------------------------------- report
def markdown(res: dict) -> str:
    lines = [
        "| mode | endpoint | clients | requests | req/s | P50 ms | P95 ms | P99 ms | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["load"]:
        lines.append(
            f"| {r['mode']} | {r['endpoint']} | {r['concurrency']} | {r['requests']} | {r['rps']:.1f} | "
            f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} |"
        )
    if res.get("faiss"):
        lines += [
            "",
            "| search stage only (in process) | threads | searches | q/s | P50 ms | P95 ms | rows per FAISS call |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in res["faiss"]:
            lines.append(
                f"| {r['mode']} | {r['threads']} | {r['searches']} | {r['qps']:.0f} | {r['p50_ms']:.2f} | "
                f"{r['p95_ms']:.2f} | {r.get('mean_rows_per_faiss_call', 1.0):.1f} |"
            )
    s = res.get("soak")
    if s:
        lines += [
            "",
            f"Soak: {s['seconds']:.0f} s, {s['concurrency']} clients alternating search/next, {s['requests']:,} requests "
            f"({s['rps']:.1f}/s), {s['errors']} errors; server RSS {s['rss_start_mib']:.0f} -> {s['rss_end_mib']:.0f} MiB "
            f"(median of first / last 30 one-second samples): growth {s['rss_growth_pct']:+.2f}% "
            f"(max {s['rss_max_mib']:.0f} MiB).",
        ]
    return "\n".join(lines) + "\n"


def smoke_bank(work: Path) -> tuple[Path, str]:
    sys.path.insert(0, str(ROOT / "tests"))
    from serve_env import make_corpus_bank

    if not (work / "bank" / "manifest.json").is_file():
        work.mkdir(parents=True, exist_ok=True)
        make_corpus_bank(work, n_articles=200)
    return work / "bank", "baseline:exp_weighted"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bank", nargs="?", type=Path, default=ROOT / "banks/enwiki")
    ap.add_argument(
        "--run", default="baseline:exp_weighted", help="what answers /v1/next (a run or baseline:NAME)"
    )
    ap.add_argument("--nprobe", type=int, default=64)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=300, help="cap per load phase")
    ap.add_argument("--phase-seconds", type=float, default=60.0, help="cap per load phase")
    ap.add_argument("--modes", default="direct,batched")
    ap.add_argument("--soak-seconds", type=float, default=600.0)
    ap.add_argument("--soak-concurrency", type=int, default=8)
    ap.add_argument("--soak-requests", type=int, default=1_000_000, help="cap on soak requests")
    ap.add_argument(
        "--faiss-per-thread", type=int, default=200, help="searches per thread, search-stage test"
    )
    ap.add_argument(
        "--backend", default=None, help="query encoder backend for the server (default: the bank's)"
    )
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lvmkit_bench_serve")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/serve.json")
    ap.add_argument("--smoke", action="store_true", help="a 200-article hash bank, short phases")
    args = ap.parse_args()

    if args.smoke:
        args.work = ROOT / "benchmarks/work/serve_smoke"
        args.bank, args.run = smoke_bank(args.work)
        args.requests, args.phase_seconds, args.soak_seconds, args.faiss_per_thread = 60, 10.0, 40.0, 20
        args.out = ROOT / "benchmarks/work/serve.json"
    if not (args.bank / "manifest.json").is_file():
        sys.exit(f"{args.bank} is not a finished bank (no manifest.json)")
    bank = mirror_with_ivf(args.bank, args.work, args.nprobe)
    search, nxt = make_queries(bank, n=max(args.requests, 500))
    conc = [int(c) for c in args.concurrency.split(",")]
    extra = ["--backend", args.backend] if args.backend else []
    res = {
        "bank": str(args.bank),
        "served_copy": str(bank),
        "index": {"type": "ivf", "nprobe": args.nprobe},
        "run": args.run,
        "context_chunks": CONTEXT,
        "k": 10,
        "caps": {"requests_per_phase": args.requests, "seconds_per_phase": args.phase_seconds},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_at_start": os.getloadavg(),
        },
        "load": [],
        "soak": None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        args.out.write_text(json.dumps(res, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(markdown(res))

    for mode in args.modes.split(","):
        with server(bank, args.run, mode == "batched", extra) as (proc, url):
            load_phase(url, "/v1/next", nxt[:8], 1, 8, 60.0)  # warm-up: encoder, model, index pages
            for endpoint, bodies in (("/v1/search", search), ("/v1/next", nxt)):
                for c in conc:
                    row = load_phase(url, endpoint, bodies, c, args.requests, args.phase_seconds)
                    res["load"].append({"mode": mode, **row})
                    save()
            if mode == "direct" and args.soak_seconds > 0:
                res["soak"] = soak(
                    url, proc.pid, search, nxt, args.soak_concurrency, args.soak_seconds, args.soak_requests
                )
                save()
            res.setdefault("info", {})[mode] = httpx.get(f"{url}/v1/info").json()["index"]
    res["faiss"] = faiss_compare(bank, conc, per_thread=args.faiss_per_thread)
    res["machine"]["loadavg_at_end"] = os.getloadavg()
    save()
    print(markdown(res))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
