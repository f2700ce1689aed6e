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
