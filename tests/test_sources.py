"""Where rows come from: a local path is never looked up on the Hub; bad files are named with what to fix."""

import os

import datasets
import pytest

from hf_prospector.sources import HubUnreachableError, load_rows, local_path


def test_what_is_read_as_a_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for source in ("rows.jsonl", "rows.parquet", "./rows", "../rows", "~/rows", str(tmp_path / "rows"),
                   os.path.join("data", "rows")):
        assert local_path(source) is not None, source
    for source in ("tatsu-lab/alpaca", "user/rows.v2", "demo", "https://example.com/rows.jsonl"):
        assert local_path(source) is None, source


def test_a_hub_id_that_cannot_be_reached_names_the_endpoint_and_offline_mode():
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # as tests/conftest.py sets it
    expected = (r"cannot load the task set 'user/rows' from the Hub: the Hub endpoint https://huggingface.co "
                r"was not reached; offline mode is on")
    with pytest.raises(HubUnreachableError, match=expected):
        load_rows("user/rows", what="task set")


def test_a_parquet_file_with_zero_rows_keeps_its_columns(tmp_path):
    rows = datasets.Dataset.from_dict({"instruction": ["a"], "output": ["b"], "ifd": [0.5]}).select([])
    rows.to_parquet(str(tmp_path / "none.parquet"))
    loaded = load_rows(str(tmp_path / "none.parquet"))
    assert len(loaded) == 0 and loaded.features == rows.features


def test_json_without_rows_and_a_folder_that_is_not_a_dataset(tmp_path):
    (tmp_path / "none.json").write_text("[]")
    with pytest.raises(ValueError, match=r"none.json holds no rows"):
        load_rows(str(tmp_path / "none.json"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(FileNotFoundError, match=r"is a folder but not a saved dataset"):
        load_rows(str(tmp_path / "folder"))


def test_a_saved_dataset_dict_gives_the_split(tmp_path):
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"a": [1, 2]}),
                                   "test": datasets.Dataset.from_dict({"a": [3]})})
    splits.save_to_disk(str(tmp_path / "saved"))
    assert load_rows(str(tmp_path / "saved"), split="test")["a"] == [3]
