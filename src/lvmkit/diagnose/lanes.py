"""``lvmkit diagnose lanes``: how a bank's chunks spread over the domain lanes, and how retrieval does per lane.

Findings (``Diagnosis(kind="lanes")``), on a bank whose lanes were written by ``lvmkit lanes assign``:

    lane_share[ID]   share of the bank's chunks in each lane that has chunks (info)
    empty_lanes      how many lanes hold no chunk (their ids in the details)
    lane_skew        the largest lane's share; warn above ``skew_warn`` (0.40). The predecessor had about 60%
                     of its bank in one lane: a lane feature then says little, and pooled metrics are mostly
                     that lane's
    hit@5            Hit@5 of the target (a run, a checkpoint or ``baseline:NAME``; default copy_last) on the
                     split's windows, full-bank search with the context excluded, exactly as ``lvmkit eval``
    hit@5[ID]        the same over the windows whose *document* is in lane ID (the ``article_lane`` of the
                     truth chunk); warn (a weak lane) when below overall Hit@5 - ``weak_gap`` (7 points);
                     info when the lane has fewer than ``min_queries`` windows (too few to judge)
    confusion[A->B]  the top held-out confusions of the lane classifier that assigned the lanes (from its
                     stored test confusion matrix): count and share of lane A's rows predicted as B

Per-lane rows come from the evaluator's per-label grouping (``eval.evaluator._by_label``) with lane ids as the
labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lvmkit.bank.bank import VectorBank
from lvmkit.diagnose.findings import Diagnosis, info, judge
from lvmkit.errors import LvmkitError

SKEW_WARN = 0.40
WEAK_GAP = 0.07
MIN_QUERIES = 30
TOP_CONFUSIONS = 5


def lane_share_findings(d: Diagnosis, ids: list[str], names: list[str], lanes: np.ndarray, skew_warn: float):
    counts = np.bincount(lanes, minlength=len(ids))
    shares = counts / max(1, counts.sum())
    for i, lid in enumerate(ids):
        if counts[i] == 0:
            continue  # listed in the empty_lanes finding
        d.add(
            info(
                f"lane_share[{lid}]",
                float(shares[i]),
                f"{names[i]}: {int(counts[i]):,} chunks",
                {"chunks": int(counts[i])},
            )
        )
    top = int(shares.argmax())
    d.add(
        judge(
            "lane_skew",
            float(shares[top]),
            warn_above=skew_warn,
            ok=f"largest lane {ids[top]} holds {100 * shares[top]:.1f}% of the chunks",
            warn=f"lane {ids[top]} holds {100 * shares[top]:.1f}% of the chunks: lane features carry little "
            "information and pooled metrics mostly measure this lane (the predecessor had ~60% in one lane)",
            details={"lane": ids[top]},
        )
    )
    d.add(
        info(
            "empty_lanes",
            int((counts == 0).sum()),
            "lanes with no chunk",
            {"lanes": [ids[i] for i in np.flatnonzero(counts == 0)]},
        )
    )
    return {lid: float(s) for lid, s in zip(ids, shares, strict=True)}


def per_lane_hits(
    rows: list[dict[str, Any]], overall: float, weak_gap: float, min_queries: int, d: Diagnosis
):
    """One finding per lane with windows; returns the weak lanes' ids."""
    weak = []
    for r in sorted(rows, key=lambda r: r["label"]):
        name, n, hit = f"hit@5[{r['label']}]", r["n"], r["hit@5"]
        if n < min_queries:
            d.add(info(name, hit, f"{n} windows: too few to judge (< {min_queries})", {"n": n}))
            continue
        f = judge(
            name,
            hit,
            warn_below=overall - weak_gap,
            ok=f"{n} windows; within {100 * weak_gap:.0f} points of overall {100 * overall:.1f}%",
            warn=f"weak lane: {n} windows, more than {100 * weak_gap:.0f} points below overall {100 * overall:.1f}%",
            details={"n": n, "cos": r["cos"]},
        )
        d.add(f)
        if f.status == "warn":
            weak.append(r["label"])
    return weak


def confusion_findings(d: Diagnosis, classifier_dir: str | Path | None) -> list[dict[str, Any]]:
    from lvmkit.lanes import LaneClassifier, top_confusions

    if classifier_dir is None or not (Path(classifier_dir) / "classifier.json").is_file():
        d.add(info("confusion", None, f"lane classifier not found at {classifier_dir}: no confusion pairs"))
        return []
    clf = LaneClassifier.load(classifier_dir)
    conf = clf.metrics.get("confusion")
    if not conf:
        return []
    pairs = top_confusions(conf["matrix"], conf["lanes"], k=TOP_CONFUSIONS)
    if not pairs:
        d.add(info("confusion", 0, "the lane classifier made no held-out confusion"))
    for p in pairs:
        d.add(
            info(
                f"confusion[{p['true']}->{p['predicted']}]",
                p["rate"],
                f"{p['count']} held-out {p['true']} chunks classified as {p['predicted']}",
                p,
            )
        )
    return pairs


def lane_hit_rows(
    target: str,
    bank: VectorBank,
    lanes_of_rows: np.ndarray,
    ids: list[str],
    *,
    split: str,
    max_queries: int | None,
    ctx: int,
    split_file,
    seed: int,
    nprobe: int | None,
):
    """(overall Hit@5, per-lane rows from the evaluator's per-label grouping, stats) for ``target``."""
    from lvmkit.eval.command import (
        build_windows,
        resolve_split,
        resolve_target,
        target_predictor,
        window_info,
    )
    from lvmkit.eval.evaluator import _by_label, evaluate

    t = resolve_target(target, bank)
    sp, source = resolve_split(t, bank, split_file, (0.8, 0.1, 0.1), seed)
    windows, fit_on, cfg, _ = build_windows(t, bank, sp, split, max_queries, ctx, seed)
    result = evaluate(
        target_predictor(t, bank, fit_on),
        windows,
        bank,
        n_boot=0,
        labels=False,
        seed=seed,
        nprobe=nprobe,
        name=t.name,
    )
    query_lanes = np.asarray(ids, dtype=object)[lanes_of_rows[windows.targets]]
    rows = _by_label(query_lanes, result.per_query["hit@5"], result.per_query["cos"])
    stats = {
        "target": t.describe(),
        "split": split,
        "split_source": source,
        "windows": window_info(cfg, split),
        "n_queries": len(windows),
    }
    return result.metrics["hit@5"], rows, stats


def diagnose_lanes(
    bank: str | Path | VectorBank,
    target: str | None = "baseline:copy_last",
    *,
    split: str = "test",
    max_queries: int | None = 2000,
    ctx: int = 5,
    split_file: str | Path | None = None,
    classifier: str | Path | None = None,
    seed: int = 0,
    nprobe: int | None = None,
    skew_warn: float = SKEW_WARN,
    weak_gap: float = WEAK_GAP,
    min_queries: int = MIN_QUERIES,
) -> Diagnosis:
    """Lane shares, per-lane Hit@5 of ``target`` (None: skip) and the classifier's top confusions."""
    from lvmkit.lanes import bank_schema, chunk_article_lanes, chunk_lanes
    from lvmkit.lanes.assign import lane_record

    bank = bank if isinstance(bank, VectorBank) else VectorBank.open(bank)
    record = lane_record(bank)
    schema = bank_schema(bank)
    d = Diagnosis("lanes", f"bank {bank.path}")
    shares = lane_share_findings(d, schema.ids, schema.names, chunk_lanes(bank), skew_warn)
    d.stats.update(shares=shares, schema=schema.name, classifier=record.get("classifier"))
    if target is not None:
        overall, rows, stats = lane_hit_rows(
            target,
            bank,
            chunk_article_lanes(bank),
            schema.ids,
            split=split,
            max_queries=max_queries,
            ctx=ctx,
            split_file=split_file,
            seed=seed,
            nprobe=nprobe,
        )
        d.add(info("hit@5", overall, f"{stats['target']} on {stats['n_queries']} {split} windows"))
        weak = per_lane_hits(rows, overall, weak_gap, min_queries, d)
        d.stats.update(stats, overall_hit5=overall, per_lane=rows, weak_lanes=weak)
    try:
        d.stats["confusions"] = confusion_findings(d, classifier or record.get("classifier"))
    except LvmkitError as e:
        d.add(info("confusion", None, f"lane classifier unreadable: {e}"))
    return d
