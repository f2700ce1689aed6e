"""What the server does, as plain library calls (the routes in app.py only translate HTTP to these).

    svc = Service.open("banks/enwiki", run="runs/gru")
    svc.search(SearchRequest(text="the capital of France", k=5))
    svc.next(NextRequest(paragraph="Paris is the capital of France. It lies on the Seine.", k=10))

One request to ``next``, in stages (each timed, the times come back in ``timings_ms``):

1. context: the given chunk texts, or the paragraph split by the bank's own chunker (its manifest records the
   spec), every run of whitespace made one space, as ingest does; at most ``limits.max_context_chunks``;
2. encode: the context chunks with the bank's encoder;
3. predict: ``models.answer(request_id, vectors)`` -> (run name, predicted vector). ``models`` is the one
   object that chooses the run (``predictors.SingleRun`` here; routing replaces it);
4. search: the predicted vector and the last context vector (copy_last, the baseline every number stands
   beside) in one FAISS call over the whole bank, leaving out bank chunks whose text is a context chunk
   (``exclude_context``, the evaluator's protocol) so the answer is not the input echoed back. Every search
   goes through ``VectorBank.search(..., searcher=)``, so a score no unit vector can give (a damaged row that
   the open-time sample missed) is an error naming the row, never an answer.

After the answer (``defer``: the route passes FastAPI's background tasks, so this runs once the response has
been sent): the request and response go to the request log when one is open (``--log-requests``), and shadow
runs (``--routing``) compute their answers with the same search, for the log and the agreement in /v1/info.

The service writes no file but the opt-in request log, whose lines are whole even when the server is killed
(lvmkit.serve.requestlog).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from lvmkit.bank.bank import VectorBank
from lvmkit.bank.manifest import check_same_space
from lvmkit.corpus.readers.text import normalize_ws
from lvmkit.errors import ConfigError, RequestError
from lvmkit.eval.protocol import DESCRIPTION, OPEN
from lvmkit.serve.batcher import MicroBatcher
from lvmkit.serve.predictors import Predictors, SingleRun, load_predictor
from lvmkit.serve.requestlog import RequestLog
from lvmkit.serve.routing import RoutedRuns, RoutingConfig
from lvmkit.serve.schemas import (
    Health,
    Hit,
    Info,
    Limits,
    NextRequest,
    NextResponse,
    SearchRequest,
    SearchResponse,
)

_log = logging.getLogger("lvmkit.serve")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
PROTOCOL = {
    "name": OPEN,
    "description": DESCRIPTION[OPEN],
    "exclude_context": "bank chunks whose text equals a context chunk are left out (default; per request)",
    "baseline": "copy_last: the nearest chunks to the last context chunk, from the same search",
}


class Service:
    """A bank, its query encoder, the models that answer ``next``, the runs directory and the limits."""

    def __init__(
        self,
        bank: VectorBank,
        encoder,
        models: Predictors,
        runs_dir: Path | None = None,
        limits: Limits | None = None,
        request_log: RequestLog | None = None,
        batch_search: bool = False,
    ):
        self.bank, self.encoder, self.models = bank, encoder, models
        self.runs_dir = Path(runs_dir) if runs_dir is not None else None
        self.limits = limits or Limits()
        self.request_log = request_log
        self.chunker = bank_chunker(bank)
        self.index = bank.index()
        # --batch-search: concurrent requests' searches coalesced into one FAISS call (lvmkit.serve.batcher)
        self.searcher = MicroBatcher(self.index) if batch_search else self.index

    @classmethod
    def open(
        cls,
        bank: str | Path,
        run: str | None = None,
        runs_dir: str | Path | None = None,
        *,
        backend: str | None = None,
        device: str = "cpu",
        nprobe: int | None = None,
        limits: Limits | None = None,
        routing: RoutingConfig | None = None,
        log_requests: str | Path | None = None,
        batch_search: bool = False,
    ) -> Service:
        """Open the bank, load its encoder and the run (refused when trained in another vector space), and
        build the index. ``run`` None serves the copy_last baseline; ``runs_dir`` defaults to the run's parent.
        ``routing`` (lvmkit.serve.routing) loads several runs instead of ``run``; ``log_requests`` is a
        directory for the request log."""
        from lvmkit.encode import load_encoder

        vb = VectorBank.open(bank)
        runs_dir = Path(runs_dir) if runs_dir is not None else None
        models = _load_models(vb, run, routing, runs_dir)
        if runs_dir is None:
            first = models.describe()[0]  # the single run, or the routing's default
            runs_dir = Path(first["source"]).parent if first.get("kind") == "run" else None
        enc = load_encoder(vb.encoder.name, backend=backend or vb.encoder.backend, device=device)
        check_same_space(vb.encoder, enc.info, f"bank {vb.path}", "the query encoder")
        log = RequestLog(log_requests) if log_requests is not None else None
        svc = cls(vb, enc, models, runs_dir, limits, log, batch_search)
        svc.index.set_nprobe(nprobe)
        svc.warm_up()
        return svc

    def warm_up(self) -> None:
        """Encode and search once before the first request (lazy encoder and index set-up took ~0.4 s of the
        first request). The models are left alone: a routed server's latency statistics start clean."""
        if len(self.bank):
            self.bank.search(self.encoder.encode(self.bank.texts([0])), 1, searcher=self.index)
            self.rows_with_texts(self.bank.texts([0]))  # builds the text lookup

    # -------------------------------------------------------------------------------------------- reads
    def health(self) -> Health:
        return Health(status="ok", bank_chunks=len(self.bank), runs=self.models.names())

    def info(self, auth: str = "none") -> Info:
        b, m = self.bank, self.bank.manifest
        return Info(
            bank={
                "path": str(b.path),
                "bank_id": m.bank_id,
                "chunks": len(b),
                "articles": b.n_articles,
                "chunker": m.chunker,
                "corpus": m.corpus.model_dump(mode="json"),
                "created": m.created,
                "paragraph_split": self.chunker is not None,
            },
            encoder=b.encoder.model_dump(mode="json"),
            query_encoder=self.encoder.info.model_dump(mode="json"),
            models=self.models.describe(),
            routing=self.models.info() if isinstance(self.models, RoutedRuns) else None,
            request_log=str(self.request_log.dir) if self.request_log is not None else None,
            index=index_info(self.index, self.searcher),
            protocol=PROTOCOL,
            limits=self.limits,
            runs_dir=str(self.runs_dir) if self.runs_dir else None,
            auth=auth,
        )

    # ------------------------------------------------------------------------------------------ search
    def search(self, req: SearchRequest, defer: Defer | None = None) -> SearchResponse:
        k = self._k(req.k)
        t0 = time.perf_counter()
        q = self.encoder.encode([req.text])
        t1 = time.perf_counter()
        scores, ids = self.bank.search(q, k, searcher=self.searcher)
        t2 = time.perf_counter()
        response = SearchResponse(
            k=k, hits=self.hits(scores[0], ids[0]), timings_ms={"encode": ms(t0, t1), "search": ms(t1, t2)}
        )
        if self.request_log is not None:
            (defer or _now)(
                self.request_log.answer,
                "/v1/search",
                req.model_dump(mode="json"),
                response.model_dump(mode="json"),
            )
        return response

    # -------------------------------------------------------------------------------------------- next
    def next(self, req: NextRequest, defer: Defer | None = None) -> NextResponse:
        """Predicted next chunks beside copy_last. ``defer(fn, *args)`` schedules the after-answer work (request
        log, shadows); None runs it before returning."""
        k = self._k(req.k)
        request_id = req.request_id or uuid.uuid4().hex
        t0 = time.perf_counter()
        texts = self.context_chunks(req)
        vectors = self.encoder.encode(texts)
        t1 = time.perf_counter()
        run, predicted = self.models.answer(request_id, vectors)
        t2 = time.perf_counter()
        excluded = self.rows_with_texts(texts) if req.exclude_context else np.zeros(0, dtype=np.int64)
        queries = np.stack([np.asarray(predicted, dtype=np.float32), vectors[-1]])
        scores, ids = self.bank.search(queries, k, exclude=[excluded, excluded], searcher=self.searcher)
        t3 = time.perf_counter()
        used = min(
            len(texts), next((d["ctx"] for d in self.models.describe() if d["name"] == run), len(texts))
        )
        response = NextResponse(
            run=run,
            request_id=request_id,
            context=texts,
            context_used=used,
            excluded_chunk_ids=[int(r) for r in excluded],
            predicted=self.hits(scores[0], ids[0]),
            copy_last=self.hits(scores[1], ids[1]),
            timings_ms={
                "encode": ms(t0, t1),
                "predict": ms(t1, t2),
                "search": ms(t2, t3),
                "total": ms(t0, t3),
            },
        )
        if self.request_log is not None or isinstance(self.models, RoutedRuns):
            (defer or _now)(self.after_next, req, response, vectors, excluded, k)
        return response

    def after_next(
        self, req: NextRequest, response: NextResponse, vectors: np.ndarray, excluded: np.ndarray, k: int
    ) -> None:
        """Log the answer, then compute and log the shadow runs' answers (never returned to the client)."""
        log = self.request_log
        if log is not None:
            log.answer("/v1/next", req.model_dump(mode="json"), response.model_dump(mode="json"))
        if not isinstance(self.models, RoutedRuns):
            return
        answer_ids = [h.chunk_id for h in response.predicted]
        for sh in self.models.run_shadows(
            response.run,
            vectors,
            answer_ids,
            lambda vec: _first(self.bank.search(vec[None], k, exclude=[excluded], searcher=self.index)),
        ):
            if log is not None:
                ranked = [
                    {"chunk_id": i, "score": round(s, 6)}
                    for i, s in zip(sh.chunk_ids, sh.scores, strict=True)
                ]
                log.shadow("/v1/next", response.request_id, sh.run, sh.latency_ms, ranked)
            else:
                _log.info(
                    "shadow %s for request %s: %.2f ms, top ids %s, overlap@%d with %s %.2f",
                    sh.run,
                    response.request_id,
                    sh.latency_ms,
                    sh.chunk_ids[:5],
                    k,
                    response.run,
                    sh.overlap,
                )

    def context_chunks(self, req: NextRequest) -> list[str]:
        """The request's context as chunk texts (a paragraph split by the bank's chunker), within the limit."""
        if req.context is not None:
            texts = [normalize_ws(t) for t in req.context]
        else:
            if self.chunker is None:
                raise RequestError(
                    f"this bank's chunker ({self.bank.manifest.chunker.get('spec')!r}) cannot split a paragraph; "
                    "send 'context' as a list of chunk texts instead"
                )
            texts = [c for p in _PARAGRAPH_BREAK.split(req.paragraph) for c in self.chunker.pieces(p)]
        texts = [t for t in texts if t]
        if not texts:
            raise RequestError("the paragraph holds no text to split into chunks")
        limit = self.limits.max_context_chunks
        if len(texts) > limit:
            raise RequestError(
                f"{len(texts)} context chunks; this server takes at most {limit} (see /v1/info limits; "
                "send the last chunks only, or start the server with a larger --max-context)"
            )
        return texts

    def rows_with_texts(self, texts: list[str]) -> np.ndarray:
        """Bank rows whose chunk text equals one of ``texts``."""
        return rows_with_texts(self.bank, texts)

    def hits(self, scores: np.ndarray, ids: np.ndarray) -> list[Hit]:
        rows = [int(i) for i in ids if i >= 0]
        if not rows:
            return []
        table = self.bank.chunks.take(pa.array(rows, pa.int64())).to_pylist()
        return [
            Hit(
                rank=rank,
                chunk_id=row["chunk_id"],
                score=float(score),
                article_id=row["article_id"],
                title=row["title"],
                chunk_index=row["chunk_index"],
                text=row["text"],
                label=row["label"],
            )
            for rank, (row, score) in enumerate(zip(table, scores, strict=False), 1)
        ]

    def _k(self, k: int) -> int:
        if k > self.limits.max_k:
            raise RequestError(f"k={k} is above this server's limit of {self.limits.max_k}")
        return min(k, len(self.bank))


def _load_models(
    vb: VectorBank, run: str | None, routing: RoutingConfig | None, runs_dir: Path | None
) -> Predictors:
    """One run (``SingleRun``) or the runs a routing file names (``RoutedRuns``); never both."""
    if routing is not None:
        if run is not None:
            raise ConfigError("give --run or --routing, not both (the routing file names its runs)")
        return RoutedRuns.open(routing, vb, runs_dir)
    return SingleRun(load_predictor(run or "baseline:copy_last", vb, runs_dir))


class TextLookup:
    """Bank rows by exact chunk text: a sorted array of 64-bit text hashes (16 bytes a row), searched with
    ``np.searchsorted``, each candidate confirmed by comparing the text itself (so a hash collision costs
    nothing but a comparison). Built once per bank; a lookup is O(T log N), not a scan of every text."""

    def __init__(self, bank: VectorBank):
        self.texts = bank.chunks.column("text")
        hashes = np.fromiter(
            (_text_key(t) for t in self.texts.to_pylist()), dtype=np.int64, count=len(self.texts)
        )
        self.order = np.argsort(hashes, kind="stable")
        self.sorted = hashes[self.order]

    def rows(self, texts: list[str]) -> np.ndarray:
        found = []
        for text in dict.fromkeys(texts):
            key = _text_key(text)
            lo, hi = np.searchsorted(self.sorted, key, "left"), np.searchsorted(self.sorted, key, "right")
            found += [int(r) for r in self.order[lo:hi] if self.texts[int(r)].as_py() == text]
        return np.asarray(sorted(found), dtype=np.int64)


_LOOKUPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOOKUPS_LOCK = threading.Lock()


def _text_key(text: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True
    )


def rows_with_texts(bank: VectorBank, texts: list[str]) -> np.ndarray:
    """Bank rows whose chunk text equals one of ``texts`` (the context the server leaves out of results)."""
    with _LOOKUPS_LOCK:
        lookup = _LOOKUPS.get(bank)
        if lookup is None:
            lookup = _LOOKUPS[bank] = TextLookup(bank)
    return lookup.rows(texts)


def bank_chunker(bank: VectorBank):
    """The chunker the bank was made with (from its manifest), or None when it is not a known spec."""
    from lvmkit.corpus.chunking import make_chunker

    cfg = bank.manifest.chunker or {}
    try:
        if cfg.get("segmenter"):
            return make_chunker(str(cfg.get("spec")), segmenter=cfg["segmenter"])
        return make_chunker(str(cfg.get("spec")))
    except ConfigError:
        return None


def index_info(index, searcher=None) -> dict[str, Any]:
    """The index's parameters, with the nprobe / efSearch it searches with now (and the batcher's counts)."""
    import faiss

    info = dict(index.params)
    if isinstance(searcher, MicroBatcher):
        info["batch_search"] = searcher.stats.to_dict()
    if info.get("type") == "ivf":
        info["nprobe"] = int(faiss.extract_index_ivf(index.faiss).nprobe)
    elif info.get("type") == "hnsw":
        info["ef_search"] = int(index.faiss.hnsw.efSearch)
    return info


Defer = Callable[..., None]  # defer(fn, *args): run fn(*args) later (FastAPI's BackgroundTasks.add_task)


def _now(fn: Callable[..., None], *args: Any) -> None:
    fn(*args)


def _first(result: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    scores, ids = result
    return scores[0], ids[0]


def ms(t0: float, t1: float) -> float:
    return round((t1 - t0) * 1000.0, 3)
