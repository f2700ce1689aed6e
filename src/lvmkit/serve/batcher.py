"""A micro-batcher: concurrent searches coalesced into one FAISS call (``lvmkit serve --batch-search``).

    batcher = MicroBatcher(bank.index(), max_batch=64)
    scores, ids = batcher.search(queries, k, exclude=[rows, rows])   # same contract as SearchIndex.search
    batcher.close()

Each caller's queries go on a queue and the caller waits. One worker thread takes the first waiting request,
then every request already queued behind it (up to ``max_batch`` query rows; with ``max_wait_ms`` > 0 it also
waits that long for more), runs ONE ``SearchIndex.search`` over all their rows with the largest k and every
row's own exclusions, and hands each caller its rows cut to its k. Under light load a request is searched
alone at once (no added wait by default); under heavy load FAISS gets whole batches, which it spreads over its
threads instead of many single-query calls contending for the same cores.

Results equal one call per request: a row's exclusions are its own, and the top k of a search for K >= k
results is the top k (tested against direct calls, ties aside).
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from lvmkit.bank.index import exclusion_matrix


@dataclass
class _Job:
    queries: np.ndarray  # [q, d]
    k: int
    exclude: np.ndarray  # [q, E] int64, -1 padded
    future: Future = field(default_factory=Future)


@dataclass
class BatchStats:
    calls: int = 0  # FAISS calls made
    requests: int = 0  # search() calls served
    rows: int = 0  # query rows searched

    def to_dict(self) -> dict[str, float]:
        return {
            "faiss_calls": self.calls,
            "requests": self.requests,
            "mean_requests_per_call": self.requests / self.calls if self.calls else 0.0,
            "mean_rows_per_call": self.rows / self.calls if self.calls else 0.0,
        }


class MicroBatcher:
    """Thread-safe ``search`` with the contract of ``lvmkit.bank.index.SearchIndex.search``."""

    def __init__(self, index, max_batch: int = 64, max_wait_ms: float = 0.0):
        self.index = index
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.stats = BatchStats()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="lvmkit-search-batcher", daemon=True)
        self._worker.start()

    @property
    def params(self):
        return self.index.params

    def search(self, queries: np.ndarray, k: int, exclude=None, nprobe: int | None = None):
        if nprobe is not None:
            raise ValueError("MicroBatcher searches with the index's nprobe; set it on the index")
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
        q = q[None] if q.ndim == 1 else q
        job = _Job(q, int(k), exclusion_matrix(exclude, len(q)))
        self._queue.put(job)
        return job.future.result()

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=5)

    # ---- the worker
    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = self._collect(first)
            try:
                self._search(jobs)
            except BaseException as e:  # every waiting caller gets the error, the worker lives on
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)

    def _collect(self, first: _Job) -> list[_Job]:
        jobs, rows = [first], len(first.queries)
        deadline = time.perf_counter() + self.max_wait
        while rows < self.max_batch:
            try:
                wait = deadline - time.perf_counter()
                job = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # close() after this batch
                break
            jobs.append(job)
            rows += len(job.queries)
        return jobs

    def _search(self, jobs: list[_Job]) -> None:
        width = max(j.exclude.shape[1] for j in jobs)
        queries = np.concatenate([j.queries for j in jobs])
        exclude = np.full((len(queries), width), -1, dtype=np.int64)
        at = 0
        for j in jobs:
            exclude[at : at + len(j.queries), : j.exclude.shape[1]] = j.exclude
            at += len(j.queries)
        kmax = max(j.k for j in jobs)
        scores, ids = self.index.search(queries, kmax, exclude=exclude if width else None)
        self.stats.calls += 1
        self.stats.requests += len(jobs)
        self.stats.rows += len(queries)
        at = 0
        for j in jobs:
            n = len(j.queries)
            j.future.set_result((scores[at : at + n, : j.k], ids[at : at + n, : j.k]))
            at += n
