"""Latency of the whole query path: model forward + full-bank search, as a user would see it.

Two numbers matter and are measured separately:

- per-request latency at ``batch_size`` (1 by default): P50/P95/P99 in milliseconds over ``n`` requests,
  each timed from "context vectors in hand" to "top-k chunk ids out", with the forward and search parts
  also reported on their own;
- throughput: queries per second when ``throughput_batch`` windows are predicted and searched together.

Warm-up requests run first and are not counted (first calls pay for allocation and lazy initialisation).
Wall-clock timing depends on the machine and its load: report the thread count and run benchmarks on a
quiet machine; never assert on these numbers in tests.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from lvmkit.bank.bank import VectorBank
from lvmkit.errors import ConfigError
from lvmkit.eval.evaluator import _Predict, resolve_index


@dataclass(frozen=True)
class LatencyResult:
    p50_ms: float
    p95_ms: float
    p99_ms: float
    forward_p50_ms: float
    search_p50_ms: float
    qps: float  # queries per second at throughput_batch
    n: int
    batch_size: int
    throughput_batch: int
    k: int
    index: str
    torch_threads: int

    def to_dict(self) -> dict:
        return asdict(self)


def _sample(n_windows: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(n_windows, size=n, replace=n > n_windows)


def measure_latency(
    predictor,
    windows,
    bank: VectorBank,
    n: int = 200,
    batch_size: int = 1,
    *,
    k: int = 50,
    warmup: int = 10,
    throughput_batch: int = 256,
    throughput_queries: int = 2048,
    exclude_context: bool = True,
    index: str | None = None,
    nprobe: int | None = None,
    seed: int = 0,
) -> LatencyResult:
    """Time ``n`` requests of ``batch_size`` windows (forward + top-``k`` search, context excluded), then
    throughput over ``throughput_queries`` windows in batches of ``throughput_batch``."""
    if n < 1 or batch_size < 1 or throughput_batch < 1 or k < 1:
        raise ConfigError(
            f"n, batch_size, throughput_batch and k must be >= 1, got {n}, {batch_size}, {throughput_batch}, {k}"
        )
    if len(windows) == 0:
        raise ConfigError("no windows to time")
    si = resolve_index(bank, index)

    def request(idx: np.ndarray, predict: _Predict) -> tuple[float, float]:
        batch = windows.batch(idx)
        exclude = np.asarray(windows.context_rows(idx), dtype=np.int64) if exclude_context else None
        t0 = time.perf_counter()
        q = predict(batch)
        t1 = time.perf_counter()
        si.search(q, k, exclude=exclude, nprobe=nprobe)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    requests = _sample(len(windows), (n + warmup) * batch_size, seed).reshape(n + warmup, batch_size)
    with torch.no_grad(), _Predict(predictor) as predict:
        times = np.array([request(idx, predict) for idx in requests])[warmup:] * 1000.0
        total = times.sum(axis=1)
        tq = _sample(len(windows), throughput_queries, seed + 1)
        request(tq[:throughput_batch], predict)  # warm-up at the batched shape
        elapsed = sum(
            sum(request(tq[s : s + throughput_batch], predict)) for s in range(0, len(tq), throughput_batch)
        )
    p50, p95, p99 = np.percentile(total, [50, 95, 99])
    return LatencyResult(
        p50_ms=float(p50),
        p95_ms=float(p95),
        p99_ms=float(p99),
        forward_p50_ms=float(np.percentile(times[:, 0], 50)),
        search_p50_ms=float(np.percentile(times[:, 1], 50)),
        qps=float(len(tq) / elapsed) if elapsed > 0 else float("inf"),
        n=int(n),
        batch_size=int(batch_size),
        throughput_batch=int(throughput_batch),
        k=int(k),
        index=str(si.params.get("type")),
        torch_threads=torch.get_num_threads(),
    )
