"""Shared test fixtures.

``make_bank`` builds a small, real ``VectorBank`` on disk from random unit vectors, so tests of any stage
after ``bank`` can run in milliseconds without an encoder:

    def test_something(make_bank, tmp_path):
        bank = make_bank(tmp_path, articles=[5, 3, 8], dim=16, seed=0)
        assert len(bank) == 16 and bank.n_articles == 3

Articles are laid out in the order given (article ``i`` has ``articles[i]`` chunks, ids ``"A0000"``, ...).
Pass ``vectors=`` to plant exact values (e.g. duplicates), ``labels=`` for one label per article.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lvmkit.bank import BankManifest, CorpusInfo, EncoderInfo, VectorBank
from lvmkit.bank.bank import text_hash

REPO_ROOT = Path(__file__).resolve().parents[1]
ENWIKI = REPO_ROOT.parent / "shared/data/enwiki2015"


def random_unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """``n`` float32 vectors drawn uniformly on the unit sphere (Gaussian then L2-normalised)."""
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def random_walk_vectors(
    n_articles: int, length: int, dim: int, seed: int = 0, step: float = 0.6
) -> np.ndarray:
    """Articles as random walks on the sphere: each chunk is the previous one plus Gaussian noise (``step``),
    normalised, so the next chunk is near the last one (copy_last and the context mean find it often)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_articles):
        x = rng.standard_normal(dim)
        for _ in range(length):
            x = x + step * rng.standard_normal(dim)
            x = x / np.linalg.norm(x)
            rows.append(x)
    return np.asarray(rows, dtype=np.float32)


def build_bank(
    tmp_path: Path,
    articles: Sequence[int] = (5, 3, 8),
    dim: int = 16,
    seed: int = 0,
    labels: Sequence[str | None] | None = None,
    *,
    vectors: np.ndarray | None = None,
    article_ids: Sequence[str] | None = None,
    dtype: type = np.float32,
    encoder: str = "test-random",
    name: str | None = None,
) -> VectorBank:
    """Write a bank under ``tmp_path`` and open it.

    articles     number of chunks of each article, in bank order (zeros are not allowed: an article has chunks)
    dim, seed    dimension and RNG seed of the random unit vectors (ignored when ``vectors`` is given)
    labels       one label per article (or None): becomes the ``label`` column of every chunk of that article
    vectors      [sum(articles), dim] array to store instead of random vectors
    article_ids  one id string per article (default ``A0000``, ``A0001``, ...)
    dtype        float32 or float16 storage
    encoder      encoder name in the manifest (banks with different names live in different spaces)
    name         directory name under ``tmp_path`` (default ``bank``, ``bank_1``, ... whichever is free)

    The chunk texts include the seed, so banks built with different seeds have different bank ids.
    """
    articles = [int(n) for n in articles]
    if any(n <= 0 for n in articles):
        raise ValueError(f"every article needs at least one chunk, got {articles}")
    n_rows = sum(articles)
    if vectors is None:
        vectors = random_unit_vectors(n_rows, dim, seed)
    vectors = np.asarray(vectors, dtype=dtype)
    if vectors.shape[0] != n_rows:
        raise ValueError(f"vectors has {vectors.shape[0]} rows, articles need {n_rows}")
    dim = vectors.shape[1]
    ids = list(article_ids) if article_ids is not None else [f"A{a:04d}" for a in range(len(articles))]
    if len(ids) != len(articles):
        raise ValueError(f"{len(ids)} article_ids for {len(articles)} articles")
    if labels is not None and len(labels) != len(articles):
        raise ValueError(f"{len(labels)} labels for {len(articles)} articles")

    art = np.repeat(np.arange(len(articles)), articles)
    chunk_index = np.concatenate([np.arange(n) for n in articles]).astype(np.int32)
    texts = [f"seed {seed} article {ids[a]} chunk {c}" for a, c in zip(art, chunk_index, strict=True)]
    chunks = pa.table(
        {
            "article_id": [ids[a] for a in art],
            "title": [f"Title {ids[a]}" for a in art],
            "chunk_index": chunk_index,
            "paragraph_index": np.zeros(n_rows, dtype=np.int32),
            "heading": pa.nulls(n_rows, pa.string()),
            "text": texts,
            "label": [None if labels is None else labels[a] for a in art],
        }
    )
    manifest = BankManifest(
        encoder=EncoderInfo(name=encoder, dim=dim),
        chunker={"spec": "synthetic"},
        corpus=CorpusInfo(
            source="tests", format="synthetic", content_hash=text_hash(texts), articles=len(articles)
        ),
        count=n_rows,
    )
    if name is None:
        name, i = "bank", 0
        while (Path(tmp_path) / name).exists():
            i += 1
            name = f"bank_{i}"
    return VectorBank.write(Path(tmp_path) / name, vectors, chunks, manifest)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (two threads spin-wait on a busy 2-core box); the count is restored
    after the module. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def make_bank():
    """Factory fixture: ``make_bank(tmp_path, articles=[n_chunks, ...], dim=16, seed=0, labels=None, **kw)``.

    See ``build_bank`` in tests/conftest.py for the keyword arguments (vectors, article_ids, dtype, ...).
    """
    return build_bank


@pytest.fixture
def enwiki_dir() -> Path:
    """The real Wikipedia dump (../shared/data/enwiki2015 beside the repo); skips the test when absent."""
    if not ENWIKI.is_dir():
        pytest.skip(f"real Wikipedia not found at {ENWIKI}")
    return ENWIKI
