"""Baseline selections: random rows, the longest responses, and random rows matched in response length.

A selection by score means something only against these: large studies find IFD-style selectors often no
better than random on big pools, and plain response length a strong baseline (Xia et al. 2024,
arXiv:2410.09335; Ivison et al. 2025, arXiv:2503.01807); IFD itself favours long responses. Each baseline
is an ordinary :class:`~hf_prospector.selection.rules.SelectionRule` for :func:`select`, which computes
its own key instead of reading a score column, and gives the same :class:`SelectionReport`.

* :func:`random_rows`: the first ``k`` rows of ``numpy.random.default_rng(seed).permutation(n)``.
* :func:`longest`: the ``k`` rows with the most response tokens; ties go to the earlier row.
* :func:`length_matched_random`: random rows whose response lengths follow a reference selection's, bin by
  bin (deciles of the reference's lengths by default), so a score's effect can be told from length's.

Response length is counted, in this order of preference (``by="auto"``), and the rule's name says which:

* ``n_response_tokens`` (slug ``ntok``): the scorer's column, the response tokens it scored (a response cut
  to the scorer's ``max_length`` counts its kept tokens; an unscorable row counts 0);
* ``tokens`` (slug ``tok``): the response tokenized by the ``tokenizer`` given, without special tokens;
* ``words`` (slug ``words``): whitespace-separated words of the response.

A row whose response cannot be read (see :mod:`hf_prospector.formats`) has no length and is never kept
(``not_finite``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from datasets import Dataset

from ..formats import ColumnMapping, batch_to_examples
from .rules import SelectionRule, _slug_number, score_column

LENGTH_COLUMN = "n_response_tokens"
BY = ("auto", LENGTH_COLUMN, "tokens", "words")
_BY_SLUG = {LENGTH_COLUMN: "ntok", "tokens": "tok", "words": "words"}
NOT_DRAWN = "not_drawn"


def _size(fraction_or_count: float | int) -> dict:
    """``top_fraction`` for a float in (0, 1], ``top_n`` for an int >= 1 (1.0 is every row, 1 is one row)."""
    if isinstance(fraction_or_count, bool) or not isinstance(fraction_or_count, (int, float)):
        raise ValueError(f"give a fraction in (0, 1] or a row count >= 1, got {fraction_or_count!r}")
    if isinstance(fraction_or_count, int):
        return {"top_n": fraction_or_count}
    return {"top_fraction": fraction_or_count}


def _size_slug(rule: SelectionRule) -> str:
    """``top500`` or ``top5pct``, as :attr:`SelectionRule.name` writes a size."""
    return f"top{rule.top_n}" if rule.top_n is not None else f"top{_slug_number(rule.top_fraction * 100)}pct"


def _size_words(rule: SelectionRule) -> str:
    """``5% of the rows (rounded down)`` or ``500 rows``, for :meth:`describe`."""
    return f"{rule.top_fraction * 100:g}% of the rows (rounded down)" if rule.top_fraction is not None else f"{rule.top_n} rows"


def resolve_by(by: str, ds: Dataset, tokenizer) -> str:
    """How response length is counted on ``ds``: ``by``, or for ``auto`` the scorer's column when present, else
    the tokenizer when given, else words."""
    if by not in BY:
        raise ValueError(f"by must be one of {BY}, got {by!r}")
    if by == "auto":
        return LENGTH_COLUMN if LENGTH_COLUMN in ds.column_names else "tokens" if tokenizer is not None else "words"
    if by == LENGTH_COLUMN and LENGTH_COLUMN not in ds.column_names:
        raise KeyError(f"by={LENGTH_COLUMN!r} but the dataset has no such column (columns: {ds.column_names}); "
                       "score it with IFDScorer first, or use by='tokens' with a tokenizer, or by='words'")
    if by == "tokens" and tokenizer is None:
        raise ValueError("by='tokens' needs tokenizer= (e.g. the scorer's: AutoTokenizer.from_pretrained(...))")
    return by


def response_lengths(ds: Dataset, by: str, tokenizer=None, mapping: ColumnMapping | None = None,
                     turn: str = "last", batch_size: int = 1000, *, part: str = "response") -> np.ndarray:
    """Response length of each row of ``ds`` as float64 (NaN: unreadable response), counted ``by`` one of
    ``n_response_tokens``, ``tokens``, ``words`` (``auto`` resolved by :func:`resolve_by`).

    ``part="instruction"`` measures the prompt instead (instruction and input, or the chat turns before the
    response, joined by newlines), in ``tokens`` or ``words`` (the scorer writes no count of its tokens)."""
    if part not in ("response", "instruction"):
        raise ValueError(f"part must be 'response' or 'instruction', got {part!r}")
    if part == "instruction":
        by = by if by in ("tokens", "words") else "tokens" if tokenizer is not None else "words"
    by = resolve_by(by, ds, tokenizer)
    if by == LENGTH_COLUMN:
        return score_column(ds, LENGTH_COLUMN)
    out = np.full(len(ds), np.nan)
    start = 0
    for batch in ds.iter(batch_size=batch_size):
        examples = batch_to_examples(batch, mapping, list(range(start, start + len(next(iter(batch.values()))))), turn)
        readable = [k for k, e in enumerate(examples) if not e.reason]
        texts = [examples[k].response if part == "response" else
                 "\n".join(m["content"] for m in examples[k].messages) for k in readable]
        if by == "words":
            counts = [len(text.split()) for text in texts]
        else:
            counts = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
        out[[start + k for k in readable]] = counts
        start += len(examples)
    return out


@dataclass(frozen=True)
class RandomRows(SelectionRule):
    """Random rows: the key ranks the rows in the order of ``numpy.random.default_rng(seed).permutation(n)``."""

    column: str = "random"
    seed: int = 0
    not_kept = NOT_DRAWN

    def scores(self, ds: Dataset) -> np.ndarray:
        key = np.empty(len(ds))
        key[np.random.default_rng(self.seed).permutation(len(ds))] = np.arange(len(ds), 0, -1)
        return key

    @property
    def name(self) -> str:
        return f"random-{_size_slug(self)}-seed{self.seed}"

    @property
    def key_note(self) -> str:
        return f"Rows drawn at random: numpy default_rng({self.seed}).permutation."

    def describe(self) -> str:
        return f"Keeps {_size_words(self)} drawn at random (numpy default_rng({self.seed}).permutation of the row numbers)."


@dataclass(frozen=True)
class LengthRule(SelectionRule):
    """Rows ranked by response length (see the module docstring for how length is counted)."""

    column: str = "response_length"
    by: str = "auto"
    tokenizer: object = field(default=None, compare=False, repr=False)
    mapping: ColumnMapping | None = None
    turn: str = "last"

    def __post_init__(self):
        super().__post_init__()
        if self.by not in BY:
            raise ValueError(f"by must be one of {BY}, got {self.by!r}")

    def for_dataset(self, ds: Dataset) -> "LengthRule":
        return replace(self, by=resolve_by(self.by, ds, self.tokenizer))

    def scores(self, ds: Dataset) -> np.ndarray:
        return response_lengths(ds, self.by, self.tokenizer, self.mapping, self.turn)

    @property
    def name(self) -> str:
        return f"{'shortest' if self.lowest else 'longest'}-{_size_slug(self)}-{_BY_SLUG.get(self.by, self.by)}"

    @property
    def key_note(self) -> str:
        return f"Response length counted as {self._counted()}; ties go to the earlier row."

    def _counted(self) -> str:
        return {LENGTH_COLUMN: "the scorer's n_response_tokens", "tokens": "tokens of the tokenizer given",
                "words": "whitespace-separated words", "auto": "n_response_tokens, else tokens, else words"}[self.by]

    def describe(self) -> str:
        return (f"Keeps the {_size_words(self)} with the {'shortest' if self.lowest else 'longest'} responses, counted as "
                f"{self._counted()}; ties go to the earlier row.")


@dataclass(frozen=True)
class LengthMatchedRandom(LengthRule):
    """Random rows drawn bin by bin so their response lengths follow a reference selection's.

    ``edges`` are the reference's inner length quantiles (``bins - 1`` of them; equal ones leave a bin empty);
    a length ``x`` falls in bin ``searchsorted(edges, x, side="right")``, for the reference and the pool
    alike. ``quota[b]`` reference rows fall in bin ``b``; the rule draws that many pool rows of bin ``b``
    (all of them, and the note says so, when the bin holds fewer).
    """

    column: str = "length_matched_random"
    seed: int = 0
    bins: int = 10
    edges: tuple = ()
    quota: tuple = ()
    reference_by: str = "auto"
    shortfall: tuple = ()  # (bin, asked, available) per bin the pool could not fill; set by for_dataset
    not_kept = NOT_DRAWN

    def for_dataset(self, ds: Dataset) -> "LengthMatchedRandom":
        by = resolve_by(self.by, ds, self.tokenizer)
        if self.reference_by not in ("given", by):
            raise ValueError(f"the reference's lengths were counted as {self.reference_by!r} but this dataset's "
                             f"would be counted as {by!r}; pass by={self.reference_by!r} (and tokenizer= for "
                             "'tokens') so both are measured alike")
        rule = replace(self, by=by)
        counts = np.bincount(rule._bins(rule.lengths(ds)), minlength=self.bins)
        short = tuple((b, q, int(counts[b])) for b, q in enumerate(self.quota) if counts[b] < q)
        drawn = int(sum(min(q, int(c)) for q, c in zip(self.quota, counts)))
        if drawn == 0:
            raise ValueError(f"no row of the dataset ({len(ds)} rows) has a response length in the reference's bins "
                             f"(edges {list(self.edges)}, rows per bin {list(self.quota)}); nothing can be drawn")
        return replace(rule, top_n=drawn, shortfall=short)

    def lengths(self, ds: Dataset) -> np.ndarray:
        return response_lengths(ds, self.by, self.tokenizer, self.mapping, self.turn)

    def _bins(self, lengths: np.ndarray) -> np.ndarray:
        finite = lengths[np.isfinite(lengths)]
        return np.searchsorted(np.asarray(self.edges, dtype=float), finite, side="right")

    def scores(self, ds: Dataset) -> np.ndarray:
        """Drawn rows get keys in (2, 3], the others (0, 1], each in a random order: the top ``sum(quota)`` are
        the draw."""
        lengths = self.lengths(ds)
        key = np.full(len(ds), np.nan)
        finite = np.flatnonzero(np.isfinite(lengths))
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(finite))  # one random rank per readable row
        bins = self._bins(lengths)
        key[finite] = (order + 1) / (len(finite) + 1)
        for b, q in enumerate(self.quota):
            members = finite[bins == b]
            drawn = members[np.argsort(-key[members], kind="stable")[:q]]
            key[drawn] += 2
        return key

    @property
    def name(self) -> str:
        return f"length-matched-random-{sum(self.quota)}-{self.bins}bins-seed{self.seed}-{_BY_SLUG.get(self.by, self.by)}"

    @property
    def key_note(self) -> str:
        note = (f"Rows drawn at random (seed {self.seed}) per bin of response length ({self._counted()}), "
                f"{self.bins} bins at the reference's quantiles, edges {list(self.edges)}, rows per bin {list(self.quota)}.")
        if self.shortfall:
            note += " Bins with fewer rows than asked (all taken): " + ", ".join(
                f"bin {b}: {n} of {q}" for b, q, n in self.shortfall) + "."
        return note

    def describe(self) -> str:
        return (f"Keeps {sum(self.quota)} rows drawn at random (seed {self.seed}) so that their response lengths "
                f"({self._counted()}) fall in the reference selection's {self.bins} length quantile bins in the "
                "reference's proportions.")


def random_rows(fraction_or_count: float | int, *, seed: int = 0) -> RandomRows:
    """``k`` rows at random: the first ``k`` of ``numpy.random.default_rng(seed).permutation(len(ds))``.

    A float is a fraction of the rows (rounded down), an int a row count.
    """
    return RandomRows(seed=seed, **_size(fraction_or_count))


def longest(fraction_or_count: float | int, *, by: str = "auto", tokenizer=None,
            mapping: ColumnMapping | dict | None = None, turn: str = "last") -> LengthRule:
    """The rows with the longest responses (the length baseline); ties go to the earlier row.

    ``by`` counts length as the module docstring says (``auto``: ``n_response_tokens`` when the dataset has it,
    else ``tokenizer``'s tokens when given, else words).
    """
    mapping = ColumnMapping(**mapping) if isinstance(mapping, dict) else mapping
    return LengthRule(by=by, tokenizer=tokenizer, mapping=mapping, turn=turn, **_size(fraction_or_count))


def length_matched_random(reference: Dataset | list | np.ndarray, *, seed: int = 0, bins: int = 10,
                          by: str = "auto", tokenizer=None, mapping: ColumnMapping | dict | None = None,
                          turn: str = "last") -> LengthMatchedRandom:
    """Random rows whose response lengths match ``reference`` (a selection, i.e. a dataset of rows, or their
    lengths) bin by bin: ``bins`` quantile bins of the reference's lengths (10: deciles), the same number of rows
    drawn at random (``seed``) from each bin of the pool. A reference dataset is measured as the pool will be
    (``by``, ``tokenizer``); lengths given as numbers must be counted the same way by the caller."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an int >= 1, got {bins!r}")
    mapping = ColumnMapping(**mapping) if isinstance(mapping, dict) else mapping
    if isinstance(reference, Dataset):
        reference_by = resolve_by(by, reference, tokenizer)
        lengths = response_lengths(reference, reference_by, tokenizer, mapping, turn)
    else:
        reference_by = "given"
        lengths = np.asarray(reference, dtype=np.float64)
    lengths = lengths[np.isfinite(lengths)]
    if len(lengths) == 0:
        raise ValueError("the reference selection has no row with a response length; length_matched_random needs "
                         "a non-empty reference (e.g. the rows of a selection: select(ds, rule)[0])")
    edges = tuple(float(e) for e in np.quantile(lengths, np.linspace(0, 1, bins + 1)[1:-1]))
    quota = tuple(int(c) for c in np.bincount(np.searchsorted(edges, lengths, side="right"), minlength=bins))
    return LengthMatchedRandom(by=by, tokenizer=tokenizer, mapping=mapping, turn=turn, top_n=len(lengths),
                               seed=seed, bins=bins, edges=edges, quota=quota, reference_by=reference_by)


__all__ = ["LENGTH_COLUMN", "LengthMatchedRandom", "LengthRule", "RandomRows", "length_matched_random", "longest",
           "random_rows", "response_lengths"]
