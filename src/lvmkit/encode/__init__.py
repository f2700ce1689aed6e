"""Encode stage: texts -> float32 unit vectors, with the provenance (EncoderInfo) every bank records.

from lvmkit.encode import load_encoder

enc = load_encoder()                          # offline all-MiniLM-L6-v2 (sentence-transformers, 384-d)
enc = load_encoder(backend="onnx-int8")       # same vector space, int8 onnxruntime on the CPU
enc = load_encoder("hash:64")                 # model-free hashing encoder for tests (not semantic)
vectors = enc.encode(texts, batch_size=64, progress=lambda k: bar.advance(k))

Backends import their heavy dependencies (torch, sentence-transformers, onnxruntime) only when loaded.
"""

from lvmkit.encode.base import (
    BACKENDS,
    Encoder,
    ProgressFn,
    encode_in_batches,
    l2_normalize,
    load_encoder,
    resolve_device,
)
from lvmkit.encode.hashing import HashingEncoder
from lvmkit.encode.onnx_int8 import OnnxInt8Encoder
from lvmkit.encode.st import DEFAULT_MODEL, SentenceTransformerEncoder, resolve_model

__all__ = [
    "BACKENDS",
    "DEFAULT_MODEL",
    "Encoder",
    "HashingEncoder",
    "OnnxInt8Encoder",
    "ProgressFn",
    "SentenceTransformerEncoder",
    "encode_in_batches",
    "l2_normalize",
    "load_encoder",
    "resolve_device",
    "resolve_model",
]
