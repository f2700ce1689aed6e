"""``lvmkit serve`` as a real process: a real browser drives the page, and a SIGKILL mid-request leaves no file.

The browser is Debian's chromium driven by Playwright for Python (no browser download; ``.ci/run`` installs
chromium with apt when it is missing). The page is used with the keyboard: the paragraph is submitted with
Ctrl+Enter and the dashboard tab is reached with the arrow key. Screenshots go to the test's tmp dir.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")

from serve_env import CHROMIUM, Server, launch_chromium, make_corpus_bank, tiny_overrides, train_tiny_run  # noqa: E402

from lvmkit.train.checkpoint import load_model  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
CONTEXT_ROWS = [40, 41, 42, 43]  # article a5, its first four sentences


@pytest.fixture(scope="module")
def served(tmp_path_factory, one_thread):
    tmp = tmp_path_factory.mktemp("browser")
    bank = make_corpus_bank(tmp)
    run = train_tiny_run(bank, tmp / "runs" / "gru", 2)
    return {"tmp": tmp, "bank": bank, "run": run}


def expected_top(bank, run: Path) -> set[str]:
    """Texts of the chunks tied for the top score of the model's prediction (brute force, context excluded)."""
    model, _ = load_model(run / "best.pt")
    ctx = torch.from_numpy(np.asarray(bank.vectors[CONTEXT_ROWS[-3:]], dtype=np.float32))[None]
    with torch.no_grad():
        pred = model(ctx, torch.ones(1, 3, dtype=torch.bool))[0].numpy().astype(np.float64)
    scores = np.asarray(bank.vectors, dtype=np.float64) @ (pred / np.linalg.norm(pred))
    scores[CONTEXT_ROWS] = -np.inf
    best = np.flatnonzero(scores >= scores.max() - 1e-6)
    return set(bank.texts(best))


def browser():
    pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install -y chromium; .ci/run does it)")
    return launch_chromium()


def epoch_shown(page, run: str) -> int:
    text = page.locator(f'[data-run="{run}"] .epoch').inner_text()
    m = re.match(r"\s*(\d+)", text)
    return int(m.group(1)) if m else 0


def test_page_in_a_real_browser(served, tmp_path):
    bank, tmp = served["bank"], served["tmp"]
    runs = tmp / "runs"
    pw, chromium = browser()
    live_error: list[BaseException] = []
    first_seen = threading.Event()

    def train_live():
        from lvmkit.train.config import load_config
        from lvmkit.train.loop import train

        try:
            # after its first epoch the run waits until the page has shown it, so the rise that the test
            # waits for is still to come however fast the machine trains (an idle machine finished all
            # 8 epochs before the first poll)
            def hold_after_first_epoch(kind, info):
                if kind == "epoch" and not first_seen.is_set():
                    first_seen.wait(timeout=180)

            train(
                load_config(None, tiny_overrides(bank.path, epochs=8)),
                runs / "live",
                on_event=hold_after_first_epoch,
            )
        except BaseException as e:  # pragma: no cover - reported by the assertion below
            live_error.append(e)

    try:
        with Server(
            str(bank.path), "--run", str(served["run"]), "--runs-dir", str(runs), cwd=tmp_path
        ) as server:
            page = chromium.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server.url + "/")
            page.focus("#paragraph")
            page.keyboard.insert_text(" ".join(bank.texts(CONTEXT_ROWS)))
            page.keyboard.press("Control+Enter")
            page.wait_for_selector("#predicted li", timeout=60_000)
            first = page.locator("#predicted li .text").first.inner_text()
            assert first in expected_top(bank, served["run"])
            assert page.locator("#run-name").inner_text() == "gru"
            assert page.locator("#copy-last li").count() == 5
            assert "total" in page.locator("#timings").inner_text()
            page.screenshot(path=str(tmp_path / "playground-1280.png"), full_page=True)
            page.set_viewport_size({"width": 400, "height": 900})
            page.screenshot(path=str(tmp_path / "playground-400.png"), full_page=True)
            page.set_viewport_size({"width": 1280, "height": 900})

            # the dashboard, reached with the keyboard, while a tiny training runs
            page.goto(server.url + "/?poll=300")
            page.focus("#tab-playground")
            page.keyboard.press("ArrowRight")
            assert page.locator("#tab-runs").get_attribute("aria-selected") == "true"
            trainer = threading.Thread(target=train_live, daemon=True)
            trainer.start()
            page.wait_for_selector('[data-run="live"] .epoch', timeout=120_000)
            seen = epoch_shown(page, "live")
            first_seen.set()
            page.wait_for_function(
                f"""() => {{
                    const e = document.querySelector('[data-run="live"] .epoch');
                    return e && parseInt(e.textContent) > {seen};
                }}""",
                timeout=120_000,
            )
            assert epoch_shown(page, "live") > seen
            page.wait_for_selector('[data-run="gru"] .chart svg')
            page.screenshot(path=str(tmp_path / "dashboard-1280.png"), full_page=True)
            trainer.join(timeout=300)
            assert not live_error, live_error
            page.wait_for_function(
                """() => ['finished', 'early_stopped'].includes(
                    document.querySelector('[data-run="live"] .state').textContent)""",
                timeout=30_000,
            )
            page.set_viewport_size({"width": 400, "height": 900})
            page.screenshot(path=str(tmp_path / "dashboard-400.png"), full_page=True)
            href = page.locator('[data-run="live"] a.report').get_attribute("href")
            with urllib.request.urlopen(server.url + href) as r:
                assert r.status == 200 and b"live" in r.read()
    finally:
        first_seen.set()
        chromium.close()
        pw.stop()
    for name in ("playground-1280", "playground-400", "dashboard-1280", "dashboard-400"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file under the roots: path -> (size, mtime in ns)."""
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            if p.is_file():
                st = p.stat()
                out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


def test_killing_the_server_mid_request_leaves_no_file(served, tmp_path):
    bank, runs = served["bank"], served["tmp"] / "runs"
    if (runs / "live").exists():
        shutil.rmtree(runs / "live")  # the browser test's run; a finished one is all this test needs
    cwd, tmpdir = tmp_path / "cwd", tmp_path / "tmpdir"
    cwd.mkdir(), tmpdir.mkdir()
    env = {
        "TMPDIR": str(tmpdir),
        "MPLCONFIGDIR": str(tmp_path / "mpl"),
    }  # matplotlib's font cache is not ours
    watched = (bank.path, runs, cwd, tmpdir)
    before = snapshot(*watched)
    server = Server(str(bank.path), "--run", str(served["run"]), cwd=cwd, log=tmp_path / "serve.log", env=env)
    body = json.dumps({"paragraph": " ".join(bank.texts(CONTEXT_ROWS)), "k": 50}).encode()

    def hit(path: str, data: bytes | None = None):
        req = urllib.request.Request(
            server.url + path, data=data, headers={"Content-Type": "application/json"}
        )
        with contextlib.suppress(Exception):  # the server is killed under it
            urllib.request.urlopen(req, timeout=30).read()

    threads = [threading.Thread(target=hit, args=("/v1/runs/gru/report",))]
    threads += [threading.Thread(target=hit, args=("/v1/next", body)) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    server.kill()
    for t in threads:
        t.join()
    assert server.proc.returncode == -9
    assert snapshot(*watched) == before
    assert os.listdir(tmpdir) == []
