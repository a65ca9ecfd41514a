"""Facility location against a brute-force greedy, the sparse path against the dense one, Superfiltering.D."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from datasets import Dataset

from hf_prospector.selection import FacilityLocation, select_diverse, select_superfiltering_d
from hf_prospector.selection import diversity

from tests.oracles import top_fraction

from .spies import FakeEncoder, Spy


def brute_force_greedy(cover: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    """Plain greedy: every step evaluates every row's exact gain; ``cover[i, j]`` = how well j covers i."""
    current = np.zeros(len(cover))
    chosen, gains = [], []
    for _ in range(k):
        gain = np.maximum(cover - current[:, None], 0).sum(axis=0)
        gain[chosen] = -np.inf
        j = int(np.argmax(gain))  # the first maximum: ties go to the lower index
        chosen.append(j)
        gains.append(float(gain[j]))
        current = np.maximum(current, cover[:, j])
    return chosen, gains


def cosine_cover(X: np.ndarray) -> np.ndarray:
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    return np.maximum(unit @ unit.T, 0)


def clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, d))
    return centres[rng.integers(0, 5, n)] + 0.6 * rng.normal(size=(n, d))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dense_matches_brute_force_set_order_and_gains(seed):
    X = clustered(60, 8, seed)
    fl = FacilityLocation(12).fit(X)
    chosen, gains = brute_force_greedy(cosine_cover(X), 12)
    assert fl.n_neighbors_ is None
    assert fl.ranking.tolist() == chosen
    np.testing.assert_allclose(fl.gains, gains, rtol=1e-9)


def test_exact_ties_go_to_the_lower_index_down_to_zero_gain():
    # Rows with four ones in eight places have norm 2: every cosine is a multiple of 1/4 and every gain
    # is exact, so ties are real ties. Repeated rows gain nothing once their twin is in.
    rng = np.random.default_rng(3)
    X = np.zeros((24, 8))
    for row in X:
        row[rng.choice(8, 4, replace=False)] = 1
    X[20:] = X[[2, 7, 2, 11]]
    fl = FacilityLocation(len(X)).fit(X)
    chosen, gains = brute_force_greedy(cosine_cover(X), len(X))
    assert fl.ranking.tolist() == chosen
    assert fl.gains.tolist() == gains
    assert fl.gains[-4:].tolist() == [0, 0, 0, 0] and fl.ranking[-4:].tolist() == [20, 21, 22, 23]


@pytest.mark.parametrize("seed", [0, 1])
def test_sparse_covering_all_neighbours_equals_dense(seed):
    X = clustered(80, 8, seed)
    dense = FacilityLocation(15).fit(X)
    sparse = FacilityLocation(15, n_neighbors=80).fit(X)
    assert sparse.n_neighbors_ == 80
    assert set(sparse.ranking.tolist()) == set(dense.ranking.tolist())
    assert sparse.ranking.tolist() == dense.ranking.tolist()
    np.testing.assert_allclose(sparse.gains, dense.gains, rtol=1e-9)


def test_sparse_matches_brute_force_on_the_nearest_neighbour_similarity():
    X = clustered(70, 8, 4)
    m = 6
    full = cosine_cover(X)
    truncated = np.zeros_like(full)
    for i in range(len(X)):  # row i is covered only by its m most similar rows (itself included)
        nearest = np.argsort(-(X[i] / np.linalg.norm(X[i])) @ (X / np.linalg.norm(X, axis=1, keepdims=True)).T)[:m]
        truncated[i, nearest] = full[i, nearest]
    fl = FacilityLocation(10, n_neighbors=m).fit(X)
    chosen, gains = brute_force_greedy(truncated, 10)
    assert fl.ranking.tolist() == chosen
    np.testing.assert_allclose(fl.gains, gains, rtol=1e-9)


def test_large_n_goes_sparse_without_an_n_by_n_matrix(monkeypatch):
    n, d = 6000, 16
    monkeypatch.setattr(diversity, "DEFAULT_NEIGHBORS", 20)
    X = clustered(n, d, 5).astype(np.float32)
    tracemalloc.start()
    fl = FacilityLocation(50).fit(X)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert fl.n_neighbors_ == 20 and len(set(fl.ranking.tolist())) == 50
    assert peak < n * n * 4 / 10, f"peak {peak / 1e6:.0f} MB is not far below a dense {n * n * 4 / 1e6:.0f} MB"
    assert np.all(np.diff(fl.gains) <= 1e-6)  # greedy gains never grow (submodularity)


@pytest.mark.parametrize("X, k, match", [
    (np.ones((3, 2)), 4, "cannot select k=4 rows from 3"),
    (np.array([[1.0, 0], [0, 0]]), 1, r"rows \[1\] are all zeros"),
    (np.array([[1.0, 0], [np.nan, 1]]), 1, r"rows \[1\] contain NaN"),
    (np.ones(3), 1, "2-D"),
])
def test_bad_embeddings_are_refused(X, k, match):
    with pytest.raises(ValueError, match=match):
        FacilityLocation(k).fit(X)
    with pytest.raises(ValueError, match="k must be"):
        FacilityLocation(0)


def ifd_pool(ifd: list[float], fraction: float) -> list[int]:
    """Rows of the IFD step in row order: the best floor(fraction * eligible) rows with IFD < 1."""
    return sorted(top_fraction(ifd, fraction))


def alpaca_rows(n: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    ifd = np.round(rng.uniform(0.2, 1.2, n), 2).tolist()
    ifd[3] = float("nan")
    return Dataset.from_dict({"instruction": [f"task {i}" for i in range(n)],
                              "input": ["" if i % 3 else f"context {i}" for i in range(n)],
                              "output": [f"answer {i % 7}" for i in range(n)], "ifd": ifd, "row": list(range(n))})


def test_superfiltering_d_is_ifd_top_fraction_then_greedy_facility_location():
    ds = alpaca_rows(60)
    encoder = FakeEncoder()
    out, report = select_superfiltering_d(ds, k=5, ifd_fraction=0.4, encoder=encoder, embedding_column="emb")

    pool = ifd_pool(ds["ifd"][:], 0.4)
    texts = [f"task {i}" + (f"\ncontext {i}" if i % 3 == 0 else "") + f"\nanswer {i % 7}" for i in pool]
    assert encoder.texts == texts  # only the IFD pool was embedded, as full texts
    chosen, gains = brute_force_greedy(cosine_cover(encoder.encode(texts)), 5)
    assert out["row"][:] == [pool[j] for j in chosen]
    assert out["fl_rank"][:] == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(out["fl_gain"][:], gains, rtol=1e-5)

    n_eligible = sum(1 for v in ds["ifd"] if v == v and v < 1)
    assert report.to_dict() | {"note": ""} == {
        "rule": "ifd-top40pct, then facility-location-5", "considered": 60, "eligible": n_eligible, "kept": 5,
        "dropped": {"not_finite": 1, "ifd_out_of_range": 60 - 1 - n_eligible, "not_top": n_eligible - len(pool),
                    "not_diverse": len(pool) - 5}, "note": ""}
    assert report.kept + sum(report.dropped.values()) == 60


def test_fraction_k_and_original_order():
    ds = alpaca_rows(100)
    greedy, _ = select_superfiltering_d(ds, k=0.05, encoder=FakeEncoder(), embedding_column="emb")
    original, _ = select_superfiltering_d(ds, k=0.05, encoder=FakeEncoder(), embedding_column="emb", order="original")
    assert len(greedy) == 5  # floor(5% of 100 rows), as the paper's 2% of all rows
    assert original["row"][:] == sorted(greedy["row"][:])
    assert [r for _, r in sorted(zip(original["fl_rank"][:], original["row"][:]))] == greedy["row"][:]


def test_k_beyond_the_ifd_pool_says_what_to_do():
    with pytest.raises(ValueError, match="after the IFD step.*raise ifd_fraction"):
        select_superfiltering_d(alpaca_rows(20), k=10, encoder=FakeEncoder(), embedding_column="emb")
    with pytest.raises(ValueError, match=r"k must be an integer from 1 to 20, got 21"):
        select_diverse(alpaca_rows(20), 21, encoder=FakeEncoder(), embedding_column="emb")


def test_cached_embeddings_make_a_second_k_free():
    from hf_prospector.embeddings import embed_column

    encoder = FakeEncoder()
    ds = embed_column(alpaca_rows(50), encoder=encoder, column="emb")
    calls = encoder.calls
    small, _ = select_diverse(ds, 3, encoder=encoder, embedding_column="emb")
    large, _ = select_diverse(ds, 8, encoder=encoder, embedding_column="emb")
    assert encoder.calls == calls
    assert large["row"][:3] == small["row"][:]  # greedy picks are nested


@pytest.mark.real_model
@pytest.mark.shared_data
def test_superfiltering_d_end_to_end_with_minilm(minilm, shared_data):
    import json

    from hf_prospector.embeddings import embed_column

    rows = json.loads((shared_data / "alpaca_gpt4_9k.json").read_text())[:40]
    rng = np.random.default_rng(7)
    ifd = rng.uniform(0.3, 1.1, len(rows))
    ifd[[5, 17]] = np.nan
    ds = Dataset.from_list(rows).add_column("ifd", ifd.tolist()).add_column("row", list(range(len(rows))))
    spy = Spy(minilm)
    column = "embedding_all-minilm-l6-v2"

    out, report = select_superfiltering_d(ds, k=4, ifd_fraction=0.5, encoder=spy, embedding_column=column)
    pool = ifd_pool(ifd.tolist(), 0.5)
    assert spy.rows == len(pool)  # only the IFD pool was encoded
    texts = [rows[i]["instruction"] + ("\n" + rows[i]["input"] if rows[i]["input"] else "") + "\n"
             + rows[i]["output"] for i in pool]
    chosen, gains = brute_force_greedy(cosine_cover(minilm.encode(texts).astype(np.float64)), 4)
    assert out["row"][:] == [pool[j] for j in chosen]
    np.testing.assert_allclose(out["fl_gain"][:], gains, rtol=1e-4)
    assert report.kept + sum(report.dropped.values()) == len(ds) and report.dropped["not_finite"] == 2

    embedded = embed_column(ds, encoder=spy, column=column)
    calls = spy.calls
    first, _ = select_superfiltering_d(embedded, k=3, ifd_fraction=0.5, encoder=spy, embedding_column=column)
    second, _ = select_superfiltering_d(embedded, k=6, ifd_fraction=0.5, encoder=spy, embedding_column=column)
    assert spy.calls == calls  # the second and third selections encoded nothing
    assert second["row"][:3] == first["row"][:]


def test_order_words_match_select_and_the_old_names_still_work():
    ds = alpaca_rows(100)
    ranked, report = select_superfiltering_d(ds, k=5, encoder=FakeEncoder(), embedding_column="emb", order="ranked")
    with pytest.warns(DeprecationWarning, match='order="greedy" is now order="ranked"'):
        greedy, _ = select_diverse(ds, 5, encoder=FakeEncoder(), embedding_column="emb", order="greedy")
    assert greedy["fl_rank"][:] == list(range(5))
    from hf_prospector.selection import superfiltering_d

    with pytest.warns(DeprecationWarning, match=r"superfiltering_d\(ds, k\) is now select_superfiltering_d"):
        old, old_report = superfiltering_d(ds, 5, encoder=FakeEncoder(), embedding_column="emb")
    assert old["row"][:] == ranked["row"][:] and old_report == report
    with pytest.raises(TypeError):
        select_superfiltering_d(ds, 5)  # k is keyword-only
    with pytest.raises(TypeError):
        FacilityLocation(3, 10)  # n_neighbors too
