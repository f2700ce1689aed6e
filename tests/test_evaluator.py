"""The evaluator against brute-force full-bank ranking in numpy, on small random banks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lvmkit.artifacts import _json_default
from lvmkit.bank.index import build_index, save_index
from lvmkit.data.windows import WindowSet, make_windows
from lvmkit.errors import ConfigError, ProvenanceError
from lvmkit.eval.evaluator import (
    EvalResult,
    evaluate,
    evaluate_suite,
    format_table,
    oracle,
    rank_with_and_without,
    resolve_index,
    separation_on_bank,
)
from lvmkit.eval.latency import measure_latency

CTX = 3
LENGTHS = [7, 4, 12, 5, 9, 3, 10, 6, 8, 11, 4, 7, 9, 5, 6, 10, 8, 3, 12, 6]
LABELS = ["history", "science", None, "science", "history"] * 4


def copy_last(batch):
    return batch.ctx[:, -1]


NOISE = torch.from_numpy(np.random.default_rng(99).normal(size=(sum(LENGTHS), 16)).astype(np.float32))


def noisy_copy(batch):
    """A predictor whose hits are neither all nor none: last context vector plus the target, plus noise
    fixed per target row (so a window's prediction does not depend on its batch)."""
    return batch.ctx[:, -1] + 0.6 * batch.target + 0.15 * NOISE[batch.target_ids]


@pytest.fixture
def bank(make_bank, tmp_path):
    return make_bank(tmp_path, articles=LENGTHS, dim=16, seed=3, labels=LABELS)


@pytest.fixture
def windows(bank):
    return make_windows(bank, None, "all", ctx=CTX, min_ctx=1, pad=True)


def brute_context(bank, t):
    """Context rows of target row t, found by walking back inside its article (independent of WindowSet)."""
    codes = bank.article_codes
    return [r for r in range(t - CTX, t) if r >= 0 and codes[r] == codes[t]]


def brute_ranks(bank, pred, targets, exclude):
    """1-based rank of each target in the full-bank ranking by inner product (np.argsort), optionally
    without the window's own context rows."""
    V = np.asarray(bank.vectors, dtype=np.float64)
    ranks = []
    for q, t in zip(np.asarray(pred, dtype=np.float64), targets, strict=True):
        order = [int(r) for r in np.argsort(-(V @ q), kind="stable")]
        if exclude:
            gone = set(brute_context(bank, int(t)))
            order = [r for r in order if r not in gone]
        ranks.append(order.index(int(t)) + 1)
    return np.array(ranks)


def all_predictions(windows, fn):
    return torch.cat([torch.as_tensor(fn(windows.batch(np.arange(len(windows)))))]).numpy()


# ------------------------------------------------------------------------------------------ retrieval
@pytest.mark.parametrize("predictor", [copy_last, noisy_copy])
def test_hits_match_brute_force_with_and_without_context(bank, windows, predictor):
    res = evaluate(predictor, windows, bank, ks=(1, 5, 10, 50), n_boot=0)
    pred = all_predictions(windows, predictor)
    targets = windows.targets
    r_ex = brute_ranks(bank, pred, targets, exclude=True)
    r_in = brute_ranks(bank, pred, targets, exclude=False)
    for k in (1, 5, 10, 50):
        np.testing.assert_array_equal(res.per_query[f"hit@{k}_excl"], r_ex <= k)
        np.testing.assert_array_equal(res.per_query[f"hit@{k}_noexcl"], r_in <= k)
        np.testing.assert_array_equal(res.per_query[f"hit@{k}"], r_ex <= k)  # exclusion is the default
        assert res.metrics[f"hit@{k}"] == pytest.approx(np.mean(r_ex <= k))
    assert res.metrics["contain@50"] == pytest.approx(np.mean(r_ex <= 50))
    assert res.metrics["mrr@10"] == pytest.approx(np.mean(np.where(r_ex <= 10, 1.0 / r_ex, 0.0)))
    assert res.metrics["eff@5"] == pytest.approx(np.mean(r_ex <= 5) / np.mean(r_ex <= 50))
    cos = np.sum(pred * windows.batch(np.arange(len(windows))).target.numpy(), 1) / np.linalg.norm(
        pred, axis=1
    )
    assert res.metrics["cos"] == pytest.approx(cos.mean(), abs=1e-6)
    assert res.info["n_queries"] == len(windows) and res.info["bank_size"] == len(bank)


def test_copy_last_loses_its_own_context_hit(bank, windows):
    """copy_last's prediction IS a context row, so without exclusion rank 1 is always that row."""
    res = evaluate(copy_last, windows, bank, exclude_context=False, n_boot=0)
    assert res.metrics["hit@1_noexcl"] == 0.0
    assert res.metrics["hit@1"] == res.metrics["hit@1_noexcl"]  # the flag picks the variant
    assert res.info["exclude_context"] is False


def test_oracle_hits_everything_with_exact_search(bank, windows):
    for exclude in (True, False):
        res = evaluate(oracle, windows, bank, index="flat", exclude_context=exclude, n_boot=0)
        assert res.metrics["hit@1"] == 1.0 and res.metrics["mrr@10"] == 1.0 and res.metrics["eff@5"] == 1.0
        assert res.metrics["cos"] == pytest.approx(1.0, abs=1e-6)
        assert res.info["index"] == "flat"


def test_rank_with_and_without_drops_only_excluded_ids(bank):
    si = resolve_index(bank, "flat")
    q = np.asarray(bank.vectors[:4])
    excl = np.array([[0, -1], [1, 2], [-1, -1], [5, 3]])
    ex, inc = rank_with_and_without(si, q, excl, depth=len(bank))
    _, full = si.search(q, len(bank))
    np.testing.assert_array_equal(inc, full)
    for i in range(4):
        gone = {int(x) for x in excl[i] if x >= 0}
        expected = [int(x) for x in full[i] if int(x) not in gone]
        assert ex[i, : len(expected)].tolist() == expected
        assert (ex[i, len(expected) :] == -1).all()  # the bank ran out: padded


# ------------------------------------------------------------------------------------------ other metrics
def test_contrastive_accuracy_both_protocols_match_brute_force(bank, windows):
    n = len(windows)
    res = evaluate(noisy_copy, windows, bank, ca_batch=n, n_boot=0)  # one batch: the shuffle does not matter
    pred = all_predictions(windows, noisy_copy)
    tgt = windows.batch(np.arange(n)).target.numpy().astype(np.float64)
    t, codes = windows.targets, bank.article_codes

    def cos(a, b):
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    inb, oth = [], []
    for i in range(n):
        s_true = cos(pred[i], tgt[i])
        near = [j for j in range(n) if codes[t[j]] == codes[t[i]] and abs(int(t[j]) - int(t[i])) <= 1]
        other = [j for j in range(n) if codes[t[j]] != codes[t[i]]]
        keep = [j for j in range(n) if j not in near]
        inb.append(np.mean([cos(pred[i], tgt[j]) < s_true for j in keep]))
        oth.append(np.mean([cos(pred[i], tgt[j]) < s_true for j in other]))
    np.testing.assert_allclose(res.per_query["ca_inbatch"], inb)
    np.testing.assert_allclose(res.per_query["ca_other"], oth)
    assert res.info["ca_batch"] == n


def test_contrastive_accuracy_uses_seeded_batches(bank, windows):
    a = evaluate(noisy_copy, windows, bank, ca_batch=16, seed=1, n_boot=0)
    b = evaluate(noisy_copy, windows, bank, ca_batch=16, seed=1, n_boot=0)
    c = evaluate(noisy_copy, windows, bank, ca_batch=16, seed=2, n_boot=0)
    np.testing.assert_array_equal(a.per_query["ca_inbatch"], b.per_query["ca_inbatch"])
    assert not np.array_equal(a.per_query["ca_inbatch"], c.per_query["ca_inbatch"])
    # batch 16 from a random shuffle: the first block's CA is the brute-force CA within those 16 windows
    block = np.random.default_rng(1).permutation(len(windows))[:16]
    sub = evaluate(noisy_copy, windows.subset(block), bank, ca_batch=16, n_boot=0)
    np.testing.assert_allclose(a.per_query["ca_other"][block], sub.per_query["ca_other"])


def test_offset_sweep_flags_copy_last_and_not_oracle(bank, windows):
    res = evaluate(copy_last, windows, bank, n_boot=0)
    assert res.offsets["c"]["-1"] == pytest.approx(1.0, abs=1e-6)
    assert res.info["collapse"] and res.metrics["offset_margin"] < 0
    good = evaluate(oracle, windows, bank, n_boot=0)
    assert good.offsets["c"]["0"] == pytest.approx(1.0, abs=1e-6) and not good.info["collapse"]
    assert good.offsets["n"]["0"] == len(windows)


def test_per_label_breakdown(bank, windows):
    res = evaluate(noisy_copy, windows, bank, n_boot=0)
    labels = bank.labels[windows.targets]
    for row in res.by_label:
        sel = np.array([(x or "(none)") == row["label"] for x in labels])
        assert row["n"] == sel.sum()
        assert row["hit@5"] == pytest.approx(res.per_query["hit@5"][sel].mean())
        assert row["cos"] == pytest.approx(res.per_query["cos"][sel].mean())
    assert {r["label"] for r in res.by_label} == {"history", "science", "(none)"}
    assert evaluate(noisy_copy, windows, bank, labels=False, n_boot=0).by_label == []


def test_intervals_bracket_every_rate(bank, windows):
    res = evaluate(noisy_copy, windows, bank, n_boot=200)
    for key in ("hit@1", "hit@5", "hit@10", "contain@50", "mrr@10", "cos", "ca_inbatch", "ca_other", "eff@5"):
        lo, hi = res.intervals[key]
        assert lo <= res.metrics[key] <= hi, key


# ------------------------------------------------------------------------------------------ predictors
class MeanModule(torch.nn.Module):
    """A tiny model with one parameter, to exercise the nn.Module path (device, eval mode, no_grad)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, ctx, mask):
        w = mask.float().unsqueeze(-1)
        out = self.scale * (ctx * w).sum(1) / w.sum(1)
        return out / out.norm(dim=-1, keepdim=True)


def test_module_and_callable_give_the_same_result_and_mode_is_restored(bank, windows):
    model = MeanModule().train()
    a = evaluate(model, windows, bank, n_boot=0, batch_size=7)
    assert model.training  # the trainer's model comes back in training mode

    def as_callable(batch):
        w = batch.mask.float().unsqueeze(-1)
        return ((batch.ctx * w).sum(1) / w.sum(1)).numpy()

    b = evaluate(as_callable, windows, bank, n_boot=0)
    for k in a.metrics:
        assert a.metrics[k] == pytest.approx(b.metrics[k], nan_ok=True), k


def test_bad_inputs_raise_clear_errors(make_bank, tmp_path, bank, windows):
    with pytest.raises(ConfigError, match="shape"):
        evaluate(lambda b: np.zeros((len(b), 3)), windows, bank)
    with pytest.raises(ConfigError, match="nn.Module"):
        evaluate("copy_last", windows, bank)
    with pytest.raises(ConfigError) as e:
        evaluate(oracle, windows, bank, index="ivf")
    assert str(e.value) == (
        f"--index ivf was asked for but bank {bank.path} has a flat index; build one with `lvmkit index build "
        f"{bank.path} --type ivf` or use --index flat for exact search"
    )
    with pytest.raises(ConfigError) as e:  # the CLI flag, not the Python keyword
        evaluate(oracle, windows, bank, index="hnsw2")
    assert str(e.value) == (
        "--index hnsw2 is not allowed; choose one of flat, ivf, hnsw (or leave it out: the bank's own index)"
    )
    with pytest.raises(ConfigError, match="no windows"):
        evaluate(oracle, WindowSet(bank, np.zeros(0, dtype=np.int64), CTX), bank)
    other = make_bank(tmp_path, articles=LENGTHS, dim=16, seed=4)
    with pytest.raises(ProvenanceError, match="target chunk ids would not match"):
        evaluate(oracle, windows, other)


def test_ivf_index_and_nprobe(bank, windows):
    save_index(bank, build_index(bank.vectors, type="ivf", nlist=8, nprobe=1))
    full = evaluate(oracle, windows, bank, index="ivf", nprobe=8, n_boot=0)
    assert full.metrics["hit@1"] == 1.0 and full.info == {**full.info, "index": "ivf", "nprobe": 8}
    narrow = evaluate(copy_last, windows, bank, index="ivf", n_boot=0)
    assert narrow.info["nprobe"] == 1  # the stored setting was restored after the nprobe=8 run
    exact = evaluate(copy_last, windows, bank, index="flat", n_boot=0)
    assert exact.info["index"] == "flat"
    assert narrow.metrics["contain@50"] <= exact.metrics["contain@50"]


# ------------------------------------------------------------------------------------------ outputs
def test_result_serialises_and_formats(bank, windows):
    res = evaluate(noisy_copy, windows, bank, n_boot=50, name="noisy")
    d = json.loads(json.dumps(res.to_dict(), default=_json_default))
    assert d["metrics"]["hit@5"] == res.metrics["hit@5"] and d["info"]["bank_id"] == bank.manifest.bank_id
    row = res.row()
    assert row["name"] == "noisy" and row["hit@5_lo"] <= row["hit@5"] <= row["hit@5_hi"]
    table = format_table({"noisy": res, "copy_last": evaluate(copy_last, windows, bank, n_boot=0)})
    lines = table.splitlines()
    assert lines[0].startswith("| model | hit@1 | hit@5") and lines[2].startswith("| noisy |")
    assert "(collapse)" in lines[3] and f"over {len(bank)} chunks" in table
    assert isinstance(res, EvalResult)


def test_separation_on_bank_matches_brute_force(bank):
    rng = np.random.default_rng(0)
    q = rng.normal(size=(6, 16)).astype(np.float32)
    pos = np.array([0, 5, 9, 20, 33, 40])
    got = separation_on_bank(q, pos, bank, n_neighbours=16)
    V = np.asarray(bank.vectors, dtype=np.float64)
    for i in range(6):
        s = V @ (q[i] / np.linalg.norm(q[i]))
        order = [r for r in np.argsort(-s) if r != pos[i]][:16]
        assert got[i] == pytest.approx(s[pos[i]] - s[order].mean(), abs=1e-5)


def test_measure_latency_against_a_fake_clock(bank, windows, monkeypatch):
    """A fake clock that only the predictor advances (3 ms per window): every request then takes exactly
    3 ms of forward and 0 ms of search, and throughput is 1 / 3 ms. The calls are counted too."""
    import types

    from lvmkit.eval import latency as L

    clock = {"t": 0.0}
    calls: list[int] = []

    def predictor(batch):
        calls.append(len(batch))
        clock["t"] += 0.003 * len(batch)
        return batch.target.numpy()

    monkeypatch.setattr(L, "time", types.SimpleNamespace(perf_counter=lambda: clock["t"]))
    lat = measure_latency(predictor, windows, bank, n=5, warmup=2, throughput_batch=8, throughput_queries=20)
    assert calls == [1] * 7 + [8] + [8, 8, 4]  # warm-up + timed requests, batched warm-up, 20 queries in 8s
    for ms in (lat.p50_ms, lat.p95_ms, lat.p99_ms, lat.forward_p50_ms):
        assert ms == pytest.approx(3.0, abs=1e-9)  # (float sums of 0.003 s steps)
    assert lat.search_p50_ms == 0.0
    assert lat.qps == pytest.approx(20 / (20 * 0.003))
    assert lat.n == 5 and lat.batch_size == 1 and lat.index == "flat"


# ------------------------------------------------------------------------------------------ suite
def test_suite_runs_baselines_and_oracle_on_the_same_windows(bank, windows):
    model = MeanModule()
    suite = evaluate_suite({"mean_module": model}, windows, bank, train_windows=windows, n_boot=100)
    assert list(suite) == ["mean_module", "copy_last", "mean_ctx", "exp_weighted", "ridge", "blend", "oracle"]
    assert suite.skipped == {}
    # the built-in copy_last equals the brute-force copy-last above
    ranks = brute_ranks(bank, all_predictions(windows, copy_last), windows.targets, exclude=True)
    assert suite["copy_last"].metrics["hit@5"] == pytest.approx(np.mean(ranks <= 5))
    # MeanModule computes exactly mean_ctx: same queries, same per-query hits
    np.testing.assert_array_equal(
        suite["mean_module"].per_query["hit@5"], suite["mean_ctx"].per_query["hit@5"]
    )
    assert suite["oracle"].metrics["hit@1"] == 1.0
    (c,) = suite.comparisons
    baselines = ("copy_last", "mean_ctx", "exp_weighted", "ridge", "blend")
    best = max(baselines, key=lambda b: suite[b].metrics["hit@5"])
    assert c.baseline == best and c.metric == "hit@5"
    assert c.diff == pytest.approx(suite["mean_module"].metrics["hit@5"] - suite[best].metrics["hit@5"])
    assert c.lo <= c.diff <= c.hi
    table = format_table(suite)
    assert f"mean_module vs best baseline {best}" in table and "| oracle |" in table
    assert (
        json.loads(json.dumps(suite.to_dict(), default=_json_default))["comparisons"][0]["model"]
        == "mean_module"
    )


def test_suite_without_train_windows_skips_ridge_with_reason(bank, windows):
    suite = evaluate_suite({}, windows, bank, n_boot=0)
    assert "ridge" not in suite and "training windows" in suite.skipped["ridge"]
    assert "blend" not in suite and "val_windows" in suite.skipped["blend"]
    assert "ridge skipped" in format_table(suite)
    with pytest.raises(ConfigError, match="collide"):
        evaluate_suite({"copy_last": copy_last}, windows, bank)
