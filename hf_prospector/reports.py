"""Reports on scored datasets: do two scorers agree, and what does a dataset look like by IFD?

A small model may choose data for a large one only if both rank the rows alike (Superfiltering,
Table 1). :func:`compare` checks this for the user's own rows: the same rows scored twice (two models,
or two settings) give rank correlations and the overlap of the top selections. :func:`assess` shows
several scored datasets side by side (Superfiltering §6.2): violin plots, summary statistics and the
leading words of the instructions with the highest and the lowest IFD (the paper's Table 6 view).

Both return a dataclass with ``to_dict()`` (JSON-ready; NaN becomes None) and ``to_markdown()``;
given ``out_dir`` they also write ``report.md`` and PNG figures there. Figures are drawn with
``matplotlib.figure.Figure`` (Agg canvas), so no pyplot state or display is touched.

"Top x%" is whatever :func:`hf_prospector.selection.select` keeps for a rule, ``superfiltering`` by
default: the floor(x · eligible) rows with the highest IFD among the rows with a finite IFD < 1, ties to
the earlier row. Another rule factory (``cherry``, or ``lambda f: SelectionRule(top_fraction=f,
ifd_max=None)``) changes the selection, so a report always agrees with the selection a user runs.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from datasets import Dataset
from scipy import stats

from hf_prospector._lazy import lazy_attributes
from hf_prospector.diagnostics import LanguageMix, language_mix
from hf_prospector.formats import ColumnMapping, batch_to_examples
from hf_prospector.selection import SelectionReport, SelectionRule, select, superfiltering
from hf_prospector.selection.rules import IFD_OUT_OF_RANGE, score_column
from hf_prospector.utils import (ROW_ID, format_number, markdown_table, new_figure, require_unique_row_ids,
                                 violin_figure)

# Superfiltering defines the perplexity it correlates in Table 1 as PPL(y|x), the response given the
# instruction; PPL(y) alone is reported too, clearly labelled.
REPORT_COLUMNS = {
    "ppl_cond": "perplexity of the response given the instruction (the paper's Perplexity)",
    "ppl_uncond": "perplexity of the response alone",
    "ifd": "IFD = ppl_cond / ppl_uncond",
}

RuleFactory = Callable[[float], SelectionRule]  # a fraction -> the rule that keeps that top fraction


@dataclass(frozen=True)
class Correlation:
    """Rank agreement of one score column; rows non-finite in either input are excluded and counted."""

    spearman: float
    kendall: float  # tau-b, which corrects for ties
    rows_used: int
    rows_excluded: int


@dataclass(frozen=True)
class Overlap:
    """How many of A's top rows B also selects: ``common / selected_a`` (NaN when A selects none)."""

    fraction: float
    rule: str  # SelectionRule.name, e.g. "ifd-top5pct"
    selected_a: int
    selected_b: int
    common: int
    overlap: float


@dataclass
class ComparisonReport:
    """The result of :func:`compare`."""

    names: tuple[str, str]
    rows: int
    matched_by: str  # "row_id" or "position"
    correlations: dict[str, Correlation]
    overlaps: list[Overlap]
    selection: str  # how the top rows are chosen, in words
    figures: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return _json_ready(asdict(self))

    def to_markdown(self) -> str:
        a, b = self.names
        corr_rows = [[f"`{col}`: {REPORT_COLUMNS[col]}", format_number(c.spearman), format_number(c.kendall),
                      c.rows_used, c.rows_excluded] for col, c in self.correlations.items()]
        overlap_rows = [[f"{o.fraction:.0%}", f"`{o.rule}`", o.selected_a, o.selected_b, o.common,
                         format_number(o.overlap)] for o in self.overlaps]
        parts = [
            f"# Score consistency: {a} vs {b}",
            f"{self.rows} rows, matched by {self.matched_by}.",
            "## Rank correlations",
            markdown_table(["score", "Spearman ρ", "Kendall τ-b", "rows used",
                            "rows excluded (NaN or inf in either)"], corr_rows),
            "## Overlap of the top selections",
            f"Each input separately: {self.selection} Overlap = |{a} ∩ {b}| / |{a}|.",
            markdown_table(["top", "rule", f"|{a}|", f"|{b}|", f"|{a} ∩ {b}|", "overlap"], overlap_rows),
        ]
        if "ifd_scatter" in self.figures:
            parts += ["## IFD", f"![IFD of {a} against {b}]({self.figures['ifd_scatter'].name})"]
        return "\n\n".join(parts) + "\n"


@dataclass(frozen=True)
class ScoreSummary:
    """Statistics of the finite values of one score column; ``missing`` counts NaN or infinite rows."""

    count: int
    missing: int
    mean: float
    std: float
    min: float
    q25: float
    median: float
    q75: float
    max: float


@dataclass(frozen=True)
class DatasetAssessment:
    """One dataset in :func:`assess`."""

    rows: int
    scores: dict[str, ScoreSummary]
    out_of_range: int  # rows with a finite IFD that the rule's bound (IFD < 1 by default) leaves out
    top_rows: int
    bottom_rows: int
    top_words: list[tuple[str, int]]  # the most frequent leading words, with their counts
    bottom_words: list[tuple[str, int]]
    languages: LanguageMix | None = None  # the rows' languages (None: a layout that cannot be read)


@dataclass
class AssessmentReport:
    """The result of :func:`assess`."""

    datasets: dict[str, DatasetAssessment]
    fraction: float
    selection: str  # how the top rows are chosen, in words
    figures: dict[str, Path] = field(default_factory=dict)
    lengths: dict[str, Any] = field(default_factory=dict)  # dataset -> selection.lengths.LengthProfile (top rows)

    def to_dict(self) -> dict:
        return _json_ready(asdict(self))

    def to_markdown(self) -> str:
        parts = ["# Dataset assessment", "## Summary statistics"]
        for col, label in REPORT_COLUMNS.items():
            rows = [[name, s.count, s.missing, *(format_number(getattr(s, k)) for k in _STAT_NAMES)]
                    for name, d in self.datasets.items() for s in [d.scores[col]]]
            parts += [f"`{col}`: {label}", markdown_table(["dataset", "finite", "NaN or inf", *_STAT_NAMES], rows)]
        parts += [
            "Rows with a finite IFD that the selection leaves out as out of range (IFD ≥ 1 by default):",
            markdown_table(["dataset", "rows out of range", "share"],
                         [[n, d.out_of_range, f"{d.out_of_range / d.rows:.1%}"] for n, d in self.datasets.items()]),
            "## Leading words of instructions",
            f"Top: {self.selection} Bottom: the same with the lowest IFD. "
            "The leading word is the first word of the instruction, lowercased.",
            markdown_table(["dataset", f"top {self.fraction:.0%} by IFD", f"bottom {self.fraction:.0%} by IFD"],
                         [[n, f"{_words(d.top_words)} ({d.top_rows} rows)",
                           f"{_words(d.bottom_words)} ({d.bottom_rows} rows)"] for n, d in self.datasets.items()]),
        ]
        if self.lengths:
            parts += ["## Length", f"All rows against the top {self.fraction:.0%} by IFD (\"selected\"), per dataset."]
            for name, profile in self.lengths.items():
                parts += [f"### {name}", profile.to_markdown()]
        parts += ["## Languages", "Identified with langid on instruction, input and response together.",
                  markdown_table(["dataset", "languages"],
                                 [[n, d.languages.describe() if d.languages else "(rows not readable)"]
                                  for n, d in self.datasets.items()])]
        for key, title in (("ifd_violin", "IFD"), ("perplexity_violin", "Perplexity")):
            if key in self.figures:
                parts += [f"## {title}", f"![{title} per dataset]({self.figures[key].name})"]
        return "\n\n".join(parts) + "\n"


_STAT_NAMES = ("mean", "std", "min", "q25", "median", "q75", "max")


def compare(a: Dataset, b: Dataset, *, names: tuple[str, str] = ("A", "B"), out_dir: str | Path | None = None,
            fractions: tuple[float, ...] = (0.05, 0.10, 0.15),
            selection: RuleFactory = superfiltering) -> ComparisonReport:
    """Compare the scores of the same rows from two scorers (two models, or two settings).

    Rows are matched by ``row_id`` when both inputs have it (the sets must be equal), else by position
    (the lengths must be equal). Each correlation uses the rows whose score is finite in both inputs and
    counts the others in ``rows_excluded``. ``selection`` turns each fraction into the
    :class:`~hf_prospector.selection.SelectionRule` whose kept rows are compared.
    """
    if len(names) != 2:
        raise ValueError(f"names must be two labels, one per input; got {names!r}")
    for ds, name in ((a, names[0]), (b, names[1])):
        _require_columns(ds, name)
    pos_a, pos_b, matched_by = _match_rows(a, b, names)
    correlations = {col: _correlate(score_column(a, col)[pos_a], score_column(b, col)[pos_b])
                     for col in REPORT_COLUMNS}

    a_index_of_b = np.empty(len(b), dtype=int)  # B's row position -> position of the same row in A
    a_index_of_b[pos_b] = pos_a
    overlaps = []
    for fraction in fractions:
        rule = selection(fraction)
        top_a = set(_kept_positions(a, rule)[0].tolist())
        top_b = set(a_index_of_b[_kept_positions(b, rule)[0]].tolist())
        common = len(top_a & top_b)
        overlaps.append(Overlap(fraction, rule.name, len(top_a), len(top_b), common,
                                common / len(top_a) if top_a else math.nan))

    described = selection(fractions[0]).describe() if fractions else ""
    report = ComparisonReport(tuple(names), len(a), matched_by, correlations, overlaps, described)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        report.figures["ifd_scatter"] = _scatter(score_column(a, "ifd")[pos_a], score_column(b, "ifd")[pos_b],
                                                 names, correlations["ifd"], out / "ifd_scatter.png")
        (out / "report.md").write_text(report.to_markdown(), encoding="utf-8")
    return report


def assess(datasets: Mapping[str, Dataset], *, out_dir: str | Path | None = None, fraction: float = 0.05,
           words: int = 10, selection: RuleFactory = superfiltering,
           mapping: ColumnMapping | None = None, model: str | None = None) -> AssessmentReport:
    """Describe several scored datasets side by side.

    The top ``fraction`` is what the rule ``selection(fraction)`` keeps, the bottom what the same rule
    with ``lowest=True`` keeps; for each, the ``words`` most frequent :func:`leading_word` of the
    instructions are counted. Instructions come from the ``instruction`` column, or from
    :func:`hf_prospector.formats.batch_to_examples` for chat rows (``mapping`` for other layouts).
    Statistics use the finite values and count the others; ``std`` is the population standard deviation.
    Each dataset's language mix is shown (:func:`~hf_prospector.diagnostics.language_mix`) and, given the
    ``model`` that scored the rows, the share of rows in languages it does not cover.
    """
    if not datasets:
        raise ValueError("assess needs at least one dataset, e.g. {'alpaca': scored_dataset}")
    rule = selection(fraction)
    results, tops = {}, {}
    for name, ds in datasets.items():
        _require_columns(ds, name)
        top, kept = _kept_positions(ds, rule)
        tops[name] = top
        bottom, _ = _kept_positions(ds, replace(rule, lowest=True))
        results[name] = DatasetAssessment(
            rows=len(ds), scores={col: _summary(score_column(ds, col)) for col in REPORT_COLUMNS},
            out_of_range=kept.dropped.get(IFD_OUT_OF_RANGE, 0), top_rows=len(top), bottom_rows=len(bottom),
            top_words=_leading_words(ds, top, mapping).most_common(words),
            bottom_words=_leading_words(ds, bottom, mapping).most_common(words),
            languages=language_mix(ds, model=model, mapping=mapping))

    report = AssessmentReport(results, fraction, rule.describe())
    from hf_prospector.selection.lengths import length_profile, rows_measurable

    for name, ds in datasets.items():  # a table of scores alone has no text to measure
        if rows_measurable(ds, mapping):
            report.lengths[name] = length_profile(ds, ds.select(tops[name].tolist()), mapping=mapping)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        report.figures["ifd_violin"] = _violins(datasets, [("ifd", "IFD", False)], out / "ifd_violin.png")
        report.figures["perplexity_violin"] = _violins(
            datasets, [("ppl_cond", "log10 PPL(response | instruction)", True),
                       ("ppl_uncond", "log10 PPL(response)", True)], out / "perplexity_violin.png")
        (out / "report.md").write_text(report.to_markdown(), encoding="utf-8")
    return report


def leading_word(instruction: str) -> str:
    """The first word of an instruction, lowercased and without punctuation ("" when there is none).

    The papers find the leading *verb* with a syntactic parser; this simple rule also returns
    question words ("what", "how") and nouns, which is enough to see what kinds of task dominate.
    """
    match = re.search(r"[^\W_]+(?:['’-][^\W_]+)*", instruction)
    return match.group(0).lower() if match else ""


def _require_columns(ds: Dataset, name: str) -> None:
    missing = [c for c in REPORT_COLUMNS if c not in ds.column_names]
    if missing:
        raise ValueError(f"dataset {name!r} lacks the score columns {missing} (columns: {ds.column_names}); "
                         "score it with the IFD scorer first.")
    if len(ds) == 0:
        raise ValueError(f"dataset {name!r} has no rows")


def _kept_positions(ds: Dataset, rule: SelectionRule) -> tuple[np.ndarray, SelectionReport]:
    """The row positions :func:`~hf_prospector.selection.select` keeps (best first), and its report."""
    scores = score_column(ds, rule.column)
    kept, report = select(Dataset.from_dict({rule.column: scores, "position": np.arange(len(scores))}), rule)
    return np.asarray(kept["position"][:], dtype=int), report


def _match_rows(a: Dataset, b: Dataset, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray, str]:
    """Positions in ``a`` and in ``b`` of the same rows, in ``a``'s order."""
    has_ids = [ROW_ID in a.column_names, ROW_ID in b.column_names]
    if has_ids[0] != has_ids[1]:
        with_id, without = (names[0], names[1]) if has_ids[0] else (names[1], names[0])
        raise ValueError(f"{with_id!r} has a {ROW_ID} column and {without!r} has none: keep {ROW_ID} in both "
                         "(to match rows by id) or drop it from both (to match rows by position).")
    if not has_ids[0]:
        if len(a) != len(b):
            raise ValueError(f"{names[0]!r} has {len(a)} rows and {names[1]!r} has {len(b)}, and neither has a "
                             f"{ROW_ID} column to match them: score the same rows in both, keeping {ROW_ID}.")
        return np.arange(len(a)), np.arange(len(b)), "position"
    ids = []
    for ds, name in ((a, names[0]), (b, names[1])):
        col = np.asarray(ds.with_format("arrow")[ROW_ID].to_numpy(zero_copy_only=False))
        if not np.issubdtype(col.dtype, np.integer):
            raise ValueError(f"{name!r}: {ROW_ID} must be integers without nulls, got dtype {col.dtype}")
        require_unique_row_ids(col.tolist(), where=f"{name!r}: ", fix=f"deduplicate the rows, or re-add {ROW_ID}")
        ids.append(col)
    only_a, only_b = np.setdiff1d(ids[0], ids[1]), np.setdiff1d(ids[1], ids[0])
    if len(only_a) or len(only_b):
        raise ValueError(f"the inputs hold different rows: {len(only_a)} {ROW_ID} only in {names[0]!r} "
                         f"(e.g. {only_a[:5].tolist()}), {len(only_b)} only in {names[1]!r} (e.g. "
                         f"{only_b[:5].tolist()}). Compare the same rows scored twice: filter both to the "
                         "shared ids first (Dataset.filter).")
    order_b = np.argsort(ids[1])
    return np.arange(len(a)), order_b[np.searchsorted(ids[1], ids[0], sorter=order_b)], ROW_ID


def _correlate(x: np.ndarray, y: np.ndarray) -> Correlation:
    ok = np.isfinite(x) & np.isfinite(y)
    used = int(ok.sum())
    if used < 2:
        return Correlation(math.nan, math.nan, used, len(x) - used)
    with warnings.catch_warnings():  # a constant column has no ranking: NaN, shown as "n/a"
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        rho = stats.spearmanr(x[ok], y[ok]).statistic
        tau = stats.kendalltau(x[ok], y[ok]).statistic
    return Correlation(float(rho), float(tau), used, len(x) - used)


def _summary(values: np.ndarray) -> ScoreSummary:
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return ScoreSummary(0, len(values), *([math.nan] * 7))
    q25, median, q75 = np.percentile(finite, [25, 50, 75])
    return ScoreSummary(len(finite), len(values) - len(finite), float(finite.mean()), float(finite.std()),
                        float(finite.min()), float(q25), float(median), float(q75), float(finite.max()))


def _leading_words(ds: Dataset, positions: np.ndarray, mapping: ColumnMapping | None) -> Counter:
    rows = ds.select(positions.tolist()).with_format(None)
    if "instruction" in rows.column_names and mapping is None:
        instructions = rows["instruction"]
    else:
        examples = batch_to_examples(rows[:], mapping, indices=positions.tolist()) if len(rows) else []
        instructions = [e.instruction for e in examples]
    return Counter(leading_word(text or "") or "(none)" for text in instructions)


def _scatter(x: np.ndarray, y: np.ndarray, names: tuple[str, str], corr: Correlation, path: Path) -> Path:
    ok = np.isfinite(x) & np.isfinite(y)
    fig = new_figure(5, 5)
    ax = fig.subplots()
    ax.scatter(x[ok], y[ok], s=6, alpha=min(0.6, max(0.05, 2000 / max(int(ok.sum()), 1))), linewidths=0)
    lo, hi = (float(min(x[ok].min(), y[ok].min())), float(max(x[ok].max(), y[ok].max()))) if ok.any() else (0, 1)
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8, label="y = x")
    ax.axvline(1, color="red", linestyle="--", linewidth=0.8, label="IFD = 1")
    ax.axhline(1, color="red", linestyle="--", linewidth=0.8)
    ax.set(xlabel=f"IFD ({names[0]})", ylabel=f"IFD ({names[1]})",
           title=f"Spearman {format_number(corr.spearman)}, {corr.rows_used} rows "
                 f"({corr.rows_excluded} NaN or inf left out)")
    ax.legend(loc="upper left")
    fig.savefig(path, dpi=120)
    return path


def _violins(datasets: Mapping[str, Dataset], panels: list[tuple[str, str, bool]], path: Path) -> Path:
    """One panel per (column, axis label, log10?) with a violin per dataset, of its finite values."""
    scale = {True: np.log10, False: np.asarray}
    with np.errstate(divide="ignore", invalid="ignore"):  # log10 of 0 or less is not finite: left out like NaN
        groups = [(label, [(name, scale[log](score_column(ds, col))) for name, ds in datasets.items()])
                  for col, label, log in panels]
    fig, _ = violin_figure(groups, len(panels) * (1.5 + 1.2 * len(datasets)))
    fig.savefig(path, dpi=120)
    return path


def _words(counts: list[tuple[str, int]]) -> str:
    return ", ".join(f"{w} {n}" for w, n in counts) or "—"


def _json_ready(value):
    """NaN to None (JSON has no NaN), paths and tuples to strings and lists."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


__getattr__, __dir__ = lazy_attributes(__name__, renamed={"SCORE_COLUMNS": "REPORT_COLUMNS"})
