"""The report's figures, drawn with matplotlib's Agg backend (no display needed) and returned as PNG bytes.

Each function takes plain data (history rows, metrics.json dicts), draws one figure, and returns ``None``
when there is nothing to draw, so the report simply leaves that figure out:

    training_curves(runs)   loss per step and per epoch; val metrics per epoch with copy_last dashed
    metric_bars(metrics)    hit@5 and contain@50 of the model and every baseline, 95% intervals as error bars
    offset_sweep(metrics)   c_k = mean cos(prediction, chunk[target + k]), k = -3..3, model vs baselines
    label_bars(metrics)     hit@5 per label (e.g. the embedded corpus's topic), model vs best baseline
    scaling_curves(points)  hit@5 vs training windows and vs ctx, baselines as lines (bench_scaling.py)

``runs`` is a list of ``(name, history_rows)``; several runs are drawn on the same axes, one colour each.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: render to memory, never to a window

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]
BASELINE_STYLE = {
    "copy_last": "--",
    "mean_ctx": ":",
    "exp_weighted": "-.",
    "ridge": (0, (5, 1, 1, 1)),
    "blend": (0, (1, 1)),
}
DPI = 110


def to_png(fig) -> bytes:
    """Render ``fig`` to PNG bytes and close it (figures otherwise accumulate in pyplot's registry)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def _epochs(rows: Sequence[dict]) -> list[dict]:
    return [r for r in rows if r.get("kind") == "epoch"]


def _steps(rows: Sequence[dict]) -> list[dict]:
    return [r for r in rows if r.get("kind") == "step" and isinstance(r.get("loss"), int | float)]


def training_curves(
    runs: Sequence[tuple[str, Sequence[dict]]], metrics: Sequence[str] = ("val_hit@5", "val_cos")
) -> bytes | None:
    """Loss (left) and each val metric (one panel each) against training progress; copy_last as a dashed
    line of the same colour. Runs without epoch rows are skipped; None when no run has any."""
    runs = [(name, rows) for name, rows in runs if _epochs(rows)]
    if not runs:
        return None
    shown = [m for m in metrics if any(m in r for _, rows in runs for r in _epochs(rows))]
    fig, axes = plt.subplots(
        1, 1 + len(shown), figsize=(4.2 * (1 + len(shown)), 3.3), squeeze=False, layout="constrained"
    )
    ax = axes[0, 0]
    for i, (name, rows) in enumerate(runs):
        c = COLORS[i % len(COLORS)]
        steps = _steps(rows)
        if steps:
            ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], color=c, alpha=0.35, lw=1)
        ep = [r for r in _epochs(rows) if isinstance(r.get("train_loss"), int | float)]
        ax.plot([r["step"] for r in ep], [r["train_loss"] for r in ep], "o-", color=c, ms=4, label=name)
    ax.set(title="training loss", xlabel="optimiser step", ylabel="loss (steps thin, epoch means dots)")
    ax.legend(fontsize=8)
    for j, metric in enumerate(shown, start=1):
        ax = axes[0, j]
        base = metric.replace("val_", "val_copy_last_", 1)
        for i, (name, rows) in enumerate(runs):
            c = COLORS[i % len(COLORS)]
            ep = [r for r in _epochs(rows) if isinstance(r.get(metric), int | float)]
            ax.plot([r["epoch"] for r in ep], [r[metric] for r in ep], "o-", color=c, ms=4, label=name)
            bl = [r for r in ep if isinstance(r.get(base), int | float)]
            if bl:
                ax.plot(
                    [r["epoch"] for r in bl],
                    [r[base] for r in bl],
                    "--",
                    color=c,
                    lw=1.2,
                    label=f"copy_last ({name})" if len(runs) > 1 else "copy_last",
                )
        ax.set(title=metric, xlabel="epoch")
        ax.legend(fontsize=8)
    return to_png(fig)


def _results(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(metrics.get("results") or {})


def metric_bars(metrics: dict[str, Any], keys: Sequence[str] = ("hit@5", "contain@50")) -> bytes | None:
    """Grouped bars of ``keys`` for every predictor except the oracle, with 95% bootstrap intervals."""
    res = {n: r for n, r in _results(metrics).items() if n != "oracle"}
    keys = [k for k in keys if any(k in r.get("metrics", {}) for r in res.values())]
    if not res or not keys:
        return None
    names = list(res)
    fig, ax = plt.subplots(figsize=(1.0 + 1.1 * len(names) * len(keys) / 2 + 2, 3.2), layout="constrained")
    width = 0.8 / len(keys)
    for j, k in enumerate(keys):
        xs = [i + (j - (len(keys) - 1) / 2) * width for i in range(len(names))]
        vals = [100 * res[n]["metrics"].get(k, float("nan")) for n in names]
        lo = [
            100 * (res[n].get("intervals", {}).get(k) or [v / 100, v / 100])[0]
            for n, v in zip(names, vals, strict=True)
        ]
        hi = [
            100 * (res[n].get("intervals", {}).get(k) or [v / 100, v / 100])[1]
            for n, v in zip(names, vals, strict=True)
        ]
        err = [
            [max(0.0, v - a) for v, a in zip(vals, lo, strict=True)],
            [max(0.0, b - v) for v, b in zip(vals, hi, strict=True)],
        ]
        ax.bar(xs, vals, width, yerr=err, capsize=3, label=k, color=COLORS[j % len(COLORS)])
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set(ylabel="%", title="full-bank retrieval (95% intervals)")
    ax.legend(fontsize=8)
    return to_png(fig)


def offset_sweep(metrics: dict[str, Any]) -> bytes | None:
    """c_k against k for every predictor except the oracle (its c_0 = 1 would flatten the rest).

    k = 0 is the true next chunk, k = -1 the last context chunk; a curve peaking at -1 is copy-last collapse.
    """
    res = {n: r for n, r in _results(metrics).items() if n != "oracle" and (r.get("offsets") or {}).get("c")}
    if not res:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.3), layout="constrained")
    primary = metrics.get("primary")
    for i, (name, r) in enumerate(res.items()):
        c = r["offsets"]["c"]
        ks = sorted(int(k) for k in c)
        ys = [c[str(k)] for k in ks]
        style = BASELINE_STYLE.get(name, "-")
        lw = 2.4 if name == primary or name not in BASELINE_STYLE else 1.3
        ax.plot(ks, ys, marker="o", ms=3, ls=style, lw=lw, color=COLORS[i % len(COLORS)], label=name)
    ax.axvline(0, color="0.6", lw=0.8)
    ax.axvline(-1, color="0.85", lw=0.8)
    ax.set(
        title="offset sweep: cos(prediction, chunk[target + k])",
        xlabel="k  (0 = true next chunk, -1 = last context chunk)",
        ylabel="mean cosine",
    )
    ax.legend(fontsize=7)
    return to_png(fig)


def label_bars(metrics: dict[str, Any], key: str = "hit@5", max_labels: int = 15) -> bytes | None:
    """``key`` per label for the primary model (or the first result) and the best baseline."""
    res = _results(metrics)
    primary = metrics.get("primary") or next(
        (n for n in res if n not in BASELINE_STYLE and n != "oracle"), None
    )
    comps = metrics.get("comparisons") or []
    best = comps[0]["baseline"] if comps else "copy_last"
    shown = [n for n in dict.fromkeys([primary, best]) if n in res and res[n].get("by_label")]
    if not shown:
        return None
    labels = [row["label"] for row in res[shown[0]]["by_label"]][:max_labels]
    if len(labels) < 2 and labels == ["(none)"]:
        return None
    fig, ax = plt.subplots(
        figsize=(max(5.0, 0.55 * len(labels) * len(shown) + 1.5), 3.4), layout="constrained"
    )
    width = 0.8 / len(shown)
    for j, name in enumerate(shown):
        by = {row["label"]: row for row in res[name]["by_label"]}
        xs = [i + (j - (len(shown) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(
            xs,
            [100 * by.get(lbl, {}).get(key, float("nan")) for lbl in labels],
            width,
            label=name,
            color=COLORS[j],
        )
    ns = {row["label"]: row["n"] for row in res[shown[0]]["by_label"]}
    ax.set_xticks(
        range(len(labels)), [f"{lbl}\n(n={ns[lbl]})" for lbl in labels], rotation=30, ha="right", fontsize=7
    )
    ax.set(ylabel=f"{key} (%)", title=f"{key} by label")
    ax.legend(fontsize=8)
    return to_png(fig)


def scaling_curves(points: Sequence[dict[str, Any]], metric: str = "hit@5") -> bytes | None:
    """Two panels from ``benchmarks/bench_scaling.py``'s points ({"sweep": "size"|"ctx", "ctx", "train_windows",
    "model", "results": {name: {metric: value}}}): ``metric`` of the model against training windows (log x; the
    baselines, which do not train, as horizontal lines) and against ctx (baselines per ctx, dashed)."""
    sweeps = {s: [p for p in points if p.get("sweep") == s] for s in ("size", "ctx")}
    if not any(sweeps.values()):
        return None
    sweeps = {s: pts for s, pts in sweeps.items() if pts}  # one panel per sweep that has points
    fig, axes = plt.subplots(
        1, len(sweeps), figsize=(4.8 * len(sweeps), 3.6), layout="constrained", squeeze=False
    )
    xkeys = {"size": "train_windows", "ctx": "ctx"}
    for ax, (sweep, pts) in zip(axes[0], sweeps.items(), strict=True):
        xkey = xkeys[sweep]
        pts = sorted(pts, key=lambda p: p[xkey])
        xs = [p[xkey] for p in pts]
        model = pts[0]["model"]
        ax.plot(
            xs, [100 * p["results"][model][metric] for p in pts], "o-", lw=2.2, color=COLORS[0], label=model
        )
        for i, (b, style) in enumerate(BASELINE_STYLE.items(), start=1):
            if not all(b in p["results"] for p in pts):
                continue
            ys = [100 * p["results"][b][metric] for p in pts]
            if sweep == "size":  # the same test windows at every size: one value per baseline
                ax.axhline(ys[0], ls=style, lw=1.2, color=COLORS[i % len(COLORS)], label=b)
            else:
                ax.plot(xs, ys, ls=style, lw=1.2, marker=".", color=COLORS[i % len(COLORS)], label=b)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap on short spans
        ctx_note = f" (ctx {pts[0]['ctx']})" if sweep == "size" else ""
        ax.set(
            xlabel="training windows" if sweep == "size" else "context length (chunks)",
            ylabel=f"{metric} (%)",
            title=f"{metric} vs {'training windows' + ctx_note if sweep == 'size' else 'ctx'}",
        )
        ax.legend(fontsize=7)
    return to_png(fig)
