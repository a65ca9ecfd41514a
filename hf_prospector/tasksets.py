"""Task sets for the golden score: load a predefined set, or refine one by clustering (SuperNUGGETS).

SuperNUGGETS' refinement: sample rows, embed each row's full text (instruction, input, response) with a
sentence encoder, run k-means, and keep the row nearest each centroid, so k tasks cover the data's
variety.
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset, DatasetDict

from .formats import batch_to_examples, detect_format
from .sources import load_rows
from .utils import as_encoder, require_int


def load_task_set(source, *, split: str = "train", require_answers: bool = True) -> Dataset:
    """A task set from a Dataset, a DatasetDict (``split``), a json/jsonl/parquet/csv file, a saved
    dataset or a Hub id, in any row format the library reads.

    A task without an answer cannot be scored; with ``require_answers`` (the default) one is an error
    naming it (refining passes False: the refined set is checked when the scorer loads it).
    """
    if isinstance(source, DatasetDict):
        source = source[split]
    ds = source if isinstance(source, Dataset) else load_rows(str(source), split=split, what="task set")
    detect_format(ds.column_names)
    name = "the task set" + ("" if isinstance(source, Dataset) else f" {source}")
    if len(ds) == 0:
        raise ValueError(f"{name} has no rows")
    if require_answers:
        examples = batch_to_examples(ds[:])
        empty = [i for i, ex in enumerate(examples) if not ex.response.strip()]
        if empty:
            shown = ", ".join(map(str, empty[:5])) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
            first = examples[empty[0]].instruction.replace("\n", " ")
            noun, verb = ("task", "has") if len(empty) == 1 else ("tasks", "have")
            raise ValueError(f"{name}: {noun} {shown} (of {len(ds)}, counting from 0) {verb} an empty answer "
                             f"(task {empty[0]}: {first[:60]!r}); every task needs an answer to score against: "
                             "fill it in or remove the row")
    return ds


def refine_task_set(ds: Dataset, *, k: int = 100, sample: int = 1000, encoder=None, seed: int = 0,
                    batch_size: int = 64) -> Dataset:
    """The ``k`` rows nearest the k-means centroids of a random ``sample`` of ``ds`` (SuperNUGGETS).

    Deterministic for a seed. The result keeps ``ds``'s columns and adds ``source_index`` (the row's index
    in ``ds``), ``cluster`` (its centroid) and ``cluster_size`` (sampled rows in that cluster), ordered by
    cluster. ``encoder``: a sentence-transformers name or object (default: all-MiniLM-L6-v2, embedded).
    """
    from sklearn.cluster import KMeans

    n = min(sample, len(ds))
    require_int("k", k, 1, n, hint="k is at most the sample size (sample, or the task set's rows if fewer)")
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(ds), size=n, replace=False))
    rows = ds.select(picked)
    texts = [ex.full_text() for ex in batch_to_examples(rows[:])]
    model = as_encoder(encoder)
    X = np.asarray(model.encode(texts, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True,
                                normalize_embeddings=True), dtype=np.float64)
    km = KMeans(n_clusters=k, random_state=seed, n_init=4).fit(X)
    distances = km.transform(X)  # (n, k)
    chosen, taken = [], set()
    for c in range(k):
        # The nearest sampled row to this centroid that no earlier centroid took (rows stay distinct).
        for j in np.argsort(distances[:, c], kind="stable"):
            if j not in taken:
                taken.add(j)
                chosen.append(int(j))
                break
    sizes = np.bincount(km.labels_, minlength=k)
    out = rows.select(chosen)
    return (out.add_column("source_index", [int(picked[j]) for j in chosen])
               .add_column("cluster", list(range(k)))
               .add_column("cluster_size", [int(s) for s in sizes]))
