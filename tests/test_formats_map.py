"""Rows as ``Dataset.map`` sees them: errors name the dataset's row, unreadable rows get their reason."""

import math

import datasets
import pytest

from hf_prospector.formats import FormatError
from hf_prospector.scorers import GoldScorer, IFDScorer

BAD = 6  # not in the first map batch of 4 rows


@pytest.fixture(scope="module")
def bad_row():
    return datasets.Dataset.from_dict({"instruction": [f"Say {i}." for i in range(10)],
                                       "output": [None if i == BAD else f"{i}" for i in range(10)]})


def map_error(ds, scorer, **kwargs) -> str:
    with pytest.raises(FormatError) as e:
        ds.map(scorer, batched=True, batch_size=4, load_from_cache_file=False, **kwargs)
    return str(e.value)


def test_error_names_the_dataset_row_not_the_batch_row(tiny_model_dir, bad_row):
    scorer = IFDScorer(str(tiny_model_dir), dtype="float32")
    # Plain ds.map passes no row numbers: the position is said to be the batch's, with how to get the row.
    plain = map_error(bad_row, scorer)
    assert plain.startswith(f"row {BAD - 4} of this batch (") and "with_indices=True" in plain
    assert f"row {BAD - 4}, " not in plain
    assert map_error(bad_row, scorer, with_indices=True).startswith(f"row {BAD}, column 'output'")
    ids = bad_row.add_column("row_id", [f"r{i}" for i in range(10)])
    assert map_error(ids, scorer).startswith(f"row_id 'r{BAD}', column 'output'")


def tool_rows():
    call = {"type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    ask = {"role": "user", "content": "Weather in Paris?"}
    return [
        [ask, {"role": "assistant", "content": "Sunny, 18 degrees."}],
        [ask, {"role": "BOT", "content": "Sunny, 18 degrees."}],
        [ask, {"role": "assistant", "content": None, "tool_calls": [call]},
         {"role": "tool", "content": "18 C, sunny", "tool_call_id": "c1"},
         {"role": "assistant", "content": "Sunny, 18 degrees."}],
        [ask, {"role": "assistant", "content": None, "tool_calls": [call]}],
        [ask, {"role": "agent", "content": "Sunny, 18 degrees."}],
    ]


def part_rows():
    text = lambda t: {"type": "text", "text": t}  # noqa: E731
    return [
        [{"role": "user", "content": [text("Weather in"), text("Paris?")]},
         {"role": "Model", "content": [text("Sunny.")]}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "paris.png"}}]},
         {"role": "assistant", "content": [text("Sunny.")]}],
    ]


TOOL_NOTES = [None, None, None, "NaN: the response (turn 1) is a tool call with no text",
              "NaN: turn 1 has the role 'agent'"]
PART_NOTES = [None, "NaN: turn 0 (user): messages[0].content has a 'image_url' part, which a text model cannot read"]


@pytest.mark.parametrize("settings", [{}, {"template": "chat"}, {"convention": "superfiltering"},
                                      {"convention": "cherry"}])
def test_unreadable_rows_get_their_reason_per_row(tiny_model_dir, settings):
    scorer = IFDScorer(str(tiny_model_dir), dtype="float32", **settings)
    for rows, notes in [(tool_rows(), TOOL_NOTES), (part_rows(), PART_NOTES)]:
        out = datasets.Dataset.from_dict({"messages": rows}).map(scorer, batched=True, load_from_cache_file=False)
        assert len(out) == len(rows)
        for row, note in zip(out, notes):
            if note is None:
                assert math.isfinite(row["ifd"]) and "NaN" not in row["ifd_note"], row
            else:
                assert math.isnan(row["ifd"]) and row["ifd_note"].startswith(note), row


@pytest.mark.parametrize("convention", ["exact", "nuggets"])
def test_gold_notes_say_why_a_row_cannot_be_read(tiny_model_dir, convention, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_PROSPECTOR_CACHE", str(tmp_path))
    tasks = datasets.Dataset.from_dict({"instruction": ["Say hello."], "output": ["hello there"]})
    scorer = GoldScorer(str(tiny_model_dir), task_set=tasks, dtype="float32", convention=convention)
    out = datasets.Dataset.from_dict({"messages": tool_rows()}).map(scorer, batched=True, load_from_cache_file=False)
    assert [math.isnan(s) for s in out["gold_score"]] == [False, False, False, True, True]
    assert "tool call with no text" in out[3]["gold_note"] and "'agent'" in out[4]["gold_note"]
