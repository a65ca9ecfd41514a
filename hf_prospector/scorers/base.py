"""What every scorer shares: settings, lazy model loading, device choice and ``Dataset.map`` plumbing.

A scorer is a callable for ``ds.map(scorer, batched=True)`` (add ``with_rank=True`` to spread
``num_proc`` workers over the GPUs). It pickles as its settings alone, never its weights, so the
``datasets`` fingerprint is the same in every process and a re-run is served from the cache.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import __version__
from ..engine import Engine, release_freed_memory, resolve_compile
from ..formats import ColumnMapping, batch_to_examples
from ..models import DEFAULT_MODEL, load_causal_lm


FORKED_CUDA = (
    "this ds.map worker was forked from a process that had already used CUDA, and CUDA cannot start again in a "
    "forked process. Before ds.map(..., num_proc=...), call multiprocess.set_start_method('spawn', force=True) "
    "(workers then start fresh; a scorer travels as its settings and loads its own model), or run the "
    "multi-process map before anything in this process uses the GPU")


def pick_device(device: str | None, rank: int | None) -> str:
    """An explicit device wins; otherwise GPU ``rank % count`` (GPU 0 without a rank), or the CPU."""
    if device is not None:
        return device
    if torch.cuda.is_available():
        return f"cuda:{(rank or 0) % torch.cuda.device_count()}"
    return "cpu"


class Scorer:
    """Base class: subclasses set ``columns`` and implement :meth:`score_examples`."""

    columns: tuple[str, ...] = ()

    def __init__(self, model: str | None = None, revision: str | None = None, dtype: str = "auto",
                 device: str | None = None, token_budget: int | None = None,
                 columns: ColumnMapping | dict | None = None, turn: str = "last", compile: bool | str | None = None):
        self.model = model or DEFAULT_MODEL
        self.revision = revision
        self.dtype = dtype
        self.device = device
        self.token_budget = token_budget
        self.mapping = ColumnMapping(**columns) if isinstance(columns, dict) else columns
        if turn not in ("last", "first"):
            raise ValueError(f"turn must be 'last' or 'first', got {turn!r}")
        self.turn = turn
        resolve_compile(compile)  # a bad value fails here, not in a worker
        self.compile = compile  # None: HF_PROSPECTOR_COMPILE or "auto", read where the engine starts
        self._engines: dict[str, Engine] = {}

    # -- settings and pickling ---------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Everything that changes the scores; recorded in provenance and hashed into the fingerprint."""
        return {"scorer": type(self).__name__, "model": self.model, "revision": self.revision, "dtype": self.dtype,
                "columns": None if self.mapping is None else vars(self.mapping), "turn": self.turn,
                "library_version": __version__}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_engines"] = {}  # weights never travel; each process loads its own lazily
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
                # A forked `num_proc` worker inherits OpenMP's thread-pool state from its parent, and a
                # parallel region there can hang: one thread per worker is safe (use num_proc = cores).
                torch.set_num_threads(1)
            model, tokenizer = load_causal_lm(self.model, self.revision)
            self._engines[device] = Engine(model, tokenizer, device, self.dtype, self.token_budget, self.compile)
        return self._engines[device]

    # -- Dataset.map --------------------------------------------------------------------------------
    def __call__(self, batch: dict[str, list], *extra) -> dict:
        """``datasets`` passes ``(batch)``, ``(batch, rank)``, ``(batch, indices)`` or ``(batch, indices, rank)``.

        Errors name a row by its dataset index (only ``with_indices=True`` passes them) or its ``row_id``;
        with neither, by its place in this batch, said as such.
        """
        indices = next((e for e in extra if isinstance(e, list)), None)  # only with ds.map(with_indices=True)
        rank = next((e for e in extra if isinstance(e, int)), None)
        examples = batch_to_examples(batch, self.mapping, indices, self.turn, map_batch=True)
        scores = self.score_examples(examples, self.engine(rank))
        release_freed_memory()  # keeps a long run's memory flat (see the function)
        return scores

    def score_examples(self, examples, engine: Engine) -> dict[str, list]:
        raise NotImplementedError
