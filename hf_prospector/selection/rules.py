"""Selection rules: keep the rows whose score is in the top fraction, the top N, or past a threshold.

A rule works on one numeric score column and returns a ``Dataset`` of the kept rows (``Dataset.select``,
the same indices mapping that ``filter`` and ``sort`` build, so nothing is copied) and a
:class:`SelectionReport` that accounts for every input row.

Fixed semantics, shared by every rule:

* **Eligible rows.** A row with no finite score (NaN, null or ±inf) is never kept. On an IFD column
  (``ifd``, ``ifd_loss``) a row with IFD >= ``ifd_max`` (default 1) is excluded too: IFD = ppl(response |
  instruction) / ppl(response) >= 1 means the instruction does not help predict the response at all,
  which both papers treat as a misaligned pair. Superfiltering's code keeps IFD < 1, the default here;
  Cherry LLM's code keeps IFD <= 1 (``ifd_max_inclusive=True``). Exactly 1 is the case where the
  instruction changes nothing, so it is excluded by default.
* **Ranking.** "Top" means the highest scores (``lowest=True`` asks for the lowest); ties go to the
  earlier row.
* **Fractions** count against the *eligible* rows and round down: ``floor(fraction * eligible)``, as
  Cherry LLM's ``data_by_IFD.py`` does (``int(len(eligible) * rate)``), so a small set may keep 0 rows
  (the report says so). Float noise is ignored: 29% of 100 rows is 29.
* **Thresholds** are strict: ``score > threshold`` (``score < threshold`` with ``lowest=True``), as
  NUGGETS' ``top_sample.py`` counts rows with a golden score above 0.85.

Papers: Cherry LLM (Li et al., NAACL 2024, arXiv:2308.12032), Superfiltering (Li et al., ACL 2024,
arXiv:2402.00530), NUGGETS (Li et al., ACL 2024, arXiv:2312.10302).
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .._lazy import lazy_attributes
from ..utils import float_column, numeric_kind, require_column, require_int

if TYPE_CHECKING:  # datasets loads when a rule runs, so a recipe can name a rule without it
    from datasets import Dataset

IFD_RATIO_COLUMNS = ("ifd", "ifd_loss")  # the columns bounded by IFD < 1 (a ratio of the losses)
ORDERS = ("ranked", "original")  # best first, or the dataset's order

NOT_FINITE = "not_finite"
IFD_OUT_OF_RANGE = "ifd_out_of_range"
NOT_TOP = "not_top"


def fraction_count(fraction: float, n: int) -> int:
    """``floor(fraction * n)``, ignoring float noise below 1e-9 (so 0.29 * 100 gives 29, not 28)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"a fraction must be in (0, 1], got {fraction}")
    return math.floor(fraction * n + 1e-9)


@dataclass
class SelectionReport:
    """Where every input row went: ``kept + sum(dropped.values()) == considered``.

    ``eligible`` is the number of rows the ranking ran on (finite score, inside the IFD bound); a
    ``top_fraction`` counts against it. ``note`` states the arithmetic in words.
    """

    rule: str
    considered: int
    eligible: int
    kept: int
    dropped: dict[str, int] = field(default_factory=dict)
    note: str = ""
    lengths: Any = None  # a selection.lengths.LengthProfile of the kept rows against all, when measured

    def __post_init__(self):
        if self.kept + sum(self.dropped.values()) != self.considered:
            raise ValueError(f"selection report does not add up: kept {self.kept} + dropped {self.dropped} "
                             f"!= considered {self.considered}")

    def followed_by(self, nxt: "SelectionReport") -> "SelectionReport":
        """The report of this selection followed by ``nxt`` run on its kept rows."""
        if nxt.considered != self.kept:
            raise ValueError(f"the next step considered {nxt.considered} rows but this one kept {self.kept}")
        dropped = dict(self.dropped)
        for reason, count in nxt.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + count
        return SelectionReport(f"{self.rule}, then {nxt.rule}", self.considered, self.eligible, nxt.kept,
                               dropped, f"{self.note} Then: {nxt.note}")

    def to_dict(self) -> dict:
        out = asdict(self)
        if self.lengths is None:  # not measured (e.g. a select() call): no key, as before lengths were reported
            del out["lengths"]
        return out

    def to_text(self) -> str:
        """What was kept and dropped, the note, and the length profile when measured."""
        dropped = ", ".join(f"{n} {reason}" for reason, n in self.dropped.items() if n)
        text = (f"kept {self.kept} of {self.considered} rows ({self.eligible} eligible; dropped: {dropped or 'none'}). "
                f"{self.note}").rstrip()
        return text + ("\n" + self.lengths.to_text() if self.lengths is not None else "")


@dataclass(frozen=True)
class SelectionRule:
    """Keep rows by one score column: exactly one of ``top_fraction``, ``top_n`` or ``threshold``.

    ``ifd_max`` / ``ifd_max_inclusive`` bound IFD columns (``ifd``, ``ifd_loss``) and are ignored for other
    columns; ``ifd_max=None`` lifts the bound.
    """

    column: str = "ifd"
    top_fraction: float | None = None
    top_n: int | None = None
    threshold: float | None = None
    lowest: bool = False
    ifd_max: float | None = 1.0
    ifd_max_inclusive: bool = False
    # Why a ranked row that is not kept was dropped; a rule that computes its own key may say otherwise.
    not_kept: ClassVar[str] = NOT_TOP

    def __post_init__(self):
        given = [k for k in ("top_fraction", "top_n", "threshold") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of top_fraction, top_n, threshold; got {given or 'none'}")
        if self.top_fraction is not None:
            fraction_count(self.top_fraction, 0)  # validates the range
        if self.top_n is not None:
            require_int("top_n", self.top_n, 1)
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be a finite number, got {self.threshold}")

    @property
    def bounded(self) -> bool:
        """Whether the IFD bound applies (an IFD column and a bound set)."""
        return self.column in IFD_RATIO_COLUMNS and self.ifd_max is not None

    @property
    def name(self) -> str:
        """A short slug such as ``ifd-top5pct`` or ``gold_score-gt0p85``, safe for a Hub branch name."""
        if self.top_fraction is not None:
            what = f"{'bottom' if self.lowest else 'top'}{_slug_number(self.top_fraction * 100)}pct"
        elif self.top_n is not None:
            what = f"{'bottom' if self.lowest else 'top'}{self.top_n}"
        else:
            what = f"{'lt' if self.lowest else 'gt'}{_slug_number(self.threshold)}"
        slug = f"{re.sub(r'[^A-Za-z0-9_-]+', '-', self.column)}-{what}"
        if self.column in IFD_RATIO_COLUMNS and (self.ifd_max, self.ifd_max_inclusive) != (1.0, False):
            slug += "-unbounded" if self.ifd_max is None else \
                f"-{'le' if self.ifd_max_inclusive else 'lt'}{_slug_number(self.ifd_max)}"
        return slug

    def describe(self) -> str:
        """One sentence for a dataset card."""
        side = "lowest" if self.lowest else "highest"
        if self.top_fraction is not None:
            what = (f"the {self.top_fraction * 100:g}% of eligible rows (rounded down) with the {side} "
                    f"`{self.column}`")
        elif self.top_n is not None:
            what = f"the {self.top_n} rows with the {side} `{self.column}`"
        else:
            what = f"the rows with `{self.column}` {'<' if self.lowest else '>'} {self.threshold:g}"
        eligible = "rows with a finite score"
        if self.bounded:
            eligible += f" and `{self.column}` {'<=' if self.ifd_max_inclusive else '<'} {self.ifd_max:g}"
        ties = "; ties go to the earlier row" if self.threshold is None else ""
        return f"Keeps {what}, among {eligible}{ties}."

    # Hooks for rules that compute their own key instead of reading a score column (selection/baselines.py).
    def for_dataset(self, ds: Dataset) -> "SelectionRule":
        """This rule as it applies to ``ds`` (a rule whose key depends on the data settles how here)."""
        return self

    def scores(self, ds: Dataset) -> np.ndarray:
        """The key ranked, one float per row (NaN: never kept)."""
        return score_column(ds, self.column)

    @property
    def key_note(self) -> str:
        """How the key was computed, appended to the report's note ("" for a score column)."""
        return ""


def superfiltering(fraction: float = 0.1, *, column: str = "ifd") -> SelectionRule:
    """Superfiltering (arXiv:2402.00530): the top 5, 10 or 15% by GPT-2 IFD among rows with IFD < 1.

    The paper's ``select_data.py`` counts the fraction against all 52,002 Alpaca rows; here it counts
    against the eligible rows (see the module docstring).
    """
    return SelectionRule(column=column, top_fraction=fraction)


def cherry(fraction: float = 0.1, *, column: str = "ifd_loss") -> SelectionRule:
    """Cherry LLM (arXiv:2308.12032): the top 5, 10 or 15% by the loss-ratio IFD.

    Cherry's ``data_by_IFD.py`` ranks ``mean loss | instruction / mean loss`` (our ``ifd_loss``), drops
    rows above 1 (so it keeps IFD = 1) and takes ``int(len(eligible) * rate)`` rows.
    """
    return SelectionRule(column=column, top_fraction=fraction, ifd_max_inclusive=True)


def nuggets(threshold: float = 0.85, *, column: str = "gold_score") -> SelectionRule:
    """NUGGETS (arXiv:2312.10302): rows whose golden score is above a threshold (0.85 in the paper)."""
    return SelectionRule(column=column, threshold=threshold)


def check_order(order: str, old: str) -> str:
    """``order`` as one of :data:`ORDERS`; the function's old word for ``"ranked"`` still works, with a warning."""
    if order == old:
        warnings.warn(f'order="{old}" is now order="ranked"', DeprecationWarning, stacklevel=3)
        return "ranked"
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    return order


def select(ds: Dataset, rule: SelectionRule, *, order: str = "ranked") -> tuple[Dataset, SelectionReport]:
    """Apply ``rule`` to ``ds``; rows come ``ranked`` (best first) or in their ``original`` order."""
    order = check_order(order, "score")
    rule = rule.for_dataset(ds)
    scores = rule.scores(ds)
    finite = np.isfinite(scores)
    in_range = np.ones(len(scores), dtype=bool)
    if rule.bounded:
        with np.errstate(invalid="ignore"):
            in_range = scores <= rule.ifd_max if rule.ifd_max_inclusive else scores < rule.ifd_max
    eligible = np.flatnonzero(finite & in_range)
    ranked = eligible[np.argsort(scores[eligible] if rule.lowest else -scores[eligible], kind="stable")]
    dropped = {NOT_FINITE: int((~finite).sum())}
    if rule.bounded:
        dropped[IFD_OUT_OF_RANGE] = int((finite & ~in_range).sum())

    if rule.threshold is None:
        if rule.top_fraction is not None:
            target = fraction_count(rule.top_fraction, len(eligible))
            note = (f"{rule.top_fraction * 100:g}% of the {len(eligible)} eligible rows, rounded down: {target}.")
        else:
            target = rule.top_n
            note = f"{'lowest' if rule.lowest else 'highest'} {target} of the {len(eligible)} eligible rows."
        kept = ranked[:target]
        dropped[rule.not_kept] = len(ranked) - len(kept)
    else:
        passes = scores[ranked] < rule.threshold if rule.lowest else scores[ranked] > rule.threshold
        kept = ranked[passes]
        reason = f"not_{'below' if rule.lowest else 'above'}_threshold"
        dropped[reason] = len(ranked) - len(kept)
        note = f"{len(kept)} of the {len(eligible)} eligible rows pass the threshold."

    report = SelectionReport(rule.name, len(ds), len(eligible), len(kept), dropped, f"{note} {rule.key_note}".rstrip())
    indices = np.sort(kept) if order == "original" else kept
    return ds.select(indices), report


def score_column(ds: Dataset, column: str) -> np.ndarray:
    """A numeric column as float64, with NaN for nulls; a clear error for a missing or non-numeric one."""
    require_column(ds, column, "score column",
                   "Score it first (e.g. ds.map(IFDScorer(), batched=True)) or pick another column.")
    feature = ds.features[column]
    if numeric_kind(feature) not in ("int", "float"):
        raise TypeError(f"column {column!r} holds {feature}, not numbers; a selection rule needs a numeric "
                        "score column (cast it with ds.cast_column if it holds numbers as text).")
    return float_column(ds, column)


def _slug_number(x: float) -> str:
    return f"{x:.6g}".replace(".", "p").replace("-", "m")


__getattr__, __dir__ = lazy_attributes(__name__, renamed={"IFD_COLUMNS": "IFD_RATIO_COLUMNS"})
