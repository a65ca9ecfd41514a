"""kill -9 a real scoring process mid-way, run the same command again: the same output, no row scored twice."""

import signal
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest

from hf_prospector.runner import work_dir
from hf_prospector.scorers import IFDScorer
from hf_prospector.sources import load_rows
from tests.runner.counting import counted_rows
from tests.runner.processes import kill_once_parts_saved
from tests.runner.resume_job import MAX_LENGTH

ROOT = Path(__file__).resolve().parents[2]
N_ROWS = 12


def job(model, data, output, count_file, pause) -> list[str]:
    return [sys.executable, "-m", "tests.runner.resume_job", str(model), str(data), str(output), str(count_file), str(pause)]


@pytest.mark.slow
def test_kill_then_rerun_finishes_without_rescoring(tiny_model_dir, tmp_path):
    data = tmp_path / "rows.jsonl"
    load_rows("demo").select(range(N_ROWS)).to_json(str(data))
    output = tmp_path / "scored"

    # The uninterrupted run to compare with, meanwhile.
    whole = subprocess.Popen(job(tiny_model_dir, data, tmp_path / "whole", tmp_path / "count3", 0), cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    # 1. A slow run (0.3 s per row), killed with SIGKILL once two parts (4 rows) are on disk.
    proc = subprocess.Popen(job(tiny_model_dir, data, output, tmp_path / "count1", 0.3), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    kill_once_parts_saved(proc, work_dir(output), parts=2, timeout=120, poll=0.02)
    assert proc.returncode == -signal.SIGKILL
    saved = {}
    for part in work_dir(output).glob("part-*.parquet"):
        saved.update(dict.fromkeys(pq.read_table(part, columns=["row_id"])["row_id"].to_pylist()))
    assert len(saved) >= 4 and not output.exists()
    assert set(saved) <= set(counted_rows(tmp_path / "count1"))  # saved rows were scored by the killed run

    # 2. The same command again: it scores exactly the rows no part holds.
    again = subprocess.run(job(tiny_model_dir, data, output, tmp_path / "count2", 0), cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    rescored = counted_rows(tmp_path / "count2")
    assert sorted(rescored) == sorted(set(range(N_ROWS)) - set(saved))
    assert f"{N_ROWS - len(saved)} scored now, {len(saved)} by an earlier run" in again.stdout

    # 3. The result equals an uninterrupted run's, and the scores equal Dataset.map's.
    assert whole.wait(timeout=300) == 0, whole.stdout.read()
    resumed, uninterrupted = datasets.load_from_disk(str(output)), datasets.load_from_disk(str(tmp_path / "whole"))
    assert resumed.features == uninterrupted.features
    assert resumed.to_pandas().equals(uninterrupted.to_pandas())
    reference = load_rows(str(data)).map(IFDScorer(str(tiny_model_dir), dtype="float32", max_length=MAX_LENGTH), batched=True, batch_size=1)
    assert resumed["row_id"] == list(range(N_ROWS))
    np.testing.assert_allclose(resumed["ifd"], reference["ifd"], rtol=1e-5)
    assert resumed["ifd_note"] == reference["ifd_note"]
