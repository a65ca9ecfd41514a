"""Checks on scored rows that say when their scores may mean little.

* Template mismatch: IFD >= 1 means the instruction does not help predict the response at all. A few such
  rows are misaligned pairs; when most rows are so (by default more than half), the prompt template most
  likely does not fit the model ("every IFD came out above 1"): :func:`template_fit` warns with a
  :class:`TemplateMismatchWarning` and says what to try. The runner calls it after scoring; the run summary
  and the card show the share.
* Language: :func:`language_mix` counts the rows' languages (``langid``, offline, on instruction and
  response), and the share of rows in a language the model does not cover where its card or config says
  which it covers (:func:`hf_prospector.models.model_languages`): an English model's IFD on Chinese rows
  means little. The card and ``report assess`` show both.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .formats import ColumnMapping, FormatError, batch_to_examples
from .utils import float_column

MISMATCH_SHARE = 0.5  # more than this share of rows with IFD >= 1 points at the template
LANGUAGE_SAMPLE = 2000  # rows read for the language mix (evenly spaced); identification takes ~1 ms a row


class TemplateMismatchWarning(UserWarning):
    """Most scored rows have IFD >= 1: the template likely does not fit the model."""


@dataclass(frozen=True)
class TemplateFit:
    """How many rows with a finite IFD have IFD >= 1 (``at_least_one`` of ``rows``)."""

    rows: int
    at_least_one: int
    template: str | None = None
    model: str | None = None
    threshold: float = MISMATCH_SHARE

    @property
    def share(self) -> float:
        return self.at_least_one / self.rows if self.rows else float("nan")

    @property
    def mismatch(self) -> bool:
        return self.rows > 0 and self.share > self.threshold

    def describe(self) -> str:
        """One line: the share, and what to try when it is too high."""
        line = f"IFD >= 1: {self.at_least_one} of {self.rows} scored rows ({self.share:.1%})"
        if not self.mismatch:
            return line
        used = f"template {self.template!r}" if self.template else "the template"
        used += f" with model {self.model!r}" if self.model else ""
        return (f"{line}, more than {self.threshold:.0%}: the instruction does not help predict the response for most "
                f"rows, so {used} likely does not fit. Try template='chat' for a chat (instruct) model or 'plain' for "
                "a base model, check that the instruction and response columns are not swapped or misaligned, or "
                "try another model")


def template_fit(ds, *, template: str | None = None, model: str | None = None, threshold: float = MISMATCH_SHARE,
                 warn: bool = True) -> TemplateFit | None:
    """The share of rows with IFD >= 1 among those with a finite IFD (None when ``ds`` has no ``ifd`` column);
    with ``warn``, a :class:`TemplateMismatchWarning` when it exceeds ``threshold``."""
    if "ifd" not in ds.column_names:
        return None
    ifd = float_column(ds, "ifd")
    finite = ifd[np.isfinite(ifd)]
    fit = TemplateFit(len(finite), int(np.sum(finite >= 1)), template, model, threshold)
    if warn and fit.mismatch:
        warnings.warn(fit.describe(), TemplateMismatchWarning, stacklevel=2)
    return fit


@dataclass(frozen=True)
class LanguageMix:
    """Languages of ``rows`` read rows (of ``total``), most frequent first; ``model_languages`` as
    :func:`~hf_prospector.models.model_languages` gives them (None: unknown), ``outside`` the rows in others."""

    counts: list[tuple[str, int]]
    rows: int
    total: int
    model: str | None = None
    model_languages: tuple[str, ...] | None = None
    outside: int | None = None

    @property
    def outside_share(self) -> float | None:
        return None if self.outside is None or not self.rows else self.outside / self.rows

    def describe(self, top: int = 6) -> str:
        """One line: the mix, and the rows outside the model's languages where they are known."""
        mix = ", ".join(f"{code} {n / self.rows:.1%}" for code, n in self.counts[:top]) if self.rows else "no text"
        if len(self.counts) > top:
            mix += f", {len(self.counts) - top} other(s)"
        sampled = f" (a sample of {self.rows} of {self.total} rows)" if self.rows < self.total else ""
        line = f"languages{sampled}: {mix}"
        if self.model is None:
            return line
        if self.model_languages is None:
            return line + "; the model's card or config does not say which languages it covers"
        covered = ", ".join(self.model_languages)
        if self.outside is None:
            return line + f"; the model is {covered}"  # multilingual, by its card
        return line + f"; the model covers {covered}: {self.outside_share:.1%} of rows are in other languages"


def detect_language(text: str) -> str:
    """The ISO 639-1 code of ``text``'s language (``langid``, offline); ``"-"`` for text with no letters."""
    import langid

    return langid.classify(text)[0] if any(c.isalpha() for c in text) else "-"


def language_mix(ds, *, model: str | None = None, mapping: ColumnMapping | None = None,
                 sample: int = LANGUAGE_SAMPLE) -> LanguageMix | None:
    """The languages of ``ds``'s rows (instruction, input and response together; at most ``sample`` evenly spaced
    rows) and, given ``model``, the rows in languages it does not cover. None when the rows' layout is not one
    :mod:`hf_prospector.formats` reads (give ``mapping``)."""
    from .models import MULTILINGUAL, model_languages

    picked = np.unique(np.linspace(0, len(ds) - 1, min(sample, len(ds))).astype(int)) if len(ds) else []
    try:
        examples = batch_to_examples(ds.select(picked)[:], mapping) if len(picked) else []
    except FormatError:
        return None
    counts = Counter(detect_language(ex.full_text()) for ex in examples)
    covered = model_languages(model) if model is not None else None
    outside = None
    if covered is not None and MULTILINGUAL not in covered:
        outside = sum(n for code, n in counts.items() if code not in covered and code != "-")
    return LanguageMix(counts.most_common(), len(examples), len(ds), model, covered, outside)
