"""Recipes: a YAML file naming a whole run (input, scorer, selections, publication), checked before any work.

A recipe has these sections; only ``score`` is required::

    description: what the recipe reproduces
    input:   {source: demo, split: train, streaming: false, limit: null}
    score:   {scorer: ifd, model: smollm2-135m, convention: exact, template: null, max_length: null, ...}
    run:     {output: prospector_out/scored, batch_size: 256, part_rows: 4096, part_seconds: 300, overwrite: false,
              engine: local}                                    # engine: ray runs on a Ray cluster
    select:  - rule: {column: ifd, top_fraction: 0.05}           # a SelectionRule
               diversity: {k: 0.02}                              # optional: then facility location
             - baseline: {rule: random, top_n: 500, seed: 0}     # or longest; or length_matched with
                                                                 # reference: <an earlier selection's slug>
    publish: {path: prospector_out/repo}                         # or {hub: user/name, create_pr: false}
                                                                 # also: revision, license, allow_empty
    evaluate: {eval_sets: {held_out: {source: gpt4.json}}, baselines: {random: {seeds: [0, 1, 2]}},
               rows: 500, train: {epochs: 1, learning_rate: 2.0e-5}, out: prospector_out/evidence}
    show: 10                                                     # score-table rows to print

:func:`load_recipe` reads and checks it: an unknown key, a wrong type or a bad value is an error that
names the file, the key (``score.template``, ``select[1].rule.top_fraction``) and what is allowed; the
scorer checks its own settings. Relative paths are relative to the working directory, where the command
runs. :func:`hf_prospector.pipeline.run_recipe` runs it.
"""

from __future__ import annotations

import difflib
import inspect
import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from .evaluation.training import TrainSettings
from .selection import SelectionRule
from .utils import require_int

SCORERS = ("ifd", "gold")
BASELINES = ("random", "longest", "length_matched")
ONE_RULE = "give one of 'rule' (a score column and a size) or 'baseline' (random, longest, length_matched)"
ENGINES = ("local", "ray")  # run.engine


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the file and the key."""


@dataclass
class InputSpec:
    """Where the rows come from: a Hub id, a json/jsonl/parquet/csv file, a saved dataset, ``demo`` or ``demo-chat``."""

    source: str = "demo"
    split: str = "train"
    streaming: bool = False  # read the source as an IterableDataset (larger than memory or disk)
    limit: int | None = None  # only the first `limit` rows


@dataclass
class RefineSpec:
    """SuperNUGGETS' refined task set: the rows nearest ``k`` k-means centroids of a ``sample`` of the task set."""

    k: int = 100
    sample: int = 1000
    seed: int = 0
    encoder: str | None = None


@dataclass
class ScoreSpec:
    """The scorer and its settings; a setting left out (null) takes the scorer's or convention's default."""

    scorer: str = "ifd"
    model: str | None = None
    revision: str | None = None
    convention: str | None = None
    template: str | None = None
    max_length: int | None = None
    min_response_tokens: int | None = None  # ifd only
    dtype: str = "auto"
    device: str | None = None
    token_budget: int | None = None
    columns: dict[str, str] | None = None  # e.g. {instruction: question, response: answer}
    turn: str = "last"
    task_set: str | None = None  # gold only: a file, saved dataset or Hub id of tasks
    task_max_length: int | None = None  # gold only
    refine_task_set: RefineSpec | None = None  # gold only
    compile: bool | str | None = None  # torch.compile: true, false or auto (after a minute of model time)

    def scorer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the scorer: the settings given, without the scorer's name."""
        given = {"mapping" if f.name == "columns" else f.name: getattr(self, f.name)
                 for f in fields(self) if f.name not in ("scorer", "refine_task_set")}
        return {k: v for k, v in given.items() if v is not None}


@dataclass
class RunSpec:
    """Where the scored rows go (a saved-dataset folder, or a .parquet file) and how the run saves its progress."""

    output: str = "prospector_out/scored"
    batch_size: int = 256  # rows per scorer call (the engine packs them into token-budget micro-batches)
    part_rows: int = 4096  # rows per saved part; a process scores whole blocks of this size
    part_seconds: float = 300.0  # save a part at least this often, even inside a block
    overwrite: bool = False  # replace an existing output that a run here did not write
    engine: str = "local"  # local: this process (or a torchrun/accelerate launch); ray: a Ray cluster's actors
    actors: int | None = None  # ray: scorer actors (default: one per GPU, else one per cpus_per_actor CPUs)
    cpus_per_actor: int = 1  # ray, on CPUs: the CPUs each actor takes


@dataclass
class DiversitySpec:
    """Facility location over sentence embeddings after the rule: ``k`` rows, or a fraction of all scored rows."""

    k: int | float
    encoder: str | None = None


@dataclass
class BaselineSpec:
    """A baseline selection (:mod:`hf_prospector.selection.baselines`): ``random`` rows (``seed``), the ``longest``
    responses, or random rows ``length_matched`` to an earlier selection of the recipe (``reference``: its slug;
    their count is the reference's). Length is counted ``by`` auto (the scorer's ``n_response_tokens`` when the
    scored rows have it, else words), ``n_response_tokens``, ``tokens`` (the scorer's tokenizer) or ``words``."""

    rule: str
    top_fraction: float | None = None
    top_n: int | None = None
    seed: int = 0
    by: str = "auto"
    bins: int = 10  # length_matched: quantile bins of the reference's lengths (10: deciles)
    reference: str | None = None  # length_matched: the slug of an earlier selection in this recipe

    def __post_init__(self):
        if self.rule not in BASELINES:
            raise ValueError(f"rule must be one of {', '.join(BASELINES)}, got {self.rule!r}")
        if self.rule == "length_matched":
            if self.top_fraction is not None or self.top_n is not None:
                raise ValueError("a length_matched baseline draws as many rows as its reference selection kept; "
                                 "leave out top_fraction and top_n")
            if self.reference is None:
                raise ValueError("a length_matched baseline needs reference: the slug of an earlier selection "
                                 "(e.g. ifd-top5pct)")
            require_int("bins", self.bins, 1)
            from .selection.baselines import BY
            if self.by not in BY:
                raise ValueError(f"by must be one of {', '.join(BY)}, got {self.by!r}")
        elif (self.top_fraction is None) == (self.top_n is None):
            raise ValueError(f"a {self.rule} baseline needs exactly one of top_fraction (e.g. 0.05) or top_n "
                             "(e.g. 500)")
        else:
            self.make_rule()  # the rule checks its own size, seed and by

    def make_rule(self, reference=None, tokenizer=None) -> SelectionRule:
        """The rule; ``reference`` is the reference selection's rows (length_matched), ``tokenizer`` counts
        ``by: tokens``."""
        from .selection import length_matched_random, longest, random_rows

        size = self.top_n if self.top_n is not None else self.top_fraction
        if self.rule == "random":
            require_int("seed", self.seed, 0)
            return random_rows(size, seed=self.seed)
        if self.rule == "longest":
            return longest(size, by=self.by, tokenizer=tokenizer)
        return length_matched_random(reference, seed=self.seed, bins=self.bins, by=self.by, tokenizer=tokenizer)

    @property
    def slug(self) -> str:
        """The rule's name (``random-top500-seed0``, ``longest-top5pct-auto``); a length-matched draw's names its
        reference: ``length-matched-ifd-top5pct-seed0``."""
        if self.rule == "length_matched":
            return f"length-matched-{self.reference}-seed{self.seed}"
        return self.make_rule().name


@dataclass
class SelectSpec:
    """One selection (published as its own revision): a rule or a baseline, optionally followed by diversity."""

    rule: SelectionRule | None = None
    diversity: DiversitySpec | None = None
    output: str | None = None  # also save the selected rows here (folder or .parquet)
    baseline: BaselineSpec | None = None  # instead of rule; the run sets rule from it

    def __post_init__(self):
        if self.rule is None and self.baseline is None:
            raise ValueError(ONE_RULE)

    @property
    def slug(self) -> str:
        """The rule's slug, plus the diversity step's: ``ifd-top20pct-fl2pct``."""
        name = self.baseline.slug if self.baseline is not None else self.rule.name
        if self.diversity is None:
            return name
        k = self.diversity.k
        return f"{name}-fl{f'{k * 100:g}pct' if isinstance(k, float) else k}".replace(".", "p")


@dataclass
class PublishSpec:
    """Publish each selection: to a local git dataset repository (``path``) or a Hub dataset repo (``hub``)."""

    path: str | None = None
    hub: str | None = None
    revision: str | None = None  # default: select-<selection slug>
    create_pr: bool = False  # hub only
    private: bool | None = None  # hub only
    license: str | None = None
    allow_empty: bool = False  # publish a selection that kept no rows (refused by default)


@dataclass
class RandomArms:
    """Random arms of the evidence: one per seed (named ``random-<seed>``)."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])


@dataclass
class LengthMatchedArm:
    """A length-matched random arm (named ``length-matched``): random rows whose response lengths follow
    ``reference`` (a selection's slug; default the first selection) in ``bins`` quantile bins."""

    reference: str | None = None
    seed: int = 0
    bins: int = 10


@dataclass
class EvidenceBaselines:
    """The baseline arms drawn from the scored rows, as many rows as ``evaluate.rows`` or the first arm; a section
    left out adds no arm (``longest: {}`` adds one)."""

    random: RandomArms | None = None
    longest: dict | None = None  # {} adds the arm (named ``longest``)
    length_matched: LengthMatchedArm | None = None


@dataclass
class EvaluateSpec:
    """Fine-tune the base model on each arm (the recipe's selections and the baselines asked for), evaluate on the
    evaluation sets, compare with ``baseline`` (:func:`hf_prospector.evaluation.run_evidence`)."""

    eval_sets: dict[str, InputSpec]  # name -> rows of (instruction, reference response)
    out: str = "prospector_out/evidence"
    base_model: str | None = None  # default: the scorer's model
    arms: list[str] | None = None  # selection slugs to train on (default: every selection)
    baselines: EvidenceBaselines = field(default_factory=EvidenceBaselines)
    baseline: str = "random"  # the arm (or arms, named <baseline>-<seed>) every arm is compared with
    rows: int | None = None  # each arm trains on its first `rows` rows
    tokens: int | None = None  # or on its first rows holding at most `tokens` response tokens
    equal_size: bool = True
    train: TrainSettings = field(default_factory=TrainSettings)
    eval_columns: dict[str, str] | None = None  # the evaluation sets' layout, e.g. {instruction: q, response: a}
    device: str | None = None
    dtype: str = "float32"
    draws: int = 10000  # bootstrap resamples
    card: bool = False  # add an "Evidence" section to the cards of the published selections


@dataclass
class Recipe:
    score: ScoreSpec
    description: str = ""
    input: InputSpec = field(default_factory=InputSpec)
    run: RunSpec = field(default_factory=RunSpec)
    select: list[SelectSpec] = field(default_factory=list)
    publish: PublishSpec | None = None
    show: int = 10
    evaluate: EvaluateSpec | None = None


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a recipe file; raises :class:`RecipeError` naming the file and the key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise RecipeError(f"{path}: cannot read the recipe: {err}") from None
    return parse_recipe(data, str(path))


def parse_recipe(data: Any, where: str = "recipe") -> Recipe:
    """A :class:`Recipe` from parsed YAML, with every key, type and value checked."""
    try:
        recipe = _build(Recipe, data, "")
        check_recipe(recipe)
    except RecipeError as err:
        raise RecipeError(f"{where}: {err}") from None
    return recipe


# -- checking -------------------------------------------------------------------------------------------
def check_recipe(recipe: Recipe) -> None:
    """Values that are well-typed but cannot work together (the command line checks its options with it too)."""
    check_score(recipe.score)
    for name in ("batch_size", "part_rows"):
        require_int(f"run.{name}", getattr(recipe.run, name), 1, error=RecipeError)
    if recipe.run.part_seconds < 0:
        raise RecipeError(f"run.part_seconds must be >= 0, got {recipe.run.part_seconds}")
    if recipe.run.engine not in ENGINES:
        raise RecipeError(f"run.engine must be one of {', '.join(ENGINES)}, got {recipe.run.engine!r}")
    if recipe.run.actors is not None:
        require_int("run.actors", recipe.run.actors, 1, error=RecipeError)
    require_int("run.cpus_per_actor", recipe.run.cpus_per_actor, 1, error=RecipeError)
    if recipe.input.limit is not None:
        require_int("input.limit", recipe.input.limit, 1, error=RecipeError)
    for i, spec in enumerate(recipe.select):
        k = None if spec.diversity is None else spec.diversity.k
        if isinstance(k, float) and not 0 < k < 1:
            raise RecipeError(f"select[{i}].diversity.k: a float is a fraction of the rows, in (0, 1); got {k}")
        if isinstance(k, int):
            require_int(f"select[{i}].diversity.k", k, 1, hint="a float in (0, 1) is a fraction of the rows",
                        error=RecipeError)
    publish = recipe.publish
    if publish is not None:
        if (publish.path is None) == (publish.hub is None):
            raise RecipeError("publish: give exactly one of 'path' (a local dataset repository) or 'hub' (a Hub repo id)")
        if not recipe.select:
            raise RecipeError("publish needs at least one 'select' entry: it publishes the selected rows")
        if publish.revision is not None and len(recipe.select) > 1:
            raise RecipeError(f"publish.revision names one branch but there are {len(recipe.select)} selections; "
                              "leave it out to publish each on select-<its rule>")
        if publish.path is not None and (publish.create_pr or publish.private is not None):
            raise RecipeError("publish.create_pr and publish.private apply to 'hub' only")
    slugs = [s.slug for s in recipe.select]
    if len(set(slugs)) < len(slugs):
        raise RecipeError(f"two selections are the same rule ({slugs}); each needs its own")
    for i, spec in enumerate(recipe.select):
        if spec.rule is not None and spec.baseline is not None:
            raise RecipeError(f"select[{i}]: {ONE_RULE}, not both")
        if spec.baseline is not None and spec.baseline.rule == "length_matched" and \
                spec.baseline.reference not in slugs[:i]:
            raise RecipeError(f"select[{i}].baseline.reference: {spec.baseline.reference!r} is not an earlier "
                              f"selection of this recipe; name one of {slugs[:i] or 'them (there is none before it)'}")
    if recipe.evaluate is not None:
        check_evaluate(recipe.evaluate, slugs)
        if recipe.evaluate.card and recipe.publish is None:
            raise RecipeError("evaluate.card adds the evidence to the cards of the published selections: add a "
                              "publish section, or leave card out (the report is in evaluate.out either way)")
    _check_paths(recipe)


def check_evaluate(spec: EvaluateSpec, slugs: list[str]) -> None:
    """The arms exist, a budget is one of rows or tokens, and the baselines can be drawn."""
    if not spec.eval_sets:
        raise RecipeError("evaluate.eval_sets: give at least one evaluation set, e.g. {held_out: {source: eval.json}}")
    for name in spec.arms or []:
        if name not in slugs:
            raise RecipeError(f"evaluate.arms: {name!r} is not a selection of this recipe; selections: {slugs}")
    if spec.rows is not None and spec.tokens is not None:
        raise RecipeError("evaluate: give rows or tokens (the budget every arm trains on), not both")
    for key in ("rows", "tokens"):
        if getattr(spec, key) is not None:
            require_int(f"evaluate.{key}", getattr(spec, key), 1, error=RecipeError)
    require_int("evaluate.draws", spec.draws, 1, error=RecipeError)
    for name, source in spec.eval_sets.items():
        if source.limit is not None:
            require_int(f"evaluate.eval_sets.{name}.limit", source.limit, 1, error=RecipeError)
        if source.streaming:
            raise RecipeError(f"evaluate.eval_sets.{name}.streaming: an evaluation set is read whole; set it false")
    chosen = spec.arms if spec.arms is not None else slugs
    extra = spec.baselines
    if not chosen and extra.random is None and extra.longest is None:
        raise RecipeError("evaluate: no arms to train: add selections (select:) or baselines (evaluate.baselines)")
    if extra.random is not None:
        if not extra.random.seeds:
            raise RecipeError("evaluate.baselines.random.seeds: give at least one seed, e.g. [0, 1, 2]")
        for i, seed in enumerate(extra.random.seeds):
            require_int(f"evaluate.baselines.random.seeds[{i}]", seed, 0, error=RecipeError)
    if extra.longest:
        raise RecipeError(f"evaluate.baselines.longest takes no settings yet (give {{}}), got {extra.longest}")
    if (extra.random is not None or extra.longest is not None) and spec.rows is None and not chosen:
        raise RecipeError("evaluate.rows: the random and longest arms need a size: set rows, or add a selection "
                          "whose size they take")
    matched = extra.length_matched
    if matched is not None:
        reference = matched.reference or (chosen[0] if chosen else None)
        if reference not in slugs:
            raise RecipeError(f"evaluate.baselines.length_matched.reference: {reference!r} is not a selection of this "
                              f"recipe; selections: {slugs}")
        require_int("evaluate.baselines.length_matched.bins", matched.bins, 1, error=RecipeError)
    if spec.train.steps is not None:
        require_int("evaluate.train.steps", spec.train.steps, 1, error=RecipeError)
    for key in ("batch_size", "gradient_accumulation"):
        require_int(f"evaluate.train.{key}", getattr(spec.train, key), 1, error=RecipeError)
    if not spec.train.learning_rate > 0 or not spec.train.epochs > 0:
        raise RecipeError("evaluate.train.learning_rate and evaluate.train.epochs must be > 0")


def scorer_class(name: str) -> type:
    """The scorer class a recipe's ``score.scorer`` names."""
    from .scorers import GoldScorer, IFDScorer

    classes = {"ifd": IFDScorer, "gold": GoldScorer}
    if name not in classes:
        raise RecipeError(f"score.scorer: unknown scorer {name!r}; allowed: {', '.join(SCORERS)}")
    return classes[name]


def check_score(score: ScoreSpec) -> None:
    """The scorer checks its own settings: it is built from them here (cheap: the model and a gold task set load
    on first use), and its error is reported under the recipe key it names."""
    cls = scorer_class(score.scorer)
    kwargs = score.scorer_kwargs()
    given = list(kwargs) + (["refine_task_set"] if score.refine_task_set is not None else [])
    for key in given:
        needs = "task_set" if key == "refine_task_set" else key  # refining needs a scorer that takes a task set
        if needs not in _settings_of(cls):
            takes = [name for name in SCORERS if needs in _settings_of(scorer_class(name))]
            raise RecipeError(f"score.{key} applies to scorer {' or '.join(map(repr, takes))} only, "
                              f"not {score.scorer!r}")
    try:
        cls(**kwargs)
    except (OSError, ImportError):
        pass  # a task set it could not read is no setting: the run reports it (a missing local file: just below)
    except (ValueError, TypeError) as err:
        keys = [f.name for f in fields(ScoreSpec) if f.name != "scorer"]
        raise RecipeError(f"{_key_named(str(err), keys)}: {err}") from None


def _settings_of(cls: type) -> set[str]:
    """The keyword arguments a scorer class accepts, through the ``**kwargs`` it hands to its base class."""
    names = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = list(inspect.signature(klass.__init__).parameters.values())[1:]
        names |= {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names


def _key_named(message: str, keys: list[str]) -> str:
    """``score.<key>`` for the setting a scorer's message names first (``score`` when it names none)."""
    found = [(match.start(), key) for key in keys if (match := re.search(rf"\b{key}\b", message))]
    return f"score.{min(found)[1]}" if found else "score"


def _check_paths(recipe: Recipe) -> None:
    """Local files the run reads exist (a Hub id or URL is checked when it loads)."""
    from .sources import local_path

    sources = [("input.source", recipe.input.source)]
    if recipe.score.scorer == "gold":
        sources.append(("score.task_set", recipe.score.task_set))
    if recipe.evaluate is not None:
        sources += [(f"evaluate.eval_sets.{name}.source", spec.source)
                    for name, spec in recipe.evaluate.eval_sets.items()]
    for key, source in sources:
        path = local_path(source)
        if path is not None and not path.exists():
            where = "" if path.is_absolute() else f", relative to the working directory {Path.cwd()}"
            raise RecipeError(f"{key}: {source} does not exist (read as a local path, not a Hub id{where}); "
                              "check the path")


# -- building dataclasses from YAML ----------------------------------------------------------------------
def _build(cls, data: Any, where: str):
    """An instance of dataclass ``cls`` from a mapping, each value checked against the field's type."""
    label = where.rstrip(".") or "the recipe"
    if data is None and where == "":
        raise RecipeError("the recipe is empty; it needs at least a 'score' section")
    if not isinstance(data, dict):
        raise RecipeError(f"{label}: expected a mapping of keys, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for key in data:
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise RecipeError(f"unknown key {where + str(key)!r}{hint}; allowed: {', '.join(names)}")
    values = {}
    for f in fields(cls):
        if f.name in data:
            values[f.name] = _value(hints[f.name], data[f.name], where + f.name)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise RecipeError(f"missing key {where + f.name!r}")
    try:
        return cls(**values)
    except (ValueError, TypeError) as err:  # the class's own checks, e.g. SelectionRule's
        raise RecipeError(f"{label}: {err}") from None


def _value(kind, value: Any, where: str):
    """``value`` checked against type ``kind`` (str, int, float, bool, optional, union, list, dict, dataclass)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1 and (is_dataclass(options[0]) or typing.get_origin(options[0]) in (list, dict)):
            return _value(options[0], value, where)  # a section or null: the section's own, precise error
        for option in options:
            try:
                return _value(option, value, where)
            except RecipeError:
                continue
        raise RecipeError(f"{where}: expected {_name(kind)}, got {_show(value)}")
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list, got {_show(value)}")
        return [_value(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {_show(value)}")
        return {_value(args[0], k, f"{where} key"): _value(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if is_dataclass(kind):
        return _build(kind, value, where + ".")
    if kind is dict and isinstance(value, dict):  # a free mapping (e.g. LoRA settings, handed on as given)
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (str, int, float, bool) and isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise RecipeError(f"{where}: expected {_name(kind)}, got {_show(value)}")


def _name(kind) -> str:
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _name(a) for a in args)
    if typing.get_origin(kind) is list:
        return f"a list of {_name(args[0])}"
    if typing.get_origin(kind) is dict:
        return f"a mapping of {_name(args[0])} to {_name(args[1])}"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(kind, "a mapping")


def _show(value: Any) -> str:
    return "nothing (null)" if value is None else f"{value!r} ({type(value).__name__})"
