"""Junk refused, damage named: binary corpus files, over-long chunks, empty queries, NaN / huge vectors, and
every bank file deleted, truncated or overwritten. Each case checks the exact outcome: what is counted, or the
whole message (file, problem, fixing command), exit status 2 and no traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from lvmkit.bank import VectorBank
from lvmkit.bank.checks import SAMPLE_ROWS, check_vectors, ingest_command
from lvmkit.bank.ingest import ingest
from lvmkit.bank.query import search_text
from lvmkit.cli.main import app
from lvmkit.corpus import ReadStats, make_chunker, read_corpus
from lvmkit.corpus.chunking import split_long
from lvmkit.corpus.types import Article, Paragraph
from lvmkit.errors import ArtifactError, ConfigError, LvmkitError

runner = CliRunner()
HASH = "hash:16"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "1000"})


def user_error(result) -> str:
    """The one error line of an LvmkitError (exit 2, no traceback), whitespace-normalised."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return " ".join(result.output.split())


def text_corpus(root: Path, n: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        body = " ".join(f"Sentence {j} of article {i} says something." for j in range(6))
        (root / f"a{i}.txt").write_text(f"Title {i}\n\n{body}\n", encoding="utf-8")
    return root


# ------------------------------------------------------------------------------------------- corpus junk
def test_binary_corpus_files_are_skipped_counted_and_reported(tmp_path):
    corpus = text_corpus(tmp_path / "corpus")
    clean = VectorBank.open(ingest(corpus, tmp_path / "clean", encoder=HASH, backend="hash").path)
    (corpus / "b.txt").write_bytes(Path(sys.executable).resolve().read_bytes()[:65536])  # an ELF binary
    utf16 = "Text saved as UTF-16. " * 50
    (corpus / "c.txt").write_text(utf16, encoding="utf-16")  # NUL-heavy: every ASCII character gets a NUL
    res = invoke("ingest", corpus, "--out", tmp_path / "bank", "--encoder", HASH, "--backend", "hash")
    assert res.exit_code == 0, res.output
    assert "skipped: binary_file 2" in res.output
    bank = VectorBank.open(tmp_path / "bank")
    assert bank.manifest.corpus.skipped == {"binary_file": 2}
    assert bank.chunks.column("text").to_pylist() == clean.chunks.column("text").to_pylist()
    np.testing.assert_array_equal(bank.vectors, clean.vectors)
    stats = ReadStats()
    assert len(list(read_corpus(corpus, format="textdir", stats=stats))) == 4
    assert [(i.file, i.reason) for i in stats.examples] == [
        (str(corpus / "b.txt"), "binary_file"),
        (str(corpus / "c.txt"), "binary_file"),
    ]
    size = 2 + 2 * len(utf16)  # a byte-order mark, then two bytes per character
    assert stats.examples[1].detail == f"{len(utf16)} NUL and 0 other control bytes in its first {size} bytes"


def test_a_10mb_line_is_split_into_bounded_chunks_and_counted():
    line = ("lorem ipsum dolor sit amet " * 400_000)[:10_000_000].strip()  # 10 MB, no sentence end
    stats = ReadStats()
    chunks = make_chunker("sentence").chunk(Article("x", "X", (Paragraph(line),)), stats)
    texts = [c.text for c in chunks]
    assert max(map(len, texts)) <= 2000 and min(map(len, texts)) > 0
    assert " ".join(texts) == line  # cut at spaces: nothing lost
    assert len(texts) == len(split_long(line, 2000))
    assert stats.repaired == {"long_chunk_split": 1}
    assert str(stats.examples[0]) == (
        f"article 'x' ('X'), paragraph 0: long_chunk_split (10,000,000 characters -> {len(texts)} chunks)"
    )


def test_split_long_against_a_direct_rule():
    assert split_long("ab cd", 10) == ["ab cd"]
    assert split_long("aaaa bbbb cccc", 9) == ["aaaa bbbb", "cccc"]  # the last space within 9 characters
    assert split_long("aaaa bbbb cccc", 8) == ["aaaa", "bbbb", "cccc"]
    assert split_long("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]  # no space: hard cuts
    with pytest.raises(ConfigError, match="--max-chars must be an integer >= 20"):
        make_chunker("sentence", max_chars=5)


def test_ingest_counts_long_chunk_splits_in_the_manifest(tmp_path):
    corpus = text_corpus(tmp_path / "corpus", n=1)
    (corpus / "long.txt").write_text("word " * 30_000, encoding="utf-8")  # 150,000 characters, one line
    bank = ingest(corpus, tmp_path / "bank", encoder=HASH, backend="hash", max_chars=1000)
    long_rows = [t for t in bank.chunks.column("text").to_pylist() if t.startswith("word")]
    assert len(long_rows) == len(split_long(("word " * 30_000).strip(), 1000)) == 150
    assert bank.manifest.corpus.repaired == {"long_chunk_split": 1}
    assert bank.manifest.chunker["max_chars"] == 1000


# --------------------------------------------------------------------------------------------- queries
@pytest.mark.parametrize("query", ["", "   ", "\n\t "])
def test_empty_queries_are_refused(make_bank, tmp_path, query):
    bank = make_bank(tmp_path, articles=[3, 4], encoder="lvmkit/hashing-16")
    with pytest.raises(ConfigError) as e:
        search_text(bank, query)
    assert str(e.value) == f"the query text is empty ({query!r}); give the words to search for"
    res = invoke("search", bank.path, query)
    assert user_error(res) == "error: " + " ".join(str(e.value).split())
    assert str(e.value) in res.output


# ----------------------------------------------------------------------------------------- bad vectors
def damage_row(bank, row: int, value: float, col: int = 3) -> None:
    v = np.load(bank.path / "vectors.npy", mmap_mode="r+")
    v[row, col] = value
    v.flush()
    del v


def rebuild(bank) -> str:
    return f"Rebuild the bank with {ingest_command(bank.path, bank.manifest)}"


def test_nan_in_vectors_is_refused_at_open(make_bank, tmp_path):
    bank = make_bank(tmp_path, articles=[5, 5], dim=8)
    damage_row(bank, 7, np.nan)
    expected = (
        f"bank {bank.path}: vectors.npy is damaged: NaN or Inf in 1 row (first: row 7), in a sample of 10 rows. "
        + rebuild(bank)
    )
    with pytest.raises(ArtifactError) as e:
        VectorBank.open(bank.path)
    assert str(e.value) == expected
    assert user_error(invoke("search", bank.path, "anything")) == f"error: {expected}"


def test_huge_values_missed_by_the_sample_are_caught_by_search_and_check_full(make_bank, tmp_path):
    n = 3 * SAMPLE_ROWS
    bank = make_bank(tmp_path, articles=[n], dim=8)
    sampled = set(np.unique(np.linspace(0, n - 1, SAMPLE_ROWS).astype(np.int64)).tolist())
    row = next(r for r in range(1, n) if r not in sampled)
    damage_row(bank, row, 1e6)
    opened = VectorBank.open(bank.path)  # the cheap sample does not see it
    assert check_vectors(opened, "sample") == SAMPLE_ROWS
    query = np.zeros((1, 8), np.float32)
    query[0, 3] = 1.0  # the damaged row scores 1e6 against it
    with pytest.raises(ArtifactError) as e:
        opened.search(query, 5)
    assert str(e.value) == (
        f"bank {bank.path}: vectors.npy is damaged: row {row} scored 1e+06 against a query of norm 1, impossible "
        f"for unit vectors (`lvmkit bank info {bank.path} --check full` scans every row). " + rebuild(bank)
    )
    norm = float(np.linalg.norm(np.load(bank.path / "vectors.npy")[row]))
    expected = (
        f"bank {bank.path}: vectors.npy is damaged: a norm off 1 (the bank is L2-normalised) in 1 row (first: "
        f"row {row}, norm {norm:.4g}; worst: row {row}, norm {norm:.4g}), among the first {n:,} rows. "
        + rebuild(bank)
    )
    assert user_error(invoke("bank", "info", bank.path, "--check", "full")) == f"error: {expected}"
    res = invoke("diagnose", "bank", bank.path, "--check", "full", "--out", tmp_path / "diag")
    assert res.exit_code == 1, res.output
    finding = {
        f["name"]: f for f in json.loads((tmp_path / "diag" / "diagnosis.json").read_text())["findings"]
    }
    assert finding["vector_scan"]["status"] == "fail"


def test_ingest_refuses_an_encoder_that_returns_nan(tmp_path):
    from lvmkit.encode import load_encoder

    real = load_encoder(HASH)

    class Broken:
        info, default_batch_size = real.info, 8

        def encode(self, texts, batch_size=None, progress=None):
            v = real.encode(texts)
            v[2, 0] = np.nan
            return v

    with pytest.raises(LvmkitError) as e:
        ingest(text_corpus(tmp_path / "corpus"), tmp_path / "bank", encoder=Broken(), shard_size=8)
    assert str(e.value) == (
        "the encoder returned bad vectors for bank rows 0..7: NaN or Inf in 1 row (first: row 2); the bank would "
        "be unusable, so nothing was written for them (check the encoder: --encoder, --backend)"
    )


# ------------------------------------------------------------------------------------ damaged bank files
@pytest.fixture
def real_bank(tmp_path):
    """A bank made by `lvmkit ingest`, so its manifest knows the command that rebuilds it."""
    corpus = text_corpus(tmp_path / "corpus")
    res = invoke("ingest", corpus, "--out", tmp_path / "bank", "--encoder", HASH, "--backend", "hash")
    assert res.exit_code == 0, res.output
    return VectorBank.open(tmp_path / "bank")


COMMANDS = [
    ("search", "{bank}", "a query"),
    ("bank", "info", "{bank}"),
    ("index", "build", "{bank}"),
    ("diagnose", "bank", "{bank}", "--out", "{tmp}/diag"),
    ("eval", "baseline:copy_last", "--bank", "{bank}", "--out", "{tmp}/eval"),
]


def run_all(bank, tmp_path) -> set[str]:
    """Every command's error line (they must all be the same LvmkitError)."""
    lines = set()
    for cmd in COMMANDS:
        args = [a.format(bank=bank.path, tmp=tmp_path) for a in cmd]
        lines.add(user_error(invoke(*args)))
    return lines


def test_truncated_vectors_npy(real_bank, tmp_path):
    path = real_bank.path / "vectors.npy"
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size - 100)
    n = len(real_bank)
    assert run_all(real_bank, tmp_path) == {
        f"error: bank {real_bank.path}: vectors.npy is truncated: {size - 100:,} bytes, but its header promises "
        f"{size:,} ({n} x 16 float32). " + rebuild(real_bank)
    }
    assert rebuild(real_bank) == (
        f"Rebuild the bank with `lvmkit ingest {tmp_path / 'corpus'} --out {real_bank.path} --format textdir "
        "--chunker sentence --max-chars 2000 --encoder lvmkit/hashing-16 --backend hash --dtype float32 --overwrite`"
    )


def test_deleted_chunks_parquet(real_bank, tmp_path):
    (real_bank.path / "chunks.parquet").unlink()
    assert run_all(real_bank, tmp_path) == {
        f"error: bank {real_bank.path}: chunks.parquet is missing. " + rebuild(real_bank)
    }


def test_overwritten_chunks_parquet_and_missing_columns(real_bank, tmp_path):
    path = real_bank.path / "chunks.parquet"
    pq.write_table(pq.read_table(path).drop(["text"]), path)
    assert run_all(real_bank, tmp_path) == {
        f"error: bank {real_bank.path}: chunks.parquet lacks the columns text. " + rebuild(real_bank)
    }
    path.write_bytes(b"junk")
    (line,) = run_all(real_bank, tmp_path)
    assert line.startswith(f"error: bank {real_bank.path}: chunks.parquet cannot be read (")
    assert line.endswith(rebuild(real_bank))


def test_damaged_manifest(real_bank, tmp_path):
    (real_bank.path / "manifest.json").write_text('{"encoder": ')
    assert run_all(real_bank, tmp_path) == {
        f"error: bank {real_bank.path}: manifest.json is not a valid bank manifest (Expecting value: line 1 "
        f"column 13 (char 12)). Rebuild the bank with the `lvmkit ingest ... --out {real_bank.path} --overwrite` "
        "command that built it"
    }


def test_damaged_or_missing_index(real_bank, tmp_path):
    assert invoke("index", "build", real_bank.path, "--type", "ivf", "--nlist", "2").exit_code == 0
    index = real_bank.path / "index.faiss"
    fix = f"rebuild it with `lvmkit index build {real_bank.path} --type ivf --nlist 2 --nprobe 2`"  # nprobe <= nlist
    index.write_bytes(index.read_bytes()[:100])
    line = user_error(invoke("search", real_bank.path, "a query"))
    assert line.startswith(f"error: {index} cannot be read (") and line.endswith(
        f"the file is damaged; {fix}"
    )
    index.unlink()
    assert user_error(invoke("search", real_bank.path, "a query")) == (
        f"error: {index} is missing, but the bank's manifest records an index of type ivf; {fix}"
    )


# ----------------------------------------------------------------------------------- messages: CLI flags
def test_messages_name_the_cli_flags(make_bank, tmp_path):
    """What a user typed is what the message names: --format, --limit-articles, --index, --max-queries."""
    from lvmkit.corpus import detect_format
    from lvmkit.eval.command import run_eval

    odd = tmp_path / "notes.xyz"
    odd.write_text("plain words\n")
    with pytest.raises(LvmkitError) as e:
        detect_format(odd)
    assert str(e.value).startswith(f"cannot tell the corpus format of {odd}; pass --format with one of ")
    with pytest.raises(ConfigError) as e:
        read_corpus(odd, format="textdir", limit_articles=-1)
    assert str(e.value) == "--limit-articles must be a non-negative integer, got -1"
    bank = make_bank(tmp_path, articles=[12] * 30)
    with pytest.raises(ConfigError) as e:
        run_eval("baseline:copy_last", bank, max_queries=0)
    assert str(e.value) == "--max-queries must be >= 1, got 0"
    res = invoke("eval", "baseline:copy_last", "--bank", bank.path, "--index", "ivf", "--out", tmp_path / "e")
    assert user_error(res) == (
        f"error: --index ivf was asked for but bank {bank.path} has a flat index; build one with `lvmkit index "
        f"build {bank.path} --type ivf` or use --index flat for exact search"
    )


# --------------------------------------------------------------------------------- damaged run files
def test_damaged_run_files_are_named_with_their_fix(tmp_path):
    from test_runs import fake_run

    from lvmkit.train.runs import read_status, write_status

    run = fake_run(tmp_path, "gru", "finished")
    good = read_status(run)
    run.status.write_text('{"state": "runn')  # truncated
    fix = f"`lvmkit train --out {run.root} --resume` rewrites it"
    assert user_error(invoke("runs", "status", run.root)) == (
        f"error: {run.status} is damaged (not valid JSON: Unterminated string starting at: line 1 column 11 "
        f"(char 10)); {fix} (the run's progress is in last.pt)"
    )
    assert user_error(invoke("report", run.root, "--out", tmp_path / "r.html")) == (
        f"error: {run.status} is damaged (Unterminated string starting at: line 1 column 11 (char 10)); {fix}, "
        "or leave the run out of the report"
    )
    assert write_status(run, "running", epoch=3) == {
        "epoch": 3,
        "state": "running",
        "updated": read_status(run)["updated"],
    }
    config = run.root / "config.yaml"
    config.write_bytes(b"model: {name: gru\x00")
    line = user_error(invoke("report", run.root, "--out", tmp_path / "r.html"))
    assert line.startswith(f"error: {config} is damaged (") and line.endswith(
        "every checkpoint of the run holds its config, or leave the run out of the report"
    )
    config.unlink()
    (run.root / "metrics.json").write_text('{"results": {')
    assert user_error(invoke("report", run.root, "--out", tmp_path / "r.html")) == (
        f"error: {run.root / 'metrics.json'} is damaged (Expecting property name enclosed in double quotes: line 1 "
        f"column 14 (char 13)); `lvmkit eval {run.root}` writes it again, or leave the run out of the report"
    )
    assert good["state"] == "finished"


def test_config_yaml_edited_or_truncated_after_a_checkpoint_is_refused_on_resume(make_bank, tmp_path):
    """A truncated config.yaml still parses (missing fields take their defaults), so --resume would build
    another model and fail deep in load_state_dict; it is compared with the config last.pt stores instead."""
    from test_train import dynamic_bank, tiny_config

    from lvmkit.train.config import load_config, save_config
    from lvmkit.train.loop import train

    bank = dynamic_bank(make_bank, tmp_path, n_articles=20)
    cfg = tiny_config(bank, "optim.epochs=1", "final_eval=false", "model.kwargs={hidden: 16, layers: 2}")
    out = tmp_path / "run"
    assert train(cfg, out)["state"] == "finished"
    text = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(text.replace("layers: 2", "layers: 1"))
    res = invoke("train", "--out", out, "--resume", "--set", "optim.epochs=2")
    assert user_error(res) == (
        f"error: --resume: {out / 'config.yaml'} differs from the config {out / 'last.pt'} was trained with in "
        f"model.kwargs.layers: config.yaml was edited or damaged. Restore it (last.pt holds the original under "
        f"'config'), or start the run over with `lvmkit train CONFIG --out {out} --overwrite`"
    )
    save_config(cfg, out / "config.yaml")  # restored: the resume goes on
    assert load_config(out / "config.yaml") == cfg


def test_configs_written_before_the_task_spec_still_load(tmp_path):
    """lvmkit before the task registry saved an LVM run's config with `twotower: null`."""
    from lvmkit.train.config import load_config

    path = tmp_path / "config.yaml"
    path.write_text("task: lvm\nbank: banks/x\nmodel:\n  name: gru\ntwotower: null\n")
    cfg = load_config(path)
    assert cfg.task == "lvm" and cfg.model.name == "gru" and str(cfg.bank) == "banks/x"


def test_corpus_warnings_are_printed_once(tmp_path, caplog):
    """Ingest reads the corpus twice when it shows progress (a counting pass, then the encode pass); only
    the encode pass reports what it skipped or repaired."""
    corpus = text_corpus(tmp_path / "corpus", n=2)
    (corpus / "bad.txt").write_bytes(b"Hello \xff world. A second sentence here.\n")
    events = []
    with caplog.at_level("WARNING", logger="lvmkit.corpus"):
        bank = ingest(
            corpus, tmp_path / "bank", encoder=HASH, backend="hash", progress=lambda *e: events.append(e)
        )
    warnings = [r.getMessage() for r in caplog.records if r.name == "lvmkit.corpus"]
    assert warnings == [
        f"corpus: {corpus / 'bad.txt'}:1: bad_utf8 (invalid byte at column 6, replaced by U+FFFD)"
    ]
    assert events[0][0] == "count" and bank.manifest.corpus.repaired == {"bad_utf8": 1}


def test_damaged_pair_set_is_named_with_its_fix(make_bank, tmp_path):
    from lvmkit.data import make_split
    from lvmkit.data.pairs import REBUILD, PairSet, make_pairs

    bank = make_bank(tmp_path, articles=[12] * 10)
    make_pairs(bank, make_split(bank), ctx=3, stride=2).save(tmp_path / "pairs")
    manifest = tmp_path / "pairs" / "manifest.json"
    manifest.write_text('{"bank_id": ')
    with pytest.raises(ArtifactError) as e:
        PairSet.load(tmp_path / "pairs", bank)
    assert (
        str(e.value)
        == f"{manifest} is not valid JSON (Expecting value: line 1 column 13 (char 12)); {REBUILD}"
    )
    assert (
        user_error(invoke("diagnose", "data", tmp_path / "pairs", "--out", tmp_path / "dd"))
        == f"error: {e.value}"
    )
