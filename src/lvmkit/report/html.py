"""The HTML report: one self-contained page (inline CSS, figures as ``data:image/png;base64`` URIs).

Nothing on the page is fetched from anywhere (no scripts, fonts, stylesheets or image links), so the file
can be mailed, archived as a CI artifact, or opened offline years later and look the same. Layout:

    summary      one row per run: model, state, test hit@5 with its interval, best baseline, verdict, gates
    curves       training curves of all runs on shared axes
    runs         one column per run, side by side: results table against the baselines (intervals under
                 each value), comparison, figures, latency, gate outcomes, the resolved config. A run without
                 metrics of its own shows its row of a comparison in the report (``share_comparisons``); a
                 results-only directory (``lvmkit eval`` output, the quickstart's comparison) spans the full
                 width with the full table, so its many rows never scroll sideways in a narrow column
"""

from __future__ import annotations

import base64
import math
from html import escape
from typing import Any

from lvmkit.eval.metrics import TABLE_COLUMNS

COMPACT_COLUMNS = ("hit@1", "hit@5", "hit@10", "contain@50", "eff@5", "mrr@10", "cos", "ca_other")
PERCENT = ("hit@", "recall@", "contain@", "eff@", "ca_")
TWO_TOWER_TAIL = ("mrr@10", "cos", "sep_margin", "ca_other")


def table_columns(results: dict[str, Any], compact: bool = False) -> list[str]:
    """The metric columns of a results table, in reading order, keeping only those some row has.

    LVM results use ``TABLE_COLUMNS`` (``COMPACT_COLUMNS`` side by side); two-tower results, which carry
    ``recall@k`` at the retriever's own depths (10, 100, 500, 1000), show those, then MRR, cosine and the
    separation margin."""
    keys = {k for r in results.values() for k in (r.get("metrics") or {})}
    recall = sorted(
        (k for k in keys if k.startswith("recall@") and k[7:].isdigit()), key=lambda k: int(k[7:])
    )
    wanted = [*recall, *TWO_TOWER_TAIL] if recall else (COMPACT_COLUMNS if compact else TABLE_COLUMNS)
    return [c for c in wanted if c in keys]


CSS = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px; color: #1d2125;
       background: #fafafa; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 18px 0 6px; }
h3 { font-size: 14px; margin: 14px 0 4px; color: #333; }
.meta { color: #666; font-size: 12px; margin-bottom: 14px; } .meta code { overflow-wrap: anywhere; }
.card { background: #fff; border: 1px solid #e1e4e8; border-radius: 6px; padding: 12px 14px; margin: 12px 0; }
.runs { display: grid; gap: 14px; align-items: start; }
.runs > .card { margin: 0; min-width: 0; }
.runs > .card.wide { grid-column: 1 / -1; }
table { border-collapse: collapse; font-size: 12px; margin: 6px 0; }
th, td { border-bottom: 1px solid #e8e8e8; padding: 3px 6px; text-align: right; vertical-align: top; }
th { background: #f3f4f6; font-weight: 600; }
td:first-child, th:first-child { text-align: left; white-space: nowrap; }
td small { color: #888; display: block; font-size: 10px; white-space: nowrap; }
tr.primary td { font-weight: 700; background: #eef6ff; } tr.oracle td { color: #888; }
.scroll { overflow-x: auto; }
img { max-width: 100%; height: auto; display: block; margin: 6px 0; }
.pass { color: #1a7f37; font-weight: 600; } .fail { color: #cf222e; font-weight: 700; }
.warn { color: #9a6700; font-weight: 600; } .muted { color: #888; }
pre { background: #f6f8fa; padding: 8px; font-size: 11px; overflow-x: auto; max-height: 420px; }
details summary { cursor: pointer; color: #0969da; }
footer { color: #888; font-size: 11px; margin-top: 24px; }
"""


def img(png: bytes | None, alt: str) -> str:
    """An <img> whose source is the PNG itself, base64-encoded (no file, no URL)."""
    if not png:
        return ""
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def fmt_value(key: str, v: Any) -> str:
    if not isinstance(v, int | float) or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100 * v:.1f}" if key.startswith(PERCENT) else f"{v:.3f}"


def cell(key: str, result: dict[str, Any]) -> str:
    """A metric cell: the value, and its 95% interval underneath in small grey type."""
    v = result.get("metrics", {}).get(key)
    text = escape(fmt_value(key, v))
    ci = result.get("intervals", {}).get(key)
    if ci and all(isinstance(x, int | float) and not math.isnan(x) for x in ci):
        text += f"<small>{escape(fmt_value(key, ci[0]))}–{escape(fmt_value(key, ci[1]))}</small>"
    return f"<td>{text}</td>"


def results_table(metrics: dict[str, Any], primary: str | None, compact: bool = False) -> str:
    """The model beside every baseline and the oracle: rates in %, intervals under each value. ``compact``
    (runs side by side) leaves out hit@50 and ca_inbatch, which stay in report.md and metrics.md."""
    results = metrics.get("results") or {}
    if not results:
        return '<p class="muted">no results</p>'
    cols = table_columns(results, compact)
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    rows = []
    for name, r in results.items():
        cls = "primary" if name == primary else ("oracle" if name == "oracle" else "")
        margin = r.get("metrics", {}).get("offset_margin")
        collapse = (r.get("info") or {}).get("collapse")
        m = fmt_value("offset_margin", margin) + (' <span class="fail">collapse</span>' if collapse else "")
        n = (r.get("info") or {}).get("n_queries", "")
        rows.append(
            f'<tr class="{cls}"><td>{escape(name)}</td>'
            + "".join(cell(c, r) for c in cols)
            + f"<td>{m}</td><td>{escape(str(n))}</td></tr>"
        )
    first = next(iter(results.values())).get("info") or {}
    excl = "excluded" if first.get("exclude_context", True) else "left in"
    nprobe = f", nprobe {first['nprobe']}" if first.get("nprobe") is not None else ""
    from lvmkit.eval.protocol import OPEN, describe_candidates

    where = describe_candidates(
        first.get("protocol", OPEN), first.get("bank_size", "?"), first.get("mean_candidates")
    )
    note = (
        f"{escape(where[0].upper() + where[1:])} ({escape(str(first.get('index')))} index{nprobe}); "
        f"context rows {excl}; CA in batches of {first.get('ca_batch', '?')}; rates in %, 95% bootstrap intervals."
    )
    return (
        f'<div class="scroll"><table><tr><th>model</th>{head}<th>offset margin</th><th>n</th></tr>'
        + "".join(rows)
        + f'</table></div><p class="muted">{note}</p>'
    )


def own_comparisons(metrics: dict[str, Any], primary: str | None) -> list[dict[str, Any]]:
    """The comparisons of ``primary`` (all of them when it has none: an eval output's several models)."""
    comps = metrics.get("comparisons") or []
    mine = [c for c in comps if c.get("model") == primary]
    return mine or comps


def comparisons(metrics: dict[str, Any], primary: str | None = None) -> str:
    items = []
    for c in own_comparisons(metrics, primary):
        cls = {"better": "pass", "worse": "fail"}.get(c["verdict"], "warn")
        items.append(
            f"<li>{escape(c['model'])} vs best baseline <b>{escape(c['baseline'])}</b> on {escape(c['metric'])}: "
            f"{100 * c['diff']:+.1f} points (95% CI {100 * c['lo']:+.1f} to {100 * c['hi']:+.1f}): "
            f'<span class="{cls}">{escape(c["verdict"])}</span></li>'
        )
    for name, why in (metrics.get("skipped") or {}).items():
        items.append(f'<li class="muted">{escape(name)} skipped: {escape(why)}</li>')
    return f"<ul>{''.join(items)}</ul>" if items else ""


def gates_table(rows: list[dict[str, Any]], epoch_col: bool) -> str:
    """A gate table: metric, (epoch,) value, bound, held (yes / no / not reached)."""
    head = (
        "<tr><th>metric</th>"
        + ("<th>epoch</th>" if epoch_col else "")
        + "<th>value</th><th>bound</th><th>held</th></tr>"
    )
    body = []
    for r in rows:
        held = r.get("held")
        verdict = (
            '<span class="pass">yes</span>'
            if held
            else (
                '<span class="fail">no</span>'
                if held is False
                else f'<span class="muted">{escape(r.get("note", "-"))}</span>'
            )
        )
        value = r.get("value")
        bound = r.get("bound") or " and ".join(
            f"{op} {r[k]:g}" for k, op in (("min", ">="), ("max", "<=")) if r.get(k) is not None
        )
        body.append(
            f"<tr><td>{escape(str(r.get('metric')))}</td>"
            + (f"<td>{escape(str(r.get('epoch', '')))}</td>" if epoch_col else "")
            + f"<td>{'missing' if value is None else f'{value:.4g}'}</td><td>{escape(bound)}</td><td>{verdict}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def gate_summary(run) -> str:
    """'all 3 held' / '1 of 3 failed' over the eval gates and the training gates, or '–'."""
    rows = list((run.eval_gates or {}).get("rows") or []) + [
        g for g in run.training_gates if g.get("held") is not None
    ]
    if not rows:
        return '<span class="muted">–</span>'
    failed = sum(1 for r in rows if not r.get("held"))
    return (
        f'<span class="fail">{failed} of {len(rows)} failed</span>'
        if failed
        else f'<span class="pass">all {len(rows)} held</span>'
    )


def summary_table(runs) -> str:
    rows = []
    for r in runs:
        st = r.status or {}
        m = r.metrics or {}
        res = (m.get("results") or {}).get(r.primary or "", {})
        comp = next(iter(own_comparisons(m, r.primary)), None)
        best = (m.get("results") or {}).get(comp["baseline"], {}) if comp else {}
        verdict = comp["verdict"] if comp else "–"
        cls = {"better": "pass", "worse": "fail"}.get(verdict, "warn" if comp else "muted")
        best_epoch = st.get("best_epoch")
        rows.append(
            f"<tr><td>{escape(r.name)}</td><td>{escape(str(r.primary or '–'))}</td>"
            f"<td>{escape(str(st.get('state', '–')))}</td><td>{escape(str(best_epoch if best_epoch is not None else '–'))}</td>"
            + (cell("hit@5", res) if res else "<td>–</td>")
            + (cell("cos", res) if res else "<td>–</td>")
            + (
                f"<td>{escape(comp['baseline'])}</td>" + cell("hit@5", best)
                if comp
                else "<td>–</td><td>–</td>"
            )
            + f'<td><span class="{cls}">{escape(verdict)}</span></td><td>{gate_summary(r)}</td></tr>'
        )
    return (
        "<table><tr><th>run</th><th>model</th><th>state</th><th>best epoch</th><th>test hit@5</th><th>cos</th>"
        "<th>best baseline</th><th>its hit@5</th><th>verdict</th><th>gates</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def run_column(i: int, r, figures: dict[str, bytes], compact: bool = False, wide: bool = False) -> str:
    """One run's card; ``wide``: it spans every column of the grid (a results-only directory)."""
    st = r.status or {}
    parts = [f"<h2>{escape(r.name)}</h2>"]
    line = [f"<code>{escape(str(r.path))}</code>"]
    if st:
        line.append(f"state <b>{escape(str(st.get('state')))}</b>")
        if st.get("best_value") is not None:
            line.append(
                f"best {escape(str(st.get('best_metric')))} {st['best_value']:.4f} at epoch {st.get('best_epoch')}"
            )
    parts.append(f'<p class="meta">{" · ".join(line)}</p>')
    m = r.metrics
    if m:
        desc = m.get("model") or ""
        parts.append(f"<h3>{escape(str(m.get('split', 'test')))} split: model vs baselines</h3>")
        source = r.metrics_source
        shown = source.relative_to(r.path) if source and source.is_relative_to(r.path) else source
        if r.shared_as:
            parts.append(
                f'<p class="meta">this run has no metrics.json of its own; its row <b>{escape(r.shared_as)}</b> of '
                f"the comparison <code>{escape(str(shown))}</code>, evaluated with the other runs and the "
                f"baselines on the same {escape(str(m.get('n_queries', '?')))} queries</p>"
            )
        elif desc:
            parts.append(f'<p class="meta">{escape(str(desc))}; {escape(str(m.get("n_queries", "?")))} queries; from '
                         f"<code>{escape(str(shown))}</code></p>")  # fmt: skip
        parts.append(results_table(m, r.primary, compact))
        parts.append(comparisons(m, r.primary))
        parts.append(img(figures.get(f"{i}-bars"), f"{r.name}: hit@5 and contain@50 with intervals"))
        parts.append(img(figures.get(f"{i}-offsets"), f"{r.name}: offset sweep"))
        parts.append(img(figures.get(f"{i}-labels"), f"{r.name}: hit@5 by label"))
        lat = m.get("latency")
        if lat:
            parts.append(
                f"<h3>latency</h3><p>forward + top-{lat['k']} search, batch {lat['batch_size']}, {lat['torch_threads']} "
                f"torch threads, {escape(str(lat['index']))} index: P50 {lat['p50_ms']:.2f} ms, P95 {lat['p95_ms']:.2f} "
                f"ms, P99 {lat['p99_ms']:.2f} ms; {lat['qps']:,.0f} queries/s in batches of {lat['throughput_batch']}</p>"
            )
    else:
        parts.append(
            '<p class="muted">no metrics.json: the run is still training or ran with final_eval off; <code>lvmkit eval RUN</code> writes one</p>'
        )
    if r.eval_gates:
        ok = r.eval_gates.get("ok")
        parts.append(
            f'<h3>gates (lvmkit eval): <span class="{"pass" if ok else "fail"}">{"all held" if ok else "failed"}</span></h3>'
        )
        parts.append(gates_table(r.eval_gates.get("rows") or [], epoch_col=False))
    if r.training_gates:
        parts.append("<h3>training gates (re-checked on history.jsonl)</h3>")
        parts.append(gates_table(r.training_gates, epoch_col=True))
    if r.config_text:
        parts.append(
            f"<details><summary>resolved config</summary><pre>{escape(r.config_text)}</pre></details>"
        )
    return f'<div class="card{" wide" if wide else ""}">{"".join(parts)}</div>'


def render_html(runs, figures: dict[str, bytes], title: str, generated: str) -> str:
    """The whole page for ``runs`` (``RunData`` list) and ``figures`` (PNG bytes by key)."""
    n = len(runs)
    curves = figures.get("curves")
    side_by_side = sum(1 for r in runs if not (n > 1 and r.results_only)) or 1  # wide cards take a row each
    columns = (
        f"repeat({side_by_side}, minmax(0, 1fr))"
        if side_by_side <= 3
        else "repeat(auto-fill, minmax(520px, 1fr))"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape(title)}</title>'
        f"<style>{CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        f'<p class="meta">generated {escape(generated)} by lvmkit · {n} run{"s" if n != 1 else ""} · every number is '
        "measured on held-out articles by full-bank search, beside the baselines on the same queries</p>"
        f'<div class="card"><h2>summary</h2><div class="scroll">{summary_table(runs)}</div></div>'
        + (
            f'<div class="card"><h2>training curves</h2>{img(curves, "training curves")}</div>'
            if curves
            else ""
        )
        + f'<div class="runs" style="grid-template-columns: {columns}">'
        + "".join(
            run_column(i, r, figures, compact=n > 1 and not r.results_only, wide=n > 1 and r.results_only)
            for i, r in enumerate(runs)
        )
        + "</div>"
        "<footer>Metrics: hit@k = share of queries whose true next chunk is in the top k of the whole bank; "
        "contain@50 = the same at 50 (the reranking ceiling); eff@5 = hit@5 / contain@50; mrr@10 = mean 1/rank "
        "(0 beyond 10); cos = mean cosine(prediction, truth); CA = share of distractors farther from the prediction "
        "than the truth; offset margin = c_0 - max_{k≠0} c_k of the offset sweep.</footer>"
        "</body></html>\n"
    )
