"""The golden score's encoders: a candidate becomes a one-shot prefix, a task the ids whose answer is scored.

* ``exact`` (default): the candidate is ``BOS + context + response + "\\n\\n"`` under the template
  (``plain`` or ``alpaca``); each task is ``context + answer``, tokenized in parts as in
  :mod:`hf_prospector.encoders.exact`, and the zero-shot pass puts BOS in front of the task. The task's ids
  are identical in both passes. Budgets: tasks ``task_max_length`` tokens, candidates the rest of
  ``max_length``; longer ones are truncated as in :mod:`hf_prospector.encoders.exact`, with a note.
  Under ``chat`` the candidate is a previous user/assistant exchange rendered by the tokenizer's chat template
  (its context and the assistant header, its response, the end-of-turn markup), and a task is its turns as the
  template renders them after an exchange, with the assistant header, then the answer; the zero-shot pass
  puts what the template opens a conversation with (BOS, a default system turn) in front of the task.
* ``nuggets``: NUGGETS' ``instruction_main.py``: fields stripped, ``Instruction:\\n{instruction}\\n
  [Input:\\n{input}\\n]Response:\\n{output}``; the candidate tokenized with the tokenizer's special tokens and
  not truncated, tasks without special tokens and cut at 200 tokens (a task whose prompt fills those 200
  tokens scores 0 in both passes, a loss for every candidate, as in the script). An empty candidate
  response is scored, as the script does.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..formats import Example
from .base import Encoder, register
from .exact import DEFAULT_MIN_RESPONSE_TOKENS, PairEncoder, chat_continuation, require_chat_template, turn_end

GOLD_TEMPLATES = ("plain", "alpaca", "chat")
NUGGETS_TASK_TOKENS = 200
SEPARATOR = "\n\n"


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


class GoldEncoder(Encoder):
    """Token ids of candidates (:meth:`candidate`) and tasks (:meth:`task`) under one convention, template and
    budget; each convention is a subclass."""

    def __init__(self, tokenizer, template: str, max_length: int, task_max_length: int,
                 budget: str | None = None, window: int | None = None):
        super().__init__(tokenizer)
        self.window = window  # the model's context window: NUGGETS' uncut candidates must still fit in it
        self.template = template
        self.task_max_length = task_max_length
        if template == "chat":
            require_chat_template(tokenizer)
        # Between the candidate and the task: a blank line, or the end of the candidate's assistant turn.
        self.separator = self.ids(turn_end(tokenizer) if template == "chat" else SEPARATOR)
        self.budget = budget or f"max_length={max_length}"
        self.candidate_length = max_length - task_max_length - len(self.separator)
        if self.candidate_length < 2:
            raise ValueError(f"{self.budget} leaves no room for a candidate beside task_max_length={task_max_length}; "
                             "lower task_max_length")

    def task(self, ex: Example) -> EncodedTask:
        raise NotImplementedError

    def candidate(self, ex: Example) -> tuple[list[int] | None, str]:
        """The one-shot prefix for a candidate, or None and the reason it cannot be scored."""
        raise NotImplementedError


@register("gold", "exact")
class ExactGoldEncoder(GoldEncoder):
    """Candidates and tasks exactly tokenized (context and response apart), each within its budget."""

    def __init__(self, tokenizer, template: str, max_length: int, task_max_length: int,
                 budget: str | None = None, window: int | None = None):
        super().__init__(tokenizer, template, max_length, task_max_length, budget, window)
        self.pairs = PairEncoder(tokenizer, template, task_max_length, DEFAULT_MIN_RESPONSE_TOKENS)
        self.candidates = PairEncoder(tokenizer, template, self.candidate_length, DEFAULT_MIN_RESPONSE_TOKENS,
                                      budget=f"{self.budget} less task_max_length={task_max_length}")

    def task(self, ex: Example) -> EncodedTask:
        if self.template == "chat":
            return self.chat_task(ex)
        enc = self.pairs.encode(ex)
        if enc.cond is None:
            raise ValueError(f"task cannot be scored: {enc.note}")
        p = len(self.bos)
        return EncodedTask(enc.cond[p:], enc.cond_start - p, self.bos, enc.note)

    def chat_task(self, ex: Example) -> EncodedTask:
        """The task's turns as they follow the candidate's exchange, then its answer; zero-shot, what the template
        opens a conversation with goes first."""
        if not ex.response.strip():
            raise ValueError(f"task cannot be scored: {ex.nan_note()}")
        turns, opening = chat_continuation(self.tokenizer, ex.messages)
        enc = self.pairs.encode_ids(self.ids(turns), self.ids(ex.response))
        if enc.cond is None:
            raise ValueError(f"task cannot be scored: {enc.note}")
        return EncodedTask(enc.cond, enc.cond_start, self.ids(opening), enc.note)

    def candidate(self, ex: Example) -> tuple[list[int] | None, str]:
        enc = self.candidates.encode(ex)  # BOS + context + response, exactly tokenized, within budget
        if enc.cond is None:
            return None, enc.note
        return enc.cond + self.separator, f"candidate: {enc.note}" if enc.note else ""


@register("gold", "nuggets")
class NuggetsGoldEncoder(GoldEncoder):
    """NUGGETS' ``instruction_main.py``: its own prompt, the candidate uncut, tasks cut at 200 tokens."""

    fixed_template = "nuggets"

    def task(self, ex: Example) -> EncodedTask:
        query, full = nuggets_prompt(ex)
        ids = self.ids(full)
        start = len(self.ids(query))
        note = f"task cut to {NUGGETS_TASK_TOKENS} of {len(ids)} tokens" if len(ids) > NUGGETS_TASK_TOKENS else ""
        return EncodedTask(ids[:NUGGETS_TASK_TOKENS], min(start, NUGGETS_TASK_TOKENS), [], note)

    def candidate(self, ex: Example) -> tuple[list[int] | None, str]:
        if ex.reason:  # the script scores an empty response, not a row it cannot read
            return None, ex.nan_note()
        note = "empty response (scored, as the NUGGETS script does)" if not ex.response.strip() else ""
        ids = self.ids(nuggets_prompt(ex)[1], special=True)
        if self.window is not None and len(ids) + NUGGETS_TASK_TOKENS > self.window:
            return None, (f"NaN: the candidate's {len(ids)} tokens and a {NUGGETS_TASK_TOKENS}-token task exceed "
                          f"the model's context window of {self.window} tokens")
        return ids, note
