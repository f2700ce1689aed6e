"""Gates: pass, fail, unknown metrics, bad specs, file loading."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lvmkit.errors import ConfigError
from lvmkit.eval.gates import check_gates, load_gates

SPEC = {"contain@50": {"min": 0.60}, "eff@5": {"min": 0.68}, "hit@5": {"min": 0.40}, "p95_ms": {"max": 1.45}}


def test_all_gates_hold():
    report = check_gates(
        {"contain@50": 0.61, "eff@5": 0.70, "hit@5": 0.40, "p95_ms": 1.2, "mrr@10": 0.3}, SPEC
    )
    assert report.ok
    assert [r.metric for r in report.rows] == list(SPEC)
    assert all(r.held for r in report.rows)
    assert "All gates held." in report.to_markdown()


def test_failing_gates_are_reported():
    report = check_gates({"contain@50": 0.59, "eff@5": 0.70, "hit@5": np.float32(0.5), "p95_ms": 1.46}, SPEC)
    assert not report.ok
    assert [r.metric for r in report.failed] == ["contain@50", "p95_ms"]
    md = report.to_markdown()
    assert "| contain@50 | 0.59 | >= 0.6 | **no** |" in md
    assert "2 of 4 gates failed." in md
    assert report.to_dict()["ok"] is False


def test_missing_or_nan_value_fails():
    report = check_gates({"hit@5": math.nan, "eff@5": None}, {"hit@5": {"min": 0.0}, "eff@5": {"max": 1.0}})
    assert [r.held for r in report.rows] == [False, False]
    assert "missing" in report.to_markdown()


def test_unknown_metric_lists_available():
    with pytest.raises(ConfigError, match=r"hit@50.*available: eff@5, hit@5"):
        check_gates({"hit@5": 0.5, "eff@5": 0.7}, {"hit@50": {"min": 0.1}})


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"hit@5": {"minimum": 0.4}}, "unknown keys"),
        ({"hit@5": {}}, "needs a bound"),
        ({"hit@5": {"min": "high"}}, "must be a number"),
        ({"hit@5": {"min": 0.5, "max": 0.4}}, "above max"),
        ({"hit@5": 0.4}, "must be a mapping"),
        ([{"metric": "hit@5", "min": 0.4, "epoch": -1}], "epoch"),
        ("hit@5 >= 0.4", "mapping or a list"),
    ],
)
def test_bad_specs_name_the_problem(spec, match):
    with pytest.raises(ConfigError, match=match):
        check_gates({"hit@5": 0.5}, spec)


def test_epoch_rules_reuse_the_same_comparison():
    rules = [{"epoch": 2, "metric": "val_cosine", "min": 0.5}]
    report = check_gates({"val_cosine": 0.48}, rules)
    assert not report.ok and report.rows[0].epoch == 2
    assert "val_cosine (epoch 2)" in report.to_markdown()
    assert check_gates({"val_cosine": 0.5}, rules).ok  # bounds are inclusive


def test_load_gates_yaml_and_json(tmp_path):
    y = tmp_path / "gates.yaml"
    y.write_text("gates:\n  hit@5: {min: 0.4}\n  p95_ms:\n    max: 1.45\n")
    assert load_gates(y) == {"hit@5": {"min": 0.4}, "p95_ms": {"max": 1.45}}
    j = tmp_path / "gates.json"
    j.write_text(json.dumps(SPEC))
    assert load_gates(j) == SPEC
    bad = tmp_path / "bad.yaml"
    bad.write_text("hit@5: {min: [0.4}\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_gates(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("hit@5: {at_least: 0.4}\n")
    with pytest.raises(ConfigError, match="wrong.yaml.*unknown keys"):
        load_gates(wrong)
    with pytest.raises(ConfigError, match="does not exist"):
        load_gates(tmp_path / "nope.yaml")
