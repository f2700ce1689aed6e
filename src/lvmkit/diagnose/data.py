"""``lvmkit diagnose data``: preflight of what a run will read, before it spends hours training.

Give it a run config (YAML, as for ``lvmkit train``) or a pairs directory (``PairSet.save``). It rebuilds the
data exactly as the run would and checks:

    shapes and counts   articles / rows / windows per split (after the config's caps), the batch shape, the
                        batches per epoch and the tail the article-capped sampler leaves
    disjointness        no article in two splits; for pairs, every pair's article in the pairs' own split and
                        the split reproducible from its (ratios, seed)
    leakage             ``check_leakage``: held-out (val / test) rows whose vector is an exact or near duplicate
                        (cos > 0.98) of a train row: article-disjoint splits cannot rule those out
    batches             share of same-article negatives in the training batches the sampler forms
                        (``same_article_share``); with the default cap of 2 it is at most 1 / (B - 1)
    curriculum          when the config has one (two-tower hard-negative curriculum), the schedule epoch by
                        epoch, parsed by the two-tower trainer's own parser
    manifest            sha256 of every file the run will read (config, bank files, split, pairs), so a later
                        run can prove it read the same bytes

``preflight`` returns the ``Diagnosis`` and the manifest; the CLI writes ``diagnosis.json`` and
``manifest.json``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lvmkit.artifacts import sha256_file, write_json
from lvmkit.bank.bank import VectorBank
from lvmkit.bank.index import INDEX_FILE
from lvmkit.data.pairs import MANIFEST_FILE as PAIRS_MANIFEST
from lvmkit.data.pairs import PAIRS_FILE, PairSet, read_pairs_manifest
from lvmkit.data.samplers import ArticleCappedBatchSampler
from lvmkit.data.splits import SPLIT_NAMES, Split, check_leakage, make_split
from lvmkit.diagnose.findings import Diagnosis, Finding, info, judge
from lvmkit.errors import ArtifactError, ConfigError
from lvmkit.tasks import get_task
from lvmkit.tasks.base import config_cap

MIN_TEST_WINDOWS = 500  # fewer held-out queries make every bootstrap interval several points wide
SAME_ARTICLE_WARN = 0.05
SAME_ARTICLE_FAIL = 0.25


@dataclass
class Preflight:
    """What ``preflight`` found: the findings, and the content hashes of the inputs."""

    diagnosis: Diagnosis
    manifest: dict[str, Any]

    def save(self, out: str | Path) -> tuple[Path, Path]:
        """Write ``diagnosis.json`` and ``manifest.json`` into directory ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "manifest.json", self.manifest)
        return self.diagnosis.save(out / "diagnosis.json"), out / "manifest.json"


# ---------------------------------------------------------------------------------------- building blocks
def same_article_share(
    batches: list[list[int]] | list[np.ndarray], article_of: np.ndarray
) -> dict[str, float]:
    """Share of in-batch negatives that come from the anchor's own article.

    For a batch with c_a windows of article a (size B), each window has B - 1 in-batch negatives, of which
    c_a - 1 share its article: share = sum_batches sum_a c_a (c_a - 1) / sum_batches B (B - 1).
    Returns the share, the worst single batch's share, and the number of batches looked at.
    """
    same = total = 0
    worst = 0.0
    for b in batches:
        arts = np.asarray(article_of)[np.asarray(b, dtype=np.int64)]
        size = len(arts)
        if size < 2:
            continue
        c = np.unique(arts, return_counts=True)[1]
        s, t = int((c * (c - 1)).sum()), size * (size - 1)
        same, total = same + s, total + t
        worst = max(worst, s / t)
    return {"share": same / total if total else float("nan"), "worst_batch": worst, "batches": len(batches)}


def batch_share_finding(share: dict[str, float], batch_size: int, max_per_article: int) -> Finding:
    """Judge the same-article negative share of a sampler's batches."""
    return judge(
        "same_article_negatives",
        share["share"],
        warn_above=SAME_ARTICLE_WARN,
        fail_above=SAME_ARTICLE_FAIL,
        ok=f"{100 * share['share']:.2f}% of in-batch negatives share the anchor's article (batch {batch_size}, "
        f"at most {max_per_article} per article; worst batch {100 * share['worst_batch']:.1f}%)",
        warn=f"{100 * share['share']:.1f}% of in-batch negatives come from the anchor's own article: near-"
        "paraphrases are pushed apart as if unrelated. Lower data.max_per_article or raise the batch size",
        details=share,
    )


def leakage_findings(bank: VectorBank, split: Split, sample: int | None, seed: int) -> list[Finding]:
    """Findings from ``check_leakage``: shared articles (fail), exact duplicates of train rows in val / test
    (fail above the allowed fraction) and near duplicates (warn above it)."""
    rep = check_leakage(bank, split, sample=sample, seed=seed)
    out = [
        judge(
            "shared_articles",
            rep.shared_articles,
            fail_above=0,
            ok="splits are article-disjoint",
            fail=f"{rep.shared_articles} article(s) are in more than one split: windows of one article are "
            "trained on and tested on; rebuild the split with make_split",
        )
    ]
    for name in rep.exact_dups:
        n = max(1, rep.checked_rows[name])
        checked = f"{rep.checked_rows[name]} {name} rows checked" + (
            f" (a sample of {rep.total_rows[name]})" if rep.checked_rows[name] < rep.total_rows[name] else ""
        )
        examples = [
            {
                **e,
                "text": bank.texts([e["row"]])[0][:120],
                "train_text": bank.texts([e["train_row"]])[0][:120],
            }
            for e in rep.examples
            if e["split"] == name
        ]
        exact = [e for e in examples if e["kind"] == "exact"]
        near = [e for e in examples if e["kind"] == "near"]
        out.append(
            judge(
                f"leak_exact_{name}",
                rep.exact_dups[name] / n,
                fail_above=rep.max_dup_frac,
                ok=f"{rep.exact_dups[name]} exact duplicates of train rows; {checked}",
                fail=f"{rep.exact_dups[name]} {name} rows are byte-identical to train rows ({checked}){_eg(exact)}: "
                "the model has seen these targets; deduplicate the bank or drop them from the held-out split",
                details={"count": rep.exact_dups[name], "examples": exact},
            )
        )
        out.append(
            judge(
                f"leak_near_{name}",
                rep.near_dups[name] / n,
                warn_above=rep.max_dup_frac,
                ok=f"{rep.near_dups[name]} near duplicates (cos > {rep.near_dup:g}) of train rows; {checked}",
                warn=f"{rep.near_dups[name]} {name} rows have a train row at cos > {rep.near_dup:g} ({checked})"
                f"{_eg(near)}: boilerplate or mirrored text; held-out numbers are partly memorisation",
                details={"count": rep.near_dups[name], "examples": near},
            )
        )
    return out


def _eg(examples: list[dict[str, Any]]) -> str:
    """', e.g. row 4726 "</dl>" = train row 1689 "</dl>"' for a finding's message (the texts say why)."""
    if not examples:
        return ""
    e = examples[0]
    return f', e.g. row {e["row"]} "{e["text"][:60]}" ~ train row {e["train_row"]} "{e["train_text"][:60]}"'


def file_hashes(paths: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """``{role: {"path", "bytes", "sha256"}}`` for every existing file (missing ones are skipped)."""
    out = {}
    for role, p in paths.items():
        p = Path(p)
        if p.is_file():
            out[role] = {"path": str(p), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
    return out


def bank_files(bank: VectorBank) -> dict[str, Path]:
    files = {
        "bank/manifest.json": bank.path / bank.MANIFEST,
        "bank/chunks.parquet": bank.path / bank.CHUNKS,
        "bank/vectors.npy": bank.path / bank.VECTORS,
    }
    if bank.manifest.index:
        files["bank/" + INDEX_FILE] = bank.path / INDEX_FILE
    return files


def curriculum_findings(cfg) -> tuple[list[dict[str, Any]] | None, list[Finding]]:
    """The two-tower hard-negative curriculum (``twotower.schedule``), epoch by epoch, parsed by the trainer's
    own parser (``lvmkit.train.mining``) so the preflight shows exactly what training will do.

    Returns (one row per epoch, or None without a curriculum; findings). A schedule that does not parse, or
    does not cover the run's epochs, is a failed finding that quotes the parser's message.
    """
    tt = getattr(cfg, "twotower", None)
    text = tt.schedule if tt is not None else None
    if text is None or not str(text).strip() or str(text).strip().lower() == "none":
        return None, []
    try:
        mining = importlib.import_module("lvmkit.train.mining")
    except ImportError:
        return None, [
            judge(
                "curriculum",
                float("nan"),
                fail_below=1,
                fail="this lvmkit has no two-tower trainer to run it",
            )
        ]
    epochs = cfg.optim.epochs
    try:
        schedule = mining.parse_schedule(text)
        schedule.check_epochs(epochs)
    except ConfigError as e:
        return None, [judge("curriculum", 0, fail_below=1, fail=str(e))]
    rows = []
    for e in range(1, epochs + 1):
        st = schedule.at(e)
        rows.append(
            {
                "epoch": e,
                "negatives": st.count,
                "cos_lo": st.lo if st.mines and not st.pct else None,
                "cos_hi": st.hi if st.mines and not st.pct else None,
                # a percentile window (8@p90-p99) is resolved to cosines only when mining, on the tower's queries
                "percentiles": [st.lo, st.hi] if st.mines and st.pct else None,
            }
        )
    mined = sum(1 for r in rows if r["negatives"])
    return rows, [
        info(
            "curriculum",
            mined,
            f"{schedule}: mined negatives in {mined} of {epochs} epochs",
            details={"plan": schedule.describe(epochs)},
        )
    ]


# -------------------------------------------------------------------------------------------- preflight
def preflight(
    target: str | Path,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    bank: str | Path | None = None,
    leak_sample: int | None = 5000,
    hash_files: bool = True,
    seed: int = 0,
) -> Preflight:
    """Check a run config (YAML file, or a run directory's config.yaml and split.json) or a pairs directory
    before training; see the module docstring.

    overrides    ``--set key=value`` overrides for a config (as for ``lvmkit train``)
    bank         open this bank instead of the one the config / pairs manifest names
    leak_sample  held-out rows checked for duplicates per split (None: all of them)
    hash_files   sha256 every input (reads the whole vectors.npy once)
    """
    target = Path(target)
    if target.is_dir() and (target / "config.yaml").is_file() and not (target / PAIRS_FILE).exists():
        target = target / "config.yaml"  # a run directory: its config, and its split.json beside it
    if target.is_dir() and (target / PAIRS_MANIFEST).is_file() and (target / PAIRS_FILE).exists():
        d, files, extra = _pairs(target, bank, leak_sample, seed)
    elif target.is_file():
        d, files, extra = _config(target, overrides, bank, leak_sample, seed)
    else:
        raise ArtifactError(
            f"{target} is neither a run config (a YAML file) nor a pairs directory (with {PAIRS_FILE} and "
            f"{PAIRS_MANIFEST})"
        )
    manifest = {"target": str(target), **extra, "files": file_hashes(files) if hash_files else {}}
    if not hash_files:
        manifest["files_not_hashed"] = {k: str(v) for k, v in files.items()}
    return Preflight(d, manifest)


def _config(path: Path, overrides, bank_path, leak_sample, seed):
    from lvmkit.train.config import load_config

    cfg = load_config(path, list(overrides))
    bank = VectorBank.open(bank_path or cfg.bank)
    d = Diagnosis("data", str(path))
    d.stats.update(
        task=cfg.task, bank=str(bank.path), bank_id=bank.manifest.bank_id, encoder=bank.encoder.describe()
    )
    files: dict[str, Path] = {"config": path, **bank_files(bank)}
    tt = getattr(cfg, "twotower", None)
    pairs_dir = tt.pairs if tt is not None else None  # a two-tower run reading pairs made by `lvmkit pairs`
    if pairs_dir:
        files.update({f"pairs/{f}": Path(pairs_dir) / f for f in (PAIRS_FILE, PAIRS_MANIFEST)})
    split_file = path.parent / "split.json"
    if split_file.is_file():  # a run directory's config: the run's own split
        split = Split.load(split_file, bank)
        files["split.json"] = split_file
        d.add(info("split", None, f"the run's split {split_file} (sha256 {split.hash[:12]})"))
    else:
        split = make_split(bank, ratios=cfg.split.ratios, seed=cfg.split.seed)
        d.add(info("split", None, f"made from split.ratios={list(cfg.split.ratios)}, seed={cfg.split.seed}"))
    dc = cfg.data
    counts = split.counts()
    spec = get_task(cfg.task)
    sets = spec.query_sets(cfg, bank, split)  # the windows / pairs the trainer will use
    for name in SPLIT_NAMES:
        d.add(_split_finding(sets, name, counts[name], spec.unit, cfg))
    d.stats["splits"] = counts
    d.stats["batch_shape"] = {"ctx": [dc.batch_size, dc.ctx, bank.dim], "mask": [dc.batch_size, dc.ctx]}
    if counts["train"]["windows_used"]:
        train = sets.train  # the trainer's deterministic sample
        sampler = ArticleCappedBatchSampler(
            train.article_of_all(), dc.batch_size, dc.max_per_article, seed=cfg.seed, drop_last=False
        )
        sampler.set_epoch(1)
        d.stats["sampler"] = sampler.stats
        share = same_article_share(list(sampler), train.article_of_all())
        d.add(batch_share_finding(share, dc.batch_size, dc.max_per_article))
        d.add(
            info(
                "batches_per_epoch",
                len(sampler),
                f"{sampler.stats['full_batches']} full batches of {dc.batch_size}; tail of "
                f"{sampler.stats['tail_windows']} windows in smaller capped batches",
            )
        )
    for f in leakage_findings(bank, split, leak_sample, seed):
        d.add(f)
    schedule, findings = curriculum_findings(cfg)
    for f in findings:
        d.add(f)
    if schedule is not None:
        d.stats["curriculum"] = schedule
    extra = {
        "kind": "config",
        "config": cfg.model_dump(mode="json"),
        "bank_id": bank.manifest.bank_id,
        "split_sha256": split.hash,
    }
    return d, files, extra


def _split_finding(sets, name: str, counts: dict[str, Any], unit: str, cfg) -> Finding:
    """How many windows (pairs) split ``name`` has and how many the run uses; records both in ``counts``."""
    dc = cfg.data
    try:
        total, used = len(sets.full(name)), len(sets.get(name))
    except ConfigError:  # the task found none
        total = used = 0
    counts.update(windows=total, windows_used=used)
    cap = config_cap(cfg, name)
    return judge(
        f"{name}_windows",
        used,
        fail_below=1,
        warn_below=MIN_TEST_WINDOWS if name == "test" else None,
        ok=f"{counts['articles']} articles, {counts['rows']} chunks, {total} {unit}"
        + (f", {used} used (cap {cap})" if used < total else ""),
        warn=f"only {used} test {unit}: bootstrap intervals will be several points wide",
        fail=f"no {name} {unit} with ctx={dc.ctx} (min_ctx={dc.min_ctx}, pad={dc.pad}): lower data.ctx, "
        "set data.min_ctx or change split.ratios",
    )


def _pairs(path: Path, bank_path, leak_sample, seed):
    pm = read_pairs_manifest(path)
    bank = VectorBank.open(bank_path or pm.get("bank_path", ""))
    pairs = PairSet.load(path, bank)
    a = pm["arguments"]
    d = Diagnosis("data", str(path))
    d.stats.update(task="pairs", bank=str(bank.path), bank_id=bank.manifest.bank_id, counts=pm["counts"])
    files = {"pairs/" + PAIRS_FILE: path / PAIRS_FILE, "pairs/" + PAIRS_MANIFEST: path / PAIRS_MANIFEST}
    files.update(bank_files(bank))

    split = make_split(bank, ratios=pm["split"]["ratios"], seed=pm["split"]["seed"])
    reproduced = split.hash == pm["split"]["sha256"]
    d.add(
        judge(
            "split_reproduced",
            int(reproduced),
            fail_below=1,
            ok=f"the pairs' split (ratios {pm['split']['ratios']}, seed {pm['split']['seed']}) is reproduced on "
            "this bank",
            fail="the split recorded in the pairs manifest cannot be rebuilt from its (ratios, seed) on this bank: "
            "the pairs were made with another split; rebuild them",
        )
    )
    own = split.assignment[pairs.table.column("article").to_numpy()]
    outside = int((own != SPLIT_NAMES.index(a["split_name"])).sum())
    d.add(
        judge(
            "pairs_outside_split",
            outside,
            fail_above=0,
            ok=f"all {len(pairs)} pairs come from {a['split_name']} articles",
            fail=f"{outside} pairs come from articles outside the {a['split_name']} split: held-out text in "
            "training pairs",
        )
    )
    ctx_real = pairs.table.column("ctx").to_numpy()
    d.add(
        judge(
            "pairs",
            len(pairs),
            fail_below=1,
            ok=f"{len(pairs)} pairs from {len(np.unique(pairs.table.column('article').to_numpy()))} articles; "
            f"real context {int(ctx_real.min()) if len(ctx_real) else 0}..{int(ctx_real.max()) if len(ctx_real) else 0} "
            f"chunks (ctx {a['ctx']}); dropped: {pm['counts']['dropped_by_cap']} by the per-article cap, "
            f"{pm['counts']['dropped_dup']} duplicates",
            fail="the pair set is empty",
        )
    )
    d.stats["batch_shape"] = {"ctx": [None, a["ctx"], bank.dim], "target": [None, bank.dim]}
    if reproduced:
        for f in leakage_findings(bank, split, leak_sample, seed):
            d.add(f)
    extra = {
        "kind": "pairs",
        "arguments": a,
        "bank_id": bank.manifest.bank_id,
        "split_sha256": pm["split"]["sha256"],
    }
    return d, files, extra
