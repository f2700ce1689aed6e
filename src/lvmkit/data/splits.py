"""Article-disjoint train / val / test splits, and a leakage check.

Every article goes to exactly one split, decided by a hash of ``(seed, article id)``:

    u = blake2b(f"{seed}:{article_id}") / 2**64          # uniform in [0, 1), same on every machine
    split = train if u < r_train else val if u < r_train + r_val else test

Because the decision is per article, no window or pair can have its context in one split and its article
in another: the splits are disjoint by construction, and adding articles to a corpus never moves the old
ones. ``check_leakage`` then looks for the leaks that survive a clean split: identical or near-identical
vectors (boilerplate sentences, mirrored articles) in a held-out split and in train.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from lvmkit.artifacts import read_json, write_json
from lvmkit.bank.bank import VectorBank
from lvmkit.errors import ArtifactError, ConfigError, ProvenanceError

SPLIT_NAMES = ("train", "val", "test")
SPLIT_FORMAT_VERSION = 1


def check_ratios(ratios) -> tuple[float, float, float]:
    """Validate ``(train, val, test)`` fractions: three finite numbers >= 0 that sum to 1."""
    try:
        r = tuple(float(x) for x in ratios)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"split ratios must be three numbers (train, val, test), got {ratios!r}") from e
    if len(r) != 3:
        raise ConfigError(f"split ratios must be three numbers (train, val, test), got {len(r)}: {ratios!r}")
    if not all(math.isfinite(x) and x >= 0 for x in r):
        raise ConfigError(f"split ratios must be finite and >= 0, got {ratios!r}")
    if abs(sum(r) - 1.0) > 1e-6:
        raise ConfigError(f"split ratios must sum to 1, got {ratios!r} (sum {sum(r):.6g})")
    return r  # type: ignore[return-value]


def check_split_name(name: str) -> int:
    if name not in SPLIT_NAMES:
        raise ConfigError(f"unknown split {name!r}; allowed: {', '.join(SPLIT_NAMES)}")
    return SPLIT_NAMES.index(name)


def hash_unit(seed: int, article_id: str) -> float:
    """A number in [0, 1) determined by (seed, article id) alone (blake2b, not Python's salted hash)."""
    digest = hashlib.blake2b(f"{int(seed)}:{article_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def article_id_list(bank: VectorBank) -> np.ndarray:
    """The id string of each article, indexed by article code (object array [A])."""
    return bank.article_ids[bank.article_starts[:-1]]


@dataclass
class Split:
    """Which split each article of ``bank`` belongs to.

    ``assignment[a]`` is 0 (train), 1 (val) or 2 (test) for article code ``a``. Make one with
    ``make_split`` or ``Split.load``; it keeps a reference to its bank to turn articles into rows.
    """

    bank: VectorBank
    assignment: np.ndarray  # int8 [A]
    ratios: tuple[float, float, float]
    seed: int

    # ------------------------------------------------------------------------------------- queries
    def articles(self, name: str) -> np.ndarray:
        """Article codes (int64, ascending) in split ``name``."""
        return np.flatnonzero(self.assignment == check_split_name(name)).astype(np.int64)

    def article_ids(self, name: str) -> list[str]:
        """Article id strings in split ``name``, sorted."""
        return sorted(article_id_list(self.bank)[self.articles(name)].tolist())

    def row_mask(self, name: str) -> np.ndarray:
        """bool [N]: True for the bank rows whose article is in split ``name``."""
        return self.assignment[self.bank.article_codes] == check_split_name(name)

    def rows(self, name: str) -> np.ndarray:
        """Bank rows (= chunk ids, int64, ascending) of the articles in split ``name``."""
        return np.flatnonzero(self.row_mask(name)).astype(np.int64)

    def counts(self) -> dict[str, dict[str, int]]:
        """``{split: {"articles": n, "rows": m}}``."""
        rows = np.bincount(self.assignment[self.bank.article_codes], minlength=3)
        arts = np.bincount(self.assignment, minlength=3)
        return {n: {"articles": int(arts[i]), "rows": int(rows[i])} for i, n in enumerate(SPLIT_NAMES)}

    @property
    def hash(self) -> str:
        """sha256 over the sorted article id lists of the three splits (what ``split.json`` records)."""
        return _lists_hash({n: self.article_ids(n) for n in SPLIT_NAMES})

    # ------------------------------------------------------------------------------------- storage
    def save(self, path: str | Path) -> Path:
        """Write ``split.json`` (or ``path`` itself when it ends in .json), atomically. Returns the file."""
        path = Path(path)
        if path.suffix != ".json":
            path = path / "split.json"
        lists = {n: self.article_ids(n) for n in SPLIT_NAMES}
        write_json(
            path,
            {
                "format_version": SPLIT_FORMAT_VERSION,
                "bank_id": self.bank.manifest.bank_id,
                "bank_path": str(self.bank.path),
                "ratios": list(self.ratios),
                "seed": self.seed,
                "counts": self.counts(),
                "sha256": _lists_hash(lists),
                "articles": lists,
            },
        )
        return path

    @classmethod
    def load(cls, path: str | Path, bank: VectorBank) -> Split:
        """Read a ``split.json`` and bind it to ``bank``; refuse one made for a different bank."""
        path = Path(path)
        if path.is_dir():
            path = path / "split.json"
        if not path.exists():
            raise ArtifactError(f"no split file at {path}: make one with make_split(...).save(...)")
        try:
            data = read_json(path)
            lists = {n: list(data["articles"][n]) for n in SPLIT_NAMES}
            ratios, seed, bank_id, digest = data["ratios"], int(data["seed"]), data["bank_id"], data["sha256"]
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{path} is not a valid split file (missing or bad field: {e})") from e
        if bank_id != bank.manifest.bank_id:
            raise ProvenanceError(
                f"split {path} was made for bank {bank_id} (at {data.get('bank_path')}) but is being used with "
                f"bank {bank.manifest.bank_id} at {bank.path}; make a new split for this bank"
            )
        if _lists_hash(lists) != digest:
            raise ArtifactError(
                f"{path}: the article lists do not match their recorded sha256 (edited by hand?)"
            )
        code_of: dict[str, list[int]] = {}  # an id can own several article codes if the bank repeats it
        for a, aid in enumerate(article_id_list(bank).tolist()):
            code_of.setdefault(aid, []).append(a)
        assignment = np.full(bank.n_articles, -1, dtype=np.int8)
        for i, name in enumerate(SPLIT_NAMES):
            missing = [aid for aid in lists[name] if aid not in code_of]
            if missing:
                raise ProvenanceError(
                    f"split {path} lists {len(missing)} {name} article(s) that are not in bank {bank.path}, "
                    f"e.g. {missing[:3]}; the split was made for another corpus"
                )
            codes = np.array([a for aid in lists[name] for a in code_of[aid]], dtype=np.int64)
            if (assignment[codes] >= 0).any():
                raise ArtifactError(f"{path}: an article is listed in two splits")
            assignment[codes] = i
        if (assignment < 0).any():
            unlisted = article_id_list(bank)[assignment < 0][:3].tolist()
            raise ArtifactError(
                f"{path}: {int((assignment < 0).sum())} bank article(s) are in no split, e.g. {unlisted}"
            )
        return cls(bank, assignment, check_ratios(ratios), seed)


def _lists_hash(lists: dict[str, list[str]]) -> str:
    return hashlib.sha256(json.dumps(lists, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


def make_split(bank: VectorBank, ratios=(0.8, 0.1, 0.1), seed: int = 0) -> Split:
    """Assign every article of ``bank`` to train / val / test by a hash of (seed, article id)."""
    r = check_ratios(ratios)
    u = np.array([hash_unit(seed, aid) for aid in article_id_list(bank).tolist()], dtype=np.float64)
    # u < r_train -> 0, u < r_train + r_val -> 1, else 2 (a zero ratio gets no articles)
    assignment = (u >= r[0]).astype(np.int8) + (u >= r[0] + r[1]).astype(np.int8)
    return Split(bank, assignment, r, int(seed))


# ------------------------------------------------------------------------------------------ leakage
@dataclass
class LeakageReport:
    """What ``check_leakage`` found. Counts are per held-out split (``val``, ``test``) against ``train``."""

    shared_articles: int
    checked_rows: dict[str, int]  # held-out rows compared with train, per split
    total_rows: dict[str, int]
    exact_dups: dict[str, int]  # held-out rows whose vector has the same bytes as some train row
    near_dups: dict[str, int]  # held-out rows, not exact duplicates, with cos > near_dup to some train row
    near_dup: float
    max_dup_frac: float
    examples: list[dict] = field(default_factory=list)  # {"split", "row", "train_row", "kind", "cos"}

    def dup_frac(self, name: str) -> float:
        return (self.exact_dups[name] + self.near_dups[name]) / max(1, self.checked_rows[name])

    @property
    def ok(self) -> bool:
        """No shared article, and at most ``max_dup_frac`` of each held-out split duplicated in train."""
        return self.shared_articles == 0 and all(
            self.dup_frac(n) <= self.max_dup_frac for n in self.exact_dups
        )

    def summary(self) -> str:
        lines = [
            f"leakage check: {'OK' if self.ok else 'PROBLEM'}",
            f"  shared articles: {self.shared_articles}",
        ]
        for n in self.exact_dups:
            sampled = (
                "" if self.checked_rows[n] == self.total_rows[n] else f" (sampled of {self.total_rows[n]})"
            )
            lines.append(
                f"  {n} vs train: {self.checked_rows[n]} rows checked{sampled}, {self.exact_dups[n]} exact "
                f"duplicates, {self.near_dups[n]} near duplicates (cos > {self.near_dup}) "
                f"= {100 * self.dup_frac(n):.3f}% (allowed {100 * self.max_dup_frac:.3f}%)"
            )
        for ex in self.examples:
            lines.append(
                f"    e.g. {ex['split']} row {ex['row']} ~ train row {ex['train_row']} ({ex['kind']}, cos {ex['cos']:.4f})"
            )
        return "\n".join(lines)


def _row_hashes(vectors: np.ndarray, rows: np.ndarray, batch: int, salt: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row's bytes: words viewed as uint32, dotted with random odd multipliers (mod 2**64).
    Equal bytes give equal hashes; collisions are possible, so callers confirm matches byte by byte."""
    out = np.empty(len(rows), dtype=np.uint64)
    for s in range(0, len(rows), batch):
        block = np.ascontiguousarray(vectors[rows[s : s + batch]])
        words = block.view(np.uint8).reshape(len(block), -1)
        pad = (-words.shape[1]) % 4
        if pad:
            words = np.pad(words, ((0, 0), (0, pad)))
        words = words.view(np.uint32).astype(np.uint64)
        out[s : s + batch] = (words * salt[: words.shape[1]]).sum(axis=1, dtype=np.uint64)
    return out


def check_leakage(
    bank: VectorBank,
    split: Split,
    near_dup: float = 0.98,
    max_dup_frac: float = 0.001,
    sample: int | None = None,
    batch_size: int = 4096,
    max_examples: int = 5,
    seed: int = 0,
) -> LeakageReport:
    """Look for train/held-out leaks that an article-disjoint split cannot rule out.

    shared articles  article ids present in train and in val/test (0 unless ``split`` was built by hand)
    exact duplicates held-out rows whose stored vector is byte-identical to a train row (row hashing,
                     then a byte comparison of each hash match)
    near duplicates  held-out rows, not exact duplicates, whose cosine to the nearest train row (exact FAISS
                     flat search, in batches) exceeds ``near_dup``

    ``sample`` caps the held-out rows checked per split (a seeded random subset; the report says so).
    ``ok`` is False when any article is shared or more than ``max_dup_frac`` of a held-out split is duplicated.
    """
    if split.bank is not bank and split.bank.manifest.bank_id != bank.manifest.bank_id:
        raise ProvenanceError(
            f"the split was made for bank {split.bank.manifest.bank_id}, not {bank.manifest.bank_id}"
        )
    if not 0 < near_dup <= 1:
        raise ConfigError(f"near_dup must be in (0, 1], got {near_dup}")
    ids = {n: set(split.article_ids(n)) for n in SPLIT_NAMES}
    shared = len(ids["train"] & (ids["val"] | ids["test"])) + len(ids["val"] & ids["test"])
    train = _TrainRows(bank.vectors, split.rows("train"), batch_size)
    rng = np.random.default_rng(seed)
    report = LeakageReport(shared, {}, {}, {}, {}, float(near_dup), float(max_dup_frac))
    for name in ("val", "test"):
        rows = split.rows(name)
        report.total_rows[name] = len(rows)
        if sample is not None and len(rows) > sample:
            rows = np.sort(rng.choice(rows, size=sample, replace=False))
        report.checked_rows[name] = len(rows)
        exact_match = train.exact_matches(rows)
        exact = exact_match >= 0
        best_cos, best_row = train.nearest(rows)
        near = (best_cos > near_dup) & ~exact
        report.exact_dups[name], report.near_dups[name] = int(exact.sum()), int(near.sum())
        for i in np.flatnonzero(exact)[:max_examples]:
            report.examples.append(_example(name, rows[i], exact_match[i], "exact", 1.0))
        for i in np.flatnonzero(near)[:max_examples]:
            report.examples.append(_example(name, rows[i], best_row[i], "near", best_cos[i]))
    return report


class _TrainRows:
    """The train rows, for two lookups: byte-identical rows (hash, then bytes) and the nearest row (exact search)."""

    def __init__(self, vectors: np.ndarray, rows: np.ndarray, batch_size: int):
        self.vectors, self.batch_size = vectors, batch_size
        self.salt = np.random.default_rng(12345).integers(
            1, 2**63, size=vectors.shape[1] * vectors.dtype.itemsize // 4 + 1, dtype=np.uint64
        ) | np.uint64(1)
        hashes = _row_hashes(vectors, rows, batch_size, self.salt)
        order = np.argsort(hashes, kind="stable")
        self.hashes, self.rows_by_hash, self.rows = hashes[order], rows[order], rows
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        for s in range(0, len(rows), batch_size):
            self.index.add(_unit(vectors[rows[s : s + batch_size]]))

    def exact_matches(self, rows: np.ndarray) -> np.ndarray:
        """For each row, a train row with the same bytes, or -1."""
        match = np.full(len(rows), -1, dtype=np.int64)
        hashes = _row_hashes(self.vectors, rows, self.batch_size, self.salt)
        lo, hi = np.searchsorted(self.hashes, hashes, "left"), np.searchsorted(self.hashes, hashes, "right")
        for i in np.flatnonzero(hi > lo):
            mine = np.asarray(self.vectors[rows[i]]).tobytes()
            for t in self.rows_by_hash[lo[i] : hi[i]]:
                if np.asarray(self.vectors[t]).tobytes() == mine:
                    match[i] = t
                    break
        return match

    def nearest(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cosine, train row) of each row's nearest train row; (0, -1) when there are no train rows."""
        best_cos = np.zeros(len(rows), dtype=np.float32)
        best_row = np.full(len(rows), -1, dtype=np.int64)
        if self.index.ntotal:
            for s in range(0, len(rows), self.batch_size):
                d, j = self.index.search(_unit(self.vectors[rows[s : s + self.batch_size]]), 1)
                best_cos[s : s + self.batch_size], best_row[s : s + self.batch_size] = (
                    d[:, 0],
                    self.rows[j[:, 0]],
                )
        return best_cos, best_row


def _example(split_name: str, row, train_row, kind: str, cos) -> dict:
    return {
        "split": split_name,
        "row": int(row),
        "train_row": int(train_row),
        "kind": kind,
        "cos": float(cos),
    }


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
