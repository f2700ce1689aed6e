"""Domain lanes: a classifier from chunk vectors to lanes of a schema, lanes written into a bank, and a
lane-aware rerank.

    schema = load_schema(None)                          # the default 16 lanes (or a YAML file)
    clf = fit_lane_classifier(labelled_bank, schema)    # logistic regression, article-disjoint held-out metrics
    clf.save("lanes/clf"); clf = LaneClassifier.load("lanes/clf")
    assign_lanes(bank, clf)                             # bank's `lane` / `article_lane` columns
    chunk_lanes(bank)                                   # int64 [N]
    lane_rerank(scores, clf.predict_proba(queries), chunk_lanes(bank)[ids], weight=0.3)

Lane diagnostics (bank share, per-lane Hit@5, weak lanes, confusion pairs) are in ``lvmkit.diagnose.lanes``.
"""

from lvmkit.lanes.assign import (
    ARTICLE_LANE_COLUMN,
    LANE_COLUMN,
    LaneAssignment,
    article_lanes,
    assign_lanes,
    bank_schema,
    chunk_article_lanes,
    chunk_lanes,
    predict_bank,
)
from lvmkit.lanes.classifier import LaneClassifier, fit_lane_classifier, majority_lanes, top_confusions
from lvmkit.lanes.rerank import lane_alignment, lane_rerank, rerank_order
from lvmkit.lanes.schema import DEFAULT_SCHEMA_YAML, Lane, LaneSchema, load_schema, parse_schema

__all__ = [
    "ARTICLE_LANE_COLUMN",
    "DEFAULT_SCHEMA_YAML",
    "LANE_COLUMN",
    "Lane",
    "LaneAssignment",
    "LaneClassifier",
    "LaneSchema",
    "article_lanes",
    "assign_lanes",
    "bank_schema",
    "chunk_article_lanes",
    "chunk_lanes",
    "fit_lane_classifier",
    "lane_alignment",
    "lane_rerank",
    "load_schema",
    "majority_lanes",
    "parse_schema",
    "predict_bank",
    "rerank_order",
    "top_confusions",
]
