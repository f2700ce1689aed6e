"""``diagnose lanes``: shares and skew, per-lane Hit@5 against a brute-force search, weak-lane flags, the CLI."""

from __future__ import annotations

import numpy as np
import pytest
from test_lanes import topic_bank
from typer.testing import CliRunner

from lvmkit.data.splits import make_split
from lvmkit.data.windows import make_windows
from lvmkit.diagnose.findings import Diagnosis
from lvmkit.diagnose.lanes import diagnose_lanes, per_lane_hits
from lvmkit.lanes import assign_lanes, chunk_article_lanes, chunk_lanes, fit_lane_classifier


@pytest.fixture
def laned(make_bank, tmp_path):
    bank = topic_bank(make_bank, tmp_path, n_articles=90, chunks=6, noise=0.9)
    clf = fit_lane_classifier(bank, Cs=(1.0,))
    clf.save(tmp_path / "clf")
    assign_lanes(bank, clf)
    return bank


def brute_force_hit5(bank, ctx: int) -> tuple[np.ndarray, np.ndarray]:
    """copy_last Hit@5 per test window (full-bank exact search, context rows excluded), and the truth rows."""
    split = make_split(bank, seed=0)
    ws = make_windows(bank, split, "test", ctx)
    v = bank.get(np.arange(len(bank)))
    hits = []
    for t in ws.targets:
        q = v[t - 1]
        scores = v @ q
        scores[t - ctx : t] = -np.inf  # the window's context
        hits.append(int((scores > scores[t]).sum() < 5))
    return np.array(hits), ws.targets


def test_per_lane_hit5_matches_brute_force(laned):
    d = diagnose_lanes(laned, "baseline:copy_last", ctx=2, max_queries=None)
    hits, targets = brute_force_hit5(laned, ctx=2)
    assert d.stats["n_queries"] == len(hits)
    assert d.get("hit@5").value == pytest.approx(hits.mean())
    ids = d.stats["shares"].keys()
    lanes = chunk_article_lanes(laned)[targets]
    for i, lid in enumerate(ids):
        sel = lanes == i
        if sel.any():
            assert d.get(f"hit@5[{lid}]").value == pytest.approx(hits[sel].mean())
    shares = np.bincount(chunk_lanes(laned), minlength=16) / len(laned)
    assert d.get("lane_share[people]").value == pytest.approx(shares[0])
    assert d.get("lane_skew").value == pytest.approx(shares.max())
    assert d.get("lane_skew").status == "pass"  # three balanced topics: ~1/3 each
    assert d.get("empty_lanes").value == 13
    conf = [f for f in d.findings if f.name.startswith("confusion")]
    assert conf and d.stats["classifier"].endswith("clf")


def test_weak_lane_flags_and_small_lanes():
    d = Diagnosis("lanes", "x")
    rows = [
        {"label": "a", "n": 100, "hit@5": 0.42, "cos": 0.5},  # 8 points below 0.50: weak
        {"label": "b", "n": 100, "hit@5": 0.44, "cos": 0.5},  # 6 points below: fine
        {"label": "c", "n": 10, "hit@5": 0.0, "cos": 0.5},  # too few windows to judge
    ]
    weak = per_lane_hits(rows, overall=0.50, weak_gap=0.07, min_queries=30, d=d)
    assert weak == ["a"]
    assert [d.get(f"hit@5[{x}]").status for x in "abc"] == ["warn", "pass", "info"]


def test_skew_warns_when_one_lane_dominates(make_bank, tmp_path):
    rng = np.random.default_rng(0)
    labels = ["People"] * 40 + ["Geography"] * 8 + ["Mathematics"] * 8
    centres = rng.standard_normal((3, 16)) * 3
    rows = np.repeat([["People", "Geography", "Mathematics"].index(x) for x in labels], 3)
    v = centres[rows] + rng.standard_normal((len(rows), 16))
    v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    bank = make_bank(tmp_path, articles=[3] * len(labels), vectors=v, labels=labels)
    assign_lanes(bank, fit_lane_classifier(bank, Cs=(1.0,)))
    d = diagnose_lanes(bank, None)
    assert d.get("lane_skew").status == "warn" and "people" in d.get("lane_skew").message


def test_cli_diagnose_lanes(laned, tmp_path):
    from lvmkit.cli.main import app

    out = tmp_path / "diag"
    r = CliRunner().invoke(app, ["diagnose", "lanes", str(laned.path), "--ctx", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "diagnosis.json").is_file() and "lane_skew" in r.output


def test_cli_diagnose_lanes_without_lanes_says_what_to_run(make_bank, tmp_path):
    from lvmkit.cli.main import app

    bank = make_bank(tmp_path)
    r = CliRunner().invoke(app, ["diagnose", "lanes", str(bank.path)])
    assert r.exit_code == 2 and "lvmkit lanes assign" in r.output
