"""Encode stage: the Encoder contract for the hashing, sentence-transformers and onnx-int8 backends.

Hashing-encoder vectors are checked against an independent re-implementation of the documented algorithm;
the sentence-transformers backend against sentence-transformers itself (text by text); onnx-int8 against
the fp32 backend. The real-model tests are marked slow (model load + a one-off ONNX export, ~20 s).
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lvmkit.bank.manifest import EncoderInfo
from lvmkit.encode import (
    BACKENDS,
    Encoder,
    HashingEncoder,
    encode_in_batches,
    l2_normalize,
    load_encoder,
    resolve_device,
)
from lvmkit.errors import ConfigError, LvmkitError

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
    assert encode_in_batches([], fake, dim=2).shape == (0, 2)


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
