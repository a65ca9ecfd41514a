"""The ``hf-prospector`` command line (also ``python -m hf_prospector``).

Each subcommand parses its options, calls the library and prints:

* ``score``   add IFD or golden-score columns; resumable, and split over processes under
  ``torchrun``/``accelerate launch`` (see :mod:`hf_prospector.runner`), or on a Ray cluster with
  ``--engine ray`` (see :mod:`hf_prospector.ray_runner`);
* ``taskset`` load a task set for the golden score, optionally refined (SuperNUGGETS);
* ``select``  keep rows by a score column (top fraction, top n or threshold; then diversity);
* ``card``    write a dataset card for scored and selected rows;
* ``publish`` publish selected rows to a local git dataset repository or the Hub;
* ``report``  compare two scorings of the same rows, or assess scored datasets side by side;
* ``evaluate`` fine-tune the base model on selections and baselines, compare eval loss with 95% intervals;
* ``run``     run a YAML recipe (see :mod:`hf_prospector.recipes` and :mod:`hf_prospector.pipeline`).

Inputs are Hub ids, json/jsonl/parquet/csv files, saved datasets or ``demo``; outputs are saved-dataset
folders, or ``.parquet`` files. torch and datasets load inside the commands, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import traceback
from pathlib import Path

from .formats import TURNS
from .recipes import (ENGINES, DiversitySpec, EvaluateSpec, EvidenceBaselines, InputSpec, LengthMatchedArm,
                      PublishSpec, RandomArms, Recipe, RefineSpec, RunSpec, ScoreSpec, SelectSpec, load_recipe)
from .sources import load_rows, save_rows
from .utils import ROW_ID

# Score-table columns per scorer (the note column is shown last).
TABLE_COLUMNS = {"ifd": ("ifd", "ifd_loss", "ppl_cond", "ppl_uncond", "n_response_tokens"),
                 "gold": ("gold_score", "gold_delta", "gold_wins", "n_tasks")}
NOTE_COLUMNS = {"ifd": "ifd_note", "gold": "gold_note"}
RUN_DEFAULTS = RunSpec()  # the runner's defaults, without importing it (and datasets) for --help


# -- printing -------------------------------------------------------------------------------------------
def print_step(step, result) -> None:
    """What a recipe step did (``on_step`` of :func:`hf_prospector.pipeline.run_recipe`)."""
    from .pipeline import EvaluateStep, PublishStep, ScoreStep, SelectStep

    if isinstance(step, ScoreStep):
        if result.recipe.show:
            print_table(result.scored, step.spec, result.recipe.show)
        print(f"\n{result.summary.to_text()}")
    elif isinstance(step, SelectStep):
        print_selection(result.selections[-1].spec, result.selections[-1].report)
    elif isinstance(step, PublishStep):
        chosen = result.selections[step.index]
        print_publication(chosen.rows, chosen.publication)
    elif isinstance(step, EvaluateStep):
        print_evidence(result.evidence)


def print_selection(spec: SelectSpec, report) -> None:
    print(f"\nselection {spec.slug}: {report.to_text()}")
    if spec.output:
        print(f"selected rows saved to {spec.output}")


def print_evidence(evidence: dict) -> None:
    """The evidence's report (the table per evaluation set) and where its files are."""
    print("\n" + Path(evidence["files"]["markdown"]).read_text(encoding="utf-8").rstrip())
    folder = Path(evidence["files"]["markdown"]).parent
    print(f"\nevidence written to {folder} (report.md, evidence.json, evidence.png)")


def print_publication(selected, where) -> None:
    if len(selected) == 0:  # publish refuses this unless allow_empty was set
        print("warning: publishing a selection with 0 rows (allow_empty is set)", file=sys.stderr)
    if where.unchanged:
        print(f"revision {where.revision} of {where.location} already holds these {len(selected)} rows and this card "
              f"(commit {where.commit[:10]}); nothing to commit")
    else:
        print(f"published {len(selected)} rows to {where.location}, revision {where.revision} "
              f"(commit {where.commit[:10]}){', ' + where.pr_url if where.pr_url else ''}")


def print_table(ds, spec: ScoreSpec, limit: int, width: int = 44) -> None:
    """The first ``limit`` rows: the instruction, the scorer's main columns and its note."""
    from .formats import ColumnMapping, batch_to_examples

    columns = [c for c in TABLE_COLUMNS[spec.scorer] if c in ds.column_names]
    widths = [max(len(c), 10) for c in columns]
    note = NOTE_COLUMNS[spec.scorer]
    rows = ds.select(range(min(limit, len(ds))))
    mapping = ColumnMapping(**spec.columns) if spec.columns else None
    labels = [ex.instruction.replace("\n", " ")[:width] for ex in batch_to_examples(rows[:], mapping, turn=spec.turn)]
    print(f"{ROW_ID:>6}  {'instruction':<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(columns, widths))
          + "  note")
    for label, row in zip(labels, rows):
        cells = "  ".join(f"{row[c]:>{w}.4f}" if isinstance(row[c], float) else f"{row[c]:>{w}}"
                          for c, w in zip(columns, widths))
        print(f"{row[ROW_ID]!s:>6}  {label:<{width}}  {cells}  {row.get(note) or ''}")
    if len(ds) > limit:
        print(f"... {len(ds) - limit} more rows")


# -- subcommands -----------------------------------------------------------------------------------------
def cmd_score(args) -> None:
    from .pipeline import run_recipe

    refine = None if args.refine_k is None else RefineSpec(args.refine_k, args.refine_sample, args.refine_seed,
                                                           args.encoder)
    columns = _pairs(args.columns, "--columns") if args.columns else None
    recipe = Recipe(
        score=ScoreSpec(args.scorer, args.model, args.revision, args.convention, args.template, args.max_length,
                        args.min_response_tokens, args.dtype, args.device, args.token_budget, columns, args.turn,
                        args.task_set, args.task_max_length, refine,
                        compile=args.compile),
        input=InputSpec(args.input, args.split, args.streaming, args.limit),
        run=RunSpec(args.output, args.batch_size, args.part_rows, args.part_seconds, args.overwrite, args.engine,
                    args.actors, args.cpus_per_actor),
        show=args.show)
    run_recipe(recipe, fresh=args.fresh, on_step=print_step)


def cmd_taskset(args) -> None:
    from .tasksets import load_task_set, refine_task_set

    tasks = load_task_set(args.source, split=args.split, require_answers=args.refine_k is None)
    if args.refine_k is not None:
        tasks = load_task_set(refine_task_set(tasks, k=args.refine_k, sample=args.refine_sample, encoder=args.encoder,
                                              seed=args.refine_seed))  # the refined tasks all need answers
    save_rows(tasks, args.output)
    print(f"task set: {len(tasks)} rows ({', '.join(tasks.column_names)}), saved to {args.output}")


def cmd_select(args) -> None:
    from .pipeline import select_rows

    scored = load_rows(args.scored, what="scored dataset")
    rule = _select_rule(args)
    diversity = None if args.diversity is None else DiversitySpec(args.diversity, args.encoder)
    spec = SelectSpec(rule, diversity, args.output)
    _, report = select_rows(scored, spec)
    print_selection(spec, report)


def _select_rule(args):
    """The rule ``select``'s options name: by a score column, or a baseline (random, longest, length-matched)."""
    from .selection import SelectionRule, length_matched_random, longest, random_rows

    size = args.top_n if args.top_n is not None else args.top_fraction
    if args.tokenizer is not None and args.by != "tokens":
        raise ValueError("--tokenizer counts lengths for --by tokens only")
    tokenizer = None
    if args.by == "tokens":
        from .models import load_causal_lm

        tokenizer = load_causal_lm(args.tokenizer)[1]
    if args.rule == "length-matched":
        if args.reference is None or size is not None or args.threshold is not None:
            raise ValueError("--rule length-matched draws as many rows as --reference (a selection's rows) holds: "
                             "give --reference PATH and no --top-fraction, --top-n or --threshold")
        return length_matched_random(load_rows(args.reference, what="reference selection"), seed=args.seed,
                                     bins=args.bins, by=args.by, tokenizer=tokenizer)
    if args.reference is not None:
        raise ValueError(f"--reference applies to --rule length-matched only, not --rule {args.rule}")
    if args.rule == "score":
        if size is None and args.threshold is None:
            raise ValueError("give one of --top-fraction, --top-n or --threshold")
        return SelectionRule(column=args.column, top_fraction=args.top_fraction, top_n=args.top_n,
                             threshold=args.threshold, lowest=args.lowest, ifd_max=None if args.no_ifd_max else
                             args.ifd_max, ifd_max_inclusive=args.ifd_max_inclusive)
    if size is None:
        raise ValueError(f"--rule {args.rule} keeps --top-fraction F or --top-n N rows (--threshold applies to "
                         "--rule score only)")
    if args.rule == "random":
        return random_rows(size, seed=args.seed)
    return longest(size, by=args.by, tokenizer=tokenizer)


def cmd_card(args) -> None:
    from .publishing import write_card

    selected = load_rows(args.selected, what="selection") if args.selected else None
    path = write_card(load_rows(args.scored, what="scored dataset"), args.out, selected=selected,
                      provenance={"source": args.source or args.scored}, license=args.license)
    print(f"dataset card written to {path}")


def cmd_publish(args) -> None:
    from .pipeline import publish_rows

    target = PublishSpec(path=None if args.hub else args.target, hub=args.target if args.hub else None,
                         revision=args.revision, create_pr=args.create_pr, private=args.private, license=args.license,
                         allow_empty=args.allow_empty)
    scored = load_rows(args.scored, what="scored dataset") if args.scored else None
    facts = {"source": args.source or args.selected, "selection_rule_slug": args.rule}
    selected = load_rows(args.selected, what="selection")
    where = publish_rows(selected, target, scored=scored, provenance={k: v for k, v in facts.items() if v})
    print_publication(selected, where)


def cmd_report(args) -> None:
    from . import reports

    if args.kind == "compare":
        if len(args.inputs) != 2:
            raise ValueError(f"report compare takes two scored datasets (A B), got {len(args.inputs)}")
        names = tuple(args.names) if args.names else tuple(args.inputs)
        report = reports.compare(load_rows(args.inputs[0]), load_rows(args.inputs[1]), names=names, out_dir=args.out)
    else:
        named = {}
        for item in args.inputs:
            name, sep, path = item.partition("=")
            named[name if sep else Path(item).name] = load_rows(path if sep else item)
        report = reports.assess(named, out_dir=args.out, fraction=args.fraction, model=args.model)
    print(report.to_markdown())
    if args.out:
        print(f"\nreport written to {Path(args.out) / 'report.md'}")


def cmd_evaluate(args) -> None:
    from .evaluation import Encoding, TrainSettings
    from .pipeline import evaluate_arms

    arms = {name: load_rows(path, what=f"arm {name!r}") for name, path in map(_named, args.arms)}
    eval_sets = {name: load_rows(path, what=f"evaluation set {name!r}") for name, path in map(_named, args.eval)}
    lora = None if args.lora_r is None else {"r": args.lora_r, "alpha": args.lora_alpha}
    settings = TrainSettings(epochs=args.epochs, steps=args.steps, learning_rate=args.learning_rate,
                             batch_size=args.batch_size, gradient_accumulation=args.gradient_accumulation,
                             warmup=args.warmup, weight_decay=args.weight_decay, seed=args.seed, lora=lora)
    baselines = EvidenceBaselines(
        random=RandomArms(args.random_seeds) if args.random_seeds else None, longest={} if args.longest else None,
        length_matched=None if args.length_matched is None else LengthMatchedArm(args.length_matched or None))
    spec = EvaluateSpec(eval_sets={}, out=args.out, baselines=baselines, baseline=args.baseline, rows=args.rows,
                        tokens=args.tokens, equal_size=not args.unequal_sizes, train=settings,
                        eval_columns=_pairs(args.eval_columns, "--eval-columns") if args.eval_columns else None,
                        device=args.device, dtype=args.dtype, draws=args.draws)
    wants = args.random_seeds or args.longest or args.length_matched is not None
    if wants and not args.pool:
        raise ValueError("--random-seeds, --longest and --length-matched draw rows from --pool (the scored dataset)")
    if not arms and not wants:
        raise ValueError("no arms: give NAME=PATH selections, or baselines (--random-seeds, --longest) with --pool")
    pool = load_rows(args.pool, what="pool (scored dataset)") if args.pool else None
    given = dict(template=args.template, max_length=args.max_length, min_response_tokens=args.min_response_tokens)
    encoding = Encoding(**{k: v for k, v in given.items() if v is not None})
    evidence = evaluate_arms(spec, arms, eval_sets, pool=pool, encoding=encoding, base_model=args.base_model,
                             mapping=_pairs(args.columns, "--columns") if args.columns else None, turn=args.turn)
    print_evidence(evidence)


def cmd_run(args) -> None:
    recipe = load_recipe(args.recipe)
    if args.check:
        print(f"{args.recipe}: valid ({recipe.score.scorer} scorer, model {recipe.score.model or 'default'}, "
              f"{len(recipe.select)} selection(s))")
        return
    from .pipeline import run_recipe
    from .runner import process_state

    if recipe.description and process_state().is_main_process:
        print(recipe.description)
    run_recipe(recipe, fresh=args.fresh, overwrite=args.overwrite, recipe_file=str(args.recipe), on_step=print_step)


# -- the parser ------------------------------------------------------------------------------------------
def _pairs(text: str, option: str) -> dict[str, str]:
    pairs = [item.partition("=") for item in text.split(",")]
    bad = [key for key, sep, value in pairs if not (sep and key and value)]
    if bad:
        raise ValueError(f"{option} takes KEY=COLUMN pairs separated by commas (e.g. instruction=question,"
                         f"response=answer), got {text!r}")
    return {key.strip(): value.strip() for key, _, value in pairs}


def _named(item: str) -> tuple[str, str]:
    """``NAME=PATH`` as (name, path); a bare path is named by its file name (without a suffix)."""
    name, sep, path = item.partition("=")
    return (name, path) if sep and name else (Path(item).stem, item)


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"expected seeds as integers >= 0 separated by commas (e.g. 0,1,2), "
                                         f"got {text!r}")
    return seeds


def _count_or_fraction(text: str) -> int | float:
    """``--diversity``: a row count (an integer >= 1) or a fraction of the rows (a number in (0, 1))."""
    try:
        value = float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        value = None
    if value is None or (isinstance(value, int) and value < 1) or (isinstance(value, float) and not 0 < value < 1):
        raise argparse.ArgumentTypeError(f"expected a row count (e.g. 500) or a fraction of the rows in (0, 1) "
                                         f"(e.g. 0.02), got {text!r}")
    return value


def _add_refine(p) -> None:
    p.add_argument("--refine-k", type=int, help="refine the task set to K tasks (SuperNUGGETS), e.g. 100")
    p.add_argument("--refine-sample", type=int, default=1000, help="rows sampled before clustering (default 1000)")
    p.add_argument("--refine-seed", type=int, default=0, help="seed of the sample and k-means (default 0)")
    p.add_argument("--encoder", help="sentence encoder name or path (default: the embedded all-MiniLM-L6-v2)")


def _train_defaults():
    from .evaluation.training import TrainSettings  # cheap: no torch, no datasets

    return TrainSettings()


def _recipe_sections() -> str:
    """The sections of a recipe, as :mod:`hf_prospector.recipes` documents them (for ``run --help``)."""
    from . import recipes

    doc = recipes.__doc__ or ""  # None under python -OO
    return textwrap.dedent(doc.split("::\n\n", 1)[-1].split("\n\n", 1)[0]) if "::\n\n" in doc else ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-prospector", description="Find the instruction-tuning rows worth "
                                     "training on, with a small language model.",
                                     epilog="example:\n  hf-prospector run recipes/quickstart.yaml\n"
                                            "  hf-prospector score --help",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="on an error, show the full traceback (also: HF_PROSPECTOR_DEBUG=1)")

    def command(name: str, help: str, examples: str, more: str = ""):
        return sub.add_parser(name, help=help, description=help, parents=[common],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=(more + "\n\n" if more else "") + "examples:\n" + textwrap.indent(examples, "  "))

    p = command("score", "add IFD or golden-score columns (resumable; torchrun/accelerate aware, or on Ray)",
                "hf-prospector score data.jsonl --model smollm2-135m --output out/scored\n"
                "hf-prospector score tatsu-lab/alpaca --limit 1000 --convention superfiltering --model gpt2\n"
                "hf-prospector score data.jsonl --scorer gold --task-set tasks.json --output out/gold\n"
                "RAY_ADDRESS=auto hf-prospector score data.jsonl --engine ray --output /shared/scored  # on a cluster node")
    p.add_argument("input", nargs="?", default="demo",
                   help="Hub id, json/jsonl/parquet/csv file, saved dataset, 'demo' or 'demo-chat' (default: demo)")
    p.add_argument("--scorer", choices=("ifd", "gold"), default="ifd",
                   help="ifd: instruction-following difficulty; gold: NUGGETS' golden score (default ifd)")
    p.add_argument("--model", help="embedded name (default smollm2-135m), .gguf file, local folder or Hub id")
    p.add_argument("--revision", help="model revision on the Hub (branch, tag or commit)")
    p.add_argument("--convention", help="ifd: exact (default), superfiltering, cherry; gold: exact, nuggets")
    p.add_argument("--template", help="plain, alpaca or chat (default: the convention's)")
    p.add_argument("--max-length", type=int, help="tokens per row, prompt and response (default: the convention's)")
    p.add_argument("--min-response-tokens", type=int,
                   help="ifd: response tokens a cut row must keep to be scored (default: the convention's)")
    p.add_argument("--dtype", default="auto", help="auto (bfloat16 where native), float32, bfloat16, float16")
    p.add_argument("--device", help="e.g. cpu or cuda:1 (default: one GPU per process, else the CPU)")
    p.add_argument("--token-budget", type=int, help="tokens per micro-batch (default: sized to the device)")
    p.add_argument("--compile", choices=("auto", "on", "off"),
                   help="torch.compile the model: auto (default) compiles after a minute of model time")
    p.add_argument("--columns", help="row layout, e.g. instruction=question,response=answer (default: detected)")
    p.add_argument("--turn", choices=TURNS, default="last",
                   help="chat rows: score the last (default), the first or every assistant turn (ifd only)")
    p.add_argument("--task-set", help="gold: a file, saved dataset or Hub id of tasks")
    p.add_argument("--task-max-length", type=int, help="gold: tokens per task (default: the convention's)")
    _add_refine(p)
    p.add_argument("--split", default="train", help="the input's split (default train)")
    p.add_argument("--streaming", action="store_true", help="read the input as a stream (larger than memory)")
    p.add_argument("--limit", type=int, help="score only the first N rows")
    p.add_argument("--output", default="prospector_out/scored",
                   help="saved-dataset folder or .parquet file (default prospector_out/scored)")
    p.add_argument("--batch-size", type=int, default=RUN_DEFAULTS.batch_size,
                   help=f"rows per scorer call (default {RUN_DEFAULTS.batch_size})")
    p.add_argument("--part-rows", type=int, default=RUN_DEFAULTS.part_rows,
                   help=f"rows per saved part (block) (default {RUN_DEFAULTS.part_rows})")
    p.add_argument("--part-seconds", type=float, default=RUN_DEFAULTS.part_seconds,
                   help=f"save finished rows at least this often (default {RUN_DEFAULTS.part_seconds:g})")
    p.add_argument("--fresh", action="store_true", help="discard the saved parts of an earlier run")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --output that a run here did not write (refused otherwise)")
    p.add_argument("--engine", choices=ENGINES, default=RUN_DEFAULTS.engine,
                   help="local: this process, or each of a torchrun launch (default); ray: actors of the Ray "
                        "cluster at RAY_ADDRESS, else a local one (pip install 'hf_prospector[ray]')")
    p.add_argument("--actors", type=int, help="ray: scorer actors (default: one per GPU, else one per "
                                              "--cpus-per-actor CPUs)")
    p.add_argument("--cpus-per-actor", type=int, default=RUN_DEFAULTS.cpus_per_actor,
                   help=f"ray, on CPUs: CPUs per actor (default {RUN_DEFAULTS.cpus_per_actor})")
    p.add_argument("--show", type=int, default=10, help="rows of the score table to print (0: none; default 10)")
    p.set_defaults(func=cmd_score)

    p = command("taskset", "load a task set for the golden score, optionally refined (SuperNUGGETS)",
                "hf-prospector taskset task_set_kmeans_100.json --output out/tasks.parquet\n"
                "hf-prospector taskset tatsu-lab/alpaca --refine-k 100 --output out/tasks")
    p.add_argument("source", help="file, saved dataset or Hub id of tasks")
    p.add_argument("--split", default="train", help="the source's split (default train)")
    p.add_argument("--output", required=True, help="saved-dataset folder or .parquet file")
    _add_refine(p)
    p.set_defaults(func=cmd_taskset)

    p = command("select", "keep rows by a score column (top fraction, top n or threshold; then diversity)",
                "hf-prospector select out/scored --top-fraction 0.05 --output out/top5.parquet\n"
                "hf-prospector select out/scored --top-fraction 0.2 --diversity 0.02 --output out/diverse\n"
                "hf-prospector select out/gold --column gold_score --threshold 0.85 --output out/nuggets\n"
                "hf-prospector select out/scored --rule random --top-n 500 --seed 1 --output out/random1\n"
                "hf-prospector select out/scored --rule length-matched --reference out/top5.parquet --output out/lm")
    p.add_argument("scored", help="a scored dataset (folder, .parquet, ...)")
    p.add_argument("--rule", choices=("score", "random", "longest", "length-matched"), default="score",
                   help="score: by --column (default); random: rows at random (--seed); longest: the longest "
                        "responses; length-matched: random rows whose response lengths follow --reference's")
    p.add_argument("--column", default="ifd", help="the score column to rank by (default ifd)")
    p.add_argument("--seed", type=int, default=0, help="random, length-matched: the seed (default 0)")
    p.add_argument("--reference", help="length-matched: the selection (rows) whose lengths to match")
    p.add_argument("--bins", type=int, default=10, help="length-matched: quantile bins of length (default 10: deciles)")
    p.add_argument("--by", choices=("auto", "n_response_tokens", "tokens", "words"), default="auto",
                   help="longest, length-matched: count response length by the scorer's n_response_tokens, "
                        "tokens of --tokenizer, or words (default auto: n_response_tokens when present)")
    p.add_argument("--tokenizer", help="--by tokens: the model whose tokenizer counts (default smollm2-135m)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--top-fraction", type=float, help="e.g. 0.05: the top 5%% of eligible rows")
    which.add_argument("--top-n", type=int, help="the N best eligible rows")
    which.add_argument("--threshold", type=float, help="keep rows with score > T (< T with --lowest)")
    p.add_argument("--lowest", action="store_true", help="keep the lowest scores instead")
    p.add_argument("--ifd-max", type=float, default=1.0, help="IFD columns: only rows below this (default 1)")
    p.add_argument("--ifd-max-inclusive", action="store_true", help="IFD columns: keep IFD == ifd-max too (Cherry)")
    p.add_argument("--no-ifd-max", action="store_true", help="IFD columns: no upper bound")
    p.add_argument("--diversity", type=_count_or_fraction,
                   help="then facility location to K rows (an integer) or a fraction of all rows (e.g. 0.02)")
    p.add_argument("--encoder", help="sentence encoder for --diversity (default: embedded all-MiniLM-L6-v2)")
    p.add_argument("--output", required=True, help="saved-dataset folder or .parquet file")
    p.set_defaults(func=cmd_select)

    p = command("card", "write a dataset card (README.md + figures/) for scored rows",
                "hf-prospector card out/scored --selected out/top5.parquet --out out/card --source tatsu-lab/alpaca")
    p.add_argument("scored", help="the scored dataset (all rows)")
    p.add_argument("--selected", help="the selected rows, to compare with all rows")
    p.add_argument("--out", required=True, help="folder for README.md and figures/")
    p.add_argument("--source", help="how the card names the source data (default: the scored path)")
    p.add_argument("--license", help="the card's license, e.g. cc-by-nc-4.0")
    p.set_defaults(func=cmd_card)

    p = command("publish", "publish selected rows with a card: a local git repository or the Hub",
                "hf-prospector publish out/top5.parquet out/repo --scored out/scored --rule ifd-top5pct\n"
                "hf-prospector publish out/top5.parquet me/alpaca-top5 --hub --scored out/scored --create-pr",
                "A selection with 0 rows is refused unless --allow-empty. Publishing what a revision already\n"
                "holds makes no commit. The Hub token comes from HF_TOKEN or `hf auth login`.")
    p.add_argument("selected", help="the selected rows")
    p.add_argument("target", help="a local folder (new, empty, or a repository published to before), "
                                  "or a Hub dataset repo id with --hub")
    p.add_argument("--hub", action="store_true", help="TARGET is a Hub repo id")
    p.add_argument("--scored", help="all scored rows, for the card's statistics")
    p.add_argument("--revision", help="branch (default: select-<rule>, or a timestamp)")
    p.add_argument("--rule", help="the selection's slug, e.g. ifd-top5pct (names the default revision)")
    p.add_argument("--source", help="how the card names the source data (default: the selected path)")
    p.add_argument("--create-pr", action="store_true", help="Hub: open a pull request")
    p.add_argument("--private", action="store_true", default=None, help="Hub: create the repo private")
    p.add_argument("--license", help="the card's license, e.g. cc-by-nc-4.0 (default: the source's on the Hub)")
    p.add_argument("--allow-empty", action="store_true", help="publish even when the selection has no rows")
    p.set_defaults(func=cmd_publish)

    p = command("report", "compare two scorings of the same rows, or assess scored datasets side by side",
                "hf-prospector report compare out/small out/large --names smollm2 gpt2 --out out/cmp\n"
                "hf-prospector report assess alpaca=out/alpaca dolly=out/dolly --fraction 0.05 --out out/assess")
    p.add_argument("kind", choices=("compare", "assess"), help="compare: two scorings; assess: datasets")
    p.add_argument("inputs", nargs="+", help="compare: A B; assess: NAME=PATH ...")
    p.add_argument("--names", nargs=2, help="compare: labels for A and B (default: the paths)")
    p.add_argument("--fraction", type=float, default=0.05, help="assess: the top/bottom fraction (default 0.05)")
    p.add_argument("--model", help="assess: the model that scored the rows, to show the rows in languages it does "
                   "not cover")
    p.add_argument("--out", help="folder for report.md and figures (default: print only)")
    p.set_defaults(func=cmd_report)

    p = command("evaluate", "fine-tune the base model on each arm, compare eval loss with confidence intervals",
                "hf-prospector evaluate ifd=out/top5.parquet --pool out/scored --random-seeds 0,1,2 --longest \\\n"
                "    --length-matched ifd --eval held_out=gpt4.json --rows 500 --out out/evidence\n"
                "hf-prospector evaluate a=out/a b=out/b random=out/random --eval eval.jsonl --steps 200 --out out/ev",
                "Each arm trains a fresh copy of --base-model with the same settings (TRL's SFTTrainer, loss on the\n"
                "response only); arms already trained with these settings are reused from --out. Needs\n"
                "pip install 'hf_prospector[evidence]'.")
    p.add_argument("arms", nargs="*", help="NAME=PATH of each selection to train on (a bare PATH is named by its file)")
    p.add_argument("--eval", action="append", required=True,
                   help="NAME=PATH of an evaluation set of (instruction, reference response) rows; repeatable")
    p.add_argument("--out", required=True, help="folder for report.md, evidence.json, evidence.png and the arms")
    p.add_argument("--pool", help="the scored dataset the baseline arms are drawn from")
    p.add_argument("--random-seeds", type=_seeds, help="random arms, one per seed (e.g. 0,1,2), named random-<seed>")
    p.add_argument("--longest", action="store_true", help="a longest-responses arm, named longest")
    p.add_argument("--length-matched", nargs="?", const="", metavar="ARM",
                   help="a random arm length-matched to ARM (default: the first arm), named length-matched "
                        "(put it after the arms)")
    p.add_argument("--baseline", default="random", help="the arm(s) each arm is compared with (default random: "
                                                        "the arms named random or random-<seed>)")
    p.add_argument("--base-model", help="the model fine-tuned (default smollm2-135m); .gguf file, folder or Hub id")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--rows", type=int, help="every arm trains on its first N rows")
    budget.add_argument("--tokens", type=int, help="every arm trains on its first rows holding N response tokens")
    p.add_argument("--unequal-sizes", action="store_true", help="allow arms of different sizes (no --rows/--tokens)")
    defaults = _train_defaults()
    p.add_argument("--epochs", type=float, default=defaults.epochs, help=f"default {defaults.epochs:g}")
    p.add_argument("--steps", type=int, help="optimizer steps per arm (overrides --epochs)")
    p.add_argument("--learning-rate", type=float, default=defaults.learning_rate,
                   help=f"default {defaults.learning_rate:g}")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help=f"default {defaults.batch_size}")
    p.add_argument("--gradient-accumulation", type=int, default=defaults.gradient_accumulation,
                   help=f"default {defaults.gradient_accumulation}")
    p.add_argument("--warmup", type=float, default=defaults.warmup, help="a fraction of the steps below 1, else steps")
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay,
                   help=f"default {defaults.weight_decay:g}")
    p.add_argument("--seed", type=int, default=defaults.seed, help="training seed, the same for every arm (default 0)")
    p.add_argument("--lora-r", type=int, help="train LoRA adapters of this rank (peft) instead of every weight")
    p.add_argument("--lora-alpha", type=int, default=32, help="LoRA alpha (default 32)")
    p.add_argument("--template", help="prompt template: plain (default), alpaca or chat, as the scorer used")
    p.add_argument("--max-length", type=int, help="tokens per row (default 1024)")
    p.add_argument("--min-response-tokens", type=int, help="response tokens a cut row must keep (default 16)")
    p.add_argument("--columns", help="the arms' row layout, e.g. instruction=question,response=answer")
    p.add_argument("--eval-columns", help="the evaluation sets' row layout, e.g. instruction=prompt,response=answer")
    p.add_argument("--turn", choices=("last", "first"), default="last", help="chat rows: the turn trained on")
    p.add_argument("--device", help="e.g. cpu or cuda:0 (default: a GPU when there is one)")
    p.add_argument("--dtype", default="float32", help="evaluation dtype (default float32)")
    p.add_argument("--draws", type=int, default=10000, help="bootstrap resamples (default 10000)")
    p.set_defaults(func=cmd_evaluate)

    p = command("run", "run a YAML recipe: score, select, publish",
                "hf-prospector run recipes/quickstart.yaml --check\n"
                "hf-prospector run recipes/quickstart.yaml\n"
                "torchrun --nproc_per_node 4 -m hf_prospector run recipes/superfiltering.yaml",
                "A recipe has these sections; only score is required (see hf_prospector.recipes):\n\n"
                + textwrap.indent(_recipe_sections(), "  "))
    p.add_argument("recipe", help="the recipe file, e.g. recipes/quickstart.yaml")
    p.add_argument("--check", action="store_true",
                   help="validate the recipe (keys, values, local paths) and exit; loads no model")
    p.add_argument("--fresh", action="store_true", help="discard the saved parts of an earlier run")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run.output that a run here did not write (refused otherwise)")
    p.set_defaults(func=cmd_run)
    return parser


def error_line(err: BaseException) -> str:
    """``err`` as one line: its message; the type's name first unless it is a bad input or setting, or one of
    this library's errors (whose messages say what to do)."""
    message = err.args[0] if isinstance(err, KeyError) and err.args else err  # KeyError's str() adds quotes
    text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    ours = type(err).__module__.startswith("hf_prospector")  # GitError, RunMismatchError, the model loader's, ...
    if text and (ours or isinstance(err, (ValueError, OSError, KeyError))):
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; any error is one line on stderr (exit 2), Ctrl-C one line (exit 130)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("HF_PROSPECTOR_DEBUG", "") not in ("", "0")
    try:
        args.func(args)
    except KeyboardInterrupt as err:  # RunInterrupted says how many rows are saved and how to resume
        if debug:
            traceback.print_exc()
        print(str(err) or f"hf-prospector {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            traceback.print_exc()
        print(f"hf-prospector {args.command}: error: {error_line(err)}", file=sys.stderr)
        if not debug:
            print("(--debug shows the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
