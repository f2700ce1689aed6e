"""lvmkit replay: the truth is found only where the bank proves it, metrics match a brute-force search, agreement
is reported for every request, training articles are left out, and the CLI prints the table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from serve_env import make_corpus_bank
from typer.testing import CliRunner

from lvmkit.cli.main import app
from lvmkit.data.splits import make_split
from lvmkit.encode import load_encoder
from lvmkit.serve.replay import LOGGED, replay, trained_rows, truth_rows
from lvmkit.serve.requestlog import RequestLog


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    return make_corpus_bank(tmp_path_factory.mktemp("replay"))


def contexts_for(bank) -> tuple[list[list[str]], list[int]]:
    """Contexts with a known next chunk (consecutive rows), and ones without; the expected truth rows."""
    starts = bank.article_starts
    out, truth = [], []
    for a in range(0, 12):
        s = int(starts[a])
        n = 1 + a % 3
        out.append(bank.texts(range(s, s + n)))
        truth.append(s + n)
    last = int(starts[1]) - 1
    out.append(bank.texts([last]))  # the last chunk of an article: nothing follows it in the article
    truth.append(-1)
    out.append(bank.texts([int(starts[2]), int(starts[2]) + 2]))  # not consecutive
    truth.append(-1)
    out.append(["A sentence the bank has never seen.", "Nor this one."])
    truth.append(-1)
    return out, truth


def test_truth_rows_only_where_the_bank_proves_them(bank):
    contexts, expect = contexts_for(bank)
    assert truth_rows(bank, contexts).tolist() == expect


def write_log(bank, path, contexts, k=5):
    """A log as the server writes it, answered by copy_last (searched exactly, context excluded)."""
    enc = load_encoder("hash:64", backend="hash")
    with RequestLog(path) as log:
        for i, ctx in enumerate(contexts):
            excluded = np.flatnonzero(np.isin(np.array(bank.texts(range(len(bank))), dtype=object), ctx))
            _, ids = bank.search(enc.encode(ctx)[-1:], k, exclude=[excluded])
            resp = {"run": "baseline:copy_last", "request_id": str(i), "context": ctx}
            resp["predicted"] = [{"chunk_id": int(c)} for c in ids[0]]
            log.answer("/v1/next", {"context": ctx, "k": k, "exclude_context": True}, resp)
        log.answer("/v1/search", {"text": "x", "k": 1}, {"hits": []})  # not a /v1/next: ignored


def brute_force_copy_last(bank, contexts, truth, k):
    """Hit@1 / Hit@k of copy_last on the requests with a truth, by numpy dot products over the whole bank."""
    vecs = np.asarray(bank.vectors, dtype=np.float32)
    texts = np.array(bank.texts(range(len(bank))), dtype=object)
    enc = load_encoder("hash:64", backend="hash")
    h1, hk = [], []
    for ctx, t in zip(contexts, truth, strict=True):
        if t < 0:
            continue
        scores = vecs @ enc.encode(ctx)[-1]
        scores[np.isin(texts, ctx)] = -np.inf
        order = np.argsort(-scores, kind="stable")
        h1.append(order[0] == t)
        hk.append(t in order[:k])
    return float(np.mean(h1)), float(np.mean(hk))


def test_replay_scores_against_brute_force_and_reports_agreement(bank, tmp_path):
    contexts, truth = contexts_for(bank)
    write_log(bank, tmp_path / "log", contexts)
    res = replay(tmp_path / "log", ["baseline:mean_ctx"], bank, k=5)
    assert (res.n_requests, res.n_truth, res.n_scored) == (15, 12, 12)
    assert res.systems == ["baseline:mean_ctx", "copy_last", "mean_ctx", "exp_weighted", LOGGED]
    h1, h5 = brute_force_copy_last(bank, contexts, truth, 5)
    assert res.truth_metrics["copy_last"]["hit@1"] == pytest.approx(h1)
    assert res.truth_metrics["copy_last"]["hit@5"] == pytest.approx(h5)
    assert res.truth_metrics[LOGGED] == res.truth_metrics["copy_last"]
    # the replayed copy_last reproduces the server's answers; the same model under two names agrees fully
    assert res.overlap["copy_last"][LOGGED] == pytest.approx(1.0)
    assert res.overlap["baseline:mean_ctx"]["mean_ctx"] == pytest.approx(1.0)
    assert 0.0 <= res.overlap["mean_ctx"]["copy_last"] < 1.0
    assert "| copy_last |" in res.table()


def test_requests_from_training_articles_are_not_scored(bank, tmp_path, monkeypatch):
    contexts, truth = contexts_for(bank)
    write_log(bank, tmp_path / "log", contexts)
    split = make_split(bank, seed=0)
    run = tmp_path / "run"
    split.save(run)
    mask, notes = trained_rows([str(run)], bank)  # a run directory's split.json, made for this bank
    assert (mask == split.row_mask("train")).all() and notes == []
    in_train = sum(1 for t in truth if t >= 0 and mask[t])
    assert 0 < in_train < 12  # this split puts some truths in train and some not
    from lvmkit.serve import replay as replay_mod

    monkeypatch.setattr(replay_mod, "trained_rows", lambda runs, b: (mask, []))  # as if a replayed run had it
    res = replay(tmp_path / "log", ["baseline:mean_ctx"], bank, k=5)
    assert (res.n_truth, res.n_scored) == (12, 12 - in_train)
    assert any("trained on" in n for n in res.notes)


def test_cli_prints_the_table_and_writes_json(bank, tmp_path):
    contexts, _ = contexts_for(bank)
    write_log(bank, tmp_path / "log", contexts)
    out = tmp_path / "replay.json"
    r = CliRunner().invoke(
        app,
        [
            "replay",
            str(tmp_path / "log"),
            "--run",
            "baseline:exp_weighted",
            "--bank",
            str(bank.path),
            "--k",
            "5",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "overlap@5 vs baseline:exp_weighted" in r.output and "15 /v1/next requests" in r.output
    assert json.loads(out.read_text())["n_truth"] == 12
    r = CliRunner().invoke(
        app, ["replay", str(tmp_path / "nolog"), "--run", "baseline:copy_last", "--bank", str(bank.path)]
    )
    assert r.exit_code == 2 and "does not exist" in r.output
