"""The search micro-batcher: the same results as one call per request, and requests really coalesced."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import random_unit_vectors

from lvmkit.bank.index import build_index
from lvmkit.serve.batcher import MicroBatcher


class GatedIndex:
    """Wraps an index; its first search blocks until the test opens the gate (so others queue behind it)."""

    def __init__(self, index):
        self.index, self.gate, self.entered, self.calls = index, threading.Event(), threading.Event(), []
        self.params = index.params

    def search(self, queries, k, exclude=None, nprobe=None):
        if not self.calls:
            self.entered.set()
            self.gate.wait()
        self.calls.append(len(queries))
        return self.index.search(queries, k, exclude=exclude)


def requests(n, dim, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        q = random_unit_vectors(1 + i % 2, dim, seed=100 + i)
        ex = [rng.choice(500, size=int(rng.integers(0, 4)), replace=False) for _ in range(len(q))]
        out.append((q, int(rng.integers(1, 20)), ex))
    return out


def test_batched_results_equal_one_call_per_request_and_calls_coalesce():
    index = build_index(random_unit_vectors(500, 16, seed=1), type="flat")
    gated = GatedIndex(index)
    batcher = MicroBatcher(gated, max_batch=1000)
    reqs = requests(24, 16)
    results = [None] * len(reqs)

    def call(i):
        q, k, ex = reqs[i]
        results[i] = batcher.search(q, k, exclude=ex)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(reqs))]
    threads[0].start()
    assert gated.entered.wait(timeout=60)  # request 0 is in the worker's FAISS call, held by the gate
    for t in threads[1:]:
        t.start()
    while batcher._queue.qsize() < len(reqs) - 1:
        time.sleep(0.001)  # every other request waits in the queue
    gated.gate.set()
    for t in threads:
        t.join()
    batcher.close()
    rows = sum(len(q) for q, _, _ in reqs)
    assert gated.calls == [len(reqs[0][0]), rows - len(reqs[0][0])]  # the 23 queued requests: ONE call
    assert batcher.stats.to_dict()["faiss_calls"] == 2
    for (q, k, ex), (scores, ids) in zip(reqs, results, strict=True):
        want_s, want_i = index.search(q, k, exclude=ex)
        np.testing.assert_array_equal(ids, want_i)
        np.testing.assert_allclose(scores, want_s, rtol=1e-6)


def test_an_error_reaches_the_caller_and_the_worker_survives():
    index = build_index(random_unit_vectors(50, 8), type="flat")
    batcher = MicroBatcher(index)
    with pytest.raises(ValueError, match="8-dimensional"):
        batcher.search(np.zeros((1, 3), np.float32), 5)  # wrong dimension: the index refuses
    scores, ids = batcher.search(random_unit_vectors(1, 8, seed=3), 5)
    assert ids.shape == (1, 5)
    batcher.close()
