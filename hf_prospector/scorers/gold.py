"""The golden score (NUGGETS, Li et al. 2023; SuperNUGGETS, Ma et al. 2024): a row is a "nugget" when,
used as a one-shot example, it makes the answers of a predefined task set more likely.

For each candidate row and each task, the task's answer log-probability is compared with the row
prepended as a one-shot example and without it (zero-shot). Zero-shot runs once per (model, task set,
settings) and is cached in memory and on disk; the candidate is encoded once and its key/value cache
reused for every task (tasks batched), with log-probabilities only at answer positions.

Conventions:

* ``exact`` (default): the candidate is ``BOS + context + response + "\\n\\n"`` under the template
  (``plain`` or ``alpaca``); each task is ``context + answer``, tokenized in parts as in
  :mod:`hf_prospector.encoding`, and the zero-shot pass puts BOS in front of the task. The task's ids are
  identical in both passes. Budgets: tasks ``task_max_length`` (default 256) tokens, candidates the rest
  of ``max_length``; longer ones are truncated as in :mod:`hf_prospector.encoding`, with a note.
* ``nuggets``: NUGGETS' ``instruction_main.py``: fields stripped, ``Instruction:\\n{instruction}\\n
  [Input:\\n{input}\\n]Response:\\n{output}``; the candidate tokenized with the tokenizer's special tokens and
  not truncated, tasks without special tokens and cut at 200 tokens (a task whose prompt fills those 200
  tokens scores 0 in both passes, a loss for every candidate, as in the script). An empty candidate
  response is scored, as the script does.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
from datasets import Features, Value

from ..encoding import PairEncoder
from ..engine import Engine, Request
from ..formats import Example, batch_to_examples
from ..models import cache_dir
from ..tasksets import load_task_set
from ..utils import atomic_write, require_int
from .base import Scorer, within_window

GOLD_FEATURES = Features({"gold_score": Value("float64"), "gold_delta": Value("float64"), "gold_wins": Value("int64"),
                          "n_tasks": Value("int64"), "gold_note": Value("string")})
GOLD_COLUMNS = tuple(GOLD_FEATURES)
GOLD_CONVENTIONS = ("exact", "nuggets")
NUGGETS_TASK_TOKENS = 200
_SEPARATOR = "\n\n"


@dataclass
class EncodedTask:
    """A task's ids (no BOS), where its answer starts, and the zero-shot prefix to put before it."""

    ids: list[int]
    start: int
    zero_prefix: list[int]
    note: str = ""


def nuggets_prompt(ex: Example) -> tuple[str, str]:
    """NUGGETS' ``sp`` prompt: (query, query + output), fields stripped."""
    instruction, input_ = ex.instruction.strip(), ex.input.strip()
    if ex.messages and not instruction:
        instruction = ex.messages[-1]["content"].strip()
    query = f"Instruction:\n{instruction}\n" + (f"Input:\n{input_}\n" if input_ else "") + "Response:\n"
    return query, query + ex.response.strip()


class GoldEncoder:
    """Token ids of candidates and tasks under one convention, template and budget."""

    def __init__(self, tokenizer, convention: str, template: str, max_length: int, task_max_length: int,
                 budget: str | None = None, window: int | None = None):
        self.tokenizer = tokenizer
        self.window = window  # the model's context window: NUGGETS' uncut candidates must still fit in it
        self.convention = convention
        self.task_max_length = task_max_length
        self.separator = self.ids(_SEPARATOR)
        budget = budget or f"max_length={max_length}"
        if max_length - task_max_length - len(self.separator) < 2:
            raise ValueError(f"{budget} leaves no room for a candidate beside task_max_length={task_max_length}; "
                             "lower task_max_length")
        self.pairs = PairEncoder(tokenizer, template, task_max_length, min_response_tokens=16)
        self.candidates = PairEncoder(tokenizer, template, max_length - task_max_length - len(self.separator),
                                      min_response_tokens=16,
                                      budget=f"{budget} less task_max_length={task_max_length}")
        self.bos = self.pairs.cond_prefix

    def ids(self, text: str, special: bool = False) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def task(self, ex: Example) -> EncodedTask:
        if self.convention == "nuggets":
            query, full = nuggets_prompt(ex)
            ids = self.ids(full)
            start = len(self.ids(query))
            note = f"task cut to {NUGGETS_TASK_TOKENS} of {len(ids)} tokens" if len(ids) > NUGGETS_TASK_TOKENS else ""
            return EncodedTask(ids[:NUGGETS_TASK_TOKENS], min(start, NUGGETS_TASK_TOKENS), [], note)
        enc = self.pairs.encode(ex)
        if enc.cond is None:
            raise ValueError(f"task cannot be scored: {enc.note}")
        p = len(self.bos)
        return EncodedTask(enc.cond[p:], enc.cond_start - p, self.bos, enc.note)

    def candidate(self, ex: Example) -> tuple[list[int] | None, str]:
        """The one-shot prefix for a candidate, or None and the reason it cannot be scored."""
        if self.convention == "nuggets":
            if ex.reason:  # the script scores an empty response, not a row it cannot read
                return None, ex.nan_note()
            note = "empty response (scored, as the NUGGETS script does)" if not ex.response.strip() else ""
            ids = self.ids(nuggets_prompt(ex)[1], special=True)
            if self.window is not None and len(ids) + NUGGETS_TASK_TOKENS > self.window:
                return None, (f"NaN: the candidate's {len(ids)} tokens and a {NUGGETS_TASK_TOKENS}-token task exceed "
                              f"the model's context window of {self.window} tokens")
            return ids, note
        enc = self.candidates.encode(ex)  # BOS + context + response, exactly tokenized, within budget
        if enc.cond is None:
            return None, enc.note
        return enc.cond + self.separator, f"candidate: {enc.note}" if enc.note else ""


class GoldScorer(Scorer):
    """Adds ``gold_score`` (share of tasks whose answer log-probability is strictly higher one-shot than
    zero-shot, in [0, 1]), ``gold_delta`` (mean over tasks of zero-shot minus one-shot mean token loss on the
    answer), ``gold_wins``, ``n_tasks`` and ``gold_note``.

    >>> ds = ds.map(GoldScorer(task_set="task_set_kmeans_100.json"), batched=True, batch_size=64)
    """

    features = GOLD_FEATURES

    def __init__(self, model: str | None = None, task_set=None, template: str | None = None,
                 convention: str = "exact", max_length: int = 1024, task_max_length: int = 256, **kwargs):
        require_int("max_length", max_length, 4)
        require_int("task_max_length", task_max_length, 2)
        if task_max_length + 2 >= max_length:
            raise ValueError(f"task_max_length={task_max_length} leaves no room for a candidate within "
                             f"max_length={max_length}: max_length must exceed task_max_length by more than the "
                             "separator and two tokens (e.g. max_length=1024, task_max_length=256)")
        super().__init__(model, **kwargs)
        if convention not in GOLD_CONVENTIONS:
            raise ValueError(f"unknown convention {convention!r}; choose one of {GOLD_CONVENTIONS}")
        if convention == "nuggets" and template not in (None, "nuggets"):
            raise ValueError(f"convention='nuggets' fixes NUGGETS' own prompt; it conflicts with template={template!r}")
        template = template or ("nuggets" if convention == "nuggets" else "plain")
        if convention == "exact" and template not in ("plain", "alpaca"):
            raise ValueError(f"the golden score supports template 'plain' or 'alpaca', got {template!r}")
        if task_set is None:
            raise ValueError("GoldScorer needs task_set=: a file, a Dataset or a Hub id of tasks "
                             "(e.g. the NUGGETS set task_set_kmeans_100.json, or refine_task_set(...))")
        tasks = load_task_set(task_set)
        self.task_rows = tasks[:]  # plain columns: pickles and hashes by content
        self.n_tasks = len(tasks)
        self.task_set_hash = hashlib.sha256(json.dumps(self.task_rows, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.convention = convention
        self.template = template
        self.max_length = max_length
        self.task_max_length = task_max_length
        self._zero_shot: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.zero_shot_runs = 0  # zero-shot passes actually computed (not served from a cache)

    def settings(self):
        return {**super().settings(), "convention": self.convention, "template": self.template,
                "max_length": self.max_length, "task_max_length": self.task_max_length,
                "task_set": self.task_set_hash, "n_tasks": self.n_tasks}

    def __getstate__(self):
        state = super().__getstate__()
        state["_zero_shot"] = {}
        state["zero_shot_runs"] = 0
        return state

    # -- zero-shot, cached -------------------------------------------------------------------------
    def _encoder(self, engine: Engine) -> GoldEncoder:
        max_length, budget = within_window(self.max_length, engine)
        return GoldEncoder(engine.tokenizer, self.convention, "plain" if self.template == "nuggets" else self.template,
                           max_length, self.task_max_length, budget, engine.context_window)

    def _encoded_tasks(self, encoder: GoldEncoder) -> list[EncodedTask]:
        return [encoder.task(ex) for ex in batch_to_examples(self.task_rows, turn=self.turn)]

    def zero_shot(self, engine: Engine, tasks: list[EncodedTask]) -> tuple[np.ndarray, np.ndarray]:
        """Per task: (sum of answer log-probs, mean answer loss), computed once per settings and tasks."""
        key = hashlib.sha256(json.dumps([self.model, self.revision, self.model_fingerprint, str(engine.dtype),
                                         engine.device.type,
                                         self.convention, [(t.zero_prefix, t.ids, t.start) for t in tasks]])
                             .encode()).hexdigest()[:24]
        if key in self._zero_shot:
            return self._zero_shot[key]
        path = cache_dir() / "zero_shot" / f"{key}.npz"
        if path.exists():
            with np.load(path) as f:
                self._zero_shot[key] = (f["sums"], f["means"])
            return self._zero_shot[key]
        scorable = [k for k, t in enumerate(tasks) if t.start < len(t.ids)]
        lps = engine.logprobs([Request(tasks[k].zero_prefix + tasks[k].ids,
                                       len(tasks[k].zero_prefix) + tasks[k].start) for k in scorable])
        sums, means = np.zeros(len(tasks)), np.zeros(len(tasks))
        for k, lp in zip(scorable, lps):
            sums[k], means[k] = lp.sum(), -lp.mean()
        self.zero_shot_runs += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: np.savez(tmp, sums=sums, means=means))
        self._zero_shot[key] = (sums, means)
        return sums, means

    # -- one-shot ---------------------------------------------------------------------------------
    def score_examples(self, examples, engine: Engine) -> dict[str, list]:
        encoder = self._encoder(engine)
        tasks = self._encoded_tasks(encoder)
        zero_sums, zero_means = self.zero_shot(engine, tasks)
        scorable = [k for k, t in enumerate(tasks) if t.start < len(t.ids)]
        task_notes = sum(1 for t in tasks if t.note)
        out = {c: [None] * len(examples) for c in self.columns}
        candidates = [encoder.candidate(ex) for ex in examples]
        # Longest first, as the engine does within a call: similar cache sizes run back to back.
        for i in sorted(range(len(examples)), key=lambda i: -len(candidates[i][0] or [])):
            prefix, note = candidates[i]
            notes = [note] if note else []
            if task_notes:
                notes.append(f"{task_notes} task(s) truncated to the task budget")
            if prefix is None:
                row = (math.nan, math.nan, 0)
            else:
                lps = engine.prefixed_logprobs(prefix, [Request(tasks[k].ids, tasks[k].start) for k in scorable])
                one_sums, one_means = np.zeros(len(tasks)), np.zeros(len(tasks))
                for k, lp in zip(scorable, lps):
                    one_sums[k], one_means[k] = lp.sum(), -lp.mean()
                wins = int(np.sum(one_sums > zero_sums))
                row = (wins / len(tasks), float(np.mean(zero_means - one_means)), wins)
            out["gold_score"][i], out["gold_delta"][i], out["gold_wins"][i] = row
            out["n_tasks"][i] = len(tasks)
            out["gold_note"][i] = "; ".join(notes)
        return out
