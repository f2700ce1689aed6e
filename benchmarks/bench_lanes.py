"""Domain lanes on a real bank: the lane classifier's held-out accuracy and confusion, lane skew, per-lane
Hit@5 with weak-lane flags, and the lane rerank with its weight chosen on val.

    python benchmarks/bench_lanes.py --labelled quickstart_out/bank --bank quickstart_out/bank --run quickstart_out/runs/amn

1. fit (or ``--reuse``) a lane classifier on ``--labelled`` (its ``label`` column, default 16-lane schema,
   article-disjoint split, C chosen on val, accuracy and confusion on the held-out test articles);
2. a working copy of ``--bank`` (vectors and index symlinked, chunks + manifest copied: the source bank is
   never written) gets ``lvmkit lanes assign``;
3. val and test windows (``--ctx``, ``--min-ctx``, left-padded; a seeded sample) of the bank's split; each
   predictor (copy_last, exp_weighted, and ``--run``'s model) retrieves its top 50 by exact full-bank search
   with the window's context excluded;
4. per-lane Hit@5 of each predictor on test (a query's lane = its document's majority lane), weak lanes
   (Hit@5 < overall - 7 points, lanes with >= 30 windows);
5. lane rerank of the top 50: ``(1 - w) cos + w * P(query lane = candidate's lane)``, the query's lane
   distribution from the classifier on the prediction; w swept on val, chosen by val Hit@5, test read once
   for w = 0 (no rerank), 0.3 (the predecessor's) and the chosen w, with a paired bootstrap CI vs w = 0.

Writes benchmarks/results/lanes[_NAME].json and .md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from lvmkit.bank.bank import VectorBank
from lvmkit.data.splits import make_split
from lvmkit.data.windows import make_windows
from lvmkit.diagnose.findings import Diagnosis
from lvmkit.diagnose.lanes import per_lane_hits
from lvmkit.diagnose.model import predict_windows
from lvmkit.eval import metrics as M
from lvmkit.eval.bootstrap import paired_diff_ci
from lvmkit.eval.evaluator import _by_label
from lvmkit.lanes import (
    LaneClassifier,
    assign_lanes,
    chunk_article_lanes,
    chunk_lanes,
    fit_lane_classifier,
    lane_rerank,
    rerank_order,
    top_confusions,
)
from lvmkit.models import build_model

WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
DEPTH = 50


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--labelled", default="quickstart_out/bank", help="bank whose `label` column trains the classifier"
    )
    p.add_argument("--bank", default="quickstart_out/bank", help="bank to assign lanes to and evaluate on")
    p.add_argument(
        "--run", default=None, help="a run directory whose model is evaluated beside the baselines"
    )
    p.add_argument("--work", default="/tmp/lanes-bench", help="classifier + working copy of the bank")
    p.add_argument("--reuse", action="store_true", help="reuse a classifier already fitted in --work")
    p.add_argument("--ctx", type=int, default=4)
    p.add_argument("--min-ctx", type=int, default=1)
    p.add_argument("--queries", type=int, default=3000, help="val and test windows each (seeded sample)")
    p.add_argument("--name", default="", help="suffix of the result files")
    return p.parse_args()


def working_copy(src: Path, work: Path) -> VectorBank:
    """A writable copy of a bank: vectors.npy and index.faiss symlinked, chunks.parquet and manifest copied."""
    dst = work / f"bank-{src.name}"
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("vectors.npy", "index.faiss"):
        if (src / name).exists() and not (dst / name).exists():
            (dst / name).symlink_to((src / name).resolve())
    for name in ("chunks.parquet", "manifest.json"):
        shutil.copyfile(src / name, dst / name)
    return VectorBank.open(dst)


def classifier(args, work: Path) -> LaneClassifier:
    out = work / "classifier"
    if args.reuse and (out / "classifier.json").is_file():
        return LaneClassifier.load(out)
    t = time.time()
    clf = fit_lane_classifier(VectorBank.open(args.labelled), progress=lambda m: print(m, flush=True))
    clf.save(out)
    clf.metrics["fit_seconds"] = round(time.time() - t, 1)
    return clf


def predictors(bank: VectorBank, run: str | None) -> dict:
    out = {name: build_model(name, bank.dim) for name in ("copy_last", "exp_weighted")}
    if run:
        from lvmkit.eval.command import resolve_target

        t = resolve_target(run, bank)
        out[t.name] = t.predictor
    return out


def retrieve(bank, windows, predictor, clf):
    """Top-50 (context excluded) for each window, with the query's lane distribution."""
    got = predict_windows(predictor, windows)
    ctx_rows = np.asarray(windows.context_rows(np.arange(len(windows))), dtype=np.int64)
    scores, ids = bank.search(got["pred"], DEPTH, exclude=ctx_rows)
    return {
        "scores": scores,
        "ids": ids.astype(np.int64),
        "truth": got["rows"],
        "proba": clf.predict_proba(got["pred"]),
    }


def rank_metrics(r, lanes, weight) -> dict[str, np.ndarray]:
    cand = np.where(r["ids"] >= 0, lanes[np.clip(r["ids"], 0, None)], -1)
    order = rerank_order(lane_rerank(r["scores"], r["proba"], cand, weight))
    ranked = np.take_along_axis(r["ids"], order, axis=1)
    out = {f"hit@{k}": M.hit_at_k(ranked, r["truth"], k) for k in (1, 5, 10)}
    out["mrr@10"] = M.mrr_at_k(ranked, r["truth"], 10)
    return out


def sweep(bank, split, preds, clf, args) -> dict:
    lanes = chunk_lanes(bank)
    results = {}
    win = {
        n: make_windows(bank, split, n, args.ctx, min_ctx=args.min_ctx).sample(args.queries, i + 1)
        for i, n in enumerate(("val", "test"))
    }
    for name, predictor in preds.items():
        val = retrieve(bank, win["val"], predictor, clf)
        val_hit5 = {w: float(rank_metrics(val, lanes, w)["hit@5"].mean()) for w in WEIGHTS}
        best = max(WEIGHTS, key=lambda w: (val_hit5[w], -w))
        test = retrieve(bank, win["test"], predictor, clf)
        at = {w: rank_metrics(test, lanes, w) for w in sorted({0.0, 0.3, best})}
        row = {
            "val_hit@5_by_weight": val_hit5,
            "chosen_weight": best,
            "n_val": len(win["val"]),
            "n_test": len(win["test"]),
            "test": {},
        }
        for w, m in at.items():
            diff = paired_diff_ci(m["hit@5"], at[0.0]["hit@5"])
            row["test"][f"{w:g}"] = {
                **{k: float(v.mean()) for k, v in m.items()},
                "hit@5_vs_no_rerank": list(diff),
            }
        row["per_lane"] = per_lane(bank, test["truth"], at[0.0]["hit@5"], clf)
        results[name] = row
        print(
            f"{name}: val-chosen weight {best}, test hit@5 {row['test']['0']['hit@5']:.4f} -> "
            f"{row['test'][f'{best:g}']['hit@5']:.4f}",
            flush=True,
        )
    return results


def per_lane(bank, truth, hit5, clf) -> dict:
    ids = np.asarray(clf.schema.ids, dtype=object)
    rows = _by_label(ids[chunk_article_lanes(bank)[truth]], hit5, np.zeros(len(hit5)))
    d = Diagnosis("lanes", "bench")
    weak = per_lane_hits(rows, float(hit5.mean()), 0.07, 30, d)
    return {
        "overall": float(hit5.mean()),
        "rows": [{k: v for k, v in r.items() if k != "cos"} for r in rows],
        "weak": weak,
    }


def markdown(res) -> str:
    m = res["classifier"]
    lines = [
        f"lane classifier: test accuracy {m['test_accuracy']:.3f} (balanced {m['test_balanced_accuracy']:.3f}, "
        f"article majority {m['test_article_accuracy']:.3f}), C={m['C']:g} chosen on val",
        "",
        "| lane | bank share % |",
        "|---|---:|",
    ]
    lines += [
        f"| {k} | {100 * v:.1f} |" for k, v in sorted(res["shares"].items(), key=lambda kv: -kv[1]) if v > 0
    ]
    for name, row in res["systems"].items():
        lines += [
            "",
            f"**{name}**: per-lane test Hit@5 (overall {100 * row['per_lane']['overall']:.1f}%; weak: "
            f"{', '.join(row['per_lane']['weak']) or 'none'})",
            "",
            "| lane | windows | Hit@5 % |",
            "|---|---:|---:|",
        ]
        lines += [f"| {r['label']} | {r['n']} | {100 * r['hit@5']:.1f} |" for r in row["per_lane"]["rows"]]
        lines += [
            "",
            "| rerank weight | Hit@1 | Hit@5 (diff vs none, 95% CI) | Hit@10 | MRR@10 |",
            "|---|---:|---:|---:|---:|",
        ]
        for w, t in row["test"].items():
            d, lo, hi = t["hit@5_vs_no_rerank"]
            tag = " (val-chosen)" if float(w) == row["chosen_weight"] else ""
            lines.append(
                f"| {w}{tag} | {100 * t['hit@1']:.1f} | {100 * t['hit@5']:.1f} ({100 * d:+.1f}, "
                f"{100 * lo:+.1f} to {100 * hi:+.1f}) | {100 * t['hit@10']:.1f} | {t['mrr@10']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    args = parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    clf = classifier(args, work)
    bank = working_copy(Path(args.bank), work)
    t = time.time()
    assignment = assign_lanes(bank, clf)
    assign_s = time.time() - t
    split = make_split(bank, seed=0)
    res = {
        "labelled_bank": args.labelled,
        "bank": args.bank,
        "bank_id": bank.manifest.bank_id,
        "bank_chunks": len(bank),
        "ctx": args.ctx,
        "min_ctx": args.min_ctx,
        "protocol": "open",
        "classifier": {k: v for k, v in clf.metrics.items()},
        "classifier_provenance": clf.provenance,
        "top_confusions": top_confusions(
            clf.metrics["confusion"]["matrix"], clf.metrics["confusion"]["lanes"], 8
        ),
        "assign_seconds": round(assign_s, 2),
        "shares": assignment.shares(),
        "article_shares": {
            k: float(v)
            for k, v in zip(
                clf.schema.ids,
                np.bincount(assignment.article_lanes, minlength=len(clf.schema))
                / max(1, len(assignment.article_lanes)),
                strict=True,
            )
        },
        "systems": sweep(bank, split, predictors(bank, args.run), clf, args),
    }
    out = Path("benchmarks/results") / f"lanes{('_' + args.name) if args.name else ''}.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
