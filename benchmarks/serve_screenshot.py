"""Make the README's screenshots of the ``lvmkit serve`` page, the way the browser test drives it.

Starts ``lvmkit serve BANK --run RUN`` on 127.0.0.1 (a free port) and opens the page in Debian's chromium
through Playwright (no browser download), with the browser test's own helpers (tests/serve_env.py: Server,
launch_chromium); it submits a paragraph with Ctrl+Enter and saves the playground; then opens the
runs tab and saves the dashboard. PNGs are reduced to a 128-colour palette to stay small.

    python benchmarks/serve_screenshot.py --bank quickstart_out/bank --run quickstart_out/runs/gru \
        --out docs/serve-playground.png --runs-out docs/serve-runs.png
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_env import Server, launch_chromium  # noqa: E402  (the browser test's helpers)

PARAGRAPH = (
    "Charles Darwin was an English naturalist, geologist and biologist. He is best known for his contributions "
    "to the science of evolution. His proposition that all species of life have descended from common "
    "ancestors is now widely accepted."
)


def save_small_png(png: bytes, out: Path, colors: int) -> None:
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB, {img.width}x{img.height})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bank", required=True)
    ap.add_argument("--run", default=None)
    ap.add_argument("--runs-dir", default=None)
    ap.add_argument("--paragraph", default=PARAGRAPH)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=860)
    ap.add_argument("--colors", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path("docs/serve-playground.png"))
    ap.add_argument("--runs-out", type=Path, default=None, help="also save the runs dashboard here")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()

    serve_args = [args.bank, *(["--run", args.run] if args.run else [])]
    serve_args += ["--runs-dir", args.runs_dir] if args.runs_dir else []
    with tempfile.TemporaryDirectory() as tmp, Server(*serve_args, cwd=Path(tmp)) as server:
        pw, browser = launch_chromium(args.chromium)
        try:
            url = server.url
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(url + "/")
            page.fill("#k", str(args.k))
            page.focus("#paragraph")
            page.keyboard.insert_text(args.paragraph)
            page.keyboard.press("Control+Enter")
            page.wait_for_selector("#predicted li", timeout=120_000)
            page.locator("#predict").focus()
            save_small_png(page.screenshot(), args.out, args.colors)
            if args.runs_out is not None:
                page.click("#tab-runs")
                page.wait_for_selector(".card", timeout=60_000)
                page.wait_for_timeout(1500)  # the curves arrive with the second request
                save_small_png(page.screenshot(), args.runs_out, args.colors)
        finally:
            browser.close()
            pw.stop()


if __name__ == "__main__":
    main()
