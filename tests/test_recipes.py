"""Recipes: every shipped recipe validates; a wrong key, type or value fails naming the file and the key."""

from pathlib import Path

import pytest
import yaml

from hf_prospector.cli import main
from hf_prospector.recipes import Recipe, RecipeError, load_recipe, parse_recipe
from hf_prospector.evaluation import TrainSettings
from hf_prospector.selection import SelectionRule, random_rows

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
PAPER_RECIPES = {"superfiltering", "superfiltering_diversity", "cherry_ifd", "nuggets", "supernuggets"}


def test_the_recipes_are_all_there():
    assert {p.stem for p in RECIPES} == PAPER_RECIPES | {"quickstart"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_validates(path, capsys):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe) and recipe.select and recipe.publish is not None
    assert main(["run", str(path), "--check"]) == 0
    assert f"{path}: valid" in capsys.readouterr().out


def test_paper_settings():
    superfiltering = load_recipe(RECIPES[[p.stem for p in RECIPES].index("superfiltering")])
    assert (superfiltering.score.model, superfiltering.score.convention) == ("gpt2", "superfiltering")
    assert [s.rule for s in superfiltering.select] == [SelectionRule("ifd", top_fraction=f) for f in (0.05, 0.10, 0.15)]
    recipes = {p.stem: load_recipe(p) for p in RECIPES}
    diverse = recipes["superfiltering_diversity"].select[0]
    assert (diverse.rule.top_fraction, diverse.diversity.k) == (0.20, 0.02)
    cherry = recipes["cherry_ifd"]
    assert cherry.score.convention == "cherry" and {s.rule.column for s in cherry.select} == {"ifd_loss"}
    nuggets = recipes["nuggets"]
    assert nuggets.score.scorer == "gold" and nuggets.select[0].rule == SelectionRule("gold_score", threshold=0.85)
    supernuggets = recipes["supernuggets"].score
    assert supernuggets.model == "facebook/opt-125m"
    assert (supernuggets.refine_task_set.k, supernuggets.refine_task_set.sample) == (100, 1000)
    quickstart = recipes["quickstart"]
    assert quickstart.input.source == "demo" and quickstart.score.model == "smollm2-135m"
    assert quickstart.publish.path and quickstart.select[0].rule.top_fraction == 0.25


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "x.yaml"
    path.write_text(text)
    return path


def test_unknown_key_is_named_with_what_is_allowed(tmp_path):
    path = write(tmp_path, "score:\n  scorer: ifd\n  tempalte: alpaca\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert message.startswith(f"{path}: unknown key 'score.tempalte'")
    assert "did you mean 'template'?" in message and "allowed: scorer, model, revision, convention, template" in message


def test_unknown_key_in_a_list_item_and_at_the_top(tmp_path):
    with pytest.raises(RecipeError, match=r"unknown key 'select\[1\]\.rule\.top_fractoin'"):
        parse_recipe({"score": {"scorer": "ifd"},
                      "select": [{"rule": {"top_fraction": 0.1}}, {"rule": {"top_fractoin": 0.1}}]})
    with pytest.raises(RecipeError, match=r"unknown key 'scorer'.*allowed: score, description, input"):
        parse_recipe({"scorer": {"scorer": "ifd"}})


@pytest.mark.parametrize("data, message", [
    ({"score": {"scorer": "ifd", "max_length": "long"}}, r"score\.max_length: expected an integer or null, got 'long' \(str\)"),
    ({"score": {"scorer": "ifd", "max_length": True}}, r"score\.max_length: expected an integer or null, got True"),
    ({"score": {"scorer": "ifd"}, "run": {"part_seconds": "5"}}, r"run\.part_seconds: expected a number, got '5'"),
    ({"score": {"scorer": "ifd"}, "input": {"streaming": "yes"}}, r"input\.streaming: expected true or false"),
    ({"score": {"scorer": "ifd"}, "select": {"rule": {}}}, r"select: expected a list"),
    ({"score": {"scorer": "ifd", "columns": ["q"]}}, r"score\.columns: expected a mapping"),
    ({"score": "ifd"}, r"score: expected a mapping of keys, got 'ifd'"),
    ({"score": {"scorer": "ifd", "refine_task_set": {"k": 1}}}, r"score\.refine_task_set applies to scorer 'gold'"),
    ({"score": {"scorer": "gold", "refine_task_set": {"kk": 1}}}, r"unknown key 'score\.refine_task_set\.kk'"),
])
def test_wrong_types_are_named(data, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe(data)


@pytest.mark.parametrize("data, message", [
    (None, "the recipe is empty"),
    ({"input": {"source": "demo"}}, "missing key 'score'"),
    ({"score": {"scorer": "bert"}}, r"score\.scorer: unknown scorer 'bert'; allowed: ifd, gold"),
    # The scorer checks its own settings; the recipe names the key its message is about.
    ({"score": {"scorer": "ifd", "template": "fancy"}}, r"score\.template: .*'fancy'"),
    ({"score": {"scorer": "ifd", "convention": "cherry", "template": "plain"}}, r"score\.convention: .*'cherry'"),
    ({"score": {"scorer": "ifd", "max_length": 1}}, r"score\.max_length: .*got 1"),
    ({"score": {"scorer": "ifd", "compile": "maybe"}}, r"score\.compile: .*'maybe'"),
    ({"score": {"scorer": "gold"}}, r"score\.task_set: .*task_set"),
    ({"score": {"scorer": "gold", "task_set": "t.json", "convention": "cherry"}}, r"score\.convention: .*'cherry'"),
    ({"score": {"scorer": "gold", "task_set": "t.json", "min_response_tokens": 4}},
     r"score\.min_response_tokens applies to scorer 'ifd' only, not 'gold'"),
    ({"score": {"scorer": "ifd"}, "select": [{"rule": {"top_fraction": 0.1, "threshold": 2.0}}]},
     r"select\[0\]\.rule: give exactly one of top_fraction, top_n, threshold"),
    ({"score": {"scorer": "ifd"}, "select": [{"rule": {"top_fraction": 0.2}, "diversity": {"k": 1.5}}]},
     r"select\[0\]\.diversity\.k: a float is a fraction"),
    ({"score": {"scorer": "ifd"}, "select": [{"rule": {"top_n": 3}}], "publish": {}}, r"publish: give exactly one"),
    ({"score": {"scorer": "ifd"}, "publish": {"path": "x"}}, r"publish needs at least one 'select'"),
    ({"score": {"scorer": "ifd"}, "select": [{"rule": {"top_n": 3}}, {"rule": {"top_n": 4}}],
      "publish": {"path": "x", "revision": "mine"}}, r"publish\.revision names one branch"),
    ({"score": {"scorer": "ifd"}, "select": [{"rule": {"top_n": 3}}, {"rule": {"top_n": 3}}]}, r"the same rule"),
    ({"score": {"scorer": "ifd"}, "run": {"part_rows": 0}}, r"run\.part_rows must be an integer >= 1, got 0"),
])
def test_bad_values_are_named(data, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe(data)


def test_defaults_and_scorer_settings():
    recipe = parse_recipe({"score": {"scorer": "ifd", "model": "gpt2", "max_length": 512, "columns": {"instruction": "q", "response": "a"}}})
    assert recipe.input.source == "demo" and recipe.run.output == "prospector_out/scored" and recipe.select == []
    assert recipe.run.part_seconds == 300.0
    assert recipe.score.scorer_kwargs() == {"model": "gpt2", "max_length": 512, "dtype": "auto",
                                            "mapping": {"instruction": "q", "response": "a"}, "turn": "last"}
    assert parse_recipe({"score": {"scorer": "ifd"}, "run": {"part_seconds": 5}}).run.part_seconds == 5.0


def test_the_command_line_reports_a_bad_recipe(tmp_path, capsys):
    path = write(tmp_path, yaml.safe_dump({"score": {"scorer": "ifd", "max_lenght": 5}}))
    assert main(["run", str(path)]) == 2
    assert f"{path}: unknown key 'score.max_lenght'" in capsys.readouterr().err


# -- baselines and the evaluate section (issue 20) ------------------------------------------------------------------

SCORE = {"scorer": "ifd"}
TOP = {"rule": {"top_n": 3}}
EVAL = {"eval_sets": {"held": {"source": "demo"}}}


def test_baselines_and_evaluate_parse_into_their_specs():
    recipe = parse_recipe({"score": SCORE, "select": [
        TOP, {"baseline": {"rule": "random", "top_n": 3, "seed": 2}}, {"baseline": {"rule": "longest", "top_fraction": 0.1}},
        {"baseline": {"rule": "length_matched", "reference": "ifd-top3", "bins": 4}}],
        "evaluate": {**EVAL, "rows": 3, "baselines": {"random": {"seeds": [0, 1]}, "longest": {}, "length_matched": {}},
                     "train": {"steps": 2, "learning_rate": 1e-3, "lora": {"r": 4}}}})
    assert [s.slug for s in recipe.select] == ["ifd-top3", "random-top3-seed2", "longest-top10pct-auto",
                                               "length-matched-ifd-top3-seed0"]
    assert recipe.select[1].baseline.make_rule() == random_rows(3, seed=2)
    ev = recipe.evaluate
    assert ev.baselines.random.seeds == [0, 1] and ev.baselines.longest == {} and ev.baselines.length_matched.bins == 10
    assert ev.train == TrainSettings(steps=2, learning_rate=1e-3, lora={"r": 4}) and ev.rows == 3
    assert parse_recipe({"score": SCORE, "select": [TOP], "evaluate": EVAL}).evaluate.baselines.random is None


@pytest.mark.parametrize("data, message", [
    ({"select": [TOP, {"baseline": {"rule": "rnd", "top_n": 3}}]},
     r"select\[1\]\.baseline: rule must be one of random, longest, length_matched, got 'rnd'"),
    ({"select": [{"baseline": {"rule": "random"}}]}, r"select\[0\]\.baseline: a random baseline needs exactly one of"),
    ({"select": [{"baseline": {"rule": "random", "top_n": 3, "sede": 1}}]}, r"unknown key 'select\[0\]\.baseline\.sede'"),
    ({"select": [TOP, {"baseline": {"rule": "length_matched"}}]}, r"select\[1\]\.baseline: .*needs reference"),
    ({"select": [TOP, {"baseline": {"rule": "length_matched", "reference": "ifd-top3", "top_n": 3}}]},
     r"select\[1\]\.baseline: .*leave out top_fraction and top_n"),
    ({"select": [{"baseline": {"rule": "length_matched", "reference": "ifd-top3"}}, TOP]},
     r"select\[0\]\.baseline\.reference: 'ifd-top3' is not an earlier selection"),
    ({"select": [{"rule": {"top_n": 3}, "baseline": {"rule": "random", "top_n": 3}}]}, r"select\[0\]: give one of"),
    ({"select": [{}]}, r"select\[0\]: give one of 'rule'"),
    ({"select": [TOP], "evaluate": {}}, r"missing key 'evaluate\.eval_sets'"),
    ({"select": [TOP], "evaluate": {"eval_sets": {}}}, r"evaluate\.eval_sets: give at least one"),
    ({"select": [TOP], "evaluate": {**EVAL, "arms": ["ifd-top5"]}}, r"evaluate\.arms: 'ifd-top5' is not a selection"),
    ({"select": [TOP], "evaluate": {**EVAL, "rows": 3, "tokens": 9}}, r"evaluate: give rows or tokens"),
    ({"select": [TOP], "evaluate": {**EVAL, "rows": 0}}, r"evaluate\.rows must be an integer >= 1, got 0"),
    ({"select": [TOP], "evaluate": {**EVAL, "train": {"learnig_rate": 1}}},
     r"unknown key 'evaluate\.train\.learnig_rate' \(did you mean 'learning_rate'\?\)"),
    ({"select": [TOP], "evaluate": {**EVAL, "train": {"steps": 0}}}, r"evaluate\.train\.steps must be an integer >= 1"),
    ({"select": [TOP], "evaluate": {**EVAL, "train": {"lora": 8}}}, r"evaluate\.train\.lora: expected a mapping"),
    ({"select": [TOP], "evaluate": {**EVAL, "baselines": {"random": {"seeds": []}}}},
     r"evaluate\.baselines\.random\.seeds: give at least one seed"),
    ({"select": [TOP], "evaluate": {**EVAL, "baselines": {"random": {"seeds": [-1]}}}},
     r"evaluate\.baselines\.random\.seeds\[0\] must be an integer >= 0"),
    ({"select": [TOP], "evaluate": {**EVAL, "baselines": {"shortest": {}}}},
     r"unknown key 'evaluate\.baselines\.shortest'"),
    ({"select": [TOP], "evaluate": {**EVAL, "baselines": {"length_matched": {"reference": "x"}}}},
     r"evaluate\.baselines\.length_matched\.reference: 'x' is not a selection"),
    ({"evaluate": {**EVAL, "baselines": {"random": {}}}}, r"evaluate\.rows: the random and longest arms need a size"),
    ({"evaluate": EVAL}, r"evaluate: no arms to train"),
    ({"select": [TOP], "evaluate": {**EVAL, "card": True}}, r"evaluate\.card adds the evidence .* add a publish section"),
    ({"select": [TOP], "evaluate": {"eval_sets": {"held": {"source": "no/such/file.json"}}}},
     r"evaluate\.eval_sets\.held\.source: no/such/file\.json does not exist"),
])
def test_bad_baselines_and_evaluate_sections_are_named(data, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe({"score": SCORE, **data})
