"""The embedded local backend end to end: git revisions that datasets.load_dataset reads back."""

from __future__ import annotations

import inspect
import subprocess
from typing import get_type_hints

import pytest
from datasets import DatasetDict, load_dataset
from huggingface_hub import DatasetCard

from hf_prospector.publishing import (GitError, Publication, checkout_revision, list_revisions, publish,
                                     publish_local)
from tests.publishing.helpers import (PROVENANCE, assert_png, assert_stats_match, provenance_table, rows_where,
                                     scored_dataset)


def git(repo, *args) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def load(repo, cache):
    return load_dataset(str(repo), cache_dir=str(cache))


def test_two_publishes_make_two_revisions_that_load_back(tmp_path):
    repo, cache = tmp_path / "repo", tmp_path / "cache"
    scored = scored_dataset()
    band = rows_where(scored, lambda row: 0.9 < row["ifd"] < 1.0)
    low = rows_where(scored, lambda row: row["ifd"] < 0.5)
    first = publish_local(band, repo, scored=scored, provenance=PROVENANCE, thresholds={"ifd": 0.9})
    second = publish_local(low, repo, scored=scored, provenance={**PROVENANCE, "selection_rule_slug": "low"})

    assert (first.revision, second.revision) == ("select-ifd-0.9-1", "select-low")
    assert {r.name: r.commit for r in list_revisions(repo)} == {
        "main": git(repo, "rev-parse", "main").strip(), first.revision: first.commit, second.revision: second.commit}
    assert git(repo, "ls-tree", "-r", "--name-only", "main").split() == [".gitattributes"]  # main untouched

    for publication, rows in ((second, low), (first, band)):
        checkout_revision(repo, publication.revision)
        loaded = load(repo, cache)
        assert list(loaded) == ["train"]
        assert loaded["train"].to_list() == rows.to_list()
        assert loaded["train"].features == rows.features

        card = DatasetCard.load(repo / "README.md")
        assert card.data.configs == [{"config_name": "default", "data_files": [{"split": "train",
                                                                               "path": "data/train-*"}]}]
        assert [(s["name"], s["num_examples"]) for s in card.data.dataset_info["splits"]] == [("train", len(rows))]
        assert provenance_table(card.text)["rows_selected"] == str(len(rows))
        assert_stats_match(card.text, {("ifd", "all rows"): scored["ifd"], ("ifd", "selected"): rows["ifd"],
                                       ("ppl_cond", "all rows"): scored["ppl_cond"],
                                       ("ppl_cond", "selected"): rows["ppl_cond"]})
        for name in ("ifd_histogram.png", "ifd_violin.png", "ppl_cond_histogram.png"):
            assert f"](figures/{name})" in card.text
            assert_png(repo / "figures" / name)

    message = git(repo, "log", "-1", "--format=%B", first.revision)
    assert message.startswith("Select ifd-0.9-1 from bob/alpaca-src@0123abc: ")
    for key in ("scorer: ifd", "model: tiny-llama", "template: alpaca", "max_length: 512", "rows_in: 40",
                f"rows_selected: {len(band)}", "selection_rule: ifd > 0.9 and ifd < 1"):
        assert key in message


def test_republishing_a_revision_adds_a_commit_and_replaces_the_section(tmp_path):
    repo = tmp_path / "repo"
    scored = scored_dataset(rows=12)
    one = publish_local(scored.select(range(4)), repo, revision="picked", scored=scored, provenance={"source": "x"})
    two = publish_local(DatasetDict({"train": scored.select(range(2)), "test": scored.select(range(5, 8))}), repo,
                        revision="picked", scored=scored, provenance={"source": "x"})
    assert git(repo, "rev-parse", f"{two.commit}~1").strip() == one.commit
    loaded = load(repo, tmp_path / "cache")
    assert {split: ds["row_id"] for split, ds in loaded.items()} == {"train": [100, 101], "test": [105, 106, 107]}
    card = DatasetCard.load(repo / "README.md")
    assert card.text.count("<!-- hf_prospector:start -->") == 1
    assert provenance_table(card.text)["rows_selected"] == "5"


def test_default_branch_needs_explicit_consent(tmp_path):
    scored = scored_dataset(rows=5)
    with pytest.raises(ValueError, match="default branch 'main'"):
        publish_local(scored, tmp_path / "repo", revision="main")
    done = publish_local(scored, tmp_path / "repo", revision="main", allow_default_branch=True)
    assert done.revision == "main" and load(tmp_path / "repo", tmp_path / "cache")["train"].num_rows == 5


def test_local_changes_are_never_overwritten(tmp_path):
    repo = tmp_path / "repo"
    scored = scored_dataset(rows=5)
    publish_local(scored, repo, revision="a")
    (repo / "notes.txt").write_text("mine")
    with pytest.raises(GitError, match="uncommitted changes"):
        publish_local(scored, repo, revision="b")
    assert (repo / "notes.txt").read_text() == "mine"
    assert sorted(r.name for r in list_revisions(repo)) == ["a", "main"]


def test_a_failed_publish_leaves_the_repository_as_it_was(tmp_path):
    repo = tmp_path / "repo"
    scored = scored_dataset(rows=5)
    publish_local(scored, repo, revision="a")
    head = git(repo, "rev-parse", "HEAD")
    with pytest.raises(ValueError, match="thresholds given for"):
        publish_local(scored, repo, revision="b", thresholds={"no_such_score": 1.0})
    assert git(repo, "rev-parse", "HEAD") == head and git(repo, "status", "--porcelain") == ""
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip() == "a"
    assert sorted(r.name for r in list_revisions(repo)) == ["a", "main"]


def test_bad_names_and_folders_are_refused(tmp_path):
    scored = scored_dataset(rows=3)
    with pytest.raises(ValueError, match="not a valid git branch name"):
        publish_local(scored, tmp_path / "repo", revision="bad..name")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty and is not a git repository"):
        publish_local(scored, tmp_path / "full", revision="a")


def test_a_file_is_not_a_repository(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"notes.txt is a file, not a folder"):
        publish_local(scored_dataset(rows=3), tmp_path / "notes.txt", revision="a")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_publishing_the_same_again_makes_no_commit(tmp_path):
    repo = tmp_path / "repo"
    scored = scored_dataset(rows=6)
    first = publish_local(scored.select(range(3)), repo, revision="a", scored=scored, provenance={"source": "x"})
    again = publish_local(scored.select(range(3)), repo, revision="a", scored=scored, provenance={"source": "x"})
    assert (again.revision, again.commit, again.unchanged, first.unchanged) == ("a", first.commit, True, False)
    assert git(repo, "rev-list", "--count", "a").strip() == "2"  # main's commit and the one publish
    assert git(repo, "status", "--porcelain") == ""
    changed = publish_local(scored.select(range(4)), repo, revision="a", scored=scored, provenance={"source": "x"})
    assert not changed.unchanged and git(repo, "rev-parse", f"{changed.commit}~1").strip() == first.commit


def test_an_empty_selection_needs_allow_empty(tmp_path):
    empty = scored_dataset(rows=4).select([])
    with pytest.raises(ValueError, match=r"kept 0 rows: nothing to publish.*allow_empty=True"):
        publish_local(empty, tmp_path / "repo", revision="none")
    assert not (tmp_path / "repo").exists()
    done = publish_local(empty, tmp_path / "repo", revision="none", allow_empty=True)
    assert done.revision == "none" and [r.name for r in list_revisions(tmp_path / "repo")] == ["main", "none"]


def test_publish_and_publish_local_take_the_same_keywords_and_return_a_publication():
    hub, local = inspect.signature(publish).parameters, inspect.signature(publish_local).parameters
    assert [p.kind for p in list(local.values())[:2]] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * 2
    for name in list(local)[2:]:  # each option: keyword-only in both, same name, same default
        assert local[name].kind is hub[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert local[name].default == hub[name].default, name
    assert set(list(hub)[2:]) - set(local) == {"create_pr", "private", "token"}  # the Hub's own
    assert get_type_hints(publish)["return"] is get_type_hints(publish_local)["return"] is Publication
