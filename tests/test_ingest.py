"""Ingest: corpus -> chunks -> shards -> bank, checked against an independent read + chunk + encode of the
same corpus; resumption after an in-process interrupt and after SIGKILL of a real `lvmkit ingest`
process; refusal of mismatched arguments; the CLI summary."""

from __future__ import annotations

import bz2
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from lvmkit.bank import VectorBank
from lvmkit.bank.bank import text_hash
from lvmkit.bank.ingest import STATE_FILE, WORK_DIR, ingest
from lvmkit.cli.main import app
from lvmkit.corpus import corpus_source_hash, make_chunker, read_corpus
from lvmkit.encode import load_encoder
from lvmkit.errors import ArtifactError, ConfigError, CorpusError

ROOT = Path(__file__).resolve().parents[1]
ENWIKI_FILE = ROOT.parent / "shared/data/enwiki2015/AA/wiki_00.bz2"
HASH = "hash:64"


# ------------------------------------------------------------------------------------------- fixtures
def _doc(page_id: int, title: str, body: list[str]) -> str:
    url = f"http://en.wikipedia.org/wiki?curid={page_id}"
    return f'<doc id="{page_id}" url="{url}" title="{title}">\n{title}\n\n' + "\n".join(body) + "\n</doc>\n"


@pytest.fixture
def mini_wiki(tmp_path) -> Path:
    """A small WikiExtractor .bz2: 12 articles of 3..14 sentences, plus one empty article (skipped)."""
    docs = []
    for a in range(12):
        n = 3 + a
        sentences = [
            f"Article {a} sentence {s} talks at some length about the topic numbered {a * 31 + s}."
            for s in range(n)
        ]
        half = n // 2
        body = [" ".join(sentences[:half]), "History.", " ".join(sentences[half:])]
        docs.append(_doc(100 + a, f"Title {a}", body))
        if a == 5:
            docs.append(_doc(999, "Empty page", []))
    path = tmp_path / "corpus" / "wiki_00.bz2"
    path.parent.mkdir()
    path.write_bytes(bz2.compress("".join(docs).encode()))
    return path


@pytest.fixture(scope="module")
def hash_encoder():
    return load_encoder(HASH)


def expected_chunks(corpus: Path, spec: str = "sentence", limit: int | None = None):
    """The reference: read + chunk the corpus directly, keep articles with chunks, in corpus order."""
    chunker = make_chunker(spec)
    return [c for a in read_corpus(corpus, limit_articles=limit) for c in chunker.chunk(a)]


def assert_same_bank(a: Path, b: Path) -> None:
    """Byte-identical vectors.npy and chunks.parquet, equal manifests apart from the creation time."""
    assert (a / "vectors.npy").read_bytes() == (b / "vectors.npy").read_bytes()
    assert pq.read_table(a / "chunks.parquet").equals(pq.read_table(b / "chunks.parquet"))
    assert (a / "chunks.parquet").read_bytes() == (b / "chunks.parquet").read_bytes()
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    ma.pop("created"), mb.pop("created")
    assert ma == mb


# ------------------------------------------------------------------------------------- contents, provenance
def test_ingest_matches_independent_read_chunk_encode(mini_wiki, tmp_path, hash_encoder):
    bank = ingest(mini_wiki.parent, tmp_path / "bank", encoder=HASH, backend="hash", shard_size=16)
    ref = expected_chunks(mini_wiki.parent)
    assert len(bank) == len(ref) == sum(3 + a for a in range(12))
    # chunk table: same rows, same order, chunk_id == row
    t = bank.chunks
    assert t.column("text").to_pylist() == [c.text for c in ref]
    assert t.column("article_id").to_pylist() == [c.article_id for c in ref]
    assert t.column("chunk_index").to_pylist() == [c.chunk_index for c in ref]
    assert t.column("paragraph_index").to_pylist() == [c.paragraph_index for c in ref]
    assert t.column("heading").to_pylist() == [c.heading for c in ref]
    assert t.column("chunk_id").to_pylist() == list(range(len(ref)))
    assert t.column("heading").to_pylist()[-1] is not None  # "History." became the second paragraph's heading
    # vectors: exactly the encoder's output for those texts
    np.testing.assert_array_equal(np.asarray(bank.vectors), hash_encoder.encode([c.text for c in ref]))
    # provenance
    m = bank.manifest
    assert m.encoder == hash_encoder.info
    assert m.chunker == make_chunker("sentence").config()
    assert m.corpus.format == "wikiextractor"
    assert m.corpus.content_hash == text_hash(c.text for c in ref)
    assert m.corpus.source_hash == corpus_source_hash(mini_wiki.parent)
    assert m.corpus.articles == 12 and bank.n_articles == 12
    assert m.corpus.skipped == {"empty_article": 1}
    assert not (bank.path / WORK_DIR).exists()


def test_shard_size_does_not_change_the_bank(mini_wiki, tmp_path):
    one = ingest(mini_wiki, tmp_path / "one", encoder=HASH, backend="hash", shard_size=4096)
    many = ingest(mini_wiki, tmp_path / "many", encoder=HASH, backend="hash", shard_size=7)
    assert (one.path / "vectors.npy").read_bytes() == (many.path / "vectors.npy").read_bytes()
    assert one.chunks.equals(many.chunks)
    assert one.manifest.corpus == many.manifest.corpus


def test_limit_articles_float16_and_words_chunker(mini_wiki, tmp_path, hash_encoder):
    bank = ingest(
        mini_wiki,
        tmp_path / "b",
        encoder=HASH,
        backend="hash",
        limit_articles=4,
        dtype="float16",
        chunker="words:12",
    )
    ref = expected_chunks(mini_wiki, "words:12", limit=4)
    assert bank.vectors.dtype == np.float16 and bank.manifest.vector_dtype == "float16"
    assert bank.texts(range(len(bank))) == [c.text for c in ref]
    assert bank.n_articles == 4 and bank.manifest.chunker["max_words"] == 12
    want = hash_encoder.encode([c.text for c in ref]).astype(np.float16)
    np.testing.assert_array_equal(np.asarray(bank.vectors), want)


def test_articles_without_chunks_are_skipped_and_counted(mini_wiki, tmp_path, monkeypatch):
    """A chunker that yields nothing for some articles: they are absent from the bank and counted."""
    real = make_chunker("sentence")

    class DropsEvenArticles:
        def chunk(self, article, stats=None):
            return [] if int(article.id) % 2 == 0 else real.chunk(article, stats)

        def config(self):
            return real.config()

    monkeypatch.setattr("lvmkit.bank.ingest.make_chunker", lambda spec, **kw: DropsEvenArticles())
    bank = ingest(mini_wiki, tmp_path / "b", encoder=HASH, backend="hash")
    assert bank.manifest.corpus.skipped == {"empty_article": 1, "no_chunks": 6}
    assert bank.n_articles == 6 and set(bank.article_ids) == {str(100 + a) for a in range(1, 12, 2)}


def test_enwiki_slice(tmp_path, hash_encoder):
    if not ENWIKI_FILE.exists():
        pytest.skip(f"real Wikipedia not found at {ENWIKI_FILE}")
    bank = ingest(
        ENWIKI_FILE, tmp_path / "b", encoder=HASH, backend="hash", limit_articles=20, shard_size=1000
    )
    ref = expected_chunks(ENWIKI_FILE, limit=20)
    assert len(bank) == len(ref) > 1000  # several shards
    assert bank.n_articles == len({c.article_id for c in ref})
    assert bank.texts(range(len(bank))) == [c.text for c in ref]
    assert bank.manifest.corpus.content_hash == text_hash(c.text for c in ref)
    assert bank.chunks.column("title").to_pylist()[0] == "Anarchism"
    rows = np.arange(0, len(bank), 97)
    np.testing.assert_array_equal(bank.get(rows), hash_encoder.encode(bank.texts(rows)))


# ---------------------------------------------------------------------------------------------- resumption
class Interrupt(BaseException):
    """Stands in for a kill: not an Exception, so nothing on the way up catches it."""


class CountingEncoder:
    """Wraps an encoder; counts texts encoded and can 'die' on a given call."""

    def __init__(self, inner, die_on_call: int | None = None):
        self.inner, self.info, self.die_on_call = inner, inner.info, die_on_call
        self.default_batch_size = inner.default_batch_size
        self.calls = self.texts = 0

    def encode(self, texts, batch_size=None, progress=None):
        self.calls += 1
        if self.calls == self.die_on_call:
            raise Interrupt
        self.texts += len(texts)
        return self.inner.encode(texts, batch_size=batch_size, progress=progress)


def test_interrupted_ingest_resumes_encoding_only_missing_shards(mini_wiki, tmp_path, hash_encoder):
    full = ingest(mini_wiki, tmp_path / "full", encoder=HASH, backend="hash", shard_size=10)
    out = tmp_path / "resumed"
    with pytest.raises(Interrupt):
        ingest(mini_wiki, out, encoder=CountingEncoder(hash_encoder, die_on_call=4), shard_size=10)
    work = out / WORK_DIR
    assert (work / STATE_FILE).exists() and not (out / "manifest.json").exists()
    assert sorted(p.name for p in work.glob("shard-*.parquet")) == [
        f"shard-0000{i}.parquet" for i in range(3)
    ]
    with pytest.raises(ArtifactError, match="incomplete"):
        VectorBank.open(out)

    events = []
    second = CountingEncoder(hash_encoder)
    resumed = ingest(mini_wiki, out, encoder=second, shard_size=10, progress=lambda *e: events.append(e))
    assert second.texts == len(full) - 30  # the three finished shards were not re-encoded
    assert [e[1] for e in events if e[0] == "skip"] == [10, 20, 30]
    encode = [e for e in events if e[0] == "encode"]
    assert encode[-1] == ("encode", len(full), len(full))  # the estimated total ends exact
    assert all(e[2] is not None and e[1] <= e[2] for e in encode)
    assert events[-1] == ("assemble", len(full), len(full))
    assert_same_bank(full.path, resumed.path)


def test_resume_refuses_other_arguments(mini_wiki, tmp_path, hash_encoder):
    out = tmp_path / "b"
    with pytest.raises(Interrupt):
        ingest(mini_wiki, out, encoder=CountingEncoder(hash_encoder, die_on_call=2), shard_size=10)
    with pytest.raises(ConfigError, match=r"different arguments \(chunker: .*Re-run with the original"):
        ingest(mini_wiki, out, encoder=HASH, backend="hash", shard_size=10, chunker="paragraph")
    with pytest.raises(ConfigError, match="shard_size: was 10, now 20"):
        ingest(mini_wiki, out, encoder=HASH, backend="hash", shard_size=20)
    with pytest.raises(ConfigError, match="limit_articles"):
        ingest(mini_wiki, out, encoder=HASH, backend="hash", shard_size=10, limit_articles=3)
    bank = ingest(mini_wiki, out, encoder=HASH, backend="hash", shard_size=20, overwrite=True)
    assert len(bank) == len(expected_chunks(mini_wiki))


def test_resume_refuses_a_changed_corpus(mini_wiki, tmp_path, hash_encoder):
    out = tmp_path / "b"
    with pytest.raises(Interrupt):
        ingest(mini_wiki, out, encoder=CountingEncoder(hash_encoder, die_on_call=2), shard_size=10)
    mini_wiki.write_bytes(bz2.compress(_doc(1, "Other", ["Something else entirely."]).encode()))
    with pytest.raises(ConfigError, match="source_hash"):
        ingest(mini_wiki, out, encoder=HASH, backend="hash", shard_size=10)


def test_finished_bank_is_not_overwritten_without_asking(mini_wiki, tmp_path):
    out = tmp_path / "b"
    ingest(mini_wiki, out, encoder=HASH, backend="hash", limit_articles=2)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="already holds a complete bank.*--overwrite"):
        ingest(mini_wiki, out, encoder=HASH, backend="hash")
    bank = ingest(mini_wiki, out, encoder=HASH, backend="hash", overwrite=True)
    assert bank.n_articles == 12 and (out / "notes.txt").read_text() == "mine"  # only lvmkit's files replaced


def test_bad_arguments_are_config_errors(mini_wiki, tmp_path):
    with pytest.raises(ConfigError, match="float32, float16"):
        ingest(mini_wiki, tmp_path / "b", encoder=HASH, backend="hash", dtype="int8")
    with pytest.raises(ConfigError, match="'sentence', 'words:N'"):
        ingest(mini_wiki, tmp_path / "b", encoder=HASH, backend="hash", chunker="tokens:5")
    with pytest.raises(CorpusError, match="does not exist"):
        ingest(tmp_path / "missing", tmp_path / "b", encoder=HASH, backend="hash")


# ------------------------------------------------------------------------------ a real process, SIGKILLed
# A slow hash encoder (0.15 s per shard) in a real `lvmkit ingest` process, so it can be killed mid-way.
SLOW_CLI = """
import sys, time
import lvmkit.encode as E
_load = E.load_encoder
class Slow:
    def __init__(self, inner): self.inner, self.info = inner, inner.info
    def encode(self, texts, **kw):
        time.sleep(0.15)
        return self.inner.encode(texts, **kw)
E.load_encoder = lambda *a, **k: Slow(_load(*a, **k))
from lvmkit.cli.main import app
sys.argv[0] = "lvmkit"
app()
"""


@pytest.mark.slow
def test_sigkilled_cli_ingest_resumes_to_the_same_bytes(mini_wiki, tmp_path):
    args = ["ingest", str(mini_wiki), "--encoder", HASH, "--backend", "hash", "--shard-size", "8"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI, *args, "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / WORK_DIR / "shard-00002.parquet").exists():
            assert proc.poll() is None, "ingest ended before it could be killed"
            assert time.monotonic() < deadline, "no shards appeared within 60 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    done = len(list((out / WORK_DIR).glob("shard-*.parquet")))
    assert 3 <= done < len(expected_chunks(mini_wiki)) // 8

    resume = subprocess.run(
        [sys.executable, "-m", "lvmkit.cli.main", *args, "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert resume.returncode == 0, resume.stderr
    full = ingest(mini_wiki, tmp_path / "full", encoder=HASH, backend="hash", shard_size=8)  # uninterrupted
    assert_same_bank(out, full.path)
    assert not list(out.glob(".*")), "temporary files or the shard directory were left behind"


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_ingest_prints_summary(mini_wiki, tmp_path):
    result = CliRunner().invoke(
        app, ["ingest", str(mini_wiki), "--out", str(tmp_path / "b"), "--encoder", HASH, "--backend", "hash"]
    )
    assert result.exit_code == 0, result.output
    n = len(expected_chunks(mini_wiki))
    assert "12 articles" in result.output and f"{n} chunks" in result.output
    assert "empty_article 1" in result.output and "chunks/s" in result.output
    again = CliRunner().invoke(
        app, ["ingest", str(mini_wiki), "--out", str(tmp_path / "b"), "--encoder", HASH, "--backend", "hash"]
    )
    assert again.exit_code == 2 and "already holds a complete bank" in again.output


def test_cli_ingest_embedded_keyword(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "ingest",
            "embedded",
            "--out",
            str(tmp_path / "b"),
            "--encoder",
            HASH,
            "--backend",
            "hash",
            "--limit-articles",
            "5",
        ],
    )
    assert result.exit_code == 0, result.output
    bank = VectorBank.open(tmp_path / "b")
    assert bank.manifest.corpus.format == "embedded" and bank.manifest.corpus.source == "embedded"
    assert bank.n_articles == 5 and all(label for label in bank.labels)


# ------------------------------------------------------------------------------------- the real encoder
@pytest.mark.slow
def test_default_encoder_on_embedded_corpus(tmp_path):
    """The offline all-MiniLM-L6-v2 end to end on 10 articles: a 384-d bank whose vectors are the model's."""
    enc = load_encoder(
        None, device="cpu"
    )  # what ingest loads for encoder=None (loaded once here, it is slow)
    bank = ingest("embedded", tmp_path / "b", encoder=enc, limit_articles=10, batch_size=16)
    assert bank.dim == 384 and bank.n_articles == 10
    assert bank.encoder == enc.info and bank.encoder.name == "sentence-transformers/all-MiniLM-L6-v2"
    ref = expected_chunks("embedded", limit=10)
    assert bank.texts(range(len(bank))) == [c.text for c in ref]
    rows = np.arange(0, len(bank), max(1, len(bank) // 8))
    one_by_one = np.concatenate([enc.encode([t]) for t in bank.texts(rows)])  # no batching, no length sort
    np.testing.assert_allclose(bank.get(rows), one_by_one, atol=1e-4)
