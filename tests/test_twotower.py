"""The two-tower task: GradCache gradients equal full-batch ones, false negatives get -inf logits (brute
force), mined negatives stay with their own pair through sampler reshuffles, the abort rule fires exactly when
specified, and `lvmkit pairs` + `lvmkit train` run end to end (finish, abort, resume)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from lvmkit.artifacts import read_jsonl
from lvmkit.cli.main import app
from lvmkit.data import PairSet
from lvmkit.errors import ConfigError
from lvmkit.losses import info_nce
from lvmkit.models import build_model
from lvmkit.models.towers import build_doc_tower
from lvmkit.tasks.twotower.config import AbortConfig
from lvmkit.tasks.twotower.loss import twotower_logits, twotower_loss
from lvmkit.tasks.twotower.task import TwoTowerTask, abort_due
from lvmkit.train.checkpoint import load_checkpoint
from lvmkit.train.config import load_config
from lvmkit.train.gradcache import cached_forward, split_batch

runner = CliRunner()
D = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def unit(x):
    return F.normalize(x, dim=-1)


# ------------------------------------------------------------------------------------------ GradCache
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_gradcache_gives_the_full_batch_gradients(dropout):
    """Query tower in sub-batches of 3 through GradCache vs the plain computation, with an adapter document
    tower, a memory bank, mined negatives and the margin term in the loss."""
    torch.manual_seed(0)
    query = build_model("bigru_pool", D, hidden=12, layers=2, dropout=dropout).train()
    doc = build_doc_tower("adapter", D, hidden=8)
    torch.nn.init.normal_(doc.down.weight, std=0.1)
    B, T, M = 10, 5, 3
    ctx, mask = unit(torch.randn(B, T, D)), torch.ones(B, T, dtype=torch.bool)
    mask[2, :3] = False
    target, article = unit(torch.randn(B, D)), torch.arange(B) % 4
    memory, mem_art = unit(torch.randn(7, D)), torch.arange(7) % 5
    mined, mined_art = unit(torch.randn(B, M, D)), torch.full((B, M), 9)
    valid = torch.rand(B, M) > 0.3
    params = [*query.parameters(), *doc.parameters()]

    def loss_of(q):
        pos = doc(target)
        logits = twotower_logits(
            q, pos, article, 0.05, 0.98, doc(memory), mem_art, doc(mined.reshape(-1, D)).reshape(B, M, D),
            mined_art, valid,
        )  # fmt: skip
        return twotower_loss(logits, 0.05, margin=0.2)[0]

    chunks = split_batch(B, 3)
    assert [(s.start, s.stop) for s in chunks] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    torch.manual_seed(1)
    cached = loss_of(cached_forward(lambda s: query(ctx[s], mask[s]), chunks, list(query.parameters())))
    cached.backward()
    got = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    torch.manual_seed(1)  # the same dropout draws: the plain pass runs the same sub-batches in the same order
    plain_q = torch.cat([query(ctx[s], mask[s]) for s in chunks]) if dropout else query(ctx, mask)
    plain = loss_of(plain_q)
    plain.backward()
    assert float(cached.detach()) == pytest.approx(float(plain.detach()), abs=1e-6)
    for p, g in zip(params, got, strict=True):
        torch.testing.assert_close(g, p.grad, atol=1e-5, rtol=0)


def test_gradcache_under_no_grad_is_a_plain_forward():
    query = build_model("bigru_pool", D, hidden=8)
    ctx = unit(torch.randn(4, 3, D))
    with torch.no_grad():
        out = cached_forward(lambda s: query(ctx[s], None), split_batch(4, 2), list(query.parameters()))
        torch.testing.assert_close(out, query(ctx, None))
    assert not out.requires_grad


# ----------------------------------------------------------------------------------- false negatives
def brute_force_logits(q, pos, art, tau, fn, shared, shared_art, mined, mined_art, valid):
    B = len(q)
    cands = [(pos[j], int(art[j]), j) for j in range(B)] + [
        (v, int(a), -1) for v, a in zip(shared, shared_art, strict=True)
    ]
    out = np.zeros((B, len(cands) + mined.shape[1]))
    for i in range(B):
        for j, (c, a, own) in enumerate(cands):
            false_neg = own != i and (a == int(art[i]) or float(pos[i] @ c) > fn)
            out[i, j] = -math.inf if false_neg else float(q[i] @ c) / tau
        for m in range(mined.shape[1]):
            c = mined[i, m]
            bad = not valid[i, m] or int(mined_art[i, m]) == int(art[i]) or float(pos[i] @ c) > fn
            out[i, len(cands) + m] = -math.inf if bad else float(q[i] @ c) / tau
    return out


def test_false_negatives_get_minus_inf_logits():
    """Memory-bank entries from the query's article or with cos > 0.98 to its positive are masked (and so are
    in-batch and mined ones by the same rule); everything else keeps cos / tau. Checked entry by entry."""
    torch.manual_seed(0)
    B, M = 6, 2
    q, pos = unit(torch.randn(B, D)), unit(torch.randn(B, D))
    art = torch.tensor([0, 0, 1, 2, 3, 3])
    memory = unit(torch.randn(12, D))
    mem_art = torch.arange(12) + 10
    mem_art[0], mem_art[1] = 1, 3  # same article as queries 2 and 4, 5
    memory[2] = unit(pos[3] + 0.01 * torch.randn(D))  # near-duplicate of query 3's positive
    memory[3] = pos[0]  # the positive itself, seen in an earlier batch
    mined = unit(torch.randn(B, M, D))
    mined_art = torch.full((B, M), 50)
    mined[1, 0] = unit(pos[1] + 0.005 * torch.randn(D))
    mined_art[4, 1] = 3
    valid = torch.ones(B, M, dtype=torch.bool)
    valid[5, 1] = False
    got = twotower_logits(q, pos, art, 0.07, 0.98, memory, mem_art, mined, mined_art, valid)
    want = brute_force_logits(q, pos, art, 0.07, 0.98, memory, mem_art, mined, mined_art, valid)
    np.testing.assert_array_equal(np.isinf(got.numpy()), np.isinf(want))
    np.testing.assert_allclose(got.numpy()[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-5, atol=1e-5)
    assert np.isinf(want[:, B : B + 4]).sum() >= 4  # the planted memory false negatives are among them
    assert np.isinf(want).sum() > 0 and np.isfinite(np.diag(want)).all()


def test_same_rule_and_value_as_the_shared_info_nce():
    torch.manual_seed(1)
    q, pos = unit(torch.randn(8, D)), unit(torch.randn(8, D))
    art = torch.tensor([0, 0, 1, 1, 2, 3, 4, 4])
    extra, extra_art = unit(torch.randn(5, D)), torch.tensor([0, 9, 2, 9, 9])
    for shared in (None, (extra, extra_art)):
        logits = twotower_logits(q, pos, art, 0.05, 0.98, *(shared or (None, None)))
        ours = twotower_loss(logits, 0.05)[0]
        kw = {"extra_negatives": extra, "neg_article": extra_art} if shared else {}
        theirs = info_nce(q, pos, 0.05, pred_article=art, dup_threshold=0.98, **kw)
        assert float(ours) == pytest.approx(float(theirs), rel=1e-6)


def test_margin_term_against_a_direct_computation():
    torch.manual_seed(2)
    q, pos = unit(torch.randn(5, D)), unit(torch.randn(5, D))
    art = torch.arange(5)
    logits = twotower_logits(q, pos, art, 0.1)
    total, parts = twotower_loss(logits, 0.1, margin=0.3, margin_weight=2.0)
    s = (q @ pos.T).numpy()
    gaps = [s[i, i] - max(s[i, j] for j in range(5) if j != i) for i in range(5)]
    margin = np.mean([max(0.0, 0.3 - g) for g in gaps])
    assert parts["margin"] == pytest.approx(margin, abs=1e-6)
    nce = F.cross_entropy(torch.from_numpy(s) / 0.1, torch.arange(5))
    assert float(total) == pytest.approx(float(nce) + 2.0 * margin, abs=1e-5)
    assert parts["negatives"] == 4 and 0 <= parts["acc"] <= 1


# ---------------------------------------------------------------------------------------- the bank
CTX = 3


def planted_bank(make_bank, tmp_path, n_main=40, seed=0):
    """``n_main`` articles of CTX + 1 chunks (one pair each: context = chunks 0..2, target = chunk 3) and, for
    each, a 2-chunk decoy article whose chunks sit at cos 0.92 and 0.88 to the main article's LAST context
    chunk. With copy_last as the query tower, mining 2@0.84-0.96 must return exactly those two decoys."""
    rng = np.random.default_rng(seed)
    dim = 48
    main = rng.standard_normal((n_main, CTX + 1, dim))
    main /= np.linalg.norm(main, axis=-1, keepdims=True)
    vectors, lengths, decoys = [], [], {}
    for a in range(n_main):
        vectors += list(main[a])
        lengths.append(CTX + 1)
    for a in range(n_main):
        last = main[a, CTX - 1]
        rows = []
        for c in (0.92, 0.88):
            u = rng.standard_normal(dim)
            u -= (u @ last) * last
            u /= np.linalg.norm(u)
            rows.append(len(vectors))
            vectors.append(c * last + math.sqrt(1 - c * c) * u)
        lengths.append(2)
        decoys[a * (CTX + 1) + CTX] = rows  # target row of main article a -> its decoy rows, best first
    bank = make_bank(tmp_path, articles=lengths, vectors=np.asarray(vectors, dtype=np.float32))
    return bank, decoys


def tiny_overrides(bank, *extra):
    return [
        f"bank={bank.path}",
        f"data.ctx={CTX}",
        "data.batch_size=8",
        "data.max_per_article=1",
        "model.kwargs={hidden: 8, layers: 1, dropout: 0.0}",
        "twotower.pair_stride=1",
        "twotower.eval_stride=1",
        "twotower.memory=32",
        "twotower.eval_ks=[1, 5, 10]",
        "twotower.compare_on=recall@10",
        "early_stopping.metric=val_recall@10",
        "optim.warmup_steps=1",
        "optim.lr=0.003",
        "checkpoint_every_steps=1",
        *extra,
    ]


def curriculum_task(make_bank, tmp_path, epochs: int, schedule: str):
    """A two-tower task on the planted bank with this curriculum, its run in tmp_path/run: (task, bank,
    decoys, run)."""
    from lvmkit.train import distributed as Dist
    from lvmkit.train.runs import RunPaths

    bank, decoys = planted_bank(make_bank, tmp_path)
    cfg = load_config(
        "configs/twotower_curriculum.yaml",
        tiny_overrides(bank, f"optim.epochs={epochs}", f"twotower.schedule={schedule}"),
    )
    run = RunPaths(tmp_path / "run")
    run.root.mkdir()
    return TwoTowerTask.from_config(cfg, run, Dist.DistInfo(), np.random.default_rng(0)), bank, decoys, run


def test_mined_negatives_stay_with_their_pair_after_reshuffles(make_bank, tmp_path):
    task, bank, decoys, run = curriculum_task(make_bank, tmp_path, 3, "0:none;1-3:2@0.84-0.96")
    task.query = build_model("copy_last", bank.dim)  # any LVM can be the query tower; this one is predictable
    assert len(task.train) >= 20
    orders = []
    for epoch in (1, 2, 3):
        info = task.on_epoch_start(epoch)
        assert task.store.epoch == epoch and task.store.stats["kept"] == 2 * len(task.train), info
        order = []
        for idx in task.sampler:
            batch = task.make_batch(np.asarray(idx))
            targets = batch.windows.target_ids.numpy()
            np.testing.assert_array_equal(batch.neg_ids.numpy(), [decoys[t] for t in targets])
            np.testing.assert_allclose(batch.negatives.numpy(), bank.get(np.asarray([decoys[t] for t in targets]).ravel()).reshape(len(idx), 2, -1))  # fmt: skip
            order += [int(t) for t in targets]
        orders.append(order)
    assert orders[1] != orders[2] and sorted(orders[1]) == sorted(orders[2])  # reshuffled, same pairs
    lines = read_jsonl(run.root / "mining.jsonl")
    assert [r["epoch"] for r in lines] == [1, 2, 3] and all(r["dropped_same_article"] > 0 for r in lines)


def test_a_percentile_stage_logs_its_depth_pool_and_a_too_narrow_window(make_bank, tmp_path):
    """mine_epoch resolves over the fixed top-PERCENTILE_DEPTH reference, searches Stage.candidates deep, and
    the mining log says so; a window too narrow for its count is a warning in the epoch's log, not an error."""
    from lvmkit.train.mining import PERCENTILE_DEPTH

    task, _, _, run = curriculum_task(make_bank, tmp_path, 2, "1:2@p0-p100;2:8@p99-p100")
    infos = [task.on_epoch_start(epoch) for epoch in (1, 2)]
    rows = read_jsonl(run.root / "mining.jsonl")
    assert [r["depth"] for r in rows] == [PERCENTILE_DEPTH] * 2
    cf = max(task.tt.candidate_factor, 2)  # p0-p100 raises the factor to 2 x 100 / 100 at least
    assert [r["pool"] for r in rows] == [max(PERCENTILE_DEPTH, cf * 2), 200 * 8]  # p99-p100: factor 200
    assert rows[0]["candidate_factor"] == cf and "warning" not in rows[0] and "WARNING" not in infos[0]
    assert "2:8@p99.0-p100.0" in rows[1]["warning"] and infos[1]["WARNING"] == rows[1]["warning"]
    assert f"top-{PERCENTILE_DEPTH} safe neighbours" in infos[1]["mining"]


def test_a_rank_stage_fills_every_pair_through_the_task(make_bank, tmp_path):
    """mine_epoch passes a rank window through to the miner: every pair gets its count, the log says r-LO-HI."""
    task, _, _, run = curriculum_task(make_bank, tmp_path, 2, "1:none;2:3@r2-r8")
    info = task.on_epoch_start(2)
    row = read_jsonl(run.root / "mining.jsonl")[0]
    assert row["by_rank"] and row["ranks"] == [2, 8] and row["pool"] == max(16, 3 * task.tt.candidate_factor)
    assert row["kept"] == 3 * len(task.train) and row["padded"] == 0, info
    assert "mined 3@r2-r8" in info["mining"]
    # the task state after a mining epoch that kept negatives goes through a checkpoint (weights_only) intact
    from lvmkit.train.checkpoint import save_checkpoint

    save_checkpoint(run.root / "t.pt", {"task": task.state_dict()})
    back = torch.load(run.root / "t.pt", weights_only=True)["task"]
    assert back["negatives"]["stats"] == json.loads(json.dumps(task.store.stats))
    np.testing.assert_array_equal(back["negatives"]["ids"].numpy(), task.store.ids)


# ---------------------------------------------------------------------------------------- abort rule
@pytest.mark.parametrize(
    "values, rule, due",
    [
        ([(9, 0.0), (10, 0.0)], AbortConfig(after_epoch=10), False),  # low, but not after epoch 10
        ([(10, 0.0), (11, 0.0)], AbortConfig(after_epoch=10), False),  # epoch 10 does not count
        ([(11, 0.0), (12, 0.03)], AbortConfig(after_epoch=10), True),
        ([(11, 0.0), (12, 0.04)], AbortConfig(after_epoch=10), False),  # 0.04 is not below 0.04
        ([(11, 0.01), (12, 0.5), (13, 0.01)], AbortConfig(after_epoch=10), False),  # not consecutive
        ([(11, 0.01), (12, 0.5), (13, 0.01), (14, 0.02)], AbortConfig(after_epoch=10), True),
        ([(3, 0.01)], AbortConfig(after_epoch=2, consecutive=1), True),
        ([(3, float("nan")), (4, 0.0)], AbortConfig(after_epoch=2), True),
        ([(3, 0.01), (4, 0.01)], AbortConfig(after_epoch=2, consecutive=3), False),
    ],
)
def test_abort_rule_fires_exactly_when_specified(values, rule, due):
    assert abort_due(values, rule) is due


# --------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({"tau": -1}, "twotower.tau: Input should be greater than 0"),
        ({"temperature": 0.1}, "twotower.temperature: unknown field; allowed in twotower: pairs,"),
        ({"schedule": "0-5:none;5-9:8@0.8-0.9"}, "twotower.schedule: Value error, mining schedule stages"),
        (
            {"abort": {"below": 0.1, "after": 3}},
            "twotower.abort.after: unknown field; allowed in twotower.abort: metric, below",
        ),
        (
            {"doc_kwargs": {"hiden": 8}},
            "twotower.doc_kwargs.hiden: unknown field; allowed in twotower.doc_kwargs: hidden",
        ),
        ({"doc_tower": "mlp"}, "twotower.doc_tower: Input should be 'identity' or 'adapter'"),
    ],
)
def test_twotower_section_errors_name_the_field(raw, fragment):
    """The twotower section is typed: load_config names the dotted field and what is allowed."""
    from lvmkit.train.config import config_from_dict

    with pytest.raises(ConfigError) as e:
        config_from_dict({"task": "twotower", "bank": "b", "twotower": raw})
    assert fragment in str(e.value)


# ------------------------------------------------------------------------------------ end to end (CLI)
def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_pairs_cli_then_train_cli_with_curriculum(make_bank, tmp_path):
    bank, _ = planted_bank(make_bank, tmp_path, n_main=60)
    res = invoke("pairs", bank.path, "--ctx", CTX, "--stride", 1, "--max-per-article", 30, "--target-pairs", 30,
                 "--out", tmp_path / "pairs")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "target" in res.output and "kept" in res.output
    ps = PairSet.load(tmp_path / "pairs", bank)
    assert 0 < len(ps) <= 30 and ps.manifest["arguments"]["ctx"] == CTX
    assert (tmp_path / "pairs/split.json").exists()

    out = tmp_path / "run"
    sets = tiny_overrides(bank, "optim.epochs=3", f"twotower.pairs={tmp_path / 'pairs'}",
                          "twotower.schedule=0-1:none;2-3:2@0.5-0.99", "twotower.gradcache_chunk=3",
                          "twotower.margin=0.1", "twotower.doc_tower=adapter")  # fmt: skip
    res = invoke(
        "train", "configs/twotower_curriculum.yaml", "--out", out, "--quiet", *[f"--set={s}" for s in sets]
    )
    assert res.exit_code == 0, res.output
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "finished", status
    epochs = [r for r in read_jsonl(out / "history.jsonl") if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    for key in (
        "val_recall@10",
        "val_mrr@10",
        "val_sep_margin",
        "val_exp_weighted_recall@10",
        "val_copy_last_recall@10",
    ):
        assert all(isinstance(r[key], float) for r in epochs), key
    assert [r["epoch"] for r in read_jsonl(out / "mining.jsonl")] == [2, 3]
    assert "mined 2@0.5-0.99" in (out / "train.log").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["results"]) == {"bigru_pool", "exp_weighted", "copy_last", "mean_ctx"}
    assert metrics["comparisons"][0]["metric"] == "recall@10" and metrics["doc_tower"] == "adapter"
    assert "| bigru_pool |" in (out / "metrics.md").read_text()
    ckpt = load_checkpoint(out / "best.pt")
    assert set(ckpt["modules"]) == {"model", "doc", "memory"} and ckpt["doc_tower"]["name"] == "adapter"
    # `lvmkit eval RUN` reproduces the run's own final evaluation exactly: the same test pairs, the adapter's
    # document bank, the same heuristics, numbers and comparison (the bank defaults to the run's)
    res = invoke("eval", out, "--latency-n", 0)
    assert res.exit_code == 0, res.output
    again = json.loads((out / "eval-test/metrics.json").read_text())
    assert again["n_queries"] == metrics["n_queries"] and again["task"] == "twotower"
    assert again["results"] == metrics["results"]
    assert again["comparisons"] == metrics["comparisons"]
    assert "recall@10 95% CI" in res.output and "| bigru_pool |" in (out / "eval-test/metrics.md").read_text()
    res = invoke("runs", "status", out)
    assert res.exit_code == 0 and "finished" in res.output, res.output


def test_abort_stops_the_run_with_abort_pt_and_triage(make_bank, tmp_path):
    bank, _ = planted_bank(make_bank, tmp_path)
    out = tmp_path / "run"
    sets = tiny_overrides(bank, "optim.epochs=4", "twotower.schedule=0-1:none;2-4:4@0.84-0.96",
                          "twotower.abort={below: 5.0, after_epoch: 1, consecutive: 2}")  # fmt: skip
    res = invoke(
        "train", "configs/twotower_curriculum.yaml", "--out", out, "--quiet", *[f"--set={s}" for s in sets]
    )
    assert res.exit_code == 3, res.output  # stopped: see triage.md
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "stopped_gate" and "sep_margin below 5" in status["message"]
    assert [r["epoch"] for r in read_jsonl(out / "history.jsonl") if r["kind"] == "epoch"] == [1, 2, 3]
    abort = load_checkpoint(out / "abort.pt")
    assert abort["progress"]["epoch"] == 3 and "model" in abort["modules"]
    triage = (out / "triage.md").read_text()
    assert "aborted after epoch 3" in triage and "epoch 2: " in triage and "epoch 3: " in triage
    assert "twotower.schedule=0-1:none;2-4:4@0.84-0.94" in triage  # narrower window
    assert "twotower.schedule=0-1:none;2-4:2@0.84-0.96" in triage  # fewer negatives
    assert "twotower.tau=0.045" in triage  # lower temperature
    assert not (out / "metrics.json").exists()


def test_resume_after_a_crash_matches_an_uninterrupted_run(make_bank, tmp_path):
    """Killed mid-epoch during a mining epoch, resumed from last.pt: the negative store, the memory bank and
    the abort memory come back, and the final weights equal those of a run that was never interrupted."""
    from lvmkit.train.loop import train

    bank, _ = planted_bank(make_bank, tmp_path)
    cfg = load_config("configs/twotower_curriculum.yaml",
                      tiny_overrides(bank, "optim.epochs=3", "twotower.schedule=0-1:none;2-3:2@0.5-0.99",
                                     "final_eval=false"))  # fmt: skip
    train(cfg, tmp_path / "straight")

    class Crash(Exception):
        pass

    def crash_at(kind, info):
        if kind == "step" and info["epoch"] == 2 and info["batch"] == 2:
            raise Crash

    with pytest.raises(Crash):
        train(cfg, tmp_path / "crashed", on_event=crash_at)
    status = train(cfg, tmp_path / "crashed", resume=True)
    assert status["state"] == "finished"
    a, b = load_checkpoint(tmp_path / "straight/last.pt"), load_checkpoint(tmp_path / "crashed/last.pt")
    for name in a["modules"]:
        for k, v in a["modules"][name].items():
            torch.testing.assert_close(b["modules"][name][k], v, atol=0, rtol=0)
    assert "restored from the checkpoint" in (tmp_path / "crashed/train.log").read_text()

    # the shared tools read two-tower runs too: `lvmkit eval` and `lvmkit diagnose model` score the query tower;
    # their numbers are checked against a brute-force numpy search with the tower loaded by hand
    run = tmp_path / "straight"
    res = invoke("eval", run, "--bank", bank.path, "--latency-n", 0, "--max-queries", 20)
    assert res.exit_code == 0, res.output
    got = json.loads((run / "eval-test/metrics.json").read_text())["results"]["bigru_pool"]["metrics"]
    test_q, test_t, test_last = brute_queries(run, bank, "test")
    assert json.loads((run / "eval-test/metrics.json").read_text())["n_queries"] == len(test_t) < 20
    V = np.asarray(bank.vectors, dtype=np.float64)
    ranks = []
    for q, t in zip(test_q, test_t, strict=True):
        scores = V @ q
        scores[t - CTX : t] = -np.inf  # the window's own context
        ranks.append(int((scores > scores[t]).sum()))
    for k in (1, 5, 10):
        assert got[f"recall@{k}"] == pytest.approx(np.mean(np.array(ranks) < k), abs=1e-12), k
    res = invoke("diagnose", "model", run, "--max-queries", 20)  # the run's bank by default
    diag = {f["name"]: f for f in json.loads((run / "diagnose/diagnosis.json").read_text())["findings"]}
    q, t, last = brute_queries(run, bank, "val")
    sims = q @ V.T
    sep = [s[r] - np.sort(np.delete(s, r))[-16:].mean() for s, r in zip(sims, t, strict=True)]
    assert diag["separation_margin"]["value"] == pytest.approx(np.mean(sep), abs=1e-5)
    collapse = np.mean(np.sum(q * V[t], 1)) - np.mean(np.sum(q * V[last], 1))
    assert diag["collapse_margin"]["value"] == pytest.approx(collapse, abs=1e-5)
    fails = collapse < 0 or diag["same_article_negatives"]["status"] == "fail"
    fails |= diag["prediction_variance"]["value"] < 0.01
    assert res.exit_code == (1 if fails else 0), res.output


def brute_queries(run, bank, split: str):
    """Query-tower outputs (float64, unit) for every pair of ``split`` in the planted bank, found without the
    task spec: each main article of CTX + 1 chunks in that split gives one pair (target = its last chunk);
    returns (queries, target rows, last context rows)."""
    from lvmkit.data import Split

    sp = Split.load(run / "split.json", bank)
    lengths = np.diff(bank.article_starts)[bank.article_codes]
    t = np.array([r for r in sp.rows(split) if bank.chunk_index[r] == CTX and lengths[r] == CTX + 1])
    ckpt = load_checkpoint(run / "best.pt")
    tower = build_model(**ckpt["model"])
    tower.load_state_dict(ckpt["modules"]["model"])
    ctx = torch.from_numpy(np.stack([np.asarray(bank.vectors[r - CTX : r]) for r in t]))
    with torch.no_grad():
        q = tower.eval()(ctx, torch.ones(len(t), CTX, dtype=torch.bool)).double().numpy()
    return q, t, t - 1


def test_loss_section_and_unknown_early_stopping_metric_are_refused(make_bank, tmp_path):
    bank, _ = planted_bank(make_bank, tmp_path, n_main=20)
    res = invoke("train", "configs/twotower_plain.yaml", "--out", tmp_path / "a",
                 *[f"--set={s}" for s in tiny_overrides(bank, "loss={cos: 1.0, infonce: 0.1}")])  # fmt: skip
    assert res.exit_code == 2 and "loss: unknown field (loss is the section of task: lvm)" in res.output, (
        res.output
    )
    res = invoke("train", "configs/twotower_plain.yaml", "--out", tmp_path / "b",
                 *[f"--set={s}" for s in tiny_overrides(bank, "early_stopping.metric=val_hit@5")])  # fmt: skip
    assert res.exit_code == 2 and "val_recall@10" in res.output, res.output


# ---------------------------------------------------------------------------------------------------- DDP
def _average_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    import types

    import torch.distributed as dist

    from lvmkit.train.distributed import DistInfo

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        lin = torch.nn.Linear(3, 1, bias=False)
        torch.nn.init.ones_(lin.weight)
        fake = types.SimpleNamespace(dist=DistInfo(rank=rank, world_size=world), modules=lambda: lin)
        TwoTowerTask.distribute(fake, wrap=None)
        x = torch.tensor([[1.0, 2.0, 3.0]])
        ((rank + 1) * lin(x)).sum().backward()  # local gradient (rank + 1) * x
        first = lin.weight.grad.clone()
        ((rank + 1) * lin(2 * x)).sum().backward()  # a second micro-batch accumulates
        torch.save({"first": first, "second": lin.weight.grad.clone()}, f"{out_file}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_gradients_are_averaged_across_ranks_and_accumulations(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_average_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2, join=True)
    x = torch.tensor([[1.0, 2.0, 3.0]])
    for rank in range(2):
        got = torch.load(f"{tmp_path / 'out'}.{rank}")
        torch.testing.assert_close(got["first"], 1.5 * x)  # mean of 1x and 2x
        torch.testing.assert_close(got["second"], 1.5 * x + 3.0 * x)  # plus the mean of 2x and 4x


@pytest.mark.slow
def test_torchrun_two_processes_with_mining(make_bank, tmp_path):
    import os
    import subprocess
    import sys

    bank, _ = planted_bank(make_bank, tmp_path)
    out = tmp_path / "ddp"
    sets = tiny_overrides(bank, "device=cpu", "optim.epochs=2", "twotower.schedule=1:none;2:2@0.5-0.99",
                          "twotower.gradcache_chunk=3", "final_eval=false")  # fmt: skip
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "lvmkit.cli.main", "train", "configs/twotower_curriculum.yaml", "--out", str(out), "--quiet",
        *[f"--set={s}" for s in sets],
    ]  # fmt: skip
    res = subprocess.run(
        cmd, capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "finished" and status["world_size"] == 2
    log = (out / "train.log").read_text()
    n_pairs = int(log.split("pairs train ")[1].split(",")[0])
    (mined,) = read_jsonl(out / "mining.jsonl")
    assert mined["epoch"] == 2 and mined["pairs"] == n_pairs  # both ranks' shares, merged
