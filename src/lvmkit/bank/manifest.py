"""Provenance: what every vector artifact says about where its vectors came from.

Anything that combines two artifacts (a model and a bank, an index and a bank, a split and a bank) calls
``check_same_space`` first; vectors from different encoders, dimensions or normalisations never mix.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from pydantic import BaseModel, Field

from lvmkit.errors import ProvenanceError

BANK_FORMAT_VERSION = 1


class EncoderInfo(BaseModel):
    """Identifies the vector space. Two artifacts are compatible iff name, dim, pooling and
    normalisation agree (the backend and dtype may differ: onnx-int8 approximates fp32 in the same space)."""

    name: str
    revision: str | None = None
    dim: int
    pooling: str = "mean"
    normalized: bool = True
    backend: str = "sentence-transformers"
    dtype: str = "float32"

    def space(self) -> tuple[str, int, str, bool]:
        return (self.name, self.dim, self.pooling, self.normalized)

    def describe(self) -> str:
        norm = "L2-normalised" if self.normalized else "unnormalised"
        return f"{self.name} ({self.dim}-d, {self.pooling} pooling, {norm})"


class CorpusInfo(BaseModel):
    source: str
    format: str
    content_hash: str  # sha256 over the chunk texts in bank order (what the vectors were computed from)
    source_hash: str | None = None  # sha256 of the raw input files (lvmkit.corpus.corpus_source_hash)
    articles: int
    limit_articles: int | None = None  # `lvmkit ingest --limit-articles` (None: the whole corpus)
    skipped: dict[str, int] = Field(default_factory=dict)
    repaired: dict[str, int] = Field(
        default_factory=dict
    )  # content kept, changed (bad_utf8, long_chunk_split)


class BankManifest(BaseModel):
    format_version: int = BANK_FORMAT_VERSION
    encoder: EncoderInfo
    chunker: dict[str, Any]
    corpus: CorpusInfo
    count: int  # number of chunks == rows of vectors.npy
    vector_dtype: str = "float32"
    created: str = Field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )
    index: dict[str, Any] | None = None  # parameters of the FAISS index stored beside the vectors
    lanes: dict[str, Any] | None = None  # lane schema + classifier of the lane columns (lvmkit.lanes.assign)

    @property
    def bank_id(self) -> str:
        """Short identity of the bank's contents: changes whenever the vectors could differ."""
        return f"{self.corpus.content_hash[:16]}-{self.encoder.name}-{self.encoder.dim}"


def check_same_space(a: EncoderInfo, b: EncoderInfo, a_what: str, b_what: str) -> None:
    """Raise ProvenanceError naming both artifacts when their vector spaces differ."""
    if a.space() != b.space():
        raise ProvenanceError(
            f"{a_what} was made with {a.describe()} but {b_what} with {b.describe()}; "
            "vectors from different encoders or dimensions cannot be mixed. Re-encode one side with the "
            "other's encoder (lvmkit ingest --encoder ...)."
        )
