"""A model-free, deterministic encoder for tests and smoke runs. It is NOT a semantic encoder.

Feature hashing ("the hashing trick", Weinberger et al. 2009): a text becomes its lowercased word unigrams
and bigrams; each feature adds +1 or -1 to one of ``dim`` slots, both chosen by a stable hash of the
feature (blake2b, so the vectors are the same on every machine and Python run, unlike ``hash()``); the
sum is L2-normalised. Texts that share words get similar vectors, paraphrases do not. A text with no
words (or whose features cancel exactly) gets the vector of the feature ``"<empty>"``, so every row is
a unit vector.

    enc = HashingEncoder(dim=64)      # or load_encoder("hash:64")
    enc.encode(["a cat sat", "a cat sat down"])
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from lvmkit.bank.manifest import EncoderInfo
from lvmkit.encode.base import ProgressFn, check_texts
from lvmkit.errors import ConfigError

HASHING_VERSION = "1"  # recorded as EncoderInfo.revision; bump if the features or the hash ever change
EMPTY_FEATURE = "<empty>"
_WORD = re.compile(r"\w+")


def features(text: str) -> list[str]:
    """Lowercased word unigrams, then bigrams ("w1 w2"), in text order."""
    words = _WORD.findall(text.lower())
    return words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]


@lru_cache(maxsize=1 << 18)
def feature_slot(feature: str, dim: int) -> tuple[int, float]:
    """(slot, sign) of one feature: the first 8 bytes of blake2b, little-endian; slot = h % dim and the
    sign is the top bit (+1 when set). Independent bits, so slot and sign do not correlate."""
    h = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little")
    return h % dim, (1.0 if h >> 63 else -1.0)


class HashingEncoder:
    """Signed feature hashing of word unigrams + bigrams into ``dim`` slots; see the module docstring."""

    default_batch_size = 256

    def __init__(self, dim: int = 64):
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ConfigError(f"hashing encoder dim must be an integer >= 1 (got {dim!r})")
        self.dim = dim
        self.info = EncoderInfo(
            name=f"lvmkit/hashing-{dim}",
            revision=HASHING_VERSION,
            dim=dim,
            pooling="sum",
            normalized=True,
            backend="hash",
            dtype="float32",
        )
        self._empty = self._raw(EMPTY_FEATURE)

    def _raw(self, *feats: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        for f in feats:
            slot, sign = feature_slot(f, self.dim)
            v[slot] += sign
        return v

    def vector(self, text: str) -> np.ndarray:
        """The unit vector of one text."""
        v = self._raw(*features(text))
        if not v.any():
            v = self._empty
        return v / np.linalg.norm(v)

    def encode(
        self, texts: Sequence[str], batch_size: int | None = None, progress: ProgressFn | None = None
    ) -> np.ndarray:
        """float32 [n, dim], unit rows in input order; ``progress`` is told after every ``batch_size`` texts."""
        check_texts(texts)
        batch_size = self.default_batch_size if batch_size is None else batch_size
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1 (got {batch_size!r})")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            for i, text in enumerate(batch, start):
                out[i] = self.vector(text)
            if progress is not None:
                progress(len(batch))
        return out
