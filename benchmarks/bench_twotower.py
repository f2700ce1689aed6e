"""Two-tower quality: can a learned query tower beat the heuristics at finding the next chunk in the whole bank?

Four systems answer the same held-out test pairs (ctx 100 by default; articles of the test split, which no
run trained on), each by exact search over every chunk of BANK with the query's own context excluded:

    copy_last            the last context vector as the query
    exp_weighted         the exponentially weighted context (alpha 0.1)
    blend                normalize(w last + (1 - w) exp_weighted(alpha)), (w, alpha) chosen on val pairs once
                         per table; with --anchor blend or mix both towers start at it (``heuristic_blend``)
    twotower_plain       configs/twotower_plain.yaml: in-batch + memory-bank negatives, no mining
    twotower_curriculum  configs/twotower_curriculum.yaml: the same plus the hard-negative curriculum

Recall@10/100/500 with 95% bootstrap intervals over queries, and for each trained tower the paired
difference to the best heuristic (the paired bootstrap interval of the difference: "better" only when it
lies above zero). The predecessor's best tower reached Recall@500 18% against 39% for exp_weighted.

    python benchmarks/bench_twotower.py BANK                           # defaults sized for ~15 min on 2 cores
    python benchmarks/bench_twotower.py BANK --epochs 6 --max-train-pairs 30000 --hidden 256
    python benchmarks/bench_twotower.py --smoke                        # a synthetic bank, about a minute
    python benchmarks/bench_twotower.py BANK --inarticle-offsets 1,-1 --inarticle-weight 0.2
                                          # both towers with in-article negatives (twotower.inarticle_offsets)

Runs go to benchmarks/work/twotower/<name> and are reused when finished (resumed when interrupted), so a
second call only re-evaluates (one work directory per --out: benchmarks/work/<its stem>). Size knobs: --max-train-pairs, --epochs, --hidden, --batch-size,
--val-queries, --test-queries. Writes benchmarks/results/twotower.json and twotower.md (a smoke run writes
under benchmarks/work/ instead). With --inarticle-offsets the towers train with in-article hard negatives
(the window's own article's chunks target+k, k > 0, or the |k|-th before the context, k < 0, weighted by
--inarticle-weight); their runs are named ``*_inarticle`` and the results go to twotower_inarticle.json / .md,
so the table without them is kept for comparison.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from lvmkit.artifacts import read_jsonl, write_json, write_text
from lvmkit.bank import VectorBank
from lvmkit.bank.index import exact_index
from lvmkit.data import make_pairs, make_split
from lvmkit.eval.evaluator import compare_all, compare_to_best, format_comparisons, format_table
from lvmkit.eval.tuning import fit_blend
from lvmkit.models import build_model
from lvmkit.models.towers import build_doc_tower
from lvmkit.tasks.twotower.docbank import DocBank, encode_bank, raw_doc_bank
from lvmkit.tasks.twotower.evaluate import evaluate_retrieval
from lvmkit.train.checkpoint import load_checkpoint
from lvmkit.train.config import load_config
from lvmkit.train.loop import train
from lvmkit.train.runs import RunPaths, read_status

ROOT = Path(__file__).resolve().parents[1]
KS = (10, 100, 500)
HEURISTICS = ("copy_last", "exp_weighted", "blend")


def default_schedule(epochs: int) -> str:
    """The issue's curriculum shape scaled to ``epochs``: the first third without mining, then 8 negatives
    in 0.82-0.92, then 16 in 0.84-0.96 (shorter runs keep the order and drop what does not fit)."""
    if epochs < 2:
        return "1:8@0.82-0.92"
    a = max(1, epochs // 3)
    b = max(a + 1, (2 * epochs) // 3)
    stages = [f"1-{a}:none" if a > 1 else "1:none"]
    stages.append(f"{a + 1}-{b}:8@0.82-0.92" if b > a + 1 else f"{a + 1}:8@0.82-0.92")
    if b < epochs:
        stages.append(f"{b + 1}-{epochs}:16@0.84-0.96" if epochs > b + 1 else f"{epochs}:16@0.84-0.96")
    return ";".join(stages)


def parse_offsets(text: str) -> list[int]:
    """``--inarticle-offsets 1,2,-1`` -> [1, 2, -1] (checked by the config: distinct and non-zero)."""
    try:
        return [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 1,2,-1, got {text!r}"
        ) from None


def inarticle_overrides(args) -> list[str]:
    """The config keys of --inarticle-offsets / --inarticle-weight (none without offsets)."""
    if not args.inarticle_offsets:
        return []
    offsets = ", ".join(map(str, args.inarticle_offsets))
    return [f"twotower.inarticle_offsets=[{offsets}]", f"twotower.inarticle_weight={args.inarticle_weight}"]


def train_run(name: str, config: str, args, work: Path, extra: list[str]) -> tuple[Path, float]:
    """Train (or reuse / resume) one run; returns (run dir, training seconds, 0 when reused)."""
    run_dir = work / name
    overrides = [
        f"bank={args.bank}",
        f"data.ctx={args.ctx}",
        f"data.batch_size={args.batch_size}",
        f"data.max_train_windows={args.max_train_pairs}",
        f"data.max_eval_queries={args.val_queries}",
        f"optim.epochs={args.epochs}",
        f"optim.lr={args.lr}",
        f"optim.warmup_steps={args.warmup}",
        f"model.kwargs.hidden={args.hidden}",
        f"model.kwargs.anchor={args.anchor}",
        f"data.min_ctx={args.min_ctx if args.min_ctx else 'null'}",
        f"twotower.pairs_per_article={args.pairs_per_article}",
        f"twotower.memory={args.memory}",
        f"twotower.pair_stride={args.stride}",
        f"twotower.eval_stride={args.stride}",
        f"twotower.eval_ks=[{', '.join(map(str, KS))}]",
        "twotower.abort=null",  # report what happens instead of stopping: the table must have every row
        "early_stopping.metric=val_recall@500",
        f"early_stopping.patience={args.epochs}",
        "final_eval=false",
        "device=cpu" if args.cpu else "device=auto",
        *inarticle_overrides(args),
        *extra,
    ]
    cfg = load_config(ROOT / "configs" / config, overrides)
    run = RunPaths(run_dir)
    if run.config.exists() and Path(load_config(run.config).bank).resolve() != Path(cfg.bank).resolve():
        raise SystemExit(
            f"{run_dir} was trained on another bank ({load_config(run.config).bank}); use another --work"
        )
    if run.status.exists() and read_status(run).get("state") in ("finished", "early_stopped"):
        print(f"  {name}: reusing the finished run in {run_dir}", flush=True)
        return run_dir, 0.0
    resume = run.last.exists()
    print(f"  {name}: training{' (resuming)' if resume else ''} -> {run_dir}", flush=True)
    t0 = time.perf_counter()
    status = train(cfg, run_dir, resume=resume)
    if status["state"] not in ("finished", "early_stopped"):
        raise SystemExit(f"{name} ended in state {status['state']}: {status.get('message')}")
    return run_dir, time.perf_counter() - t0


def tuned_anchor(work: Path, names: tuple[str, ...]) -> tuple[float, float] | None:
    """The (w, alpha) a tower's blend / mix anchor was already tuned to on val pairs (its checkpoint's model
    spec), so the blend is tuned once per table: at ctx 100 on 900k chunks one tuning costs ~25 min of CPU."""
    for name in names:
        for ckpt_name in ("best.pt", "last.pt"):
            path = work / name / ckpt_name
            spec = load_checkpoint(path)["model"] if path.exists() else {}
            if spec.get("anchor_w") is not None:
                return float(spec["anchor_w"]), float(spec["anchor_alpha"])
    return None


def heuristic_blend(args, bank: VectorBank, work: Path, names: tuple[str, ...]):
    """The tuned blend heuristic and the overrides that start a new tower's anchor at it. (w, alpha) are chosen
    on val pairs once: by a tower that already tuned its anchor, or here (``fit_blend``) before any tower."""
    pair = tuned_anchor(work, names)
    if pair is None:
        split = make_split(bank, ratios=(0.8, 0.1, 0.1), seed=0)
        val = make_pairs(
            bank, split, ctx=args.ctx, stride=args.stride, split_name="val", min_ctx=args.min_ctx or None
        ).windows()
        blend = fit_blend(val, bank, seed=0)
        info = blend.fit_info.to_dict()
        pair = (blend.fit_info.w, blend.fit_info.alpha)
    else:
        blend = build_model("blend", bank.dim, w=pair[0], alpha=pair[1])
        info = {"w": pair[0], "alpha": pair[1], "tuned_on": "val pairs, by a tower's anchor (tune_anchor)"}
    print(f"blend: w={pair[0]:g}, alpha={pair[1]:g} ({info['tuned_on']})", flush=True)
    sets = [f"model.kwargs.anchor_w={pair[0]}", f"model.kwargs.anchor_alpha={pair[1]}"]
    return blend, info, (sets if args.anchor in ("blend", "mix") else [])


def load_tower(run_dir: Path, bank: VectorBank, device: torch.device):
    """The best checkpoint's query tower and the document side it searches (the bank, or its adapted copy)."""
    ckpt = load_checkpoint(run_dir / "best.pt", map_location=device)
    query = build_model(**ckpt["model"])
    query.load_state_dict(ckpt["modules"]["model"])
    spec = dict(ckpt["doc_tower"])
    doc = build_doc_tower(spec.pop("name"), spec.pop("dim"), **spec)
    doc.load_state_dict(ckpt["modules"]["doc"])
    if ckpt["doc_tower"]["name"] == "identity":
        docs = raw_doc_bank(bank)
    else:
        vectors = encode_bank(bank, doc.to(device), device)
        docs = DocBank(bank, vectors, exact_index(vectors))
    epoch = int(ckpt["progress"]["epoch"]) - (1 if ckpt["progress"].get("batch", 0) == 0 else 0)
    return query.to(device).eval(), docs, epoch


def synthetic_bank(path: Path, n_articles: int = 120, dim: int = 32, seed: int = 0) -> VectorBank:
    """Articles as random walks on the sphere (the next chunk is near the last ones, as in text)."""
    import pyarrow as pa

    from lvmkit.bank import BankManifest, CorpusInfo, EncoderInfo
    from lvmkit.bank.bank import text_hash

    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, 60, size=n_articles)
    rows, art, idx = [], [], []
    for a, n in enumerate(lengths):
        v = rng.standard_normal(dim)
        for i in range(n):
            v = v + 0.6 * rng.standard_normal(dim)
            rows.append(v / np.linalg.norm(v))
            art.append(a)
            idx.append(i)
    x = np.asarray(rows, dtype=np.float32)
    texts = [f"synthetic article {a} chunk {i}" for a, i in zip(art, idx, strict=True)]
    chunks = pa.table(
        {
            "article_id": [f"A{a:04d}" for a in art],
            "title": [f"A{a:04d}" for a in art],
            "chunk_index": pa.array(idx, pa.int32()),
            "paragraph_index": pa.array(np.zeros(len(x), dtype=np.int32)),
            "heading": pa.nulls(len(x), pa.string()),
            "text": texts,
            "label": pa.nulls(len(x), pa.string()),
        }
    )
    manifest = BankManifest(
        encoder=EncoderInfo(name="synthetic-walk", dim=dim),
        chunker={"spec": "synthetic"},
        corpus=CorpusInfo(
            source="synthetic", format="synthetic", content_hash=text_hash(texts), articles=n_articles
        ),
        count=len(x),
    )
    return VectorBank.write(path, x, chunks, manifest)


def parse_args() -> argparse.Namespace:
    """The command line, checked (BANK or --smoke; --runs names plain and/or curriculum, as ``args.wanted``)."""
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument(
        "bank", nargs="?", help="bank directory (at least ~2,000 enwiki articles for the README table)"
    )
    ap.add_argument(
        "--smoke", action="store_true", help="a synthetic bank and tiny sizes: checks the script runs"
    )
    ap.add_argument("--ctx", type=int, default=100, help="context chunks per query (default 100)")
    ap.add_argument("--stride", type=int, default=8, help="pair stride within an article (train and test)")
    ap.add_argument(
        "--min-ctx", type=int, default=10, help="shortest (left-padded) context of a pair; 0 = a full --ctx"
    )
    ap.add_argument("--pairs-per-article", type=int, default=30, help="cap on train pairs per article")
    ap.add_argument(
        "--anchor",
        default="exp_weighted",
        choices=["none", "exp_weighted", "last", "mean", "blend", "mix"],
        help="query-tower anchor: the tower starts AT this heuristic and learns a residual",
    )
    ap.add_argument("--epochs", type=int, default=4, help="epochs of each trained tower")
    ap.add_argument(
        "--schedule", default=None, help="curriculum (default: the issue's shape scaled to --epochs)"
    )
    ap.add_argument("--max-train-pairs", type=int, default=10_000, help="cap on train pairs (a fixed sample)")
    ap.add_argument("--val-queries", type=int, default=500, help="val pairs scored after every epoch")
    ap.add_argument("--test-queries", type=int, default=2000, help="test pairs in the table")
    ap.add_argument("--hidden", type=int, default=128, help="bigru_pool width")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100, help="warm-up optimiser steps")
    ap.add_argument("--memory", type=int, default=20_000, help="memory-bank entries")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument(
        "--inarticle-offsets",
        type=parse_offsets,
        default=[],
        help="in-article hard negatives for both towers, e.g. 1,-1 (target+1 and the chunk before the context)",
    )
    ap.add_argument(
        "--inarticle-weight",
        type=float,
        default=1.0,
        help="weight of each in-article negative (logit + log w)",
    )
    ap.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    ap.add_argument("--fresh", action="store_true", help="retrain even when finished runs exist")
    ap.add_argument(
        "--out",
        default=str(ROOT / "benchmarks/results/twotower.json"),
        help="results JSON (+ .md beside it); runs go to benchmarks/work/<its stem> (default: %(default)s)",
    )
    ap.add_argument(
        "--runs",
        default="plain,curriculum",
        help="which towers to train and evaluate: plain, curriculum or both (default: %(default)s)",
    )
    args = ap.parse_args()
    if args.bank is None and not args.smoke:
        ap.error("give a BANK directory, or --smoke")
    args.wanted = {r.strip() for r in args.runs.split(",") if r.strip()}
    if not args.wanted or args.wanted - {"plain", "curriculum"}:
        ap.error(f"--runs takes plain, curriculum or both (got {args.runs!r})")
    return args


def setup(args) -> tuple[Path, Path, str]:
    """(work directory, results JSON, run-name suffix); a smoke run swaps in a synthetic bank and tiny sizes."""
    if args.smoke:
        work = ROOT / "benchmarks/work/twotower_smoke"
        shutil.rmtree(work, ignore_errors=True)
        args.bank = str(synthetic_bank(work / "bank").path)
        args.ctx, args.stride, args.epochs, args.max_train_pairs, args.min_ctx = 8, 4, 3, 600, 4
        args.val_queries, args.test_queries, args.hidden, args.batch_size = 100, 150, 16, 32
        args.memory, args.n_boot, args.warmup = 256, 200, 5
        out = work / "twotower.json"
    else:
        out = Path(args.out)
        work = ROOT / "benchmarks/work" / out.stem  # one work directory per results file
    # with in-article negatives: other run names and result files (never reuse or overwrite those without)
    suffix = "_inarticle" if args.inarticle_offsets else ""
    if args.fresh:
        for name in (f"twotower_plain{suffix}", f"twotower_curriculum{suffix}"):
            shutil.rmtree(work / name, ignore_errors=True)
    return work, out.with_name(f"{out.stem}{suffix}.json"), suffix


def train_towers(args, work: Path, names: dict[str, str], schedule: str, anchor_sets: list[str]) -> dict:
    """Train (or reuse) the wanted towers; a tower not started yet gets its anchor at the tuned blend."""
    runs = {}
    for kind, config, extra in (
        ("plain", "twotower_plain.yaml", []),
        ("curriculum", "twotower_curriculum.yaml", [f"twotower.schedule={schedule}"]),
    ):
        name = names[kind]
        if kind in args.wanted:
            fresh = [] if (work / name / "config.yaml").exists() else anchor_sets
            runs[name] = train_run(name, config, args, work, [*extra, *fresh])
    return runs


def held_out_pairs(args, bank: VectorBank):
    """The test pairs: held-out articles, the same queries for every system (a seeded sample)."""
    split = make_split(bank, ratios=(0.8, 0.1, 0.1), seed=0)
    test = make_pairs(
        bank, split, ctx=args.ctx, stride=args.stride, split_name="test", min_ctx=args.min_ctx or None
    ).windows()
    if len(test) > args.test_queries:
        test = test.subset(
            np.sort(np.random.default_rng(2).choice(len(test), args.test_queries, replace=False))
        )
    return test


def evaluate_all(args, bank: VectorBank, test, blend, runs: dict, device) -> tuple[dict, dict, dict]:
    """Every heuristic and every tower on the test pairs; (results, comparisons per Recall@k, best epochs)."""
    print(f"evaluating {len(test):,} test pairs against all {len(bank):,} chunks ...", flush=True)
    raw = raw_doc_bank(bank)
    kw = {"ks": KS, "n_boot": args.n_boot, "seed": 0}
    heuristics = {
        "copy_last": build_model("copy_last", bank.dim),
        "exp_weighted": build_model("exp_weighted", bank.dim, alpha=0.1),
        "blend": blend,
    }
    results = {n: evaluate_retrieval(m, test, raw, name=n, **kw) for n, m in heuristics.items()}
    best_epochs = {}
    for name, (run_dir, _) in runs.items():
        query, docs, best_epochs[name] = load_tower(run_dir, bank, device)
        results[name] = evaluate_retrieval(query, test, docs, name=name, **kw)
    recalls = [f"recall@{k}" for k in KS]
    comparisons = {
        m: compare_to_best(results, list(runs), list(HEURISTICS), m, n_boot=args.n_boot, tiebreak="mrr@10")
        for m in recalls
    }
    # and every tower against every heuristic at every Recall@k (the bar is exp_weighted)
    comparisons["all"] = compare_all(results, list(runs), list(HEURISTICS), recalls, args.n_boot or 1000, 0)
    return results, comparisons, best_epochs


def markdown(
    args, bank: VectorBank, n_test: int, results, comparisons, best_epochs, schedule, curriculum
) -> str:
    """The table, every tower-vs-heuristic comparison, and the Recall@500 verdicts."""
    columns = (*(f"recall@{k}" for k in KS), "mrr@10", "sep_margin")
    head = (
        f"Two-tower retrieval on bank {bank.manifest.bank_id} ({len(bank):,} chunks, {bank.n_articles:,} "
        f"articles, encoder {bank.encoder.name}); ctx {args.ctx}; {n_test:,} test pairs from held-out "
        f"articles. Towers: bigru_pool hidden {args.hidden}, anchor {args.anchor}, {args.epochs} epochs on at most "
        f"{args.max_train_pairs:,} train pairs (best epoch by val Recall@500: "
        + ", ".join(f"{k} {v}" for k, v in best_epochs.items())
        + (f"); curriculum `{schedule}`" if curriculum in best_epochs else ")")
        + (
            f"; in-article negatives at offsets {args.inarticle_offsets}, weight {args.inarticle_weight:g}"
            if args.inarticle_offsets
            else ""
        )
        + ".\n\n"
    )
    lines = [f"- {c.describe()}" for c in comparisons["recall@500"]]
    lines += [
        f"- {c.model} vs {c.baseline} on {c.metric}: {100 * c.diff:+.2f} points "
        f"(paired 95% CI {100 * c.lo:+.2f} to {100 * c.hi:+.2f}): {c.verdict}"
        for m in ("recall@10", "recall@100")
        for c in comparisons[m]
    ]
    md = head + format_table(results, columns) + "\n" + "\n".join(lines) + "\n\n"
    md += format_comparisons(comparisons["all"]) + "\n"
    for v in comparisons["recall@500"]:
        md += (
            f"\n{v.model} vs the best heuristic on Recall@500: **{v.verdict}** "
            f"({100 * v.diff:+.2f} points, paired 95% CI {100 * v.lo:+.2f} to {100 * v.hi:+.2f}).\n"
        )
    return md


def main() -> None:
    args = parse_args()
    work, out_json, suffix = setup(args)
    names = {"plain": f"twotower_plain{suffix}", "curriculum": f"twotower_curriculum{suffix}"}
    schedule = args.schedule or default_schedule(args.epochs)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    bank = VectorBank.open(args.bank)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    t_start = time.perf_counter()
    print(
        f"bank {bank.path}: {len(bank):,} chunks, {bank.n_articles:,} articles; ctx {args.ctx}; schedule {schedule}"
    )
    blend, blend_info, anchor_sets = heuristic_blend(args, bank, work, tuple(names.values()))
    runs = train_towers(args, work, names, schedule, anchor_sets)
    test = held_out_pairs(args, bank)
    results, comparisons, best_epochs = evaluate_all(args, bank, test, blend, runs, device)
    curriculum = names["curriculum"]
    md = markdown(args, bank, len(test), results, comparisons, best_epochs, schedule, curriculum)
    payload = {
        "bank": str(bank.path),
        "bank_id": bank.manifest.bank_id,
        "chunks": len(bank),
        "articles": bank.n_articles,
        "encoder": bank.encoder.name,
        "settings": {k: v for k, v in vars(args).items() if k not in ("fresh", "wanted")}
        | {"schedule": schedule},
        "test_pairs": len(test),
        "results": {k: r.to_dict() for k, r in results.items()},
        "comparisons": {m: [c.to_dict() for c in cs] for m, cs in comparisons.items()},
        "blend": blend_info,
        "best_epochs": best_epochs,
        "train_seconds": {k: round(v[1], 1) for k, v in runs.items()},
        "mining": read_jsonl(runs[curriculum][0] / "mining.jsonl") if curriculum in runs else [],
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": str(device)},
    }
    write_json(out_json, payload)
    write_text(out_json.with_suffix(".md"), md)
    print(md)
    print(f"wrote {out_json} and {out_json.with_suffix('.md')} ({payload['total_seconds']:.0f} s)")
    if not all(math.isfinite(results[n].metrics["recall@500"]) for n in results):
        raise SystemExit("a system has no Recall@500: see the table")


if __name__ == "__main__":
    main()
