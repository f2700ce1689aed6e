"""The retrieval cascade and its drop-ins on a real bank, under both protocols, beside the baselines.

    python benchmarks/bench_cascade.py --bank banks/enwiki --lvm RUN --twotower RUN [--lanes DIR]

For each protocol (open: the whole bank; in-article: the article's chunks outside the context), on test queries
of articles no run trained on:

1. alignment heads: the LVM run, the run + ridge head, the run + Procrustes head (fitted on train, alpha on val)
   beside copy_last, mean_ctx, exp_weighted, ridge and the oracle (``evaluate_suite``);
2. the mini reranker fitted under that protocol (train pools, kind chosen on val), its test table and importances;
3. two cascades, each with per-stage Contain@K / R@k / MRR@10 / Eff@5, batch-1 latency, an ablation, and the seed
   gates: a heuristic-only one (exp_weighted top 500 -> copy_last top 10) and the model one (two-tower top 500 ->
   LVM top 50 -> reranker top 10 [-> lane rerank top 10 with --lanes]).

The open protocol searches the bank's IVF index at nprobe 64. When the bank holds no IVF index (a shared,
read-only bank), a shadow bank is made under --work: symlinks to the bank's vectors and chunks, its manifest, and
an IVF index built there (same bank id, so runs, heads and rerankers keep matching).

Writes benchmarks/results/cascade.json and cascade.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from lvmkit.artifacts import write_json, write_text
from lvmkit.bank import VectorBank
from lvmkit.eval.protocol import IN_ARTICLE, OPEN

PROTOCOLS = (OPEN, IN_ARTICLE)
ROW_KEYS = ("hit@1", "hit@5", "hit@10", "mrr@10", "contain@50", "eff@5")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def lane_classifier(args) -> Path | None:
    """--lanes DIR as given, or a classifier fitted on --lanes-from BANK's labels into WORK/lanes (reused)."""
    if args.lanes is not None or args.lanes_from is None:
        return args.lanes
    from lvmkit.lanes import fit_lane_classifier

    out = args.work / "lanes"
    if not (out / "classifier.json").exists():
        log(f"fitting a lane classifier on the labels of {args.lanes_from}")
        fit_lane_classifier(VectorBank.open(args.lanes_from)).save(out)
    return out


def working_bank(bank_path: Path, work: Path, nprobe: int, lanes: Path | None) -> VectorBank:
    """The bank itself when it stores an IVF index (and lanes, if asked for), else a shadow bank under ``work``:
    symlinks to the bank's vectors and chunks, its manifest, an IVF index built there and the lane columns
    written there (the bank id is unchanged, so runs, heads and rerankers keep matching)."""
    from lvmkit.bank.index import build_index, recall_against_exact, save_index
    from lvmkit.lanes import LANE_COLUMN, LaneClassifier, assign_lanes

    bank = VectorBank.open(bank_path)
    has_ivf = (bank.manifest.index or {}).get("type") == "ivf"
    if has_ivf and (lanes is None or LANE_COLUMN in bank.chunks.column_names):
        return bank
    shadow = work / "bank"
    if (shadow / "manifest.json").exists() and VectorBank.open(
        shadow
    ).manifest.bank_id != bank.manifest.bank_id:
        log(f"the shadow bank {shadow} belongs to another bank: rebuilding it for {bank_path}")
        shutil.rmtree(shadow)
    if not (shadow / "manifest.json").exists():
        shadow.mkdir(parents=True, exist_ok=True)
        for name in ("vectors.npy", "chunks.parquet", "index.faiss"):
            if (bank_path / name).exists():
                os.symlink((bank_path / name).resolve(), shadow / name)
        shutil.copy(bank_path / "manifest.json", shadow / "manifest.json")
    sb = VectorBank.open(shadow)
    if (sb.manifest.index or {}).get("type") != "ivf":
        log(f"building an IVF index for {len(sb)} chunks in the shadow bank {shadow}")
        t0 = time.perf_counter()
        if (shadow / "index.faiss").is_symlink():
            (shadow / "index.faiss").unlink()
        index = build_index(sb.vectors, type="ivf", nprobe=nprobe)
        extra = {
            "recall@10": round(recall_against_exact(index, sb.vectors, k=10, sample=2000), 4),
            "recall_sample": 2000,
        }
        save_index(sb, index, extra)
        log(
            f"IVF built in {time.perf_counter() - t0:.0f} s, recall@10 {extra['recall@10']} at nprobe {nprobe}"
        )
    if lanes is not None and LANE_COLUMN not in sb.chunks.column_names:
        log(f"assigning lanes ({lanes}) to the shadow bank")
        if (shadow / "chunks.parquet").is_symlink():  # written anew there, never into the shared bank
            target = (shadow / "chunks.parquet").resolve()
            (shadow / "chunks.parquet").unlink()
            shutil.copy(target, shadow / "chunks.parquet")
        assign_lanes(VectorBank.open(shadow), LaneClassifier.load(lanes))
    return VectorBank.open(shadow)


def run_budget(run: Path) -> dict:
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    status = json.loads((run / "status.json").read_text()) if (run / "status.json").exists() else {}
    return {
        "run": str(run),
        "model": cfg["model"]["name"],
        "task": cfg.get("task"),
        "ctx": cfg["data"]["ctx"],
        "epochs": cfg["optim"]["epochs"],
        "max_train_windows": cfg["data"]["max_train_windows"],
        "state": status.get("state"),
        "started": status.get("started"),
        "finished": status.get("finished"),
        "best_epoch": status.get("best_epoch"),
        "windows_per_epoch": status.get("windows_per_epoch"),
    }


def heads_section(bank: VectorBank, protocol: str, fit, n: int, nprobe: int) -> dict:
    """The run with and without each head, beside the baselines, on the same test windows."""
    from lvmkit.heads.align import evaluate_heads

    index = "ivf" if protocol == OPEN else None
    suite = evaluate_heads(
        fit, bank, protocol=protocol, max_queries=n, index=index, nprobe=nprobe, n_boot=300
    )
    rows = {name: {k: r.metrics[k] for k in ROW_KEYS} for name, r in suite.items()}
    for name, r in suite.items():
        rows[name]["hit@5_ci"] = list(r.intervals.get("hit@5", (float("nan"),) * 2))
    n_q = next(iter(suite.values())).info["n_queries"]
    return {
        "protocol": protocol,
        "n_queries": n_q,
        "rows": rows,
        "comparisons": [c.to_dict() for c in suite.comparisons],
    }


def cascade_config(
    bank: VectorBank,
    name: str,
    protocol: str,
    stages: list[dict],
    n: int,
    nprobe: int,
    latency_n: int,
    window_ctx: int,
):
    from lvmkit.cascade.config import cascade_from_dict

    raw = {"name": name, "bank": str(bank.path), "protocol": protocol, "index": "ivf" if protocol == OPEN else None,
           "nprobe": nprobe, "max_queries": n, "latency_n": latency_n, "window_ctx": window_ctx, "stages": stages}  # fmt: skip
    return cascade_from_dict(raw, f"cascade {name}")


def pct(v) -> str:
    return "nan" if v is None or v != v else f"{100 * v:.1f}"


def summary(result: dict) -> str:
    """The README tables: per protocol, the heads beside the baselines, the reranker's gain, and each cascade's
    stages with their measured contribution and latency, and the gates."""
    lines = []
    for protocol, sec in result["protocols"].items():
        h = sec["heads"]
        lines += [f"**Protocol {protocol}**: alignment heads, {h['n_queries']} test windows (ctx 5)", "",
                  "| system | R@1 | R@5 (95% CI) | R@10 | MRR@10 | Contain@50 | Eff@5 |", "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for name, m in h["rows"].items():
            lo, hi = m["hit@5_ci"]
            lines.append(f"| {name} | {pct(m['hit@1'])} | {pct(m['hit@5'])} ({pct(lo)}-{pct(hi)}) | {pct(m['hit@10'])} | "
                         f"{m['mrr@10']:.3f} | {pct(m['contain@50'])} | {pct(m['eff@5'])} |")  # fmt: skip
        r = sec["reranker"]
        lines += ["", f"**Protocol {protocol}**: reranker over the two-tower's top {result['rerank_k']} "
                  f"({r['n']['test']} test queries; truth in the pool for {pct(r['pool_contain']['test'])}%; "
                  f"{r['chosen']} chosen on val MRR@10; features {', '.join(r['features'])})", "",
                  "| order of the pool | R@1 | R@5 | R@10 | MRR@10 |", "|---|---:|---:|---:|---:|"]  # fmt: skip
        for name, m in r["test"].items():
            lines.append(
                f"| {name} | {pct(m['hit@1'])} | {pct(m['hit@5'])} | {pct(m['hit@10'])} | {m['mrr@10']:.3f} |"
            )
        imp = sorted(r["importance"].items(), key=lambda kv: -kv[1])
        lines += [
            "",
            "Importance (val MRR@10 drop when shuffled): " + ", ".join(f"{k} {v:+.3f}" for k, v in imp),
            "",
        ]
        for name, c in sec["cascades"].items():
            lines += [f"**Protocol {protocol}**: cascade `{name}`, {c['info']['n_queries']} test queries", "",
                      "| stage | K | Contain@K | R@1 | R@5 | R@10 | MRR@10 | Eff@5 | P50 ms | P95 ms |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
            for i, st in enumerate(c["stages"]):
                lat = st.get("latency") or {}
                lines.append(f"| {i}: {st['describe']} | {st['k']} | {pct(st['contain@k'])} | {pct(st['hit@1'])} | "
                             f"{pct(st['hit@5'])} | {pct(st['hit@10'])} | {st['mrr@10']:.3f} | {pct(st['eff@5'])} | "
                             f"{lat.get('p50_ms', float('nan')):.2f} | {lat.get('p95_ms', float('nan')):.2f} |")  # fmt: skip
            if c["latency"]:
                t = c["latency"]["total"]
                lines.append(f"| total | | | | | | | | {t['p50_ms']:.2f} | {t['p95_ms']:.2f} |")
            for a in c["ablation"]:
                lines.append(f"| without {a['removed']} | {a['k']} | {pct(a['contain@k'])} | {pct(a['hit@1'])} | "
                             f"{pct(a['hit@5'])} | {pct(a['hit@10'])} | {a['mrr@10']:.3f} | {pct(a['eff@5'])} | | |")  # fmt: skip
            if c["gates"]:
                held = ", ".join(f"{g['metric']} {g['value']:.3g} {g['bound']} {'held' if g['held'] else 'FAILED'}"
                                 for g in c["gates"]["rows"])  # fmt: skip
                lines += ["", f"Gates: {held}."]
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    from lvmkit.heads.reranker import format_report

    args = parse_args()
    t_start = time.perf_counter()
    args.lanes = lane_classifier(args)
    bank = working_bank(args.bank, args.work, args.nprobe, args.lanes)
    result, fit = start_result(args, bank)
    result["window_ctx"] = max(run_budget(args.lvm)["ctx"], run_budget(args.twotower)["ctx"])
    md = []
    for protocol in args.protocols.split(","):
        sec, rr = reranker_section(args, bank, fit, protocol, result)
        md += [f"## Reranker, protocol {protocol}", "", format_report(rr), ""]
        sec["cascades"] = run_cascades(args, bank, protocol, rr.path, result["window_ctx"], md)
        result["protocols"][protocol] = sec
        write_json(args.out, result)  # after every protocol: a long run keeps what it finished
    result["wall_s"] = time.perf_counter() - t_start
    write_json(args.out, result)
    write_text(args.out.with_suffix(".md"), "\n".join(md))
    write_text(args.out.with_name(args.out.stem + "_summary.md"), summary(result))
    log(f"wrote {args.out} and {args.out.with_suffix('.md')} in {result['wall_s']:.0f} s")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bank", type=Path, default=Path("banks/enwiki"))
    ap.add_argument("--lvm", type=Path, required=True, help="an LVM run trained on the bank")
    ap.add_argument("--twotower", type=Path, required=True, help="a two-tower run trained on the bank")
    ap.add_argument("--lanes", type=Path, default=None, help="a lane classifier directory (lvmkit lanes fit)")
    ap.add_argument(
        "--lanes-from", type=Path, default=None, help="or a labelled bank to fit one on (e.g. /work/qs/bank)"
    )
    ap.add_argument("--work", type=Path, default=Path("benchmarks/work/cascade"))
    ap.add_argument("--queries", type=int, default=2000, help="test queries per table")
    ap.add_argument("--nprobe", type=int, default=64)
    ap.add_argument("--latency-n", type=int, default=200)
    ap.add_argument("--rerank-train", type=int, default=2000, help="train queries (pools) of the reranker")
    ap.add_argument("--rerank-k", type=int, default=100, help="pool size the reranker is fitted on")
    ap.add_argument("--gates", type=Path, default=Path("configs/cascade_gates.yaml"))
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/cascade.json"))
    ap.add_argument(
        "--only-cascades", action="store_true", help="rerun the cascades only (heads, rerankers: --out's)"
    )
    return ap.parse_args()


def start_result(args, bank: VectorBank):
    """(the results dict, the alignment fit): heads fitted now, or (--only-cascades) the previous run's results."""
    from lvmkit.heads.align import fit_alignment

    result = {
        "bank": str(args.bank), "bank_used": str(bank.path), "bank_id": bank.manifest.bank_id, "bank_size": len(bank),
        "encoder": bank.encoder.describe(), "index": bank.manifest.index, "nprobe": args.nprobe,
        "runs": {"lvm": run_budget(args.lvm), "twotower": run_budget(args.twotower)},
        "lanes": str(args.lanes) if args.lanes else None,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "protocols": {}, "rerank_k": args.rerank_k,
    }  # fmt: skip
    if args.only_cascades:  # heads and rerankers from the previous full run (its results file and RUN/heads)
        return {**json.loads(args.out.read_text()), "lanes": result["lanes"]}, None
    log("fitting alignment heads (train pairs, alpha on val)")
    fit = fit_alignment(args.lvm, bank)
    fit.save()
    result["align"] = {
        "val_hit@5": fit.val,
        "sweep": fit.sweep,
        "alpha": fit.heads["ridge"].provenance["alpha"],
    }
    return result, fit


def reranker_section(args, bank: VectorBank, fit, protocol: str, result: dict):
    """(this protocol's section, its reranker): heads beside the baselines and a fitted reranker, or
    (--only-cascades) the stored section and reranker."""
    from lvmkit.heads.reranker import Reranker, fit_reranker

    if args.only_cascades:
        return result["protocols"][protocol], Reranker.load(args.lvm, bank, protocol)
    log(f"[{protocol}] heads beside the baselines")
    sec = {"heads": heads_section(bank, protocol, fit, args.queries, args.nprobe)}
    log(f"[{protocol}] reranker")
    rr = fit_reranker(
        str(args.lvm), bank, protocol=protocol, retriever=str(args.twotower), k=args.rerank_k,
        lanes=str(args.lanes) if args.lanes else None, max_train=args.rerank_train, max_val=1000,
        max_test=args.queries, nprobe=args.nprobe,
    )  # fmt: skip
    rr.save(args.lvm)
    sec["reranker"] = {"kind": rr.kind, "features": rr.spec.features, **rr.report}
    return sec, rr


def run_cascades(args, bank: VectorBank, protocol: str, rr_path, window_ctx: int, md: list[str]) -> dict:
    """The heuristic and the model cascade (+ the lane orders with --lanes) under ``protocol``; tables go to md."""
    from lvmkit.cascade.evaluate import evaluate_cascade, format_cascade

    heuristic = [{"stage": "retrieve", "source": "baseline:exp_weighted", "k": 500},
                 {"stage": "lvm_rerank", "run": "baseline:copy_last", "k": 10}]  # fmt: skip
    model = [{"stage": "retrieve", "source": str(args.twotower), "k": 500},
             {"stage": "lvm_rerank", "run": str(args.lvm), "k": 50},
             {"stage": "reranker", "path": str(rr_path), "k": 10}]  # fmt: skip
    cascades = [("heuristic", heuristic), ("model", model)]
    if args.lanes:  # the reranker then the lane rerank, and the order (LVM top 50 -> lanes top 10)
        model.append({"stage": "lane_rerank", "lanes": str(args.lanes), "weight": 0.3, "k": 10})
        cascades.append(("issue-order", [*model[:2], {**model[-1]}]))
    out = {}
    for name, stages in cascades:
        log(f"[{protocol}] cascade {name}")
        cfg = cascade_config(
            bank, name, protocol, stages, args.queries, args.nprobe, args.latency_n, window_ctx
        )
        o = evaluate_cascade(cfg, gates=args.gates, out=args.work / f"cascade-{name}-{protocol}")
        out[name] = o.to_dict()
        md += [format_cascade(o), ""]
    return out


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--summary":  # re-render the README tables from a results file
        print(summary(json.loads(Path(sys.argv[2]).read_text())))
    else:
        main()
