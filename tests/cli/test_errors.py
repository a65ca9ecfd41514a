"""Everyday mistakes through the real command line: one line naming the problem (exit 2), never a traceback."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import yaml

from hf_prospector import cli
from hf_prospector.cli import build_parser, main
from hf_prospector.publishing import list_revisions
from hf_prospector.sources import load_rows

ROOT = Path(__file__).resolve().parents[2]
HINT = "(--debug shows the traceback)"


def error_of(capsys, command: str) -> str:
    """The one error line of ``command`` on stderr (progress bars aside), followed by the hint; no traceback."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith(f"hf-prospector {command}: error: ")]
    assert len(errors) == 1 and lines[errors[0] + 1:] == [HINT] and "Traceback" not in err, err
    return lines[errors[0]]


def alpaca_rows(path: Path, outputs: list[str]) -> Path:
    datasets.Dataset.from_dict({"instruction": [f"Say {i}." for i in range(len(outputs))],
                                "output": outputs}).to_json(str(path))
    return path


def test_a_missing_input_file_is_named_not_looked_up_on_the_hub(tmp_path, capsys):
    missing = tmp_path / "data" / "rows.jsonl"
    assert main(["score", str(missing), "--show", "0"]) == 2
    line = error_of(capsys, "score")
    assert str(missing) in line and "does not exist" in line and "Hub endpoint" not in line
    assert main(["select", str(missing), "--top-n", "3", "--output", str(tmp_path / "sel")]) == 2
    assert str(missing) in error_of(capsys, "select")
    with pytest.raises(FileNotFoundError, match="rows.jsonl does not exist"):
        load_rows("rows.jsonl")  # a file name alone is a local path too


def test_run_check_fails_on_a_missing_local_path(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"input": {"source": str(tmp_path / "nope.jsonl")}, "score": {"scorer": "ifd"}}))
    assert main(["run", str(recipe), "--check"]) == 2
    line = error_of(capsys, "run")
    assert "input.source" in line and str(tmp_path / "nope.jsonl") in line
    rows = alpaca_rows(tmp_path / "rows.jsonl", ["a", "b"])
    recipe.write_text(yaml.safe_dump({"input": {"source": str(rows)},
                                      "score": {"scorer": "gold", "task_set": str(tmp_path / "tasks.json")}}))
    assert main(["run", str(recipe), "--check"]) == 2
    line = error_of(capsys, "run")
    assert "score.task_set" in line and str(tmp_path / "tasks.json") in line


def test_invalid_json_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": }\n')
    assert main(["score", str(bad), "--show", "0"]) == 2
    line = error_of(capsys, "score")
    assert str(bad) in line and "not valid JSON: line 2, column 32" in line
    doc = tmp_path / "rows.json"
    doc.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": "d"}\n]\n')
    assert main(["select", str(doc), "--top-n", "1", "--output", str(tmp_path / "x")]) == 2
    assert f"{doc} is not valid JSON: line 3" in error_of(capsys, "select")


def test_an_empty_input_file_is_named(tmp_path, capsys):
    for name in ("rows.jsonl", "rows.parquet", "rows.csv"):
        (tmp_path / name).write_text("")
        assert main(["score", str(tmp_path / name), "--show", "0"]) == 2
        assert f"{tmp_path / name} is empty" in error_of(capsys, "score")


def test_a_missing_task_set_file_is_named(tmp_path, capsys):
    missing = tmp_path / "tasks.json"
    assert main(["taskset", str(missing), "--output", str(tmp_path / "ts")]) == 2
    assert f"the task set file {missing} does not exist" in error_of(capsys, "taskset")
    rows = alpaca_rows(tmp_path / "rows.jsonl", ["a"])
    assert main(["score", str(rows), "--scorer", "gold", "--task-set", str(missing)]) == 2
    assert f"score.task_set: {missing} does not exist" in error_of(capsys, "score")


def test_a_task_with_an_empty_answer_is_named(tmp_path, capsys):
    tasks = alpaca_rows(tmp_path / "tasks.jsonl", ["one", "  ", "three"])
    assert main(["taskset", str(tasks), "--output", str(tmp_path / "ts")]) == 2
    line = error_of(capsys, "taskset")
    assert "task 1 (of 3" in line and "empty answer" in line and "'Say 1.'" in line
    assert not (tmp_path / "ts").exists()


@pytest.fixture
def selected(tmp_path):
    rows = datasets.Dataset.from_dict({"row_id": [0, 1], "instruction": ["a", "b"], "output": ["x", "y"],
                                       "ifd": [0.5, 0.7]})
    rows.save_to_disk(str(tmp_path / "sel"))
    return tmp_path / "sel"


def test_publishing_to_a_file_is_refused(selected, tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    assert main(["publish", str(selected), str(target)]) == 2
    assert f"{target} is a file, not a folder" in error_of(capsys, "publish")
    assert target.read_text() == "mine"


def test_publishing_to_a_repository_with_uncommitted_changes(selected, tmp_path, capsys):
    repo = tmp_path / "repo"
    assert main(["publish", str(selected), str(repo), "--revision", "a"]) == 0
    (repo / "notes.txt").write_text("mine")
    assert main(["publish", str(selected), str(repo), "--revision", "b"]) == 2
    line = error_of(capsys, "publish")
    assert "uncommitted changes (notes.txt)" in line and "commit or discard them" in line


def test_an_identical_republish_says_the_revision_is_there(selected, tmp_path, capsys):
    repo = tmp_path / "repo"
    args = ["publish", str(selected), str(repo), "--revision", "a", "--source", "mine"]
    assert main(args) == 0
    first = list_revisions(repo)
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"revision a of {repo} already holds these 2 rows and this card" in out and "nothing to commit" in out
    assert list_revisions(repo) == first  # no new commit


def test_an_empty_selection_is_published_only_when_allowed(selected, tmp_path, capsys):
    empty = tmp_path / "empty"
    assert main(["select", str(selected), "--threshold", "5", "--no-ifd-max", "--output", str(empty)]) == 0
    assert "kept 0 of 2 rows" in capsys.readouterr().out
    repo = tmp_path / "repo"
    assert main(["publish", str(empty), str(repo), "--revision", "none"]) == 2
    assert "kept 0 rows" in error_of(capsys, "publish") and not repo.exists()
    assert main(["publish", str(empty), str(repo), "--revision", "none", "--allow-empty"]) == 0
    assert "warning: publishing a selection with 0 rows" in capsys.readouterr().err
    assert [r.name for r in list_revisions(repo)] == ["main", "none"]


def test_a_recipe_whose_selection_keeps_no_rows_publishes_nothing(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = {"input": {"source": "demo", "limit": 3}, "score": {"model": str(tiny_model_dir), "dtype": "float32"},
              "run": {"output": "scored"}, "show": 0,
              "select": [{"rule": {"column": "ifd", "top_n": 1}},
                         {"rule": {"column": "ifd", "threshold": 5.0, "ifd_max": None}}],
              "publish": {"path": "repo"}}
    Path("r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", "r.yaml"]) == 2
    assert "selection ifd-gt5-unbounded kept 0 rows: nothing published" in error_of(capsys, "run")
    assert not Path("repo").exists()  # not even the first selection
    recipe["publish"]["allow_empty"] = True
    Path("r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", "r.yaml"]) == 0
    assert sorted(r.name for r in list_revisions("repo")) == ["main", "select-ifd-gt5-unbounded", "select-ifd-top1"]


def test_a_hub_id_offline_names_the_endpoint(capsys):
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # as tests/conftest.py sets it
    assert main(["score", "someone/no-such-rows", "--show", "0"]) == 2
    line = error_of(capsys, "score")
    assert "'someone/no-such-rows'" in line and "https://huggingface.co" in line and "offline mode is on" in line


def test_diversity_that_is_not_a_number(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["select", "scored", "--top-n", "3", "--diversity", "abc", "--output", "x"])
    assert exit_.value.code == 2
    assert "argument --diversity: expected a row count (e.g. 500) or a fraction" in capsys.readouterr().err


def test_any_error_is_one_line_and_debug_shows_the_traceback(monkeypatch, selected, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("something\nunexpected")

    monkeypatch.setattr(cli, "load_rows", broken)
    args = ["select", str(selected), "--top-n", "1", "--output", "x"]
    assert main(args) == 2
    assert capsys.readouterr().err == f"hf-prospector select: error: RuntimeError: something unexpected\n{HINT}\n"
    assert main(args + ["--debug"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "in broken" in err and HINT not in err
    monkeypatch.setenv("HF_PROSPECTOR_DEBUG", "1")
    assert main(args) == 2 and "Traceback" in capsys.readouterr().err


def test_ctrl_c_is_one_line(monkeypatch, selected, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt("interrupted: 40 of 100 rows saved; run the same command again to resume")

    monkeypatch.setattr(cli, "load_rows", interrupted)
    assert main(["select", str(selected), "--top-n", "1", "--output", "x"]) == 130
    assert capsys.readouterr().err == "interrupted: 40 of 100 rows saved; run the same command again to resume\n"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_hub_endpoint_is_one_line_in_a_real_process(selected, tmp_path):
    token = "hf_unreachableTestToken0123456789"
    endpoint = f"http://127.0.0.1:{closed_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env.update(HF_ENDPOINT=endpoint, HF_TOKEN=token, HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1",
               HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "hf_prospector", "publish", str(selected), "me/picked", "--hub", "--rule", "top"]
    job = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert job.returncode == 2, job.stderr[-3000:]
    assert "Traceback" not in job.stderr and token not in job.stderr + job.stdout
    assert (f"hf-prospector publish: error: cannot publish to me/picked: the Hub endpoint {endpoint} was not "
            "reached; offline mode is off") in job.stderr
    debug = subprocess.run(command + ["--debug"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert debug.returncode == 2 and "Traceback (most recent call last)" in debug.stderr
    assert token not in debug.stderr + debug.stdout


def test_help_describes_every_option_with_an_example():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(commands) == {"score", "taskset", "select", "card", "publish", "report", "evaluate", "run"}
    for name, sub in commands.items():
        undescribed = [a.dest for a in sub._actions if not a.help]
        assert undescribed == [], f"{name}: {undescribed}"
        text = sub.format_help()
        assert f"examples:\n  hf-prospector {name} " in text or f"-m hf_prospector {name} " in text, name
    run_help = commands["run"].format_help()
    for section in ("description:", "input:", "score:", "run:", "select:", "publish:", "evaluate:", "show:"):
        assert f"\n  {section}" in run_help, section
