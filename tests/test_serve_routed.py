"""The routed server end to end (FastAPI TestClient, hash-encoder bank): which run answers, shadows computed and
logged but never returned, /v1/info's routing and canary state, the request log, refusals."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from serve_env import make_corpus_bank  # noqa: E402

from lvmkit.errors import ConfigError  # noqa: E402
from lvmkit.serve.app import create_app  # noqa: E402
from lvmkit.serve.requestlog import LogStats, read_log  # noqa: E402
from lvmkit.serve.routing import RoutingConfig, canary_bucket  # noqa: E402
from lvmkit.serve.service import Service  # noqa: E402

ROUTING = {
    "runs": {"cur": "baseline:copy_last", "new": "baseline:mean_ctx", "shadow": "baseline:exp_weighted"},
    "default": "cur",
    "routes": [{"min_context": 6, "run": "shadow"}],
    "canary": {"run": "new", "share": 0.5},
    "shadows": ["shadow"],
    "guardrail": {"p95_factor": 1000.0, "min_samples": 5},
}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("routed")
    bank = make_corpus_bank(tmp)
    svc = Service.open(bank.path, routing=RoutingConfig.model_validate(ROUTING), log_requests=tmp / "log")
    with TestClient(create_app(svc)) as client:
        yield svc, client, tmp / "log"


def test_each_response_names_the_run_the_router_chose_and_never_a_shadow(served):
    svc, client, _ = served
    texts = svc.bank.texts(range(8))
    for i in range(30):
        rid = f"client-{i}"
        r = client.post("/v1/next", json={"context": texts[:3], "k": 5, "request_id": rid})
        assert r.status_code == 200, r.text
        expect = "new" if canary_bucket(rid, "new") < 0.5 else "cur"
        assert r.json()["run"] == expect
    long = client.post("/v1/next", json={"context": texts[:7], "k": 5, "request_id": "x"}).json()
    assert long["run"] == "shadow"  # a route may send traffic to a run that shadows others' requests
    info = client.get("/v1/info").json()
    routing = info["routing"]
    assert routing["config"]["default"] == "cur" and routing["canary"]["enabled"] is True
    assert routing["canary"]["answered"] == sum(canary_bucket(f"client-{i}", "new") < 0.5 for i in range(30))
    assert routing["latency"]["shadow"]["total"] == 31  # 30 shadow computations + 1 answer
    assert routing["shadow_agreement"]["shadow"]["requests"] == 30
    roles = {m["name"]: m["role"] for m in info["models"]}
    assert roles == {"cur": "default", "new": "canary", "shadow": "shadow"}


def test_the_log_holds_answers_and_shadow_answers_only(served):
    svc, client, log_dir = served
    texts = svc.bank.texts(range(4))
    client.post("/v1/next", json={"context": texts, "k": 3, "request_id": "logged-1"})
    client.post("/v1/search", json={"text": texts[0], "k": 2})
    svc.request_log.close()
    stats = LogStats()
    rows = list(read_log(log_dir, stats))
    assert stats.torn == []
    answer = next(r for r in rows if r["kind"] == "answer" and r["request"].get("request_id") == "logged-1")
    assert answer["request"]["context"] == texts and answer["response"]["run"] in ("cur", "new")
    shadow = next(r for r in rows if r["kind"] == "shadow" and r["request_id"] == "logged-1")
    assert shadow["run"] == "shadow" and len(shadow["predicted"]) == 3
    # the shadow's answer is the exp_weighted search with the answer's exclusions, computed independently
    from lvmkit.serve.predictors import load_predictor

    vec = load_predictor("baseline:exp_weighted", svc.bank).predict(svc.encoder.encode(texts))
    excluded = svc.rows_with_texts(texts)
    _, ids = svc.index.search(vec[None], 3, exclude=[excluded])
    assert [p["chunk_id"] for p in shadow["predicted"]] == ids[0].tolist()
    assert any(r["kind"] == "answer" and r["endpoint"] == "/v1/search" for r in rows)
    for r in rows:
        assert set(r) <= {
            "v",
            "time",
            "kind",
            "endpoint",
            "request",
            "response",
            "request_id",
            "run",
            "latency_ms",
            "predicted",
        }


def test_routing_and_run_together_are_refused(tmp_path):
    bank = make_corpus_bank(tmp_path)
    with pytest.raises(ConfigError, match="not both"):
        Service.open(bank.path, run="baseline:copy_last", routing=RoutingConfig.model_validate(ROUTING))


def test_cli_names_the_bad_routing_field(tmp_path):
    from typer.testing import CliRunner

    from lvmkit.cli.main import app

    bad = tmp_path / "routing.yaml"
    bad.write_text(
        "runs: {a: 'baseline:copy_last', b: 'baseline:mean_ctx'}\ndefault: a\ncanary: {run: b, share: 2}\n"
    )
    r = CliRunner().invoke(app, ["serve", str(tmp_path), "--routing", str(bad)])
    assert r.exit_code == 2 and "canary.share" in r.output, r.output
    r = CliRunner().invoke(app, ["serve", str(tmp_path), "--set", "canary.share=0.1"])
    assert r.exit_code == 2 and "needs --routing" in r.output, r.output
