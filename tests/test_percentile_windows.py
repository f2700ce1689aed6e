"""Percentile curriculum windows (``6-10:8@p90-p99``): parsing, resolution against numpy, and the fill."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lvmkit.errors import ConfigError
from lvmkit.train.mining import (
    PERCENTILE_DEPTH,
    Stage,
    format_mining_stats,
    mine_negatives,
    neighbour_cosines,
    parse_schedule,
    resolve_stage,
)


def test_parse_percentile_stages_and_round_trip():
    s = parse_schedule("1-5:none;6-10:8@p90-p99;11-12:16@0.8-0.9")
    assert s.stages[1] == Stage(6, 10, 8, 90.0, 99.0, pct=True)
    assert s.stages[2] == Stage(11, 12, 16, 0.8, 0.9)
    assert parse_schedule(str(s)) == s
    plan = s.describe()
    assert "between the p90 and p99 of the query-neighbour cosines" in plan and "[0.8, 0.9]" in plan
    assert s.stages[1].factor(4) == math.ceil(200 / 9) and s.stages[2].factor(4) == 4
    assert Stage(1, 1, 8, 50.0, 100.0, pct=True).factor(10) == 10  # a configured larger factor stays


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("1:8@p90-0.99", "both ends as percentiles"),
        ("1:8@p90-p101", "percentiles must lie in [0, 100]"),
        ("1:8@p99-p90", "is empty"),
        ("1:8@q90-q99", "COUNT@pLO-pHI"),
    ],
)
def test_bad_percentile_stages_name_the_problem(text, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        parse_schedule(text)


def toy(seed: int = 0, n_articles: int = 40, length: int = 10, dim: int = 12):
    rng = np.random.default_rng(seed)
    bank = rng.normal(size=(n_articles * length, dim)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    art = np.repeat(np.arange(n_articles), length)
    pos = rng.choice(len(bank), 30, replace=False)
    q = bank[pos] + 0.5 * rng.normal(size=(30, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)

    def search(queries, k):
        s = queries @ bank.T
        ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(s, ids, axis=1), ids

    return bank, art, pos, q, search


def brute_cosines(bank, art, pos, q, k, near_dup=0.98):
    out = []
    for i in range(len(q)):
        s = bank @ q[i]
        for r in np.argsort(-s, kind="stable")[:k]:
            if r == pos[i] or art[r] == art[pos[i]]:
                continue
            if bank[r] @ bank[pos[i]] > near_dup or s[r] > near_dup:
                continue
            out.append(s[r])
    return np.array(out)


def test_neighbour_cosines_and_resolution_match_numpy():
    bank, art, pos, q, search = toy()
    got = neighbour_cosines(q, pos, art, search, lambda r: bank[r], k=50)
    want = brute_cosines(bank, art, pos, q, 50)
    np.testing.assert_allclose(np.sort(got), np.sort(want), atol=1e-6)
    stage = Stage(1, 3, 4, 90.0, 99.0, pct=True)
    resolved, info = resolve_stage(stage, q, pos, art, search, lambda r: bank[r], candidate_factor=4)
    ref = brute_cosines(bank, art, pos, q, PERCENTILE_DEPTH)  # the one reference: top-DEPTH safe neighbours
    lo, hi = np.percentile(ref, [90, 99])
    assert (resolved.lo, resolved.hi) == pytest.approx((lo, hi), abs=1e-6) and not resolved.pct
    assert info["percentiles"] == [90.0, 99.0] and info["candidate_factor"] == stage.factor(4)
    assert info["n_cosines"] == len(ref) and info["depth"] == PERCENTILE_DEPTH
    assert info["in_window_per_query"] == pytest.approx(np.sum((ref >= lo) & (ref <= hi)) / len(q), abs=1e-9)
    # an absolute stage passes through unchanged
    plain = Stage(1, 3, 4, 0.1, 0.5)
    assert resolve_stage(plain, q, pos, art, search, lambda r: bank[r], 4)[0] is plain


def test_a_percentile_window_fills_the_wanted_count():
    bank, art, pos, q, search = toy(seed=1)
    stage = Stage(1, 1, 8, 80.0, 95.0, pct=True)
    resolved, info = resolve_stage(stage, q, pos, art, search, lambda r: bank[r], candidate_factor=4)
    ids, stats = mine_negatives(
        q, np.arange(len(q)), pos, art, search, lambda r: bank[r], 8, resolved.lo, resolved.hi,
        candidate_factor=info.pop("candidate_factor"), candidates=info.pop("candidates"),
    )  # fmt: skip
    stats.update(info)
    assert (
        stats["kept"] >= 0.9 * len(q) * 8
    )  # the window holds what was asked for (padding makes up the rest)
    kept_cos = [float(q[i] @ bank[r]) for i in range(len(q)) for r in ids[i] if r >= 0]
    assert min(kept_cos) >= resolved.lo - 1e-6
    assert "p80-p95 of" in format_mining_stats(stats)


def resolve(stage: Stage, seed: int = 0, candidate_factor: int = 4):
    bank, art, pos, q, search = toy(seed)
    return resolve_stage(stage, q, pos, art, search, lambda r: bank[r], candidate_factor=candidate_factor)


def test_the_window_does_not_depend_on_count_or_factor():
    """The same percentiles resolve to the same cosines whatever the stage's count and candidate factor (the
    defect: the reference pool was factor x count deep, so p90-p99 moved with the count)."""
    windows = {
        (count, cf): resolve(Stage(1, 1, count, 90.0, 99.0, pct=True), candidate_factor=cf)[0]
        for count in (1, 2, 8, 16, 64)
        for cf in (1, 4, 50)
    }
    first = next(iter(windows.values()))
    assert all((w.lo, w.hi) == (first.lo, first.hi) for w in windows.values())


def test_higher_percentiles_resolve_to_a_window_at_least_as_high():
    """Monotone: a later stage asking for higher percentiles never gets an easier window (epoch 3's
    16@p95-p99.5 once resolved below epoch 2's 8@p90-p99)."""
    pairs = [(50, 80), (80, 90), (90, 99), (95, 99.5), (97, 100)]
    for seed in (0, 1, 2):
        for count in (1, 8, 16):
            res = [resolve(Stage(1, 1, count, lo, hi, pct=True), seed)[0] for lo, hi in pairs]
            for a, b in zip(res, res[1:], strict=False):
                assert b.lo >= a.lo and b.hi >= a.hi
    e2 = resolve(Stage(2, 2, 8, 90.0, 99.0, pct=True))[0]
    e3 = resolve(Stage(3, 3, 16, 95.0, 99.5, pct=True))[0]
    assert e3.lo >= e2.lo and e3.hi >= e2.hi


def test_the_pool_width_rule():
    """``Stage.candidates``: factor x count, and for a percentile window at least PERCENTILE_DEPTH."""
    assert Stage(1, 1, 8, 0.5, 0.9).candidates(4) == 32  # absolute window: the candidate_factor rule
    assert Stage(1, 1, 8, 90.0, 99.0, pct=True).candidates(4) == math.ceil(200 / 9) * 8  # 176 > depth
    assert Stage(1, 1, 2, 90.0, 99.0, pct=True).candidates(4) == PERCENTILE_DEPTH  # 44 < depth
    assert Stage(1, 1, 2, 0.0, 100.0, pct=True).candidates(80) == 160  # a larger configured factor stays
    # resolve_stage reports it and mine_negatives searches exactly that many candidates
    bank, art, pos, q, search = toy()
    seen = []

    def spy(queries, k):
        seen.append(k)
        return search(queries, k)

    stage = Stage(1, 1, 2, 90.0, 99.0, pct=True)
    resolved, info = resolve_stage(stage, q, pos, art, spy, lambda r: bank[r], candidate_factor=4)
    assert info["candidates"] == PERCENTILE_DEPTH and seen == [PERCENTILE_DEPTH]
    _, stats = mine_negatives(
        q, np.arange(len(q)), pos, art, spy, lambda r: bank[r], 2, resolved.lo, resolved.hi,
        candidate_factor=info["candidate_factor"], candidates=info["candidates"],
    )  # fmt: skip
    assert seen[1:] == [PERCENTILE_DEPTH] and stats["pool"] == PERCENTILE_DEPTH
    assert stats["candidates"] == len(q) * PERCENTILE_DEPTH
    # without ``candidates`` the plain rule: candidate_factor x count
    _, stats = mine_negatives(q, np.arange(len(q)), pos, art, spy, lambda r: bank[r], 2, 0.0, 1.0)
    assert seen[-1] == 8 and stats["pool"] == 8


def test_a_window_too_narrow_for_the_count_warns_and_still_mines():
    narrow = Stage(3, 3, 16, 95.0, 99.5, pct=True)  # 4.5% of 100 neighbours: ~4.5 per query < 16
    resolved, info = resolve(narrow)
    assert info["in_window_per_query"] < 16
    assert "3:16@p95.0-p99.5" in info["warning"] and "smaller count" in info["warning"]
    stats = {"pairs": 30, "count": 16, "kept": 0, "padded": 0, "missing": 0, "mean_cos_kept": 0.0,
             **{f"dropped_{r}": 0 for r in ("positive", "same_article", "near_dup", "window")}, **info}  # fmt: skip
    line = format_mining_stats(stats)
    assert "WARNING: mining stage 3:16@p95.0-p99.5" in line and f"top-{PERCENTILE_DEPTH} safe" in line
    wide = Stage(3, 3, 4, 50.0, 99.0, pct=True)  # ~49 per query >= 4
    _, info = resolve(wide)
    assert info["in_window_per_query"] >= 4 and "warning" not in info


# ------------------------------------------------------------------ per-query rank windows (8@r10-r50)
def test_parse_rank_stages_round_trip_and_describe():
    s = parse_schedule("1:none;2-3:8@r10-r50")
    assert s.stages[1] == Stage(2, 3, 8, 10.0, 50.0, rank=True)
    assert str(s) == "1:none;2-3:8@r10-r50" and parse_schedule(str(s)) == s
    assert "safe neighbours ranked 10-50" in s.describe()
    assert s.stages[1].candidates(4) == 100  # 2 x HI: the pool reaches rank HI after the drops
    assert Stage(1, 1, 40, 1.0, 50.0, rank=True).candidates(4) == 160  # factor x count when larger


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("1:8@r0-r50", "whole numbers from 1"),
        ("1:8@r2.5-r50", "whole numbers from 1"),
        ("1:8@r50-r10", "is empty"),
        ("1:8@r10-r14", "hold 5 neighbours, fewer than the 8 wanted"),
        ("1:8@r10-p50", "both as ranks"),
    ],
)
def test_bad_rank_stages_name_the_problem(text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_schedule(text)


def brute_rank_negatives(bank, art, pos, q, lo, hi, count, near_dup=0.98):
    """Each query's safe neighbours in score order (ties to the lower id), ranks lo..hi, the first count."""
    out = []
    for i in range(len(q)):
        s = bank @ q[i]
        safe = [
            r
            for r in np.argsort(-s, kind="stable")
            if r != pos[i]
            and art[r] != art[pos[i]]
            and bank[r] @ bank[pos[i]] <= near_dup
            and s[r] <= near_dup
        ]
        out.append(safe[lo - 1 : hi][:count])
    return out


def test_a_rank_window_fills_every_pair_with_the_brute_force_negatives():
    bank, art, pos, q, search = toy(seed=2)
    stage = parse_schedule("1:6@r5-r20").stages[0]
    _, info = resolve_stage(stage, q, pos, art, search, lambda r: bank[r], candidate_factor=4)
    assert info["ranks"] == [5, 20] and info["candidates"] == 40
    ids, stats = mine_negatives(
        q, np.arange(len(q)), pos, art, search, lambda r: bank[r], stage.count, stage.lo, stage.hi,
        candidates=info["candidates"], by_rank=True,
    )  # fmt: skip
    want = brute_rank_negatives(bank, art, pos, q, 5, 20, 6)
    assert [list(row) for row in ids] == [list(w) for w in want]
    assert stats["kept"] == 6 * len(q) and stats["padded"] == 0 and stats["missing"] == 0
    line = format_mining_stats(stats)
    assert "mined 6@r5-r20 for 30 pairs" in line and "kept 180" in line
