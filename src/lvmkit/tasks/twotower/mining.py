"""Glue between the two-tower task and the hard-negative miner (``lvmkit.train.mining``): encode every train
query with the current tower, mine this epoch's negatives (sharded across DDP ranks), return the store."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from lvmkit.data.windows import WindowSet
from lvmkit.train import distributed as D
from lvmkit.train.mining import NegativeStore, Stage, mine_negatives, resolve_stage


@torch.no_grad()
def mine_epoch(
    query: nn.Module,
    train: WindowSet,
    pair_ids: np.ndarray,
    docs: Any,
    stage: Stage,
    epoch: int,
    *,
    near_dup: float,
    candidate_factor: int,
    batch_size: int,
    dist: D.DistInfo,
) -> NegativeStore:
    """Re-encode every train query with ``query`` and mine ``stage``'s negatives among ``docs`` (the bank, or
    the document-tower bank). Under DDP each rank mines a share of the pairs and the shares are exchanged, so
    every rank holds the whole store."""
    rank, world = dist.rank, dist.world_size
    mine_idx = np.arange(rank, len(train), world)
    queries = encode_windows(query, train, mine_idx, batch_size, dist.device)
    rule_args = (train.targets[mine_idx], train.bank.article_codes, lambda q, k: docs.search(q, k), docs.get)
    # a percentile window (8@p90-p99) becomes cosines of this epoch's top-PERCENTILE_DEPTH query-neighbour
    # distribution; ``resolved["candidates"]`` (Stage.candidates) is the pool width
    stage, resolved = resolve_stage(stage, queries, *rule_args, candidate_factor, near_dup, seed=epoch)
    ids, stats = mine_negatives(
        queries,
        pair_ids[mine_idx],
        *rule_args,
        stage.count,
        stage.lo,
        stage.hi,
        near_dup=near_dup,
        candidate_factor=resolved["candidate_factor"],
        candidates=resolved.pop("candidates"),
        by_rank=stage.rank,
    )
    stats.update(resolved)
    mined_ids = pair_ids[mine_idx]
    if world > 1:
        shares: list[Any] = [None] * world
        torch.distributed.all_gather_object(shares, (mined_ids, ids, stats))
        mined_ids = np.concatenate([s[0] for s in shares])
        ids = np.concatenate([s[1] for s in shares])
        stats = merge_mining_stats([s[2] for s in shares])
    order = np.argsort(mined_ids, kind="stable")
    return NegativeStore(mined_ids[order], ids[order], epoch=epoch, stats=stats)


def merge_mining_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Mining stats of several shares as one: counts add up, the kept cosine is re-averaged."""
    out = dict(parts[0])
    for key in (
        "pairs",
        "candidates",
        "kept",
        "padded",
        "missing",
        *[k for k in out if k.startswith("dropped_")],
    ):
        out[key] = sum(p[key] for p in parts)
    total = sum(p["kept"] * p["mean_cos_kept"] for p in parts if p["kept"])
    out["mean_cos_kept"] = total / out["kept"] if out["kept"] else float("nan")
    return out


@torch.no_grad()
def encode_windows(
    model: nn.Module, windows: WindowSet, idx: np.ndarray, batch_size: int, device: torch.device
) -> np.ndarray:
    """float32 [len(idx), d] outputs of ``model`` (eval mode) on windows ``idx``."""
    was = model.training
    model.eval()
    out = np.empty((len(idx), windows.bank.dim), dtype=np.float32)
    for s in range(0, len(idx), batch_size):
        b = windows.batch(idx[s : s + batch_size], device=device)
        out[s : s + len(b)] = model(b.ctx, b.mask).float().cpu().numpy()
    model.train(was)
    return out
