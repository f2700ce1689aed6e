"""Percentile curriculum windows (``6-10:8@p90-p99``): parsing, resolution against numpy, and the fill."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lvmkit.errors import ConfigError
from lvmkit.train.mining import (
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
    k = stage.factor(4) * 4
    lo, hi = np.percentile(brute_cosines(bank, art, pos, q, k), [90, 99])
    assert (resolved.lo, resolved.hi) == pytest.approx((lo, hi), abs=1e-6) and not resolved.pct
    assert info["percentiles"] == [90.0, 99.0] and info["candidate_factor"] == stage.factor(4)
    assert info["n_cosines"] == len(brute_cosines(bank, art, pos, q, k))
    # an absolute stage passes through unchanged
    plain = Stage(1, 3, 4, 0.1, 0.5)
    assert resolve_stage(plain, q, pos, art, search, lambda r: bank[r], 4)[0] is plain


def test_a_percentile_window_fills_the_wanted_count():
    bank, art, pos, q, search = toy(seed=1)
    stage = Stage(1, 1, 8, 80.0, 95.0, pct=True)
    resolved, info = resolve_stage(stage, q, pos, art, search, lambda r: bank[r], candidate_factor=4)
    ids, stats = mine_negatives(
        q, np.arange(len(q)), pos, art, search, lambda r: bank[r], 8, resolved.lo, resolved.hi,
        candidate_factor=info.pop("candidate_factor"),
    )  # fmt: skip
    stats.update(info)
    assert (
        stats["kept"] >= 0.9 * len(q) * 8
    )  # the window holds what was asked for (padding makes up the rest)
    kept_cos = [float(q[i] @ bank[r]) for i in range(len(q)) for r in ids[i] if r >= 0]
    assert min(kept_cos) >= resolved.lo - 1e-6
    assert "p80-p95 of" in format_mining_stats(stats)
