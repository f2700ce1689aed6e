"""The two evaluation protocols: in-article candidates against a brute-force ranking, every result names its
protocol, tables never mix them, and article-identity / position features are refused under open."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lvmkit.data.windows import make_windows
from lvmkit.eval.command import run_eval
from lvmkit.eval.evaluator import evaluate, format_table
from lvmkit.eval.protocol import (
    ARTICLE_FEATURES,
    IN_ARTICLE,
    OPEN,
    ProtocolError,
    check_features,
    check_protocol,
    check_same_protocol,
    in_article_search,
    search,
)

LENGTHS = [9, 4, 12, 6, 15, 7, 10, 5]
CTX = 3


@pytest.fixture
def bank(make_bank, tmp_path):
    return make_bank(tmp_path, articles=LENGTHS, dim=16, seed=5)


def brute_in_article(bank, q, target, exclude_context=True):
    """Rank the target's article's rows by q . v in numpy, its CTX context rows removed."""
    codes = bank.article_codes
    rows = [r for r in range(len(bank)) if codes[r] == codes[target]]
    if exclude_context:
        rows = [r for r in rows if not (target - CTX <= r < target)]
    scores = np.array([float(bank.vectors[r] @ q) for r in rows])
    return [rows[i] for i in np.argsort(-scores, kind="stable")]


def test_in_article_search_matches_brute_force(bank):
    ws = make_windows(bank, None, "all", ctx=CTX, min_ctx=1, pad=True)
    idx = np.arange(len(ws))
    rng = np.random.default_rng(0)
    q = rng.standard_normal((len(ws), bank.dim)).astype(np.float32)
    scores, ids = in_article_search(bank, q, ws.article_of(idx), ws.context_rows(idx), 20)
    for i, t in enumerate(ws.targets):
        want = brute_in_article(bank, q[i], t)
        got = [int(x) for x in ids[i] if x >= 0]
        assert got == want[:20]
        assert np.all(ids[i, len(got) :] == -1) and np.all(np.isinf(scores[i, len(got) :]))
        np.testing.assert_allclose(scores[i, : len(got)], bank.vectors[got] @ q[i], rtol=1e-5, atol=1e-6)
        assert set(got).isdisjoint(ws.context_rows([i])[0].tolist())


def test_open_search_is_the_whole_bank(bank):
    q = np.asarray(bank.vectors[:4], dtype=np.float32)
    scores, ids = search(OPEN, bank, q, np.zeros(4, dtype=np.int64), None, len(bank) + 5)
    assert ids.shape == (4, len(bank) + 5) and np.all(ids[:, len(bank) :] == -1)
    assert sorted(ids[0, : len(bank)].tolist()) == list(range(len(bank)))


def test_evaluate_in_article_against_brute_force(bank):
    ws = make_windows(bank, None, "all", ctx=CTX, min_ctx=1, pad=True)

    noise = np.random.default_rng(1).standard_normal((len(bank), bank.dim)).astype(np.float32)

    def noisy(batch):  # the last context vector plus a noise fixed per target row
        return batch.ctx[:, -1].numpy() + 0.5 * noise[batch.target_ids.numpy()]

    preds = np.concatenate([noisy(ws.batch([i])) for i in range(len(ws))])
    r = evaluate(noisy, ws, bank, protocol=IN_ARTICLE, n_boot=0, batch_size=len(ws))
    hits = [t in brute_in_article(bank, preds[i], t)[:5] for i, t in enumerate(ws.targets)]
    assert r.metrics["hit@5"] == pytest.approx(np.mean(hits))
    assert r.info["protocol"] == IN_ARTICLE and r.info["index"] == "exact"
    lengths = np.diff(bank.article_starts)[bank.article_codes[ws.targets]]
    assert r.info["mean_candidates"] == pytest.approx(np.mean(lengths - ws.n_real(np.arange(len(ws)))))
    assert "protocol in-article" in format_table({"m": r}).lower()
    o = evaluate(noisy, ws, bank, n_boot=0)
    assert o.info["protocol"] == OPEN and "protocol open" in format_table({"m": o}).lower()
    assert r.metrics["hit@5"] >= o.metrics["hit@5"]  # fewer candidates: an easier task
    with pytest.raises(ProtocolError, match="mixes protocols"):
        format_table({"a": r, "b": o})


def test_article_features_are_refused_under_open():
    check_features(IN_ARTICLE, ["score", *ARTICLE_FEATURES])  # allowed there
    check_features(OPEN, ["score", "cos_pred"])
    for name in ARTICLE_FEATURES:
        with pytest.raises(ProtocolError, match=f"{name}.*open protocol"):
            check_features(OPEN, ["score", name])
    with pytest.raises(ProtocolError, match="not known"):
        check_protocol("closed")
    with pytest.raises(ProtocolError, match="never mixed"):
        check_same_protocol(IN_ARTICLE, OPEN, "the reranker", "this evaluation")


def test_run_eval_names_its_protocol(make_bank, tmp_path):
    bank = make_bank(tmp_path, articles=[8] * 40, dim=16, seed=2)
    o = run_eval("baseline:copy_last", bank, ctx=CTX, out=tmp_path / "ia", latency_n=0, protocol=IN_ARTICLE)
    data = json.loads((tmp_path / "ia" / "metrics.json").read_text())
    assert data["protocol"] == IN_ARTICLE
    assert all(r["info"]["protocol"] == IN_ARTICLE for r in data["results"].values())
    assert "protocol in-article" in (tmp_path / "ia" / "metrics.md").read_text()
    assert o.info["protocol"] == IN_ARTICLE
    with pytest.raises(ProtocolError):
        run_eval("baseline:copy_last", bank, ctx=CTX, out=tmp_path / "x", latency_n=0, protocol="closed")
    assert not (tmp_path / "x").exists()


def test_report_tables_name_the_protocol(bank):
    from lvmkit.report.markdown import results_table

    ws = make_windows(bank, None, "all", ctx=CTX, min_ctx=1, pad=True)
    for protocol in (OPEN, IN_ARTICLE):
        r = evaluate(lambda b: b.ctx[:, -1], ws, bank, protocol=protocol, n_boot=0)
        text = "\n".join(
            results_table({"results": {"m": json.loads(json.dumps(r.to_dict(), default=float))}}, "m")
        )
        assert f"Protocol {protocol}" in text
