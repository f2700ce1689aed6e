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
   (``exclude_context``, the evaluator's protocol) so the answer is not the input echoed back.

The service writes no file: a server killed mid-request leaves nothing behind.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lvmkit.bank.bank import VectorBank
from lvmkit.bank.manifest import check_same_space
from lvmkit.corpus.readers.text import normalize_ws
from lvmkit.errors import RequestError
from lvmkit.serve.predictors import Predictors, SingleRun, load_predictor
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

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
PROTOCOL = {
    "name": "open",
    "search": "full bank (every chunk is a candidate)",
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
    ):
        self.bank, self.encoder, self.models = bank, encoder, models
        self.runs_dir = Path(runs_dir) if runs_dir is not None else None
        self.limits = limits or Limits()
        self.chunker = bank_chunker(bank)
        self.index = bank.index()

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
    ) -> Service:
        """Open the bank, load its encoder and the run (refused when trained in another vector space), and
        build the index. ``run`` None serves the copy_last baseline; ``runs_dir`` defaults to the run's parent."""
        from lvmkit.encode import load_encoder

        vb = VectorBank.open(bank)
        runs_dir = Path(runs_dir) if runs_dir is not None else None
        predictor = load_predictor(run or "baseline:copy_last", vb, runs_dir)
        if runs_dir is None and predictor.info.get("kind") == "run":
            runs_dir = Path(predictor.info["source"]).parent
        enc = load_encoder(vb.encoder.name, backend=backend or vb.encoder.backend, device=device)
        check_same_space(vb.encoder, enc.info, f"bank {vb.path}", "the query encoder")
        svc = cls(vb, enc, SingleRun(predictor), runs_dir, limits)
        svc.index.set_nprobe(nprobe)
        return svc

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
            index=index_info(self.index),
            protocol=PROTOCOL,
            limits=self.limits,
            runs_dir=str(self.runs_dir) if self.runs_dir else None,
            auth=auth,
        )

    # ------------------------------------------------------------------------------------------ search
    def search(self, req: SearchRequest) -> SearchResponse:
        k = self._k(req.k)
        t0 = time.perf_counter()
        q = self.encoder.encode([req.text])
        t1 = time.perf_counter()
        scores, ids = self.index.search(q, k)
        t2 = time.perf_counter()
        return SearchResponse(
            k=k, hits=self.hits(scores[0], ids[0]), timings_ms={"encode": ms(t0, t1), "search": ms(t1, t2)}
        )

    # -------------------------------------------------------------------------------------------- next
    def next(self, req: NextRequest) -> NextResponse:
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
        scores, ids = self.index.search(queries, k, exclude=[excluded, excluded])
        t3 = time.perf_counter()
        used = min(
            len(texts), next((d["ctx"] for d in self.models.describe() if d["name"] == run), len(texts))
        )
        return NextResponse(
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
        mask = pc.is_in(self.bank.chunks.column("text"), value_set=pa.array(texts, pa.string()))
        return np.flatnonzero(mask.to_numpy(zero_copy_only=False)).astype(np.int64)

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


def bank_chunker(bank: VectorBank):
    """The chunker the bank was made with (from its manifest), or None when it is not a known spec."""
    from lvmkit.corpus.chunking import make_chunker
    from lvmkit.errors import ConfigError

    cfg = bank.manifest.chunker or {}
    try:
        if cfg.get("segmenter"):
            return make_chunker(str(cfg.get("spec")), segmenter=cfg["segmenter"])
        return make_chunker(str(cfg.get("spec")))
    except ConfigError:
        return None


def index_info(index) -> dict[str, Any]:
    """The index's parameters, with the nprobe / efSearch it searches with now."""
    import faiss

    info = dict(index.params)
    if info.get("type") == "ivf":
        info["nprobe"] = int(faiss.extract_index_ivf(index.faiss).nprobe)
    elif info.get("type") == "hnsw":
        info["ef_search"] = int(index.faiss.hnsw.efSearch)
    return info


def ms(t0: float, t1: float) -> float:
    return round((t1 - t0) * 1000.0, 3)
