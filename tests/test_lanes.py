"""Domain lanes: schema validation, the classifier (against scikit-learn and brute force), assignment into a
bank (deterministic, bank id unchanged), the rerank formula against a numpy loop, and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from lvmkit.data.splits import Split, make_split
from lvmkit.errors import ConfigError, LvmkitError, ProvenanceError
from lvmkit.lanes import (
    LaneClassifier,
    article_lanes,
    assign_lanes,
    chunk_article_lanes,
    chunk_lanes,
    fit_lane_classifier,
    lane_rerank,
    load_schema,
    majority_lanes,
    parse_schema,
    top_confusions,
)
from lvmkit.lanes.classifier import _as_multinomial, confusion

TOPICS = ["People", "Geography", "Mathematics"]  # lanes 0, 2, 10 of the default schema
TOPIC_LANE = {"People": 0, "Geography": 2, "Mathematics": 10}


def topic_bank(make_bank, tmp_path, n_articles=60, chunks=4, dim=16, noise=0.6, seed=0, labelled=True, **kw):
    """Articles labelled with three topics; each chunk = its topic's centre + noise (so a linear model can
    separate them, but not perfectly)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(TOPICS), dim))
    labels = [TOPICS[a % len(TOPICS)] for a in range(n_articles)]
    rows = np.repeat([TOPICS.index(x) for x in labels], chunks)
    v = centres[rows] + noise * rng.standard_normal((len(rows), dim))
    v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    labels = labels if labelled else None
    return make_bank(tmp_path, articles=[chunks] * n_articles, vectors=v, labels=labels, seed=seed, **kw)


@pytest.fixture
def fitted(make_bank, tmp_path):
    bank = topic_bank(make_bank, tmp_path)
    return bank, fit_lane_classifier(bank, Cs=(1.0, 10.0), seed=0)


# ----------------------------------------------------------------------------------------------- schema
def test_default_schema_has_16_lanes_with_the_corpus_topics():
    s = load_schema(None)
    assert len(s) == 16 and len(set(s.ids)) == 16
    mapping = s.label_to_lane()
    assert len(mapping) == 12 and mapping["Uncategorized"] == s.lane_index("general")
    assert sum(1 for lane in s.lanes if not lane.labels) == 4


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({"lanes": [{"id": "a", "name": "A"}, {"id": "a", "name": "B"}]}, "repeated: a"),
        ({"lanes": [{"id": "Bad Id", "name": "A"}, {"id": "b", "name": "B"}]}, "lanes.0.id"),
        ({"lanes": [{"id": "a", "name": "A", "colour": 1}, {"id": "b", "name": "B"}]}, "lanes.0.colour"),
        ({"lanes": [{"id": "a", "name": "A"}]}, "lanes"),
        ({"lanes": [{"id": "a"}, {"id": "b", "name": "B"}]}, "lanes.0.name"),
        (
            {"lanes": [{"id": "a", "name": "A", "labels": ["X"]}, {"id": "b", "name": "B", "labels": ["X"]}]},
            "label 'X' is mapped to two lanes (a and b)",
        ),
        (["not", "a", "mapping"], "must be a mapping"),
    ],
)
def test_schema_errors_name_the_field(raw, fragment):
    with pytest.raises(ConfigError) as e:
        parse_schema(raw, "test schema")
    assert fragment in str(e.value)


def test_schema_file_round_trip_and_missing_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(load_schema(None).to_yaml())
    assert load_schema(path) == load_schema(None)
    with pytest.raises(ConfigError, match="no lane schema file"):
        load_schema(tmp_path / "nope.yaml")
    path.write_text("lanes: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_schema(path)


# ------------------------------------------------------------------------------------------- classifier
def test_predict_proba_matches_scikit_learn_multiclass_and_binary():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    x = rng.standard_normal((120, 8))
    schema = load_schema(None)
    for y in (rng.choice([0, 2, 10], 120), rng.choice([3, 5], 120)):
        model = LogisticRegression(C=3.0, max_iter=500).fit(x, y)
        classes, coef, intercept = _as_multinomial(model, 8)
        from lvmkit.bank.manifest import EncoderInfo

        clf = LaneClassifier(schema, EncoderInfo(name="e", dim=8), classes, coef, intercept)
        p = clf.predict_proba(x)
        assert p.shape == (120, 16)
        np.testing.assert_allclose(p[:, model.classes_], model.predict_proba(x), atol=1e-5)
        empty = np.setdiff1d(np.arange(16), model.classes_)
        assert (p[:, empty] == 0).all()
        np.testing.assert_array_equal(clf.predict(x), model.predict(x))


def test_fit_is_article_disjoint_and_stores_held_out_metrics(fitted):
    bank, clf = fitted
    split = make_split(bank, seed=0)
    m = clf.metrics
    assert m["test_rows"] == len(split.rows("test")) and m["test_articles"] == len(split.articles("test"))
    # held-out accuracy and the confusion matrix recomputed by brute force on the test rows
    rows = split.rows("test")
    pred = clf.predict(bank.get(rows))
    true = np.array([TOPIC_LANE[x] for x in bank.labels[rows]])
    assert m["test_accuracy"] == pytest.approx((pred == true).mean())
    cm = np.zeros((16, 16), dtype=int)
    for t, p in zip(true, pred, strict=True):
        cm[t, p] += 1
    assert m["confusion"]["matrix"] == cm.tolist()
    assert m["test_accuracy"] > 0.8  # separable-ish synthetic topics
    assert set(m["val_accuracy_by_C"]) == {"1", "10"} and m["C"] in (1.0, 10.0)
    assert clf.provenance["rows"]["train"] + clf.provenance["rows"]["val"] + m["test_rows"] == len(bank)


def test_classifier_round_trip_and_refuses_another_encoder(fitted, make_bank, tmp_path):
    bank, clf = fitted
    clf.save(tmp_path / "clf")
    back = LaneClassifier.load(tmp_path / "clf")
    x = bank.get(np.arange(len(bank)))
    np.testing.assert_array_equal(back.predict_proba(x), clf.predict_proba(x))
    assert back.metrics == clf.metrics and back.schema == clf.schema
    other = topic_bank(make_bank, tmp_path, encoder="another-encoder")
    with pytest.raises(ProvenanceError, match="another-encoder"):
        back.check_same_space(other)
    with pytest.raises(ProvenanceError):
        assign_lanes(other, back)
    with pytest.raises(LvmkitError, match="lvmkit lanes fit"):
        LaneClassifier.load(tmp_path / "missing")


def test_fit_without_mapped_labels_says_what_the_bank_holds(make_bank, tmp_path):
    bank = make_bank(tmp_path, articles=[3] * 10, labels=["Cooking"] * 10)
    with pytest.raises(LvmkitError, match="Labels in the bank: Cooking"):
        fit_lane_classifier(bank)


def test_majority_confusion_and_top_confusions_by_hand():
    lanes = np.array([2, 2, 1, 0, 1, -1, 3])
    groups = np.array([0, 0, 0, 1, 1, 1, 3])
    # group 0: 2 wins; group 1: tie 0 vs 1 -> lower index 0; group 2 empty -> -1; group 3: 3
    np.testing.assert_array_equal(majority_lanes(lanes, groups, 4, 4), [2, 0, -1, 3])
    cm = confusion(np.array([0, 0, 1, 1, 1]), np.array([0, 1, 0, 0, 1]), 2)
    assert cm.tolist() == [[1, 1], [2, 1]]
    top = top_confusions(cm, ["a", "b"], k=1)
    assert top == [{"true": "b", "predicted": "a", "count": 2, "rate": pytest.approx(2 / 3)}]


# ------------------------------------------------------------------------------------------- assignment
def test_chunk_lanes_before_assign_tells_the_user_what_to_run(make_bank, tmp_path):
    bank = make_bank(tmp_path)
    with pytest.raises(LvmkitError, match="lvmkit lanes assign"):
        chunk_lanes(bank)


def test_assign_is_deterministic_and_keeps_the_bank_identity(fitted, make_bank, tmp_path):
    from lvmkit.bank import VectorBank

    bank, clf = fitted
    clf.save(tmp_path / "clf")
    clf = LaneClassifier.load(tmp_path / "clf")
    split_file = make_split(bank, seed=0).save(tmp_path / "split.json")
    before = bank.manifest.bank_id
    assign_lanes(bank, clf)
    first = (bank.path / "chunks.parquet").read_bytes()
    reopened = VectorBank.open(bank.path)
    lanes = chunk_lanes(reopened)
    np.testing.assert_array_equal(lanes, clf.predict(bank.get(np.arange(len(bank)))))
    assign_lanes(reopened, LaneClassifier.load(tmp_path / "clf"))  # again: same bytes
    assert (bank.path / "chunks.parquet").read_bytes() == first
    reopened = VectorBank.open(bank.path)
    assert reopened.manifest.bank_id == before
    Split.load(split_file, reopened)  # a split made before the assignment still binds
    # article lanes = majority of the chunk lanes, by brute force
    arts = article_lanes(reopened)
    for a in range(reopened.n_articles):
        s, e = reopened.article_starts[a], reopened.article_starts[a + 1]
        counts = np.bincount(lanes[s:e], minlength=16)
        assert arts[a] == np.flatnonzero(counts == counts.max())[0]
    np.testing.assert_array_equal(chunk_article_lanes(reopened), arts[reopened.article_codes])
    assert reopened.manifest.lanes["classifier_sha256"] == clf.weights_sha256


# ----------------------------------------------------------------------------------------------- rerank
def test_lane_rerank_matches_a_numpy_loop():
    rng = np.random.default_rng(0)
    B, K, L = 5, 7, 4
    scores = rng.uniform(-1, 1, (B, K)).astype(np.float32)
    proba = rng.dirichlet(np.ones(L), B)
    lanes = rng.integers(0, L, (B, K))
    lanes[0, 3] = -1  # padding
    scores[1, 2] = -np.inf  # excluded
    out = lane_rerank(scores, proba, lanes, weight=0.3)
    for b in range(B):
        for k in range(K):
            align = proba[b, lanes[b, k]] if lanes[b, k] >= 0 else 0.0
            want = 0.7 * scores[b, k] + 0.3 * align
            assert out[b, k] == pytest.approx(want, rel=1e-6, abs=1e-6) or (
                np.isinf(want) and np.isinf(out[b, k])
            )
    np.testing.assert_array_equal(lane_rerank(scores, proba, lanes, weight=0.0), scores)
    assert lane_rerank(scores, proba, lanes, weight=1.0)[1, 2] == -np.inf
    with pytest.raises(ConfigError, match="weight"):
        lane_rerank(scores, proba, lanes, weight=1.5)
    with pytest.raises(ConfigError, match="4 lanes"):
        lane_rerank(scores, proba, np.full((B, K), 4), weight=0.3)


# ---------------------------------------------------------------------------------------------------- cli
def test_cli_fit_assign_and_schema_error(make_bank, tmp_path):
    from lvmkit.cli.main import app

    bank = topic_bank(make_bank, tmp_path)
    runner = CliRunner()
    r = runner.invoke(app, ["lanes", "fit", str(bank.path), "--out", str(tmp_path / "clf"), "--C", "1"])
    assert r.exit_code == 0, r.output
    assert "held-out" in r.output and (tmp_path / "clf" / "classifier.json").is_file()
    r = runner.invoke(app, ["lanes", "assign", str(bank.path), "--classifier", str(tmp_path / "clf")])
    assert r.exit_code == 0, r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("lanes:\n  - {id: a, name: A}\n  - {id: b, nam: B}\n")
    r = runner.invoke(
        app, ["lanes", "fit", str(bank.path), "--out", str(tmp_path / "c2"), "--schema", str(bad)]
    )
    assert r.exit_code == 2 and "lanes.1" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "c2").exists()


def test_user_labels_file_replaces_the_label_column(make_bank, tmp_path):
    from lvmkit.lanes.classifier import read_article_labels

    bank = topic_bank(make_bank, tmp_path)
    # the same topics supplied as a file, on a copy of the bank without labels
    unlabelled = topic_bank(make_bank, tmp_path, name="unlabelled", labelled=False)
    with pytest.raises(LvmkitError, match="no labels"):
        fit_lane_classifier(unlabelled)
    csv = tmp_path / "labels.csv"
    csv.write_text("article_id,label\n" + "".join(f"A{a:04d},{TOPICS[a % 3]}\n" for a in range(60)))
    labels = read_article_labels(csv)
    assert labels["A0004"] == "Geography"
    a = fit_lane_classifier(bank, Cs=(1.0,))
    b = fit_lane_classifier(unlabelled, Cs=(1.0,), labels=labels)
    np.testing.assert_allclose(a.coef, b.coef)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"article_id": "A0000", "topic": "People"}\n')
    with pytest.raises(ConfigError, match="missing field 'label'"):
        read_article_labels(bad)
