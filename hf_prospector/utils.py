"""Small helpers the whole library shares, each written once: the row id, checks of user-given settings,
score columns as numbers, Markdown tables, atomic writes, violin plots and sentence encoders.

Cheap to import: numpy, pyarrow and matplotlib load inside the helpers that need them.
"""

from __future__ import annotations

import math
import numbers
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

# The column that names a row: shards, resumed runs, cards and reports match rows by it.
ROW_ID = "row_id"


# -- checks ---------------------------------------------------------------------------------------------------
def require_int(name: str, value: Any, minimum: int, maximum: int | None = None, *, hint: str = "",
                error: type[ValueError] = ValueError) -> int:
    """``value`` as an int if it is an integer (not a bool) in ``[minimum, maximum]``; else ``error`` (a
    ValueError) naming the setting, the value and the allowed range (then ``hint``), before any work starts."""
    allowed = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"
    hint = f"; {hint}" if hint else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # numpy integers count
        raise error(f"{name} must be {allowed}, got {value!r} ({type(value).__name__}){hint}")
    if value < minimum or (maximum is not None and value > maximum):
        raise error(f"{name} must be {allowed}, got {value}{hint}")
    return int(value)


def require_unique_row_ids(values: Iterable, *, where: str = "",
                           fix: str = "make it unique, or rename or drop it to have the row positions used"
                           ) -> dict[Any, int]:
    """The position of each row id; a repeated one is a ValueError naming it and its two rows (``where``: the
    dataset, e.g. ``"'B': "``; ``fix``: what the user can do)."""
    position: dict[Any, int] = {}
    for i, value in enumerate(values):
        if value in position:
            raise ValueError(f"{where}column {ROW_ID!r} repeats the value {value!r} (rows {position[value]} and {i}); "
                             f"{ROW_ID} must identify rows: {fix}")
        position[value] = i
    return position


# -- columns --------------------------------------------------------------------------------------------------
def renamed_keyword(new: str, new_value: Any, old: str, old_value: Any, *, stacklevel: int = 3) -> Any:
    """The value of keyword ``new``, taking it from its old name ``old`` with a DeprecationWarning (both given: an
    error), so a renamed option keeps working for a release. ``stacklevel`` 3 points the warning at the caller of
    the function that calls this one."""
    if old_value is None:
        return new_value
    if new_value is not None:
        raise ValueError(f"give {new}= only: {old}= is its old name")
    warnings.warn(f"{old}= is now {new}=", DeprecationWarning, stacklevel=stacklevel)
    return old_value


def require_column(ds, name: str, what: str, fix: str) -> None:
    """A KeyError naming the missing column (``what``: e.g. "score column"), the columns there are and ``fix``."""
    if name not in ds.column_names:
        raise KeyError(f"the dataset has no {what} {name!r}; columns: {ds.column_names}. {fix}")


def numeric_kind(feature: Any) -> str | None:
    """``"float"``, ``"int"`` or ``"null"`` (every value missing) for a numeric ``datasets.Value``, else None."""
    import pyarrow as pa
    from datasets import Value

    if not isinstance(feature, Value):
        return None
    kind = feature.pa_type
    return ("float" if pa.types.is_floating(kind) else "int" if pa.types.is_integer(kind)
            else "null" if pa.types.is_null(kind) else None)


def float_column(ds, name: str):
    """A dataset column as a float64 numpy array in row order, read through Arrow; nulls become NaN."""
    import numpy as np

    values = ds.with_format("arrow", columns=[name])[:][name]
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)


# -- text -----------------------------------------------------------------------------------------------------
def format_number(value: float | None, spec: str = ".3f") -> str:
    """``value`` formatted with ``spec``; ``"n/a"`` for None or NaN (a statistic with no data)."""
    return "n/a" if value is None or math.isnan(value) else format(value, spec)


def markdown_table(header: Sequence, rows: Iterable[Sequence], *, pad: bool = False) -> str:
    """A Markdown table; cells are converted with ``str`` and "|" is escaped. ``pad`` aligns the columns,
    for tables read in a terminal."""
    cells = [[str(cell).replace("|", "\\|") for cell in row] for row in [header, *rows]]
    if pad:
        widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
        cells = [[cell.ljust(width) for cell, width in zip(row, widths)] for row in cells]
        rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    else:
        rule = "| " + " | ".join(["---"] * len(header)) + " |"
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join([lines[0], rule, *lines[1:]])


# -- files ----------------------------------------------------------------------------------------------------
def atomic_write(path: str | Path, write: Callable[[Path], Any], *, clear: bool = False) -> Path:
    """Write ``path`` whole or not at all: ``write(tmp)`` fills a temporary file or folder beside it (same
    suffix, so writers that add one do not), which then replaces ``path`` in one ``os.replace``. A failure
    removes the temporary path and leaves ``path`` as it was. A folder cannot be replaced in one step:
    ``clear=True`` removes an existing ``path`` first; without it, replacing a non-empty folder raises OSError."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        write(tmp)
        if clear:
            remove_path(path)
        os.replace(tmp, path)
    finally:
        remove_path(tmp)  # still there only when something failed
    return path


def remove_path(path: str | Path) -> None:
    """Remove a file or a folder tree, if there is one."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# -- figures --------------------------------------------------------------------------------------------------
def new_figure(width: float, height: float):
    """A ``matplotlib.figure.Figure`` on the Agg canvas: no pyplot state, no display. Loads matplotlib."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


Groups = Sequence[tuple[str, Any]]  # (label, values): one violin each, drawn left to right


def violin_figure(panels: Sequence[tuple[str, Groups]], width: float, height: float = 4, *,
                  colors: Mapping[str, str] | None = None):
    """A figure with one panel per ``(y label, groups)``, and in it a violin of each group's finite values
    (the caller's table counts the others), labelled below; a group with fewer than two distinct values has no
    kernel density and is drawn as points. ``colors`` maps a group label to its colour. Returns the figure and
    its axes, for the caller to mark and save."""
    import numpy as np

    fig = new_figure(width, height)
    axes = list(np.atleast_1d(fig.subplots(1, len(panels))))
    for ax, (ylabel, groups) in zip(axes, panels):
        for position, (label, values) in enumerate(groups, start=1):
            values = np.asarray(values, dtype=np.float64)
            finite = values[np.isfinite(values)]
            color = (colors or {}).get(label)
            if len(np.unique(finite)) >= 2:
                body = ax.violinplot([finite], positions=[position], showmedians=True)
                if color:
                    body["bodies"][0].set_facecolor(color)
            else:
                ax.plot(np.full(len(finite), position), finite, "o", color=color)
        ax.set_xticks(range(1, len(groups) + 1), [label for label, _ in groups])
        ax.set_ylabel(ylabel)
    return fig, axes


# -- models ---------------------------------------------------------------------------------------------------
def as_encoder(encoder: Any = None):
    """A sentence encoder: ``encoder`` itself when it is an object with ``encode(texts)``, else the one it
    names loaded by :func:`hf_prospector.models.load_encoder` (None: the default all-MiniLM-L6-v2)."""
    if encoder is None or isinstance(encoder, str):
        from .models import load_encoder

        return load_encoder(encoder)
    return encoder
