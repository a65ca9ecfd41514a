"""run_recipe from Python: the steps of ``hf-prospector run`` as library calls that print nothing."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from hf_prospector import pipeline, runner
from hf_prospector.pipeline import PublishStep, RunResult, ScoreStep, SelectStep, recipe_steps, run_recipe
from hf_prospector.publishing import Publication, list_revisions
from hf_prospector.recipes import RunSpec, parse_recipe


def recipe_data(model, tmp_path, **more) -> dict:
    return {"input": {"source": "demo", "limit": 6}, "score": {"model": str(model), "dtype": "float32"},
            "run": {"output": str(tmp_path / "scored")},
            "select": [{"rule": {"column": "ifd", "top_n": 2}}, {"rule": {"column": "ifd", "top_n": 3, "lowest": True}}],
            "publish": {"path": str(tmp_path / "repo")}, **more}


def test_run_recipe_scores_selects_and_publishes_without_printing(tiny_model_dir, tmp_path, capsys):
    seen = []
    result = run_recipe(parse_recipe(recipe_data(tiny_model_dir, tmp_path)), recipe_file="mine.yaml",
                        on_step=lambda step, result: seen.append((step.name, len(result.selections))))
    assert capsys.readouterr().out == ""  # printing is the command line's
    assert isinstance(result, RunResult) and len(result.scored) == 6 and result.summary.rows == 6
    assert seen == [("score", 0), ("select ifd-top2", 1), ("select ifd-bottom3", 2),
                    ("publish selection 0", 2), ("publish selection 1", 2)]
    top, bottom = result.selections
    assert (len(top.rows), len(bottom.rows)) == (2, 3) and top.report.kept == 2
    assert [p.revision for p in result.publications] == ["select-ifd-top2", "select-ifd-bottom3"]
    assert all(isinstance(p, Publication) for p in result.publications)
    assert {r.name for r in list_revisions(tmp_path / "repo")} == {"main", "select-ifd-top2", "select-ifd-bottom3"}
    message = subprocess.run(["git", "-C", str(tmp_path / "repo"), "log", "-1", "--format=%b", "select-ifd-top2"],
                             capture_output=True, text=True, check=True).stdout
    assert "recipe: mine.yaml" in message and "source: demo (split train), first 6 rows" in message


def test_run_recipe_reads_a_file_and_refuses_an_empty_selection_before_publishing(tiny_model_dir, tmp_path):
    data = recipe_data(tiny_model_dir, tmp_path)
    data["select"][1] = {"rule": {"column": "ifd", "threshold": 5.0, "ifd_max": None}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=rf"selection ifd-gt5-unbounded kept 0 rows: nothing published.*{path}"):
        run_recipe(path)
    assert not (tmp_path / "repo").exists()  # not even the first selection


def test_the_steps_of_a_recipe(tmp_path):
    recipe = parse_recipe({"score": {"scorer": "ifd"}, "select": [{"rule": {"top_n": 1}}, {"rule": {"top_n": 2}}],
                           "publish": {"path": str(tmp_path)}})
    steps = recipe_steps(recipe)
    assert [type(s) for s in steps] == [ScoreStep, SelectStep, SelectStep, PublishStep, PublishStep]
    assert [type(s) for s in recipe_steps(parse_recipe({"score": {"scorer": "ifd"}}))] == [ScoreStep]


def test_a_python_recipe_is_checked_like_a_file():
    recipe = parse_recipe({"score": {"scorer": "ifd"}})
    recipe.score.template = "fancy"
    with pytest.raises(ValueError, match=r"score\.template: .*'fancy'"):
        run_recipe(recipe)


def test_the_command_line_defaults_are_the_runners():
    # --help shows RunSpec's defaults so as not to import the runner (and datasets); they must agree.
    defaults = RunSpec()
    assert (defaults.batch_size, defaults.part_rows, defaults.part_seconds) == (
        runner.DEFAULT_BATCH_SIZE, runner.DEFAULT_PART_ROWS, runner.DEFAULT_PART_SECONDS)
    assert pipeline.build_scorer.__module__ == "hf_prospector.pipeline"  # what tests/runner/cli_job.py replaces


def test_a_recipe_with_baselines_and_evidence_runs_end_to_end(tiny_model_dir, tmp_path, capsys):
    """Baseline selections, the evaluate section (selections plus baseline arms) and the Evidence card section."""
    pytest.importorskip("trl")
    import json

    import numpy as np
    from datasets import Dataset

    from hf_prospector.cli import main
    from hf_prospector.selection import length_matched_random, select

    Dataset.from_dict({"instruction": [f"Name {i} colours." for i in range(6)],
                       "output": [" ".join(["red"] * (i + 2)) for i in range(6)]}).to_json(str(tmp_path / "eval.jsonl"))
    data = recipe_data(tiny_model_dir, tmp_path, evaluate={
        "eval_sets": {"held": {"source": str(tmp_path / "eval.jsonl")}}, "out": str(tmp_path / "evidence"),
        "arms": ["ifd-top4"], "baselines": {"random": {"seeds": [0, 1]}, "longest": {}, "length_matched": {}},
        "train": {"steps": 1, "batch_size": 2}, "draws": 200, "card": True})
    data["input"]["limit"] = 12
    data["select"] = [{"rule": {"column": "ifd", "top_n": 4}}, {"baseline": {"rule": "random", "top_n": 4, "seed": 5}},
                      {"baseline": {"rule": "length_matched", "reference": "ifd-top4", "seed": 1, "bins": 2}}]
    path = tmp_path / "evidence.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "selection random-top4-seed5: kept 4 of 12 rows" in out and "response length (n_response_tokens)" in out
    assert "# Evidence: fine-tuned arms compared" in out and "| length-matched | 4 |" in out

    result = run_recipe(path)  # the same again from Python: every step resumes or reuses its work
    scored = result.scored
    top, random5, matched = result.selections
    assert random5.rows["row_id"] == np.random.default_rng(5).permutation(12)[:4].tolist()
    expected, _ = select(scored, length_matched_random(top.rows, seed=1, bins=2))
    assert matched.rows["row_id"] == expected["row_id"] and matched.spec.slug == "length-matched-ifd-top4-seed1"
    assert all(s.report.lengths.response["selected"].count == 4 for s in result.selections)
    arms = result.evidence["arms"]
    assert set(arms) == {"base", "ifd-top4", "random-0", "random-1", "longest", "length-matched"}
    assert all(arms[a]["rows"] == 4 for a in arms if a != "base")
    stored = json.loads((tmp_path / "evidence" / "evidence.json").read_text())
    assert stored["comparison"] == json.loads(json.dumps(result.evidence["comparison"]))
    card = subprocess.run(["git", "-C", str(tmp_path / "repo"), "show", "select-random-top4-seed5:README.md"],
                          capture_output=True, text=True, check=True).stdout
    assert "## Length" in card and "## Evidence" in card and "#### Evaluation set `held`: 6 rows" in card
    assert "| ifd-top4 | 4 |" in card
