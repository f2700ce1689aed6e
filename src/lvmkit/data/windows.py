"""Sequence windows: index views into the bank, never copies of its vectors.

A window is (article, start, ctx): context rows ``start .. start+ctx-1`` and target row ``start+ctx``, all
inside one article. A ``WindowSet`` stores one int64 per window, the target row (= the chunk id that is the
truth), and computes everything else when a batch is asked for:

    context_rows(target) = target-ctx .. target-1, with rows before the article's first row set to -1

so a window set over a 10 M-row bank with ctx=1000 costs 8 bytes per window, and a batch reads only the
rows it needs from the memory-mapped ``vectors.npy`` (one sorted, de-duplicated gather).

Short contexts: with ``min_ctx < ctx`` and ``pad=True``, a window near the start of an article that has at
least ``min_ctx`` real context chunks is kept and left-padded (mask False, zero vectors). With ``pad=False``
only full windows (``ctx`` real chunks) exist.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from lvmkit.bank.bank import VectorBank
from lvmkit.errors import ConfigError, ProvenanceError


@dataclass(frozen=True)
class WindowBatch:
    """One batch of windows as tensors. ``ctx`` is left-padded: ``mask[b, t]`` is False for padding."""

    ctx: torch.Tensor  # float32 [B, T, d] (zeros where mask is False)
    mask: torch.Tensor  # bool [B, T]
    target: torch.Tensor  # float32 [B, d]: the vector of the next chunk
    target_ids: torch.Tensor  # int64 [B]: its chunk id (the truth for retrieval metrics)
    article: torch.Tensor  # int64 [B]: article code of each window

    def to(self, device, non_blocking: bool = False) -> WindowBatch:
        return WindowBatch(
            *(getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self))
        )

    def __len__(self) -> int:
        return int(self.target_ids.shape[0])


class WindowSet:
    """Windows over ``bank`` given by their target rows.

    targets  int64 [W] target rows; each must have at least ``min_ctx`` earlier rows in its own article
             (``ctx`` of them when ``pad`` is False)
    ctx      context length T of every batch
    min_ctx  fewest real context chunks a window may have (default ``ctx``)
    pad      allow windows shorter than ``ctx`` (left-padded); when False every window is full (``min_ctx`` = ``ctx``)
    """

    def __init__(
        self,
        bank: VectorBank,
        targets: np.ndarray,
        ctx: int,
        min_ctx: int | None = None,
        pad: bool = True,
        name: str | None = None,
    ):
        ctx, min_ctx = _check_ctx(ctx, min_ctx, pad)
        targets = np.asarray(targets, dtype=np.int64)
        if targets.ndim != 1:
            raise ConfigError(f"window targets must be a 1-d array of rows, got shape {targets.shape}")
        if len(targets) and (targets.min() < 0 or targets.max() >= len(bank)):
            raise ConfigError(f"window targets must be bank rows 0..{len(bank) - 1}")
        self.bank = bank
        self.targets = targets
        self.ctx = ctx
        self.min_ctx = min_ctx
        self.pad = pad
        self.name = name
        have = self.n_real(np.arange(len(targets)))
        if len(targets) and have.min() < min_ctx:
            bad = int(targets[np.argmin(have)])
            raise ConfigError(
                f"window with target row {bad} has only {int(have.min())} earlier chunks in its article; "
                f"min_ctx={min_ctx} (pad={pad}) needs at least {min_ctx}"
            )

    def __len__(self) -> int:
        return len(self.targets)

    def __repr__(self) -> str:
        return f"WindowSet({self.name or ''} {len(self)} windows, ctx={self.ctx}, min_ctx={self.min_ctx}, pad={self.pad})"

    @property
    def nbytes(self) -> int:
        """Bytes the window index itself holds (the bank's vectors are not counted: they stay on disk)."""
        return int(self.targets.nbytes)

    def _idx(self, idx) -> np.ndarray:
        return np.atleast_1d(np.asarray(idx, dtype=np.int64))

    def article_of(self, idx) -> np.ndarray:
        """Article code (int64) of each window in ``idx``."""
        return self.bank.article_codes[self.targets[self._idx(idx)]].astype(np.int64)

    def article_of_all(self) -> np.ndarray:
        """Article code of every window, in window order (for ``ArticleCappedBatchSampler``)."""
        return self.bank.article_codes[self.targets].astype(np.int64)

    def n_real(self, idx) -> np.ndarray:
        """Number of real (non-padding) context chunks of each window in ``idx``."""
        t = self.targets[self._idx(idx)]
        first = self.bank.article_starts[self.bank.article_codes[t]]
        return np.minimum(t - first, self.ctx)

    def context_rows(self, idx) -> np.ndarray:
        """int64 [B, ctx]: the context rows of each window, oldest first, -1 for left padding."""
        t = self.targets[self._idx(idx)]
        rows = t[:, None] - self.ctx + np.arange(self.ctx, dtype=np.int64)[None, :]
        first = self.bank.article_starts[self.bank.article_codes[t]]
        rows[rows < first[:, None]] = -1
        return rows

    def batch(self, idx, device: torch.device | str | None = None) -> WindowBatch:
        """Gather the vectors of windows ``idx`` from the bank (one sorted unique read of the memmap)."""
        idx = self._idx(idx)
        rows = self.context_rows(idx)
        t = self.targets[idx]
        mask = rows >= 0
        need = np.unique(np.concatenate([rows[mask], t]))  # sorted: sequential-ish reads of the memmap
        vecs = self.bank.get(need)  # float32 [U, d]
        ctx = vecs[np.searchsorted(need, np.where(mask, rows, t[:, None]))]
        ctx[~mask] = 0.0
        target = vecs[np.searchsorted(need, t)]
        out = WindowBatch(
            ctx=torch.from_numpy(ctx),
            mask=torch.from_numpy(mask),
            target=torch.from_numpy(target),
            target_ids=torch.from_numpy(t.copy()),
            article=torch.from_numpy(self.bank.article_codes[t].astype(np.int64)),
        )
        return out if device is None else out.to(device)

    def subset(self, idx) -> WindowSet:
        """A window set holding only windows ``idx`` (e.g. a fixed evaluation sample)."""
        return WindowSet(self.bank, self.targets[self._idx(idx)], self.ctx, self.min_ctx, self.pad, self.name)

    def sample_index(self, cap: int | None, seed: int) -> np.ndarray:
        """Indices of at most ``cap`` windows: all of them (in order) when ``cap`` is None or not below the
        count, else a sample without replacement by ``np.random.default_rng(seed)``, sorted (bank order).

        The one sampling rule of the trainer, ``lvmkit eval`` and the quickstart: the same (cap, seed) gives
        the same windows everywhere, so an evaluation reproduces the run's queries."""
        if cap is None or len(self) <= cap:
            return np.arange(len(self), dtype=np.int64)
        return np.sort(np.random.default_rng(seed).choice(len(self), size=cap, replace=False))

    def sample(self, cap: int | None, seed: int) -> WindowSet:
        """At most ``cap`` windows chosen by ``sample_index(cap, seed)`` (``self`` when nothing is cut)."""
        if cap is None or len(self) <= cap:
            return self
        return self.subset(self.sample_index(cap, seed))


class WindowDataset(torch.utils.data.Dataset):
    """A torch ``Dataset`` whose items are whole batches: ``ds[[i, j, ...]] -> WindowBatch``.

    Use it with a batch sampler and ``batch_size=None`` so the DataLoader passes index lists through:

        sampler = ArticleCappedBatchSampler(ws.article_of_all(), batch_size=32, seed=0)
        loader = DataLoader(WindowDataset(ws), sampler=sampler, batch_size=None, num_workers=2)
    """

    def __init__(self, windows: WindowSet):
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, idx) -> WindowBatch:
        return self.windows.batch(idx)


def _check_ctx(ctx: int, min_ctx: int | None, pad: bool) -> tuple[int, int]:
    ctx = int(ctx)
    if ctx < 1:
        raise ConfigError(f"ctx must be >= 1, got {ctx}")
    if min_ctx is not None and not 1 <= int(min_ctx) <= ctx:
        raise ConfigError(f"min_ctx must be in 1..ctx={ctx}, got {min_ctx}")
    if min_ctx is None or not pad:  # without padding only full windows exist: short ones are skipped
        return ctx, ctx
    return ctx, int(min_ctx)


def window_targets(bank: VectorBank, articles: np.ndarray, first: int, stride: int) -> np.ndarray:
    """Target rows of the windows of ``articles``: in each article, positions ``first, first+stride, ...``
    (position = chunk index of the target) up to the article's last chunk. Vectorised over articles."""
    articles = np.asarray(articles, dtype=np.int64)
    starts = bank.article_starts[articles]
    lengths = bank.article_starts[articles + 1] - starts
    counts = np.maximum(0, -(-(lengths - first) // stride))  # ceil((n - first) / stride), >= 0
    total = int(counts.sum())
    owner = np.repeat(np.arange(len(articles)), counts)
    k = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return starts[owner] + first + k * stride


def make_windows(
    bank: VectorBank,
    split,
    name: str,
    ctx: int,
    stride: int = 1,
    min_ctx: int | None = None,
    pad: bool = True,
) -> WindowSet:
    """All windows of the articles in split ``name`` (``split``: a ``Split``, or None for the whole bank).

    In each article the first window's target is the chunk at position ``min_ctx`` (``ctx`` when not
    padding), then every ``stride``-th chunk after it. Windows never cross articles.
    """
    ctx, min_ctx = _check_ctx(ctx, min_ctx, pad)
    if int(stride) < 1:
        raise ConfigError(f"stride must be >= 1, got {stride}")
    if split is None:
        articles = np.arange(bank.n_articles, dtype=np.int64)
    else:
        if split.bank.manifest.bank_id != bank.manifest.bank_id:
            raise ProvenanceError(
                f"the split was made for bank {split.bank.manifest.bank_id}, not {bank.manifest.bank_id} at {bank.path}"
            )
        articles = split.articles(name)
    targets = window_targets(bank, articles, min_ctx, int(stride))
    return WindowSet(bank, targets, ctx, min_ctx, pad, name=name)
