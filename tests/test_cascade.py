"""The cascade: per-stage Contain@K and R@k against a brute-force numpy cascade on a toy bank, the ablation, the
gates and the CLI, and the refusals (unknown stage, growing k, a reranker from another bank or protocol), each with
nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from lvmkit.cascade.config import CascadeConfig, cascade_from_dict, load_cascade
from lvmkit.cascade.evaluate import evaluate_cascade
from lvmkit.cli.main import app
from lvmkit.data.splits import make_split
from lvmkit.data.windows import make_windows
from lvmkit.errors import ConfigError, ProvenanceError
from lvmkit.eval.protocol import IN_ARTICLE, OPEN, ProtocolError
from lvmkit.heads.reranker import fit_reranker

CTX = 3


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    from conftest import build_bank, random_walk_vectors

    return build_bank(tmp_path_factory.mktemp("cascade"), [12] * 60, vectors=random_walk_vectors(60, 12, 16))


def config(bank, stages, **kw):
    raw = {"name": "t", "bank": str(bank.path), "ctx": CTX, "max_queries": 80, "latency_n": 5, "nprobe": None}
    return cascade_from_dict({**raw, **kw, "stages": stages})


HEURISTIC = [
    {"stage": "retrieve", "source": "baseline:exp_weighted", "k": 30},
    {"stage": "lvm_rerank", "run": "baseline:copy_last", "k": 10},
    {"stage": "lvm_rerank", "run": "baseline:mean_ctx", "k": 3},
]


def brute_cascade(bank, protocol, n_queries=80):
    """The heuristic cascade in plain numpy: full sorts, context rows removed, then two reorders."""
    split = make_split(bank)
    ws = make_windows(bank, split, "test", ctx=CTX, pad=True).sample(n_queries, 2)
    v, codes = np.asarray(bank.vectors, dtype=np.float64), bank.article_codes
    alpha = 0.1
    out = []
    for t in ws.targets:
        ctx = list(range(t - CTX, t))
        w = alpha * (1 - alpha) ** np.arange(CTX - 1, -1, -1)
        q = (w[:, None] * v[ctx]).sum(0) / w.sum()
        allowed = [r for r in range(len(bank)) if r not in ctx and (protocol == OPEN or codes[r] == codes[t])]
        s1 = sorted(allowed, key=lambda r: -v[r] @ q)[:30]
        s2 = sorted(s1, key=lambda r: -v[r] @ v[ctx[-1]])[:10]
        s3 = sorted(s2, key=lambda r: -v[r] @ unit(v[ctx].mean(0)))[:3]
        out.append((t, s1, s2, s3))
    return out


@pytest.mark.parametrize("protocol", [OPEN, IN_ARTICLE])
def test_per_stage_metrics_match_brute_force(bank, protocol, tmp_path):
    o = evaluate_cascade(config(bank, HEURISTIC, protocol=protocol), out=tmp_path / "o")
    brute = brute_cascade(bank, protocol)
    assert o.info["n_queries"] == len(brute) and o.info["protocol"] == protocol
    for i, stage in enumerate(o.stages):
        lists = [b[1 + i] for b in brute]
        contain = np.mean([t in lst for (t, *_), lst in zip(brute, lists, strict=True)])
        r1 = np.mean([lst[:1] == [t] for (t, *_), lst in zip(brute, lists, strict=True)])
        assert stage["contain@k"] == pytest.approx(contain), (i, stage["stage"])
        assert stage["hit@1"] == pytest.approx(r1), i
    c50 = np.mean([t in s1 for t, s1, _, _ in brute])  # k=30 < 50: the retrieval's whole pool
    assert o.gate_metrics["contain@50"] == pytest.approx(c50)
    assert o.stages[-1]["eff@5"] == pytest.approx(o.stages[-1]["hit@5"] / c50)
    assert [a["removed"] for a in o.ablation] == ["1:lvm_rerank", "2:lvm_rerank"]
    # without stage 2, the final stage is stage 1 (k 10)
    assert o.ablation[1]["contain@k"] == pytest.approx(o.stages[1]["contain@k"]) and o.ablation[1]["k"] == 10
    assert set(o.baselines) == {"copy_last", "mean_ctx", "exp_weighted"}
    assert {"gather", "0:retrieve", "total"} <= set(o.latency)
    data = json.loads((tmp_path / "o" / "cascade.json").read_text())
    assert data["protocol"] == protocol
    assert f"protocol {protocol}" in (tmp_path / "o" / "cascade.md").read_text()


def test_gates_and_cli(bank, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "cli", "bank": str(bank.path), "ctx": CTX, "max_queries": 40,
                                    "latency_n": 3, "nprobe": None, "stages": HEURISTIC}))  # fmt: skip
    gates = tmp_path / "g.yaml"
    gates.write_text("contain@50: {min: 0.0}\nhit@5: {min: 1.01}\np95_ms: {max: 100000}\n")
    res = CliRunner().invoke(app, ["eval", str(path), "--gates", str(gates), "--out", str(tmp_path / "out")])
    assert res.exit_code == 1, res.output
    assert "gates failed" in res.output and "Contain@K" in res.output
    assert json.loads((tmp_path / "out" / "cascade.json").read_text())["gates"]["ok"] is False
    gates.write_text("contain@50: {min: 0.0}\n")
    res = CliRunner().invoke(app, ["eval", str(path), "--gates", str(gates), "--out", str(tmp_path / "out2")])
    assert res.exit_code == 0, res.output
    assert load_cascade(path, ["stages.1.k=5"]).stages[1].k == 5


def test_bad_configs_are_refused_and_nothing_is_written(bank, tmp_path, make_bank):
    def refused(stages, match, exc=ConfigError, **kw):
        out = tmp_path / "never"
        with pytest.raises(exc, match=match):
            evaluate_cascade(
                stages if isinstance(stages, CascadeConfig) else config(bank, stages, **kw), out=out
            )
        assert not out.exists()

    with pytest.raises(ConfigError, match=r"stages\[1\]\.stage: unknown stage 'rerank_magic'"):
        config(bank, [HEURISTIC[0], {"stage": "rerank_magic", "k": 5}])
    with pytest.raises(ConfigError, match=r"stages\[2\]\.k=20 is larger than the previous stage's k=10"):
        config(bank, [HEURISTIC[0], HEURISTIC[1], {**HEURISTIC[2], "k": 20}])
    with pytest.raises(ConfigError, match="first stage must be 'retrieve'"):
        config(bank, HEURISTIC[1:])
    with pytest.raises(ConfigError, match=r"stages\.1\.run"):
        config(bank, [HEURISTIC[0], {"stage": "lvm_rerank", "k": 5}])
    refused([HEURISTIC[0], {**HEURISTIC[1], "head": "ridge"}], r"stages\[1\].*head 'ridge' applies to a run")
    refused(HEURISTIC, "window_ctx=2 is shorter than the 3 context chunks", window_ctx=2)
    # rerankers: another protocol, another bank, another retriever
    rr = fit_reranker("baseline:mean_ctx", bank, protocol=IN_ARTICLE, k=10, ctx=CTX, max_train=100, max_val=40,
                      max_test=40, kinds=("logistic",))  # fmt: skip
    rr.save(tmp_path / "rr")
    stage = {"stage": "reranker", "path": str(tmp_path / "rr" / "heads" / "reranker-in-article.json"), "k": 5}
    refused([{**HEURISTIC[0], "k": 10}, stage], "never mixed", ProtocolError, protocol=OPEN)
    refused(
        [{**HEURISTIC[0], "k": 10, "source": "baseline:copy_last"}, stage],
        "fitted on pools of",
        protocol=IN_ARTICLE,
    )
    other = make_bank(tmp_path, [12] * 60, dim=16, seed=9)
    o_cfg = cascade_from_dict(
        {"bank": str(other.path), "protocol": IN_ARTICLE, "ctx": CTX, "stages": [HEURISTIC[0], stage]}
    )
    refused(o_cfg, "refit it on this bank", ProvenanceError)
    # and the reranker works where it belongs
    o = evaluate_cascade(
        config(bank, [{**HEURISTIC[0], "k": 10}, stage], protocol=IN_ARTICLE), out=tmp_path / "ok"
    )
    assert o.stages[1]["stage"] == "reranker" and o.stages[1]["contain@k"] <= o.stages[0]["contain@k"]
