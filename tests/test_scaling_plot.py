"""report.plots.scaling_curves: draws the size and ctx sweeps of bench_scaling.py, or nothing without points."""

from __future__ import annotations

from lvmkit.report.plots import scaling_curves


def pt(sweep, ctx, n, model_hit):
    base = {"copy_last": {"hit@5": 0.2}, "blend": {"hit@5": 0.22 + 0.001 * ctx}}
    return {
        "sweep": sweep,
        "ctx": ctx,
        "train_windows": n,
        "model": "gru",
        "results": {"gru": {"hit@5": model_hit}, **base},
    }


def test_scaling_curves_png_and_empty():
    pts = [pt("size", 5, n, 0.2 + 0.01 * i) for i, n in enumerate((1000, 4000, 16000))]
    pts += [pt("ctx", c, 4000, 0.21) for c in (5, 20, 100)]
    png = scaling_curves(pts)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert scaling_curves([]) is None
    assert scaling_curves(pts[:3])[:4] == b"\x89PNG"  # one sweep only
