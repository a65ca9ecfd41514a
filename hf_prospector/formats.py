"""Row formats: turn one dataset row into a (context, response) :class:`Example`.

Three layouts are recognised from the column names, and any other layout can be described with a
:class:`ColumnMapping`:

* Alpaca: ``instruction``, ``input`` (missing, empty or None), ``output``;
* ShareGPT: ``conversations`` = ``[{"from": "human"|"gpt"|"system", "value": ...}]``;
* OpenAI messages: ``messages`` = ``[{"role": "user"|"assistant"|"system", "content": ...}]``.

For conversations the response is, by default, the last assistant turn and the context is everything
before it (``turn="last"``); ``turn="first"`` scores the first assistant turn instead, and ``turn="all"``
every assistant turn, each with everything before it (:attr:`Example.turns`).

Roles are read case-insensitively under the aliases of :data:`ROLE_ALIASES` (``human``/``HUMAN`` is the
user, ``gpt``/``bot``/``model`` the assistant, ``function``/``observation`` a tool result, ...). OpenAI-style
turns are read as chat templates read them:

* content given as a list of parts: the text parts joined by newlines; a part a text model cannot read
  (an image, audio) makes the row unscorable, with that reason;
* an assistant turn that calls tools (``tool_calls``, the older ``function_call``, or a ShareGPT
  ``function_call`` turn) keeps its calls in the message's ``tool_calls`` and its text (often none) as
  ``content``. In the context, the ``plain`` and ``alpaca`` templates thus skip the call (an empty turn)
  and ``chat`` hands it to the tokenizer's template, which renders it as the model was trained to (a
  template that does not know ``tool_calls``, like SmolLM2's, renders the empty turn). A response that is
  a tool call with no text cannot be scored.

A row that cannot be read this way (an unknown role, such a part, a tool-call response) becomes an
:class:`Example` with an empty response and ``reason`` saying why; the scorers give it NaN scores with
that reason. Values of the wrong type (a number where text belongs) raise a :class:`FormatError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from .utils import ROW_ID

FORMATS = ("alpaca", "sharegpt", "messages")
TURNS = ("last", "first", "all")  # which assistant turn(s) of a conversation are scored

# The role of a turn, as datasets spell it (compared in lower case), -> the chat role the library uses.
ROLE_ALIASES = {
    "user": "user", "human": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant",
    "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
    "function_call": "assistant",  # LLaMA-Factory's ShareGPT: the value is the call, as JSON
    "system": "system", "developer": "system",
    "tool": "tool", "function": "tool", "observation": "tool", "ipython": "tool",
}
_ACCEPTED_ROLES = "; ".join(f"{role} ({', '.join(a for a, r in ROLE_ALIASES.items() if r == role and a != role)})"
                            for role in ("user", "assistant", "system", "tool"))
_TEXT_PARTS = ("text", "input_text", "output_text")  # OpenAI's chat and responses APIs


class FormatError(ValueError):
    """A dataset or row that cannot be read as instruction data; the message says what to do."""


@dataclass(frozen=True)
class ColumnMapping:
    """Where the instruction, optional input and response live in a dataset with other column names."""

    instruction: str
    response: str
    input: str | None = None


@dataclass
class Example:
    """One row as the scorers see it.

    ``messages`` is the context as chat turns (for Alpaca rows: one user turn, the instruction and the
    input joined by a newline); ``instruction``/``input`` keep the Alpaca fields for the Alpaca prompt.
    ``reason`` says why a row that has a response cannot be scored (the response is then empty).
    ``position`` is the response's turn number in its conversation (None for Alpaca rows); under
    ``turn="all"`` ``turns`` holds one example per assistant turn, in order, and the example itself is the last.
    """

    messages: list[dict] = field(default_factory=list)
    response: str = ""
    instruction: str = ""
    input: str = ""
    reason: str = ""
    position: int | None = None
    turns: list[Example] = field(default_factory=list)

    def scored_turns(self) -> list[Example]:
        """The examples ``turn="all"`` scores: every assistant turn, or the row itself when it has no turns."""
        return self.turns or [self]

    def nan_note(self) -> str:
        """The note of a row with nothing to score: its ``reason``, else an empty response."""
        return f"NaN: {self.reason or 'empty response'}"

    def full_text(self) -> str:
        """Instruction, input and response as one text, e.g. for sentence embeddings."""
        parts = [m["content"] for m in self.messages] + [self.response]
        return "\n".join(p for p in parts if p)


def detect_format(column_names: Sequence[str], mapping: ColumnMapping | None = None) -> str:
    """Name the row format of a dataset from its columns, or raise a :class:`FormatError` that says how to fix it."""
    cols = set(column_names)
    if mapping is not None:
        missing = [c for c in (mapping.instruction, mapping.response, mapping.input) if c and c not in cols]
        if missing:
            raise FormatError(f"column mapping names {missing}, which the dataset lacks; columns found: {sorted(cols)}")
        return "mapping"
    if {"instruction", "output"} <= cols:
        return "alpaca"
    if "conversations" in cols:
        return "sharegpt"
    if "messages" in cols:
        return "messages"
    raise FormatError(
        f"cannot tell the row format from the columns {sorted(cols)}. Accepted: Alpaca (instruction, "
        "[input], output), ShareGPT (conversations: [{from, value}]), OpenAI messages (messages: "
        "[{role, content}]), or pass mapping=ColumnMapping(instruction=..., response=..., input=...)."
    )


def _text(value: Any, where: str, column: str, optional: bool = False) -> str:
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise FormatError(f"{where}, column {column!r}: expected a string, got {type(value).__name__} "
                          f"({value!r:.60}). Clean or cast this column before scoring.")
    return value


def _content(value: Any, where: str, column: str) -> tuple[str, str]:
    """A turn's text (a string, or a list of parts whose text parts are joined by newlines), and why it
    cannot be read by a text model ("" when it can)."""
    if not isinstance(value, (list, tuple)):
        return _text(value, where, column), ""
    texts = []
    for part in value:
        if isinstance(part, str):
            texts.append(part)
        elif (isinstance(part, Mapping) and (part.get("type") or "text") in _TEXT_PARTS
              and isinstance(part.get("text"), str)):
            texts.append(part["text"])
        else:
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            return "", f"{column} has a {kind!r} part, which a text model cannot read"
    return "\n".join(texts), ""


def _tool_calls(t: Mapping, role: str, text_key: str) -> list | None:
    """The calls an assistant turn makes, as chat templates take them (``tool_calls``), or None."""
    if role == "function_call":  # LLaMA-Factory's ShareGPT: one call or a list of calls, as JSON
        try:
            calls = json.loads(t[text_key])
        except (TypeError, ValueError):
            calls = t[text_key]
        return [{"type": "function", "function": c} for c in (calls if isinstance(calls, list) else [calls])]
    if t.get("tool_calls"):
        return list(t["tool_calls"])
    if t.get("function_call"):  # OpenAI's older field
        return [{"type": "function", "function": t["function_call"]}]
    return None


def _message(t: Any, i: int, where: str, column: str, role_key: str, text_key: str) -> tuple[dict | None, str]:
    """Turn ``i`` as a chat message (None when its role is unknown), and why it cannot be read ("" when it can)."""
    shape = f"{where}, column {column!r}, turn {i}: expected {{{role_key!r}, {text_key!r}}}, got {t!r:.80}"
    if not isinstance(t, Mapping) or role_key not in t:
        raise FormatError(shape)
    alias = t[role_key].strip().lower() if isinstance(t[role_key], str) else None
    role = ROLE_ALIASES.get(alias)
    if role is None:
        return None, (f"turn {i} has the role {t[role_key]!r}, which is not known; accepted, in any case: "
                      f"{_ACCEPTED_ROLES}. Rename the role (e.g. with ds.map) to score this row")
    calls = _tool_calls(t, alias, text_key) if role == "assistant" else None
    if calls is not None and (alias == "function_call" or t.get(text_key) is None):
        text, problem = "", ""  # a call with no text of its own
    elif text_key not in t:
        raise FormatError(shape)
    else:
        text, problem = _content(t[text_key], where, f"{column}[{i}].{text_key}")
        problem = problem and f"turn {i} ({role}): {problem}"
    message = {"role": role, "content": text}
    if calls is not None:
        message["tool_calls"] = calls
    message.update({k: t[k] for k in ("tool_call_id", "name") if role == "tool" and t.get(k) is not None})
    return message, problem


def _from_turns(turns: Any, where: str, column: str, role_key: str, text_key: str, turn: str) -> Example:
    if not isinstance(turns, (list, tuple)):
        raise FormatError(f"{where}, column {column!r}: expected a list of turns, got {type(turns).__name__}")
    read = [_message(t, i, where, column, role_key, text_key) for i, t in enumerate(turns)]
    unknown = next((problem for message, problem in read if message is None), "")
    if unknown:  # which turn is the answer is not known either
        return Example(reason=unknown)
    messages = [message for message, _ in read]
    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not answers:
        return Example(messages=messages, response="", instruction=_last_user(messages),
                       reason="no assistant turn to score" if messages else "")
    if turn == "all":
        turns = [_answer(messages, read, k) for k in answers]
        return replace(turns[-1], turns=turns)
    return _answer(messages, read, answers[-1] if turn == "last" else answers[0])


def _answer(messages: list[dict], read: list[tuple[dict, str]], k: int) -> Example:
    """Turn ``k`` (an assistant turn) as the response, everything before it as the context."""
    context, answer = messages[:k], messages[k]
    problem = next((problem for _, problem in read[:k + 1] if problem), "")
    if not problem and "tool_calls" in answer and not answer["content"].strip():
        problem = f"the response (turn {k}) is a tool call with no text"
    return Example(messages=context, response="" if problem else answer["content"], instruction=_last_user(context),
                   input="", reason=problem, position=k)


def _last_user(messages: list[dict]) -> str:
    users = [m["content"] for m in messages if m["role"] == "user"]
    return users[-1] if users else ""


def _alpaca(instruction: str, input_: str, response: str) -> Example:
    user = instruction + ("\n" + input_ if input_ else "")
    return Example(messages=[{"role": "user", "content": user}], response=response,
                   instruction=instruction, input=input_)


def to_example(row: Mapping[str, Any], fmt: str, mapping: ColumnMapping | None = None,
               index: int | str | None = None, turn: str = "last") -> Example:
    """Read one row (a dict of column values) in format ``fmt`` as an :class:`Example`.

    ``index`` names the row in errors: its number in the dataset, or a text such as ``"row_id 7"``.
    """
    where = index if isinstance(index, str) else "a row" if index is None else f"row {index}"
    if fmt == "alpaca":
        return _alpaca(_text(row["instruction"], where, "instruction"),
                       _text(row.get("input"), where, "input", optional=True),
                       _text(row["output"], where, "output"))
    if fmt == "mapping":
        return _alpaca(_text(row[mapping.instruction], where, mapping.instruction),
                       _text(row.get(mapping.input), where, mapping.input, optional=True) if mapping.input else "",
                       _text(row[mapping.response], where, mapping.response))
    if fmt == "sharegpt":
        return _from_turns(row["conversations"], where, "conversations", "from", "value", turn)
    if fmt == "messages":
        return _from_turns(row["messages"], where, "messages", "role", "content", turn)
    raise FormatError(f"unknown row format {fmt!r}; known: {FORMATS + ('mapping',)}")


def _row_names(n: int, indices: Sequence[int] | None, row_ids: Sequence | None, map_batch: bool) -> list[str]:
    """How errors name the ``n`` rows of a batch: ``row 1200`` (the dataset's row, from ``indices``),
    ``row_id 'a7'`` (from a ``row_id`` column), or, in a ``Dataset.map`` batch that has neither, the
    position in the batch said as such: ``datasets`` passes row numbers only with ``with_indices=True``."""
    if indices is not None and row_ids is not None:
        return [f"row {i} ({ROW_ID} {r!r})" for i, r in zip(indices, row_ids)]
    if indices is not None:
        return [f"row {i}" for i in indices]
    if row_ids is not None:
        return [f"{ROW_ID} {r!r}" for r in row_ids]
    if map_batch:
        return [f"row {i} of this batch (for the dataset's row number, call ds.map with with_indices=True)"
                for i in range(n)]
    return [f"row {i}" for i in range(n)]


def row_count(columns: Mapping[str, list]) -> int:
    """Rows in a batch given as columns (column -> list)."""
    return len(next(iter(columns.values()))) if columns else 0


def batch_to_examples(batch: Mapping[str, list], mapping: ColumnMapping | None = None,
                      indices: Sequence[int] | None = None, turn: str = "last",
                      map_batch: bool = False) -> list[Example]:
    """Read a ``Dataset.map(batched=True)`` batch (column -> list) as examples, in row order.

    ``indices`` are the rows' numbers in the dataset; ``map_batch`` says the batch is one of ``Dataset.map``'s,
    so without ``indices`` (or a ``row_id`` column) positions in it are not the dataset's rows.
    """
    fmt = detect_format(list(batch.keys()), mapping)
    n = row_count(batch)
    keys = list(batch.keys())
    names = _row_names(n, indices, batch.get(ROW_ID), map_batch)
    return [to_example({k: batch[k][i] for k in keys}, fmt, mapping, names[i], turn) for i in range(n)]
