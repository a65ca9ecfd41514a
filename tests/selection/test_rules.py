"""Selection rules: exact selections on hand-built data, and a plain-Python reference on random data."""

from __future__ import annotations

import re

import numpy as np
import pytest
from datasets import Dataset, Features, Value

from hf_prospector.selection import (SelectionReport, SelectionRule, cherry, fraction_count, nuggets, select,
                                    superfiltering)
from tests.oracles import top_fraction

NAN, INF = float("nan"), float("inf")
#        row:  0    1    2    3    4    5    6     7     8    9
IFD = [0.8, NAN, 0.5, 1.0, 0.8, 1.3, 0.95, None, 0.5, INF]
# Eligible (finite, < 1), best first, ties to the earlier row: 6 (0.95), 0, 4 (0.8), 2, 8 (0.5).


@pytest.fixture()
def ds() -> Dataset:
    return Dataset.from_dict({"ifd": IFD, "row": list(range(len(IFD)))})


def rows(ds: Dataset) -> list[int]:
    return ds["row"][:]


@pytest.mark.parametrize("rule, expected, dropped", [
    (SelectionRule(top_fraction=0.5), [6, 0], {"not_finite": 3, "ifd_out_of_range": 2, "not_top": 3}),
    (SelectionRule(top_fraction=0.6), [6, 0, 4], {"not_finite": 3, "ifd_out_of_range": 2, "not_top": 2}),
    (SelectionRule(top_fraction=0.7), [6, 0, 4], {"not_finite": 3, "ifd_out_of_range": 2, "not_top": 2}),
    (SelectionRule(top_fraction=0.8), [6, 0, 4, 2], {"not_finite": 3, "ifd_out_of_range": 2, "not_top": 1}),
    (SelectionRule(top_fraction=0.1), [], {"not_finite": 3, "ifd_out_of_range": 2, "not_top": 5}),
    (SelectionRule(top_n=2, lowest=True), [2, 8], {"not_finite": 3, "ifd_out_of_range": 2, "not_top": 3}),
    (SelectionRule(top_n=4, lowest=True), [2, 8, 0, 4], {"not_finite": 3, "ifd_out_of_range": 2, "not_top": 1}),
    (SelectionRule(top_n=100), [6, 0, 4, 2, 8], {"not_finite": 3, "ifd_out_of_range": 2, "not_top": 0}),
    (SelectionRule(top_n=1, ifd_max_inclusive=True), [3], {"not_finite": 3, "ifd_out_of_range": 1, "not_top": 5}),
    (SelectionRule(top_n=3, ifd_max=None), [5, 3, 6], {"not_finite": 3, "not_top": 4}),
    (SelectionRule(top_n=2, ifd_max=0.9), [0, 4], {"not_finite": 3, "ifd_out_of_range": 3, "not_top": 2}),
    (SelectionRule(threshold=0.8), [6], {"not_finite": 3, "ifd_out_of_range": 2, "not_above_threshold": 4}),
    (SelectionRule(threshold=0.79), [6, 0, 4], {"not_finite": 3, "ifd_out_of_range": 2, "not_above_threshold": 2}),
    (SelectionRule(threshold=0.8, lowest=True), [2, 8],
     {"not_finite": 3, "ifd_out_of_range": 2, "not_below_threshold": 3}),
])
def test_exact_selection(ds, rule, expected, dropped):
    out, report = select(ds, rule)
    assert rows(out) == expected
    assert report.dropped == dropped
    assert (report.considered, report.kept) == (10, len(expected))
    assert report.kept + sum(report.dropped.values()) == report.considered
    assert report.eligible == 10 - dropped["not_finite"] - dropped.get("ifd_out_of_range", 0)


def test_original_order_keeps_the_same_rows_in_row_order(ds):
    by_score, _ = select(ds, SelectionRule(top_n=3))
    original, _ = select(ds, SelectionRule(top_n=3), order="original")
    assert rows(by_score) == [6, 0, 4] and rows(original) == [0, 4, 6]


def test_result_is_the_rows_themselves(ds):
    out, _ = select(ds, SelectionRule(top_n=3))
    assert out.column_names == ds.column_names
    assert out.to_list() == [ds[i] for i in (6, 0, 4)]


def test_a_non_ifd_column_has_no_bound():
    gold = Dataset.from_dict({"gold_score": [0.9, NAN, 0.86, 0.85, 2.0, 0.85, None], "row": list(range(7))})
    out, report = select(gold, nuggets())  # > 0.85, strictly
    assert rows(out) == [4, 0, 2]
    assert report.dropped == {"not_finite": 2, "not_above_threshold": 2}


def test_integer_scores_work():
    counts = Dataset.from_dict({"n": [3, 1, 3, 2], "row": [0, 1, 2, 3]})
    out, _ = select(counts, SelectionRule(column="n", top_n=3))
    assert rows(out) == [0, 2, 3]


def test_fraction_rounds_down_against_eligible_rows():
    assert fraction_count(0.29, 100) == 29  # 0.29 * 100 is 28.999999999999996 in floats
    assert fraction_count(0.05, 101) == 5
    assert fraction_count(0.05, 10) == 0
    assert fraction_count(1.0, 7) == 7
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            fraction_count(bad, 10)
    scores = Dataset.from_dict({"ifd": [0.1 * i for i in range(10)] + [NAN] * 90})
    _, report = select(scores, SelectionRule(top_fraction=0.5))
    assert report.kept == 5  # half of the 10 eligible rows, not of the 100 rows
    assert "10 eligible" in report.note


def reference(scores: list, rule: SelectionRule) -> list[int]:
    """The rule written out with Python's sort (tests/oracles.py): a second, independent implementation."""
    below = rule.ifd_max if rule.column in ("ifd", "ifd_loss") else None
    eligible = dict(below=below, inclusive=rule.ifd_max_inclusive, lowest=rule.lowest)
    if rule.top_fraction is not None:
        return top_fraction(scores, rule.top_fraction, **eligible)
    ranked = top_fraction(scores, 1.0, **eligible)  # every eligible row, best first
    if rule.top_n is not None:
        return ranked[:rule.top_n]
    return [i for i in ranked if (scores[i] < rule.threshold if rule.lowest else scores[i] > rule.threshold)]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("rule", [
    SelectionRule(top_fraction=0.05), SelectionRule(top_fraction=0.15, lowest=True),
    SelectionRule(top_fraction=1.0), SelectionRule(top_n=17), SelectionRule(top_n=9, lowest=True),
    SelectionRule(threshold=0.7), SelectionRule(threshold=0.3, lowest=True),
    SelectionRule(top_n=25, ifd_max_inclusive=True), SelectionRule(top_fraction=0.2, ifd_max=None),
    SelectionRule(column="ifd_loss", top_n=12), SelectionRule(column="gold", top_fraction=0.1),
])
def test_matches_reference_on_random_scores_with_ties(seed, rule):
    rng = np.random.default_rng(seed)
    n = 300
    values = np.round(rng.uniform(0, 1.3, n), 1)  # 14 distinct values: many ties, some >= 1
    scores = [None if rng.random() < 0.05 else float(v) for v in values]
    for i in rng.choice(n, 10, replace=False):
        scores[i] = NAN
    ds = Dataset.from_dict({rule.column: scores, "row": list(range(n))})
    out, report = select(ds, rule)
    assert rows(out) == reference(scores, rule)
    assert report.kept + sum(report.dropped.values()) == report.considered == n


def test_names_are_short_distinct_branch_safe_slugs():
    rules = [superfiltering(0.05), superfiltering(0.1), cherry(0.1), nuggets(), SelectionRule(top_n=1000),
             SelectionRule(top_n=1000, lowest=True), SelectionRule(top_fraction=0.125),
             SelectionRule(top_fraction=0.05, ifd_max=None), SelectionRule(column="score a/b", threshold=-2)]
    names = [r.name for r in rules]
    assert names[:4] == ["ifd-top5pct", "ifd-top10pct", "ifd_loss-top10pct-le1", "gold_score-gt0p85"]
    assert names[4:] == ["ifd-top1000", "ifd-bottom1000", "ifd-top12p5pct", "ifd-top5pct-unbounded",
                         "score-a-b-gtm2"]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", n) for n in names)


def test_describe_states_the_rule():
    assert superfiltering(0.05).describe() == (
        "Keeps the 5% of eligible rows (rounded down) with the highest `ifd`, among rows with a finite score "
        "and `ifd` < 1; ties go to the earlier row.")
    assert nuggets().describe() == "Keeps the rows with `gold_score` > 0.85, among rows with a finite score."
    assert "`ifd_loss` <= 1" in cherry(0.1).describe()


def test_report_to_dict_and_chaining():
    first = SelectionReport("a", 10, 8, 4, {"not_finite": 2, "not_top": 4}, "x.")
    second = SelectionReport("b", 4, 4, 1, {"not_top": 3}, "y.")
    chained = first.followed_by(second)
    assert chained.to_dict() == {"rule": "a, then b", "considered": 10, "eligible": 8, "kept": 1,
                                 "dropped": {"not_finite": 2, "not_top": 7}, "note": "x. Then: y."}
    with pytest.raises(ValueError, match="add up"):
        SelectionReport("c", 10, 10, 4, {"not_top": 5})
    with pytest.raises(ValueError, match="considered 4 rows but this one kept 1"):
        chained.followed_by(second)


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one"), ({"top_n": 3, "threshold": 0.5}, "exactly one"),
    ({"top_n": 0}, "top_n must be an integer >= 1, got 0"),
    ({"top_n": 2.5}, r"top_n must be an integer >= 1, got 2.5 \(float\)"),
    ({"top_fraction": 0.0}, "fraction"), ({"top_fraction": 2}, "fraction"),
    ({"threshold": NAN}, "finite"),
])
def test_bad_rules_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SelectionRule(**kwargs)


def test_bad_columns_and_orders_say_what_to_do(ds):
    with pytest.raises(KeyError, match="no score column 'gold_score'.*Score it first"):
        select(ds, nuggets())
    text = Dataset.from_dict({"ifd": ["0.5", "0.7"]})
    with pytest.raises(TypeError, match="'ifd' holds .*cast_column"):
        select(text, SelectionRule(top_n=1))
    with pytest.raises(ValueError, match="order"):
        select(ds, SelectionRule(top_n=1), order="random")


def test_empty_dataset_keeps_nothing():
    empty = Dataset.from_dict({"ifd": []}, features=Features({"ifd": Value("float64")}))
    out, report = select(empty, SelectionRule(top_fraction=0.5))
    assert len(out) == 0 and report.to_dict()["considered"] == 0


def test_order_words_are_ranked_and_original_and_the_old_word_still_works(ds):
    ranked, _ = select(ds, SelectionRule(top_n=3), order="ranked")
    with pytest.warns(DeprecationWarning, match='order="score" is now order="ranked"'):
        old, _ = select(ds, SelectionRule(top_n=3), order="score")
    assert rows(ranked) == rows(old) == [6, 0, 4]
    with pytest.raises(TypeError):
        select(ds, SelectionRule(top_n=3), "original")  # options are keyword-only
    with pytest.raises(TypeError):
        superfiltering(0.05, "ifd_loss")


def test_the_bounded_columns_are_ifd_ratio_columns_and_the_old_name_warns():
    import hf_prospector.selection as selection
    from hf_prospector.selection import rules

    assert selection.IFD_RATIO_COLUMNS == ("ifd", "ifd_loss")
    for module in (selection, rules):
        with pytest.warns(DeprecationWarning, match="IFD_COLUMNS is now IFD_RATIO_COLUMNS"):
            assert module.IFD_COLUMNS is selection.IFD_RATIO_COLUMNS
    assert set(selection.__all__) <= set(dir(selection)) and "IFD_COLUMNS" not in selection.__all__
