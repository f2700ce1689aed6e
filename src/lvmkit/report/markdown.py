"""The Markdown twin of the HTML report: the same tables as text, figures linked as PNG files beside it.

It reads well in a terminal, a pull request or a notebook, and diffs cleanly between two report runs.
"""

from __future__ import annotations

import math
from typing import Any

from lvmkit.report.html import PERCENT, own_comparisons, table_columns


def _v(key: str, v: Any) -> str:
    if not isinstance(v, int | float) or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100 * v:.1f}" if key.startswith(PERCENT) else f"{v:.3f}"


def _cell(key: str, r: dict[str, Any]) -> str:
    text = _v(key, r.get("metrics", {}).get(key))
    ci = r.get("intervals", {}).get(key)
    if ci and all(isinstance(x, int | float) and not math.isnan(x) for x in ci):
        text += f" ({_v(key, ci[0])}–{_v(key, ci[1])})"
    return text


def results_table(metrics: dict[str, Any], primary: str | None) -> list[str]:
    results = metrics.get("results") or {}
    cols = table_columns(results)
    lines = ["| model | " + " | ".join(cols) + " | offset margin | n |", "|---|" + "---:|" * (len(cols) + 2)]
    for name, r in results.items():
        label = f"**{name}**" if name == primary else name
        flag = " (collapse)" if (r.get("info") or {}).get("collapse") else ""
        lines.append(
            f"| {label} | "
            + " | ".join(_cell(c, r) for c in cols)
            + f" | {_v('offset_margin', r.get('metrics', {}).get('offset_margin'))}{flag} | "
            f"{(r.get('info') or {}).get('n_queries', '')} |"
        )
    if results:
        from lvmkit.eval.protocol import OPEN, describe_candidates

        first = next(iter(results.values())).get("info") or {}
        where = describe_candidates(
            first.get("protocol", OPEN), first.get("bank_size", "?"), first.get("mean_candidates")
        )
        lines += ["", where[0].upper() + where[1:] + "."]
    return lines


def gates_lines(rows: list[dict[str, Any]], epoch_col: bool) -> list[str]:
    lines = [
        "| metric | " + ("epoch | " if epoch_col else "") + "value | bound | held |",
        "|---|" + ("---:|" if epoch_col else "") + "---:|---|:---:|",
    ]
    for r in rows:
        held = r.get("held")
        verdict = "yes" if held else ("**no**" if held is False else r.get("note", "-"))
        bound = r.get("bound") or " and ".join(
            f"{op} {r[k]:g}" for k, op in (("min", ">="), ("max", "<=")) if r.get(k) is not None
        )
        value = "missing" if r.get("value") is None else f"{r['value']:.4g}"
        lines.append(
            f"| {r.get('metric')} | "
            + (f"{r.get('epoch', '')} | " if epoch_col else "")
            + f"{value} | {bound} | {verdict} |"
        )
    return lines


def render_markdown(runs, figure_files: dict[str, str], title: str, generated: str) -> str:
    """report.md for ``runs`` (``RunData`` list); ``figure_files`` maps figure keys to relative PNG paths."""
    out = [f"# {title}", "", f"Generated {generated} by lvmkit; {len(runs)} run(s).", "", "## Summary", ""]
    out += [
        "| run | model | state | test hit@5 | best baseline | its hit@5 | verdict |",
        "|---|---|---|---:|---|---:|---|",
    ]
    for r in runs:
        m = r.metrics or {}
        res = (m.get("results") or {}).get(r.primary or "", {})
        comp = next(iter(own_comparisons(m, r.primary)), None)
        best = (m.get("results") or {}).get(comp["baseline"], {}) if comp else {}
        out.append(
            f"| {r.name} | {r.primary or '–'} | {(r.status or {}).get('state', '–')} | "
            f"{_cell('hit@5', res) if res else '–'} | {comp['baseline'] if comp else '–'} | "
            f"{_cell('hit@5', best) if best else '–'} | {comp['verdict'] if comp else '–'} |"
        )
    if "curves" in figure_files:
        out += ["", f"![training curves]({figure_files['curves']})"]
    for i, r in enumerate(runs):
        out += ["", f"## {r.name}", "", f"`{r.path}`"]
        st = r.status or {}
        if st:
            best = (
                f"; best {st.get('best_metric')} {st['best_value']:.4f} at epoch {st.get('best_epoch')}"
                if st.get("best_value") is not None
                else ""
            )
            out += ["", f"State **{st.get('state')}**{best}."]
        m = r.metrics
        if m:
            out += ["", f"### {m.get('split', 'test')} split: model vs baselines", ""]
            source = r.metrics_source
            shown = source.relative_to(r.path) if source and source.is_relative_to(r.path) else source
            if r.shared_as:
                out += [
                    f"This run has no metrics.json of its own: its row **{r.shared_as}** of the comparison `{shown}`, "
                    f"evaluated with the other runs and the baselines on the same {m.get('n_queries', '?')} queries.",
                    "",
                ]
            elif m.get("model"):
                out += [f"{m['model']}; {m.get('n_queries', '?')} queries; from `{shown}`.", ""]
            out += results_table(m, r.primary)
            out += [""] + [
                f"- {c['model']} vs best baseline {c['baseline']} on {c['metric']}: {100 * c['diff']:+.1f} points "
                f"(95% CI {100 * c['lo']:+.1f} to {100 * c['hi']:+.1f}): {c['verdict']}"
                for c in own_comparisons(m, r.primary)
            ]
            for kind, alt in (
                ("bars", "retrieval with intervals"),
                ("offsets", "offset sweep"),
                ("labels", "hit@5 by label"),
            ):
                if f"{i}-{kind}" in figure_files:
                    out += ["", f"![{r.name}: {alt}]({figure_files[f'{i}-{kind}']})"]
            lat = m.get("latency")
            if lat:
                out += [
                    "",
                    f"Latency (batch {lat['batch_size']}, forward + top-{lat['k']} search): P50 {lat['p50_ms']:.2f} ms, "
                    f"P95 {lat['p95_ms']:.2f} ms, P99 {lat['p99_ms']:.2f} ms; {lat['qps']:,.0f} queries/s batched.",
                ]
        if r.eval_gates:
            out += ["", "### Gates (lvmkit eval)", ""] + gates_lines(r.eval_gates.get("rows") or [], False)
        if r.training_gates:
            out += ["", "### Training gates (re-checked on history.jsonl)", ""] + gates_lines(
                r.training_gates, True
            )
        if r.config_text:
            out += [
                "",
                "<details><summary>resolved config</summary>",
                "",
                "```yaml",
                r.config_text.rstrip(),
                "```",
                "",
                "</details>",
            ]
    return "\n".join(out) + "\n"
