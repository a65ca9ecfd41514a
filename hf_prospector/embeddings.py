"""Sentence embeddings as a dataset column, computed once and reused.

The column is the cache: a dataset that already has it comes back unchanged, with no encoder loaded or
called, so a second selection with another ``k`` costs no encoding. The column *name* says what made the
vectors, because a name survives every ``datasets`` operation, ``save_to_disk``, Parquet/JSON and the Hub,
where schema metadata may not: by default it is ``embedding_<encoder name>`` (``embedding_all-minilm-l6-v2``)
over the row's full text (instruction, input and response, :meth:`Example.full_text`). An encoder given as
an object has no reliable name and a custom ``text_fn`` embeds other text, so both need an explicit
``column``; the caller then owns the name.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset
from datasets.fingerprint import Hasher

from .formats import ColumnMapping, batch_to_examples
from .models import DEFAULT_ENCODER
from .utils import as_encoder, renamed_keyword, require_column


def default_embedding_column(encoder: str | None = None) -> str:
    """The default cache column for an encoder name, e.g. ``embedding_all-minilm-l6-v2``."""
    return "embedding_" + re.sub(r"[^A-Za-z0-9._-]+", "-", encoder or DEFAULT_ENCODER).strip("-")


def cache_column(encoder: Any = None, column: str | None = None, text_fn: Callable | None = None) -> str:
    """The embedding column to use: ``column`` if given, else the default for an encoder name."""
    if column is not None:
        return column
    if not (encoder is None or isinstance(encoder, str)):
        raise ValueError("an encoder object carries no reliable name: pass column=... to name its cache "
                         "column, e.g. column=default_embedding_column('my-encoder')")
    if text_fn is not None:
        raise ValueError("a custom text_fn embeds other text than the default: pass column=... so cached "
                         "embeddings of different texts never mix")
    return default_embedding_column(encoder)


def embed_column(ds: Dataset, *, encoder: Any = None, column: str | None = None,
                 text_fn: Callable[[dict], str] | None = None, mapping: ColumnMapping | None = None,
                 columns: ColumnMapping | None = None,
                 batch_size: int = 64) -> Dataset:
    """``ds`` with a float32 embedding column (one vector per row), encoding only if the column is absent.

    ``encoder``: an encoder name for :func:`hf_prospector.models.load_encoder` (default all-MiniLM-L6-v2,
    loaded only when needed) or any object with a sentence-transformers ``encode(texts)``.
    ``text_fn(row) -> str`` replaces the default text; ``mapping`` maps a non-standard row layout
    (``columns`` is its old name).
    """
    mapping = renamed_keyword("mapping", mapping, "columns", columns)
    column = cache_column(encoder, column, text_fn)
    if column in ds.column_names:
        return ds
    model = as_encoder(encoder)

    def encode(batch: dict[str, list], indices: list[int]) -> dict[str, np.ndarray]:
        texts = _texts(batch, indices, text_fn, mapping)
        vectors = model.encode(texts, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True)
        return {column: np.asarray(vectors, dtype=np.float32)}

    # Our own fingerprint: datasets would otherwise hash the encoder's weights on every call.
    fingerprint = Hasher.hash((ds._fingerprint, "embed_column", column, text_fn, mapping))
    return ds.map(encode, batched=True, with_indices=True, new_fingerprint=fingerprint,
                  desc=f"Embedding into {column!r}")


def embedding_matrix(ds: Dataset, column: str) -> np.ndarray:
    """The embedding column as an ``(n, d)`` float32 array; a clear error for missing or ragged rows."""
    require_column(ds, column, "embedding column", "Add it with embed_column(ds, ...).")
    values = ds.with_format("arrow", columns=[column])[:][column].combine_chunks()
    if not (pa.types.is_list(values.type) or pa.types.is_fixed_size_list(values.type)
            or pa.types.is_large_list(values.type)):
        raise TypeError(f"column {column!r} holds {values.type}, not vectors")
    if len(values) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    missing = np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))
    if len(missing):
        raise ValueError(f"column {column!r} is null in rows {missing[:10].tolist()}; drop the column and "
                         "embed again")
    lengths = pc.list_value_length(values).to_numpy()
    ragged = np.flatnonzero(lengths != lengths[0])
    if len(ragged):
        raise ValueError(f"column {column!r}: rows {ragged[:10].tolist()} have vectors of another length "
                         f"than row 0 ({lengths[0]}); the column mixes encoders, embed again")
    flat = values.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(len(values), int(lengths[0]))


def _texts(batch: dict[str, list], indices: list[int], text_fn, mapping) -> list[str]:
    if text_fn is None:
        return [e.full_text() for e in batch_to_examples(batch, mapping, indices)]
    keys = list(batch)
    texts = []
    for i, index in enumerate(indices):
        text = text_fn({k: batch[k][i] for k in keys})
        if not isinstance(text, str):
            raise TypeError(f"row {index}: text_fn returned {type(text).__name__}, expected a string")
        texts.append(text)
    return texts
