"""The card: metadata, provenance, statistics against a brute-force computation, figures, merging."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np
import pytest
from datasets import Dataset, DatasetDict
from huggingface_hub import DatasetCard

import hf_prospector
from hf_prospector.publishing import commit_message, default_revision, make_card, score_stats, write_card
from hf_prospector.publishing.card import SECTION_END, SECTION_START, complete_provenance, merge_card
from tests.publishing.helpers import (PROVENANCE, assert_png, assert_stats_match, provenance_table, rows_where,
                                     scored_dataset)


def in_band(row) -> bool:
    return 0.9 < row["ifd"] < 1.0


def test_card_stats_provenance_and_metadata_match_the_data(tmp_path):
    scored = scored_dataset()
    selected = rows_where(scored, in_band)
    card = make_card(scored, tmp_path, selected=selected, provenance=PROVENANCE, thresholds={"ifd": 0.9},
                     license="cc-by-nc-4.0")

    parsed = DatasetCard(str(card))  # round trip through huggingface_hub's parser
    meta = parsed.data.to_dict()
    assert meta["license"] == "cc-by-nc-4.0"
    assert meta["size_categories"] == ["n<1K"]
    assert meta["task_categories"] == ["text-generation"]
    assert_stats_match(parsed.text, {
        ("ifd", "all rows"): scored["ifd"], ("ifd", "selected"): selected["ifd"],
        ("ppl_cond", "all rows"): scored["ppl_cond"], ("ppl_cond", "selected"): selected["ppl_cond"],
    })
    facts = provenance_table(parsed.text)
    assert facts["rows_in"] == str(len(scored)) and facts["rows_selected"] == str(len(selected))
    assert facts["library_version"] == hf_prospector.__version__
    assert facts["model"] == "tiny-llama" and facts["selection_rule"] == "ifd > 0.9 and ifd < 1"
    for name in ("ifd_histogram.png", "ifd_violin.png", "ppl_cond_histogram.png"):
        assert f"](figures/{name})" in parsed.text
        assert_png(tmp_path / "figures" / name)


def test_selected_rows_without_scores_are_matched_by_row_id(tmp_path):
    scored = scored_dataset()
    selected = rows_where(scored, in_band).remove_columns(["ifd", "ppl_cond"]).shuffle(seed=1)
    card = make_card(scored, tmp_path, selected=selected, provenance=PROVENANCE)
    by_id = dict(zip(scored["row_id"], scored["ifd"]))
    assert_stats_match(card.text, {
        ("ifd", "all rows"): scored["ifd"], ("ifd", "selected"): [by_id[r] for r in selected["row_id"]],
        ("ppl_cond", "all rows"): scored["ppl_cond"],
        ("ppl_cond", "selected"): [scored["ppl_cond"][r - 100] for r in selected["row_id"]],
    })


def test_card_of_a_scored_dataset_alone_and_the_card_command(tmp_path):
    scored = scored_dataset(rows=12)
    path = write_card(scored, tmp_path, provenance={"source": "local.json"}, score_columns=["ifd"])
    card = DatasetCard.load(path)
    assert_stats_match(card.text, {("ifd", "all rows"): scored["ifd"]})
    assert "selected" not in card_sections(card.text)
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["ifd_histogram.png", "ifd_violin.png"]


def card_sections(text: str) -> str:
    return text[text.index(SECTION_START):text.index(SECTION_END)]


def test_selection_spread_over_splits_is_counted_whole(tmp_path):
    scored = scored_dataset()
    band = rows_where(scored, in_band)
    high = rows_where(scored, lambda row: row["ifd"] >= 1.2)
    card = make_card(scored, tmp_path, selected=DatasetDict({"train": band, "test": high}), provenance={})
    assert provenance_table(card.text)["rows_selected"] == str(len(band) + len(high))
    assert_stats_match(card.text, {
        ("ifd", "all rows"): scored["ifd"], ("ifd", "selected"): list(band["ifd"]) + list(high["ifd"]),
        ("ppl_cond", "all rows"): scored["ppl_cond"],
        ("ppl_cond", "selected"): list(band["ppl_cond"]) + list(high["ppl_cond"])})


def test_score_stats_count_nan_and_infinite_as_missing():
    stats = score_stats(np.array([1.0, np.nan, 3.0, np.inf, 2.0]))
    assert (stats["count"], stats["nan"]) == (3, 2)
    assert (stats["min"], stats["q50"], stats["mean"], stats["max"]) == (1.0, 2.0, 2.0, 3.0)
    empty = score_stats(np.array([np.nan]))
    assert (empty["count"], empty["nan"]) == (0, 1) and math.isnan(empty["mean"])


def test_rows_with_no_finite_score_get_a_table_line_but_no_figure(tmp_path):
    ds = Dataset.from_dict({"ifd": [None, None], "gold_score": [0.5, 0.7]})
    card = make_card(ds, tmp_path, provenance={})
    assert "| ifd | all rows | 0 | 2 | n/a |" in card.text
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["gold_score_histogram.png"]


@pytest.mark.parametrize("selected, scored_ids, message", [
    ({"row_id": [1, 9]}, [1, 2, 3], "not in the scored dataset"),
    ({"row_id": [1]}, [1, 1, 3], r"scored dataset: column 'row_id' repeats the value 1 \(rows 0 and 1\)"),
])
def test_row_id_problems_are_named(tmp_path, selected, scored_ids, message):
    scored = Dataset.from_dict({"row_id": scored_ids, "ifd": [0.5] * len(scored_ids)})
    with pytest.raises(ValueError, match=message):
        make_card(scored, tmp_path, selected=Dataset.from_dict(selected), provenance={})


def test_bad_columns_thresholds_and_counts_are_refused(tmp_path):
    scored = Dataset.from_dict({"ifd": [0.5, 0.6], "note": ["a", "b"]})
    with pytest.raises(ValueError, match="'note' is not numeric"):
        make_card(scored, tmp_path, provenance={}, score_columns=["note"])
    with pytest.raises(ValueError, match="thresholds given for \\['gold_score'\\]"):
        make_card(scored, tmp_path, provenance={}, thresholds={"gold_score": 1.0})
    with pytest.raises(ValueError, match="no 'ifd' column and no row_id"):
        make_card(scored, tmp_path, selected=Dataset.from_dict({"note": ["a"]}), provenance={})
    with pytest.raises(ValueError, match="rows_selected.*the data has 2 rows"):
        complete_provenance({"rows_selected": 5}, scored)


def test_commit_message_records_the_recipe():
    facts = complete_provenance(PROVENANCE, Dataset.from_dict({"a": [1, 2]}), Dataset.from_dict({"a": [1, 2, 3]}))
    summary, description = commit_message(facts)
    assert summary == "Select ifd-0.9-1 from bob/alpaca-src@0123abc: 2 of 3 rows"
    lines = dict(line.split(": ", 1) for line in description.splitlines())
    assert lines == {**{k: str(v) for k, v in PROVENANCE.items()}, "rows_in": "3", "rows_selected": "2",
                     "library_version": hf_prospector.__version__}


def test_default_revision_comes_from_the_rule_slug_or_the_time():
    assert default_revision({"selection_rule_slug": "ifd-top5pct"}) == "select-ifd-top5pct"
    assert default_revision({"selection_rule_slug": "IFD top 5%/x"}) == "select-ifd-top-5-x"
    now = datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    assert default_revision({}, now=now) == "select-20250304-050607"


def test_merge_keeps_existing_metadata_and_text_and_replaces_our_section(tmp_path):
    scored = scored_dataset(rows=10)
    existing = DatasetCard("---\nlicense: mit\nconfigs:\n- config_name: default\n  data_files: data/*\n"
                           "tags:\n- alpaca\n---\n\n# Source card\n\nWritten by the source's authors.\n")
    first = merge_card(existing, make_card(scored, tmp_path, provenance={"source": "one"}, license="apache-2.0"))
    again = merge_card(first, make_card(scored, tmp_path, provenance={"source": "two"}))
    meta = DatasetCard(str(again)).data.to_dict()
    assert meta["license"] == "mit"  # the source's license wins over the argument
    assert meta["configs"] == [{"config_name": "default", "data_files": "data/*"}]
    assert meta["tags"] == ["alpaca", "hf-prospector", "data-selection"]
    assert again.text.count(SECTION_START) == 1 and "| source | two |" in again.text
    assert "| source | one |" not in again.text
    assert again.text.index(SECTION_END) < again.text.index("Written by the source's authors.")


def test_the_card_columns_are_card_columns_and_the_old_names_warn():
    from hf_prospector import publishing
    from hf_prospector.publishing import card

    assert "gold_score" in card.CARD_COLUMNS and publishing.CARD_COLUMNS is card.CARD_COLUMNS
    for module, old, new in ((publishing, "SCORE_COLUMNS", "CARD_COLUMNS"), (card, "SCORE_COLUMNS", "CARD_COLUMNS"),
                             (card, "score_columns", "card_columns")):
        with pytest.warns(DeprecationWarning, match=f"{old} is now {new}"):
            assert getattr(module, old) is getattr(module, new)
    with pytest.raises(TypeError):
        make_card(scored_dataset(rows=3), "out", None, {})  # options are keyword-only
