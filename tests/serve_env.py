"""A small real serving environment for the serve tests: a hash-encoder bank ingested from a JSON Lines corpus
(so it has a real sentence chunker), and a tiny trained GRU run on it.

    bank = make_corpus_bank(tmp_path)                 # ~40 articles x 8 sentences, encoder hash:64
    run = train_tiny_run(bank, tmp_path / "runs" / "gru", epochs=2)
    with Server(str(bank.path), "--run", str(run), cwd=tmp_path) as server:   # lvmkit serve, a free port
        pw, browser = launch_chromium()                                     # Debian's chromium via Playwright

benchmarks/serve_screenshot.py uses the same Server and launch_chromium, so the README's screenshots come from
the page exactly as the browser test drives it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
WORDS = [
    "river",
    "mountain",
    "castle",
    "harbour",
    "forest",
    "library",
    "engine",
    "violin",
    "comet",
    "glacier",
    "desert",
    "orchard",
    "bridge",
    "lantern",
    "falcon",
    "meadow",
    "temple",
    "canyon",
    "island",
    "market",
    "tower",
    "valley",
    "garden",
    "compass",
    "anchor",
    "beacon",
    "cathedral",
    "quarry",
    "vineyard",
    "lighthouse",
    "monastery",
    "volcano",
    "prairie",
    "archive",
    "observatory",
    "reservoir",
    "citadel",
]


def corpus_records(n_articles: int = 40, sentences: int = 8, seed: int = 0) -> list[dict]:
    """Articles of distinct sentences (random word triples, so the hashing encoder tells them apart)."""
    rng = np.random.default_rng(seed)
    records = []
    for a in range(n_articles):
        body = []
        for s in range(sentences):
            words = " ".join(rng.choice(WORDS, size=3, replace=False))
            body.append(f"In article {a} the {words} appears in sentence {s}.")
        half = sentences // 2
        text = " ".join(body[:half]) + "\n\n" + " ".join(body[half:])
        records.append({"id": f"a{a}", "title": f"Article {a}", "text": text, "label": f"topic{a % 4}"})
    return records


def make_corpus_bank(tmp_path: Path, name: str = "bank", encoder: str = "hash:64", **kw):
    from lvmkit.bank.ingest import ingest

    corpus = Path(tmp_path) / f"{name}_corpus.jsonl"
    corpus.write_text("\n".join(json.dumps(r) for r in corpus_records(**kw)) + "\n", encoding="utf-8")
    return ingest(corpus, Path(tmp_path) / name, encoder=encoder, backend="hash")


def tiny_overrides(bank_path: Path, epochs: int = 2) -> list[str]:
    return [
        f"bank={bank_path}",
        "data.ctx=3",
        "data.batch_size=16",
        "data.max_eval_queries=50",
        "data.max_test_queries=50",
        "model.name=gru",
        "model.kwargs={hidden: 16, layers: 1}",
        "optim.lr=0.01",
        "optim.warmup_steps=2",
        f"optim.epochs={epochs}",
        "checkpoint_every_steps=10",
        "log_every_steps=2",
    ]


def train_tiny_run(bank, out: Path, epochs: int = 2, *extra: str) -> Path:
    from lvmkit.train.config import load_config
    from lvmkit.train.loop import train

    train(load_config(None, [*tiny_overrides(bank.path, epochs), *extra]), out)
    return out


class Server:
    """``lvmkit serve`` in a child process on 127.0.0.1 and a free port (``--port 0``; the address is read from
    its output). Use as a context manager; ``kill()`` sends SIGKILL."""

    def __init__(
        self, *args: str, cwd: Path, log: Path | None = None, env: dict | None = None, timeout: float = 180.0
    ):
        import os
        import re
        import subprocess
        import sys
        import time

        self.log = Path(log) if log is not None else Path(cwd) / "serve.log"
        cmd = [sys.executable, "-m", "lvmkit.cli.main", "serve", *args, "--port", "0"]
        self.proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdout=open(self.log, "wb"),  # noqa: SIM115 (the child owns it)
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"serving on (http://127\.0\.0\.1:\d+)/", self.log.read_text(errors="replace"))
            if m:
                self.url = m.group(1)
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.proc.kill()
        raise RuntimeError(f"lvmkit serve did not start: {self.log.read_text(errors='replace')}")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except Exception:
                self.kill()


def launch_chromium(executable: str = CHROMIUM):
    """(playwright, browser): Debian's chromium driven by Playwright, no browser download. Stop both after use."""
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    return pw, pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
