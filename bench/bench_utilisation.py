"""Benchmark: the model FLOP/s ``IFDScorer`` achieves, against a matrix multiply's in the same run.

Model FLOPs are counted as the issue defines them (bench/harness.py): ``2 x non-embedding parameters x
tokens run through the model`` (padded positions the backbone processes) ``+ 2 x vocabulary x hidden
size x positions projected`` (the positions whose logits are computed). Hooks on the model count both
as it runs. The attainable rate is a 2048 x 2048 x 2048 matrix multiply in the same dtype, sampled while
the model runs (:class:`InStepMatmul`), so both meet the same load on a shared machine. ``IFDScorer`` runs
in float32 and bfloat16 on the first ``--rows`` rows of ``../shared/data/alpaca_52k.json`` as
``ds.map(scorer, batched=True)`` with datasets' batch of 1,000 rows (smaller batches leave the engine's
micro-batches part-empty: 600 rows ran at 360 GFLOP/s in batches of 600 and at 305 in batches of 50), so
its time includes tokenization; the Superfiltering per-row loop (bench/reference.py) is shown for
comparison. By default the scorers are compiled from the start (``--compile on``), which measures what a
long run reaches. Everything alternates in one process for ``--rounds`` rounds; the median round is reported.

    python bench/bench_utilisation.py                        # 1,000 rows, 3 rounds (about 20 minutes)
    python bench/bench_utilisation.py --rows 16 --rounds 1   # a smoke run
    python bench/bench_utilisation.py --dtypes float32 --token-budgets 1024,2048,4096 --head-chunks 128,256,512 \
        --eager --skip-reference                             # tune a dtype's CPU settings; eager vs compiled

With ``--token-budgets``/``--head-chunks`` each combination is a run of its own on the dtype's one engine (the
settings are the engine's ``token_budget`` and ``head_positions``); ``--eager`` adds an uncompiled engine per dtype,
whose time against the compiled one's gives ``COMPILED_SAVING`` (hf_prospector/engine/compilation.py).
"""

from __future__ import annotations

import time

import torch

import harness
from reference import superfiltering_losses

TARGET_BF16 = 0.60


class InStepMatmul:
    """The 2048^3 matrix multiply's rate, sampled while a model runs.

    A forward pre-hook on the model's backbone runs ``seconds`` of matrix products in ``dtype`` whenever
    ``every`` seconds have passed since the last sample (and at the first pass). The load on a shared
    machine changes from second to second: beside 0.25 s matmuls taken between runs, one engine at one
    setting read 58%, 67% and 45% in three rounds. ``hook_seconds`` (the samples with their set-up) is
    taken off the model's time.
    """

    def __init__(self, model, dtype, seconds: float, every: float):
        self.dtype, self.sample_seconds, self.every = dtype, seconds, every
        self.reset()
        model.base_model.register_forward_pre_hook(torch.compiler.disable(self._maybe_sample))

    def reset(self) -> None:
        self.flops = self.seconds = self.hook_seconds = 0.0
        self._last = float("-inf")

    def _maybe_sample(self, module, args) -> None:
        start = time.perf_counter()
        if start - self._last < self.every:
            return
        flops, seconds = harness.matmul_sample(self.dtype, self.sample_seconds)
        self.flops += flops
        self.seconds += seconds
        self._last = time.perf_counter()
        self.hook_seconds += self._last - start


def measured(score, counter: harness.FlopCounter, sampler: InStepMatmul) -> dict:
    """Run ``score()`` and return the model's and the in-step matmul's rates, and the counts."""
    counter.reset()
    sampler.reset()
    start = time.perf_counter()
    score()
    model_seconds = time.perf_counter() - start - sampler.hook_seconds
    rate, matmul = counter.flops / model_seconds, sampler.flops / sampler.seconds
    return dict(model_seconds=model_seconds, gflop_per_s=rate / 1e9, matmul_gflop_per_s=matmul / 1e9,
                of_matmul=rate / matmul, tokens=counter.tokens, real_tokens=counter.real_tokens,
                projected=counter.projected)


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--rows", type=int, default=1000, help="first rows of the data file")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    parser.add_argument("--batch-size", type=int, default=1000, help="ds.map batch size (datasets' default)")
    parser.add_argument("--matmul-seconds", type=float, default=0.5, help="length of each in-step matmul sample")
    parser.add_argument("--every", type=float, default=4.0, help="seconds between in-step matmul samples")
    parser.add_argument("--data", default="alpaca_52k.json", help="a json file in ../shared/data")
    parser.add_argument("--skip-reference", action="store_true", help="leave out the per-row loop (slow)")
    parser.add_argument("--compile", choices=("on", "auto", "off"), default="on",
                        help="IFDScorer(compile=...): on (default) measures a long run's steady state; auto "
                             "compiles after a minute of model time, as a run with the defaults does")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated dtypes to measure")
    parser.add_argument("--token-budgets", default="", help="comma-separated token budgets (default: the engine's)")
    parser.add_argument("--head-chunks", default="", help="comma-separated positions projected at once")
    parser.add_argument("--eager", action="store_true", help="also run each dtype uncompiled")
    args = parser.parse_args()
    budgets = [int(x) for x in args.token_budgets.split(",") if x] or [None]
    chunks = [int(x) for x in args.head_chunks.split(",") if x] or [None]

    from hf_prospector.models import load_causal_lm
    from hf_prospector.scorers import IFDScorer

    harness.print_header(f"utilisation: model FLOP/s of IFDScorer vs 2048^3 matmul, first {args.rows} rows of "
                         f"{args.data}", args)
    load_start = harness.report_load("start")
    ds = harness.first_rows(args.data, args.rows)
    warm = ds.select(range(min(2, len(ds))))

    def scored(scorer, data):
        data.map(scorer, batched=True, batch_size=args.batch_size, load_from_cache_file=False, keep_in_memory=True)

    def with_settings(engine, budget, chunk, score):
        default_budget = engine.token_budget

        def run():
            engine.token_budget, engine.head_positions = budget or default_budget, chunk
            return score()
        return run

    runs, engines = {}, {}
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        for compile in [args.compile] + ["off"] * args.eager:
            scorer = IFDScorer(dtype=name, compile=compile)
            engine = scorer.engine()
            counter = harness.FlopCounter(engine.model, engine.head)
            sampler = InStepMatmul(engine.model, dtype, args.matmul_seconds, args.every)
            scored(scorer, warm)  # one-time set-up is not measured
            for budget in budgets:
                for chunk in chunks:
                    label = " ".join([f"IFDScorer {name}"] + [f"compile={compile}"] * args.eager
                                     + [f"token_budget={budget}"] * (budget is not None)
                                     + [f"head_positions={chunk}"] * (chunk is not None))
                    engines[label] = engine
                    runs[label] = with_settings(engine, budget, chunk, lambda s=scorer, c=counter, m=sampler:
                                                measured(lambda: scored(s, ds), c, m))
    if not args.skip_reference:
        ref_model, tokenizer = load_causal_lm(None)
        ref_counter = harness.FlopCounter(ref_model)
        ref_sampler = InStepMatmul(ref_model, torch.float32, args.matmul_seconds, args.every)
        rows = ds.to_list()
        superfiltering_losses(ref_model, tokenizer, rows[:2])
        runs["Superfiltering loop float32"] = lambda: measured(lambda: superfiltering_losses(ref_model, tokenizer, rows),
                                                               ref_counter, ref_sampler)

    by_run = harness.interleave(runs, args.rounds)
    table, results = [], {}
    for label, rounds in by_run.items():
        median = harness.median_run(rounds, key=lambda m: m.result["of_matmul"]).result
        compiled = label in engines and engines[label].compiled  # compile="auto": after a minute of model time
        results[label] = dict(median, compiled=compiled,
                              of_matmul_each_round=[m.result["of_matmul"] for m in rounds])
        table.append([label + (" (compiled)" if compiled else ""), f"{median['gflop_per_s']:.0f}",
                      f"{median['matmul_gflop_per_s']:.0f}", f"{median['of_matmul']:.0%}",
                      " / ".join(f"{m.result['of_matmul']:.0%}" for m in rounds),
                      f"{median['tokens']:,}", f"{1 - median['real_tokens'] / median['tokens']:.0%}",
                      f"{median['projected']:,}", f"{median['model_seconds']:.1f}"])
    print()
    text = harness.print_table(["what", "GFLOP/s", "matmul GFLOP/s sampled in step, same dtype", "of matmul (median round)",
                                "each round", "tokens run", "of which padding", "positions projected",
                                "model seconds"], table)
    print(f"# target: IFDScorer bfloat16 >= {TARGET_BF16:.0%} of the bfloat16 matmul's FLOP/s")
    load_end = harness.report_end_load()
    harness.save_results("bench_utilisation", {"rows": len(ds), "rounds": args.rounds,
                                               "matmul_seconds": args.matmul_seconds, "every": args.every,
                                               "load_average": [load_start, load_end], "results": results,
                                               "tables": [text]})


if __name__ == "__main__":
    main()
