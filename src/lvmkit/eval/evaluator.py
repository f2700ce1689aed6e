"""The evaluator: one function that every part of lvmkit uses to score a next-chunk predictor.

    result = evaluate(model, windows, bank)             # a model, a WindowSet, the VectorBank
    suite = evaluate_suite({"gru": model}, windows, bank, train_windows=train)
    print(format_table(suite))

For each window the predictor's output vector is searched against the WHOLE bank and the truth is the
window's target chunk id. The window's own context rows are excluded from the candidates by default
(they are the easiest wrong answers and say nothing about prediction); the same search also yields the
ranking with them left in, so both are reported and the flag says which one ``hit@k`` means. Every rate
comes with a 95% bootstrap interval over queries, and ``evaluate_suite`` puts each model beside the
baselines (copy-last, mean of context, exponentially weighted context, ridge, the tuned blend of last and
exp-weighted) and the oracle, on the same windows, with a paired interval on the difference to the best
baseline, and on the difference to every baseline at every Hit@k (``SuiteResult.all_comparisons``).

Metric names (the keys of ``EvalResult.metrics``, usable in gates):
    hit@k            R@k: truth among the top k (context excluded if ``exclude_context``), for k in ``ks``
    hit@k_excl       ... with the window's context rows removed from the candidates
    hit@k_noexcl     ... with them left in
    contain@50       truth among the first 50 candidates (the ceiling of a reranker over 50)
    eff@5            hit@5 / contain@50
    mrr@10           mean reciprocal rank, 0 beyond rank 10
    cos              mean cosine(prediction, target vector)
    ca_inbatch       contrastive accuracy, distractors = the other targets of a batch of ``ca_batch``
                     windows, minus the target's neighbours n-1 and n+1 from the same article
    ca_other         the same, with distractors from other articles only
    offset_margin    c_0 - max_{k != 0} c_k of the offset sweep (see ``metrics.offset_sweep``)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lvmkit.bank.bank import VectorBank
from lvmkit.bank.index import SearchIndex, exact_index
from lvmkit.errors import ConfigError, ProvenanceError
from lvmkit.eval import metrics as M
from lvmkit.eval.bootstrap import bootstrap_many, paired_diff_ci
from lvmkit.eval.metrics import TABLE_COLUMNS
from lvmkit.eval.protocol import OPEN, ProtocolError, check_protocol, describe_candidates, in_article_search

INDEX_CHOICES = (None, "flat", "ivf", "hnsw")
CONTAIN_K = 50
MRR_K = 10
BASELINES: dict[str, dict[str, Any]] = {
    "copy_last": {},
    "mean_ctx": {},
    "exp_weighted": {"alpha": 0.1},
    "ridge": {},
    "blend": {},  # w and alpha chosen on val windows (lvmkit.eval.tuning), like ridge fitted on non-test data
}
FITTED_BASELINES = ("ridge", "blend")
ORACLE = "oracle"
RATE_PREFIXES = ("hit@", "recall@", "contain@", "eff@", "ca_")  # shown in % in tables

Progress = Callable[[int, int], None]  # progress(done, total), called after each batch


# ------------------------------------------------------------------------------------------ predictors
def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def oracle(batch) -> np.ndarray:
    """The oracle predictor: returns the target vector itself. Its hit@k measures the index's ceiling
    (1.0 for exact search; below 1.0 for an approximate index, or when duplicate vectors tie)."""
    return _numpy(batch.target).astype(np.float32, copy=False)


def _module_device(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


class _Predict:
    """Uniform call interface: ``fn(batch) -> float32 [B, d]`` for an nn.Module or a plain callable.

    A module is put in eval mode for the duration of a ``with`` block and restored afterwards, so the
    trainer can call the evaluator mid-training; forward passes run under ``torch.no_grad``.
    """

    def __init__(self, predictor):
        if isinstance(predictor, torch.nn.Module):
            self.module, self.fn = predictor, None
        elif callable(predictor):
            self.module, self.fn = None, predictor
        else:
            raise ConfigError(
                f"a predictor must be an nn.Module (forward(ctx, mask) -> [B, d]) or a callable on a window "
                f"batch returning [B, d]; got {type(predictor).__name__}"
            )

    def __enter__(self) -> _Predict:
        if self.module is not None:
            self._was_training = self.module.training
            self.module.eval()
        return self

    def __exit__(self, *exc) -> None:
        if self.module is not None:
            self.module.train(self._was_training)

    def __call__(self, batch) -> np.ndarray:
        if self.fn is not None:
            return _numpy(self.fn(batch)).astype(np.float32, copy=False)
        device = _module_device(self.module)
        with torch.no_grad():
            out = self.module(
                torch.as_tensor(batch.ctx, device=device), torch.as_tensor(batch.mask, device=device)
            )
        return out.float().cpu().numpy()


def _batches(n: int, batch_size: int) -> Iterator[np.ndarray]:
    for s in range(0, n, batch_size):
        yield np.arange(s, min(n, s + batch_size))


def predict_all(predictor, windows, batch_size: int = 256) -> np.ndarray:
    """float32 [W, d]: ``predictor``'s output for every window (a module in eval mode, restored after)."""
    with _Predict(predictor) as predict:
        return np.concatenate([predict(windows.batch(idx)) for idx in _batches(len(windows), batch_size)])


# ---------------------------------------------------------------------------------------------- search
def resolve_index(bank: VectorBank, index: str | None) -> SearchIndex:
    """The index to search: the bank's own (None), an explicit exact one ("flat"), or the bank's stored
    approximate index, which must be of the requested type ("ivf", "hnsw")."""
    if index not in INDEX_CHOICES:
        raise ConfigError(
            f"--index {index} is not allowed; choose one of {', '.join(str(c) for c in INDEX_CHOICES if c)} "
            "(or leave it out: the bank's own index)"
        )
    if index == "flat":
        return exact_index(bank.vectors)
    si = bank.index()
    if index is not None and si.params.get("type") != index:
        raise ConfigError(
            f"--index {index} was asked for but bank {bank.path} has a {si.params.get('type')} index; build one "
            f"with `lvmkit index build {bank.path} --type {index}` or use --index flat for exact search"
        )
    return si


def _nprobe_of(si: SearchIndex) -> int | None:
    if si.params.get("type") == "ivf":
        import faiss

        return int(faiss.extract_index_ivf(si.faiss).nprobe)
    if si.params.get("type") == "hnsw":
        return int(si.faiss.hnsw.efSearch)
    return None


def rank_with_and_without(
    si: SearchIndex, queries: np.ndarray, exclude_rows: np.ndarray, depth: int, nprobe: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(ranked ids with ``exclude_rows`` removed, ranked ids with them left in), each [Q, depth], -1 padded.

    One search of depth + E (E = exclusions per query) serves both: dropping at most E ids from it still
    leaves ``depth`` candidates whenever the bank has them.
    """
    q = len(queries)
    _, ids = si.search(queries, depth + exclude_rows.shape[1], nprobe=nprobe)
    if ids.shape[1] < depth + exclude_rows.shape[1]:  # bank smaller than the request
        ids = np.concatenate([ids, np.full((q, depth + exclude_rows.shape[1] - ids.shape[1]), -1)], axis=1)
    ids = ids.astype(np.int64)
    drop = ids < 0
    for j in range(exclude_rows.shape[1]):  # one column at a time: faster than a [Q, fetch, E] broadcast
        drop |= ids == exclude_rows[:, j : j + 1]
    order = np.argsort(drop, axis=1, kind="stable")[:, :depth]
    kept = ~np.take_along_axis(drop, order, axis=1)
    return np.where(kept, np.take_along_axis(ids, order, axis=1), -1), ids[:, :depth]


# ---------------------------------------------------------------------------------------------- result
@dataclass
class EvalResult:
    """Everything one evaluation measured. ``per_query`` keeps the per-window arrays (for paired tests)."""

    name: str
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    info: dict[str, Any]
    offsets: dict[str, Any]
    by_label: list[dict[str, Any]] = field(default_factory=list)
    per_query: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (per-query arrays left out)."""
        return {
            "name": self.name,
            "metrics": self.metrics,
            "intervals": {k: list(v) for k, v in self.intervals.items()},
            "info": self.info,
            "offsets": self.offsets,
            "by_label": self.by_label,
        }

    def row(self) -> dict[str, Any]:
        """One flat dict for a table or a gate check: name, metrics, ``<metric>_lo/_hi``, key info."""
        out: dict[str, Any] = {"name": self.name}
        out.update(self.metrics)
        for k, (lo, hi) in self.intervals.items():
            out[f"{k}_lo"], out[f"{k}_hi"] = lo, hi
        for k in (
            "protocol",
            "n_queries",
            "bank_size",
            "index",
            "nprobe",
            "exclude_context",
            "ca_batch",
            "collapse",
        ):
            out[k] = self.info.get(k)
        return out


# ------------------------------------------------------------------------------------------- evaluate
def _check_windows(windows, bank: VectorBank) -> None:
    wbank = getattr(windows, "bank", None)
    if wbank is not None and wbank is not bank and wbank.manifest.bank_id != bank.manifest.bank_id:
        raise ProvenanceError(
            f"the windows index bank {wbank.path} (id {wbank.manifest.bank_id}) but the evaluation searches bank "
            f"{bank.path} (id {bank.manifest.bank_id}); target chunk ids would not match. Build the windows "
            "from the bank you evaluate on."
        )


def _contrastive(pred, target, target_ids, codes, ca_batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-window CA under both protocols, over a seeded shuffle of the windows cut into ca_batch blocks."""
    n = len(pred)
    inbatch, other = np.full(n, np.nan), np.full(n, np.nan)
    perm = np.random.default_rng(seed).permutation(n)
    for s in range(0, n, ca_batch):
        b = perm[s : s + ca_batch]
        t = target_ids[b]
        same_article = codes[t][:, None] == codes[t][None, :]
        near = same_article & (np.abs(t[:, None] - t[None, :]) <= 1)  # itself and its n-1, n+1 neighbours
        inbatch[b] = M.contrastive_accuracy(pred[b], target[b], target[b], ~near)
        other[b] = M.contrastive_accuracy(pred[b], target[b], target[b], ~same_article)
    return inbatch, other


def _by_label(labels: np.ndarray, hit5: np.ndarray, cos: np.ndarray) -> list[dict[str, Any]]:
    names = np.array(["(none)" if x is None else str(x) for x in labels], dtype=object)
    rows = []
    for name in np.unique(names):
        sel = names == name
        rows.append(
            {
                "label": name,
                "n": int(sel.sum()),
                "hit@5": float(hit5[sel].mean()),
                "cos": float(cos[sel].mean()),
            }
        )
    return sorted(rows, key=lambda r: (-r["n"], r["label"]))


def _check_args(ks, batch_size: int, ca_batch: int, n: int) -> tuple[int, ...]:
    """The sorted distinct ks; refuses bad sizes and an empty window set."""
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] < 1:
        raise ConfigError(f"ks must be positive integers, got {ks}")
    if batch_size < 1 or ca_batch < 2:
        raise ConfigError(f"batch_size must be >= 1 and ca_batch >= 2, got {batch_size} and {ca_batch}")
    if n == 0:
        raise ConfigError(
            "no windows to evaluate: the split is empty or every article is shorter than min_ctx"
        )
    return ks


@dataclass
class _Ranked:
    """Every window's prediction, target, truth id and both rankings (context excluded / left in)."""

    pred: np.ndarray
    target: np.ndarray
    truth: np.ndarray
    excl: np.ndarray
    noexcl: np.ndarray
    used_nprobe: int | None


def _rank_batch(
    si, bank, windows, idx, p, depth: int, protocol: str, nprobe
) -> tuple[np.ndarray, np.ndarray]:
    """(ranked with the context rows excluded, ranked with them left in) for one batch of predictions."""
    ctx_rows = np.asarray(windows.context_rows(idx), dtype=np.int64)
    if protocol == OPEN:
        return rank_with_and_without(si, p, ctx_rows, depth, nprobe=nprobe)
    arts = windows.article_of(idx)
    return in_article_search(bank, p, arts, ctx_rows, depth)[1], in_article_search(
        bank, p, arts, None, depth
    )[1]


def _predict_and_rank(
    predictor, windows, bank, si, *, depth, protocol, nprobe, batch_size, progress, name
) -> _Ranked:
    """Predict every window batch by batch and rank each prediction; the index's nprobe is restored after."""
    n = len(windows)
    saved_nprobe = _nprobe_of(si)
    preds, targets, target_ids, excl, noexcl = [], [], [], [], []
    try:
        with _Predict(predictor) as predict:
            for idx in _batches(n, batch_size):
                batch = windows.batch(idx)
                p = predict(batch)
                if p.shape != (len(idx), bank.dim):
                    raise ConfigError(
                        f"{name}: predictor returned shape {p.shape}, expected ({len(idx)}, {bank.dim})"
                    )
                e, ne = _rank_batch(si, bank, windows, idx, p, depth, protocol, nprobe)
                preds.append(p)
                targets.append(_numpy(batch.target).astype(np.float32, copy=False))
                target_ids.append(_numpy(batch.target_ids).astype(np.int64, copy=False))
                excl.append(e)
                noexcl.append(ne)
                if progress is not None:
                    progress(int(idx[-1]) + 1, n)
        used_nprobe = _nprobe_of(si)
    finally:
        si.set_nprobe(saved_nprobe)
    cat = np.concatenate
    return _Ranked(cat(preds), cat(targets), cat(target_ids), cat(excl), cat(noexcl), used_nprobe)


def _per_query(
    r: _Ranked, ks, exclude_context: bool, codes, ca_batch: int, seed: int
) -> dict[str, np.ndarray]:
    """The per-window arrays behind every metric (hit@k in three forms, contain, mrr, cos, both CAs)."""
    ranked = r.excl if exclude_context else r.noexcl
    pq: dict[str, np.ndarray] = {}
    for k in sorted(set(ks) | {5}):
        pq[f"hit@{k}"] = M.hit_at_k(ranked, r.truth, k)
        pq[f"hit@{k}_excl"] = M.hit_at_k(r.excl, r.truth, k)
        pq[f"hit@{k}_noexcl"] = M.hit_at_k(r.noexcl, r.truth, k)
    pq[f"contain@{CONTAIN_K}"] = M.contain_at_k(ranked, r.truth, CONTAIN_K)
    pq[f"mrr@{MRR_K}"] = M.mrr_at_k(ranked, r.truth, MRR_K)
    pq["cos"] = M.mean_cosine(r.pred, r.target)
    pq["ca_inbatch"], pq["ca_other"] = _contrastive(r.pred, r.target, r.truth, codes, ca_batch, seed)
    return pq


def _metrics(pq: dict[str, np.ndarray], sweep) -> dict[str, float]:
    """Each per-query array's mean (NaN when none is finite), eff@5 and the offset margin."""
    metrics = {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in pq.items()}
    metrics["eff@5"] = M.eff_at_5(pq["hit@5"], pq[f"contain@{CONTAIN_K}"])
    metrics["offset_margin"] = sweep.margin
    return metrics


def _intervals(pq: dict[str, np.ndarray], n_boot: int, seed: int) -> dict[str, tuple[float, float]]:
    """95% bootstrap intervals, one set of query resamples for every rate ({} when n_boot is 0)."""
    if n_boot <= 0:
        return {}
    ratios = {"eff@5": ("hit@5", f"contain@{CONTAIN_K}")}
    return bootstrap_many(pq, ratios, n_boot=n_boot, seed=seed)


def _label_rows(bank: VectorBank, truth: np.ndarray, pq: dict[str, np.ndarray], labels: bool) -> list[dict]:
    """hit@5 and cos per target label ([] when asked not to, or when the bank has no labels)."""
    if not labels:
        return []
    target_labels = bank.labels[truth]
    if not any(x is not None for x in target_labels):
        return []
    return _by_label(target_labels, pq["hit@5"], pq["cos"])


def _info(
    bank, windows, si, r: _Ranked, sweep, codes, *, protocol, exclude_context, ks, ca_batch, n_boot, seed
):
    """What the numbers were measured on and how (``EvalResult.info``)."""
    n = len(r.truth)
    info = {
        "protocol": protocol,
        "n_queries": int(n),
        "bank_size": len(bank),
        "bank_id": bank.manifest.bank_id,
        "encoder": bank.encoder.name,
        "index": si.params.get("type") if protocol == OPEN else "exact",
        "nprobe": r.used_nprobe if protocol == OPEN else None,
        "exclude_context": bool(exclude_context),
        "ks": list(ks),
        "ca_batch": int(ca_batch),
        "collapse": sweep.collapse,
        "n_boot": int(n_boot),
        "seed": int(seed),
    }
    if protocol != OPEN:  # candidates per query: the article's chunks minus the real context rows
        lengths = np.diff(bank.article_starts)[codes[r.truth]]
        info["mean_candidates"] = float(np.mean(lengths - windows.n_real(np.arange(n))))
    return info


def evaluate(
    predictor,
    windows,
    bank: VectorBank,
    *,
    ks: tuple[int, ...] = (1, 5, 10, 50),
    exclude_context: bool = True,
    index: str | None = None,
    nprobe: int | None = None,
    batch_size: int = 256,
    ca_batch: int = 256,
    labels: bool = True,
    progress: Progress | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    name: str = "model",
    protocol: str = OPEN,
) -> EvalResult:
    """Score ``predictor`` on ``windows`` by full-bank search; see the module docstring for the metrics.

    predictor   an nn.Module (``forward(ctx, mask) -> [B, d]``), or a callable on a ``WindowBatch``
                returning [B, d] (numpy or torch); ``oracle`` is one
    index       None: the bank's stored index (exact when none is stored); "flat": an explicit exact
                index; "ivf" / "hnsw": the bank's stored index, which must be of that type
    nprobe      IVF nprobe (HNSW efSearch) for this evaluation; the index's setting is restored after
    ca_batch    batch size of the contrastive-accuracy protocols (stated in the result)
    n_boot      bootstrap resamples per interval (0: no intervals)
    progress    ``progress(done, total)`` after each batch of windows
    protocol    "open" (the whole bank) or "in-article" (the window's article's chunks outside the context;
                exact search); see ``lvmkit.eval.protocol``. ``info["protocol"]`` names it.
    """
    check_protocol(protocol)
    ks = _check_args(ks, batch_size, ca_batch, len(windows))
    _check_windows(windows, bank)
    si = resolve_index(bank, index)
    depth = max(*ks, CONTAIN_K, MRR_K)
    r = _predict_and_rank(
        predictor,
        windows,
        bank,
        si,
        depth=depth,
        protocol=protocol,
        nprobe=nprobe,
        batch_size=batch_size,
        progress=progress,
        name=name,
    )
    codes = np.asarray(bank.article_codes)
    pq = _per_query(r, ks, exclude_context, codes, ca_batch, seed)
    sweep = M.offset_sweep(r.pred, bank.vectors, r.truth, codes)
    metrics = _metrics(pq, sweep)
    intervals = _intervals(pq, n_boot, seed)
    by_label = _label_rows(bank, r.truth, pq, labels)
    info = _info(
        bank,
        windows,
        si,
        r,
        sweep,
        codes,
        protocol=protocol,
        exclude_context=exclude_context,
        ks=ks,
        ca_batch=ca_batch,
        n_boot=n_boot,
        seed=seed,
    )
    pq["offset_cos"] = sweep.cos  # after the means: a per-offset array, not a per-query metric
    return EvalResult(name, metrics, intervals, info, sweep.to_dict(), by_label, pq)


# ---------------------------------------------------------------------------------------------- suite
@dataclass(frozen=True)
class Comparison:
    """Paired difference of one model against the best baseline on the same windows."""

    model: str
    baseline: str
    metric: str
    diff: float
    lo: float
    hi: float

    @property
    def verdict(self) -> str:
        if self.lo > 0:
            return "better"
        if self.hi < 0:
            return "worse"
        return "no clear difference"

    def describe(self, verdict: str = "{}") -> str:
        """One line, e.g. ``gru vs best baseline copy_last on hit@5: +1.2 points (95% CI +0.3 to +2.1): better``;
        ``verdict`` is a format string for the verdict word (the CLI passes ``"[bold]{}[/bold]"``)."""
        scale, unit = (100, " points") if self.metric.startswith(RATE_PREFIXES) else (1, "")
        return (
            f"{self.model} vs best baseline {self.baseline} on {self.metric}: {scale * self.diff:+.1f}{unit} "
            f"(95% CI {scale * self.lo:+.1f} to {scale * self.hi:+.1f}): {verdict.format(self.verdict)}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "verdict": self.verdict}


class SuiteResult(Mapping):
    """``{name: EvalResult}`` for the models, the baselines and the oracle, plus ``comparisons`` (each model
    vs the best baseline on ``compare_on``, paired), ``all_comparisons`` (each model vs every baseline at
    every Hit@k), ``skipped`` ({name: reason}) and ``fitted`` ({baseline: how it was fitted})."""

    def __init__(
        self,
        results: dict[str, EvalResult],
        comparisons: list[Comparison],
        skipped: dict[str, str],
        all_comparisons: list[Comparison] | None = None,
        fitted: dict[str, dict[str, Any]] | None = None,
    ):
        self.results, self.comparisons, self.skipped = results, comparisons, skipped
        self.all_comparisons = all_comparisons or []
        self.fitted = fitted or {}

    def __getitem__(self, name: str) -> EvalResult:
        return self.results[name]

    def __iter__(self):
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "results": {k: v.to_dict() for k, v in self.results.items()},
            "comparisons": [c.to_dict() for c in self.comparisons],
            "all_comparisons": [c.to_dict() for c in self.all_comparisons],
            "skipped": self.skipped,
            "fitted": self.fitted,
        }


def fit_ridge(train_windows, dim: int, max_train: int = 20_000, seed: int = 0, block: int = 1024):
    """The ridge baseline fitted on up to ``max_train`` training windows, sampled deterministically. The
    windows are read ``block`` at a time (20,000 windows at ctx 500 would be 15 GB of context vectors)."""
    from lvmkit.models import build_model

    n = len(train_windows)
    if n == 0:
        raise ConfigError("train_windows is empty: ridge needs training windows to fit")
    idx = np.sort(np.random.default_rng(seed).choice(n, size=min(n, max_train), replace=False))
    model = build_model("ridge", dim, **BASELINES["ridge"])
    designs, widths = [], set()
    for start in range(0, len(idx), block):  # only one block of context vectors in memory at a time
        b = train_windows.batch(idx[start : start + block])
        designs.append(model.design(b.ctx, b.mask, b.target))
        widths.add(int(b.ctx.shape[1]))
    if len(widths) != 1:  # the features' layout depends on the context width: every block must share it
        raise ValueError(f"training windows of different context widths {sorted(widths)}: ridge needs one")
    X, Y = np.concatenate([x for x, _ in designs]), np.concatenate([y for _, y in designs])
    return model.fit_design(X, Y, widths.pop())


def fit_baselines(
    bank: VectorBank, train_windows=None, val_windows=None, ridge_max_train: int = 20_000, seed: int = 0
) -> tuple[dict[str, Any], dict[str, str], dict[str, dict[str, Any]]]:
    """Every baseline as a predictor: ``(predictors, skipped {name: reason}, fitted {name: how})``.

    ridge is fitted on ``train_windows``; blend's (w, alpha) are chosen on ``val_windows`` (on
    ``train_windows`` when no val windows are given). Neither ever sees the windows being evaluated.
    """
    from lvmkit.eval.tuning import fit_blend
    from lvmkit.models import build_model

    predictors: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    fitted: dict[str, dict[str, Any]] = {}
    for ws in (train_windows, val_windows):
        if getattr(ws, "bank", None) is not None:
            from lvmkit.bank.manifest import check_same_space

            check_same_space(ws.bank.encoder, bank.encoder, "the fitting windows' bank", "the eval bank")
    for name, kw in BASELINES.items():
        if name == "ridge":
            if train_windows is None:
                skipped[name] = "no train_windows given (ridge must be fitted on training windows)"
                continue
            predictors[name] = fit_ridge(train_windows, bank.dim, ridge_max_train, seed)
            n_fit = min(len(train_windows), ridge_max_train)
            fitted[name] = {"fitted_on": "train", "n_windows": n_fit, **predictors[name].spec}
        elif name == "blend":
            tune_on, where = (val_windows, "val") if val_windows is not None else (train_windows, "train")
            if tune_on is None:
                skipped[name] = "no val_windows (or train_windows) given to choose w and alpha on"
                continue
            predictors[name] = fit_blend(tune_on, bank, seed=seed, tuned_on=where)
            fitted[name] = predictors[name].fit_info.to_dict()
        else:
            predictors[name] = build_model(name, bank.dim, **kw)
    return predictors, skipped, fitted


def compare_all(
    results: Mapping[str, EvalResult], models, baselines, metrics, n_boot: int, seed: int
) -> list[Comparison]:
    """Paired differences of every model against every baseline on every metric (same windows)."""
    out = []
    for name in models:
        for b in baselines:
            for m in metrics:
                d, lo, hi = paired_diff_ci(
                    results[name].per_query[m], results[b].per_query[m], n_boot=n_boot, seed=seed
                )
                out.append(Comparison(name, b, m, d, lo, hi))
    return out


def evaluate_suite(
    models: Mapping[str, Any],
    windows,
    bank: VectorBank,
    train_windows=None,
    *,
    val_windows=None,
    ridge_max_train: int = 20_000,
    compare_on: str = "hit@5",
    **kwargs,
) -> SuiteResult:
    """Evaluate the named models AND the baselines and the oracle on the same windows (see ``evaluate``
    for ``kwargs``). Ridge is fitted on ``train_windows``, the blend tuned on ``val_windows`` (see
    ``fit_baselines``); a baseline that cannot be fitted is skipped with the reason recorded. Each model is
    compared with the best baseline on ``compare_on``, and with every baseline on every Hit@k, by a paired
    bootstrap."""
    clash = sorted(set(models) & (set(BASELINES) | {ORACLE}))
    if clash:
        raise ConfigError(f"model name(s) {clash} collide with the built-in baselines; rename them")
    seed = int(kwargs.get("seed", 0))
    baseline_predictors, skipped, fitted = fit_baselines(
        bank, train_windows, val_windows, ridge_max_train, seed
    )
    predictors: dict[str, Any] = {**models, **baseline_predictors, ORACLE: oracle}

    results = {name: evaluate(p, windows, bank, name=name, **kwargs) for name, p in predictors.items()}
    baselines = [b for b in BASELINES if b in results]
    n_boot = int(kwargs.get("n_boot", 1000)) or 1000  # the comparison needs its interval even with n_boot=0
    comparisons = compare_to_best(results, list(models), baselines, compare_on, seed, n_boot)
    ks = tuple(sorted({int(k) for k in kwargs.get("ks", (1, 5, 10, 50))}))
    every = compare_all(results, models, baselines, [f"hit@{k}" for k in ks], n_boot, seed)
    return SuiteResult(results, comparisons, skipped, every, fitted)


def compare_to_best(
    results: Mapping[str, EvalResult],
    models: list[str],
    baselines: list[str],
    metric: str,
    seed: int = 0,
    n_boot: int = 1000,
    tiebreak: str | None = None,
) -> list[Comparison]:
    """Each model against the best of ``baselines`` on ``metric`` (ties: the better ``tiebreak`` metric, else
    the first), by a paired bootstrap over the same queries. ``n_boot=0`` still gets 1000 resamples: the
    comparison needs its interval."""

    def score(b: str) -> tuple[float, ...]:
        m = results[b].metrics
        return (m[metric],) if tiebreak is None else (m[metric], m.get(tiebreak, 0.0))

    best = max(baselines, key=score)
    return compare_all(results, models, [best], [metric], int(n_boot) or 1000, seed)


def format_comparisons(suite: SuiteResult | list[Comparison]) -> str:
    """A Markdown table per model: its paired difference (points, 95% CI) to every baseline at every metric
    compared (a suite's ``all_comparisons``, or a list from ``compare_all``); ``+`` marks a CI above 0, ``-``
    one below 0."""
    comparisons = suite.all_comparisons if isinstance(suite, SuiteResult) else list(suite)
    lines: list[str] = []
    for model in dict.fromkeys(c.model for c in comparisons):
        rows = [c for c in comparisons if c.model == model]
        metrics = list(dict.fromkeys(c.metric for c in rows))
        lines += [
            f"{model} minus each baseline (points of the metric, paired 95% CI; + better, - worse):",
            "",
            "| baseline | " + " | ".join(metrics) + " |",
            "|---|" + "---:|" * len(metrics),
        ]
        for b in dict.fromkeys(c.baseline for c in rows):
            cells = []
            for m in metrics:
                c = next(x for x in rows if x.baseline == b and x.metric == m)
                mark = {"better": " +", "worse": " -"}.get(c.verdict, "")
                scale = 100 if m.startswith(RATE_PREFIXES) else 1
                cells.append(f"{scale * c.diff:+.1f} ({scale * c.lo:+.1f}..{scale * c.hi:+.1f}){mark}")
            lines.append(f"| {b} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip()


# ---------------------------------------------------------------------------------------------- table


def _cell(r: EvalResult, key: str) -> str:
    v = r.metrics.get(key)
    if v is None:
        return ""
    if np.isnan(v):
        return "nan"
    scale, fmt = (100, "{:.1f}") if key.startswith(RATE_PREFIXES) else (1, "{:.3f}")
    text = fmt.format(v * scale)
    if key in r.intervals and not np.isnan(r.intervals[key][0]):
        lo, hi = r.intervals[key]
        text += f" ({fmt.format(lo * scale)}-{fmt.format(hi * scale)})"
    return text


def format_table(results: Mapping[str, EvalResult], columns: tuple[str, ...] = TABLE_COLUMNS) -> str:
    """A Markdown table of ``columns`` (rates in %, 95% bootstrap intervals in parentheses), the evaluation
    settings, and, for a ``SuiteResult``, the paired comparisons and skipped baselines."""
    if not results:
        return "(no results)"
    first = next(iter(results.values()))
    cols = [c for c in columns if any(c in r.metrics for r in results.values())]
    lines = [
        "| model | " + " | ".join(cols) + " | offset margin | n |",
        "|---|" + "---:|" * (len(cols) + 2),
    ]
    for name, r in results.items():
        flag = " (collapse)" if r.info.get("collapse") else ""
        cells = [_cell(r, c) for c in cols]
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {r.metrics['offset_margin']:.3f}{flag} | {r.info['n_queries']} |"
        )
    i = first.info
    excl = "excluded" if i["exclude_context"] else "left in"
    nprobe = f", nprobe {i['nprobe']}" if i.get("nprobe") is not None else ""
    protocols = {r.info.get("protocol", OPEN) for r in results.values()}
    if len(protocols) > 1:
        raise ProtocolError(f"one table mixes protocols {sorted(protocols)}; make one table per protocol")
    where = describe_candidates(i.get("protocol", OPEN), i["bank_size"], i.get("mean_candidates"))
    lines += [
        "",
        f"{where.capitalize()} (bank {i['bank_id']}, {i['index']} index{nprobe}); "
        f"context rows {excl}; CA in batches of {i['ca_batch']}; rates in %, 95% bootstrap intervals.",
    ]
    blend = getattr(results, "fitted", {}).get("blend")
    if blend:
        lines.append(
            f"- blend: w={blend['w']:g}, alpha={blend['alpha']:g}, chosen on {blend['n_windows']} "
            f"{blend['tuned_on']} windows by {blend['criterion']}"
        )
    for c in getattr(results, "comparisons", []):
        lines.append(f"- {c.describe()}")
    for name, why in getattr(results, "skipped", {}).items():
        lines.append(f"- {name} skipped: {why}")
    if getattr(results, "all_comparisons", None):
        lines += ["", format_comparisons(results)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- two-tower
def separation_on_bank(
    queries: np.ndarray,
    pos_rows: np.ndarray,
    bank: VectorBank,
    n_neighbours: int = 16,
    nprobe: int | None = None,
) -> np.ndarray:
    """Per-query ``metrics.separation_margin`` against each query's top ``n_neighbours`` bank neighbours,
    the positive excluded: cos(q, pos) - mean cos(q, neighbour)."""
    pos_rows = np.asarray(pos_rows, dtype=np.int64)
    _, ids = bank.search(queries, n_neighbours, exclude=pos_rows[:, None], nprobe=nprobe)
    valid = ids >= 0
    neighbours = bank.get(np.where(valid, ids, 0).ravel()).reshape(*ids.shape, bank.dim)
    return M.separation_margin(queries, bank.get(pos_rows), neighbours, valid)
