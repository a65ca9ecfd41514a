"""compare(): correlations and top-x% overlaps against values worked out by hand, row matching, rendering."""

import json
import math

import numpy as np
import pytest
from datasets import Dataset
from matplotlib.image import imread

from hf_prospector.reports import compare
from hf_prospector.selection import SelectionRule, superfiltering

NAN, INF = float("nan"), float("inf")


def scored(ifd, ppl_cond=None, ppl_uncond=None, row_id=None) -> Dataset:
    n = len(ifd)
    columns = {"ifd": ifd, "ppl_cond": ppl_cond or [2.0] * n, "ppl_uncond": ppl_uncond or [3.0] * n}
    if row_id is not None:
        columns["row_id"] = row_id
    return Dataset.from_dict(columns)


def shuffled_with_ids(a: Dataset, b: Dataset, order: list[int]) -> tuple[Dataset, Dataset]:
    """The same pair with row_id added and B's rows reordered: matching by id must undo the shuffle."""
    a = a.add_column("row_id", list(range(len(a))))
    b = b.add_column("row_id", list(range(len(b)))).select(order)
    return a, b


# Correlation case. Rows 0-3 are used for ifd (row 4 is NaN in B) and for ppl_uncond (row 4 is inf in A).
# ifd:  x = .1 .2 .2 .3 -> ranks 1 2.5 2.5 4;  y = .1 .3 .2 .4 -> ranks 1 3 2 4.
#   Spearman = Pearson of ranks: sum dx*dy = 4.5, sum dx^2 = 4.5, sum dy^2 = 5 -> 4.5/sqrt(22.5) = sqrt(0.9).
#   Kendall tau-b: 5 concordant, 0 discordant, one pair tied in x only -> 5 / sqrt((6-1) * (6-0)).
# ppl_cond: exactly reversed -> -1 and -1.
# ppl_uncond: x = 1 2 2 3 -> ranks 1 2.5 2.5 4;  y = 2 1 1 3 -> ranks 3 1.5 1.5 4.
#   sum dx*dy = -0.75 + 2.25 = 1.5, sum dx^2 = sum dy^2 = 4.5 -> 1/3.
#   Pairs (0,1) (0,2) discordant, (0,3) (1,3) (2,3) concordant, (1,2) tied in both -> (3-2)/sqrt(5*5) = 0.2.
CORR_A = scored([.1, .2, .2, .3, .5], [1, 2, 3, 4, 5], [1, 2, 2, 3, INF])
CORR_B = scored([.1, .3, .2, .4, NAN], [5, 4, 3, 2, 1], [2, 1, 1, 3, 9])
CORR_EXPECTED = {"ifd": (math.sqrt(0.9), 5 / math.sqrt(30), 4, 1),
                 "ppl_cond": (-1.0, -1.0, 5, 0),
                 "ppl_uncond": (1 / 3, 0.2, 4, 1)}


@pytest.mark.parametrize("matched", ["position", "row_id"])
def test_correlations_match_hand_computed_values_with_ties(matched):
    a, b = CORR_A, CORR_B
    if matched == "row_id":
        a, b = shuffled_with_ids(a, b, [3, 0, 4, 2, 1])
    report = compare(a, b)
    assert report.matched_by == matched and report.rows == 5
    for col, (rho, tau, used, excluded) in CORR_EXPECTED.items():
        c = report.correlations[col]
        assert c.spearman == pytest.approx(rho) and c.kendall == pytest.approx(tau), col
        assert (c.rows_used, c.rows_excluded) == (used, excluded), col


# Overlap case, 24 rows. A has 22 eligible rows (row 0 = 1.5 >= 1, row 4 NaN), B has 23 (row 3 = 1.0),
# so the top 5/10/15% of the eligible rows hold floor(x * 22) = floor(x * 23) = 1/2/3 rows.
# A: rows 1 and 2 tie at .9 (row 1 first), then row 3 = .8 -> top {1}, {1,2}, {1,2,3}.
# B: row 2 = .97, row 0 = .95, row 4 = .85 (row 1 = .3 is low) -> top {2}, {2,0}, {2,0,4}.
# Overlaps |A & B| / |A|: 0/1, 1/2, 1/3.
FILLER = [0.5 - 0.01 * i for i in range(5, 24)]  # .45 ... .27, below every value above
OVER_A = scored([1.5, .9, .9, .8, NAN] + FILLER)
OVER_B = scored([.95, .3, .97, 1.0, .85] + FILLER)


@pytest.mark.parametrize("matched", ["position", "row_id"])
@pytest.mark.parametrize("selection, expected", [
    # the default: superfiltering, IFD < 1
    (superfiltering, [(1, 1, 0, 0.0), (2, 2, 1, 0.5), (3, 3, 1, 1 / 3)]),
    # IFD <= 1 (Cherry's bound): B's row 3 (1.0) becomes eligible and tops B; 24 eligible rows, still 1/2/3.
    # A {1}, {1,2}, {1,2,3};  B {3}, {3,2}, {3,2,0}  ->  0, 1/2, 2/3
    (lambda f: SelectionRule(top_fraction=f, ifd_max_inclusive=True), [(1, 1, 0, 0.0), (2, 2, 1, 0.5),
                                                                       (3, 3, 2, 2 / 3)]),
    # no bound: A's top gains row 0 (1.5), B's row 3 (1.0); 23 and 24 eligible rows, still 1/2/3.
    # A {0}, {0,1}, {0,1,2};  B {3}, {3,2}, {3,2,0}  ->  0, 0, 2/3
    (lambda f: SelectionRule(top_fraction=f, ifd_max=None), [(1, 1, 0, 0.0), (2, 2, 0, 0.0), (3, 3, 2, 2 / 3)]),
])
def test_top_overlaps_match_hand_computed_sets(matched, selection, expected):
    a, b = OVER_A, OVER_B
    if matched == "row_id":
        a, b = shuffled_with_ids(a, b, list(range(23, -1, -1)))
    report = compare(a, b, selection=selection)
    assert [o.fraction for o in report.overlaps] == [0.05, 0.10, 0.15]
    got = [(o.selected_a, o.selected_b, o.common, o.overlap) for o in report.overlaps]
    assert got == [pytest.approx(e) for e in expected]


def test_report_renders_markdown_json_and_a_scatter_png(tmp_path):
    # 1% of 22 or 23 eligible rows rounds down to 0: the overlap is undefined, shown as n/a / null
    report = compare(OVER_A, OVER_B, names=("gpt2", "llama"), out_dir=tmp_path, fractions=(0.01, 0.10))
    text = (tmp_path / "report.md").read_text()
    assert text == report.to_markdown()
    assert "# Score consistency: gpt2 vs llama" in text and "| 10% | `ifd-top10pct` | 2 | 2 | 1 | 0.500 |" in text
    assert "| 1% | `ifd-top1pct` | 0 | 0 | 0 | n/a |" in text and "](ifd_scatter.png)" in text
    image = imread(report.figures["ifd_scatter"])
    assert image.shape[0] > 100 and image.shape[1] > 100 and np.ptp(image[..., :3]) > 0
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))  # NaN became null
    assert data["names"] == ["gpt2", "llama"] and data["overlaps"][0]["overlap"] is None
    assert data["correlations"]["ifd"]["rows_excluded"] == 1  # row 4, NaN in A
    assert "ifd_scatter" not in compare(OVER_A, OVER_B).to_markdown()  # no figure without out_dir


def test_mismatched_row_ids_name_the_rows():
    a = scored([.1, .2, .3, .4, .5], row_id=[0, 1, 2, 3, 4])
    b = scored([.1, .2, .3, .4, .5], row_id=[0, 1, 2, 3, 7])
    with pytest.raises(ValueError, match=r"1 row_id only in 'A' \(e.g. \[4\]\), 1 only in 'B' \(e.g. \[7\]\)"):
        compare(a, b)


def test_repeated_row_ids_are_an_error():
    a = scored([.1, .2, .3], row_id=[0, 1, 2])
    b = scored([.1, .2, .3], row_id=[0, 1, 1])
    with pytest.raises(ValueError, match=r"'B': column 'row_id' repeats the value 1 \(rows 1 and 2\)"):
        compare(a, b)


def test_rows_without_ids_need_equal_lengths():
    with pytest.raises(ValueError, match="'A' has 3 rows and 'B' has 2"):
        compare(scored([.1, .2, .3]), scored([.1, .2]))


def test_row_id_in_one_input_only_is_an_error():
    with pytest.raises(ValueError, match="'B' has a row_id column and 'A' has none"):
        compare(scored([.1, .2]), scored([.1, .2], row_id=[0, 1]))


def test_missing_score_column_is_named():
    bare = Dataset.from_dict({"ifd": [.1, .2], "ppl_cond": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"'B' lacks the score columns \['ppl_uncond'\]"):
        compare(scored([.1, .2]), bare)


def test_non_numeric_score_column_is_named():
    text_scores = Dataset.from_dict({"ifd": ["high", "low"], "ppl_cond": [1.0, 2.0], "ppl_uncond": [1.0, 2.0]})
    with pytest.raises(TypeError, match="column 'ifd' holds Value"):
        compare(scored([.1, .2]), text_scores)


def test_report_columns_and_keyword_only_options():
    from hf_prospector import reports

    assert list(reports.REPORT_COLUMNS) == ["ppl_cond", "ppl_uncond", "ifd"]
    with pytest.warns(DeprecationWarning, match="SCORE_COLUMNS is now REPORT_COLUMNS"):
        assert reports.SCORE_COLUMNS is reports.REPORT_COLUMNS
    with pytest.raises(TypeError):
        compare(OVER_A, OVER_B, ("gpt2", "llama"))
    with pytest.raises(TypeError):
        reports.assess({"a": OVER_A}, "out")
