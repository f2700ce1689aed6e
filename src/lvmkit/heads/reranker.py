"""A small learned reranker over the candidates of a top-K pool (``lvmkit rerank fit RUN``).

    rr = fit_reranker("runs/gru", bank, protocol="open", retriever="baseline:exp_weighted", k=50)
    rr.save()        # RUN/heads/reranker-open.skops (the scikit-learn model) + reranker-open.json (spec, report)
    rr.report        # test R@1/5/10, MRR@10 before/after, per model kind; feature importances

Pools come from the retriever (a baseline or a two-tower run) under one protocol; each candidate gets the
features of ``lvmkit.heads.features`` (article-identity features only under ``in-article``); the label is
"this candidate is the true next chunk". Both model kinds (logistic regression on standardised features,
histogram gradient boosting) are fitted on TRAIN-split pools; the kind is chosen on VAL MRR@10 after
reranking; TEST is read once for the report. Feature importance = the drop in val MRR@10 when that feature's
column is shuffled across candidates (permutation importance, 3 repeats), for either kind.

The stored reranker names its protocol, its features and every source, and is refused under another protocol
or on another bank / encoder. The model file is written by skops (``skops.io``), not pickle: loading it builds
only the types in ``TRUSTED_TYPES`` (numpy, scipy and scikit-learn's own, which skops trusts, plus the boosted
trees' ``TreePredictor``), and a file that asks for any other type is refused, so a reranker from elsewhere
cannot run code. Rerankers saved as ``.pkl`` by an older lvmkit are refused with the command that refits them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lvmkit.artifacts import atomic_path, read_json, write_json
from lvmkit.bank.bank import VectorBank
from lvmkit.errors import ArtifactError, ConfigError, ProvenanceError
from lvmkit.eval import metrics as M
from lvmkit.eval.protocol import OPEN, check_protocol, check_same_protocol
from lvmkit.heads.features import (
    Lanes,
    Pool,
    QueryBatch,
    QuerySource,
    check_feature_names,
    default_features,
    feature_matrix,
    load_source,
    retrieve,
)

KINDS = ("logistic", "hgb")
# the types beyond skops' defaults that a reranker file may build (HistGradientBoostingClassifier's trees)
TRUSTED_TYPES = ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",)
Progress = Callable[[str, int, int], None]


# ------------------------------------------------------------------------------------------ the spec
@dataclass
class RerankerSpec:
    """Everything needed to rebuild a reranker's features: the protocol, the sources, the pool."""

    protocol: str
    features: list[str]
    retriever: str  # a query source spec: baseline:NAME or a run
    k: int
    lvm: str | None  # the run whose prediction gives cos_pred (and the lane query)
    head: str | None = None
    twotower: str | None = None
    lanes: str | None = None
    ctx: int = 5  # baselines' context length
    bank_id: str = ""
    encoder: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Sources:
    """The loaded query sources and lanes of a spec."""

    retriever: QuerySource
    roles: dict[str, QuerySource]  # "pred", "twotower"
    lanes: Lanes | None

    @classmethod
    def load(cls, spec: RerankerSpec, bank: VectorBank) -> Sources:
        retr = load_source(spec.retriever, bank, ctx=spec.ctx)
        roles = {}
        if spec.lvm is not None:
            roles["pred"] = load_source(spec.lvm, bank, ctx=spec.ctx, head=spec.head)
        if spec.twotower is not None:
            roles["twotower"] = load_source(spec.twotower, bank, ctx=spec.ctx)
        lanes = Lanes.load(spec.lanes, bank) if spec.lanes is not None else None
        return cls(retr, roles, lanes)

    @property
    def max_ctx(self) -> int:
        return max(s.ctx for s in [self.retriever, *self.roles.values()])

    @property
    def min_ctx(self) -> int:
        return min(s.ctx for s in [self.retriever, *self.roles.values()])


# ------------------------------------------------------------------------------------------ the model
class Reranker:
    """A fitted model over a spec's features: ``score(X [B, K, F]) -> [B, K]``."""

    def __init__(self, spec: RerankerSpec, kind: str, model, report: dict[str, Any] | None = None, path=None):
        self.spec, self.kind, self.model, self.report, self.path = spec, kind, model, report or {}, path

    def score(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        b, k, f = x.shape
        s = self.model.predict_proba(x.reshape(b * k, f))[:, 1].reshape(b, k)
        return np.where(valid, s, -np.inf)

    def rerank(self, pool: Pool, qb: QueryBatch, sources: Sources, k: int) -> Pool:
        x = feature_matrix(self.spec.features, pool, qb, sources.roles, sources.lanes)
        return pool.rerank(self.score(x, pool.valid), k)

    @staticmethod
    def paths(run_dir, protocol: str) -> tuple[Path, Path]:
        d = Path(run_dir) / "heads"
        return d / f"reranker-{protocol}.skops", d / f"reranker-{protocol}.json"

    def save(self, run_dir) -> Path:
        import skops.io

        model_file, meta = self.paths(run_dir, self.spec.protocol)
        model_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(model_file) as tmp:
            tmp.write_bytes(skops.io.dumps(self.model))
        write_json(meta, {"kind": self.kind, "spec": self.spec.to_dict(), "report": self.report})
        self.path = meta
        return meta

    @classmethod
    def load(cls, path, bank: VectorBank, protocol: str | None = None) -> Reranker:
        """From ``RUN/heads/reranker-PROTOCOL.json`` (or RUN plus ``protocol``), checked against ``bank``."""
        path = Path(path)
        if path.is_dir():
            path = cls.paths(path, protocol or OPEN)[1]
        if path.is_file() and path.with_suffix(".pkl").is_file() and not path.with_suffix(".skops").is_file():
            raise ArtifactError(
                f"the reranker {path} was saved as a pickle by an older lvmkit, which this version does not load "
                f"(a pickle can run code); refit it with `lvmkit rerank fit RUN --protocol {protocol or OPEN}`"
            )
        if not path.is_file() or not path.with_suffix(".skops").is_file():
            raise ArtifactError(f"no reranker at {path}; fit one with `lvmkit rerank fit RUN`")
        meta = read_json(path)
        spec = RerankerSpec(**meta["spec"])
        if protocol is not None:
            check_same_protocol(spec.protocol, protocol, f"the reranker {path}", "this evaluation")
        if spec.encoder != bank.encoder.model_dump() or spec.bank_id != bank.manifest.bank_id:
            raise ProvenanceError(
                f"the reranker {path} was fitted on bank {spec.bank_id} (encoder {spec.encoder.get('name')!r}) but "
                f"this is bank {bank.manifest.bank_id} ({bank.encoder.name!r}); refit it on this bank"
            )
        return cls(spec, meta["kind"], _load_model(path.with_suffix(".skops")), meta.get("report"), path)


def _load_model(path: Path):
    """The scikit-learn model of a reranker file, refusing any type outside skops' defaults + TRUSTED_TYPES."""
    import skops.io

    data = path.read_bytes()
    try:
        untrusted = skops.io.get_untrusted_types(data=data)
    except Exception as e:  # a truncated or foreign file: skops raises zipfile / json errors
        raise ArtifactError(
            f"{path} is not a readable skops file ({e}); refit with `lvmkit rerank fit RUN`"
        ) from e
    unknown = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if unknown:
        raise ArtifactError(
            f"{path} asks to build types a reranker never has ({', '.join(unknown)}); it was not written by "
            "`lvmkit rerank fit`, so it is not loaded. Refit the reranker with `lvmkit rerank fit RUN`"
        )
    return skops.io.loads(data, trusted=list(untrusted))


# ------------------------------------------------------------------------------------------ data
@dataclass
class PoolData:
    """Features and labels of every pool of a split: X [Q, K, F], y [Q, K], valid [Q, K], baseline orders."""

    x: np.ndarray
    y: np.ndarray
    valid: np.ndarray
    ids: np.ndarray
    truth: np.ndarray

    def ranked(self, scores: np.ndarray, k: int | None = None) -> np.ndarray:
        order = np.argsort(-np.where(self.valid, scores, -np.inf), axis=1, kind="stable")[:, :k]
        return np.where(np.take_along_axis(self.valid, order, 1), np.take_along_axis(self.ids, order, 1), -1)


def pool_data(
    spec: RerankerSpec, sources: Sources, windows, *, batch_size: int = 256, index=None, nprobe=None
) -> PoolData:
    xs, ids, truth = [], [], []
    for s in range(0, len(windows), batch_size):
        qb = QueryBatch(windows, np.arange(s, min(len(windows), s + batch_size)), spec.protocol)
        pool = retrieve(qb, sources.retriever, spec.k, index=index, nprobe=nprobe)
        xs.append(feature_matrix(spec.features, pool, qb, sources.roles, sources.lanes))
        ids.append(pool.ids)
        truth.append(qb.truth)
    ids_, truth_ = np.concatenate(ids), np.concatenate(truth)
    return PoolData(np.concatenate(xs), ids_ == truth_[:, None], ids_ >= 0, ids_, truth_)


def ranking_metrics(ranked: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    out = {f"hit@{k}": float(M.hit_at_k(ranked, truth, k).mean()) for k in (1, 5, 10)}
    out["mrr@10"] = float(M.mrr_at_k(ranked, truth, 10).mean())
    out["contain"] = float(M.contain_at_k(ranked, truth, ranked.shape[1]).mean())
    return out


# ------------------------------------------------------------------------------------------ fitting
def make_model(kind: str, seed: int = 0):
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    if kind == "hgb":
        return HistGradientBoostingClassifier(
            max_iter=200, learning_rate=0.1, max_leaf_nodes=31, random_state=seed
        )
    raise ConfigError(f"unknown reranker kind {kind!r}; allowed: {', '.join(KINDS)}")


def _scores(model, d: PoolData) -> np.ndarray:
    q, k, f = d.x.shape
    return model.predict_proba(d.x.reshape(q * k, f))[:, 1].reshape(q, k)


def permutation_importance(model, d: PoolData, names, repeats: int = 3, seed: int = 0) -> dict[str, float]:
    """Drop in MRR@10 when one feature's column is shuffled across all candidates of ``d``."""
    rng = np.random.default_rng(seed)
    base = ranking_metrics(d.ranked(_scores(model, d)), d.truth)["mrr@10"]
    out = {}
    for j, name in enumerate(names):
        drops = []
        for _ in range(repeats):
            x = d.x.copy()
            col = x[..., j].ravel()
            x[..., j] = rng.permutation(col).reshape(x.shape[:2])
            drops.append(
                base
                - ranking_metrics(
                    d.ranked(_scores(model, PoolData(x, d.y, d.valid, d.ids, d.truth))), d.truth
                )["mrr@10"]
            )
        out[name] = float(np.mean(drops))
    return out


def fit_reranker(
    lvm: str | Path | None,
    bank: str | Path | VectorBank,
    *,
    protocol: str = OPEN,
    retriever: str = "baseline:exp_weighted",
    k: int = 50,
    twotower: str | None = None,
    lanes: str | None = None,
    head: str | None = None,
    features: list[str] | None = None,
    kinds: tuple[str, ...] = KINDS,
    ctx: int = 5,
    max_train: int = 3000,
    max_val: int = 1000,
    max_test: int = 2000,
    split_ratios=(0.8, 0.1, 0.1),
    split_seed: int = 0,
    index=None,
    nprobe: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> Reranker:
    """Fit both kinds on train pools, choose on val MRR@10, report test (see the module docstring)."""
    from lvmkit.data.splits import make_split
    from lvmkit.data.windows import make_windows

    check_protocol(protocol)
    if k < 2:
        raise ConfigError(f"the pool size k must be >= 2, got {k}")
    bank = bank if isinstance(bank, VectorBank) else VectorBank.open(bank)
    spec = RerankerSpec(protocol, [], retriever, k, None if lvm is None else str(lvm), head, twotower, lanes, ctx,
                        bank.manifest.bank_id, bank.encoder.model_dump())  # fmt: skip
    spec.features = (
        list(features)
        if features
        else default_features(
            protocol, pred=lvm is not None, twotower=twotower is not None, lanes=lanes is not None
        )
    )
    given = {role: None for role, src in (("pred", lvm), ("twotower", twotower)) if src is not None}
    check_feature_names(spec.features, protocol, given, lanes)  # before loading anything
    sources = Sources.load(spec, bank)
    check_feature_names(spec.features, protocol, sources.roles, sources.lanes)
    for s in [sources.retriever, *sources.roles.values()]:
        check_run_split(s, split_ratios, split_seed)
    split = make_split(bank, ratios=split_ratios, seed=split_seed)

    data = {}
    for i, (name, cap) in enumerate((("train", max_train), ("val", max_val), ("test", max_test))):
        ws = make_windows(bank, split, name, ctx=sources.max_ctx, min_ctx=sources.min_ctx, pad=True).sample(
            cap, seed + i
        )
        if len(ws) == 0:
            raise ConfigError(f"the {name} split of {bank.path} has no windows with ctx {sources.min_ctx}")
        if progress:
            progress(f"pools: {name}", i, 3)
        data[name] = pool_data(spec, sources, ws, index=index, nprobe=nprobe)

    tr = data["train"]
    with single_thread():
        fitted, val_scores = _fit_kinds(kinds, tr, data["val"], seed, progress)
        best = max(kinds, key=lambda kd: val_scores[kd]["mrr@10"])
        report = _report(spec, fitted, best, data, val_scores)
        if progress:
            progress("importances", 0, 1)
        report["importance"] = permutation_importance(fitted[best], data["val"], spec.features, seed=seed)
    return Reranker(spec, best, fitted[best], report)


def single_thread():
    """OpenMP limited to one thread: HistGradientBoosting's threads spin-wait on a busy small machine (measured
    ~50x slower fits at 2 threads under load) and batch-1 scoring gains nothing from them."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="openmp")


def _fit_kinds(kinds, tr: PoolData, val: PoolData, seed: int, progress):
    fitted, val_scores = {}, {}
    for kind in kinds:
        if progress:
            progress(f"fitting {kind}", 0, 1)
        model = make_model(kind, seed)
        if tr.y[tr.valid].all() or not tr.y[tr.valid].any():
            raise ConfigError(
                "the train pools hold no (or only) true candidates: raise k or the number of windows"
            )
        model.fit(tr.x[tr.valid], tr.y[tr.valid])
        fitted[kind] = model
        val_scores[kind] = ranking_metrics(val.ranked(_scores(model, val)), val.truth)
    return fitted, val_scores


def check_run_split(source: QuerySource, ratios, seed: int) -> None:
    """A run must have been trained with the split the reranker uses, or its train articles would be tested."""
    cfg = getattr(source.target, "config", None)
    if cfg is not None and (list(cfg.split.ratios) != list(ratios) or cfg.split.seed != seed):
        raise ConfigError(
            f"{source.spec} was trained with split ratios {list(cfg.split.ratios)} seed {cfg.split.seed}, not "
            f"{list(ratios)} seed {seed}: its training articles would land in val/test; use the run's split settings"
        )


def _report(spec: RerankerSpec, fitted, best: str, data: dict[str, PoolData], val_scores) -> dict[str, Any]:
    """Test metrics (read once) before and after reranking, beside simple orders of the same pool."""
    te = data["test"]
    names = spec.features
    orders = {"retrieval order": te.x[..., names.index("score")]}
    for f in ("cos_pred", "cos_last"):
        if f in names:
            orders[f"by {f}"] = te.x[..., names.index(f)]
    test = {name: ranking_metrics(te.ranked(s), te.truth) for name, s in orders.items()}
    for kind, model in fitted.items():
        test[f"reranker ({kind})" + (" [chosen on val]" if kind == best else "")] = ranking_metrics(
            te.ranked(_scores(model, te)), te.truth
        )
    return {
        "protocol": spec.protocol,
        "chosen": best,
        "chosen_on": "val mrr@10",
        "val": val_scores,
        "test": test,
        "n": {name: int(len(d.truth)) for name, d in data.items()},
        "pool_contain": {name: float(d.y.any(1).mean()) for name, d in data.items()},
    }


def format_report(rr: Reranker) -> str:
    """Markdown: the test table (protocol named) and the feature importances."""
    r = rr.report
    lines = [
        f"Reranker over the top {rr.spec.k} of {rr.spec.retriever}, protocol **{r['protocol']}**; features "
        f"{', '.join(rr.spec.features)}; {r['n']['train']} train / {r['n']['val']} val / {r['n']['test']} test "
        f"queries; kind {r['chosen']} chosen on {r['chosen_on']}; the truth is in the test pool for "
        f"{100 * r['pool_contain']['test']:.1f}% of queries.",
        "",
        "| test, protocol " + r["protocol"] + " | R@1 | R@5 | R@10 | MRR@10 |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, m in r["test"].items():
        lines.append(
            f"| {name} | {100 * m['hit@1']:.1f} | {100 * m['hit@5']:.1f} | {100 * m['hit@10']:.1f} | {m['mrr@10']:.3f} |"
        )
    lines += ["", "| feature | val MRR@10 drop when shuffled |", "|---|---:|"]
    for name, v in sorted(r["importance"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {v:+.4f} |")
    return "\n".join(lines)
