"""Where a scorer's time goes: the torch profiler over ``IFDScorer`` (first ``--rows`` Alpaca rows) or ``GoldScorer``
(first ``--rows`` candidates of alpaca_gpt4_9k.json against ``--tasks`` tasks of task_set_kmeans_100.json), by kind
of work.

The scorer is warmed (and, with ``--compile on``, compiled) on other rows first (for the golden score, its
zero-shot pass too); then one ``ds.map`` call of ``--rows`` rows is profiled. CPU time of the profiled ops is
grouped into matrix products (the FLOPs that count), attention, fused or element-wise kernels, the vocabulary's
log-softmax and the rest, each with its share of the call's wall time, and the model's rate against a 2048^3
matmul in the same dtype measured just before.

    python bench/profile_scorer.py --dtype float32                       # IFD, 200 rows, compiled
    python bench/profile_scorer.py --dtype bfloat16 --rows 100
    python bench/profile_scorer.py --scorer gold --dtype float32 --rows 3   # 3 candidates x 100 tasks
"""

from __future__ import annotations

import time
from collections import defaultdict

import harness

# Profiler op names (or their starts) by kind; the first kind that matches wins.
KINDS = [
    ("matrix products", ("aten::mm", "aten::addmm", "aten::linear", "mkldnn::_linear_pointwise", "aten::matmul")),
    ("attention", ("aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product", "aten::scaled_dot_product",
                   "aten::_softmax", "aten::softmax")),
    ("compiled element-wise kernels", ("cpp_fused", "graph_")),
    ("eager element-wise", ("aten::mul", "aten::add", "aten::silu", "aten::rsqrt", "aten::pow", "aten::mean",
                            "aten::cat", "aten::neg", "aten::cos", "aten::sin", "aten::copy_", "aten::to",
                            "aten::_to_copy", "aten::index", "aten::embedding", "aten::where", "aten::sub")),
    ("log-softmax over the vocabulary", ("aten::log_softmax", "aten::_log_softmax", "aten::logsumexp",
                                         "aten::gather")),
]


def kind_of(name: str) -> str:
    return next((kind for kind, starts in KINDS if name.startswith(starts)), "other")


def main() -> None:
    p = harness.parser(__doc__)
    p.add_argument("--scorer", choices=("ifd", "gold"), default="ifd")
    p.add_argument("--rows", type=int, default=None, help="rows (IFD, default 200) or candidates (gold, default 3)")
    p.add_argument("--tasks", type=int, default=100, help="gold: first tasks of the task set")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--compile", choices=("on", "off"), default="on")
    p.add_argument("--token-budget", type=int, default=None)
    p.add_argument("--head-positions", type=int, default=None)
    args = p.parse_args()
    gold = args.scorer == "gold"
    args.rows = args.rows or (3 if gold else 200)
    what = f"{args.rows} candidates x {args.tasks} tasks" if gold else f"{args.rows} rows"
    harness.print_header(f"profile of {'Gold' if gold else 'IFD'}Scorer({args.dtype}, compile {args.compile}) over "
                         f"{what}", args)
    import torch
    from torch.profiler import ProfilerActivity, profile

    from torch._inductor import config as inductor_config

    from hf_prospector.scorers import GoldScorer, IFDScorer

    inductor_config.cpp.enable_kernel_profile = True  # each generated kernel shows up by name

    harness.report_load("start")
    settings = dict(dtype=args.dtype, compile=args.compile, token_budget=args.token_budget)
    if gold:
        warm_rows = 1
        rows = harness.first_rows("alpaca_gpt4_9k.json", args.rows + warm_rows)
        scorer = GoldScorer(task_set=harness.first_rows("task_set_kmeans_100.json", args.tasks), **settings)
    else:
        warm_rows = 64
        rows = harness.first_rows("alpaca_52k.json", args.rows + warm_rows)
        scorer = IFDScorer(**settings)
    warm, ds = rows.select(range(args.rows, args.rows + warm_rows)), rows.select(range(args.rows))
    engine = scorer.engine()
    engine.head_positions = args.head_positions
    counter = harness.FlopCounter(engine.model, engine.head)

    def score(data):
        data.map(scorer, batched=True, batch_size=1000, load_from_cache_file=False, keep_in_memory=True)

    score(warm)  # compiles (on) and warms the kernels
    flops, seconds = harness.matmul_sample(engine.dtype, 2.0)
    counter.reset()
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        score(ds)
    wall = time.perf_counter() - started
    by_kind, ops = defaultdict(float), defaultdict(float)
    for event in prof.key_averages():  # self time: each op's own, its children excluded
        ops[event.key] += event.self_cpu_time_total / 1e6
    threads = torch.get_num_threads()
    for name, secs in ops.items():
        by_kind[kind_of(name)] += secs
    total = sum(by_kind.values())
    model_rate = counter.flops / wall / 1e9
    print(f"# dtype {harness.dtype_name(engine.dtype)}, token budget {engine.token_budget}, compiled "
          f"{engine.compiled}; {what} in {wall:.1f} s; model {model_rate:.0f} GFLOP/s (issue's count) "
          f"against the 2048^3 matmul's {flops / seconds / 1e9:.0f} GFLOP/s: {model_rate / (flops / seconds / 1e9):.0%}")
    table = [[kind, f"{secs:.1f}", f"{secs / total:.0%}"] for kind, secs in sorted(by_kind.items(), key=lambda kv: -kv[1])]
    harness.print_table(["kind of work", f"self CPU s ({threads} threads summed)", "share"], table)
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:15]
    harness.print_table(["op", "self CPU s", "share", "kind"],
                        [[name[:60], f"{secs:.2f}", f"{secs / total:.1%}", kind_of(name)] for name, secs in top])
    harness.report_end_load()


if __name__ == "__main__":
    main()
