"""The bank commands through typer's CliRunner: index build, search, bank info, and user-error handling
(one message, exit status 2, no traceback)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from lvmkit.bank import VectorBank
from lvmkit.cli.main import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, *fragments: str) -> None:
    """Exit 2, the message printed, and no traceback (an LvmkitError, not a crash)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_help_lists_every_command():
    result = invoke("--help")
    assert result.exit_code == 0
    for name in ("ingest", "index", "search", "bank"):
        assert name in result.output


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_index_build_saves_index_and_reports_recall(make_bank, tmp_path, kind):
    bank = make_bank(tmp_path, articles=[200, 150, 250], dim=16, seed=5)
    args = ["index", "build", bank.path, "--type", kind]
    if kind == "ivf":
        args += ["--nlist", "8", "--nprobe", "8"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "index saved" in result.output
    reopened = VectorBank.open(bank.path)
    params = reopened.manifest.index
    assert params["type"] == kind and params["ntotal"] == 600
    assert (bank.path / "index.faiss").exists()
    if kind == "flat":
        assert "recall@10" not in params
    else:
        assert params["recall_sample"] == 600  # a 600-row bank: every row is a query
        # ivf with nprobe == nlist is exhaustive; hnsw on 600 points with ef 64 is near-exact
        assert params["recall@10"] >= 0.95
        assert f"recall@10={params['recall@10']}" in result.output
    # the saved index answers like exact search on its own rows
    q = np.asarray(reopened.vectors[:10], dtype=np.float32)
    assert list(reopened.search(q, 1)[1][:, 0]) == list(range(10))


def test_bank_info_summarises_manifest_and_files(make_bank, tmp_path):
    bank = make_bank(tmp_path, articles=[2, 4, 9], dim=8, encoder="enc-x")
    result = invoke("bank", "info", bank.path)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "enc-x" in out and "15 x 8 float32" in out
    assert "3" in out and "min 2, median 4, mean 5.0, max 9" in out
    assert "vectors.npy" in out and "chunks.parquet" in out and "manifest.json" in out
    assert bank.manifest.corpus.content_hash[:16] in out


def test_missing_bank_is_one_clean_error(tmp_path):
    for args in (("bank", "info", tmp_path / "nope"), ("index", "build", tmp_path / "nope")):
        assert_user_error(invoke(*args), "no bank at")


def test_bad_index_type_is_one_clean_error(make_bank, tmp_path):
    bank = make_bank(tmp_path, articles=[3])
    assert_user_error(invoke("index", "build", bank.path, "--type", "annoy"), "'annoy'", "flat, ivf, hnsw")


def test_oversized_nlist_is_one_clean_error(make_bank, tmp_path):
    bank = make_bank(tmp_path, articles=[3])
    assert_user_error(invoke("index", "build", bank.path, "--type", "ivf", "--nlist", "50"), "nlist=50")


def test_incomplete_bank_error_says_how_to_resume(tmp_path):
    (tmp_path / "half").mkdir()
    assert_user_error(invoke("bank", "info", tmp_path / "half"), "incomplete", "lvmkit ingest")


def test_corrupt_manifest_is_one_clean_error(make_bank, tmp_path):
    bank = make_bank(tmp_path, articles=[3])
    (bank.path / "manifest.json").write_text(json.dumps({"bogus": 1}))
    assert_user_error(invoke("bank", "info", bank.path), "not a valid bank manifest")


def test_unexpected_exceptions_are_not_swallowed(make_bank, tmp_path, monkeypatch):
    """Only LvmkitError becomes a one-line message; anything else is a bug and keeps its traceback."""
    bank = make_bank(tmp_path, articles=[3])

    def boom(*_a, **_k):
        raise RuntimeError("a bug")

    monkeypatch.setattr("lvmkit.cli.bank.human_bytes", boom)
    result = invoke("bank", "info", bank.path)
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)


def test_ingest_passes_every_option_and_ctrl_c_says_how_to_resume(tmp_path, monkeypatch):
    """The command hands each option to the library's ingest unchanged; an interrupt exits 130 with the
    resume hint (no traceback)."""
    seen = {}

    def interrupted(corpus, out, **kwargs):
        seen.update(kwargs, corpus=corpus, out=out)
        raise KeyboardInterrupt

    monkeypatch.setattr("lvmkit.bank.ingest.ingest", interrupted)
    out = tmp_path / "bank"
    result = invoke("ingest", "embedded", "--out", out, "--chunker", "words:50", "--encoder", "hash:64",
                    "--backend", "hash", "--limit-articles", 7, "--batch-size", 9, "--max-chars", 500,
                    "--shard-size", 11, "--dtype", "float16", "--device", "cpu", "--overwrite")  # fmt: skip
    assert result.exit_code == 130, result.output
    assert "re-run the same command to resume" in result.output and "Traceback" not in result.output
    progress = seen.pop("progress")
    assert callable(progress)
    assert seen == {
        "corpus": "embedded",
        "out": out,
        "format": "auto",
        "chunker": "words:50",
        "encoder": "hash:64",
        "backend": "hash",
        "limit_articles": 7,
        "batch_size": 9,
        "shard_size": 11,
        "dtype": "float16",
        "device": "cpu",
        "overwrite": True,
        "max_chars": 500,
    }


# ------------------------------------------------------------------------------------------------ search
@pytest.fixture(scope="module")
def hash_bank(tmp_path_factory):
    """A bank of 30 embedded-corpus articles encoded with the deterministic hashing encoder."""
    from lvmkit.bank.ingest import ingest

    return ingest(
        "embedded",
        tmp_path_factory.mktemp("b") / "bank",
        encoder="hash:64",
        backend="hash",
        limit_articles=30,
    )


def test_search_finds_the_chunk_whose_text_is_the_query(hash_bank):
    row = len(hash_bank) // 2
    text = hash_bank.texts([row])[0]
    result = invoke("search", hash_bank.path, text, "-k", "3", "--json")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["chunk_id"] == row and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert hits[0]["text"] == text and hits[0]["title"] == hash_bank.titles([row])[0]
    # the same ranking as searching the bank with the encoder directly
    from lvmkit.encode import load_encoder

    scores, ids = hash_bank.search(load_encoder("hash:64").encode([text]), 3)
    assert [h["chunk_id"] for h in hits] == ids[0].tolist()
    np.testing.assert_allclose([h["score"] for h in hits], scores[0], rtol=1e-6)


def test_search_table_truncates_texts(hash_bank):
    result = invoke("search", hash_bank.path, hash_bank.texts([0])[0], "-k", "2", "--width", "12")
    assert result.exit_code == 0, result.output
    assert "rank" in result.output and "chunk_id" in result.output
    assert hash_bank.texts([0])[0][:11] + "…" in result.output


def test_search_refuses_an_encoder_from_another_space(hash_bank, monkeypatch):
    import lvmkit.encode

    real = lvmkit.encode.load_encoder

    def other_space(name=None, backend="st", device="auto"):
        enc = real("hash:32")  # 32-d: not the bank's 64-d space
        return enc

    monkeypatch.setattr(lvmkit.encode, "load_encoder", other_space)
    assert_user_error(invoke("search", hash_bank.path, "anything"), "cannot be mixed")


def test_search_rejects_bad_k(hash_bank):
    assert_user_error(invoke("search", hash_bank.path, "x", "-k", "0"), "-k must be >= 1")
