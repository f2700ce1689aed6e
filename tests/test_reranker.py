"""Reranker features against brute-force values on a toy bank, the protocol rule (no article-identity feature in
an open number), and the fit / choose-on-val / report / store / load round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lvmkit.data.windows import make_windows
from lvmkit.errors import ArtifactError, ConfigError, ProvenanceError
from lvmkit.eval.protocol import ARTICLE_FEATURES, IN_ARTICLE, OPEN, ProtocolError
from lvmkit.heads.features import FEATURES, Lanes, QueryBatch, feature_matrix, load_source, retrieve
from lvmkit.heads.reranker import KINDS, Reranker, fit_reranker, format_report, make_model

CTX = 3
LENGTHS = [9, 4, 12, 6, 15, 7, 10, 5]


class FakeLaneClassifier:
    """predict_proba = softmax of the first L coordinates (deterministic, rows sum to 1)."""

    L = 4

    def predict_proba(self, x):
        z = np.exp(np.asarray(x)[:, : self.L] * 3)
        return z / z.sum(1, keepdims=True)


@pytest.fixture
def bank(make_bank, tmp_path):
    return make_bank(tmp_path, articles=LENGTHS, dim=16, seed=4)


def unit(x):
    return x / np.linalg.norm(x)


def brute_features(bank, t, cand, retr_rank, retr_score, pred, tower, lanes):
    """Every feature of candidate ``cand`` of the window with target ``t``, from first principles."""
    v = np.asarray(bank.vectors, dtype=np.float64)
    codes = bank.article_codes
    ctx = [r for r in range(t - CTX, t) if r >= 0 and codes[r] == codes[t]]
    last = ctx[-1]
    same = codes[cand] == codes[t]
    lane_p = FakeLaneClassifier().predict_proba(pred[None])[0][lanes[cand]]
    return {
        "score": retr_score,
        "log_rank": np.log(1 + retr_rank),
        "cos_pred": v[cand] @ pred,
        "cos_last": v[cand] @ v[last],
        "cos_mean": v[cand] @ unit(v[ctx].mean(0)),
        "twotower": v[cand] @ tower,
        "lane": lane_p,
        "same_article": float(same),
        "gap": float(cand - last) if same else 0.0,
        "next": float(same and cand - last == 1),
    }


@pytest.mark.parametrize("protocol", [OPEN, IN_ARTICLE])
def test_features_match_brute_force(bank, protocol):
    ws = make_windows(bank, None, "all", ctx=CTX, min_ctx=2, pad=True)
    qb = QueryBatch(ws, np.arange(len(ws)), protocol)
    retr = load_source("baseline:exp_weighted", bank, ctx=CTX)
    pred, tower = (
        load_source("baseline:mean_ctx", bank, ctx=CTX),
        load_source("baseline:copy_last", bank, ctx=CTX),
    )
    bank_lanes = np.arange(len(bank)) % FakeLaneClassifier.L
    lanes = Lanes(FakeLaneClassifier(), bank_lanes)
    names = [n for n in FEATURES if protocol == IN_ARTICLE or n not in ARTICLE_FEATURES]
    pool = retrieve(qb, retr, k=6)
    x = feature_matrix(names, pool, qb, {"pred": pred, "twotower": tower}, lanes)
    assert x.shape == (len(ws), 6, len(names))
    p, tw, r = qb.query(pred), qb.query(tower), qb.query(retr)
    checked = 0
    for b, t in enumerate(ws.targets):
        for k in range(6):
            cand = int(pool.ids[b, k])
            if cand < 0:
                assert np.all(x[b, k] == 0)
                continue
            if protocol == IN_ARTICLE:
                assert bank.article_codes[cand] == bank.article_codes[t]
            want = brute_features(
                bank, t, cand, k, float(np.asarray(bank.vectors[cand]) @ r[b]), p[b], tw[b], bank_lanes
            )
            got = dict(zip(names, x[b, k], strict=True))
            for n in names:
                assert got[n] == pytest.approx(want[n], abs=1e-5), (n, b, k)
            checked += 1
    assert checked > len(ws) * 3


def test_article_features_never_in_an_open_pool(bank, tmp_path):
    ws = make_windows(bank, None, "all", ctx=CTX, min_ctx=2, pad=True)
    qb = QueryBatch(ws, np.arange(4), OPEN)
    pool = retrieve(qb, load_source("baseline:copy_last", bank, ctx=CTX), k=5)
    for name in ARTICLE_FEATURES:
        with pytest.raises(ProtocolError, match="open protocol"):
            feature_matrix(["score", name], pool, qb)
        with pytest.raises(ProtocolError, match="open protocol"):
            fit_reranker("baseline:mean_ctx", bank, protocol=OPEN, features=["score", name], ctx=CTX)
    with pytest.raises(ConfigError, match="unknown reranker feature"):
        feature_matrix(["score", "title_match"], pool, qb)
    with pytest.raises(ConfigError, match="twotower query source"):
        feature_matrix(["twotower"], pool, qb)
    assert not any(tmp_path.glob("**/reranker-*"))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Open and in-article rerankers on a bank where chunk t+1 is close to chunk t (baselines as sources)."""
    from conftest import build_bank, random_walk_vectors

    root = tmp_path_factory.mktemp("rerank")
    bank = build_bank(root, [12] * 60, vectors=random_walk_vectors(60, 12, 16))
    kw = dict(retriever="baseline:exp_weighted", k=10, ctx=CTX, max_train=300, max_val=100, max_test=150)
    return (
        bank,
        root,
        {p: fit_reranker("baseline:mean_ctx", bank, protocol=p, **kw) for p in (OPEN, IN_ARTICLE)},
    )


def test_fit_report_and_round_trip(fitted):
    bank, root, rr = fitted
    o, ia = rr[OPEN], rr[IN_ARTICLE]
    # no in-article feature in any open number
    assert set(o.spec.features).isdisjoint(ARTICLE_FEATURES) and o.report["protocol"] == OPEN
    assert set(ARTICLE_FEATURES) <= set(ia.spec.features) and ia.report["protocol"] == IN_ARTICLE
    for r in (o, ia):
        assert r.kind == max(r.report["val"], key=lambda kd: r.report["val"][kd]["mrr@10"])
        assert set(r.report["importance"]) == set(r.spec.features)
        assert "retrieval order" in r.report["test"] and any("[chosen on val]" in k for k in r.report["test"])
        assert f"protocol **{r.spec.protocol}**" in format_report(r)
    # in-article: the +1 gap feature names the answer by construction, so the reranker finds it every time
    assert ia.report["test"][f"reranker ({ia.kind}) [chosen on val]"]["hit@1"] == pytest.approx(
        ia.report["pool_contain"]["test"]
    )
    path = o.save(root)
    assert json.loads(path.read_text())["spec"]["protocol"] == OPEN
    back = Reranker.load(root, bank, protocol=OPEN)
    x = np.random.default_rng(0).standard_normal((3, 10, len(o.spec.features))).astype(np.float32)
    valid = np.ones((3, 10), bool)
    np.testing.assert_allclose(back.score(x, valid), o.score(x, valid))
    with pytest.raises(ProtocolError, match="never mixed"):
        Reranker.load(path, bank, protocol=IN_ARTICLE)


def test_reranker_refused_on_another_bank(fitted, make_bank, tmp_path):
    bank, root, rr = fitted
    rr[OPEN].save(root)
    other = make_bank(tmp_path, [12] * 60, dim=16, seed=9)
    with pytest.raises(ProvenanceError, match="refit it on this bank"):
        Reranker.load(root, other, protocol=OPEN)


class _NotAReranker:
    """A type outside skops' defaults and TRUSTED_TYPES: a file that builds it must never be loaded."""

    def __init__(self):
        self.payload = "would run on load"


@pytest.mark.parametrize("kind", KINDS)
def test_both_kinds_round_trip_through_skops_without_pickle(fitted, kind, tmp_path):
    """Each model kind, stored and loaded, scores exactly as before; the file is a skops zip, not a pickle."""
    bank, _, rr = fitted
    spec = rr[OPEN].spec
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, len(spec.features)))
    model = make_model(kind).fit(x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int))
    meta = Reranker(spec, kind, model).save(tmp_path)
    stored = meta.with_suffix(".skops")
    assert stored.read_bytes()[:2] == b"PK" and not list(tmp_path.glob("**/*.pkl"))
    back = Reranker.load(tmp_path, bank, protocol=OPEN)
    xs = rng.standard_normal((4, 10, len(spec.features)))
    valid = np.ones((4, 10), bool)
    assert back.kind == kind
    np.testing.assert_array_equal(back.score(xs, valid), Reranker(spec, kind, model).score(xs, valid))


def test_a_model_file_that_builds_other_types_is_refused(fitted, tmp_path):
    import skops.io

    bank, _, rr = fitted
    meta = rr[OPEN].save(tmp_path)
    meta.with_suffix(".skops").write_bytes(skops.io.dumps(_NotAReranker()))
    with pytest.raises(ArtifactError, match="_NotAReranker.*not loaded"):
        Reranker.load(tmp_path, bank, protocol=OPEN)
    meta.with_suffix(".skops").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ArtifactError, match="not a readable skops file"):
        Reranker.load(tmp_path, bank, protocol=OPEN)


def test_an_old_pickled_reranker_is_refused_with_the_refit_command(fitted, tmp_path):
    bank, _, rr = fitted
    meta = rr[OPEN].save(tmp_path)
    meta.with_suffix(".skops").unlink()
    meta.with_suffix(".pkl").write_bytes(b"\x80\x04 a pickle")
    with pytest.raises(ArtifactError, match="saved as a pickle.*lvmkit rerank fit RUN --protocol open"):
        Reranker.load(tmp_path, bank, protocol=OPEN)
