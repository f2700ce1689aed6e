"""Gradient caching (GradCache, Gao et al. 2021): a contrastive batch larger than memory allows.

InfoNCE wants many negatives, so a big batch; but the query tower's activations for a batch of ctx-100
windows grow with the batch. The loss, however, only depends on the batch through the query
*representations* ``r = f(x)`` ([B, d], small). GradCache splits the work at ``r``:

    1. encode every sub-batch x_i WITHOUT a graph:          r_i = f(x_i)            (no activations kept)
    2. compute the loss on the full batch r = [r_1; ...; r_n] and its gradient g = dL/dr
    3. re-encode each sub-batch WITH a graph and backpropagate g_i into the parameters:
                                                            dL/dtheta = sum_i (dr_i/dtheta)^T g_i

The gradients are those of the plain full-batch computation (the chain rule, split at ``r``), while peak
memory is one sub-batch of activations. The cost is one extra forward pass per step.

Here it is one autograd node: ``cached_forward(encode, chunks, params)`` returns ``r`` as a tensor wired to
the parameters. The loss is built on it as usual and ``loss.backward()`` (however the trainer scales it)
runs step 3 inside the node's backward. So a task can return that loss to the training loop unchanged, and
gradient accumulation, AMP scaling and clipping work as for any other loss. Two details make step 3 exact:
each sub-batch's random state (dropout) is saved in step 1 and restored for its re-encoding, and the
autocast state of step 1 is re-entered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class RandomState:
    """The torch CPU and CUDA generator states at one moment (what dropout draws from)."""

    cpu: Tensor
    cuda: list[Tensor]

    @classmethod
    def capture(cls) -> RandomState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return cls(torch.get_rng_state(), cuda)

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        """Run a block from this state, leaving the generators as they were before the block."""
        devices = list(range(len(self.cuda)))
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda:
                torch.cuda.set_rng_state_all(self.cuda)
            yield


@dataclass
class _Replay:
    """What the backward pass needs to re-encode the sub-batches."""

    encode: Callable[[Any], Tensor]
    chunks: Sequence[Any]
    states: list[RandomState]
    sizes: list[int]
    params: list[Tensor]
    autocast: tuple[str, torch.dtype] | None


class _CachedReps(torch.autograd.Function):
    """Forward: hand the precomputed representations on. Backward: re-encode sub-batch by sub-batch and
    return the parameters' gradients (the representations' own gradient is the cached ``g``)."""

    @staticmethod
    def forward(ctx, replay: _Replay, reps: Tensor, *params: Tensor) -> Tensor:
        ctx.replay = replay
        return reps.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        replay: _Replay = ctx.replay
        grads: list[Tensor | None] = [None] * len(replay.params)
        start = 0
        for chunk, state, size in zip(replay.chunks, replay.states, replay.sizes, strict=True):
            g = grad[start : start + size]
            start += size
            cast = (
                torch.autocast(replay.autocast[0], dtype=replay.autocast[1])
                if replay.autocast
                else contextlib.nullcontext()
            )
            with torch.enable_grad(), state.restored(), cast:
                r = replay.encode(chunk)
            got = torch.autograd.grad(r, replay.params, grad_outputs=g.to(r.dtype), allow_unused=True)
            for i, gi in enumerate(got):
                if gi is not None:
                    grads[i] = gi if grads[i] is None else grads[i] + gi
        ctx.replay = None  # free the chunks
        return (None, None, *grads)


def _autocast_state() -> tuple[str, torch.dtype] | None:
    for device in ("cuda", "cpu"):
        if torch.is_autocast_enabled(device):
            return device, torch.get_autocast_dtype(device)
    return None


def cached_forward(
    encode: Callable[[Any], Tensor], chunks: Sequence[Any], params: Sequence[Tensor]
) -> Tensor:
    """Representations of every chunk, concatenated, computed without keeping activations.

    encode   ``encode(chunk) -> Tensor [b, ...]`` (e.g. the query tower on one sub-batch)
    chunks   the sub-batches, in order
    params   the parameters ``encode`` uses (those that require grad receive gradients)

    The result behaves like ``torch.cat([encode(c) for c in chunks])``: backpropagating through it gives
    the same parameter gradients (up to float rounding), with one sub-batch of activations in memory.
    """
    if not chunks:
        raise ValueError("cached_forward needs at least one chunk")
    trainable = [p for p in params if p.requires_grad]
    states, outs = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(RandomState.capture())
            outs.append(encode(chunk))
    reps = torch.cat(outs)
    if not trainable or not torch.is_grad_enabled():
        return reps
    replay = _Replay(encode, chunks, states, [len(o) for o in outs], trainable, _autocast_state())
    return _CachedReps.apply(replay, reps, *trainable)


def split_batch(n: int, chunk_size: int | None) -> list[slice]:
    """Slices cutting ``n`` rows into sub-batches of ``chunk_size`` (one slice when None or >= n)."""
    if chunk_size is None or chunk_size >= n:
        return [slice(0, n)]
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return [slice(s, min(n, s + chunk_size)) for s in range(0, n, chunk_size)]
