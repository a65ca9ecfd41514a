"""What every scorer shares: settings, lazy model loading, device choice and ``Dataset.map`` plumbing.

A scorer is a callable for ``ds.map(scorer, batched=True)`` (add ``with_rank=True`` to spread
``num_proc`` workers over the GPUs). It pickles as its settings alone, never its weights, so the
``datasets`` fingerprint is the same in every process and a re-run is served from the cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import numpy as np
import torch
from datasets import Dataset, Features, IterableDataset

from .. import __version__
from ..engine import Engine, resolve_compile, resolve_dtype
from ..formats import TURNS, ColumnMapping, batch_to_examples
from ..models import DEFAULT_MODEL, load_causal_lm, model_fingerprint
from ..utils import renamed_keyword, require_int


FORKED_CUDA = (
    "this ds.map worker was forked from a process that had already used CUDA, and CUDA cannot start again in a "
    "forked process. Before ds.map(..., num_proc=...), call multiprocess.set_start_method('spawn', force=True) "
    "(workers then start fresh; a scorer travels as its settings and loads its own model), or run the "
    "multi-process map before anything in this process uses the GPU")


def check_device(device: str | None) -> None:
    """A device this machine has: ``cuda`` without a GPU (or a GPU index past the last) is refused before any work."""
    if device is None:
        return
    try:
        where = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a device torch knows ({err}); use e.g. 'cpu', 'cuda' or 'cuda:1'") from None
    if where.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but torch sees no GPU here (torch {torch.__version__}); use "
                             "device='cpu', leave device unset to use a GPU when there is one, or install a CUDA build of torch")
        if where.index is not None and where.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r} but this machine has {torch.cuda.device_count()} GPU(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")


def pick_device(device: str | None, rank: int | None) -> str:
    """An explicit device wins; otherwise GPU ``rank % count`` (GPU 0 without a rank), or the CPU."""
    if device is not None:
        return device
    if torch.cuda.is_available():
        return f"cuda:{(rank or 0) % torch.cuda.device_count()}"
    return "cpu"


class Scorer:
    """Base class: subclasses set ``features`` (the score columns and their types) and implement
    :meth:`score_examples`."""

    features: Features = Features()

    @property
    def score_columns(self) -> tuple[str, ...]:
        """The names of the score columns."""
        return tuple(self.features)

    def __init__(self, model: str | None = None, *, revision: str | None = None, dtype: str = "auto",
                 device: str | None = None, token_budget: int | None = None,
                 mapping: ColumnMapping | dict | None = None, turn: str = "last", compile: bool | str | None = None,
                 columns: ColumnMapping | dict | None = None):
        """``mapping`` names the input columns (a :class:`ColumnMapping` or a dict); ``columns`` is its old name."""
        mapping = renamed_keyword("mapping", mapping, "columns", columns, stacklevel=4)  # past the subclass's __init__
        # Settings that cannot work fail here, not in a worker after the model has loaded.
        resolve_dtype(dtype, torch.device("cpu"))
        check_device(device)
        if token_budget is not None:
            require_int("token_budget", token_budget, 1)
        self.model = model or DEFAULT_MODEL
        self.revision = revision
        # The weights' identity (file sizes and times, or the Hub commit): a model retrained into the same folder
        # changes the fingerprint of the scores, so neither the datasets cache nor a resumed run serves stale ones.
        self.model_fingerprint = model_fingerprint(self.model, revision)
        self.dtype = dtype
        self.device = device
        self.token_budget = token_budget
        self.mapping = ColumnMapping(**mapping) if isinstance(mapping, dict) else mapping
        if turn not in TURNS:
            raise ValueError(f"turn must be one of {', '.join(map(repr, TURNS))}, got {turn!r}")
        self.turn = turn
        resolve_compile(compile)  # a bad value fails here, not in a worker
        self.compile = compile  # None: HF_PROSPECTOR_COMPILE or "auto", read where the engine starts
        self._engines: dict[str, Engine] = {}
        self._per_engine: dict[tuple[str, int], tuple[Engine, dict, Any]] = {}  # see per_engine
        self._rows_left: int | None = None  # see expect_rows

    # -- settings and pickling ---------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Everything that changes the scores; recorded in provenance and hashed into the fingerprint."""
        return {"scorer": type(self).__name__, "model": self.model, "revision": self.revision,
                "model_fingerprint": self.model_fingerprint, "dtype": self.dtype,
                "mapping": None if self.mapping is None else vars(self.mapping), "turn": self.turn,
                "library_version": __version__}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_engines"] = {}  # weights never travel; each process loads its own lazily
        state["_per_engine"] = {}  # nor what was built for them
        state["_rows_left"] = None  # nor this process's plan (it would change the datasets fingerprint)
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.settings().items())})"

    # -- model ------------------------------------------------------------------------------------
    def engine(self, rank: int | None = None) -> Engine:
        """The engine for this process's device, loaded on first use."""
        device = pick_device(self.device, rank)
        if device not in self._engines:
            if torch.device(device).type == "cuda" and torch.cuda._is_in_bad_fork():
                raise RuntimeError(FORKED_CUDA)
            if rank is not None and device == "cpu":
                # A forked `num_proc` worker inherits OpenMP's thread pool and the compiler's pool of compile
                # workers from its parent, and waiting on either there can hang (torch 2.7): one thread per worker
                # (use num_proc = cores), told to the compiler too (it bakes the count into its kernels), and
                # compiles in the worker itself.
                from torch._inductor import config as inductor_config

                torch.set_num_threads(1)
                inductor_config.cpp.threads = 1
                inductor_config.compile_threads = 1
            model, tokenizer = load_causal_lm(self.model, self.revision)
            self._engines[device] = Engine(model, tokenizer, device, self.dtype, self.token_budget, self.compile)
        return self._engines[device]

    def per_engine(self, engine: Engine, what: str, build: Callable[[], Any]) -> Any:
        """``build()``, once per engine and ``what``, kept beside the engine (and, like it, never pickled); a setting
        changed since is built anew, never served stale."""
        settings = self.settings()
        held = self._per_engine.get((what, id(engine)))
        if held is None or held[0] is not engine or held[1] != settings:
            held = self._per_engine[what, id(engine)] = (engine, settings, build())
        return held[2]

    def encoder(self, engine: Engine):
        """The encoder for ``engine``'s tokenizer and context window under this scorer's settings, built once."""
        return self.per_engine(engine, "encoder", lambda: self.build_encoder(engine))

    def build_encoder(self, engine: Engine):
        raise NotImplementedError

    # -- Dataset.map --------------------------------------------------------------------------------
    def __call__(self, batch: dict[str, list], *extra) -> dict:
        """``datasets`` passes ``(batch)``, ``(batch, rank)``, ``(batch, indices)`` or ``(batch, indices, rank)``.

        Errors name a row by its dataset index (only ``with_indices=True`` passes them) or its ``row_id``;
        with neither, by its place in this batch, said as such.

        A batch of lists (``datasets``' own) gets the score columns back. A numpy batch (a dict of arrays), an
        Arrow table or a pandas DataFrame -- Ray Data's ``map_batches`` formats -- comes back whole, in its
        format, with the score columns added (or replaced): ``map_batches`` keeps only the columns returned.
        """
        if is_array_batch(batch):
            return with_scores(batch, self._score_batch(to_lists(batch), extra), self.features)
        return self._score_batch(batch, extra)

    def _score_batch(self, batch: dict[str, list], extra: tuple) -> dict[str, list]:
        indices = next((e for e in extra if isinstance(e, list)), None)  # only with ds.map(with_indices=True)
        rank = next((e for e in extra if isinstance(e, int)), None)
        examples = batch_to_examples(batch, self.mapping, indices, self.turn, map_batch=True)
        engine = self.engine(rank)
        scores = self.score_examples(examples, engine)
        if self._rows_left is not None:
            self._rows_left = max(self._rows_left - len(examples), 0)
            engine.compiler.expect(len(examples), self._rows_left)
        return scores

    def expect_rows(self, rows: int | None) -> None:
        """How many rows this process will score from now on (None: unknown), so that ``compile="auto"`` compiles
        only when they repay the compile. :meth:`score` and the runner say it; a ``ds.map`` caller may."""
        if rows is not None:
            require_int("rows", rows, 0)
        self._rows_left = rows

    def score_examples(self, examples, engine: Engine) -> dict[str, list]:
        raise NotImplementedError

    def score(self, ds: Dataset | IterableDataset, **map_kwargs) -> Dataset | IterableDataset:
        """``ds.map(self, batched=True, with_indices=True, **map_kwargs)``, and a dataset of 0 rows gets the score
        columns too (typed, empty): ``Dataset.map`` returns an empty dataset unchanged, so the next step would
        find no score column."""
        if isinstance(ds, Dataset) and len(ds) == 0:
            return add_empty_columns(ds, self.features)
        if isinstance(ds, Dataset) and not map_kwargs.get("num_proc"):
            self.expect_rows(len(ds))
        try:
            return ds.map(self, batched=True, with_indices=True, **map_kwargs)
        finally:
            self.expect_rows(None)


def is_array_batch(batch) -> bool:
    """Whether ``batch`` is a numpy, Arrow or pandas batch rather than ``datasets``' mapping of lists."""
    if isinstance(batch, Mapping):
        return any(isinstance(v, np.ndarray) for v in batch.values())
    return True


def to_lists(batch) -> dict[str, list]:
    """A numpy, Arrow or pandas batch as ``datasets``' dict of lists of plain Python values."""
    import pyarrow as pa

    if isinstance(batch, pa.Table):
        return batch.to_pydict()
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # a pandas DataFrame
        return {str(c): [_plain(v) for v in batch[c]] for c in batch.columns}
    if isinstance(batch, Mapping):
        return {k: _plain(v) for k, v in batch.items()}
    raise TypeError(f"a scorer takes a batch as a dict of lists or numpy arrays, a pyarrow.Table or a pandas "
                    f"DataFrame, not {type(batch).__name__}")


def _plain(value):
    """Numpy arrays and scalars (Ray's numpy form of nested columns) as the lists and values ``datasets`` gives."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value] if value.dtype == object else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def with_scores(batch, scores: dict[str, list], features: Features):
    """``batch`` (numpy dict, Arrow table or DataFrame) with the ``scores`` columns, typed as ``features``, in
    place of any columns of the same names."""
    import pyarrow as pa

    arrays = {c: pa.array(v, type=features[c].pa_type) for c, v in scores.items()}
    if isinstance(batch, pa.Table):
        batch = batch.drop_columns([c for c in arrays if c in batch.column_names])
        for name, array in arrays.items():
            batch = batch.append_column(name, array)
        return batch
    columns = {c: a.to_numpy(zero_copy_only=False) for c, a in arrays.items()}
    if isinstance(batch, Mapping):
        return {**{k: v for k, v in batch.items() if k not in columns}, **columns}
    return batch.drop(columns=[c for c in columns if c in batch.columns]).assign(**columns)


def within_window(max_length: int, engine: Engine) -> tuple[int, str]:
    """``max_length`` capped at the model's context window, and how notes name that budget: a row scored past
    the positions the model was trained on would get a number that means nothing."""
    window = engine.context_window
    if window is None or max_length <= window:
        return max_length, f"max_length={max_length}"
    return window, f"the model's context window of {window} tokens (max_length={max_length} was asked)"


def add_empty_columns(ds: Dataset, features: Features) -> Dataset:
    """``ds`` (0 rows) with each column of ``features`` added, typed, replacing a column of the same name."""
    ds = ds.remove_columns([c for c in features if c in ds.column_names])
    for name, feature in features.items():
        ds = ds.add_column(name, [], feature=feature)
    return ds
