"""Lanes of a bank: ``assign_lanes`` writes them, ``chunk_lanes`` / ``article_lanes`` read them.

``lvmkit lanes assign BANK --classifier DIR`` adds two int16 columns to ``BANK/chunks.parquet``:

    lane          the classifier's most probable lane of the chunk's vector (ties: the lower lane index)
    article_lane  the most frequent ``lane`` among the chunks of the chunk's article (ties: the lower index)

and records in ``manifest.json["lanes"]`` the schema, the classifier (path, weights sha256) and the chunk count
per lane. Lane numbers are positions in that schema.

What stays the same: the bank's identity. ``bank_id`` is built from the sha256 of the chunk *texts* and the
encoder (``BankManifest.bank_id``), neither of which changes, so splits, checkpoints, pairs and indexes made
for the bank keep working. The write is atomic per file: chunks.parquet first (a bank with an extra column
is still a valid bank), then the manifest record; a reader trusts the columns only when the record is there.
The assignment is a pure function of the vectors and the classifier's weights, so it is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lvmkit.artifacts import atomic_path, read_json, write_json
from lvmkit.bank.bank import VectorBank
from lvmkit.errors import ArtifactError, LvmkitError
from lvmkit.lanes.classifier import LaneClassifier, majority_lanes
from lvmkit.lanes.schema import LaneSchema, parse_schema

LANE_COLUMN = "lane"
ARTICLE_LANE_COLUMN = "article_lane"
MANIFEST_KEY = "lanes"
Progress = Callable[[int, int], None]


@dataclass
class LaneAssignment:
    lanes: np.ndarray  # int64 [N]
    article_lanes: np.ndarray  # int64 [A]
    schema: LaneSchema

    def shares(self) -> dict[str, float]:
        """Share of chunks per lane (schema order, empty lanes included)."""
        counts = np.bincount(self.lanes, minlength=len(self.schema))
        return {
            lid: float(c / max(1, len(self.lanes))) for lid, c in zip(self.schema.ids, counts, strict=True)
        }


def predict_bank(
    bank: VectorBank, classifier: LaneClassifier, batch_size: int = 32_768, progress: Progress | None = None
) -> LaneAssignment:
    """Lanes of every chunk and article of ``bank`` (nothing written). Refuses another encoder's bank."""
    classifier.check_same_space(bank)
    n = len(bank)
    lanes = np.empty(n, dtype=np.int64)
    for s in range(0, n, batch_size):
        lanes[s : s + batch_size] = classifier.predict(bank.get(np.arange(s, min(n, s + batch_size))))
        if progress is not None:
            progress(min(n, s + batch_size), n)
    art = majority_lanes(lanes, bank.article_codes, bank.n_articles, classifier.n_lanes)
    return LaneAssignment(lanes, art, classifier.schema)


def assign_lanes(
    bank: VectorBank, classifier: LaneClassifier, batch_size: int = 32_768, progress: Progress | None = None
) -> LaneAssignment:
    """Predict the bank's lanes and write them into the bank (see the module docstring)."""
    result = predict_bank(bank, classifier, batch_size, progress)
    table = bank.chunks
    for col in (LANE_COLUMN, ARTICLE_LANE_COLUMN):
        if col in table.column_names:
            table = table.drop_columns([col])
    per_row_article = result.article_lanes[bank.article_codes]
    table = table.append_column(LANE_COLUMN, pa.array(result.lanes.astype(np.int16)))
    table = table.append_column(ARTICLE_LANE_COLUMN, pa.array(per_row_article.astype(np.int16)))
    with atomic_path(bank.path / bank.CHUNKS, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    record = {
        "schema": classifier.schema.model_dump(mode="json"),
        "classifier": str(classifier.path.resolve()) if classifier.path else None,
        "classifier_sha256": classifier.weights_sha256,
        "columns": [LANE_COLUMN, ARTICLE_LANE_COLUMN],
        "chunks_per_lane": np.bincount(result.lanes, minlength=classifier.n_lanes).tolist(),
    }
    manifest = read_json(bank.path / bank.MANIFEST)
    manifest[MANIFEST_KEY] = record
    write_json(bank.path / bank.MANIFEST, manifest)
    bank.chunks = table
    bank.manifest = bank.manifest.model_copy(update={MANIFEST_KEY: record})
    return result


# ------------------------------------------------------------------------------------------------ reading
def lane_record(bank: VectorBank) -> dict[str, Any]:
    """The manifest's lanes record; LvmkitError telling the user to run ``lvmkit lanes assign`` when absent."""
    record = getattr(bank.manifest, MANIFEST_KEY, None)
    if record is None:
        record = read_json(bank.path / bank.MANIFEST).get(MANIFEST_KEY)
    missing = [c for c in (LANE_COLUMN, ARTICLE_LANE_COLUMN) if c not in bank.chunks.column_names]
    if record is None or missing:
        raise LvmkitError(
            f"bank {bank.path} has no lanes: run `lvmkit lanes assign {bank.path} --classifier DIR` first "
            "(fit a classifier with `lvmkit lanes fit LABELLED_BANK --out DIR`)"
        )
    return record


def bank_schema(bank: VectorBank) -> LaneSchema:
    """The schema the bank's lanes were assigned with."""
    return parse_schema(lane_record(bank)["schema"], f"the lane schema in {bank.path / bank.MANIFEST}")


def _column(bank: VectorBank, name: str) -> np.ndarray:
    record = lane_record(bank)
    values = bank.chunks.column(name).to_numpy(zero_copy_only=False).astype(np.int64)
    n_lanes = len(record["schema"]["lanes"])
    if len(values) and (values.min() < 0 or values.max() >= n_lanes):
        raise ArtifactError(f"bank {bank.path}: column {name} holds lanes outside 0..{n_lanes - 1}")
    return values


def chunk_lanes(bank: VectorBank) -> np.ndarray:
    """int64 [N]: the lane of every chunk (the bank's ``lane`` column)."""
    return _column(bank, LANE_COLUMN)


def chunk_article_lanes(bank: VectorBank) -> np.ndarray:
    """int64 [N]: the majority lane of each chunk's article (the bank's ``article_lane`` column)."""
    return _column(bank, ARTICLE_LANE_COLUMN)


def article_lanes(bank: VectorBank) -> np.ndarray:
    """int64 [A]: the majority lane of each article, indexed by article code."""
    return chunk_article_lanes(bank)[bank.article_starts[:-1]]
