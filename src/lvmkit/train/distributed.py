"""Distributed data parallel (DDP) helpers: everything the loop needs to run under ``torchrun``.

    torchrun --nproc_per_node=2 -m lvmkit.cli.main train configs/gru.yaml --out runs/gru_ddp

``init_distributed`` reads the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK), starts the process
group (gloo on CPU, nccl on CUDA) and picks the device. Each rank trains on its own shard of the batches
(the sampler is built with ``rank`` / ``world_size``), DDP averages the gradients, and only rank 0 writes
files and evaluates; the others wait for its decision (continue / stop) at the end of every epoch.

Contrastive losses want as many negatives as possible: ``all_gather_with_grad`` collects a tensor from every
rank such that gradients flow back to the rank that produced each piece, so in-batch negatives can span the
global batch (what CLIP-style training does). Without a process group every helper is the identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lvmkit.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank r of world_size processes, and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(pref: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> cuda if available, else mps, else cpu; a named device must be available."""
    if pref == "auto":
        if torch.cuda.is_available():
            pref = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            pref = "mps"
        else:
            pref = "cpu"
    if pref == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device=cuda but torch sees no CUDA device; use device=auto or device=cpu")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if pref == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device=mps but the MPS backend is not available; use device=auto or device=cpu")
    if pref not in ("cpu", "mps"):
        raise ConfigError(f"device={pref!r} is not known; allowed: auto, cpu, cuda, mps")
    return torch.device(pref)


def init_distributed(device_pref: str = "auto") -> DistInfo:
    """Start the process group when launched by torchrun (WORLD_SIZE > 1); otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=resolve_device(device_pref))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref, local_rank)
    if device.type == "mps":
        raise ConfigError("distributed training on MPS is not supported; use device=cpu or cuda")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(module: nn.Module, info: DistInfo) -> nn.Module:
    """DistributedDataParallel around ``module``. Buffers are not broadcast from rank 0 each step: a loss's
    queue of past negatives is per rank (each rank queues its own targets)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)


def all_gather_with_grad(x: torch.Tensor, grad: bool = True) -> list[torch.Tensor]:
    """``x`` from every rank (a list indexed by rank). With ``grad`` the gather is differentiable: the
    gradient of each piece flows back to the rank that made it. Ranks may hold different numbers of rows
    (a short last batch): pieces are padded for the collective and trimmed after."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [x]
    sizes = all_gather_sizes(x.shape[0], x.device)
    longest = max(sizes)
    padded = x if x.shape[0] == longest else torch.cat([x, x.new_zeros(longest - x.shape[0], *x.shape[1:])])
    if grad:
        from torch.distributed.nn.functional import all_gather

        pieces = list(all_gather(padded))
    else:
        pieces = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(pieces, padded.contiguous())
    return [g[:n] for g, n in zip(pieces, sizes, strict=True)]


def all_gather_sizes(n: int, device: torch.device) -> list[int]:
    """The first-dimension size held by every rank."""
    mine = torch.tensor([n], dtype=torch.int64, device=device)
    out = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    return [int(t.item()) for t in out]


def gather_negatives(x: torch.Tensor, *extra: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
    """The other ranks' rows of ``x`` (with gradients) and of each ``extra`` tensor (e.g. article ids,
    gathered without gradients), concatenated; None when not distributed. The caller's own rows are left
    out: they are already the in-batch candidates."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    me = dist.get_rank()
    pieces = all_gather_with_grad(x)
    out = [torch.cat([p for r, p in enumerate(pieces) if r != me])]
    for t in extra:
        got = all_gather_with_grad(t, grad=False)
        out.append(torch.cat([p for r, p in enumerate(got) if r != me]))
    return tuple(out)


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is True on any rank (e.g. a NaN loss seen by one of them)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def sum_ranks(value: int, info: DistInfo) -> int:
    """The sum of an integer over all ranks (e.g. training windows seen in an epoch)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=info.device)
    dist.all_reduce(t)
    return int(t.item())


def broadcast_from_main(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (a picklable value: the end-of-epoch decision)."""
    if not info.enabled:
        return obj
    box = [obj if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
