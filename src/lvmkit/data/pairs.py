"""Two-tower training pairs: (context window, next chunk), by reference into the bank.

``make_pairs`` turns the articles of one split (train by default) into query/target pairs:

1. candidates: windows with ``ctx`` context chunks (at least ``min_ctx`` when given) every ``stride``
   chunks of each article, as in ``make_windows``;
2. per-article cap: an article with more than ``max_per_article`` candidates keeps a seeded random subset,
   so a few long articles do not dominate the pair set;
3. rolling dedup: walking the pairs in bank order, a pair is dropped when its target vector has cosine
   > ``dedup_cos`` with any of the last ``dedup_window`` kept targets (repeated boilerplate sentences);
4. with ``target_pairs``: stride and cap are chosen up front (the largest stride, then the smallest cap,
   that give at least ``target_pairs`` candidates) and a surplus after dedup is thinned at random to the
   target. The manifest reports the target beside what was actually kept.

A ``PairSet`` stores chunk ids only (pair_id, article code, article_id, target row, context start row, ctx)
in ``pairs.parquet``, with ``manifest.json`` naming the bank and split it was made from. ``windows()`` views
the pairs as a ``WindowSet``, so trainers and evaluators treat pairs and windows alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lvmkit.artifacts import atomic_path, read_json, write_json
from lvmkit.bank.bank import VectorBank
from lvmkit.data.splits import Split, check_split_name
from lvmkit.data.windows import WindowSet, _check_ctx, window_targets
from lvmkit.errors import ArtifactError, ConfigError, ProvenanceError

PAIRS_FORMAT_VERSION = 1
PAIRS_FILE = "pairs.parquet"
MANIFEST_FILE = "manifest.json"


@dataclass
class PairSet:
    """Pairs over ``bank``: a pyarrow table of chunk ids plus the manifest that says how they were made.

    Columns: ``pair_id`` (0..P-1), ``article`` (article code), ``article_id``, ``target`` (row of the next
    chunk), ``context_start`` (first real context row), ``ctx`` (real context chunks: target - context_start).
    """

    bank: VectorBank
    table: pa.Table
    manifest: dict

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def targets(self) -> np.ndarray:
        return self.table.column("target").to_numpy()

    @property
    def counts(self) -> dict:
        return dict(self.manifest["counts"])

    def windows(self) -> WindowSet:
        """The pairs as windows (same ctx / min_ctx / padding as when they were made)."""
        a = self.manifest["arguments"]
        return WindowSet(
            self.bank,
            self.targets,
            a["ctx"],
            a["min_ctx"],
            pad=a["min_ctx"] < a["ctx"],
            name=f"pairs:{a['split_name']}",
        )

    def save(self, path: str | Path) -> Path:
        """Write ``pairs.parquet`` then ``manifest.json`` into directory ``path`` (each atomically)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / MANIFEST_FILE).unlink(missing_ok=True)  # no manifest = incomplete pair set
        with atomic_path(path / PAIRS_FILE, suffix=".parquet") as tmp:
            pq.write_table(self.table, tmp)
        write_json(path / MANIFEST_FILE, self.manifest)
        return path

    @classmethod
    def load(cls, path: str | Path, bank: VectorBank, split: Split | None = None) -> PairSet:
        """Read a pair set and check it belongs to ``bank`` (and to ``split``, when given)."""
        path = Path(path)
        manifest = read_pairs_manifest(path)
        if manifest.get("bank_id") != bank.manifest.bank_id:
            raise ProvenanceError(
                f"pairs {path} were made from bank {manifest.get('bank_id')} (at {manifest.get('bank_path')}) "
                f"but are being used with bank {bank.manifest.bank_id} at {bank.path}; rebuild them with make_pairs"
            )
        if split is not None and manifest["split"]["sha256"] != split.hash:
            raise ProvenanceError(
                f"pairs {path} were made with split {manifest['split']['sha256'][:12]}, not the given split "
                f"{split.hash[:12]}; rebuild the pairs from this split"
            )
        try:
            table = pq.read_table(path / PAIRS_FILE)
        except (pa.ArrowException, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ArtifactError(f"{path / PAIRS_FILE} cannot be read ({first}); {REBUILD}") from None
        if table.num_rows != manifest["counts"]["kept"]:
            raise ArtifactError(
                f"{path / PAIRS_FILE} has {table.num_rows} pairs, the manifest says {manifest['counts']['kept']}"
            )
        targets = table.column("target").to_numpy()
        if len(targets) and (targets.min() < 0 or targets.max() >= len(bank)):
            raise ArtifactError(f"{path / PAIRS_FILE}: target rows outside the bank (0..{len(bank) - 1})")
        if not np.array_equal(table.column("article").to_numpy(), bank.article_codes[targets]):
            raise ArtifactError(f"{path / PAIRS_FILE}: article codes do not match the bank's rows")
        return cls(bank, table, manifest)


REBUILD = "the pair set is damaged: re-run the `lvmkit pairs BANK --out DIR ...` command that made it"


def read_pairs_manifest(path: Path) -> dict:
    """A pair set's manifest.json; missing or damaged -> ArtifactError naming the file and the fix."""
    mpath = Path(path) / MANIFEST_FILE
    if not mpath.exists():
        raise ArtifactError(
            f"{path} has no {MANIFEST_FILE}: not a pair set, or an interrupted save; {REBUILD}"
        )
    try:
        manifest = read_json(mpath)
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{mpath} is not valid JSON ({e}); {REBUILD}") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{mpath} is not a pair set manifest; {REBUILD}")
    return manifest


def rolling_dedup(
    vectors: np.ndarray, threshold: float, window: int, rows: np.ndarray | None = None, block: int = 512
) -> np.ndarray:
    """bool keep-mask over ``vectors[rows]`` (all rows when None), in order: an item is dropped when its
    cosine with any of the last ``window`` kept items exceeds ``threshold``. Reads ``block`` rows at a time
    (a memmap stays on disk); per block one matmul against the kept buffer and one within the block, then a
    cheap sequential pass."""
    rows = np.arange(len(vectors)) if rows is None else np.asarray(rows, dtype=np.int64)
    n = len(rows)
    keep = np.zeros(n, dtype=bool)
    buf = np.zeros((0, vectors.shape[1]), dtype=np.float32)  # last `window` kept unit vectors, oldest first
    for s in range(0, n, block):
        x = _unit(vectors[rows[s : s + block]])
        sim_in = x @ x.T
        # suf[i, p] = max(sim(x_i, buf[p:])): the best match among the newest len(buf) - p buffered rows
        suf = np.maximum.accumulate((x @ buf.T)[:, ::-1], axis=1)[:, ::-1] if len(buf) else None
        kept: list[int] = []
        for i in range(len(x)):
            visible = min(len(buf), window - len(kept))  # buffered rows still inside the window
            if visible > 0 and suf[i, len(buf) - visible] > threshold:
                continue
            if kept and sim_in[i, kept[-window:]].max() > threshold:
                continue
            kept.append(i)
        keep[s + np.asarray(kept, dtype=np.int64)] = True
        buf = np.concatenate([buf, x[kept]])[-window:]
    return keep


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _candidate_counts(lengths: np.ndarray, first: int, stride: int, cap: int | None) -> int:
    c = np.maximum(0, -(-(lengths - first) // stride))
    return int((c if cap is None else np.minimum(c, cap)).sum())


def choose_stride_and_cap(
    lengths: np.ndarray, first: int, cap: int | None, target: int
) -> tuple[int, int | None]:
    """The largest stride giving >= ``target`` candidates under ``cap``; if stride 1 is not enough, the
    smallest larger cap that is (None = no cap when even that falls short)."""
    hi = int(max(1, lengths.max(initial=1)))
    if _candidate_counts(lengths, first, 1, cap) >= target:
        lo = 1  # invariant: count(lo) >= target; counts never grow with the stride
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if _candidate_counts(lengths, first, mid, cap) >= target else (lo, mid - 1)
        return lo, cap
    per_article_max = int(max(0, (lengths - first).max(initial=0)))
    if cap is None or _candidate_counts(lengths, first, 1, None) < target:
        return 1, None
    lo, hi = cap, per_article_max  # count(1, hi) == count(1, None) >= target
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _candidate_counts(lengths, first, 1, mid) >= target else (mid + 1, hi)
    return 1, lo


def make_pairs(
    bank: VectorBank,
    split: Split,
    ctx: int = 100,
    stride: int = 32,
    max_per_article: int | None = 30,
    target_pairs: int | None = None,
    dedup_cos: float | None = 0.999,
    dedup_window: int = 1000,
    min_ctx: int | None = None,
    seed: int = 0,
    split_name: str = "train",
) -> PairSet:
    """Build (context window, next chunk) pairs from the articles of ``split_name`` (see the module doc).

    ``max_per_article=None`` means no cap; ``dedup_cos=None`` turns dedup off.
    """
    ctx, min_ctx = _check_pair_arguments(
        bank, split, ctx, min_ctx, split_name, stride, max_per_article, dedup_cos, dedup_window, target_pairs
    )
    rng = np.random.default_rng(seed)
    articles = split.articles(split_name)
    stride_used, cap_used = int(stride), max_per_article
    if target_pairs is not None and len(articles):
        lengths = bank.article_starts[articles + 1] - bank.article_starts[articles]
        stride_used, cap_used = choose_stride_and_cap(lengths, min_ctx, max_per_article, int(target_pairs))
    cand = window_targets(bank, articles, min_ctx, stride_used)  # 1. candidates
    capped, capped_articles = cap_per_article(cand, bank.article_codes[cand].astype(np.int64), cap_used, rng)
    keep = _dedup_targets(bank, capped, dedup_cos, int(dedup_window))  # 3. rolling dedup
    kept = capped[keep]
    if target_pairs is not None and len(kept) > int(target_pairs):  # 4. thin a surplus to the target
        kept = np.sort(rng.choice(kept, size=int(target_pairs), replace=False))
    manifest = {
        "format_version": PAIRS_FORMAT_VERSION,
        "bank_id": bank.manifest.bank_id,
        "bank_path": str(bank.path),
        "encoder": bank.encoder.model_dump(mode="json"),
        "split": {"sha256": split.hash, "seed": split.seed, "ratios": list(split.ratios)},
        "arguments": {
            "split_name": split_name,
            "ctx": ctx,
            "min_ctx": min_ctx,
            "stride": int(stride),
            "max_per_article": max_per_article,
            "target_pairs": target_pairs,
            "dedup_cos": dedup_cos,
            "dedup_window": int(dedup_window),
            "seed": int(seed),
        },
        "chosen": {"stride": stride_used, "max_per_article": cap_used},
        "counts": {
            "articles": len(articles),
            "candidates": len(cand),
            "capped_articles": capped_articles,
            "dropped_by_cap": len(cand) - len(capped),
            "dropped_dup": int((~keep).sum()),
            "dropped_by_target": int(keep.sum()) - len(kept),
            "kept": len(kept),
            "target_pairs": target_pairs,
        },
    }
    return PairSet(bank, pair_table(bank, kept, ctx), manifest)


def _check_pair_arguments(
    bank, split, ctx, min_ctx, split_name, stride, max_per_article, dedup_cos, dedup_window, target_pairs
) -> tuple[int, int]:
    """ConfigError / ProvenanceError for a bad ``make_pairs`` argument; returns the checked (ctx, min_ctx)."""
    check_split_name(split_name)
    if split.bank.manifest.bank_id != bank.manifest.bank_id:
        raise ProvenanceError(
            f"the split was made for bank {split.bank.manifest.bank_id}, not {bank.manifest.bank_id}"
        )
    ctx, min_ctx = _check_ctx(ctx, min_ctx, pad=True)
    if int(stride) < 1:
        raise ConfigError(f"stride must be >= 1, got {stride}")
    if max_per_article is not None and int(max_per_article) < 1:
        raise ConfigError(f"max_per_article must be >= 1 or None (no cap), got {max_per_article}")
    if dedup_cos is not None and not 0 < float(dedup_cos) <= 1:
        raise ConfigError(f"dedup_cos must be in (0, 1] or None (no dedup), got {dedup_cos}")
    if int(dedup_window) < 1:
        raise ConfigError(f"dedup_window must be >= 1, got {dedup_window}")
    if target_pairs is not None and int(target_pairs) < 1:
        raise ConfigError(f"target_pairs must be >= 1 or None, got {target_pairs}")
    return ctx, min_ctx


def cap_per_article(
    cand: np.ndarray, art: np.ndarray, cap: int | None, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """Step 2: at most ``cap`` of the candidate targets ``cand`` (article codes ``art``, bank order) per
    article, a seeded random subset of each over-full one (order kept). Returns (capped, articles capped)."""
    if cap is None or not len(cand):
        return cand, 0
    order = np.lexsort((rng.random(len(cand)), art))  # random order within each article
    a_sorted = art[order]
    first = np.searchsorted(a_sorted, a_sorted, "left")
    rank = np.empty(len(cand), dtype=np.int64)
    rank[order] = np.arange(len(cand)) - first
    per_article = np.bincount(a_sorted - a_sorted.min())
    return cand[rank < cap], int((per_article > cap).sum())


def _dedup_targets(bank: VectorBank, rows: np.ndarray, dedup_cos: float | None, window: int) -> np.ndarray:
    """Step 3: keep-mask over ``rows`` by ``rolling_dedup`` of their vectors (all True when off or empty)."""
    if dedup_cos is None or not len(rows):
        return np.ones(len(rows), dtype=bool)
    return rolling_dedup(bank.vectors, float(dedup_cos), window, rows=rows)


def pair_table(bank: VectorBank, targets: np.ndarray, ctx: int) -> pa.Table:
    """The pairs of target rows ``targets`` as a table (see ``PairSet``): the context starts ``ctx`` rows
    before the target, or at the article's first row."""
    art = bank.article_codes[targets].astype(np.int32)
    start = np.maximum(targets - ctx, bank.article_starts[art])
    return pa.table(
        {
            "pair_id": pa.array(np.arange(len(targets), dtype=np.int64)),
            "article": pa.array(art),
            "article_id": pa.array(bank.article_ids[targets].tolist(), type=pa.string()),
            "target": pa.array(targets.astype(np.int64)),
            "context_start": pa.array(start.astype(np.int64)),
            "ctx": pa.array((targets - start).astype(np.int32)),
        }
    )
