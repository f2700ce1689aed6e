"""Curriculum hard-negative mining for the two-tower retriever, and in-article negatives for LVMs and towers
(``article_negative_rows``: the window's own article's chunks just after the target and just before the
context, used by the LVM loss option ``inarticle_offsets`` and by ``twotower.inarticle_offsets``).

The curriculum
--------------
A schedule says, epoch by epoch, how many mined negatives each training pair gets and how hard they are
(the cosine window between the query and a negative)::

    "0-5:none;6-10:8@0.82-0.92;11-30:16@0.84-0.96"

Stages are ``FIRST-LAST:SPEC`` joined by ``;`` (``N:SPEC`` is a one-epoch stage), where SPEC is ``none``,
``COUNT@LO-HI``: COUNT >= 0 negatives per pair whose cosine to the query lies in [LO, HI], with
-1 <= LO < HI <= 1, or ``COUNT@pLO-pHI`` (e.g. ``6-10:8@p90-p99``): a window given as percentiles
0 <= LO < HI <= 100 of the query-neighbour cosine distribution, so that it fits the encoder. At each mining
epoch it is resolved (``resolve_stage``) over ONE fixed reference distribution: cos(q, n) for up to
``PERCENTILE_SAMPLE`` (2,000) train queries (the current tower's) and their top ``PERCENTILE_DEPTH`` (100) bank
neighbours that pass the safety rules below (``neighbour_cosines``). The depth does not depend on the stage,
so ``p90-p99`` means the same thing whatever the count, and a stage with higher percentiles always resolves to
a window at least as high. The pool of a percentile stage is then at least ``PERCENTILE_DEPTH`` deep and at
least ``factor x count`` (``Stage.candidates``; ``Stage.factor``: at least 2 x 100 / (HI - LO) candidates per
wanted negative). When the reference puts on average fewer than ``count`` in-window neighbours per query,
the window cannot fill the count: the stats carry a ``warning`` (wider window or smaller count), padding makes
up the rest. A global window cannot fill a per-query count: it holds many neighbours of queries in dense
regions and none of others. ``COUNT@rLO-rHI`` (e.g. ``2-3:8@r10-r50``) is the per-query alternative: each
query's safe neighbours ranked LO..HI (rank 1 = the nearest neighbour that passes the safety rules), the
best-ranked COUNT of them; HI - LO + 1 >= COUNT, so every pair fills unless its pool runs out (the pool is at
least 2 x HI deep, ``Stage.candidates``). Stages must be in order, without overlaps or gaps, and start at
epoch 0 or 1 (the trainer counts epochs from 1; a stage starting at 0 reads naturally and epoch 0 simply
never runs). Every
mistake is a ``ConfigError`` that quotes the stage. ``Schedule.describe()`` prints the plan epoch by epoch
(``lvmkit diagnose data`` shows it through ``describe_schedule``).

Why a curriculum: negatives that are too hard too early (near-paraphrases of the positive) make InfoNCE
push apart things that are alike and the embedding collapses; easy in-batch negatives first, then a window
that moves up slowly, is what keeps the separation margin positive.

Mining (ANCE-style refresh)
---------------------------
At the start of every epoch whose stage asks for negatives, the trainer re-encodes every training query
with the *current* query tower and calls ``mine_negatives``. For each pair it searches the document space
for the top ``Stage.candidates`` candidates (``candidate_factor x count``, default 4 x count; deeper for a
percentile or rank window, see above) and walks them best first, dropping, in this order (each drop is
counted under its rule):

    positive      the pair's own target chunk
    same_article  any chunk of the query's own article (its context, its neighbours)
    near_dup      near-duplicates: cos(pos, n) > 0.98 (a paraphrase of the answer is not a negative)
                  or cos(q, n) > 0.98 (a copy of the query)
    window        cos(q, n) outside [LO, HI]; for a rank stage, a safe rank outside LO..HI

The first ``count`` survivors are the negatives. A pair with fewer survivors is padded with the best
candidates that passed every rule except the window (never with a false negative); what is still missing
stays -1 and is masked in the loss. The result is a ``NegativeStore`` keyed by **pair id**: a batch looks
its negatives up by the pair ids it holds, so negatives stay with their own sample however the sampler
reshuffles (the predecessor stored them by batch position and trained on mismatched negatives).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator

from lvmkit.errors import ConfigError

NEAR_DUP_COS = 0.98
CANDIDATE_FACTOR = 4
RULES = ("positive", "same_article", "near_dup", "window")

_STAGE = re.compile(r"^(?P<a>-?\d+)(?:-(?P<b>-?\d+))?:(?P<spec>.+)$")
_SPEC = re.compile(
    r"^(?P<n>-?\d+)@(?P<p>[pr]?)(?P<lo>-?[0-9.]+(?:e-?\d+)?)-(?P<q>[pr]?)(?P<hi>-?[0-9.]+(?:e-?\d+)?)$"
)
PERCENTILE_SAMPLE = 2000  # train queries whose neighbour cosines resolve a percentile window
PERCENTILE_DEPTH = 100  # each sampled query's top-DEPTH safe neighbours: the one reference distribution


# ------------------------------------------------------------------------------------------ schedule
@dataclass(frozen=True)
class Stage:
    """Epochs ``first..last`` (inclusive): ``count`` negatives per pair with cos(q, n) in [lo, hi].
    ``count == 0`` means no mining (lo and hi are then unused). ``pct``: lo and hi are percentiles (0-100)
    of the query-neighbour cosines, turned into cosines by ``resolve``. ``rank``: lo and hi are ranks among
    each query's own safe neighbours (1 = the nearest), applied per query by ``mine_negatives``."""

    first: int
    last: int
    count: int = 0
    lo: float = 0.0
    hi: float = 0.0
    pct: bool = False
    rank: bool = False

    @property
    def mines(self) -> bool:
        return self.count > 0

    def factor(self, configured: int) -> int:
        """Candidates per wanted negative: ``configured``, raised for a percentile window so that on average
        twice ``count`` candidates fall inside it."""
        if not self.pct:
            return int(configured)
        return max(int(configured), math.ceil(2 * 100 / (self.hi - self.lo)))

    def candidates(self, configured: int) -> int:
        """Candidates searched per query (the one place that decides the pool width): ``factor x count``,
        and for a percentile window at least ``PERCENTILE_DEPTH``, so the pool holds the whole reference
        depth the window was resolved over; for a rank window at least 2 x HI, so that after the same-article
        and other drops the pool still reaches rank HI."""
        width = self.factor(configured) * self.count
        if self.rank:
            return max(width, 2 * int(self.hi))
        return max(width, PERCENTILE_DEPTH) if self.pct else width

    def resolve(self, cosines: np.ndarray) -> Stage:
        """The same stage with its percentile window turned into cosines of ``cosines`` (no-op otherwise)."""
        if not self.pct or not self.mines:
            return self
        c = np.asarray(cosines, dtype=np.float64)
        if c.size == 0:
            raise ConfigError(
                f"mining stage {self}: no query-neighbour cosines to resolve its percentiles from"
            )
        lo, hi = np.percentile(c, [self.lo, self.hi])
        hi = max(float(hi), float(lo) + 1e-6)
        return Stage(self.first, self.last, self.count, float(lo), min(hi, 1.0))

    def __str__(self) -> str:
        epochs = f"{self.first}" if self.first == self.last else f"{self.first}-{self.last}"
        p = "p" if self.pct else ""
        if self.rank:
            spec = f"{self.count}@r{int(self.lo)}-r{int(self.hi)}"
        else:  # repr: exact round trip
            spec = f"{self.count}@{p}{self.lo!r}-{p}{self.hi!r}" if self.mines else "none"
        return f"{epochs}:{spec}"


@dataclass(frozen=True)
class Schedule:
    """An ordered, gap-free list of stages. Build one with ``parse_schedule``. No stages = never mine."""

    stages: tuple[Stage, ...]

    @property
    def first_epoch(self) -> int:
        return self.stages[0].first if self.stages else 1

    @property
    def last_epoch(self) -> int:
        return self.stages[-1].last if self.stages else 1

    @property
    def max_count(self) -> int:
        """The most negatives any epoch asks for (the width of the negatives in a batch)."""
        return max((s.count for s in self.stages), default=0)

    def at(self, epoch: int) -> Stage:
        """The stage that covers ``epoch`` (ConfigError outside the schedule)."""
        if not self.stages:
            return Stage(epoch, epoch)
        for s in self.stages:
            if s.first <= epoch <= s.last:
                return s
        raise ConfigError(
            f"mining schedule {self} covers epochs {self.first_epoch}-{self.last_epoch}; epoch {epoch} is outside it"
        )

    def check_epochs(self, epochs: int, field_name: str = "twotower.schedule") -> None:
        """The schedule must cover the run's epochs 1..``epochs``."""
        if self.stages and (self.first_epoch > 1 or self.last_epoch < epochs):
            raise ConfigError(
                f"{field_name}={str(self)!r} covers epochs {self.first_epoch}-{self.last_epoch} but the run trains "
                f"epochs 1-{epochs} (optim.epochs); extend the last stage to {epochs}"
            )

    def describe(self, epochs: int | None = None) -> str:
        """The plan, one line per epoch (1..``epochs``, default the schedule's last epoch)."""
        if not self.stages:
            return "mining schedule none: in-batch and memory-bank negatives only, every epoch"
        last = self.last_epoch if epochs is None else int(epochs)
        lines = [f"mining schedule {self}"]
        for e in range(max(1, self.first_epoch), last + 1):
            try:
                s = self.at(e)
            except ConfigError:
                lines.append(f"  epoch {e:>3}: (not covered by the schedule)")
                continue
            if not s.mines:
                what = "in-batch and memory-bank negatives only (no mining)"
            elif s.rank:
                what = (
                    f"{s.count} mined negatives per pair, the best-ranked among each query's safe neighbours ranked "
                    f"{int(s.lo)}-{int(s.hi)} (1 = the nearest)"
                )
            elif s.pct:
                what = (
                    f"{s.count} mined negatives per pair, cos(q, n) between the p{s.lo:g} and p{s.hi:g} of the "
                    f"query-neighbour cosines (each query's top {PERCENTILE_DEPTH} safe neighbours; resolved "
                    "when mining)"
                )
            else:
                what = f"{s.count} mined negatives per pair, cos(q, n) in [{s.lo:g}, {s.hi:g}]"
            lines.append(f"  epoch {e:>3}: {what}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return ";".join(str(s) for s in self.stages) or "none"


def _number(text: str, what: str, stage: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"mining schedule stage {stage!r}: {what} {text!r} is not a number") from None


def parse_stage(text: str) -> Stage:
    """One ``FIRST-LAST:SPEC`` stage (see the module docstring)."""
    stage = text.strip()
    m = _STAGE.match(stage.replace(" ", ""))
    if not m:
        raise ConfigError(
            f"mining schedule stage {stage!r} is not FIRST-LAST:none, FIRST-LAST:COUNT@LO-HI "
            "(e.g. 6-10:8@0.82-0.92), FIRST-LAST:COUNT@pLO-pHI (percentiles, e.g. 6-10:8@p90-p99) or "
            "FIRST-LAST:COUNT@rLO-rHI (per-query ranks, e.g. 6-10:8@r10-r50)"
        )
    first = int(m["a"])
    last = int(m["b"]) if m["b"] is not None else first
    if first < 0:
        raise ConfigError(f"mining schedule stage {stage!r}: epochs must be >= 0, got {first}")
    if last < first:
        raise ConfigError(
            f"mining schedule stage {stage!r}: the epoch range {first}-{last} is empty (first > last)"
        )
    spec = m["spec"].lower()
    if spec == "none":
        return Stage(first, last)
    s = _SPEC.match(spec)
    if not s:
        raise ConfigError(
            f"mining schedule stage {stage!r}: {m['spec']!r} is not 'none', COUNT@LO-HI (e.g. 16@0.84-0.96), "
            "COUNT@pLO-pHI (e.g. 8@p90-p99) or COUNT@rLO-rHI (e.g. 8@r10-r50)"
        )
    count = int(s["n"])
    lo, hi = _number(s["lo"], "LO", stage), _number(s["hi"], "HI", stage)
    if count < 0:
        raise ConfigError(f"mining schedule stage {stage!r}: the negative count must be >= 0, got {count}")
    if s["p"] != s["q"]:
        raise ConfigError(
            f"mining schedule stage {stage!r}: give both ends as percentiles (8@p90-p99), both as ranks "
            "(8@r10-r50) or both as cosines"
        )
    if s["p"] == "r":
        return _rank_stage(stage, first, last, count, lo, hi)
    pct = bool(s["p"])
    if pct and not (0.0 <= lo <= 100.0 and 0.0 <= hi <= 100.0):
        raise ConfigError(
            f"mining schedule stage {stage!r}: percentiles must lie in [0, 100], got {lo:g}-{hi:g}"
        )
    if not pct and not (-1.0 <= lo <= 1.0 and -1.0 <= hi <= 1.0):
        raise ConfigError(f"mining schedule stage {stage!r}: cosines must lie in [-1, 1], got {lo:g}-{hi:g}")
    if lo >= hi:
        raise ConfigError(f"mining schedule stage {stage!r}: the window {lo:g}-{hi:g} is empty (LO >= HI)")
    if count == 0:
        return Stage(first, last)
    return Stage(first, last, count, lo, hi, pct)


def _rank_stage(stage: str, first: int, last: int, count: int, lo: float, hi: float) -> Stage:
    if lo != int(lo) or hi != int(hi) or lo < 1:
        raise ConfigError(
            f"mining schedule stage {stage!r}: ranks are whole numbers from 1, got r{lo:g}-r{hi:g}"
        )
    if hi < lo:
        raise ConfigError(
            f"mining schedule stage {stage!r}: the rank window r{lo:g}-r{hi:g} is empty (LO > HI)"
        )
    if hi - lo + 1 < count:
        raise ConfigError(
            f"mining schedule stage {stage!r}: ranks {lo:g}-{hi:g} hold {hi - lo + 1:g} neighbours, fewer than the "
            f"{count} wanted; widen the window or lower the count"
        )
    return Stage(first, last, count, lo, hi, rank=True) if count else Stage(first, last)


def parse_schedule(text: str | Schedule | None) -> Schedule:
    """Parse and validate a schedule string; ``None`` / ``""`` / ``"none"`` mean no mining at all."""
    if isinstance(text, Schedule):
        return text
    if text is None or not str(text).strip() or str(text).strip().lower() == "none":
        return Schedule(())
    parts = [p for p in str(text).split(";")]
    if any(not p.strip() for p in parts):
        raise ConfigError(f"mining schedule {text!r} has an empty stage (two ';' in a row or a trailing ';')")
    stages = [parse_stage(p) for p in parts]
    if stages[0].first > 1:
        raise ConfigError(
            f"mining schedule {text!r} starts at epoch {stages[0].first}; the first stage must start at epoch 0 or 1"
        )
    for prev, cur in zip(stages, stages[1:], strict=False):
        if cur.first <= prev.last:
            raise ConfigError(
                f"mining schedule stages {prev} and {cur} overlap (epoch {cur.first} is in both); "
                "each epoch must belong to exactly one stage"
            )
        if cur.first > prev.last + 1:
            missing = (
                f"epoch {prev.last + 1}"
                if cur.first == prev.last + 2
                else f"epochs {prev.last + 1}-{cur.first - 1}"
            )
            raise ConfigError(
                f"mining schedule has a gap: {missing} between stages {prev} and {cur} are not covered"
            )
    return Schedule(tuple(stages))


def describe_schedule(text: str | None, epochs: int | None = None) -> str:
    """The epoch-by-epoch plan of a schedule string (for ``lvmkit diagnose data`` and run logs)."""
    return parse_schedule(text).describe(epochs)


# ------------------------------------------------------------------------------------------ mining
@dataclass
class NegativeStore:
    """Mined negatives keyed by pair id: ``lookup(pair_ids) -> int64 [B, width]`` (-1 = no negative).

    ``pair_ids`` is sorted; row i of ``ids`` belongs to ``pair_ids[i]``. An empty store (width 0) answers
    every lookup with a [B, 0] array.
    """

    pair_ids: np.ndarray  # int64 [P], sorted
    ids: np.ndarray  # int64 [P, width]
    epoch: int = 0  # the epoch these were mined for (0 = none mined)
    stats: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> NegativeStore:
        return cls(np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.int64))

    @property
    def width(self) -> int:
        return int(self.ids.shape[1])

    def lookup(self, pair_ids: np.ndarray) -> np.ndarray:
        pair_ids = np.asarray(pair_ids, dtype=np.int64)
        if self.width == 0:
            return np.zeros((len(pair_ids), 0), dtype=np.int64)
        pos = np.searchsorted(self.pair_ids, pair_ids)
        pos = np.minimum(pos, len(self.pair_ids) - 1)
        if len(pair_ids) and not np.array_equal(self.pair_ids[pos], pair_ids):
            missing = pair_ids[self.pair_ids[pos] != pair_ids][:5].tolist()
            raise KeyError(f"no mined negatives for pair ids {missing}")
        return self.ids[pos]

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only (checkpoints load with ``torch.load(weights_only=True)``)."""
        import torch

        return {
            "pair_ids": torch.from_numpy(self.pair_ids.copy()),
            "ids": torch.from_numpy(self.ids.copy()),
            "epoch": int(self.epoch),
            "stats": dict(self.stats),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> NegativeStore:
        def arr(x) -> np.ndarray:
            return np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.int64)

        ids = arr(state["ids"])
        return cls(
            arr(state["pair_ids"]), ids.reshape(len(ids), -1), int(state["epoch"]), dict(state["stats"])
        )


Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]  # (queries, k) -> (scores, ids)
Vectors = Callable[[np.ndarray], np.ndarray]  # rows -> float32 [len(rows), d] document vectors


def _candidates(q, pos, article_of_row, search: Search, doc_vectors: Vectors, k: int, near_dup: float):
    """Top-``k`` candidates of each query and the safety rules over them (``_apply_rules`` without a window):
    (scores, ids, valid, (positive, same_article, near_dup) masks [b, k])."""
    scores, ids = search(q, k)
    ids = np.asarray(ids, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    rules, _, _ = _apply_rules(ids, scores, pos, article_of_row, doc_vectors, near_dup, -1.0, 1.0)
    return scores, ids, ids >= 0, rules[:3]


def neighbour_cosines(
    queries: np.ndarray,
    positives: np.ndarray,
    article_of_row: np.ndarray,
    search: Search,
    doc_vectors: Vectors,
    k: int,
    near_dup: float = NEAR_DUP_COS,
    sample: int = PERCENTILE_SAMPLE,
    seed: int = 0,
) -> np.ndarray:
    """The query-neighbour cosine distribution: cos(q, n) for the top-``k`` neighbours n of up to ``sample``
    queries that pass the safety rules (not the positive, not the query's article, not a near-duplicate)."""
    queries = np.asarray(queries, dtype=np.float32)
    positives = np.asarray(positives, dtype=np.int64)
    idx = np.arange(len(queries))
    if len(idx) > sample:
        idx = np.sort(np.random.default_rng(seed).choice(len(idx), sample, replace=False))
    scores, _, valid, rules = _candidates(
        np.ascontiguousarray(queries[idx]), positives[idx], article_of_row, search, doc_vectors, k, near_dup
    )
    keep = valid & ~(rules[0] | rules[1] | rules[2])
    return scores[keep]


def resolve_stage(stage: Stage, queries, positives, article_of_row, search, doc_vectors, candidate_factor,
                  near_dup: float = NEAR_DUP_COS, seed: int = 0) -> tuple[Stage, dict[str, Any]]:  # fmt: skip
    """A percentile stage resolved to cosines on these queries (others unchanged), and how to mine it:
    {"candidates" (the pool width per query, ``Stage.candidates``), "candidate_factor"}, and for a percentile
    stage also {"percentiles", "window", "depth", "n_cosines", "in_window_per_query"} and, when the window
    holds on average fewer than ``count`` reference neighbours per query, a "warning"."""
    info: dict[str, Any] = {
        "candidates": stage.candidates(candidate_factor),
        "candidate_factor": stage.factor(candidate_factor),
    }
    if stage.rank and stage.mines:
        info["ranks"] = [int(stage.lo), int(stage.hi)]
    if not stage.pct or not stage.mines:
        return stage, info
    cos = neighbour_cosines(
        queries, positives, article_of_row, search, doc_vectors, PERCENTILE_DEPTH, near_dup, seed=seed
    )
    resolved = stage.resolve(cos)
    n_queries = min(len(queries), PERCENTILE_SAMPLE)
    per_query = float(np.count_nonzero((cos >= resolved.lo) & (cos <= resolved.hi))) / max(n_queries, 1)
    info.update(
        percentiles=[stage.lo, stage.hi],
        window=[resolved.lo, resolved.hi],
        depth=PERCENTILE_DEPTH,
        n_cosines=int(cos.size),
        in_window_per_query=per_query,
    )
    if per_query < stage.count:
        info["warning"] = (
            f"mining stage {stage}: the window p{stage.lo:g}-p{stage.hi:g} (cos {resolved.lo:.4f}-"
            f"{resolved.hi:.4f}) holds on average {per_query:.1f} of each query's top-{PERCENTILE_DEPTH} safe "
            f"neighbours, fewer than the {stage.count} wanted; most pairs will be padded from outside the "
            "window. Use a wider window (a lower LO) or a smaller count"
        )
    return resolved, info


def mine_negatives(
    queries: np.ndarray,
    pair_ids: np.ndarray,
    positives: np.ndarray,
    article_of_row: np.ndarray,
    search: Search,
    doc_vectors: Vectors,
    count: int,
    lo: float,
    hi: float,
    near_dup: float = NEAR_DUP_COS,
    candidate_factor: int = CANDIDATE_FACTOR,
    width: int | None = None,
    block: int = 1024,
    candidates: int | None = None,
    by_rank: bool = False,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Mine ``count`` negatives per query (see the module docstring for the rules).

    queries        float32 [P, d] unit query vectors (the current query tower's output)
    pair_ids       int64 [P] the pair of each query (row i of the result belongs to pair_ids[i]: key the
                   ``NegativeStore`` by them)
    positives      int64 [P] target row of each pair
    article_of_row int [N] article code of every bank row
    search         ``search(queries, k) -> (scores, ids)`` over the document space (inner product = cosine)
    doc_vectors    ``doc_vectors(rows) -> [len(rows), d]`` unit document vectors (for cos(pos, n))
    width          columns of the result (default ``count``; more columns are -1)
    candidates     candidates searched per query (default ``candidate_factor x count``; the trainer passes
                   ``Stage.candidates``, deeper for a percentile or rank window)
    by_rank        ``lo`` and ``hi`` are ranks among each query's safe candidates (1 = the nearest), not cosines

    Returns (ids int64 [P, width], stats): stats count candidates dropped by each rule, negatives kept in
    the window, padded from outside it, and missing, and the mean cosine of the kept ones.
    """
    queries = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
    positives = np.asarray(positives, dtype=np.int64)
    P = len(queries)
    count, width = int(count), int(count if width is None else width)
    _check_mining_args(P, pair_ids, positives, count, width, lo, hi, by_rank)
    k = int(candidates) if candidates is not None else candidate_factor * count
    out = np.full((P, width), -1, dtype=np.int64)
    dropped = dict.fromkeys(RULES, 0)
    totals = np.zeros(4)  # kept, sum of kept cosines, padded, missing
    for s in range(0, P, block):
        pos = positives[s : s + block]
        scores, ids = search(queries[s : s + block], k)
        ids = np.asarray(ids, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float32)
        rules, good, spare = _apply_rules(
            ids, scores, pos, article_of_row, doc_vectors, near_dup, lo, hi, by_rank
        )
        for name, m in zip(RULES, rules, strict=True):
            dropped[name] += int(m.sum())
        totals += _fill_rows(out[s : s + block], ids, scores, good, spare, count)
    kept, cos_sum, padded, missing = totals
    stats = {
        "pairs": P,
        "count": count,
        "window": [float(lo), float(hi)],
        "by_rank": bool(by_rank),
        "candidates": int(P * k),
        "pool": int(k),
        "kept": int(kept),
        "padded": int(padded),
        "missing": int(missing),
        "mean_cos_kept": float(cos_sum) / float(kept) if kept else float("nan"),
        **{f"dropped_{name}": v for name, v in dropped.items()},
    }
    return out, stats


def _check_mining_args(P: int, pair_ids, positives, count: int, width: int, lo, hi, by_rank: bool) -> None:
    if count < 1:
        raise ConfigError(f"mine_negatives needs count >= 1, got {count}")
    if width < count:
        raise ConfigError(f"width={width} must be >= count={count}")
    if by_rank and not 1 <= lo <= hi:
        raise ConfigError(f"mining rank window {lo}-{hi} must satisfy 1 <= lo <= hi")
    if not by_rank and not -1 <= lo < hi <= 1:
        raise ConfigError(f"mining window {lo}-{hi} must satisfy -1 <= lo < hi <= 1")
    if len(pair_ids) != P or len(positives) != P:
        raise ValueError(f"{P} queries but {len(pair_ids)} pair ids and {len(positives)} positives")


def _apply_rules(
    ids, scores, pos, article_of_row, doc_vectors, near_dup: float, lo, hi, by_rank: bool = False
):
    """The rule masks over [b, k] candidates (each candidate is charged to the first rule that drops it),
    the candidates that pass every rule, and the spare ones (safe, outside the window: padding material).
    ``by_rank``: the window is ranks lo..hi among each row's safe candidates, in search order."""
    valid = ids >= 0
    safe = np.where(valid, ids, 0)
    r_pos = valid & (ids == pos[:, None])
    r_art = valid & ~r_pos & (article_of_row[safe] == article_of_row[pos][:, None])
    pos_vec = doc_vectors(pos)
    cand_vec = doc_vectors(safe.ravel()).reshape(*ids.shape, -1)
    cos_pos = np.einsum("bd,bkd->bk", pos_vec, cand_vec)
    taken = r_pos | r_art
    r_dup = valid & ~taken & ((cos_pos > near_dup) | (scores > near_dup))
    taken |= r_dup
    if by_rank:
        safe_rank = np.cumsum(valid & ~taken, axis=1)  # 1-based rank of each safe candidate in its row
        in_window = (safe_rank >= lo) & (safe_rank <= hi)
    else:
        in_window = (scores >= lo) & (scores <= hi)
    r_win = valid & ~taken & ~in_window
    good = valid & ~taken & in_window
    return (r_pos, r_art, r_dup, r_win), good, r_win


def _fill_rows(out: np.ndarray, ids, scores, good, spare, count: int) -> np.ndarray:
    """Each row of ``out``: its first ``count`` good candidates, padded from the spare ones. Returns (kept,
    sum of the kept cosines, padded, missing)."""
    kept = padded = missing = 0
    cos_sum = 0.0
    for i in range(len(ids)):
        g = ids[i, good[i]][:count]
        out[i, : len(g)] = g
        kept += len(g)
        cos_sum += float(scores[i, good[i]][:count].sum())
        short = count - len(g)
        if short:
            pad = ids[i, spare[i]][:short]
            out[i, len(g) : len(g) + len(pad)] = pad
            padded += len(pad)
            missing += short - len(pad)
    return np.array([kept, cos_sum, padded, missing], dtype=np.float64)


def format_mining_stats(stats: dict[str, Any]) -> str:
    """One line for train.log: what mining kept, dropped by each rule, padded, and the mean kept cosine (and
    for a percentile window, what it was resolved from and any warning)."""
    lo, hi = stats["window"]
    pct = stats.get("percentiles")
    window = f"r{lo:.0f}-r{hi:.0f}" if stats.get("by_rank") else f"{lo:.4g}-{hi:.4g}"
    frm = ""
    if pct:
        depth = f" (top-{stats['depth']} safe neighbours)" if "depth" in stats else ""
        frm = f" (p{pct[0]:g}-p{pct[1]:g} of {stats['n_cosines']} query-neighbour cosines{depth})"
    pool = f" from {stats['pool']} candidates each" if "pool" in stats else ""
    warning = f"; WARNING: {stats['warning']}" if stats.get("warning") else ""
    return (
        f"mined {stats['count']}@{window}{frm} for {stats['pairs']} pairs{pool}: kept {stats['kept']}, "
        f"padded {stats['padded']}, missing {stats['missing']}; dropped positive {stats['dropped_positive']}, "
        f"same_article {stats['dropped_same_article']}, near_dup {stats['dropped_near_dup']}, "
        f"outside window {stats['dropped_window']}; mean cos of kept {stats['mean_cos_kept']:.4f}{warning}"
    )


# ------------------------------------------------------------------------------ in-article negatives
def check_inarticle_offsets(offsets) -> list[int]:
    """The offsets of ``article_negative_rows`` as a list; ConfigError unless they are distinct non-zero
    integers (the one check behind the LVM loss key and ``twotower.inarticle_offsets``)."""
    out = [int(k) for k in offsets]
    if 0 in out or len(set(out)) < len(out):
        raise ConfigError(
            f"in-article negative offsets must be distinct and non-zero (offset 0 is the target itself), got {out}"
        )
    return out


def _offsets_field(v: list[int]) -> list[int]:
    try:
        return check_inarticle_offsets(v)
    except ConfigError as e:
        raise ValueError(str(e)) from None


# The config field type of ``inarticle_offsets`` (LVM loss key and ``twotower.inarticle_offsets``).
InArticleOffsets = Annotated[list[int], AfterValidator(_offsets_field)]


def article_negative_rows(
    article_codes: np.ndarray, target_rows: np.ndarray, n_context: np.ndarray, offsets
) -> np.ndarray:
    """[B, K] bank rows of each window's in-article hard negatives (-1 where there is none).

    For a window whose target is row ``t`` with ``n`` real context rows ``t-n .. t-1``, offset ``k > 0`` is
    row ``t + k`` and ``k < 0`` row ``t - n + k`` (the |k|-th chunk before the window); a row outside the
    bank or in another article is -1. Context and target rows are never chosen (0 is not an offset). The
    loss then masks near-duplicates of the target (``losses.near_duplicates``), the same rule as InfoNCE's.
    """
    codes = np.asarray(article_codes)
    t = np.asarray(target_rows, dtype=np.int64)[:, None]
    n = np.asarray(n_context, dtype=np.int64)[:, None]
    k = np.asarray(check_inarticle_offsets(offsets), dtype=np.int64)[None, :]
    rows = np.where(k > 0, t + k, t - n + k)
    inside = (rows >= 0) & (rows < len(codes))
    same = np.zeros_like(inside)
    same[inside] = codes[rows[inside]] == np.broadcast_to(codes[t], rows.shape)[inside]
    return np.where(inside & same, rows, -1)
