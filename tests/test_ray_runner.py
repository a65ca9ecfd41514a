"""Scoring on Ray (hf_prospector.ray_runner, and the scorers as Ray Data UDFs) on a local 2-CPU cluster."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hf_prospector.cli import main
from hf_prospector.recipes import RecipeError, parse_recipe
from hf_prospector.runner import list_parts, score_run, work_dir
from hf_prospector.scorers import GoldScorer, IFDScorer
from hf_prospector.sources import load_rows
from tests.runner import fakeremote
from tests.runner.counting import CountingScorer, counted_rows
from tests.runner.processes import kill_once_parts_saved
from tests.ray_job import MAX_LENGTH, PART_ROWS

ROOT = Path(__file__).resolve().parents[1]
N_ROWS = 12
TASKS = {"instruction": ["Name the capital of France.", "Say hello."], "input": ["", ""],
         "output": ["Paris.", "hello there"]}


@pytest.fixture(scope="module")
def remote_root(tmp_path_factory):
    """The root of ``fakeremote://`` URLs (tests.runner.fakeremote), known here and to the cluster's workers."""
    root = tmp_path_factory.mktemp("remote")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(fakeremote.ROOT, str(root))
        fakeremote.register()
        yield root


@pytest.fixture(scope="module")
def ray_cluster(remote_root):
    """One local cluster for the module; its workers import this checkout (and the tests' scorers), and know the
    ``fakeremote://`` protocol."""
    ray = pytest.importorskip("ray")
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, fakeremote.ROOT: str(remote_root)},
                          "worker_process_setup_hook": "tests.runner.fakeremote.register"})
    yield ray
    ray.shutdown()


@pytest.fixture
def rows_file(tmp_path) -> Path:
    data = tmp_path / "rows.jsonl"
    load_rows("demo").select(range(N_ROWS)).to_json(str(data))
    return data


def same_rows(a: datasets.Dataset, b: datasets.Dataset) -> None:
    """Equal values (NaN equal to NaN), columns and order."""
    assert a.column_names == b.column_names and len(a) == len(b)
    for column in a.column_names:
        x, y = a[column], b[column]
        if a.features[column] == datasets.Value("float64"):
            np.testing.assert_allclose(np.array(x, dtype=float), np.array(y, dtype=float), rtol=1e-6, equal_nan=True)
        else:
            assert x == y, column


def typed_rows() -> list[dict]:
    """The demo rows with columns of each kind a reader types: integers, floats with nulls, nested rows, booleans, a
    column of nulls only, strings with nulls."""
    return [{**row, "n": i, "x": None if i % 3 else i / 4, "tags": [{"k": f"t{i}", "v": i}], "flag": i % 2 == 0,
             "none": None, "note": None if i % 4 == 0 else f"n{i}"}
            for i, row in enumerate(load_rows("demo").select(range(N_ROWS)))]


def write_input(rows: list[dict], path: Path) -> Path:
    """``rows`` as a file of ``path``'s kind, written by other means than ``datasets``."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=5)  # several row groups, read in order
    else:  # CSV: flat columns; empty fields and NA are nulls, so "m" (integers, one missing) reads as floats
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, ["instruction", "input", "output", "n", "m", "flag", "note"])
            writer.writeheader()
            for i, row in enumerate(rows):
                writer.writerow({"instruction": row["instruction"], "input": row["input"], "output": row["output"],
                                 "n": i, "m": "" if i % 5 == 0 else i, "flag": row["flag"],
                                 "note": "NA" if i % 4 == 0 else row["note"]})
    return path


def summary_lines(out: str) -> list[str]:
    """The lines of a run's summary that a Ray run shares with a single-process one (not its processes and time)."""
    return [line for line in out.splitlines() if line.startswith(("rows:", "NaN rows", "  ", "input changed"))]


class DyingOnceScorer(CountingScorer):
    """Counts its rows; the first time it is given row ``die_at`` its process exits (a killed actor), leaving
    ``die_file`` as the sign that it did."""

    def __init__(self, *args, die_at: int, die_file: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.die_at, self.die_file = die_at, die_file

    def __call__(self, batch, *extra):
        if self.die_at in batch["row_id"] and not os.path.exists(self.die_file):
            Path(self.die_file).touch()
            os._exit(1)
        return super().__call__(batch, *extra)


@pytest.mark.parametrize("how", ["option", "recipe"])
def test_engine_ray_without_ray_says_what_to_install(how, rows_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as where it is not installed
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"input: {{source: {rows_file}}}\nscore: {{scorer: ifd}}\n"
                      f"run: {{output: {tmp_path / 'out'}, engine: ray}}\n")
    argv = (["score", str(rows_file), "--engine", "ray", "--output", str(tmp_path / "out")] if how == "option"
            else ["run", str(recipe)])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "needs Ray Data" in err and "pip install 'hf_prospector[ray]'" in err
    assert not (tmp_path / "out").exists() and not work_dir(tmp_path / "out").exists()


def test_recipe_engine_is_checked():
    with pytest.raises(RecipeError, match="run.engine must be one of local, ray, got 'spark'"):
        parse_recipe({"score": {"scorer": "ifd"}, "run": {"engine": "spark"}})
    with pytest.raises(RecipeError, match="run.actors"):
        parse_recipe({"score": {"scorer": "ifd"}, "run": {"engine": "ray", "actors": 0}})
    assert parse_recipe({"score": {"scorer": "ifd"}, "run": {"engine": "ray", "actors": 2}}).run.actors == 2


@pytest.mark.slow
def test_map_batches_equals_dataset_map_in_numpy_and_arrow_formats(ray_cluster, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_PROSPECTOR_CACHE", str(tmp_path))  # the golden score's zero-shot cache
    ds = load_rows("demo").select(range(N_ROWS))
    ds = ds.add_column("row_id", list(range(100, 100 + N_ROWS)))
    ifd = {"model": str(tiny_model_dir), "dtype": "float32", "max_length": MAX_LENGTH}
    gold = {"model": str(tiny_model_dir), "dtype": "float32", "task_set": datasets.Dataset.from_dict(TASKS),
            "max_length": 128, "task_max_length": 32}
    for cls, kwargs, batch_format in ((IFDScorer, ifd, "numpy"), (IFDScorer, ifd, "pyarrow"),
                                      (GoldScorer, gold, "pyarrow")):
        expected = cls(**kwargs).score(ds, batch_size=5)
        scored = ray_cluster.data.from_arrow(ds.data.table).map_batches(
            cls, fn_constructor_kwargs=kwargs, concurrency=1, batch_size=5, batch_format=batch_format)
        table = pa.concat_tables(ray_cluster.get(scored.to_arrow_refs())).sort_by("row_id")
        same_rows(expected, datasets.Dataset(datasets.table.InMemoryTable(table)).cast(expected.features))


def test_files_and_urls_of_files_are_read_by_ray_data_other_sources_by_datasets(tmp_path):
    from hf_prospector.ray_runner import ray_reads

    jsonl = write_input(typed_rows(), tmp_path / "rows.jsonl")
    array = tmp_path / "rows.json"  # one JSON document: no stream, datasets reads it whole (and types it)
    array.write_text(json.dumps(typed_rows()))
    load_rows("demo").select(range(2)).save_to_disk(str(tmp_path / "saved"))
    assert ray_reads(str(jsonl)) and ray_reads("s3://bucket/rows.parquet") and ray_reads("https://host/rows.csv?v=1")
    for other in (str(array), str(tmp_path / "saved"), "demo", None, "user/dataset", str(tmp_path / "missing.jsonl")):
        assert not ray_reads(other), other  # load_rows reads it, or names what is wrong


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv"])
def test_engine_ray_reads_a_file_with_ray_data_and_equals_one_process(suffix, ray_cluster, tiny_model_dir, tmp_path,
                                                                      capsys, monkeypatch):
    data = write_input(typed_rows(), tmp_path / f"rows{suffix}")
    options = ["score", str(data), "--model", str(tiny_model_dir), "--dtype", "float32",
               "--max-length", str(MAX_LENGTH), "--part-rows", "3", "--batch-size", "2", "--show", "0"]
    assert main([*options, "--output", str(tmp_path / "one.parquet")]) == 0
    one = capsys.readouterr().out

    # The Ray run: the input is read by Ray Data's reader, never by datasets (which loads the output only).
    reader = {".jsonl": "read_json", ".parquet": "read_parquet", ".csv": "read_csv"}[suffix]
    reads, loads = [], []
    read, load_dataset = getattr(ray_cluster.data, reader), datasets.load_dataset
    monkeypatch.setattr(ray_cluster.data, reader, lambda *args, **kwargs: reads.append(args) or read(*args, **kwargs))
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda *args, **kwargs: loads.append((args, kwargs)) or load_dataset(*args, **kwargs))
    assert main([*options, "--output", str(tmp_path / "ray.parquet"), "--engine", "ray", "--actors", "2"]) == 0
    on_ray = capsys.readouterr().out
    assert reads and not [call for call in loads if data.name in repr(call)], loads

    expected, got = load_rows(str(tmp_path / "one.parquet")), load_rows(str(tmp_path / "ray.parquet"))
    assert got.features == expected.features  # the column types datasets gives the file, nested ones included
    same_rows(expected, got)
    assert got["row_id"] == list(range(N_ROWS))
    assert summary_lines(on_ray) == summary_lines(one) and f"rows: {N_ROWS} ({N_ROWS} scored now" in on_ray
    blocks = [json.loads((work_dir(tmp_path / name) / "manifest.json").read_text())["blocks"]
              for name in ("one.parquet", "ray.parquet")]
    assert blocks[0] == blocks[1] and len(blocks[0]) == 4  # the same blocks, their input rows hashed alike
    per_actor = [int(n) for n in re.search(r"processes: 2 \(rows scored per process: (\d+), (\d+)\)", on_ray).groups()]
    assert sum(per_actor) == N_ROWS and min(per_actor) > 0  # both actors scored


@pytest.mark.slow
def test_ray_data_input_keeps_the_first_rows_of_a_limit_and_names_a_bad_json_line(ray_cluster, tmp_path, capsys):
    from hf_prospector.ray_runner import RayRows

    data = write_input(typed_rows(), tmp_path / "rows.jsonl")
    batches = list(RayRows(str(data), limit=7).iter(batch_size=3))
    assert [len(batch["n"]) for batch in batches] == [3, 3, 1]
    assert {k: sum((b[k] for b in batches), []) for k in batches[0]} == load_rows(str(data)).select(range(7))[:]

    lines = data.read_text().splitlines()
    data.write_text("\n".join(lines[:5] + [lines[5][:-1]] + lines[6:]) + "\n")  # line 6 loses its closing brace
    assert main(["score", str(data), "--engine", "ray", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"the input file {data} is not valid JSON: line 6" in err and "fix that line" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_killed_actor_is_retried_and_every_row_scored_once(ray_cluster, tiny_model_dir, rows_file, tmp_path):
    from hf_prospector.ray_runner import score_run_ray

    kwargs = {"dtype": "float32", "max_length": MAX_LENGTH}
    source = load_rows(str(rows_file))
    whole, _ = score_run(source, IFDScorer(str(tiny_model_dir), **kwargs), tmp_path / "whole.parquet",
                         source_name="rows", part_rows=PART_ROWS, progress=False)
    scorer = DyingOnceScorer(str(tiny_model_dir), **kwargs, count_file=str(tmp_path / "count"), die_at=5,
                             die_file=str(tmp_path / "died"))
    # part_seconds=0: a part per batch, so row 4's part is on disk when the actor dies at row 5 of range 4..6.
    out, summary = score_run_ray(source, scorer, tmp_path / "ray.parquet", source_name="rows", batch_size=1,
                                 part_rows=PART_ROWS, part_seconds=0, actors=2, progress=False)
    assert (tmp_path / "died").exists()  # an actor did die mid-run
    assert sorted(counted_rows(tmp_path / "count")) == list(range(N_ROWS))  # each row scored once
    same_rows(whole, out)
    assert (summary.rows, summary.rows_scored, summary.rows_resumed) == (N_ROWS, N_ROWS, 0)


@pytest.mark.slow
@pytest.mark.parametrize("read", ["ray-data", "datasets"])
def test_driver_killed_then_rerun_scores_only_missing_and_changed_rows(read, ray_cluster, tiny_model_dir, rows_file,
                                                                       tmp_path):
    output = tmp_path / "scored"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

    def job(count_file, pause):
        return [sys.executable, "-m", "tests.ray_job", str(tiny_model_dir), str(rows_file), str(output),
                str(tmp_path / count_file), str(pause), read]

    # 1. A slow driver (0.5 s per row), killed with SIGKILL once two parts (4 rows) are on disk.
    proc = subprocess.Popen(job("count1", 0.5), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    kill_once_parts_saved(proc, work_dir(output), parts=2, timeout=180, poll=0.05)
    time.sleep(3)  # Ray ends the dead driver's actors; a part under way may still land
    saved = set()
    for part in work_dir(output).glob("part-*.parquet"):
        saved.update(pq.read_table(part, columns=["row_id"])["row_id"].to_pylist())
    assert 4 <= len(saved) < N_ROWS and not output.exists()

    # 2. A row of a saved part is fixed in the input.
    a, b, _ = list_parts(work_dir(output))[0]
    lines = rows_file.read_text().splitlines()
    lines[a] = json.dumps({**json.loads(lines[a]), "output": "fixed"})
    rows_file.write_text("\n".join(lines) + "\n")

    # 3. The same run again: it scores exactly the rows no part holds, and those of the changed row's part.
    again = subprocess.run(job("count2", 0), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    rescored = (set(range(N_ROWS)) - saved) | set(range(a, b))
    assert sorted(counted_rows(tmp_path / "count2")) == sorted(rescored)
    assert f"{len(rescored)} scored now, {N_ROWS - len(rescored)} by an earlier run" in again.stdout
    assert f"input changed: {b - a} rows of earlier parts were scored again" in again.stdout
    out = load_rows(str(output))
    assert out["row_id"] == list(range(N_ROWS)) and out["output"][a] == "fixed"


@pytest.mark.slow
def test_engine_ray_writes_to_a_url_what_one_process_writes(ray_cluster, remote_root, tiny_model_dir, tmp_path,
                                                            capsys, monkeypatch):
    from hf_prospector.ray_runner import score_run_ray

    monkeypatch.chdir(tmp_path)  # a Path() of a URL would land here, as ./fakeremote:/...
    data = tmp_path / "rows.jsonl"  # the input's own row ids, which the output must keep in the input's order
    load_rows("demo").select(range(N_ROWS)).add_column("row_id", [f"r{i:02d}" for i in reversed(range(N_ROWS))]
                                                      ).to_json(str(data))
    kwargs = {"dtype": "float32", "max_length": MAX_LENGTH}
    one, _ = score_run(load_rows(str(data)), IFDScorer(str(tiny_model_dir), **kwargs), tmp_path / "one.parquet",
                       source_name="rows", part_rows=PART_ROWS, progress=False)
    assert one["row_id"] == [f"r{i:02d}" for i in reversed(range(N_ROWS))]

    out, summary = score_run_ray(load_rows(str(data)), IFDScorer(str(tiny_model_dir), **kwargs),
                                 "fakeremote://bucket/ray.parquet", source_name="rows", part_rows=PART_ROWS,
                                 actors=2, progress=False)
    same_rows(one, out)
    same_rows(one, load_rows(str(remote_root / "bucket" / "ray.parquet")))  # what the store holds
    assert (summary.rows_scored, summary.output) == (N_ROWS, "fakeremote://bucket/ray.parquet")

    (remote_root / "bucket").mkdir(exist_ok=True)
    shutil.copy(data, remote_root / "bucket" / "rows.jsonl")  # an input at a URL: read by Ray Data's tasks
    assert main(["score", "fakeremote://bucket/rows.jsonl", "--model", str(tiny_model_dir), "--dtype", "float32",
                 "--max-length", str(MAX_LENGTH), "--part-rows", str(PART_ROWS), "--show", "0", "--engine", "ray",
                 "--actors", "2", "--output", "fakeremote://bucket/cli"]) == 0
    assert "output: fakeremote://bucket/cli" in capsys.readouterr().out
    same_rows(one, datasets.load_from_disk(str(remote_root / "bucket" / "cli")))
    assert not list(work_dir(remote_root / "bucket" / "cli").glob("part-*"))  # gathered, then removed
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("fakeremote")] == []


@pytest.mark.slow
@pytest.mark.parametrize("read", ["ray-data", "datasets"])
def test_the_driver_holds_a_few_ranges_per_actor_not_the_whole_input(read, ray_cluster, tiny_model_dir, rows_file,
                                                                    tmp_path, monkeypatch):
    from hf_prospector.ray_runner import RANGES_PER_ACTOR, _RayRun, score_run_ray

    # Each time the driver reads a range's rows: how many ranges it has read that no actor has finished scoring
    # (the scorer writes a range's row to the count file before the driver hears it is done).
    held = []
    prepared = _RayRun._prepared

    def counted(self, rows, start):
        held.append(len(held) + 1 - len(counted_rows(tmp_path / "count")))
        return prepared(self, rows, start)

    monkeypatch.setattr(_RayRun, "_prepared", counted)
    scorer = CountingScorer(str(tiny_model_dir), dtype="float32", max_length=MAX_LENGTH,
                            count_file=str(tmp_path / "count"))
    source = str(rows_file) if read == "ray-data" else load_rows(str(rows_file))
    out, summary = score_run_ray(source, scorer, tmp_path / "ray.parquet", source_name="rows", batch_size=1,
                                 part_rows=1, actors=2, progress=False)  # 12 ranges of a row
    assert len(held) == N_ROWS and sorted(counted_rows(tmp_path / "count")) == list(range(N_ROWS))
    assert max(held) <= 2 * RANGES_PER_ACTOR + 1, held  # those sent to the actors, and the one waiting for room
    assert out["row_id"] == list(range(N_ROWS)) and summary.rows_scored == N_ROWS
