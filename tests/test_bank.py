"""VectorBank and its FAISS index: validation on open, provenance refusal, exclusion-aware search checked
against brute-force numpy, ivf/hnsw recall against exact search."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lvmkit.bank import EncoderInfo, VectorBank
from lvmkit.bank.bank import text_hash
from lvmkit.bank.index import (
    build_index,
    exact_topk,
    exclusion_matrix,
    recall_against_exact,
    save_index,
)
from lvmkit.errors import ArtifactError, ConfigError, ProvenanceError


def brute_force_topk(bank_vectors: np.ndarray, queries: np.ndarray, k: int, exclude: list[set[int]]):
    """Independent reference: full score matrix, excluded ids set to -inf, stable sort by descending score."""
    scores = queries.astype(np.float64) @ bank_vectors.astype(np.float64).T
    for q, ex in enumerate(exclude):
        scores[q, list(ex)] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order


# --------------------------------------------------------------------------------------------- structure
def test_structure_arrays_match_layout(make_bank, tmp_path):
    bank = make_bank(tmp_path, articles=[3, 1, 4], dim=8)
    assert len(bank) == 8 and bank.dim == 8 and bank.n_articles == 3
    np.testing.assert_array_equal(bank.article_codes, [0, 0, 0, 1, 2, 2, 2, 2])
    np.testing.assert_array_equal(bank.article_starts, [0, 3, 4, 8])
    np.testing.assert_array_equal(bank.chunk_index, [0, 1, 2, 0, 0, 1, 2, 3])
    assert bank.texts([4, 0]) == ["seed 0 article A0002 chunk 0", "seed 0 article A0000 chunk 0"]
    assert bank.titles([3]) == ["Title A0001"]
    assert bank.get(np.array([1, 2])).dtype == np.float32
    np.testing.assert_array_equal(bank.get(np.array([1, 2])), np.asarray(bank.vectors[1:3]))


def test_write_then_open_roundtrip_and_content_hash(make_bank, tmp_path):
    bank = make_bank(tmp_path, articles=[2, 2], dim=4, seed=3)
    again = VectorBank.open(bank.path)
    np.testing.assert_array_equal(np.asarray(again.vectors), np.asarray(bank.vectors))
    assert again.manifest.corpus.content_hash == text_hash(bank.texts(range(4)))
    assert again.manifest.bank_id.startswith(again.manifest.corpus.content_hash[:16])


def test_text_hash_separates_boundaries_and_accepts_generators():
    assert text_hash(["ab", "c"]) != text_hash(["a", "bc"])
    assert text_hash(t for t in ["x", "y"]) == text_hash(["x", "y"])


def test_float16_bank_opens(make_bank, tmp_path):
    bank = make_bank(tmp_path, articles=[4], dim=8, dtype=np.float16)
    assert bank.vectors.dtype == np.float16 and bank.manifest.vector_dtype == "float16"


# --------------------------------------------------------------------------------------------- validation
def _edit_manifest(bank, **changes):
    path = bank.path / "manifest.json"
    m = json.loads(path.read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            m[section][field] = value
        else:
            m[section] = value
    path.write_text(json.dumps(m))


def test_open_missing_directory_and_missing_manifest(tmp_path):
    with pytest.raises(ArtifactError, match="no bank at"):
        VectorBank.open(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    with pytest.raises(ArtifactError, match="incomplete"):
        VectorBank.open(tmp_path / "half")


def test_open_rejects_corrupt_manifest(make_bank, tmp_path):
    bank = make_bank(tmp_path, articles=[2])
    (bank.path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not a valid bank manifest"):
        VectorBank.open(bank.path)


def test_open_rejects_count_mismatch(make_bank, tmp_path):
    bank = make_bank(tmp_path, articles=[2, 3])
    _edit_manifest(bank, count=4)
    with pytest.raises(ArtifactError, match="manifest says 4 chunks"):
        VectorBank.open(bank.path)


def test_open_rejects_dim_mismatch(make_bank, tmp_path):
    bank = make_bank(tmp_path, articles=[2], dim=8)
    _edit_manifest(bank, encoder__dim=16)
    with pytest.raises(ArtifactError, match="8-d but the encoder"):
        VectorBank.open(bank.path)


def test_open_rejects_dtype_mismatch(make_bank, tmp_path):
    bank = make_bank(tmp_path, articles=[2])
    _edit_manifest(bank, vector_dtype="float16")
    with pytest.raises(ArtifactError, match="manifest says float16"):
        VectorBank.open(bank.path)


def test_open_rejects_unnormalised_vectors(make_bank, tmp_path):
    vectors = np.full((3, 4), 0.9, dtype=np.float32)
    with pytest.raises(ArtifactError, match="L2-normalised"):
        make_bank(tmp_path, articles=[3], vectors=vectors)


def test_open_rejects_chunk_ids_that_are_not_row_numbers(make_bank, tmp_path):
    bank = make_bank(tmp_path, articles=[3])
    table = pq.read_table(bank.path / "chunks.parquet")
    ids = table.column("chunk_id").to_numpy()[::-1].copy()
    table = table.set_column(0, "chunk_id", pa.array(ids))
    pq.write_table(table, bank.path / "chunks.parquet")
    with pytest.raises(ArtifactError, match="chunk_id must equal the row number"):
        VectorBank.open(bank.path)


def test_open_rejects_broken_chunk_index(make_bank, tmp_path):
    bank = make_bank(tmp_path, articles=[2, 3])
    table = pq.read_table(bank.path / "chunks.parquet")
    ci = table.column("chunk_index").to_numpy().copy()
    ci[3] = 5  # second article: 0, 5, 2
    idx = table.schema.get_field_index("chunk_index")
    pq.write_table(
        table.set_column(idx, "chunk_index", pa.array(ci, pa.int32())), bank.path / "chunks.parquet"
    )
    with pytest.raises(ArtifactError, match="at row 3"):
        VectorBank.open(bank.path)


def test_open_rejects_truncated_vectors_file(make_bank, tmp_path):
    bank = make_bank(tmp_path, articles=[50], dim=16)
    path = bank.path / "vectors.npy"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ArtifactError, match="vectors.npy"):
        VectorBank.open(bank.path)


# --------------------------------------------------------------------------------------------- provenance
def test_open_with_expected_encoder_refuses_other_space(make_bank, tmp_path):
    bank = make_bank(tmp_path, articles=[2], dim=8, encoder="enc-a")
    VectorBank.open(bank.path, expect=EncoderInfo(name="enc-a", dim=8, backend="onnx-int8", dtype="int8"))
    with pytest.raises(ProvenanceError, match="enc-a.*enc-b"):
        VectorBank.open(bank.path, expect=EncoderInfo(name="enc-b", dim=8), expect_what="the model")
    with pytest.raises(ProvenanceError, match="16-d"):
        VectorBank.open(bank.path, expect=EncoderInfo(name="enc-a", dim=16))


# ------------------------------------------------------------------------------------------------ search
def test_flat_search_matches_brute_force(make_bank, tmp_path):
    bank = make_bank(tmp_path, articles=[30, 20, 50], dim=16, seed=1)
    q = np.asarray(bank.vectors[[0, 17, 99]], dtype=np.float32)
    scores, ids = bank.search(q, k=7)
    ref_scores, ref_ids = brute_force_topk(np.asarray(bank.vectors), q, 7, [set(), set(), set()])
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
    assert list(ids[:, 0]) == [0, 17, 99]  # each unit vector is its own nearest neighbour


@pytest.mark.parametrize("as_list", [False, True])
def test_search_with_exclusions_matches_brute_force(make_bank, tmp_path, as_list):
    bank = make_bank(tmp_path, articles=[40, 40], dim=8, seed=2)
    vectors = np.asarray(bank.vectors)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((6, 8)).astype(np.float32)
    exclude = [set(rng.choice(80, size=s, replace=False).tolist()) for s in (0, 1, 5, 10, 3, 79)]
    if as_list:
        ex_arg = [np.array(sorted(e), dtype=np.int64) for e in exclude]
    else:
        ex_arg = exclusion_matrix([np.array(sorted(e)) for e in exclude], 6)
    scores, ids = bank.search(q, k=5, exclude=ex_arg)
    ref_scores, ref_ids = brute_force_topk(vectors, q, 5, exclude)
    for row in range(6):
        valid = np.isfinite(ref_scores[row])
        np.testing.assert_array_equal(ids[row][valid], ref_ids[row][valid])
        np.testing.assert_allclose(scores[row][valid], ref_scores[row][valid], rtol=1e-5, atol=1e-5)
        assert not set(ids[row][ids[row] >= 0].tolist()) & exclude[row]
    # the last query excludes 79 of 80 rows: one result, then padding
    assert ids[5, 0] >= 0 and (ids[5, 1:] == -1).all() and np.isneginf(scores[5, 1:]).all()


def test_exclusion_matrix_shapes_and_errors():
    m = exclusion_matrix([[1, 2], [], [7]], 3)
    np.testing.assert_array_equal(m, [[1, 2], [-1, -1], [7, -1]])
    assert exclusion_matrix(None, 4).shape == (4, 0)
    with pytest.raises(ValueError, match="3 entries for 2 queries"):
        exclusion_matrix([[1], [2], [3]], 2)
    with pytest.raises(ValueError, match="1 rows for 2 queries"):
        exclusion_matrix(np.zeros((1, 3), dtype=np.int64), 2)


def test_k_larger_than_bank_is_clipped(make_bank, tmp_path):
    bank = make_bank(tmp_path, articles=[3], dim=4)
    scores, ids = bank.search(np.asarray(bank.vectors[:1]), k=10)
    assert ids.shape == (1, 3) and sorted(ids[0].tolist()) == [0, 1, 2]


# ------------------------------------------------------------------------------------------------- index
def test_unknown_index_type_and_oversized_nlist():
    v = np.eye(4, dtype=np.float32)
    with pytest.raises(ConfigError, match="allowed: flat, ivf, hnsw"):
        build_index(v, type="annoy")
    with pytest.raises(ConfigError, match="nlist=10 exceeds the bank size 4"):
        build_index(v, type="ivf", nlist=10)


def _clustered_vectors(n: int, dim: int, clusters: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around ``clusters`` centres: a structure ANN indexes are built for."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(clusters, size=n)] + 0.3 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _recall_by_hand(index, vectors: np.ndarray, queries: np.ndarray, k: int) -> float:
    _, truth = brute_force_topk(vectors, queries, k, [set()] * len(queries))
    _, got = index.search(queries, k)
    return float(np.mean([len(set(t) & set(g)) / k for t, g in zip(truth, got, strict=True)]))


@pytest.mark.parametrize(
    ("kind", "kwargs"),
    [("ivf", {"nlist": 16, "nprobe": 16}), ("hnsw", {"hnsw_m": 16, "ef_search": 128})],
)
def test_ann_recall_against_exact(kind, kwargs):
    vectors = _clustered_vectors(1000, 16, clusters=16)
    index = build_index(vectors, type=kind, **kwargs)
    queries = vectors[:200]
    by_hand = _recall_by_hand(index, vectors, queries, k=10)
    assert by_hand > 0.95  # ivf with nprobe == nlist is exhaustive; hnsw with ef 128 on 1k points near-exact
    reported = recall_against_exact(index, vectors, k=10, sample=1000)
    assert reported == pytest.approx(_recall_by_hand(index, vectors, vectors, k=10), abs=1e-9)


def test_ivf_recall_grows_with_nprobe():
    vectors = _clustered_vectors(3000, 16, clusters=64, seed=1)
    index = build_index(vectors, type="ivf", nlist=64, nprobe=1)
    low = recall_against_exact(index, vectors, k=10, sample=300)
    index.set_nprobe(64)
    high = recall_against_exact(index, vectors, k=10, sample=300)
    assert high == pytest.approx(1.0) and low < high


def test_saved_index_is_reloaded_with_its_parameters(make_bank, tmp_path):
    bank = make_bank(tmp_path, articles=[300, 200], dim=16, seed=4)
    index = build_index(bank.vectors, type="ivf", nlist=8, nprobe=3)
    save_index(bank, index, extra={"recall@10": 0.5})
    reopened = VectorBank.open(bank.path)
    assert reopened.manifest.index["type"] == "ivf" and reopened.manifest.index["recall@10"] == 0.5
    si = reopened.index()
    assert si.ntotal == 500 and si.params["nprobe"] == 3
    q = np.asarray(bank.vectors[:5], dtype=np.float32)
    np.testing.assert_array_equal(reopened.search(q, 5)[1], index.search(q, 5)[1])


def test_stale_index_is_refused(make_bank, tmp_path):
    small = make_bank(tmp_path, articles=[10], dim=8, name="small")
    big = make_bank(tmp_path, articles=[20], dim=8, name="big")
    save_index(big, build_index(big.vectors, type="flat"))
    (small.path / "index.faiss").write_bytes((big.path / "index.faiss").read_bytes())
    _edit_manifest(small, index={"type": "flat", "dim": 8, "ntotal": 20})
    with pytest.raises(ArtifactError, match="rebuild it"):
        VectorBank.open(small.path).index()


@pytest.mark.parametrize("block", [7, 64, 10_000])
def test_exact_topk_equals_a_numpy_sort_with_ties_by_lower_id(block):
    """The CPU exact search (blocked matmul + top-k, merged) against a full numpy sort: same ids in the same
    order (score descending, ties by the lower id: rows 3 and 11 are the same vector), same scores."""
    rng = np.random.default_rng(3)
    xb = rng.standard_normal((300, 16)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    xb[11] = xb[3]
    q = np.concatenate([xb[[3, 11]], rng.standard_normal((20, 16)).astype(np.float32)])
    scores, ids = exact_topk(xb, q, 25, block=block)
    full = q @ xb.T
    want = np.lexsort((np.broadcast_to(np.arange(len(xb)), full.shape), -full), axis=1)[:, :25]
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_allclose(scores, np.take_along_axis(full, want, 1), atol=1e-5)
    assert ids[0, 0] == 3 and ids[0, 1] == 11 and ids[1, 0] == 3  # the tie, lower id first
    s, i = build_index(xb, "flat").search(q, 25, exclude=[[3]] * len(q))
    np.testing.assert_array_equal(
        i,
        np.stack(
            [
                r[r != 3][:25]
                for r in np.lexsort((np.broadcast_to(np.arange(len(xb)), full.shape), -full), axis=1)
            ]
        ),
    )
