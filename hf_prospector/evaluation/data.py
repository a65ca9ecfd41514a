"""Rows to token ids, exactly as the scorer encodes them: the training arms and the evaluation set share one encoder.

A training row is the scorer's conditioned sequence (prefix + context + response, context and response tokenized
apart) with a ``completion_mask`` of 1 on the response tokens the scorer scores: what the fine-tuned model is
trained on and what the evaluation measures are the same tokens. No EOS is appended (the scorer scores none).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass

from datasets import Dataset

from ..formats import ColumnMapping, FormatError, batch_to_examples, detect_format
# The one import of the library's exact encoder in this package (it moves to hf_prospector.encoders).
from ..encoders import PairEncoder, render_context


@dataclass(frozen=True)
class Encoding:
    """How rows become ids: the scorer's template, budget and minimum response tokens (``exact`` convention)."""

    template: str = "plain"
    max_length: int = 1024
    min_response_tokens: int = 16

    @classmethod
    def of(cls, scorer) -> "Encoding":
        """The encoding an :class:`~hf_prospector.scorers.IFDScorer` used, so arms train and are evaluated on the
        tokens it scored. A paper convention's scorer gives its template and budget under the exact encoding
        (the scripts' own tokenization is for reproducing their scores, not for training)."""
        return cls(scorer.template, scorer.max_length,
                   16 if scorer.min_response_tokens is None else scorer.min_response_tokens)

    def encoder(self, tokenizer, max_length: int | None = None, budget: str | None = None) -> PairEncoder:
        return PairEncoder(tokenizer, self.template, max_length or self.max_length, self.min_response_tokens, budget)


@dataclass
class EncodedSet:
    """Token ids of a set's usable rows: ``ids[k]`` scored from ``starts[k]``; ``positions`` are their rows in the
    dataset, ``unusable`` the rows the encoder could not score (with its note), ``keys`` a hash per row of its
    context and response text (for overlaps)."""

    ids: list[list[int]]
    starts: list[int]
    positions: list[int]
    unusable: dict[int, str]
    keys: list[str]

    @property
    def response_tokens(self) -> list[int]:
        return [len(i) - s for i, s in zip(self.ids, self.starts)]

    def digest(self) -> str:
        """A hash of exactly what trains or is evaluated (ids and scored spans)."""
        h = hashlib.sha256()
        for ids, start in zip(self.ids, self.starts):
            h.update(f"{start}:{','.join(map(str, ids))};".encode())
        return h.hexdigest()[:16]


def read_examples(ds: Dataset, name: str, mapping: ColumnMapping | None = None, turn: str = "last"):
    """The rows of ``ds`` as examples; a set whose columns hold no (instruction, response) pair is refused, named."""
    try:
        detect_format(ds.column_names, mapping)
    except FormatError as err:
        raise ValueError(f"{name}: no instruction/response columns to read ({err}). An evaluation set needs a "
                         "reference response per row; pass mapping=dict(instruction=..., response=...) if its "
                         "columns have other names") from None
    return batch_to_examples(ds[:], mapping, list(range(len(ds))), turn) if len(ds) else []


def encode_set(ds: Dataset, name: str, tokenizer, encoding: Encoding, mapping: ColumnMapping | None = None,
               turn: str = "last", max_length: int | None = None, budget: str | None = None) -> EncodedSet:
    """Encode every row of ``ds``; rows the encoder cannot score are listed in ``unusable`` with its note."""
    examples = read_examples(ds, name, mapping, turn)
    rows = encoding.encoder(tokenizer, max_length, budget).encode_many(examples)
    out = EncodedSet([], [], [], {}, [])
    for k, (example, row) in enumerate(zip(examples, rows)):
        if row.cond is None:
            out.unusable[k] = row.note
            continue
        out.ids.append(row.cond)
        out.starts.append(row.cond_start)
        out.positions.append(k)
        out.keys.append(row_key(example, encoding.template, tokenizer))
    return out


def row_key(example, template: str, tokenizer) -> str:
    """A hash of a row's rendered context and response: equal for the same pair in two sets."""
    text = render_context(example, template, tokenizer) + "\x00" + example.response
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def training_rows(encoded: EncodedSet, name: str, rows: int | None = None, tokens: int | None = None) -> EncodedSet:
    """The arm as trained: its first ``rows`` usable rows, or its first rows whose response tokens (the tokens that
    carry loss) sum to at most ``tokens``, in the arm's order. An arm too small for the budget is refused."""
    n = len(encoded.ids)
    if n == 0:
        reasons = sorted(set(encoded.unusable.values()))[:3]
        raise ValueError(f"arm {name!r} has no usable row ({len(encoded.unusable)} rows unusable: {reasons}); "
                         "an arm needs at least one row with a response")
    keep = n
    if rows is not None:
        if n < rows:
            raise ValueError(f"arm {name!r} has {n} usable rows, fewer than rows={rows}; lower rows= or select more")
        keep = rows
    elif tokens is not None:
        total, keep = 0, 0
        for t in encoded.response_tokens:
            if total + t > tokens:
                break
            total, keep = total + t, keep + 1
        if keep == n and total < tokens:
            raise ValueError(f"arm {name!r} has {total} response tokens in all, fewer than tokens={tokens}; "
                             "lower tokens= or select more rows")
        if keep == 0:
            raise ValueError(f"arm {name!r}: its first row alone has more than tokens={tokens} response tokens")
    return EncodedSet(encoded.ids[:keep], encoded.starts[:keep], encoded.positions[:keep], encoded.unusable,
                      encoded.keys[:keep])


def check_sizes(arms: dict[str, EncodedSet], equal_size: bool) -> None:
    """With ``equal_size`` (and no budget), every arm must train on as many rows."""
    sizes = {name: len(e.ids) for name, e in arms.items()}
    if equal_size and len(set(sizes.values())) > 1:
        raise ValueError(f"arms of different sizes {sizes} but equal sizes were asked; pass rows={min(sizes.values())} "
                         "(each arm's first rows) or tokens=N (a token budget), or equal_size=False")


def overlap(arm: EncodedSet, eval_set: EncodedSet, name: str, eval_name: str = "eval") -> int:
    """Evaluation rows whose (context, response) also trains in ``arm``; warns when there are any."""
    trained = set(arm.keys)
    count = sum(1 for k in eval_set.keys if k in trained)
    if count:
        warnings.warn(f"{count} of the {len(eval_set.keys)} rows of evaluation set {eval_name!r} also train in arm "
                      f"{name!r}: its eval loss there "
                      "is flattered; hold those rows out of the arms (the report counts them)", stacklevel=3)
    return count


def as_train_dataset(encoded: EncodedSet) -> Dataset:
    """Prompt-completion data, tokenized: ``input_ids`` and a ``completion_mask`` of 1 on the scored response."""
    return Dataset.from_dict({"input_ids": encoded.ids,
                              "completion_mask": [[0] * s + [1] * (len(i) - s) for i, s in zip(encoded.ids, encoded.starts)]})
