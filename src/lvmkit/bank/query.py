"""Searching a bank with text: ``search_text(bank, "the capital of France", k=5)`` (behind ``lvmkit search``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from lvmkit.bank.bank import VectorBank
from lvmkit.bank.manifest import check_same_space
from lvmkit.errors import ConfigError


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    chunk_id: int
    title: str
    text: str

    def to_dict(self) -> dict:
        return asdict(self)


def search_text(
    bank: VectorBank | str | Path,
    text: str,
    k: int = 5,
    *,
    backend: str | None = None,
    device: str = "cpu",
    nprobe: int | None = None,
) -> list[Hit]:
    """Encode ``text`` with the bank's own encoder (``backend``: default the bank's) and return the ``k`` nearest
    chunks. An empty or whitespace-only query is refused (ConfigError): it has no meaning, yet an encoder
    would still return a vector and the bank confident-looking neighbours."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"the query text is empty ({text!r}); give the words to search for")
    if k < 1:
        raise ConfigError(f"-k must be >= 1 (got {k})")
    from lvmkit.encode import load_encoder

    vb = bank if isinstance(bank, VectorBank) else VectorBank.open(bank)
    load_backend = backend or vb.encoder.backend  # load_encoder knows "sentence-transformers" as "st"
    enc = load_encoder(vb.encoder.name, backend=load_backend, device=device)
    check_same_space(vb.encoder, enc.info, f"bank {vb.path}", f"the query encoder ({load_backend})")
    scores, ids = vb.search(enc.encode([text]), k, nprobe=nprobe)
    rows = [int(i) for i in ids[0] if i >= 0]
    return [
        Hit(rank, float(score), row, title, chunk)
        for rank, (row, score, title, chunk) in enumerate(
            zip(rows, scores[0], vb.titles(rows), vb.texts(rows), strict=False), 1
        )
    ]
