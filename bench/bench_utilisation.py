"""Benchmark: the model FLOP/s ``IFDScorer`` achieves, against a matrix multiply's in the same run.

Model FLOPs are counted as the issue defines them (bench/harness.py): ``2 x non-embedding parameters x
tokens run through the model`` (padded positions the backbone processes) ``+ 2 x vocabulary x hidden
size x positions projected`` (the positions whose logits are computed). Hooks on the model count both
as it runs. The attainable rate is a 2048 x 2048 x 2048 matrix multiply in the same dtype, measured in
the same rounds. ``IFDScorer`` runs in float32 and bfloat16 on the first ``--rows`` rows of
``../shared/data/alpaca_52k.json`` as ``ds.map(scorer, batched=True)``, so its time includes
tokenization; the Superfiltering per-row loop (bench/reference.py) is shown for comparison. By default
the scorers are compiled from the start (``--compile on``), which measures what a long run reaches.
Everything alternates in one process for ``--rounds`` rounds; medians are reported.

    python bench/bench_utilisation.py                        # 300 rows, 3 rounds
    python bench/bench_utilisation.py --rows 16 --rounds 1   # a smoke run
"""

from __future__ import annotations

import statistics

import torch

import harness
from reference import superfiltering_losses

TARGET_BF16 = 0.60


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--rows", type=int, default=300, help="first rows of the data file")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    parser.add_argument("--batch-size", type=int, default=1000, help="ds.map batch size (datasets' default)")
    parser.add_argument("--data", default="alpaca_52k.json", help="a json file in ../shared/data")
    parser.add_argument("--skip-reference", action="store_true", help="leave out the per-row loop (slow)")
    parser.add_argument("--compile", choices=("on", "auto", "off"), default="on",
                        help="IFDScorer(compile=...): on (default) measures a long run's steady state; auto "
                             "compiles after a minute of model time, as a run with the defaults does")
    args = parser.parse_args()

    from hf_prospector.models import load_causal_lm
    from hf_prospector.scorers import IFDScorer

    harness.print_header(f"utilisation: model FLOP/s of IFDScorer vs 2048^3 matmul, first {args.rows} rows of "
                         f"{args.data}", args)
    load_start = harness.report_load("start")
    ds = harness.first_rows(args.data, args.rows)
    warm = ds.select(range(min(2, len(ds))))

    def scored(scorer, counter, data):
        counter.reset()
        data.map(scorer, batched=True, batch_size=args.batch_size, load_from_cache_file=False, keep_in_memory=True)
        return counter.tokens, counter.real_tokens, counter.projected, counter.flops

    runs, counters, engines = {}, {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        name = harness.dtype_name(dtype)
        scorer = IFDScorer(dtype=name, compile=args.compile)
        engines[f"IFDScorer {name}"] = scorer.engine()
        counters[name] = harness.FlopCounter(engines[f"IFDScorer {name}"].model)
        scored(scorer, counters[name], warm)  # one-time set-up is not measured
        runs[f"matmul {name}"] = lambda dtype=dtype: harness.matmul_flops_per_s(dtype)
        runs[f"IFDScorer {name}"] = lambda s=scorer, c=counters[name]: scored(s, c, ds)
    if not args.skip_reference:
        ref_model, tokenizer = load_causal_lm(None)
        ref_counter = harness.FlopCounter(ref_model)
        rows = ds.to_list()
        superfiltering_losses(ref_model, tokenizer, rows[:2])

        def reference():
            ref_counter.reset()
            superfiltering_losses(ref_model, tokenizer, rows)
            return ref_counter.tokens, ref_counter.real_tokens, ref_counter.projected, ref_counter.flops
        runs["Superfiltering loop float32"] = reference

    measured = harness.interleave(runs, args.rounds)
    matmul = {name: statistics.median(m.result for m in measured[f"matmul {name}"])
              for name in ("float32", "bfloat16")}
    table, results = [], {"matmul_gflop_per_s": {k: v / 1e9 for k, v in matmul.items()}}
    for name in ("float32", "bfloat16"):
        table.append([f"matmul 2048^3 {name}", f"{matmul[name] / 1e9:.0f}", "100%",
                      f"{matmul[name] / matmul['bfloat16']:.0%}", "", "", "", ""])
    for label in [k for k in runs if not k.startswith("matmul")]:
        dtype = "float32" if label.endswith("float32") else "bfloat16"
        seconds = harness.median_seconds(measured[label])
        tokens, real, projected, flops = measured[label][-1].result
        rate = flops / seconds
        results[label] = {"seconds": seconds, "gflop_per_s": rate / 1e9, "tokens": tokens, "real_tokens": real,
                          "projected": projected,
                          "of_matmul_same_dtype": rate / matmul[dtype], "of_matmul_bfloat16": rate / matmul["bfloat16"]}
        compiled = label in engines and engines[label].compiled  # compile="auto": after a minute of model time
        results[label]["compiled"] = compiled
        table.append([label + (" (compiled)" if compiled else ""), f"{rate / 1e9:.0f}", f"{rate / matmul[dtype]:.0%}",
                      f"{rate / matmul['bfloat16']:.0%}",
                      f"{tokens:,}", f"{1 - real / tokens:.0%}", f"{projected:,}", f"{seconds:.1f}"])
    print()
    text = harness.print_table(["what", "GFLOP/s", "of matmul, same dtype", "of bfloat16 matmul", "tokens run",
                                "of which padding", "positions projected", "seconds"], table)
    print(f"# target: IFDScorer bfloat16 >= {TARGET_BF16:.0%} of the bfloat16 matmul's FLOP/s")
    load_end = harness.report_end_load()
    harness.save_results("bench_utilisation", {"rows": len(ds), "rounds": args.rounds,
                                               "load_average": [load_start, load_end], "results": results,
                                               "tables": [text]})


if __name__ == "__main__":
    main()
