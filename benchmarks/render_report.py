"""Render an lvmkit report in headless Chromium and save a screenshot: does the page really show what it says?

    python benchmarks/render_report.py RUN [RUN ...]            # report of these runs -> screenshot
    python benchmarks/render_report.py --html report.html       # screenshot of an existing report
    python benchmarks/render_report.py --smoke                  # ~1 min: two tiny runs on a synthetic bank
    python benchmarks/render_report.py --smoke --quickstart     # the quickstart's layout: two runs without
                                                                # metrics.json + one comparison directory

The page is opened from disk with networking disabled (no external resource can load, which is also a
test of the report being self-contained). Chromium's ``--screenshot`` captures the window, so
``--window-size`` sets how much of the page is captured (default 1600 x 3000). Look at the PNG.

Needs /usr/bin/chromium (Debian: ``apt-get install -y chromium``). Writes the PNG and
render_report.json (timings, sizes) to benchmarks/results/ (a smoke run: benchmarks/work/render_report/).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--hide-scrollbars",
]


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("no Chromium found: install it (Debian: apt-get install -y chromium) and run again")


def screenshot(html: Path, png: Path, width: int, height: int, timeout: float = 120.0) -> float:
    """Render ``html`` with headless Chromium into ``png``; returns the seconds it took."""
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            find_chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={png.resolve()}",
            html.resolve().as_uri(),
        ]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        elapsed = time.perf_counter() - t0
    if proc.returncode != 0 or not png.exists():
        sys.exit(f"chromium failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed


def smoke_runs(work: Path, quickstart: bool = False) -> list[Path]:
    """Two tiny real runs (gru, amn) on a synthetic bank with a learnable dynamic, each evaluated with gates.

    ``quickstart``: as ``lvmkit quickstart`` lays them out instead: the runs train with final_eval off (no
    metrics.json of their own) and are evaluated together by ``compare_runs`` into a ``comparison`` directory,
    the third directory of the report."""
    import pyarrow as pa

    from lvmkit.bank import BankManifest, CorpusInfo, EncoderInfo, VectorBank
    from lvmkit.bank.bank import text_hash
    from lvmkit.eval.command import run_eval
    from lvmkit.train.config import load_config
    from lvmkit.train.loop import train

    rng = np.random.default_rng(0)
    n_art, length, dim = 80, 12, 16
    rot, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    rows = []
    for _ in range(n_art):
        x = rng.standard_normal(dim)
        for _ in range(length):
            x = x / np.linalg.norm(x)
            rows.append(x)
            x = rot @ x + 1.2 * rng.standard_normal(dim) / math.sqrt(dim)
    vecs = np.asarray(rows, dtype=np.float32)
    topics = ["history", "science", "geography", "arts"]
    art = np.repeat(np.arange(n_art), length)
    texts = [f"article {a} chunk {c}" for a, c in zip(art, np.tile(np.arange(length), n_art), strict=True)]
    chunks = pa.table(
        {
            "article_id": [f"A{a:04d}" for a in art],
            "title": [f"Article {a}" for a in art],
            "chunk_index": np.tile(np.arange(length, dtype=np.int32), n_art),
            "paragraph_index": np.zeros(len(art), dtype=np.int32),
            "heading": pa.nulls(len(art), pa.string()),
            "text": texts,
            "label": [topics[a % len(topics)] for a in art],
        }
    )
    manifest = BankManifest(
        encoder=EncoderInfo(name="synthetic-rotation", dim=dim),
        chunker={"spec": "synthetic"},
        corpus=CorpusInfo(
            source="render_report smoke", format="synthetic", content_hash=text_hash(texts), articles=n_art
        ),
        count=len(art),
    )
    bank = VectorBank.write(work / "bank", vecs, chunks, manifest)
    gates = {"hit@5": {"min": 0.3}, "contain@50": {"min": 0.6}, "p95_ms": {"max": 50.0}}
    runs = []
    for name, kwargs in (("gru", "{hidden: 32, layers: 1}"), ("amn", "{hidden: 32}")):
        cfg = load_config(
            None,
            [
                f"bank={bank.path}",
                "data.ctx=4",
                "data.batch_size=32",
                "data.max_eval_queries=200",
                f"model.name={name}",
                f"model.kwargs={kwargs}",
                "optim.lr=0.01",
                "optim.warmup_steps=5",
                "optim.epochs=4",
                "log_every_steps=5",
                "gates=[{epoch: 1, metric: val_cos, min: 0.0}]",
                f"final_eval={str(not quickstart).lower()}",
            ],
        )
        train(cfg, work / name)
        if not quickstart:
            run_eval(str(work / name), bank, gates=gates, latency_n=50)
        runs.append(work / name)
    if quickstart:
        from lvmkit.artifacts import write_json
        from lvmkit.pipeline import compare_runs

        suite, info = compare_runs({r.name: r for r in runs}, bank, max_queries=300)
        write_json(work / "comparison" / "metrics.json", {**info, **suite.to_dict()})
        runs.append(work / "comparison")
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", type=Path, help="run directories to report on")
    ap.add_argument("--html", type=Path, help="screenshot this existing report instead of building one")
    ap.add_argument("--smoke", action="store_true", help="build two tiny runs first (about a minute)")
    ap.add_argument("--quickstart", action="store_true", help="with --smoke: the quickstart's layout")
    ap.add_argument("--width", type=int, default=1600)
    ap.add_argument("--height", type=int, default=3000)
    ap.add_argument("--out", type=Path, help="PNG path (default <results>/report_screenshot.png)")
    args = ap.parse_args()
    results = ROOT / ("benchmarks/work/render_report" if args.smoke else "benchmarks/results")
    results.mkdir(parents=True, exist_ok=True)
    record: dict = {}
    if args.html is not None:
        html = args.html
    else:
        from lvmkit.report import build_report

        runs = list(args.runs)
        if args.smoke:
            work = results / "runs"
            shutil.rmtree(work, ignore_errors=True)
            t0 = time.perf_counter()
            runs = smoke_runs(work, quickstart=args.quickstart)
            record["smoke_runs_s"] = time.perf_counter() - t0
        if not runs:
            sys.exit("give run directories, --html REPORT or --smoke")
        t0 = time.perf_counter()
        paths = build_report(runs, results / "report.html")
        record["build_report_s"] = time.perf_counter() - t0
        html = paths.html
    png = args.out or results / "report_screenshot.png"
    record["render_s"] = screenshot(html, png, args.width, args.height)
    record.update(
        html=str(html),
        html_bytes=html.stat().st_size,
        png=str(png),
        png_bytes=png.stat().st_size,
        window=[args.width, args.height],
    )
    (results / "render_report.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
