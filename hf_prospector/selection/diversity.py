"""Diversity: facility-location selection over sentence embeddings, and Superfiltering.D.

Facility location picks k rows S that best "cover" all rows: it maximises
``f(S) = sum_i max(0, max_{j in S} cos(x_i, x_j))``, a monotone submodular function, so the greedy
choice (add the row with the largest marginal gain, ties to the lower index) is within 1 - 1/e of the
optimum. Lazy greedy (Minoux, 1978) gets the same picks with few gain evaluations: a gain only shrinks
as S grows, so a stale gain is an upper bound and a row whose fresh gain still tops the heap is the
greedy choice.

Memory. Below :data:`DENSE_MAX_ROWS` rows the full similarity matrix is built: ``n * n`` floats (100 MB at
5,000 float32 rows). Above it, each row keeps only the similarities to its ``n_neighbors`` nearest rows
(scikit-learn ``NearestNeighbors``, brute force on unit vectors, computed in chunks, never n x n): memory
grows as ``O(n * d + n * n_neighbors)``, the unit-length embeddings plus a few tens of bytes per kept pair
while the sparse matrix is built. Time grows as ``O(n^2 * d)`` for the neighbour search. Measured
(``bench/bench_selection.py``, 2 CPU cores): 1,000 of 50,000 rows with 384 dimensions in 51 s and a
218 MB traced peak, against 10 GB for the dense matrix. A row is covered only by its own neighbours,
which is where its best cover lies.

Superfiltering.D (Li et al., ACL 2024, arXiv:2402.00530): the top 20% by IFD, then facility location
down to 2% of the data. The paper's ``do_fla.py`` uses submodlib's euclidean kernel on unit-length
all-MiniLM-L6-v2 embeddings; cosine similarity here orders neighbours the same way.
"""

from __future__ import annotations

import heapq
import warnings
from typing import Any, Callable

import numpy as np
from datasets import Dataset
from scipy import sparse
from sklearn.neighbors import NearestNeighbors

from ..embeddings import cache_column, embed_column, embedding_matrix
from ..formats import ColumnMapping
from ..utils import renamed_keyword, require_int
from .rules import SelectionReport, SelectionRule, check_order, fraction_count, select

DENSE_MAX_ROWS = 5_000
DEFAULT_NEIGHBORS = 100


class FacilityLocation:
    """Greedy facility-location selection of ``k`` rows of an embedding matrix (apricot-style).

    ``n_neighbors=None`` uses the dense similarity matrix up to :data:`DENSE_MAX_ROWS` rows and
    :data:`DEFAULT_NEIGHBORS` nearest neighbours above; an int always uses that many neighbours (the
    row itself included). After :meth:`fit`: ``ranking`` holds the selected row indices in greedy order,
    ``gains`` the marginal gain of each, and ``n_neighbors_`` the neighbours used (None: dense).
    """

    def __init__(self, k: int, *, n_neighbors: int | None = None):
        self.k = require_int("k", k, 1)
        self.n_neighbors = None if n_neighbors is None else require_int("n_neighbors", n_neighbors, 1)

    def fit(self, X) -> "FacilityLocation":
        X = _unit_rows(X)
        n = len(X)
        if self.k > n:
            raise ValueError(f"cannot select k={self.k} rows from {n}")
        if self.n_neighbors is None and n <= DENSE_MAX_ROWS:
            self.n_neighbors_ = None
            similarity = X @ X.T
            np.maximum(similarity, 0, out=similarity)
        else:
            self.n_neighbors_ = min(self.n_neighbors or DEFAULT_NEIGHBORS, n)
            similarity = _knn_similarity(X, self.n_neighbors_)
        self.ranking, self.gains = _lazy_greedy(similarity, self.k)
        return self


def _unit_rows(X) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2 or len(X) == 0:
        raise ValueError(f"expected a non-empty 2-D embedding matrix, got shape {X.shape}")
    if X.dtype != np.float64:
        X = X.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
    if len(bad):
        raise ValueError(f"embedding rows {bad[:10].tolist()} contain NaN or inf; re-embed those rows")
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if len(zero):
        raise ValueError(f"embedding rows {zero[:10].tolist()} are all zeros and have no direction; "
                         "drop or re-embed them")
    return X / norms


def _knn_similarity(X: np.ndarray, n_neighbors: int) -> sparse.csc_matrix:
    """Column j lists the rows that have j among their nearest neighbours, with max(0, cosine)."""
    # On unit vectors |a - b|^2 = 2 - 2 cos(a, b): euclidean neighbours are cosine neighbours, and
    # scikit-learn's chunked brute-force search never holds an n x n block.
    search = NearestNeighbors(n_neighbors=n_neighbors, algorithm="brute", metric="euclidean").fit(X)
    graph = search.kneighbors_graph(X, mode="distance")
    graph.data = np.maximum(1 - graph.data.astype(X.dtype) ** 2 / 2, 0)
    return graph.tocsc()


def _lazy_greedy(similarity, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy order and marginal gains; ``similarity[i, j]`` is how well j covers i (dense or CSC)."""
    dense = isinstance(similarity, np.ndarray)

    def covered(j: int):  # the rows j covers and how well
        if dense:  # symmetric: row j is column j, and contiguous
            return slice(None), similarity[j]
        lo, hi = similarity.indptr[j], similarity.indptr[j + 1]
        return similarity.indices[lo:hi], similarity.data[lo:hi]

    coverage = np.zeros(similarity.shape[0], dtype=similarity.dtype)
    bounds = np.asarray(similarity.sum(axis=0, dtype=np.float64)).ravel()
    heap = [(-b, j) for j, b in enumerate(bounds.tolist())]
    heapq.heapify(heap)
    ranking, gains = [], []
    while len(ranking) < k:
        _, j = heapq.heappop(heap)
        rows, sims = covered(j)
        gain = float(np.maximum(sims - coverage[rows], 0).sum(dtype=np.float64))
        if heap and (-gain, j) > heap[0]:  # another row may gain more: re-queue with the fresh bound
            heapq.heappush(heap, (-gain, j))
            continue
        coverage[rows] = np.maximum(coverage[rows], sims)
        ranking.append(j)
        gains.append(gain)
    return np.array(ranking, dtype=np.int64), np.array(gains, dtype=np.float64)


def select_diverse(ds: Dataset, k: int, *, encoder: Any = None, embedding_column: str | None = None,
                   text_fn: Callable[[dict], str] | None = None, mapping: ColumnMapping | None = None,
                   columns: ColumnMapping | None = None,
                   n_neighbors: int | None = None, order: str = "ranked",
                   batch_size: int = 64) -> tuple[Dataset, SelectionReport]:
    """Facility-location selection of ``k`` rows of ``ds``, embedding them first if needed.

    Rows come ``ranked`` (in greedy order, the best cover first) or in their ``original`` order.
    Adds ``fl_rank`` (0 = first greedy pick) and ``fl_gain`` (its marginal gain). The embeddings come
    from the cached column when ``ds`` has it (see :func:`hf_prospector.embeddings.embed_column`); the
    column stays in the result (``remove_columns`` it before publishing if unwanted).
    """
    order = check_order(order, "greedy")
    require_int("k", k, 1, len(ds), hint=f"the dataset has {len(ds)} rows to choose from")
    column = cache_column(encoder, embedding_column, text_fn)
    mapping = renamed_keyword("mapping", mapping, "columns", columns)
    ds = embed_column(ds, encoder=encoder, column=column, text_fn=text_fn, mapping=mapping, batch_size=batch_size)
    fl = FacilityLocation(k, n_neighbors=n_neighbors).fit(embedding_matrix(ds, column))
    picked = fl.ranking if order == "ranked" else np.sort(fl.ranking)
    rank = np.empty(len(ds), dtype=np.int64)
    rank[fl.ranking] = np.arange(k)
    gain = np.zeros(len(ds))
    gain[fl.ranking] = fl.gains
    out = ds.select(picked)
    out = out.add_column("fl_rank", rank[picked].tolist()).add_column("fl_gain", gain[picked].tolist())
    neighbours = "dense similarities" if fl.n_neighbors_ is None else f"{fl.n_neighbors_} nearest neighbours"
    report = SelectionReport(f"facility-location-{k}", len(ds), len(ds), k, {"not_diverse": len(ds) - k},
                             f"facility location kept {k} of {len(ds)} rows ({neighbours}, cosine).")
    return out, report


def select_superfiltering_d(ds: Dataset, *, k: int | float = 0.02, ifd_fraction: float = 0.2, column: str = "ifd",
                            **diverse_kwargs) -> tuple[Dataset, SelectionReport]:
    """Superfiltering.D: the top ``ifd_fraction`` by IFD (IFD < 1), then facility location down to ``k``.

    ``k`` is a row count, or a float in (0, 1) for a fraction of all ``len(ds)`` rows (rounded down), as the
    paper's 2%. Other keyword arguments go to :func:`select_diverse` (encoder, embedding_column, ...).
    To try several ``k`` without encoding again, embed once with ``embed_column(ds)`` and select from that.
    """
    if isinstance(k, float):
        if not 0 < k < 1:
            raise ValueError(f"a float k is a fraction of the rows and must be in (0, 1), got {k}")
        k = fraction_count(k, len(ds))
    pool, ifd_report = select(ds, SelectionRule(column=column, top_fraction=ifd_fraction), order="original")
    if not 1 <= k <= len(pool):
        raise ValueError(f"k={k} rows cannot come from the {len(pool)} rows left after the IFD step "
                         f"({ifd_report.note}); lower k or raise ifd_fraction")
    out, fl_report = select_diverse(pool, k, **diverse_kwargs)
    return out, ifd_report.followed_by(fl_report)


def superfiltering_d(ds: Dataset, k: int | float = 0.02, ifd_fraction: float = 0.2, column: str = "ifd",
                     **diverse_kwargs) -> tuple[Dataset, SelectionReport]:
    """Deprecated name of :func:`select_superfiltering_d` (it performs a selection; ``superfiltering`` is a rule)."""
    warnings.warn("superfiltering_d(ds, k) is now select_superfiltering_d(ds, k=...)", DeprecationWarning,
                  stacklevel=2)
    return select_superfiltering_d(ds, k=k, ifd_fraction=ifd_fraction, column=column, **diverse_kwargs)
