"""Batch samplers that keep in-batch negatives honest.

With InfoNCE every other target in a batch is a negative. Two windows from the same article have
targets that are often near-paraphrases of each other, so a batch full of one article teaches the model
to push apart things that are alike. ``ArticleCappedBatchSampler`` builds batches with at most
``max_per_article`` windows from any one article.

How an epoch's batches are made (deterministic for ``(seed, epoch)``):

1. shuffle each article's windows and cut them into pieces of ``max_per_article``;
2. spread each article's pieces evenly over the epoch: piece ``p`` of an article with ``P`` pieces gets
   the key ``(p + u) / P`` with one random ``u`` per article, and windows are ordered by key, so long
   articles are spread out instead of piling up at the end;
3. fill batches from that order; a window whose article is already at the cap in the current batch waits
   (in a per-article queue) and goes first into the next batch.

The tail: when the windows left over cannot fill one more full batch under the cap (too few distinct
articles remain, or fewer than ``batch_size`` windows), they form the tail. ``drop_last=True`` drops it;
``drop_last=False`` yields it as smaller batches that still respect the cap. With ``world_size > 1`` the
batches are dealt round-robin to the ranks and the last ``len(batches) % world_size`` are dropped, so every
rank gets the same number of batches and no window is seen twice. ``stats`` says how many were dropped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from itertools import islice

import numpy as np
import torch

from lvmkit.errors import ConfigError


def capped_batches(
    article_of_window: np.ndarray, batch_size: int, max_per_article: int, rng: np.random.Generator
) -> tuple[list[list[int]], list[int]]:
    """Full batches of window indices with at most ``max_per_article`` per article, plus the tail
    (windows that could not be placed in a full batch). See the module docstring for the method."""
    art = np.asarray(article_of_window, dtype=np.int64)
    n, cap, size = len(art), int(max_per_article), int(batch_size)
    if n == 0:
        return [], []
    # 1. random order within each article; j = position of the window within its article's order
    perm = rng.permutation(n)
    grouped = perm[np.argsort(art[perm], kind="stable")]
    codes, first, counts = np.unique(art[grouped], return_index=True, return_counts=True)
    j = np.arange(n) - np.repeat(first, counts)
    # 2. spread pieces: key = (piece + u_article) / pieces_of_article; ties broken by a random article rank
    pieces = -(-counts // cap)
    which = np.repeat(np.arange(len(codes)), counts)
    key = (j // cap + rng.random(len(codes))[which]) / pieces[which]
    tie = rng.permutation(len(codes))[which]
    seq = grouped[np.lexsort((j, tie, key))]
    seq_art = art[seq]

    # 3. greedy fill; pending[a] holds windows of article a that met a full cap
    batches: list[list[int]] = []
    pending: dict[int, deque] = {}
    pos = 0
    while True:
        batch: list[int] = []
        taken: dict[int, int] = {}
        for a in list(islice(pending, size)):
            q = pending[a]
            k = min(cap, len(q), size - len(batch))
            batch.extend(q.popleft() for _ in range(k))
            taken[a] = k
            if not q:
                del pending[a]
            if len(batch) == size:
                break
        while len(batch) < size and pos < n:
            w, a = int(seq[pos]), int(seq_art[pos])
            pos += 1
            c = taken.get(a, 0)
            if c < cap:
                batch.append(w)
                taken[a] = c + 1
            else:
                pending.setdefault(a, deque()).append(w)
        if len(batch) < size:  # the rest cannot make a full batch under the cap
            tail = batch + [w for q in pending.values() for w in q]
            return batches, tail
        batches.append(batch)


def tail_batches(
    tail: list[int], article_of_window: np.ndarray, batch_size: int, max_per_article: int
) -> list[list[int]]:
    """Split leftover windows into batches of at most ``batch_size`` that still respect the cap
    (each batch takes up to ``max_per_article`` from each remaining article in turn)."""
    queues: dict[int, deque] = {}
    for w in tail:
        queues.setdefault(int(article_of_window[w]), deque()).append(w)
    out = []
    while queues:
        batch: list[int] = []
        for a in list(queues):
            q = queues[a]
            k = min(max_per_article, len(q), batch_size - len(batch))
            batch.extend(q.popleft() for _ in range(k))
            if not q:
                del queues[a]
            if len(batch) == batch_size:
                break
        out.append(batch)
    return out


class ArticleCappedBatchSampler(torch.utils.data.Sampler):
    """Yields lists of window indices: shuffled every epoch, at most ``max_per_article`` per article.

    article_of_window  article code of each window (``WindowSet.article_of_all()``)
    batch_size         windows per batch (tail batches may be smaller unless ``drop_last``)
    max_per_article    cap on windows from one article in one batch
    seed               with the epoch (``set_epoch``) fixes the order: the same on every rank and run
    drop_last          drop the tail instead of yielding it in smaller capped batches
    rank, world_size   DDP sharding: rank r gets batches r, r + world_size, ... (disjoint across ranks,
                       equally many on each)
    """

    def __init__(
        self,
        article_of_window,
        batch_size: int,
        max_per_article: int = 2,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if int(max_per_article) < 1:
            raise ConfigError(f"max_per_article must be >= 1, got {max_per_article}")
        if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
            raise ConfigError(f"rank must be in 0..world_size-1, got rank={rank}, world_size={world_size}")
        self.article_of_window = np.asarray(article_of_window, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.max_per_article = int(max_per_article)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        self._cache: tuple[int, list[list[int]], dict] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _epoch_batches(self) -> tuple[list[list[int]], dict]:
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1], self._cache[2]
        rng = np.random.default_rng([self.seed, self.epoch])
        batches, tail = capped_batches(self.article_of_window, self.batch_size, self.max_per_article, rng)
        full = len(batches)
        if not self.drop_last:
            batches = batches + tail_batches(
                tail, self.article_of_window, self.batch_size, self.max_per_article
            )
        per_rank = len(batches) // self.world_size
        kept = batches[: per_rank * self.world_size]
        mine = kept[self.rank :: self.world_size]
        n_kept = sum(len(b) for b in kept)
        stats = {
            "epoch": self.epoch,
            "windows": len(self.article_of_window),
            "full_batches": full,
            "tail_windows": len(tail),
            "batches_per_rank": per_rank,
            "windows_all_ranks": n_kept,
            "dropped": len(self.article_of_window) - n_kept,
        }
        self._cache = (self.epoch, mine, stats)
        return mine, stats

    @property
    def stats(self) -> dict:
        """Counts for the current epoch: full batches, tail windows, windows dropped (all ranks)."""
        return dict(self._epoch_batches()[1])

    def __iter__(self) -> Iterator[list[int]]:
        yield from (list(b) for b in self._epoch_batches()[0])

    def __len__(self) -> int:
        return len(self._epoch_batches()[0])
