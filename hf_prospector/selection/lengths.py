"""Length profile of a selection: response and instruction lengths of all rows against the selected rows, and the
rank correlation of each score column with response length.

IFD favours long responses, and large studies find plain response length a strong selection baseline (Xia et al.
2024, arXiv:2410.09335; Ivison et al. 2025, arXiv:2503.01807): a selection by score that is mostly a selection by
length shows here as selected rows much longer than all rows and a high Spearman ρ of the score with length.

Lengths are counted as :func:`~hf_prospector.selection.baselines.response_lengths` counts them: the response by the
scorer's ``n_response_tokens`` when the rows have it, else by the ``tokenizer`` given, else in words; the instruction
(the prompt: instruction and input, or the chat turns before the response) by the tokenizer, else in words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from datasets import Dataset

from ..formats import ColumnMapping
from ..utils import format_number, markdown_table, numeric_kind
from .baselines import LENGTH_COLUMN, resolve_by, response_lengths
from .rules import score_column

UNITS = {LENGTH_COLUMN: "the scorer's response tokens (n_response_tokens)", "tokens": "tokens",
         "words": "whitespace-separated words"}
STATS = ("mean", "q25", "median", "q75", "max")


@dataclass
class LengthProfile:
    """Lengths of all rows and of the selected ones (``response``/``instruction``: population label ->
    :class:`~hf_prospector.reports.ScoreSummary`), and per score column its rank correlation with response
    length over the first population (:class:`~hf_prospector.reports.Correlation`)."""

    response_unit: str  # n_response_tokens, tokens or words
    instruction_unit: str  # tokens or words
    response: dict[str, Any]
    instruction: dict[str, Any]
    correlations: dict[str, Any]
    correlated_over: str  # the population the correlations use, e.g. "all rows"

    def to_markdown(self) -> str:
        rows = [[f"{part} ({self.response_unit if part == 'response' else self.instruction_unit})", label, s.count,
                 s.missing, *(format_number(getattr(s, k), ".1f") for k in STATS)]
                for part, summaries in (("response", self.response), ("instruction", self.instruction))
                for label, s in summaries.items()]
        parts = [f"Response length counted in {UNITS[self.response_unit]}, instruction length in "
                 f"{UNITS[self.instruction_unit]} (NaN: a row whose text cannot be read).",
                 markdown_table(["length", "rows", "count", "NaN", *STATS], rows)]
        if self.correlations:
            parts += [f"Spearman rank correlation of each score with response length over {self.correlated_over} "
                      "(IFD is known to favour long responses; near 0: the score does not follow length):",
                      markdown_table(["score column", "Spearman ρ", "rows used", "rows excluded (NaN in either)"],
                                     [[f"`{col}`", format_number(c.spearman), c.rows_used, c.rows_excluded]
                                      for col, c in self.correlations.items()])]
        return "\n\n".join(parts)

    def to_text(self) -> str:
        """A few lines for a terminal."""
        lines = []
        for part, unit, summaries in (("response", self.response_unit, self.response),
                                      ("instruction", self.instruction_unit, self.instruction)):
            cells = "; ".join(f"{label} mean {format_number(s.mean, '.1f')}, median {format_number(s.median, '.1f')}"
                              for label, s in summaries.items())
            lines.append(f"{part} length ({unit}): {cells}")
        if self.correlations:
            lines.append(f"Spearman with response length ({self.correlated_over}): " + ", ".join(
                f"{col} {format_number(c.spearman, '+.3f')}" for col, c in self.correlations.items()))
        return "\n".join(lines)


def length_profile(pool: Dataset, selected: Dataset | None = None, *, columns: Sequence[str] | None = None,
                   by: str = "auto", tokenizer=None, mapping: ColumnMapping | dict | None = None, turn: str = "last",
                   pool_label: str = "all rows") -> LengthProfile:
    """The length profile of ``selected`` chosen from ``pool`` (or of ``pool`` alone).

    ``columns`` are the score columns correlated with response length over ``pool`` (default: the scorers'
    columns present, those a dataset card shows). Both datasets are measured alike: ``by`` is settled on ``pool``.
    """
    from ..publishing.card import CARD_COLUMNS
    from ..reports import _correlate, _summary

    mapping = ColumnMapping(**mapping) if isinstance(mapping, dict) else mapping
    by = resolve_by(by, pool, tokenizer)
    if selected is not None and by == LENGTH_COLUMN and LENGTH_COLUMN not in selected.column_names:
        by = "tokens" if tokenizer is not None else "words"  # the selection dropped the scorer's column
    populations = [(pool_label, pool)] + ([("selected", selected)] if selected is not None else [])
    response, instruction = {}, {}
    pool_lengths = None
    for label, ds in populations:
        lengths = response_lengths(ds, by, tokenizer, mapping, turn)
        pool_lengths = lengths if pool_lengths is None else pool_lengths
        response[label] = _summary(lengths)
        instruction[label] = _summary(response_lengths(ds, "auto", tokenizer, mapping, turn, part="instruction"))
    names = columns if columns is not None else [c for c in CARD_COLUMNS if c in pool.column_names]
    names = [c for c in names if c != LENGTH_COLUMN and numeric_kind(pool.features[c]) in ("int", "float")]
    correlations = {c: _correlate(score_column(pool, c), pool_lengths) for c in names}
    return LengthProfile(by, "tokens" if tokenizer is not None else "words", response, instruction, correlations,
                         pool_label)


def rows_measurable(ds: Dataset, mapping: ColumnMapping | None = None) -> bool:
    """Whether ``ds`` has columns to read an instruction and a response from (a table of scores alone has none)."""
    from ..formats import FormatError, detect_format

    try:
        detect_format(ds.column_names, mapping)
    except FormatError:
        return False
    return True


__all__ = ["LengthProfile", "length_profile", "rows_measurable"]
