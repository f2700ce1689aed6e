"""The HTTP API on a real hash-encoder bank and a tiny trained GRU: answers checked against brute-force numpy,
every kind of bad input a 4xx with a message, the runs directory sealed, the token, and startup refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from serve_env import make_corpus_bank, train_tiny_run  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from lvmkit.cli.main import app as cli_app  # noqa: E402
from lvmkit.encode import load_encoder  # noqa: E402
from lvmkit.errors import ConfigError, ProvenanceError  # noqa: E402
from lvmkit.serve.app import create_app  # noqa: E402
from lvmkit.serve.limits import check_exposure, is_loopback  # noqa: E402
from lvmkit.serve.schemas import Limits  # noqa: E402
from lvmkit.serve.service import Service  # noqa: E402
from lvmkit.train.checkpoint import load_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
MAX_CONTEXT = 6
MAX_BODY = 8 * 1024


@pytest.fixture(scope="module")
def env(tmp_path_factory, one_thread):
    tmp = tmp_path_factory.mktemp("serve")
    bank = make_corpus_bank(tmp)
    run = train_tiny_run(bank, tmp / "runs" / "gru", 2, "gates=[{epoch: 1, metric: val_cos, min: -1.0}]")
    (tmp / "outside").mkdir()
    (tmp / "outside" / "status.json").write_text('{"state": "finished"}')  # a "run" beside runs/, unreachable
    svc = Service.open(
        bank.path, str(run), limits=Limits(max_context_chunks=MAX_CONTEXT, max_body_bytes=MAX_BODY)
    )
    return {"tmp": tmp, "bank": bank, "run": run, "svc": svc, "client": TestClient(create_app(svc))}


def brute_force(bank, query: np.ndarray, k: int, exclude=()) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(bank.vectors, dtype=np.float64) @ np.asarray(query, dtype=np.float64)
    scores[list(exclude)] = -np.inf
    order = np.argsort(-scores, kind="stable")[:k]
    return order, scores[order]


def assert_top_k(hits: list[dict], bank, query: np.ndarray, k: int, exclude=()) -> None:
    """The hits are a top k of the brute-force ranking: the same scores in order (ties may come in any order),
    each hit's score is its own inner product, and no excluded chunk is among them."""
    _, best = brute_force(bank, query, k, exclude)
    ids = [h["chunk_id"] for h in hits]
    own = np.asarray(bank.vectors, dtype=np.float64)[ids] @ np.asarray(query, dtype=np.float64)
    np.testing.assert_allclose([h["score"] for h in hits], best, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(own, best, rtol=1e-5, atol=1e-6)
    assert len(set(ids)) == k and not set(ids) & set(exclude)


def test_search_matches_brute_force(env):
    bank, client = env["bank"], env["client"]
    text = bank.texts([17])[0] + " extra words"
    r = client.post("/v1/search", json={"text": text, "k": 7})
    assert r.status_code == 200
    body = r.json()
    assert_top_k(body["hits"], bank, load_encoder("hash:64").encode([text])[0], 7)
    assert body["hits"][0]["chunk_id"] == 17
    first = body["hits"][0]
    row = bank.chunks.slice(first["chunk_id"], 1).to_pylist()[0]
    assert (first["title"], first["article_id"], first["chunk_index"], first["text"]) == (
        row["title"],
        row["article_id"],
        row["chunk_index"],
        row["text"],
    )
    assert set(body["timings_ms"]) == {"encode", "search"}


def test_next_from_a_paragraph_matches_the_model_and_copy_last(env):
    bank, client, run = env["bank"], env["client"], env["run"]
    rows = [40, 41, 42, 43]  # article a5, sentences 0..3 (one paragraph)
    paragraph = " ".join(bank.texts(rows))
    r = client.post("/v1/next", json={"paragraph": paragraph, "k": 5, "request_id": "abc"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["run"] == "gru" and body["request_id"] == "abc"
    assert body["context"] == bank.texts(rows)  # the bank's own chunker split it back into its chunks
    assert body["excluded_chunk_ids"] == rows and body["context_used"] == 3
    assert set(body["timings_ms"]) == {"encode", "predict", "search", "total"}

    model, _ = load_model(run / "best.pt")
    ctx = torch.from_numpy(np.asarray(bank.vectors[rows[-3:]], dtype=np.float32))[None]
    with torch.no_grad():
        pred = model(ctx, torch.ones(1, 3, dtype=torch.bool))[0].numpy()
    assert_top_k(body["predicted"], bank, pred / np.linalg.norm(pred), 5, exclude=rows)
    assert_top_k(body["copy_last"], bank, bank.vectors[rows[-1]], 5, exclude=rows)


def test_next_keeps_context_chunks_when_asked_and_pads_short_contexts(env):
    bank, client = env["bank"], env["client"]
    texts = bank.texts([60])
    body = client.post("/v1/next", json={"context": texts, "k": 3, "exclude_context": False}).json()
    assert body["copy_last"][0]["chunk_id"] == 60 and body["excluded_chunk_ids"] == []
    assert body["context_used"] == 1
    # the last ctx chunks decide: more context in front changes nothing for a ctx-3 model
    long = client.post("/v1/next", json={"context": bank.texts([80, 81, 82, 83, 84]), "k": 5}).json()
    short = client.post("/v1/next", json={"context": bank.texts([82, 83, 84]), "k": 5}).json()
    assert [h["chunk_id"] for h in long["predicted"]] == [h["chunk_id"] for h in short["predicted"]]


def test_info_health_and_runs(env):
    client, bank = env["client"], env["bank"]
    info = client.get("/v1/info").json()
    assert info["bank"]["bank_id"] == bank.manifest.bank_id and info["bank"]["chunks"] == len(bank)
    assert info["encoder"]["name"] == "lvmkit/hashing-64" and info["index"]["type"] == "flat"
    assert info["limits"]["max_context_chunks"] == MAX_CONTEXT and info["limits"]["max_k"] == 1000
    assert info["models"][0]["name"] == "gru" and info["models"][0]["same_bank"] is True
    assert info["protocol"]["name"] == "open"
    assert client.get("/v1/health").json() == {"status": "ok", "bank_chunks": len(bank), "runs": ["gru"]}

    runs = client.get("/v1/runs").json()
    assert [r["name"] for r in runs["runs"]] == ["gru"]
    s = runs["runs"][0]
    assert (s["state"], s["epoch"], s["epochs"], s["has_report"]) == ("finished", 2, 2, True)
    detail = client.get("/v1/runs/gru").json()
    assert [r["epoch"] for r in detail["epochs"]] == [1, 2]
    assert detail["gates"][0]["metric"] == "val_cos" and detail["gates"][0]["held"] is True
    assert "gru" in detail["results"] and "copy_last" in detail["results"]
    report = client.get("/v1/runs/gru/report")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert "gru" in report.text and "<script" not in report.text


def test_page_and_offline_docs(env):
    client = env["client"]
    page = client.get("/")
    assert page.status_code == 200 and "Playground" in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    docs = client.get("/docs").text
    assert "http://" not in docs.replace("http://testserver", "") and "https://" not in docs  # no CDN
    assert client.get("/openapi.json").json()["paths"]["/v1/next"]


BAD_BODIES = [
    ("/v1/search", {"text": "", "k": 3}, 422, "text"),
    ("/v1/search", {"text": "   \n", "k": 3}, 422, "empty"),
    ("/v1/search", {"text": "x", "k": 0}, 422, "k"),
    ("/v1/search", {"text": "x", "k": 1001}, 422, "k"),
    ("/v1/search", {"text": "x", "extra": 1}, 422, "extra"),
    ("/v1/next", {"context": ["a"] * (MAX_CONTEXT + 1)}, 422, f"at most {MAX_CONTEXT}"),
    ("/v1/next", {"context": []}, 422, "context"),
    ("/v1/next", {"context": ["ok", " "]}, 422, "context[1]"),
    ("/v1/next", {"context": ["a"], "paragraph": "b"}, 422, "exactly one"),
    ("/v1/next", {"k": 3}, 422, "exactly one"),
    ("/v1/next", {"paragraph": "!!! ...", "k": 2000}, 422, "k"),
]


@pytest.mark.parametrize(("path", "body", "status", "message"), BAD_BODIES)
def test_bad_bodies_are_4xx_with_a_message(env, path, body, status, message):
    r = env["client"].post(path, json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_too_many_chunks_from_a_paragraph(env):
    paragraph = " ".join(f"Sentence number {i} is here." for i in range(MAX_CONTEXT + 2))
    r = env["client"].post("/v1/next", json={"paragraph": paragraph})
    assert r.status_code == 422 and f"{MAX_CONTEXT + 2} context chunks" in r.json()["detail"]


def test_raw_bodies_over_the_limit_non_utf8_and_bad_json(env):
    client = env["client"]
    json_ct = {"content-type": "application/json"}
    big = b'{"text": "' + b"a" * MAX_BODY + b'"}'
    r = client.post("/v1/search", content=big, headers=json_ct)
    assert r.status_code == 413 and f"{MAX_BODY:,} bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit is counted while reading
        for _ in range(4):
            yield b"a" * (MAX_BODY // 2)

    assert client.post("/v1/search", content=chunks(), headers=json_ct).status_code == 413
    r = client.post("/v1/search", content=b'{"text": "caf\xe9"}', headers=json_ct)
    assert r.status_code == 400 and "UTF-8" in r.json()["detail"]
    r = client.post("/v1/search", content=b'{"text": ', headers=json_ct)
    assert r.status_code == 422 and r.json()["detail"]
    r = client.post("/v1/search", content=b"text=hello", headers={"content-type": "text/plain"})
    assert 400 <= r.status_code < 500


@pytest.mark.parametrize(
    "name", ["nope", "..", ".hidden", "..%2Foutside", "%2E%2E", "a%2F..%2F..%2Foutside", "~root"]
)
def test_runs_outside_the_runs_dir_are_unreachable(env, name):
    r = env["client"].get(f"/v1/runs/{name}")
    assert 400 <= r.status_code < 500 and r.status_code != 401
    assert "outside" not in r.text or "no run named" in r.text
    r = env["client"].get(f"/v1/runs/{name}/report")
    assert 400 <= r.status_code < 500


def test_unknown_run_name_is_404_listing_the_runs(env):
    r = env["client"].get("/v1/runs/outside")
    assert r.status_code == 404 and "runs: gru" in r.json()["detail"]


def test_lvmkit_errors_become_4xx(make_bank, tmp_path):
    bank = make_bank(tmp_path, articles=[4, 4], dim=16)  # chunker "synthetic": cannot split a paragraph
    svc = Service(bank, load_encoder("hash:16"), _copy_last(bank), None, Limits())
    client = TestClient(create_app(svc))
    r = client.post("/v1/next", json={"paragraph": "One. Two."})
    assert r.status_code == 422 and "send 'context'" in r.json()["detail"]
    assert client.post("/v1/next", json={"context": ["One."], "k": 3}).status_code == 200
    r = client.get("/v1/runs/x")
    assert r.status_code == 404 and "--runs-dir" in r.json()["detail"]
    assert client.get("/v1/runs").json() == {"runs_dir": None, "runs": []}


@pytest.mark.parametrize("batch_search", [False, True])
def test_a_damaged_row_is_an_error_not_an_answer(make_bank, tmp_path, batch_search):
    """Serve's searches (direct or micro-batched) get VectorBank.search's score check: a row that the open-time
    sample missed and that scores more than any unit vector can is named in a 4xx, never served as the top hit."""
    from lvmkit.bank import VectorBank
    from lvmkit.bank.checks import SAMPLE_ROWS

    n = SAMPLE_ROWS + 400
    made = make_bank(tmp_path, articles=[n // 2, n - n // 2], dim=16)
    sampled = set(np.unique(np.linspace(0, n - 1, SAMPLE_ROWS).astype(np.int64)).tolist())
    row = next(r for r in range(1, n) if r not in sampled)
    text = "a query about nothing in particular"
    encoder = load_encoder("hash:16")
    col = int(np.argmax(encoder.encode([text])[0]))  # the row scores ~1e6 times this (positive) component
    vectors = np.load(made.path / "vectors.npy", mmap_mode="r+")
    vectors[row, col] = 1e6
    vectors.flush()
    del vectors
    bank = VectorBank.open(made.path)  # the cheap open-time sample does not see the row
    svc = Service(bank, encoder, _copy_last(bank), None, Limits(), batch_search=batch_search)
    client = TestClient(create_app(svc))
    for route, body in (("/v1/search", {"text": text, "k": 3}), ("/v1/next", {"context": [text], "k": 3})):
        r = client.post(route, json=body)
        # the server's file is damaged: a 409 naming it, neither "not found" nor a 500
        assert r.status_code == 409, (route, r.text)
        assert f"vectors.npy is damaged: row {row} scored" in r.json()["detail"], route
        assert "--check full" in r.json()["detail"]


def _copy_last(bank):
    from lvmkit.serve.predictors import SingleRun, load_predictor

    return SingleRun(load_predictor("baseline:copy_last", bank))


def test_token_guards_every_route_but_health(env):
    client = TestClient(create_app(env["svc"], token="s3cret"))
    assert client.get("/v1/health").status_code == 200
    assert client.get("/").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        assert client.get("/v1/info", headers=headers).status_code == 401
        assert client.post("/v1/search", json={"text": "x"}, headers=headers).status_code == 401
    ok = {"Authorization": "Bearer s3cret"}
    assert client.get("/v1/info", headers=ok).json()["auth"] == "bearer token"
    assert client.post("/v1/search", json={"text": "x", "k": 1}, headers=ok).status_code == 200


def test_exposure_needs_a_token():
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert is_loopback(host)
        check_exposure(host, None)
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org"):
        assert not is_loopback(host)
        with pytest.raises(ConfigError, match="LVMKIT_TOKEN"):
            check_exposure(host, None)
        check_exposure(host, "t")
    result = CliRunner().invoke(cli_app, ["serve", "nowhere", "--host", "0.0.0.0"], env={"LVMKIT_TOKEN": ""})
    assert result.exit_code == 2 and "token" in result.output


def test_a_run_from_another_encoder_is_refused_at_startup(env, tmp_path):
    other = make_corpus_bank(tmp_path, encoder="hash:32")
    with pytest.raises(ProvenanceError) as e:
        Service.open(other.path, str(env["run"]))
    assert "lvmkit/hashing-64" in str(e.value) and "lvmkit/hashing-32" in str(e.value)
    result = CliRunner().invoke(cli_app, ["serve", str(other.path), "--run", str(env["run"]), "--port", "0"])
    assert result.exit_code == 2
    assert "lvmkit/hashing-64" in result.output and "lvmkit/hashing-32" in result.output


def test_runs_given_by_name_and_baselines(env):
    svc = Service.open(env["bank"].path, "gru", runs_dir=env["tmp"] / "runs")
    assert svc.models.names() == ["gru"]
    svc = Service.open(env["bank"].path, "baseline:exp_weighted")
    assert svc.models.names() == ["baseline:exp_weighted"] and svc.runs_dir is None
    with pytest.raises(ConfigError, match="servable baselines"):
        Service.open(env["bank"].path, "baseline:ridge")


def test_text_lookup_matches_a_scan_with_duplicates():
    from types import SimpleNamespace

    import pyarrow as pa

    from lvmkit.serve.service import TextLookup

    rng = np.random.default_rng(0)
    texts = [f"sentence {i}" for i in rng.integers(0, 40, size=200)]  # many duplicates
    lookup = TextLookup(SimpleNamespace(chunks=pa.table({"text": texts})))
    arr = np.asarray(texts, dtype=object)
    for _ in range(50):
        query = [f"sentence {i}" for i in rng.integers(0, 50, size=4)]  # some absent
        assert lookup.rows(query).tolist() == np.flatnonzero(np.isin(arr, query)).tolist()
