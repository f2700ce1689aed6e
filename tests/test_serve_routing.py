"""Routing: route selection, the canary share (binomial bound), shadows, the latency guardrail, config errors."""

from __future__ import annotations

import math

import pytest

from lvmkit.errors import ConfigError
from lvmkit.serve.routing import Router, RoutingConfig, canary_bucket, load_routing


def make_router(**kw) -> Router:
    raw = {
        "runs": {"long": "baseline:copy_last", "short": "baseline:mean_ctx", "new": "baseline:exp_weighted"}
    }
    raw.update(default="long", **kw)
    return Router(RoutingConfig.model_validate(raw))


def test_routes_by_number_of_context_chunks():
    r = make_router(routes=[{"max_context": 8, "run": "short"}])
    for n in (1, 5, 8):
        assert r.choose("x", n).run == "short"
    for n in (9, 100):
        d = r.choose("x", n)
        assert (d.run, d.reason) == ("long", "default")


def test_first_matching_route_wins_and_min_context_bounds():
    r = make_router(
        routes=[{"min_context": 3, "max_context": 5, "run": "new"}, {"max_context": 8, "run": "short"}]
    )
    got = [r.choose("x", n).run for n in range(1, 11)]
    assert got == ["short", "short", "new", "new", "new", "short", "short", "short", "long", "long"]


def test_canary_share_within_binomial_bound_over_10000_ids():
    share, n = 0.05, 10_000
    r = make_router(canary={"run": "new", "share": share})
    hits = sum(r.choose(f"client-{i}", 3).run == "new" for i in range(n))
    sigma = math.sqrt(n * share * (1 - share))  # binomial standard deviation: 21.8 requests
    assert abs(hits - n * share) <= 4 * sigma, (hits, n * share, sigma)
    assert r.canary_state()["answered"] == hits


def test_canary_is_sticky_per_request_id_and_only_takes_default_traffic():
    r = make_router(routes=[{"max_context": 2, "run": "short"}], canary={"run": "new", "share": 0.5})
    ids = [f"id{i}" for i in range(200)]
    first = [r.choose(i, 10).run for i in ids]
    assert first == [r.choose(i, 10).run for i in ids]  # the same id always sees the same model
    assert {"new", "long"} == set(first)
    assert {r.choose(i, 1).run for i in ids} == {"short"}  # a route's traffic is never the canary's
    # the decision is the hash rule itself, computed independently
    assert first == ["new" if canary_bucket(i, "new") < 0.5 else "long" for i in ids]


def test_canary_share_edges():
    assert {make_router(canary={"run": "new", "share": 0.0}).choose(f"{i}", 1).run for i in range(500)} == {
        "long"
    }
    assert {make_router(canary={"run": "new", "share": 1.0}).choose(f"{i}", 1).run for i in range(500)} == {
        "new"
    }


def test_shadow_is_computed_but_never_answers():
    r = make_router(
        routes=[{"max_context": 2, "run": "short"}],
        canary={"run": "new", "share": 0.3},
        shadows=["short", "new"],
    )
    for i in range(2000):
        d = r.choose(f"r{i}", 1 + i % 6)
        assert d.run not in d.shadows
        assert set(d.shadows) | {d.run} >= {"short", "new"}
    only_shadow = make_router(shadows=["new"])
    assert all(only_shadow.choose(f"r{i}", 1 + i % 50).run == "long" for i in range(2000))


def test_guardrail_trips_on_an_injected_slow_canary():
    r = make_router(canary={"run": "new", "share": 0.5}, guardrail={"p95_factor": 1.2, "min_samples": 20})
    ids = [f"u{i}" for i in range(400)]
    canary_ids = [i for i in ids if r.choose(i, 1).run == "new"]
    for k in range(19):  # below min_samples: no judgement yet, however slow
        r.record("long", 10.0 + k % 3)
        r.record("new", 500.0)
    assert r.canary_state()["enabled"]
    r.record("long", 10.0)
    r.record("new", 500.0)  # the 20th sample of each: P95 500 ms > 1.2 x 12 ms
    state = r.canary_state()
    assert not state["enabled"]
    assert "P95" in state["reason"] and "new" in state["reason"] and state["tripped_at"]
    # every request goes to the default now, and says why
    decisions = [r.choose(i, 1) for i in canary_ids]
    assert {d.run for d in decisions} == {"long"}
    assert all("canary new is off" in d.reason for d in decisions)


def test_guardrail_holds_for_a_canary_within_the_factor():
    r = make_router(canary={"run": "new", "share": 0.5}, guardrail={"p95_factor": 1.2, "min_samples": 20})
    for k in range(300):
        r.record("long", 10.0 + k % 10)  # P95 ~ 19 ms
        r.record("new", 11.0 + k % 10)  # P95 ~ 20 ms: +5%, within +20%
    assert r.canary_state()["enabled"]
    assert r.info()["latency"]["new"]["n"] == 300


def test_rolling_window_is_bounded_and_percentiles_match_numpy():
    import numpy as np

    r = make_router(latency_window=100)
    values = np.random.default_rng(0).exponential(20.0, size=1000)
    for v in values:
        r.record("long", float(v))
    lat = r.latency("long")
    assert (lat["n"], lat["total"]) == (100, 1000)
    assert lat["p95_ms"] == pytest.approx(np.percentile(values[-100:], 95))
    assert lat["p50_ms"] == pytest.approx(np.percentile(values[-100:], 50))


def test_recovery_only_by_reset():
    r = make_router(canary={"run": "new", "share": 1.0}, guardrail={"p95_factor": 1.0, "min_samples": 1})
    r.record("long", 1.0)
    r.record("new", 2.0)
    assert r.choose("a", 1).run == "long"
    for _ in range(50):
        r.record("long", 100.0)  # the default getting slow does not re-enable the canary
    assert r.choose("a", 1).run == "long"
    r.reset_canary()
    assert r.choose("a", 1).run == "new"


def test_load_routing_resolves_paths_and_names_bad_fields(tmp_path):
    f = tmp_path / "routing.yaml"
    f.write_text(
        "runs: {a: runs/amn, b: /abs/gru, c: 'baseline:copy_last'}\ndefault: a\n"
        "canary: {run: b, share: 0.05}\nshadows: [c]\nguardrail: {p95_factor: 1.2}\n"
    )
    cfg = load_routing(f)
    assert cfg.runs == {"a": str(tmp_path / "runs/amn"), "b": "/abs/gru", "c": "baseline:copy_last"}
    assert cfg.all_runs() == ["a", "b", "c"]
    assert load_routing(f, ["canary.share=0.5"]).canary.share == 0.5

    cases = {
        "canary: {run: b, share: 1.5}": "canary.share",
        "canary: {run: b, shares: 0.1}": "canary.shares: unknown field; allowed in canary: run, share",
        "routes: [{max_context: 0, run: b}]": "routes.0.max_context",
        "routes: [{max_context: 2, run: zz}]": "routes names 'zz', not in runs",
        "canary: {run: a, share: 0.1}": "a canary must be another run",
        "guardrail: {p95_factor: 1.2}": "no canary",
        "shadow: [b]": "shadow: unknown field",
    }
    for extra, expect in cases.items():
        f.write_text(f"runs: {{a: x, b: y}}\ndefault: a\n{extra}\n")
        with pytest.raises(ConfigError, match="routing file") as e:
            load_routing(f)
        assert expect in str(e.value), (extra, str(e.value))
    with pytest.raises(ConfigError, match="does not exist"):
        load_routing(tmp_path / "missing.yaml")
