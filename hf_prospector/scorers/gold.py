"""The golden score (NUGGETS, Li et al. 2023; SuperNUGGETS, Ma et al. 2024): a row is a "nugget" when,
used as a one-shot example, it makes the answers of a predefined task set more likely.

For each candidate row and each task, the task's answer log-probability is compared with the row
prepended as a one-shot example and without it (zero-shot). Zero-shot runs once per (model, task set,
settings) and is cached in memory and on disk; the candidate is encoded once and its key/value cache
reused for every task (tasks batched), with log-probabilities only at answer positions.

Conventions (how candidates and tasks are tokenized): ``exact`` (default) and ``nuggets``, NUGGETS' own
``instruction_main.py``; see :mod:`hf_prospector.encoders.gold`.

The task set loads on first need (scoring, :meth:`GoldScorer.settings`, pickling), so building a scorer
checks its settings alone. Per engine, the tasks are encoded once and their zero-shot results computed
once, together (:class:`GoldTasks`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
from datasets import Features, Value

from ..encoders import EncodedTask, GoldEncoder, conventions, encoder_class, make_encoder
from ..encoders.gold import GOLD_TEMPLATES
from ..engine import Engine, Request
from ..formats import batch_to_examples
from ..models import cache_dir
from ..sources import local_path
from ..tasksets import load_task_set
from ..utils import atomic_write, require_int
from .base import Scorer, within_window

GOLD_FEATURES = Features({"gold_score": Value("float64"), "gold_delta": Value("float64"), "gold_wins": Value("int64"),
                          "n_tasks": Value("int64"), "gold_note": Value("string")})
GOLD_COLUMNS = tuple(GOLD_FEATURES)
GOLD_CONVENTIONS = conventions("gold")


@dataclass
class GoldTasks:
    """The task set as one engine scores it, built once: the encoded tasks and their zero-shot results."""

    tasks: list[EncodedTask]
    zero_sums: np.ndarray  # per task: sum of the answer's log-probs without a candidate
    zero_means: np.ndarray  # per task: mean answer loss without a candidate

    @property
    def scorable(self) -> list[int]:
        """Tasks with at least one answer token (NUGGETS' cut can leave none)."""
        return [k for k, t in enumerate(self.tasks) if t.start < len(t.ids)]

    @property
    def truncated(self) -> int:
        return sum(1 for t in self.tasks if t.note)


class GoldScorer(Scorer):
    """Adds ``gold_score`` (share of tasks whose answer log-probability is strictly higher one-shot than
    zero-shot, in [0, 1]), ``gold_delta`` (mean over tasks of zero-shot minus one-shot mean token loss on the
    answer), ``gold_wins``, ``n_tasks`` and ``gold_note``.

    >>> ds = ds.map(GoldScorer(task_set="task_set_kmeans_100.json"), batched=True, batch_size=64)
    """

    features = GOLD_FEATURES

    def __init__(self, model: str | None = None, *, task_set=None, template: str | None = None,
                 convention: str = "exact", max_length: int = 1024, task_max_length: int = 256, **kwargs):
        """``task_set``: a file, a Dataset or a Hub id of tasks, loaded on first need (a missing local file fails
        here)."""
        require_int("max_length", max_length, 4)
        require_int("task_max_length", task_max_length, 2)
        if task_max_length + 2 >= max_length:
            raise ValueError(f"task_max_length={task_max_length} leaves no room for a candidate within "
                             f"max_length={max_length}: max_length must exceed task_max_length by more than the "
                             "separator and two tokens (e.g. max_length=1024, task_max_length=256)")
        super().__init__(model, **kwargs)
        if self.turn == "all":
            raise ValueError("turn='all' scores every assistant turn, which IFD does; a golden-score candidate is one "
                             "exchange: use turn='last' or 'first'")
        fixed = encoder_class("gold", convention).fixed_template
        if fixed is not None and template not in (None, fixed):
            raise ValueError(f"convention={convention!r} fixes its own prompt (template {fixed!r}); it conflicts with "
                             f"template={template!r}")
        template = template or fixed or "plain"
        if fixed is None and template not in GOLD_TEMPLATES:
            raise ValueError(f"the golden score supports template {' or '.join(map(repr, GOLD_TEMPLATES))}, "
                             f"got {template!r}")
        if task_set is None:
            raise ValueError("GoldScorer needs task_set=: a file, a Dataset or a Hub id of tasks "
                             "(e.g. the NUGGETS set task_set_kmeans_100.json, or refine_task_set(...))")
        path = local_path(task_set) if isinstance(task_set, str) else None
        if path is not None and not path.exists():
            raise FileNotFoundError(f"the task set file {task_set} does not exist (read as a local path, not a Hub id); "
                                    "check the path")
        self.convention = convention
        self.template = template
        self.max_length = max_length
        self.task_max_length = task_max_length
        self._task_source = task_set  # read on first need (_load_tasks)
        self._task_rows: dict[str, list] | None = None
        self._task_set_hash: str | None = None
        self.zero_shot_runs = 0  # zero-shot passes actually computed (not served from a cache)

    # -- the task set, loaded on first need --------------------------------------------------------
    def _load_tasks(self) -> None:
        """Read the task set on first need (scoring, settings(), pickling): building the scorer reads no file."""
        if self._task_rows is None:
            tasks = load_task_set(self._task_source)
            self._task_rows = tasks[:]
            self._task_set_hash = hashlib.sha256(json.dumps(self._task_rows, sort_keys=True, default=str)
                                                 .encode()).hexdigest()[:16]
            self._task_source = None  # the rows stand for it from now on

    @property
    def task_rows(self) -> dict[str, list]:
        """The task set's rows as plain columns (they pickle and hash by content)."""
        self._load_tasks()
        return self._task_rows

    @property
    def n_tasks(self) -> int:
        return len(next(iter(self.task_rows.values())))

    @property
    def task_set_hash(self) -> str:
        """The tasks' content hash (in :meth:`settings`, so in provenance)."""
        self._load_tasks()
        return self._task_set_hash

    def settings(self):
        return {**super().settings(), "convention": self.convention, "template": self.template,
                "max_length": self.max_length, "task_max_length": self.task_max_length,
                "task_set": self.task_set_hash, "n_tasks": self.n_tasks}

    def __getstate__(self):
        self._load_tasks()  # the datasets fingerprint pickles the scorer: the tasks' content must be in it
        state = super().__getstate__()
        state["zero_shot_runs"] = 0
        return state

    # -- encoded tasks and zero-shot, once per engine ------------------------------------------------
    def build_encoder(self, engine: Engine) -> GoldEncoder:
        max_length, budget = within_window(self.max_length, engine)
        return make_encoder("gold", self.convention, engine.tokenizer, template=self.template, max_length=max_length,
                            task_max_length=self.task_max_length, budget=budget, window=engine.context_window)

    def tasks(self, engine: Engine) -> GoldTasks:
        """The task set encoded for ``engine`` and its zero-shot results, computed once per engine."""
        return self.per_engine(engine, "tasks", lambda: self._zero_shot(engine))

    def _zero_shot(self, engine: Engine) -> GoldTasks:
        """Encode the tasks and score them zero-shot, or read those scores from the disk cache (keyed by the
        weights, dtype, device type, convention and the tasks' ids)."""
        encoder = self.encoder(engine)
        tasks = [encoder.task(ex) for ex in batch_to_examples(self.task_rows, turn=self.turn)]
        key = hashlib.sha256(json.dumps([self.model, self.revision, self.model_fingerprint, str(engine.dtype),
                                         engine.device.type,
                                         self.convention, [(t.zero_prefix, t.ids, t.start) for t in tasks]])
                             .encode()).hexdigest()[:24]
        path = cache_dir() / "zero_shot" / f"{key}.npz"
        if path.exists():
            with np.load(path) as f:
                return GoldTasks(tasks, f["sums"], f["means"])
        gold = GoldTasks(tasks, np.zeros(len(tasks)), np.zeros(len(tasks)))
        lps = engine.logprobs([Request(tasks[k].zero_prefix + tasks[k].ids,
                                       len(tasks[k].zero_prefix) + tasks[k].start) for k in gold.scorable])
        for k, lp in zip(gold.scorable, lps):
            gold.zero_sums[k], gold.zero_means[k] = lp.sum(), -lp.mean()
        self.zero_shot_runs += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: np.savez(tmp, sums=gold.zero_sums, means=gold.zero_means))
        return gold

    # -- one-shot ---------------------------------------------------------------------------------
    def score_examples(self, examples, engine: Engine) -> dict[str, list]:
        encoder, gold = self.encoder(engine), self.tasks(engine)
        tasks, scorable = gold.tasks, gold.scorable
        out = {c: [None] * len(examples) for c in self.score_columns}
        candidates = [encoder.candidate(ex) for ex in examples]
        # Longest first, as the engine does within a call: similar cache sizes run back to back.
        for i in sorted(range(len(examples)), key=lambda i: -len(candidates[i][0] or [])):
            prefix, note = candidates[i]
            notes = [note] if note else []
            if gold.truncated:
                notes.append(f"{gold.truncated} task(s) truncated to the task budget")
            if prefix is None:
                row = (math.nan, math.nan, 0)
            else:
                lps = engine.prefixed_logprobs(prefix, [Request(tasks[k].ids, tasks[k].start) for k in scorable])
                one_sums, one_means = np.zeros(len(tasks)), np.zeros(len(tasks))
                for k, lp in zip(scorable, lps):
                    one_sums[k], one_means[k] = lp.sum(), -lp.mean()
                wins = int(np.sum(one_sums > gold.zero_sums))
                row = (wins / len(tasks), float(np.mean(gold.zero_means - one_means)), wins)
            out["gold_score"][i], out["gold_delta"][i], out["gold_wins"][i] = row
            out["n_tasks"][i] = len(tasks)
            out["gold_note"][i] = "; ".join(notes)
        return out
