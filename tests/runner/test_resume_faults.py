"""Resumes that can always finish, as real processes: corrupt parts, an input changed after a failure, Ctrl-C."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest

from hf_prospector.runner import work_dir
from hf_prospector.scorers import IFDScorer
from hf_prospector.sources import load_rows
from tests.runner.counting import counted_rows
from tests.runner.resume_job import MAX_LENGTH

ROOT = Path(__file__).resolve().parents[2]
N_ROWS = 12


def job(model, data, output, count_file, fail_after=None) -> subprocess.CompletedProcess:
    """``tests.runner.resume_job`` (blocks of 2 rows, one row per scorer call), run to its end."""
    cmd = [sys.executable, "-m", "tests.runner.resume_job", str(model), str(data), str(output), str(count_file), "0"]
    return subprocess.run(cmd + ([] if fail_after is None else [str(fail_after)]), cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def part_rows(output) -> list:
    """The row ids the parts in the work directory hold."""
    return sorted(row for part in work_dir(output).glob("part-*.parquet")
                  for row in pq.read_table(part, columns=["row_id"])["row_id"].to_pylist())


def assert_scores_of(output, data, model) -> None:
    """The output holds every row of ``data``, scored as ``Dataset.map`` scores them."""
    out = datasets.load_from_disk(str(output))
    reference = load_rows(str(data)).map(IFDScorer(str(model), dtype="float32", max_length=MAX_LENGTH),
                                         batched=True, batch_size=1)
    assert out["row_id"] == list(range(N_ROWS))
    assert out["instruction"] == reference["instruction"]
    np.testing.assert_allclose(out["ifd"], reference["ifd"], rtol=1e-5)
    assert out["ifd_note"] == reference["ifd_note"]


@pytest.mark.slow
def test_corrupt_parts_are_set_aside_and_their_rows_scored_again(tiny_model_dir, tmp_path):
    data, output = tmp_path / "rows.jsonl", tmp_path / "scored"
    load_rows("demo").select(range(N_ROWS)).to_json(str(data))
    failed = job(tiny_model_dir, data, output, tmp_path / "count1", fail_after=6)
    assert failed.returncode != 0 and "failing on purpose" in failed.stderr
    assert part_rows(output) == list(range(6))  # parts 0-2, 2-4, 4-6

    # A part cut short (the disk filled), and a part whose rows are not those of its name (a copied folder).
    truncated = work_dir(output) / "part-000000000002-000000000004.parquet"
    truncated.write_bytes(truncated.read_bytes()[:200])
    misnamed = work_dir(output) / "part-000000000004-000000000006.parquet"
    shutil.copy(work_dir(output) / "part-000000000000-000000000002.parquet", misnamed)

    again = job(tiny_model_dir, data, output, tmp_path / "count2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert sorted(counted_rows(tmp_path / "count2")) == list(range(2, N_ROWS))  # rows 0-1 kept, nothing else
    for name in (truncated.name, misnamed.name):
        assert re.search(rf"{re.escape(name)} is corrupt .*set aside as {re.escape(name)}\.corrupt", again.stderr)
        assert (work_dir(output) / f"{name}.corrupt").exists()
        assert name in again.stdout  # in the summary too
    assert "row_ids are not those of the input's rows 4..6" in again.stderr
    assert "10 scored now, 2 by an earlier run" in again.stdout
    assert_scores_of(output, data, tiny_model_dir)


@pytest.mark.slow
def test_a_changed_input_keeps_the_parts_of_its_unchanged_rows(tiny_model_dir, tmp_path):
    data, output = tmp_path / "rows.jsonl", tmp_path / "scored"
    rows = load_rows("demo").select(range(N_ROWS)).to_list()
    write_rows(data, rows)
    assert job(tiny_model_dir, data, output, tmp_path / "count1", fail_after=6).returncode != 0
    assert part_rows(output) == list(range(6))

    # 1. Only the file's date changes: every part is kept, the run goes on from row 6 (and fails again at 8).
    stat = data.stat()
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**10))
    touched = job(tiny_model_dir, data, output, tmp_path / "count2", fail_after=2)
    assert "failing on purpose" in touched.stderr, touched.stderr[-3000:]
    assert counted_rows(tmp_path / "count2") == [6, 7]
    assert part_rows(output) == list(range(8))

    # 2. The user fixes row 10 (never scored) and edits row 1 (scored): only the block of row 1 is scored again.
    rows[10] = {**rows[10], "instruction": rows[10]["instruction"] + " Fixed."}
    rows[1] = {**rows[1], "instruction": "Name three primary colours."}
    write_rows(data, rows)
    again = job(tiny_model_dir, data, output, tmp_path / "count3")
    assert again.returncode == 0, again.stdout + again.stderr
    assert sorted(counted_rows(tmp_path / "count3")) == [0, 1, 8, 9, 10, 11]
    assert ("the input changed in 2 rows of 1 earlier part(s) (first: rows 0..2): they are scored again; 6 rows "
            "of unchanged parts are kept") in again.stderr
    assert "6 scored now, 6 by an earlier run" in again.stdout
    assert "input changed: 2 rows of earlier parts were scored again (6 kept)" in again.stdout
    assert_scores_of(output, data, tiny_model_dir)
    assert not list(work_dir(output).glob("part-*"))  # the stale part is removed once the output is gathered


@pytest.mark.slow
def test_ctrl_c_saves_the_scored_rows_and_says_how_to_resume(tiny_model_dir, tmp_path):
    data, output = tmp_path / "rows.jsonl", tmp_path / "scored"
    load_rows("demo").select(range(N_ROWS)).to_json(str(data))

    def cli(count_file, pause):
        # One block for all rows and no timed parts: only the interrupt itself saves the rows scored so far.
        return [sys.executable, "-m", "tests.runner.cli_job", str(count_file), str(pause), "score", str(data),
                "--model", str(tiny_model_dir), "--dtype", "float32", "--max-length", str(MAX_LENGTH),
                "--batch-size", "1", "--part-rows", "100", "--show", "0", "--output", str(output)]

    # SIGINT as a terminal sends it: a suite started in the background (`cmd &` in a script) would pass SIGINT on
    # ignored, and then Python installs no KeyboardInterrupt for it.
    proc = subprocess.Popen(cli(tmp_path / "count1", 0.3), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while len(counted_rows(tmp_path / "count1")) < 3:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no row was scored"
        time.sleep(0.02)
    scored_before = len(counted_rows(tmp_path / "count1"))
    assert scored_before < N_ROWS, "every row was scored before the interrupt could be sent"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stdout + stderr
    message = stderr.strip().splitlines()[-1]
    saved = part_rows(output)
    assert message == (f"interrupted: {len(saved)} of {N_ROWS} rows are saved in {work_dir(output)}; "
                       "run the same command again to resume")
    assert len(saved) >= scored_before - 1  # at most the batch under way is lost
    assert set(saved) <= set(counted_rows(tmp_path / "count1")) and not output.exists()

    again = subprocess.run(cli(tmp_path / "count2", 0), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert sorted(counted_rows(tmp_path / "count2")) == sorted(set(range(N_ROWS)) - set(saved))
    assert f"{N_ROWS - len(saved)} scored now, {len(saved)} by an earlier run" in again.stdout
    assert_scores_of(output, data, tiny_model_dir)
