"""``lvmkit replay``: score the ``/v1/next`` requests of a request log offline, with several runs beside the
baselines, on the same requests.

    result = replay("logs/", ["runs/amn", "runs/gru"], bank)
    print(result.table())

What "score" means here, honestly. A logged request has no label: the server never learns what the user's next
chunk was. So a replay reports two different things and never mixes them:

1. **Truth, where the log itself proves one.** When a request's context chunks are, text for text, consecutive
   chunks of one bank article (rows r-n+1..r, each text unique in the bank), the chunk after them (row r+1, same
   article) is that document's real next chunk. Those requests are scored like ``lvmkit eval``: the whole bank
   is searched exactly, the context chunks are left out (as the server did when ``exclude_context`` was set),
   the truth is found by chunk id: Hit@1, Hit@k, MRR@k. Requests whose truth lies in an article a replayed run
   trained on (its split.json on this bank) are counted and left out of the scored set.
2. **Agreement, for every request.** overlap@k: the share of one system's top k found in another's. It says
   how differently two systems answer the same traffic, not which is right; a model that agrees with
   copy_last everywhere has learned to copy.

The "logged" row is what the server actually answered (from the log); a replayed run that was the one
answering should reproduce it (overlap@k with "logged" on its requests near 1.0: the server encoded each
request alone and may have searched an IVF index, the replay encodes in batches and searches exactly), which
checks the replay itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lvmkit.bank.bank import VectorBank
from lvmkit.bank.index import exact_index
from lvmkit.errors import ArtifactError, ProvenanceError
from lvmkit.eval.metrics import hit_at_k, mrr_at_k
from lvmkit.serve.requestlog import LogStats, read_log

REPLAY_BASELINES = ("copy_last", "mean_ctx", "exp_weighted")
LOGGED = "logged"


@dataclass
class LoggedRequest:
    context: list[str]
    exclude_context: bool
    run: str | None  # the run that answered, when the log says
    answer_ids: list[int]  # what the server returned (ranked chunk ids)


@dataclass
class ReplayResult:
    systems: list[str]
    k: int
    n_requests: int
    n_truth: int  # requests whose next chunk the bank proves
    n_scored: int  # ... of which not in an article a replayed run trained on
    truth_metrics: dict[str, dict[str, float]]  # system -> hit@1, hit@k, mrr@k over the scored requests
    overlap: dict[str, dict[str, float]]  # system -> other system -> mean overlap@k over all requests
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def table(self) -> str:
        """A Markdown table: truth metrics (where known) and overlap@k with each replayed run and copy_last."""
        refs = [s for s in self.systems if s not in (LOGGED, *REPLAY_BASELINES)] + ["copy_last"]
        head = ["system", "hit@1", f"hit@{self.k}", f"mrr@{self.k}"] + [
            f"overlap@{self.k} vs {r}" for r in refs
        ]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for s in self.systems:
            m = self.truth_metrics.get(s, {})
            cells = [_pct(m.get("hit@1")), _pct(m.get(f"hit@{self.k}")), _num(m.get(f"mrr@{self.k}"))]
            cells += [_num(self.overlap.get(s, {}).get(r)) for r in refs]
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


# ------------------------------------------------------------------------------------------ reading
def logged_requests(log: str | Path, stats: LogStats | None = None) -> list[LoggedRequest]:
    """The ``/v1/next`` answers of a log, with the context the server actually used (a paragraph already split)."""
    out = []
    for r in read_log(log, stats):
        if r.get("kind") != "answer" or r.get("endpoint") != "/v1/next":
            continue
        req, resp = r.get("request") or {}, r.get("response") or {}
        context = resp.get("context") or req.get("context")
        if not context:
            continue
        ids = [int(h["chunk_id"]) for h in resp.get("predicted", [])]
        out.append(LoggedRequest(list(context), bool(req.get("exclude_context", True)), resp.get("run"), ids))
    return out


# ------------------------------------------------------------------------------------------- truth
def truth_rows(bank: VectorBank, contexts: list[list[str]]) -> np.ndarray:
    """For each context, the bank row of its next chunk when the context is consecutive chunks of one bank
    article ending before it (every text unique in the bank); else -1."""
    texts = sorted({t for c in contexts for t in c})
    column = bank.chunks.column("text")
    rows = np.flatnonzero(
        pc.is_in(column, value_set=pa.array(texts, pa.string())).to_numpy(zero_copy_only=False)
    )
    where: dict[str, list[int]] = {}
    for row, text in zip(rows, bank.texts(rows), strict=True):
        where.setdefault(text, []).append(int(row))
    codes = bank.article_codes
    out = np.full(len(contexts), -1, dtype=np.int64)
    for i, ctx in enumerate(contexts):
        found = [where.get(t, []) for t in ctx]
        if any(len(f) != 1 for f in found):
            continue
        r = [f[0] for f in found]
        last = r[-1]
        consecutive = all(b == a + 1 and codes[b] == codes[a] for a, b in zip(r, r[1:], strict=False))
        if consecutive and last + 1 < len(bank) and codes[last + 1] == codes[last]:
            out[i] = last + 1
    return out


def trained_rows(run_specs: list[str], bank: VectorBank) -> tuple[np.ndarray, list[str]]:
    """Rows of articles any replayed run trained on (its split.json, when made for this bank), and notes."""
    from lvmkit.data.splits import Split

    mask = np.zeros(len(bank), dtype=bool)
    notes = []
    for spec in run_specs:
        path = Path(spec) / "split.json"
        if spec.startswith("baseline:") or not path.is_file():
            continue
        try:
            mask |= Split.load(path, bank).row_mask("train")
        except (ProvenanceError, ArtifactError) as e:
            notes.append(f"{spec}: its split is not of this bank, so its training articles are unknown ({e})")
    return mask, notes


# -------------------------------------------------------------------------------------------- replay
def replay(
    log: str | Path,
    runs: list[str],
    bank: VectorBank,
    *,
    k: int = 10,
    encoder=None,
    runs_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    max_requests: int | None = None,
) -> ReplayResult:
    """Replay the log's ``/v1/next`` requests through ``runs`` and the baselines (see the module docstring)."""
    from lvmkit.encode import load_encoder
    from lvmkit.serve.predictors import load_predictor
    from lvmkit.serve.service import rows_with_texts

    stats = LogStats()
    requests = logged_requests(log, stats)[:max_requests]
    if not requests:
        raise ArtifactError(f"{log} holds no /v1/next answers to replay ({stats.summary()})")
    predictors = {}
    for spec in runs:
        p = load_predictor(spec, bank, runs_dir)
        predictors[p.name if p.name not in predictors else spec] = p
    for b in REPLAY_BASELINES:
        predictors.setdefault(b, load_predictor(f"baseline:{b}", bank))
    enc = encoder or load_encoder(bank.encoder.name, backend=bank.encoder.backend, device="cpu")
    vectors = _encode_contexts(enc, [r.context for r in requests])
    excluded = [
        rows_with_texts(bank, r.context) if r.exclude_context else np.zeros(0, np.int64) for r in requests
    ]
    index = exact_index(bank.vectors)
    ranked = {}
    for done, (name, p) in enumerate(predictors.items(), 1):  # one full-bank search per system
        queries = np.stack([p.predict(v) for v in vectors])
        ids = bank.search(queries, k, exclude=excluded, searcher=index)[1]
        ranked[name] = np.pad(ids, ((0, 0), (0, k - ids.shape[1])), constant_values=-1)
        if progress:
            progress(done, len(predictors))
    if all(r.answer_ids for r in requests):
        ranked[LOGGED] = np.array([(r.answer_ids + [-1] * k)[:k] for r in requests], dtype=np.int64)
    return _score(requests, ranked, runs, bank, k, stats)


def _score(requests, ranked, runs, bank, k, stats: LogStats) -> ReplayResult:
    truth = truth_rows(bank, [r.context for r in requests])
    trained, notes = trained_rows(runs, bank)
    has_truth = truth >= 0
    scored = has_truth & ~trained[np.maximum(truth, 0)]
    metrics = {}
    if scored.any():
        t = truth[scored]
        for name, ids in ranked.items():
            metrics[name] = {
                "hit@1": float(hit_at_k(ids[scored], t, 1).mean()),
                f"hit@{k}": float(hit_at_k(ids[scored], t, k).mean()),
                f"mrr@{k}": float(mrr_at_k(ids[scored], t, k).mean()),
            }
    overlap = {a: {b: _overlap(ranked[a], ranked[b]) for b in ranked if b != a} for a in ranked}
    notes.insert(0, f"log: {stats.summary()}")
    if LOGGED in ranked:
        for name in ranked:
            mine = np.array([r.run == name for r in requests])
            if name != LOGGED and mine.any():
                same = _overlap(ranked[name][mine], ranked[LOGGED][mine])
                notes.append(
                    f"self-check: {name} replayed on the {int(mine.sum())} request(s) it answered: overlap@{k} with the logged answer {same:.3f}"
                )
    if has_truth.sum() > scored.sum():
        notes.append(
            f"{int(has_truth.sum() - scored.sum())} request(s) with a known next chunk are in articles a replayed "
            "run trained on; left out of hit/mrr"
        )
    return ReplayResult(
        systems=list(ranked),
        k=k,
        n_requests=len(requests),
        n_truth=int(has_truth.sum()),
        n_scored=int(scored.sum()),
        truth_metrics=metrics,
        overlap=overlap,
        notes=notes,
    )


def _encode_contexts(enc, contexts: list[list[str]]) -> list[np.ndarray]:
    """Each context's vectors [T, d], encoding every distinct text once (in one batched call)."""
    texts = sorted({t for c in contexts for t in c})
    pos = {t: i for i, t in enumerate(texts)}
    table = enc.encode(texts)
    return [table[[pos[t] for t in c]] for c in contexts]


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over requests of |top-k(a) & top-k(b)| / k (padding ids -1 never count)."""
    k = a.shape[1]
    shared = [len(set(x[x >= 0].tolist()) & set(y[y >= 0].tolist())) for x, y in zip(a, b, strict=True)]
    return float(np.mean(shared) / k)
