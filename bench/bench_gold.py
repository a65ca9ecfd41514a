"""Benchmark: golden scores with ``GoldScorer`` against the NUGGETS procedure as its script runs it.

The baseline is pldlgb/nuggets ``instruction_main.py`` with ``--kv_iter 1`` (bench/reference.py): a
zero-shot pass over the tasks, then one candidate at a time, its key/value cache reused over batches of
``--task-batch`` tasks right-padded to 200 tokens, full logits, float32. The candidate is
``ds.map(GoldScorer(task_set=...), batched=True)`` with the library's defaults. Same model
(SmolLM2-135M), the first ``--candidates`` rows of ``--candidates-file`` (default: alpaca_gpt4_9k.json,
NUGGETS' own candidate pool) against the first ``--tasks`` tasks of task_set_kmeans_100.json; one
process, alternating, ``--rounds`` rounds, median reported. Both sides compute their zero-shot pass in
every round (the library's zero-shot cache is pointed at an empty folder for each timed run).

Agreement of ``gold_score``: ``GoldScorer(convention="nuggets", dtype="float32")`` against the procedure
(target |diff| < 1e-4), and the defaults against ``GoldScorer(dtype="float32")`` (target mean |diff| <= 0.02).

    python bench/bench_gold.py                                    # 30 candidates x 100 tasks, 3 rounds
    python bench/bench_gold.py --candidates 2 --tasks 8 --rounds 1   # a smoke run

``--skip-agreement`` leaves out the three untimed agreement runs (two of them float32), which on 30
candidates take longer than the timed rounds.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

import harness
from reference import nuggets_golden_scores

TARGET_RATIO = 3.0
TARGET_FLOAT32 = 1e-4
TARGET_DEFAULT = 0.02


def score(scorer, ds, batch_size: int):
    """``ds.map(scorer, batched=True)`` with an empty zero-shot cache, so the zero-shot pass runs too."""
    previous = os.environ.get("HF_PROSPECTOR_CACHE")
    with tempfile.TemporaryDirectory() as folder:
        os.environ["HF_PROSPECTOR_CACHE"] = folder  # the model is loaded already: only zero-shot goes here
        scorer._per_engine.clear()  # and its in-memory copy (with the encoded tasks)
        try:
            return ds.map(scorer, batched=True, batch_size=batch_size, load_from_cache_file=False,
                          keep_in_memory=True)
        finally:
            if previous is None:
                del os.environ["HF_PROSPECTOR_CACHE"]
            else:
                os.environ["HF_PROSPECTOR_CACHE"] = previous


def agreement(runs, gold_scorer, ds, batch_size: int) -> list[list]:
    """Rows of the agreement table, from untimed runs: float32 ``nuggets`` and bfloat16 ``nuggets`` against the
    procedure's last round, and the defaults' last round against ``exact`` in float32."""
    reference = runs["reference"][-1].result
    default = np.array(runs["candidate"][-1].result["gold_score"], dtype=float)
    nuggets32 = np.array(score(gold_scorer(convention="nuggets", dtype="float32"), ds, batch_size)["gold_score"])
    nuggets = np.array(score(gold_scorer(convention="nuggets"), ds, batch_size)["gold_score"])
    exact32 = np.array(score(gold_scorer(dtype="float32"), ds, batch_size)["gold_score"])
    table = []
    for name, a, b, target in [
        ('GoldScorer(convention="nuggets", dtype="float32") vs procedure', nuggets32, reference,
         f"max < {TARGET_FLOAT32:g}"),
        ('GoldScorer(convention="nuggets") vs procedure', nuggets, reference, ""),
        ('GoldScorer() vs GoldScorer(dtype="float32")', default, exact32, f"mean <= {TARGET_DEFAULT:g}"),
    ]:
        d = np.abs(a - b)
        table.append([name, len(d), f"{d.max():.2e}", f"{d.mean():.4f}", target])
    return table


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--candidates", type=int, default=30, help="first rows of the candidates file")
    parser.add_argument("--tasks", type=int, default=100, help="first tasks of the task set")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    parser.add_argument("--task-batch", type=int, default=10, help="NUGGETS --batch_size (tasks per forward pass)")
    parser.add_argument("--batch-size", type=int, default=1000, help="ds.map batch size (datasets' default)")
    parser.add_argument("--candidates-file", default="alpaca_gpt4_9k.json", help="a json file in ../shared/data")
    parser.add_argument("--task-set", default="task_set_kmeans_100.json", help="a json file in ../shared/data")
    parser.add_argument("--skip-agreement", action="store_true", help="time only; no agreement runs")
    args = parser.parse_args()

    from hf_prospector.models import load_causal_lm
    from hf_prospector.scorers import GoldScorer

    harness.print_header(f"golden score: NUGGETS procedure vs GoldScorer(), {args.candidates} candidates of "
                         f"{args.candidates_file} x {args.tasks} tasks of {args.task_set}", args)
    load_start = harness.report_load("start")
    ds = harness.first_rows(args.candidates_file, args.candidates)
    tasks_ds = harness.first_rows(args.task_set, args.tasks)
    candidates, tasks = ds.to_list(), tasks_ds.to_list()

    ref_model, tokenizer = load_causal_lm(None)  # float32 weights for the procedure

    def gold_scorer(**kwargs):
        scorer = GoldScorer(task_set=tasks_ds, **kwargs)
        scorer.engine()  # load the model now, outside any timing and under the usual cache folder
        return scorer

    candidate = gold_scorer()
    # One-time set-up (thread pools, kernel selection) is not what either side is measured on.
    nuggets_golden_scores(ref_model, tokenizer, candidates[:1], tasks[:2], args.task_batch)
    score(candidate, ds.select(range(1)), args.batch_size)

    runs = harness.interleave({
        "reference": lambda: nuggets_golden_scores(ref_model, tokenizer, candidates, tasks, args.task_batch),
        "candidate": lambda: score(candidate, ds, args.batch_size),
    }, args.rounds)

    dtype = harness.dtype_name(candidate.engine().dtype)
    labels = {"reference": f"NUGGETS procedure (float32, 1 candidate at a time, {args.task_batch} tasks per pass)",
              "candidate": f"GoldScorer() defaults ({candidate.convention}, {dtype})"}
    results, speed = {}, []
    for name, measurements in runs.items():
        seconds = harness.median_seconds(measurements)
        m = harness.median_run(measurements)
        results[name] = {"seconds": seconds, "cpu_seconds": harness.median_cpu_seconds(measurements),
                         "candidates_per_s": len(candidates) / seconds, "peak_rss_mb": m.peak_rss,
                         "working_mb": m.working_mb, "all_seconds": [x.seconds for x in measurements]}
        speed.append([labels[name], f"{seconds:.1f}", f"{len(candidates) / seconds:.3f}", f"{m.peak_rss:.0f}",
                      f"{m.working_mb:.0f}"])
    ratio = results["reference"]["seconds"] / results["candidate"]["seconds"]
    cpu_ratio = results["reference"]["cpu_seconds"] / results["candidate"]["cpu_seconds"]
    speed.append([f"speed ratio (target >= {TARGET_RATIO:g}x)", f"{ratio:.2f}x", "", "", ""])
    speed.append(["CPU-time ratio", f"{cpu_ratio:.2f}x", "", "", ""])

    table = [] if args.skip_agreement else agreement(runs, gold_scorer, ds, args.batch_size)
    print()
    speed_text = harness.print_table(["method", "seconds", "candidates/s", "peak RSS MB", "working MB"], speed)
    print()
    if table:
        agreement_text = harness.print_table(["agreement (gold_score)", "candidates", "max |diff|", "mean |diff|",
                                              "target"], table)
    else:
        agreement_text = "agreement: skipped (--skip-agreement)"
        print(agreement_text)
    load_end = harness.report_end_load()
    harness.save_results("bench_gold", {"candidates": len(candidates), "tasks": len(tasks), "rounds": args.rounds,
                                        "load_average": [load_start, load_end], "results": results,
                                        "speed_ratio": ratio, "cpu_time_ratio": cpu_ratio, "agreement": table,
                                        "tables": [speed_text, agreement_text]})


if __name__ == "__main__":
    main()
