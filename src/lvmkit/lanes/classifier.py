"""The lane classifier: multinomial logistic regression from a chunk vector to a lane of a ``LaneSchema``.

Fitting (``fit_lane_classifier``), on a bank whose ``label`` column holds the labelled data's labels:

1. each row's label -> lane through the schema (rows whose label maps to no lane are left out and counted);
2. an article-disjoint split of the bank (``lvmkit.data.splits.make_split``: a chunk and its article always
   fall in the same split, so no held-out sentence has a sibling sentence in training);
3. scikit-learn ``LogisticRegression`` (lbfgs, multinomial) on the train rows (a seeded sample of at most
   ``max_train``), for each C in ``Cs``; the C with the best val accuracy is kept;
4. the held-out test rows give the stored accuracy (per chunk, balanced, and per article by majority vote)
   and the confusion matrix (rows = true lane, columns = predicted lane; schema order).

The artifact (``save(dir)``) is ``classifier.json`` (schema, encoder, provenance, metrics) and ``weights.npz``
(coefficients). Prediction is computed here from the stored coefficients, ``softmax(x W^T + b)`` over the
fitted lanes (lanes without training data get probability 0), so loading never unpickles anything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lvmkit.artifacts import atomic_path, read_json, write_json
from lvmkit.bank.bank import VectorBank
from lvmkit.bank.manifest import EncoderInfo, check_same_space
from lvmkit.errors import ArtifactError, ConfigError, LvmkitError
from lvmkit.lanes.schema import LaneSchema, load_schema, parse_schema

FORMAT_VERSION = 1
META = "classifier.json"
WEIGHTS = "weights.npz"
DEFAULT_CS = (0.3, 1.0, 3.0)
Progress = Callable[[str], None]


@dataclass
class LaneClassifier:
    """Lane probabilities for chunk vectors: ``predict_proba(x [n, d]) -> [n, len(schema)]``."""

    schema: LaneSchema
    encoder: EncoderInfo
    classes: np.ndarray  # int64 [F]: the lane index of each fitted row of coef
    coef: np.ndarray  # float64 [F, d]
    intercept: np.ndarray  # float64 [F]
    provenance: dict[str, Any] = field(default_factory=dict)  # bank, split, C, counts
    metrics: dict[str, Any] = field(default_factory=dict)  # val / test accuracy, confusion matrix
    path: Path | None = None

    # ------------------------------------------------------------------------------------- predicting
    @property
    def n_lanes(self) -> int:
        return len(self.schema)

    def predict_proba(self, vectors: np.ndarray) -> np.ndarray:
        """float32 [n, n_lanes], rows summing to 1; columns follow the schema's lanes."""
        x = np.asarray(vectors, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.coef.shape[1]:
            raise ConfigError(
                f"lane classifier expects [n, {self.coef.shape[1]}] vectors ({self.encoder.describe()}), "
                f"got shape {x.shape}"
            )
        logits = x @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        out = np.zeros((len(x), self.n_lanes), dtype=np.float32)
        out[:, self.classes] = p
        return out

    def predict(self, vectors: np.ndarray) -> np.ndarray:
        """int64 [n]: the most probable lane (ties go to the lower lane index)."""
        return self.predict_proba(vectors).argmax(axis=1).astype(np.int64)

    def check_same_space(self, bank_or_encoder: VectorBank | EncoderInfo, what: str | None = None) -> None:
        """Refuse (ProvenanceError) vectors from another encoder than the one the classifier was fitted on."""
        enc = bank_or_encoder.encoder if isinstance(bank_or_encoder, VectorBank) else bank_or_encoder
        if what is None:
            what = (
                f"bank {bank_or_encoder.path}" if isinstance(bank_or_encoder, VectorBank) else "the vectors"
            )
        check_same_space(self.encoder, enc, f"the lane classifier {self.path or ''}".rstrip(), what)

    # ---------------------------------------------------------------------------------------- storage
    @property
    def weights_sha256(self) -> str:
        h = hashlib.sha256()
        for a in (
            self.classes.astype(np.int64),
            self.coef.astype(np.float64),
            self.intercept.astype(np.float64),
        ):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    def save(self, out: str | Path) -> Path:
        """Write ``out/weights.npz`` then ``out/classifier.json`` (atomically each; the JSON marks completion)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / META).unlink(missing_ok=True)
        with atomic_path(out / WEIGHTS, suffix=".npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, classes=self.classes, coef=self.coef, intercept=self.intercept)
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": "lane_classifier",
            "schema": self.schema.model_dump(mode="json"),
            "encoder": self.encoder.model_dump(mode="json"),
            "weights_sha256": self.weights_sha256,
            "provenance": self.provenance,
            "metrics": self.metrics,
        }
        write_json(out / META, meta)
        self.path = out
        return out

    @classmethod
    def load(cls, path: str | Path) -> LaneClassifier:
        path = Path(path)
        if not (path / META).is_file():
            raise ArtifactError(
                f"no lane classifier at {path} (expected {META} and {WEIGHTS}); fit one with "
                "`lvmkit lanes fit BANK --out DIR`"
            )
        meta = read_json(path / META)
        if meta.get("kind") != "lane_classifier" or meta.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{path / META} is not a lane classifier of format {FORMAT_VERSION}")
        try:
            with np.load(path / WEIGHTS, allow_pickle=False) as w:
                classes, coef, intercept = w["classes"], w["coef"], w["intercept"]
        except (OSError, KeyError, ValueError) as e:
            raise ArtifactError(f"cannot read {path / WEIGHTS}: {e}") from e
        clf = cls(
            parse_schema(meta["schema"], f"the schema stored in {path / META}"),
            EncoderInfo.model_validate(meta["encoder"]),
            classes.astype(np.int64),
            coef.astype(np.float64),
            intercept.astype(np.float64),
            dict(meta.get("provenance", {})),
            dict(meta.get("metrics", {})),
            path,
        )
        if clf.weights_sha256 != meta.get("weights_sha256"):
            raise ArtifactError(f"{path / WEIGHTS} does not match the sha256 recorded in {META} (replaced?)")
        return clf


# ------------------------------------------------------------------------------------------------ fitting
def label_lanes(labels: Sequence[Any], schema: LaneSchema) -> np.ndarray:
    """int64 [n]: each label's lane index, -1 for a missing label or one the schema does not map."""
    mapping = schema.label_to_lane()
    return np.array([mapping.get(x, -1) if x is not None else -1 for x in labels], dtype=np.int64)


def majority_lanes(lanes: np.ndarray, groups: np.ndarray, n_groups: int, n_lanes: int) -> np.ndarray:
    """int64 [n_groups]: the most frequent lane in each group (ties: the lower lane index; -1 for an empty
    group). ``lanes`` values < 0 are not counted."""
    lanes, groups = np.asarray(lanes, dtype=np.int64), np.asarray(groups, dtype=np.int64)
    ok = lanes >= 0
    counts = np.bincount(groups[ok] * n_lanes + lanes[ok], minlength=n_groups * n_lanes)
    counts = counts.reshape(n_groups, n_lanes)
    out = counts.argmax(axis=1).astype(np.int64)
    out[counts.sum(axis=1) == 0] = -1
    return out


def confusion(true: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """int64 [n, n]: ``C[i, j]`` = rows of true lane i predicted as lane j."""
    return (
        np.bincount(np.asarray(true) * n + np.asarray(pred), minlength=n * n).reshape(n, n).astype(np.int64)
    )


def read_article_labels(path: str | Path) -> dict[str, str]:
    """``{article_id: label}`` from a CSV (header ``article_id,label``) or JSON Lines file (those two keys)."""
    import csv
    import json

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no labels file at {path} (CSV or JSONL with fields article_id, label)")
    with open(path, encoding="utf-8", newline="") as fh:
        if path.suffix in (".jsonl", ".json"):
            records = [json.loads(line) for line in fh if line.strip()]
        else:
            records = list(csv.DictReader(fh))
    for i, r in enumerate(records, start=1):
        missing = [k for k in ("article_id", "label") if k not in r]
        if missing:
            raise ConfigError(f"{path} record {i}: missing field {missing[0]!r} (need article_id and label)")
    return {str(r["article_id"]): str(r["label"]) for r in records if r["label"] not in (None, "")}


def _labelled_rows(
    bank: VectorBank, schema: LaneSchema, labels: dict[str, str] | None = None
) -> tuple[np.ndarray, dict[str, int]]:
    """Lane of every row (-1 = not used) and the count of rows per unmapped label. ``labels`` (article id ->
    label) replaces the bank's ``label`` column."""
    row_labels = (
        bank.labels if labels is None else np.array([labels.get(a) for a in bank.article_ids], dtype=object)
    )
    y = label_lanes(row_labels, schema)
    unmapped: dict[str, int] = {}
    for lab in row_labels[y < 0]:
        key = "(no label)" if lab is None else str(lab)
        unmapped[key] = unmapped.get(key, 0) + 1
    if (y >= 0).sum() == 0:
        present = sorted({str(x) for x in row_labels if x is not None})[:12]
        raise LvmkitError(
            f"bank {bank.path} has no chunk whose label is mapped by schema {schema.name!r} (field lanes[].labels). "
            + (
                f"Labels in the bank: {', '.join(present)}"
                if present
                else "The bank has no labels: ingest labelled data (JSONL / Parquet with a 'label' field)."
            )
        )
    return y, unmapped


def _fit_lr(x: np.ndarray, y: np.ndarray, C: float, max_iter: int, seed: int):
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    return clf.fit(x, y)


def _as_multinomial(model, n_features: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(classes, coef [F, d], intercept [F]) with one row per class; a binary model's single row w becomes the
    equivalent pair (0, w): softmax([0, z]) = sigmoid(z)."""
    classes = model.classes_.astype(np.int64)
    coef, intercept = model.coef_.astype(np.float64), model.intercept_.astype(np.float64)
    if len(classes) == 2 and coef.shape[0] == 1:
        coef = np.vstack([np.zeros(n_features), coef[0]])
        intercept = np.array([0.0, intercept[0]])
    return classes, coef, intercept


def fit_lane_classifier(
    bank: VectorBank,
    schema: LaneSchema | None = None,
    *,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    Cs: Sequence[float] = DEFAULT_CS,
    max_train: int | None = 60_000,
    max_iter: int = 300,
    labels: dict[str, str] | None = None,
    progress: Progress | None = None,
) -> LaneClassifier:
    """Fit a lane classifier on ``bank``'s labels (see the module docstring for the protocol); ``labels``
    (article id -> label, e.g. ``read_article_labels(file)``) replaces the bank's ``label`` column."""
    from lvmkit.data.splits import make_split

    schema = schema or load_schema(None)
    if not Cs or any(float(c) <= 0 for c in Cs):
        raise ConfigError(f"C values must be positive numbers, got {list(Cs)}")
    say = progress or (lambda msg: None)
    y_all, unmapped = _labelled_rows(bank, schema, labels)
    split = make_split(bank, ratios=ratios, seed=seed)
    rows = {n: np.flatnonzero(split.row_mask(n) & (y_all >= 0)) for n in ("train", "val", "test")}
    for n in ("train", "val"):
        if len(np.unique(y_all[rows[n]])) < 2:
            raise LvmkitError(
                f"the {n} split of bank {bank.path} has labelled rows of fewer than 2 lanes; the classifier "
                "needs at least 2 lanes with data (use a larger bank or check the schema's labels)"
            )
    train = rows["train"]
    if max_train is not None and len(train) > max_train:
        train = np.sort(np.random.default_rng(seed).choice(train, max_train, replace=False))
    x_train, y_train = bank.get(train), y_all[train]
    x_val, y_val = bank.get(rows["val"]), y_all[rows["val"]]
    fits, val_acc = [], {}
    for C in Cs:
        say(f"fitting C={C:g} on {len(train):,} train chunks")
        model = _fit_lr(x_train, y_train, float(C), max_iter, seed)
        acc = float((model.predict(x_val) == y_val).mean())
        val_acc[f"{float(C):g}"] = acc
        fits.append((acc, -float(C), model))  # ties: the smaller C (more regularised)
        say(f"C={C:g}: val accuracy {acc:.4f}")
    best_acc, neg_c, best = max(fits, key=lambda t: (t[0], t[1]))
    classes, coef, intercept = _as_multinomial(best, bank.dim)
    clf = LaneClassifier(schema, bank.encoder, classes, coef, intercept)
    clf.metrics = {"val_accuracy_by_C": val_acc, "C": -neg_c, "val_accuracy": best_acc}
    clf.metrics.update(held_out_metrics(clf, bank, rows["test"], y_all))
    clf.provenance = {
        "bank": str(bank.path),
        "bank_id": bank.manifest.bank_id,
        "labels": "bank label column" if labels is None else f"{len(labels)} article labels given",
        "split": {"ratios": list(split.ratios), "seed": split.seed, "hash": split.hash},
        "rows": {n: int(len(r)) for n, r in rows.items()},
        "train_rows_used": int(len(train)),
        "unmapped_rows": unmapped,
        "sklearn": f"LogisticRegression(lbfgs, max_iter={max_iter}, random_state={seed})",
    }
    return clf


def held_out_metrics(
    clf: LaneClassifier, bank: VectorBank, rows: np.ndarray, y_all: np.ndarray
) -> dict[str, Any]:
    """Accuracy per chunk, balanced accuracy, per-article majority accuracy and the confusion matrix."""
    L = clf.n_lanes
    if len(rows) == 0:
        return {"test_rows": 0}
    pred = clf.predict(bank.get(rows))
    true = y_all[rows]
    cm = confusion(true, pred, L)
    support = cm.sum(axis=1)
    recall = np.divide(np.diag(cm), support, out=np.zeros(L), where=support > 0)
    codes = bank.article_codes[rows].astype(np.int64)
    uniq, inv = np.unique(codes, return_inverse=True)
    art_pred = majority_lanes(pred, inv, len(uniq), L)
    art_true = majority_lanes(true, inv, len(uniq), L)
    return {
        "test_rows": int(len(rows)),
        "test_articles": int(len(uniq)),
        "test_accuracy": float((pred == true).mean()),
        "test_balanced_accuracy": float(recall[support > 0].mean()),
        "test_article_accuracy": float((art_pred == art_true).mean()),
        "test_recall_by_lane": {clf.schema.ids[i]: float(recall[i]) for i in range(L) if support[i] > 0},
        "confusion": {
            "lanes": clf.schema.ids,
            "matrix": cm.tolist(),
            "rows": "true lane",
            "columns": "predicted",
        },
    }


def top_confusions(matrix: np.ndarray, ids: Sequence[str], k: int = 5) -> list[dict[str, Any]]:
    """The ``k`` largest off-diagonal cells: ``{"true", "predicted", "count", "rate"}`` (rate = share of the
    true lane's rows), largest count first (ties: by rate, then lane order)."""
    m = np.asarray(matrix, dtype=np.int64)
    support = m.sum(axis=1)
    cells = [
        (int(m[i, j]), float(m[i, j] / support[i]), i, j)
        for i in range(len(m))
        for j in range(len(m))
        if i != j and m[i, j] > 0
    ]
    cells.sort(key=lambda c: (-c[0], -c[1], c[2], c[3]))
    return [{"true": ids[i], "predicted": ids[j], "count": n, "rate": r} for n, r, i, j in cells[:k]]
