"""Row formats: turn one dataset row into a (context, response) :class:`Example`.

Three layouts are recognised from the column names, and any other layout can be described with a
:class:`ColumnMapping`:

* Alpaca: ``instruction``, ``input`` (missing, empty or None), ``output``;
* ShareGPT: ``conversations`` = ``[{"from": "human"|"gpt"|"system", "value": ...}]``;
* OpenAI messages: ``messages`` = ``[{"role": "user"|"assistant"|"system", "content": ...}]``.

For conversations the response is, by default, the last assistant turn and the context is everything
before it (``turn="last"``); ``turn="first"`` scores the first assistant turn instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

FORMATS = ("alpaca", "sharegpt", "messages")

_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "system": "system"}


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
    """

    messages: list[dict] = field(default_factory=list)
    response: str = ""
    instruction: str = ""
    input: str = ""

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
        "[{role, content}]), or pass columns=ColumnMapping(instruction=..., response=..., input=...)."
    )


def _text(value: Any, row: int | None, column: str, optional: bool = False) -> str:
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        where = f"row {row}" if row is not None else "a row"
        raise FormatError(f"{where}, column {column!r}: expected a string, got {type(value).__name__} "
                          f"({value!r:.60}). Clean or cast this column before scoring.")
    return value


def _from_turns(turns: Any, row: int | None, column: str, role_key: str, text_key: str,
                roles: Mapping[str, str] | None, turn: str) -> Example:
    if not isinstance(turns, (list, tuple)):
        raise FormatError(f"row {row}, column {column!r}: expected a list of turns, got {type(turns).__name__}")
    messages = []
    for i, t in enumerate(turns):
        if not isinstance(t, Mapping) or role_key not in t or text_key not in t:
            raise FormatError(f"row {row}, column {column!r}, turn {i}: expected {{{role_key!r}, {text_key!r}}}, got {t!r:.80}")
        role = t[role_key]
        role = roles.get(role, role) if roles else role
        messages.append({"role": role, "content": _text(t[text_key], row, f"{column}[{i}].{text_key}")})
    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not answers:
        # No answer at all: an empty response, which the scorers turn into NaN with a reason.
        return Example(messages=messages, response="", instruction=_last_user(messages))
    k = answers[-1] if turn == "last" else answers[0]
    context = messages[:k]
    return Example(messages=context, response=messages[k]["content"], instruction=_last_user(context),
                   input="")


def _last_user(messages: list[dict]) -> str:
    users = [m["content"] for m in messages if m["role"] == "user"]
    return users[-1] if users else ""


def _alpaca(instruction: str, input_: str, response: str) -> Example:
    user = instruction + ("\n" + input_ if input_ else "")
    return Example(messages=[{"role": "user", "content": user}], response=response,
                   instruction=instruction, input=input_)


def to_example(row: Mapping[str, Any], fmt: str, mapping: ColumnMapping | None = None,
               index: int | None = None, turn: str = "last") -> Example:
    """Read one row (a dict of column values) in format ``fmt`` as an :class:`Example`."""
    if fmt == "alpaca":
        return _alpaca(_text(row["instruction"], index, "instruction"),
                       _text(row.get("input"), index, "input", optional=True),
                       _text(row["output"], index, "output"))
    if fmt == "mapping":
        return _alpaca(_text(row[mapping.instruction], index, mapping.instruction),
                       _text(row.get(mapping.input), index, mapping.input, optional=True) if mapping.input else "",
                       _text(row[mapping.response], index, mapping.response))
    if fmt == "sharegpt":
        return _from_turns(row["conversations"], index, "conversations", "from", "value", _SHAREGPT_ROLES, turn)
    if fmt == "messages":
        return _from_turns(row["messages"], index, "messages", "role", "content", None, turn)
    raise FormatError(f"unknown row format {fmt!r}; known: {FORMATS + ('mapping',)}")


def batch_to_examples(batch: Mapping[str, list], mapping: ColumnMapping | None = None,
                      indices: Sequence[int] | None = None, turn: str = "last") -> list[Example]:
    """Read a ``Dataset.map(batched=True)`` batch (column -> list) as examples, in row order."""
    fmt = detect_format(list(batch.keys()), mapping)
    n = len(next(iter(batch.values()))) if batch else 0
    keys = list(batch.keys())
    return [to_example({k: batch[k][i] for k in keys}, fmt, mapping,
                       indices[i] if indices is not None else i, turn) for i in range(n)]
