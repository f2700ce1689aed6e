"""`lvmkit report`: one self-contained HTML page (no external resource, figures inline as base64 PNG) and a
Markdown twin, for one run or several side by side; training gates re-checked against history.jsonl."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from lvmkit.artifacts import append_jsonl, write_json
from lvmkit.cli.main import app
from lvmkit.errors import ArtifactError
from lvmkit.eval.command import run_eval
from lvmkit.report import build_report, load_run, plots, recheck_training_gates

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_run(root, bank, name, hits=(0.10, 0.20, 0.25), gates=None, model="gru"):
    """A run directory as the trainer leaves it: config.yaml, status.json, history.jsonl (step and epoch rows
    with the keys the loop writes) and a metrics.json of the test split (here: from `lvmkit eval` on a
    baseline standing in for the model, which gives the same file format)."""
    run = root / name
    run.mkdir(parents=True)
    cfg = {"task": "lvm", "bank": str(bank.path), "model": {"name": model}, "gates": gates or []}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    step = 0
    for e, h in enumerate(hits, 1):
        for _ in range(3):
            step += 5
            append_jsonl(
                run / "history.jsonl", {"kind": "step", "epoch": e, "step": step, "loss": 1.0 / (step + 1)}
            )
        append_jsonl(
            run / "history.jsonl",
            {"kind": "epoch", "epoch": e, "step": step, "train_loss": 1.0 / e, "val_hit@5": h, "val_cos": 0.3 + h,
             "val_copy_last_hit@5": 0.15, "val_copy_last_cos": 0.4},
        )  # fmt: skip
    write_json(run / "status.json", {"state": "finished", "best_metric": "val_hit@5", "best_value": max(hits),
                                      "best_epoch": 1 + int(np.argmax(hits))})  # fmt: skip
    run_eval("baseline:mean_ctx", bank, ctx=3, out=run, latency_n=5, gates={"hit@5": {"min": 0.0}})
    return run


@pytest.fixture
def bank(make_bank, tmp_path):
    return make_bank(
        tmp_path, articles=[9] * 40, dim=16, seed=0, labels=["history", "science", "art", "law"] * 10
    )


def assert_self_contained(html: str) -> None:
    assert "<script" not in html.lower() and "<link" not in html.lower() and "@import" not in html
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", html), "an external src/href"
    assert "url(" not in html


def test_single_run_report_is_self_contained(bank, tmp_path):
    run = fake_run(tmp_path, bank, "gru_run", gates=[{"epoch": 1, "metric": "val_hit@5", "min": 0.5}])
    paths = build_report([run], tmp_path / "out" / "report.html")
    html = paths.html.read_text()
    assert_self_contained(html)
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) >= 3  # curves, bars, offset sweep, labels
    assert all(base64.b64decode(b).startswith(PNG_MAGIC) for b in images)
    # the results table: every predictor, the value and the interval from metrics.json
    run_data = load_run(run)
    r = run_data.metrics["results"]["mean_ctx"]
    lo, hi = r["intervals"]["cos"]
    assert f"<td>{r['metrics']['cos']:.3f}<small>{lo:.3f}–{hi:.3f}</small></td>" in html
    for name in ("copy_last", "mean_ctx", "exp_weighted", "ridge", "oracle"):
        assert f"<td>{name}</td>" in html
    assert "gates (lvmkit eval)" in html and "training gates" in html and "resolved config" in html
    assert "P95" in html  # latency
    md = paths.markdown.read_text()
    assert "| **mean_ctx** |" in md and "### Gates (lvmkit eval)" in md
    for link in re.findall(r"\]\(([^)]+\.png)\)", md):
        assert (paths.markdown.parent / link).read_bytes().startswith(PNG_MAGIC)


def test_two_runs_side_by_side(bank, tmp_path):
    a = fake_run(tmp_path / "x", bank, "run", hits=(0.1, 0.3))
    b = fake_run(tmp_path / "y", bank, "run", hits=(0.05, 0.08, 0.07, 0.09))
    res = runner.invoke(app, ["report", str(a), str(b), "--out", str(tmp_path / "cmp.html")])
    assert res.exit_code == 0, res.output
    html = (tmp_path / "cmp.html").read_text()
    assert_self_contained(html)
    assert "grid-template-columns: repeat(2, minmax(0, 1fr))" in html
    assert (
        html.count('<div class="card"><h2>x/run</h2>') == 1
        and html.count('<div class="card"><h2>y/run</h2>') == 1
    )
    summary = html.split("<h2>summary</h2>")[1].split("</table>")[0]
    assert summary.count("<tr>") == 3  # header + one row per run
    assert (tmp_path / "cmp.md").exists() and (tmp_path / "cmp_files" / "curves.png").exists()


def test_training_gates_are_rechecked_on_history():
    history = [
        {"kind": "epoch", "epoch": 1, "val_hit@5": 0.2},
        {"kind": "epoch", "epoch": 2, "val_hit@5": 0.6},
    ]
    gates = [
        {"epoch": 1, "metric": "val_hit@5", "min": 0.5},
        {"epoch": 2, "metric": "val_hit@5", "min": 0.5},
        {"epoch": 9, "metric": "val_hit@5", "min": 0.5},
        {"epoch": 1, "metric": "val_mrr", "max": 1.0},
    ]
    rows = recheck_training_gates({"gates": gates}, history)
    assert [r["held"] for r in rows] == [False, True, None, False]
    assert rows[2]["note"] == "epoch not reached" and rows[3]["note"] == "metric not recorded"


def test_plots_skip_what_is_missing():
    assert plots.training_curves([("a", [])]) is None
    assert plots.offset_sweep({"results": {}}) is None and plots.label_bars({"results": {}}) is None
    curves = plots.training_curves(
        [("a", [{"kind": "epoch", "epoch": 1, "step": 3, "train_loss": 0.5, "val_hit@5": 0.1}])]
    )
    assert curves.startswith(PNG_MAGIC)


def test_not_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="none of history.jsonl"):
        build_report([tmp_path / "empty"], tmp_path / "r.html")
    res = runner.invoke(app, ["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 2 and "not a directory" in res.output


def test_two_tower_results_show_recall_columns():
    from lvmkit.report.html import results_table, table_columns

    m = {
        "recall@500": 0.4,
        "recall@10": 0.1,
        "recall@100": 0.3,
        "hit@10": 0.1,
        "mrr@10": 0.05,
        "sep_margin": 0.2,
    }
    results = {
        "bigru_pool": {"metrics": m, "intervals": {"recall@500": [0.35, 0.45]}, "info": {"n_queries": 9}}
    }
    assert table_columns(results) == ["recall@10", "recall@100", "recall@500", "mrr@10", "sep_margin"]
    assert "<td>40.0<small>35.0–45.0</small></td>" in results_table({"results": results}, "bigru_pool")
    lvm = {"m": {"metrics": {"hit@5": 0.2, "hit@50": 0.5, "ca_inbatch": 0.9, "cos": 0.3}}}
    assert table_columns(lvm) == ["hit@5", "hit@50", "cos", "ca_inbatch"]
    assert table_columns(lvm, compact=True) == ["hit@5", "cos"]


def test_runs_without_metrics_show_their_row_of_a_comparison_and_the_comparison_spans_the_page(
    bank, tmp_path
):
    """The quickstart's layout: runs trained with final_eval off, plus a comparison directory (compare_runs)
    whose metrics.json lists them under "runs". Each run card shows its own row of that table; the comparison
    card spans the whole grid (no sideways scrolling in a third of the page)."""
    a, b = fake_run(tmp_path, bank, "amn"), fake_run(tmp_path, bank, "gru")
    for run in (a, b):
        (run / "metrics.json").unlink()
        (run / "metrics.md").unlink()
    comparison = tmp_path / "comparison"
    run_eval("baseline:mean_ctx", bank, ctx=3, out=comparison, latency_n=0)
    metrics = load_run(comparison).metrics
    metrics["runs"] = {"mean_ctx": str(a), "exp_weighted": str(b)}  # stand-ins for the models' rows
    write_json(comparison / "metrics.json", metrics)
    paths = build_report([a, b, comparison], tmp_path / "report.html")
    html = paths.html.read_text()
    assert "no metrics.json: the run is still training" not in html
    for run, row in ((a, "mean_ctx"), (b, "exp_weighted")):
        card = html.split(f"<h2>{run.name}</h2>")[1].split('<div class="card')[0]
        assert f"its row <b>{row}</b> of the comparison <code>{comparison / 'metrics.json'}</code>" in card
        assert f'<tr class="primary"><td>{row}</td>' in card  # its own row is the highlighted one
        hit5 = metrics["results"][row]["metrics"]["hit@5"]
        summary = html.split("<h2>summary</h2>")[1].split("</table>")[0]
        assert (
            f"<tr><td>{run.name}</td><td>{row}</td>" in summary and f"<td>{100 * hit5:.1f}<small>" in summary
        )
    assert html.count('<div class="card wide">') == 1
    wide = html.split('<div class="card wide">')[1]
    assert wide.startswith("<h2>comparison</h2>") and "<th>hit@50</th>" in wide  # the full table, not compact
    assert ".runs > .card.wide { grid-column: 1 / -1; }" in html
    md = paths.markdown.read_text()
    assert "its row **mean_ctx** of the comparison" in md and "its row **exp_weighted**" in md
