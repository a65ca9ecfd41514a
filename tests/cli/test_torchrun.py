"""``torchrun --nproc_per_node 2 -m hf_prospector score``: two real ranks give what one process gives."""

import json
import os
import re
import shutil
import subprocess
import sys

import datasets
import numpy as np
import pytest

from hf_prospector.runner import work_dir
from hf_prospector.sources import load_rows

N_ROWS = 10


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun (torch's launcher) is not on PATH")
@pytest.mark.slow
def test_two_ranks_give_the_columns_and_order_of_one_process(tiny_model_dir, tmp_path):
    data = tmp_path / "rows.jsonl"
    load_rows("demo").select(range(N_ROWS)).to_json(str(data))
    args = ["-m", "hf_prospector", "score", str(data), "--model", str(tiny_model_dir), "--dtype", "float32",
            "--max-length", "96", "--batch-size", "2", "--part-rows", "3", "--show", "0"]

    launches = {"two": ["torchrun", "--standalone", "--nproc_per_node", "2", *args, "--output", str(tmp_path / "two")],
                "one": [sys.executable, *args, "--output", str(tmp_path / "one")]}
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # CPU ranks over gloo, on a GPU machine too
    procs = {name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for name, cmd in launches.items()}  # side by side: the test takes as long as the slower one
    outputs = {name: proc.communicate(timeout=600) for name, proc in procs.items()}
    for name, proc in procs.items():
        assert proc.returncode == 0, f"{name}: " + outputs[name][0] + outputs[name][1][-4000:]
    two_stdout = outputs["two"][0]

    # World size 2, and both ranks scored their blocks: 0-3 and 6-9 on rank 0, 3-6 and 9-10 on rank 1.
    per_rank = re.search(r"processes: (\d+) \(rows scored per process: ([\d, ]+)\)", two_stdout)
    assert per_rank and per_rank[1] == "2" and per_rank[2] == "6, 4", two_stdout
    assert json.loads((work_dir(tmp_path / "two") / "manifest.json").read_text())["processes"] == 2
    assert two_stdout.count("rows: 10 (") == 1  # only the main process reports

    a, b = datasets.load_from_disk(str(tmp_path / "one")), datasets.load_from_disk(str(tmp_path / "two"))
    assert a.column_names == b.column_names
    assert a["row_id"] == b["row_id"] == list(range(N_ROWS))
    for column in a.column_names:
        if a.features[column].dtype.startswith("float"):
            np.testing.assert_allclose(b[column], a[column], rtol=1e-5, err_msg=column)
        else:
            assert b[column] == a[column], column
