"""The resumable scoring run, in process: same rows and scores as ``Dataset.map``, resume, streaming."""

import json
import math
import os

import datasets
import numpy as np
import pytest

from hf_prospector.runner import RunMismatchError, RunWarning, nan_summary, plan, process_state, score_run, work_dir
from hf_prospector.scorers import IFD_COLUMNS, IFDScorer
from hf_prospector.sources import load_rows
from hf_prospector.utils import require_unique_row_ids
from tests.runner.counting import CountingScorer, ScorerFailed

N_ROWS = 10


@pytest.fixture(scope="module")
def rows():
    return load_rows("demo").select(range(N_ROWS))


@pytest.fixture(scope="module")
def reference(rows, tiny_model_dir):
    """The scores ``Dataset.map`` gives, one row per call as the runs below score them."""
    return rows.map(IFDScorer(str(tiny_model_dir), dtype="float32", max_length=96), batched=True, batch_size=1)


def scorer(model, **kwargs):
    return CountingScorer(str(model), dtype="float32", **{"max_length": 96, **kwargs})


def run(rows, scorer, output, **kwargs):
    kwargs = {"batch_size": 1, "part_rows": 3, "progress": False, "source_name": "demo", **kwargs}
    return score_run(rows, scorer, output, **kwargs)


def assert_same_rows(out, expected, row_ids):
    """Same input columns and values, ``row_id`` as given, scores equal to the reference's."""
    assert out["row_id"] == row_ids
    for column in expected.column_names:
        if column in IFD_COLUMNS and column != "ifd_note":
            np.testing.assert_allclose(out[column], expected[column], rtol=1e-5, atol=1e-6, err_msg=column)
        else:
            assert out[column] == expected[column], column


def test_scores_equal_dataset_map_and_keep_row_order(rows, reference, tiny_model_dir, tmp_path):
    s = scorer(tiny_model_dir)
    out, summary = run(rows, s, tmp_path / "scored")
    assert out.column_names == ["row_id"] + rows.column_names + list(IFD_COLUMNS)
    assert_same_rows(out, reference, list(range(N_ROWS)))
    assert sorted(s.scored) == list(range(N_ROWS))  # every row scored exactly once
    assert (summary.rows, summary.rows_scored, summary.rows_resumed, summary.processes) == (N_ROWS, N_ROWS, 0, 1)
    assert datasets.load_from_disk(str(tmp_path / "scored"))["row_id"] == list(range(N_ROWS))
    manifest = json.loads((work_dir(tmp_path / "scored") / "manifest.json").read_text())
    assert manifest["complete"] and manifest["processes"] == 1 and manifest["rows"] == N_ROWS
    assert not list(work_dir(tmp_path / "scored").glob("part-*"))  # parts are removed once gathered


def test_resume_after_a_crash_scores_only_the_missing_rows(rows, reference, tiny_model_dir, tmp_path):
    out_path = tmp_path / "scored.parquet"
    with pytest.raises(ScorerFailed):
        run(rows, scorer(tiny_model_dir, fail_after=7), out_path)  # blocks of 3: rows 0-5 saved, row 6 lost
    parts = sorted(p.name for p in work_dir(out_path).glob("part-*.parquet"))
    assert parts == ["part-000000000000-000000000003.parquet", "part-000000000003-000000000006.parquet"]
    second = scorer(tiny_model_dir)
    out, summary = run(rows, second, out_path)
    assert sorted(second.scored) == list(range(6, N_ROWS))
    assert (summary.rows_scored, summary.rows_resumed) == (4, 6)
    assert_same_rows(out, reference, list(range(N_ROWS)))
    assert_same_rows(datasets.Dataset.from_parquet(str(out_path)), reference, list(range(N_ROWS)))


def test_compile_auto_hears_the_rows_this_run_has_left(rows, tiny_model_dir, tmp_path, monkeypatch):
    """The runner knows how many rows are left (a resumed run: fewer), so compile="auto" can weigh the compile."""
    from hf_prospector.engine.compilation import DeferredCompiler

    told = []
    monkeypatch.setattr(DeferredCompiler, "expect", lambda self, scored, left: told.append((scored, left)))
    with pytest.raises(ScorerFailed):
        run(rows, scorer(tiny_model_dir, fail_after=4), tmp_path / "out")  # rows 0-2 saved
    assert told == [(1, 9), (1, 8), (1, 7), (1, 6)]
    told.clear()
    second = scorer(tiny_model_dir)
    run(rows, second, tmp_path / "out")
    assert told == [(1, left) for left in range(6, -1, -1)] and second._rows_left is None


@pytest.mark.slow
def test_time_based_parts_save_progress_inside_a_block(rows, tiny_model_dir, tmp_path):
    with pytest.raises(ScorerFailed):  # part_seconds=0: a part after every batch, though a block has 100 rows
        run(rows, scorer(tiny_model_dir, fail_after=4), tmp_path / "out", part_rows=100, part_seconds=0)
    spans = sorted(p.name[5:-8] for p in work_dir(tmp_path / "out").glob("part-*.parquet"))
    assert spans == [f"{i:012d}-{i + 1:012d}" for i in range(4)]
    second = scorer(tiny_model_dir)
    run(rows, second, tmp_path / "out", part_rows=100, part_seconds=0)
    assert sorted(second.scored) == list(range(4, N_ROWS))


def test_a_finished_run_is_not_scored_again(rows, tiny_model_dir, tmp_path):
    run(rows, scorer(tiny_model_dir), tmp_path / "out")
    again = scorer(tiny_model_dir)
    out, summary = run(rows, again, tmp_path / "out")
    assert again.scored == [] and summary.rows_scored == 0 and len(out) == N_ROWS


@pytest.mark.slow
def test_other_settings_never_mix_with_unfinished_parts(rows, tiny_model_dir, tmp_path):
    with pytest.raises(ScorerFailed):
        run(rows, scorer(tiny_model_dir, max_length=64, fail_after=4), tmp_path / "out")
    with pytest.raises(RunMismatchError, match=r"scorer\.max_length: 64 -> 96"):
        run(rows, scorer(tiny_model_dir, max_length=96), tmp_path / "out")
    fresh = scorer(tiny_model_dir, max_length=96)
    out, _ = run(rows, fresh, tmp_path / "out", fresh=True)
    assert sorted(fresh.scored) == list(range(N_ROWS))
    # Finished work under other settings is simply replaced: nothing unfinished is lost.
    other = scorer(tiny_model_dir, max_length=64)
    run(rows, other, tmp_path / "out")
    assert sorted(other.scored) == list(range(N_ROWS))


def test_plan_table():
    same = {"scorer": {"max_length": 1}}
    assert plan(None, same, False, False, False) == "new"
    assert plan({"identity": same, "complete": False}, same, True, False, False) == "resume"
    assert plan({"identity": same, "complete": True}, same, False, True, False) == "done"
    assert plan({"identity": same, "complete": True}, same, False, False, False) == "new"  # output deleted
    assert plan({"identity": same, "complete": False}, same, True, False, True) == "new"  # fresh
    other = {"scorer": {"max_length": 2}}
    assert plan({"identity": other, "complete": True}, same, False, True, False) == "new"
    assert plan({"identity": other, "complete": False}, same, False, False, False) == "new"  # no parts yet
    with pytest.raises(RunMismatchError, match=r"scorer\.max_length: 2 -> 1"):
        plan({"identity": other, "complete": False}, same, True, False, False)


@pytest.mark.slow
def test_streamed_input_gives_the_same_output_and_resumes(rows, reference, tiny_model_dir, tmp_path):
    data = tmp_path / "rows.jsonl"
    rows.to_json(str(data))
    stream = load_rows(str(data), streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    with pytest.raises(ScorerFailed):
        run(stream, scorer(tiny_model_dir, fail_after=5), tmp_path / "out", source_name=str(data))
    second = scorer(tiny_model_dir)
    out, summary = run(stream, second, tmp_path / "out", source_name=str(data))
    assert sorted(second.scored) == list(range(3, N_ROWS))  # the block 0-3 was saved before the failure
    assert summary.rows == N_ROWS
    assert_same_rows(out, reference, list(range(N_ROWS)))


@pytest.mark.slow
def test_an_input_row_id_is_kept_and_must_be_unique(rows, reference, tiny_model_dir, tmp_path):
    ids = [f"r{i:02d}" for i in reversed(range(N_ROWS))]
    out, _ = run(rows.add_column("row_id", ids), scorer(tiny_model_dir), tmp_path / "out")
    assert_same_rows(out, reference, ids)
    with pytest.raises(ValueError, match=r"repeats the value 'r05' \(rows 4 and 5\)"):
        require_unique_row_ids(["r09", "r08", "r07", "r06", "r05", "r05"])
    duplicated = rows.add_column("row_id", [0] * N_ROWS)
    with pytest.raises(ValueError, match="row_id"):
        run(duplicated, scorer(tiny_model_dir), tmp_path / "dup")


@pytest.mark.slow
def test_score_columns_of_the_input_are_replaced(rows, reference, tiny_model_dir, tmp_path):
    stale = rows.add_column("ifd", [123.0] * N_ROWS)
    out, _ = run(stale, scorer(tiny_model_dir), tmp_path / "out")
    assert out.column_names.count("ifd") == 1
    np.testing.assert_allclose(out["ifd"], reference["ifd"], rtol=1e-5)


def test_nan_summary_counts_rows_and_reasons():
    ds = datasets.Dataset.from_dict({"ifd": [0.5, math.nan, 0.7, math.nan, math.nan],
                                     "ifd_loss": [0.4, math.nan, math.nan, math.nan, math.nan],
                                     "n_response_tokens": [3, 0, 4, 0, 9],
                                     "ifd_note": ["", "NaN: empty response", "x", "NaN: empty response",
                                                  "context cut to 12 of 40 tokens"]})
    assert nan_summary(ds, IFD_COLUMNS) == (4, {"NaN: empty response": 2, "x": 1,
                                                "context cut to N of N tokens": 1})


def test_bad_run_settings_are_refused(rows, tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="part_rows must be an integer >= 1, got 0"):
        run(rows, scorer(tiny_model_dir), tmp_path / "out", part_rows=0)


def test_an_output_folder_that_is_not_a_dataset_is_never_replaced(rows, tiny_model_dir, tmp_path):
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "thesis.txt").write_text("keep me")
    s = scorer(tiny_model_dir)
    with pytest.raises(FileExistsError, match="not a saved dataset"):
        run(rows, s, precious)
    assert s.scored == [] and (precious / "thesis.txt").read_text() == "keep me"


def test_more_local_ranks_than_gpus_is_refused_with_what_to_do(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match=r"2 processes .* 1 GPU\(s\).*--nproc_per_node 1.*CUDA_VISIBLE_DEVICES"):
        process_state()


@pytest.mark.slow
def test_an_output_a_run_here_did_not_write_is_replaced_only_with_overwrite(rows, tiny_model_dir, tmp_path):
    theirs = tmp_path / "theirs.parquet"
    rows.select(range(4)).to_parquet(str(theirs))
    folder = tmp_path / "folder"
    rows.select(range(5)).save_to_disk(str(folder))
    s = scorer(tiny_model_dir)
    with pytest.raises(FileExistsError, match=r"theirs\.parquet already holds a \.parquet file of 4 rows.*--overwrite"):
        run(rows, s, theirs)
    with pytest.raises(FileExistsError, match=r"folder already holds a saved dataset of 5 rows \(columns: instruction"):
        run(rows, s, folder)
    assert s.scored == [] and len(datasets.Dataset.from_parquet(str(theirs))) == 4
    assert len(datasets.load_from_disk(str(folder))) == 5

    out, _ = run(rows, s, theirs, overwrite=True)
    assert len(out) == N_ROWS and len(datasets.Dataset.from_parquet(str(theirs))) == N_ROWS
    # Written here: a new run may replace it, under the same settings or others.
    again = scorer(tiny_model_dir, max_length=64)
    run(rows, again, theirs)
    assert sorted(again.scored) == list(range(N_ROWS))
    # Replaced by the user since: theirs again.
    rows.select(range(3)).to_parquet(str(theirs))
    with pytest.raises(FileExistsError, match="already holds a .parquet file of 3 rows"):
        run(rows, scorer(tiny_model_dir, max_length=64), theirs)


@pytest.mark.slow
def test_a_touched_input_file_is_not_scored_again(rows, tiny_model_dir, tmp_path):
    data = tmp_path / "rows.jsonl"
    rows.to_json(str(data))
    run(load_rows(str(data)), scorer(tiny_model_dir), tmp_path / "out")
    stat = data.stat()
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**10))  # a new fingerprint, the same rows
    again = scorer(tiny_model_dir)
    out, summary = run(load_rows(str(data)), again, tmp_path / "out")
    assert again.scored == [] and summary.rows_resumed == N_ROWS and len(out) == N_ROWS


@pytest.mark.slow
def test_a_changed_stream_keeps_only_the_parts_of_unchanged_rows(rows, tiny_model_dir, tmp_path):
    data = tmp_path / "rows.jsonl"
    lines = [json.dumps(row) for row in rows.to_list()]
    data.write_text("\n".join(lines) + "\n")
    stream = load_rows(str(data), streaming=True)
    with pytest.raises(ScorerFailed):
        run(stream, scorer(tiny_model_dir, fail_after=7), tmp_path / "out", source_name=str(data))  # parts 0-3, 3-6
    lines[4] = json.dumps({**rows[4], "instruction": "Say hello."})
    data.write_text("\n".join(lines) + "\n")
    second = scorer(tiny_model_dir)
    with pytest.warns(RunWarning, match=r"input changed in 3 rows of 1 earlier part\(s\) \(first: rows 3..6\)"):
        out, summary = run(stream, second, tmp_path / "out", source_name=str(data))
    assert sorted(second.scored) == list(range(3, N_ROWS))  # rows 0-3 kept, the block of row 4 scored again
    assert (summary.rows_resumed, summary.rows_input_changed) == (3, 3)
    assert out["instruction"][4] == "Say hello."
    reference = load_rows(str(data)).map(IFDScorer(str(tiny_model_dir), dtype="float32", max_length=96),
                                         batched=True, batch_size=1)
    np.testing.assert_allclose(out["ifd"], reference["ifd"], rtol=1e-5)

    # Finished, then changed again: the finished output is stale, so every row is scored anew.
    lines[8] = json.dumps({**rows[8], "instruction": "Say goodbye."})
    data.write_text("\n".join(lines) + "\n")
    third = scorer(tiny_model_dir)
    out, _ = run(stream, third, tmp_path / "out", source_name=str(data))
    assert sorted(third.scored) == list(range(N_ROWS)) and out["instruction"][8] == "Say goodbye."


def test_the_command_line_and_recipes_take_overwrite(rows, tiny_model_dir, tmp_path, capsys):
    from hf_prospector.cli import main
    from hf_prospector.recipes import parse_recipe

    theirs = tmp_path / "theirs.parquet"
    rows.select(range(4)).to_parquet(str(theirs))
    args = ["score", "demo", "--limit", "3", "--model", str(tiny_model_dir), "--dtype", "float32", "--max-length",
            "96", "--show", "0", "--output", str(theirs)]
    assert main(args) == 2
    assert "already holds a .parquet file of 4 rows" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0 and len(datasets.Dataset.from_parquet(str(theirs))) == 3
    assert parse_recipe({"score": {"scorer": "ifd"}, "run": {"overwrite": True}}).run.overwrite is True


@pytest.mark.parametrize("output", ["scored", "scored.parquet"])
def test_zero_rows_in_give_zero_rows_out_with_typed_score_columns(tiny_model_dir, tmp_path, output):
    from hf_prospector.cli import main
    from hf_prospector.scorers import IFDScorer
    from hf_prospector.sources import load_rows

    data = tmp_path / "none.parquet"
    datasets.Dataset.from_dict({"instruction": ["x"], "output": ["y"]}).select([]).to_parquet(str(data))
    assert main(["score", str(data), "--model", str(tiny_model_dir), "--output", str(tmp_path / output)]) == 0
    scored = load_rows(str(tmp_path / output))
    assert len(scored) == 0
    assert scored.features == datasets.Features({"row_id": datasets.Value("int64"), "instruction": datasets.Value("string"),
                                                 "output": datasets.Value("string"), **IFDScorer.features})
    assert main(["select", str(tmp_path / output), "--top-fraction", "0.1", "--output", str(tmp_path / "top")]) == 0
