"""Running a recipe: score, then each selection, then each publication, as small steps over one result.

>>> from hf_prospector import run_recipe
>>> result = run_recipe("recipes/quickstart.yaml")
>>> [(s.spec.slug, len(s.rows), s.publication) for s in result.selections]

Each :class:`Step` reads what the steps before it left in the :class:`RunResult` and adds its own part;
``on_step`` sees each step as it finishes (the command line prints there, and nothing here prints).
Under ``torchrun``/``accelerate launch`` every process scores its share and only the main process goes on to
select and publish. The functions the steps call (:func:`score_input`, :func:`select_rows`,
:func:`publish_rows`, :func:`evaluate_arms`) also serve the ``score``, ``select``, ``publish`` and ``evaluate``
commands on their own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .recipes import (EvaluateSpec, EvidenceBaselines, InputSpec, PublishSpec, Recipe, RunSpec, ScoreSpec, SelectSpec,
                      check_recipe, load_recipe)
from .sources import load_rows, save_rows


@dataclass
class Selection:
    """One selection's outcome: the kept rows, the report accounting for every scored row, and where it went."""

    spec: SelectSpec
    rows: Any  # datasets.Dataset
    report: Any  # selection.SelectionReport
    publication: Any = None  # publishing.Publication, once published


@dataclass
class RunResult:
    """What a recipe run made; ``scored`` is None in the other processes of a launch (they only score)."""

    recipe: Recipe
    recipe_file: str | None = None  # named in provenance and in errors
    source: str | None = None  # how the manifest and the card name the input
    scorer: Any = None
    scored: Any = None  # the scored rows (a Dataset)
    summary: Any = None  # runner.RunSummary: rows scored, resumed, NaN reasons
    selections: list[Selection] = field(default_factory=list)
    evidence: dict | None = None  # run_evidence's result, with an evaluate section

    @property
    def publications(self) -> list:
        return [s.publication for s in self.selections if s.publication is not None]


class Step:
    """One stage of a run: :meth:`run` reads the result of the stages before it and adds its own part."""

    name = "step"

    def run(self, result: RunResult) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class ScoreStep(Step):
    """Load the input and score it into ``run.output`` (resumable; split over the processes of a launch)."""

    name = "score"

    def __init__(self, inp: InputSpec, spec: ScoreSpec, run: RunSpec, *, fresh: bool = False):
        self.inp, self.spec, self.run_spec, self.fresh = inp, spec, run, fresh

    def run(self, result: RunResult) -> None:
        result.scored, result.summary, result.scorer, result.source = score_input(
            self.inp, self.spec, self.run_spec, fresh=self.fresh)


class SelectStep(Step):
    """One selection of the scored rows (saved to ``spec.output`` when given)."""

    def __init__(self, spec: SelectSpec):
        self.spec, self.name = spec, f"select {spec.slug}"

    def run(self, result: RunResult) -> None:
        spec = self.spec
        if spec.rule is None:  # a baseline: its rule is made now, from the reference selection's rows
            base = spec.baseline
            reference = next((s.rows for s in result.selections if s.spec.slug == base.reference), None)
            tokenizer = result.scorer.engine().tokenizer if base.by == "tokens" else None
            spec = dataclasses.replace(spec, rule=base.make_rule(reference, tokenizer))
        rows, report = select_rows(result.scored, spec)
        result.selections.append(Selection(spec, rows, report))


class EvaluateStep(Step):
    """Fine-tune the base model on each arm (selections and baselines), evaluate, compare: ``result.evidence``."""

    name = "evaluate"

    def __init__(self, spec: EvaluateSpec):
        self.spec = spec

    def run(self, result: RunResult) -> None:
        from .evaluation import Encoding

        recipe, spec = result.recipe, self.spec
        chosen = spec.arms if spec.arms is not None else [s.spec.slug for s in result.selections]
        selections = {s.spec.slug: s.rows for s in result.selections if s.spec.slug in chosen}
        eval_sets = {name: load_input(source)[0] for name, source in spec.eval_sets.items()}
        # Arms train and are evaluated on the tokens the scorer scored (its template and budget).
        encoding = Encoding.of(result.scorer) if hasattr(result.scorer, "min_response_tokens") else Encoding()
        result.evidence = evaluate_arms(spec, selections, eval_sets, pool=result.scored, encoding=encoding,
                                        base_model=spec.base_model or recipe.score.model,
                                        mapping=recipe.score.columns, turn=recipe.score.turn, log=lambda _: None)


class PublishStep(Step):
    """Publish selection ``index`` with its provenance. Every selection is made before the first publish, so
    one that kept no rows stops the run before anything is published (unless ``allow_empty``)."""

    def __init__(self, target: PublishSpec, index: int):
        self.target, self.index, self.name = target, index, f"publish selection {index}"

    def run(self, result: RunResult) -> None:
        empty = [s.spec.slug for s in result.selections if len(s.rows) == 0]
        if empty and not self.target.allow_empty:
            raise ValueError(f"selection {', '.join(empty)} kept 0 rows: nothing published; loosen the rule, or set "
                             f"publish.allow_empty: true in {result.recipe_file or 'the recipe'} to publish empty "
                             "revisions")
        chosen = result.selections[self.index]
        facts = selection_provenance(result.source, result.scorer, chosen.spec, chosen.report,
                                     recipe=result.recipe_file)
        chosen.publication = publish_rows(chosen.rows, self.target, scored=result.scored, provenance=facts,
                                          thresholds=effective_threshold(chosen.rows, chosen.spec),
                                          sections=evidence_sections(result))


def evidence_sections(result: RunResult) -> list[tuple[str, str]]:
    """The card's "Evidence" section, when the recipe's evaluate section asks for it (``card: true``)."""
    spec = result.recipe.evaluate
    if spec is None or not spec.card or result.evidence is None:
        return []
    from .evaluation.compare import to_markdown

    body = to_markdown(result.evidence, level=3).split("\n", 1)[1]  # the section's own title replaces the report's
    return [("Evidence", "Each arm fine-tuned the base model with the same settings; eval loss of reference "
                         "answers (lower is better), by hf-prospector's `evaluate`." + body)]


def recipe_steps(recipe: Recipe, *, fresh: bool = False) -> list[Step]:
    """The steps of ``recipe``: score, each selection, the evidence (with an ``evaluate`` section), then (with a
    ``publish`` section) each publication."""
    steps: list[Step] = [ScoreStep(recipe.input, recipe.score, recipe.run, fresh=fresh)]
    steps += [SelectStep(spec) for spec in recipe.select]
    if recipe.evaluate is not None:
        steps.append(EvaluateStep(recipe.evaluate))
    if recipe.publish is not None:
        steps += [PublishStep(recipe.publish, i) for i in range(len(recipe.select))]
    return steps


def run_recipe(recipe: Recipe | str | Path, *, fresh: bool = False, overwrite: bool = False,
               recipe_file: str | None = None,
               on_step: Callable[[Step, RunResult], None] | None = None) -> RunResult:
    """Run a recipe (a :class:`~hf_prospector.recipes.Recipe` or its YAML file): score, select, publish.

    ``fresh`` discards the saved parts of an earlier run; ``overwrite`` replaces an output a run here did not
    write. ``recipe_file`` names the recipe in provenance (default: the file given). ``on_step(step, result)``
    is called after each step in the main process.
    """
    if isinstance(recipe, Recipe):
        check_recipe(recipe)
    else:
        recipe_file = recipe_file or str(recipe)
        recipe = load_recipe(recipe)
    if overwrite:
        recipe = dataclasses.replace(recipe, run=dataclasses.replace(recipe.run, overwrite=True))
    result = RunResult(recipe, recipe_file)
    for step in recipe_steps(recipe, fresh=fresh):
        step.run(result)
        if result.scored is None:  # not the main process: its share of the scoring is done
            break
        if on_step is not None:
            on_step(step, result)
    return result


# -- what the steps do --------------------------------------------------------------------------------------
def load_input(spec: InputSpec):
    """``(rows, name)``: a Dataset (IterableDataset when streaming) and how the manifest and card name it."""
    rows = load_rows(spec.source, split=spec.split, streaming=spec.streaming)
    if spec.limit is not None:
        rows = rows.take(spec.limit) if spec.streaming else rows.select(range(min(spec.limit, len(rows))))
    return rows, input_name(spec)


def input_name(spec: InputSpec) -> str:
    """How the manifest and the card name the input (a URL's credentials hidden)."""
    from .storage import shown

    return f"{shown(spec.source)} (split {spec.split})" + ("" if spec.limit is None else f", first {spec.limit} rows")


def build_scorer(spec: ScoreSpec):
    """The scorer a :class:`ScoreSpec` names; for ``gold``, its task set is loaded (and refined) first."""
    from .scorers import GoldScorer, IFDScorer

    kwargs = spec.scorer_kwargs()
    if spec.scorer == "ifd":
        return IFDScorer(**kwargs)
    from .tasksets import load_task_set, refine_task_set

    # A refined set is checked for empty answers when GoldScorer loads it.
    tasks = load_task_set(spec.task_set, require_answers=spec.refine_task_set is None)
    if spec.refine_task_set is not None:
        r = spec.refine_task_set
        tasks = refine_task_set(tasks, k=r.k, sample=r.sample, encoder=r.encoder, seed=r.seed)
    return GoldScorer(**{**kwargs, "task_set": tasks})


def score_input(inp: InputSpec, spec: ScoreSpec, run: RunSpec, *, fresh: bool = False):
    """Score the input into ``run.output``: ``(scored, summary, scorer, source name)``.

    ``scored`` and ``summary`` are None in the other processes of a launch.
    """
    from .runner import process_state, score_run

    if run.engine == "ray":
        return _score_on_ray(inp, spec, run, fresh=fresh)
    state = process_state()
    with state.main_process_first():  # the main process fills the datasets cache; the others reuse it
        rows, name = load_input(inp)
        scorer = build_scorer(spec)
    scored, summary = score_run(rows, scorer, run.output, source_name=name, batch_size=run.batch_size,
                                part_rows=run.part_rows, part_seconds=run.part_seconds, fresh=fresh,
                                overwrite=run.overwrite)
    return scored, summary, scorer, name


def _score_on_ray(inp: InputSpec, spec: ScoreSpec, run: RunSpec, *, fresh: bool = False):
    """:func:`score_input` on a Ray cluster (one driver: no process of a launch to wait for). A file or a URL of one
    is read by Ray Data on the cluster; other sources by ``datasets`` on the driver."""
    from .ray_runner import RayRows, ray_reads, require_ray, score_run_ray

    require_ray()  # before loading anything: without Ray, say what to install
    if ray_reads(inp.source):
        rows, name = RayRows(inp.source, limit=inp.limit), input_name(inp)
    else:
        rows, name = load_input(inp)
    scorer = build_scorer(spec)
    scored, summary = score_run_ray(rows, scorer, run.output, source_name=name, batch_size=run.batch_size,
                                    part_rows=run.part_rows, part_seconds=run.part_seconds, fresh=fresh,
                                    overwrite=run.overwrite, actors=run.actors, cpus_per_actor=run.cpus_per_actor)
    return scored, summary, scorer, name


def select_rows(scored, spec: SelectSpec, *, tokenizer=None):
    """``(selected, report)`` for one selection: the rule, then facility location when ``spec.diversity``. The report
    carries the length profile of the selected rows against all (``tokenizer`` counts the instructions' tokens;
    words without one)."""
    from .embeddings import cache_column
    from .selection import fraction_count, length_profile, select, select_diverse
    from .selection.lengths import rows_measurable

    if spec.diversity is None:
        selected, report = select(scored, spec.rule)
    else:
        k = spec.diversity.k
        k = fraction_count(k, len(scored)) if isinstance(k, float) else k
        pool, first = select(scored, spec.rule, order="original")
        if not 1 <= k <= len(pool):
            raise ValueError(f"diversity.k={spec.diversity.k} asks for {k} rows, but the rule {spec.rule.name} kept "
                             f"{len(pool)} ({first.note}); lower k or loosen the rule")
        selected, second = select_diverse(pool, k, encoder=spec.diversity.encoder)
        selected = selected.remove_columns(cache_column(spec.diversity.encoder))
        report = first.followed_by(second)
    if rows_measurable(scored):
        report.lengths = length_profile(scored, selected, tokenizer=tokenizer)
    if spec.output:
        save_rows(selected, spec.output)
    return selected, report


def baseline_arms(pool, baselines: EvidenceBaselines, selections: dict, *, rows: int | None = None,
                  tokens: int | None = None) -> dict:
    """The baseline arms drawn from ``pool`` (the scored rows): ``random-<seed>``, ``longest``, ``length-matched``.

    Random and longest arms hold ``rows`` rows, else (under a token budget) every row in their order, else as many
    as the first selection; the length-matched arm follows its reference selection (default: the first).
    """
    from .selection import length_matched_random, longest, random_rows, select

    arms = {}
    first = next(iter(selections.values()), None)
    size = rows or (len(pool) if tokens else None) or (len(first) if first is not None else None)
    if size is None and (baselines.random is not None or baselines.longest is not None):
        raise ValueError("the random and longest arms need a size: give rows (or tokens), or a selection to match")
    if size is not None and size < 1:
        raise ValueError("the first selection kept no rows, so the random and longest arms would be empty; "
                         "give rows or loosen the selection")
    for seed in (baselines.random.seeds if baselines.random is not None else []):
        arms[f"random-{seed}"] = select(pool, random_rows(min(size, len(pool)), seed=seed))[0]
    if baselines.longest is not None:
        arms["longest"] = select(pool, longest(min(size, len(pool))))[0]
    matched = baselines.length_matched
    if matched is not None:
        reference = matched.reference or next(iter(selections), None)
        if reference not in selections:
            raise ValueError(f"length_matched: no selection named {reference!r} to match (arms: {list(selections)})")
        arms["length-matched"] = select(pool, length_matched_random(selections[reference], seed=matched.seed,
                                                                    bins=matched.bins))[0]
    clash = sorted(set(arms) & set(selections))
    if clash:
        raise ValueError(f"arm names {clash} are both a selection and a baseline; rename the selection")
    return arms


def evaluate_arms(spec: EvaluateSpec, selections: dict, eval_sets: dict, *, pool=None, encoding=None,
                  base_model: str | None = None, mapping: dict | None = None, turn: str = "last",
                  log: Callable[[str], None] = print) -> dict:
    """Fine-tune and compare (:func:`hf_prospector.evaluation.run_evidence`): the ``selections`` (name -> rows) and
    the baselines ``spec`` asks for, drawn from ``pool``; the result, with the report written to ``spec.out``."""
    from .evaluation import run_evidence

    extra = spec.baselines
    wants = extra.random is not None or extra.longest is not None or extra.length_matched is not None
    if wants and pool is None:
        raise ValueError("baseline arms are drawn from the scored rows: give the pool (the scored dataset)")
    arms = {**selections, **(baseline_arms(pool, extra, selections, rows=spec.rows, tokens=spec.tokens)
                             if wants else {})}
    return run_evidence(arms, eval_sets, spec.out, base_model=base_model, settings=spec.train, encoding=encoding,
                        baseline=spec.baseline, rows=spec.rows, tokens=spec.tokens, equal_size=spec.equal_size,
                        mapping=mapping, eval_mapping=spec.eval_columns, turn=turn, device=spec.device,
                        dtype=spec.dtype, draws=spec.draws, log=log)


def publish_rows(selected, target: PublishSpec, *, scored=None, provenance: dict | None = None,
                 thresholds: dict | None = None, sections=()):
    """Publish ``selected`` to ``target.path`` (a local git repository) or ``target.hub``: a Publication."""
    from .publishing import publish, publish_local

    options = dict(revision=target.revision, scored=scored, provenance=provenance, thresholds=thresholds,
                   license=target.license, allow_empty=target.allow_empty, sections=sections)
    if target.path is not None:
        return publish_local(selected, target.path, **options)
    return publish(selected, target.hub, create_pr=target.create_pr, private=target.private, **options)


def selection_provenance(source: str, scorer, spec: SelectSpec, report, recipe: str | None = None) -> dict:
    """The facts a card and commit message record for one selection."""
    settings = dict(scorer.settings())
    facts = {"source": source, "scorer": settings.pop("scorer"), "model": settings.pop("model"),
             "model_revision": settings.pop("revision"), **settings,
             "selection_rule": spec.rule.describe() + (f" Then facility location to {report.kept} rows."
                                                      if spec.diversity else ""),
             "selection_rule_slug": spec.slug, "selection_note": report.note,
             "published_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    if recipe:
        facts["recipe"] = recipe
    return {k: v for k, v in facts.items() if v is not None}


def effective_threshold(selected, spec: SelectSpec) -> dict | None:
    """The cut the selection made on its score column, for the card's histogram."""
    rule = spec.rule
    if rule.threshold is not None:
        return {rule.column: rule.threshold}
    if len(selected) == 0 or spec.diversity is not None or rule.column not in selected.column_names:
        return None  # (a baseline's key is computed, not a column of the rows)
    values = selected[rule.column]
    return {rule.column: float(max(values) if rule.lowest else min(values))}
