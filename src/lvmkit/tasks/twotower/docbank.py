"""The document side of a two-tower retriever: the bank seen through the document tower."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from lvmkit.bank.bank import VectorBank
from lvmkit.bank.index import SearchIndex, exact_index


class DocBank:
    """A bank seen through the document tower: the same rows, chunk ids and articles, other vectors, and an
    exact index over them. It stands in for a ``VectorBank`` wherever the evaluator or the miner searches
    (attributes it does not define come from the underlying bank)."""

    def __init__(self, bank: VectorBank, vectors: np.ndarray, index: SearchIndex):
        self._bank = bank
        self.vectors = vectors
        self._index = index

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bank, name)

    def __len__(self) -> int:
        return len(self._bank)

    def index(self) -> SearchIndex:
        return self._index

    def search(self, queries: np.ndarray, k: int, exclude=None, nprobe: int | None = None):
        return self._index.search(queries, k, exclude=exclude, nprobe=nprobe)

    def get(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.vectors[np.asarray(rows)], dtype=np.float32)


@torch.no_grad()
def encode_bank(bank: VectorBank, tower: nn.Module, device: torch.device, block: int = 16_384) -> np.ndarray:
    """Every bank vector through the document tower (eval mode), float32 [N, d] in memory."""
    was = tower.training
    tower.eval()
    out = np.empty((len(bank), bank.dim), dtype=np.float32)
    for s in range(0, len(bank), block):
        x = torch.from_numpy(bank.get(np.arange(s, min(len(bank), s + block)))).to(device)
        out[s : s + len(x)] = tower(x).float().cpu().numpy()
    tower.train(was)
    return out


def raw_doc_bank(bank: VectorBank) -> DocBank:
    """The bank itself with an exact index (its stored one when that is already exact)."""
    si = bank.index()
    if si.params.get("type") != "flat":
        si = exact_index(bank.vectors)
    return DocBank(bank, bank.vectors, si)


def doc_bank(bank: VectorBank, doc_tower: nn.Module, device: torch.device | str = "cpu") -> DocBank:
    """The document side for search: the bank itself (identity tower) or the bank re-encoded through the
    tower into a temporary exact index (rebuilt on every call: an adapter changes as it trains)."""
    if doc_tower.spec.get("name", "identity") == "identity":
        return raw_doc_bank(bank)
    vectors = encode_bank(bank, doc_tower, torch.device(device))
    return DocBank(bank, vectors, exact_index(vectors))
