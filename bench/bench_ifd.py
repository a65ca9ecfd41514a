"""Benchmark: IFD with ``IFDScorer`` against the Superfiltering script's per-row loop, same model and rows.

The baseline is the loop of tianyi-lab/Superfiltering ``code_ifd/data_analysis.py`` (bench/reference.py):
one row per forward pass, float32, logits at every position, the model's own loss. The candidate is
``ds.map(IFDScorer(), batched=True)`` with the library's defaults. Both use SmolLM2-135M on the first
``--rows`` rows of ``../shared/data/alpaca_52k.json`` and run in one process, alternating, for
``--rounds`` rounds; the table gives each one's median round. The defaults compile the model once it
has run for a minute (``compile="auto"``), so the first round of a long enough run holds that minute of
eager scoring and the compile; the table shows it on its own line.

Agreement is checked within one convention: ``IFDScorer(convention="superfiltering")`` against the loop
(float32 and the default dtype), and the default settings against the same scorer in float32.

Columns: rows/s; tokens/s (real tokens, padding excluded, through the model per second); GFLOP/s (the
issue's count, see bench/harness.py; padding included); peak RSS of the process during the median
round, and how far it rose above the RSS before that round (working memory: weights loaded earlier
excluded); the weights' size. On a CPU, the ceiling rows give the candidate's FLOPs per row done at the
rate of a 2048^3 matrix multiply in its dtype (the faster of samples before and after the rounds), the
machine's practical peak: an implementation doing that arithmetic passes it only by the few percent a
better-shaped product gains, so the ceiling's ratio bounds the speed ratio the machine can show.

    python bench/bench_ifd.py                          # 1,000 rows, 3 rounds
    python bench/bench_ifd.py --rows 16 --rounds 1     # a smoke run
    python bench/bench_ifd.py --rows 400 --rounds 1 --dtype float32   # the float32 path on an AMX machine
"""

from __future__ import annotations

import math

import numpy as np

import harness
from reference import superfiltering_losses

# The speed ratio asked of the defaults on each CPU class (issue 23); other classes have none.
TARGET_RATIO = {"AMX": 6.0, "AVX2": 2.5}
TARGET_SPEARMAN = 0.995


def score(scorer, ds, batch_size: int):
    """The user's call: ``ds.map(scorer, batched=True)``, never served from the datasets cache."""
    return ds.map(scorer, batched=True, batch_size=batch_size, load_from_cache_file=False, keep_in_memory=True)


def agreement(name: str, a: np.ndarray, b: np.ndarray, loss_a: np.ndarray, loss_b: np.ndarray) -> list:
    """Spearman and max |diff| of IFD (and of the conditioned loss) over rows both score."""
    from scipy.stats import spearmanr

    both = np.isfinite(a) & np.isfinite(b)
    one_only = int(np.sum(np.isfinite(a) != np.isfinite(b)))
    rho = spearmanr(a[both], b[both]).statistic if both.sum() > 1 else math.nan
    diff = float(np.max(np.abs(a[both] - b[both]))) if both.any() else math.nan
    loss_diff = float(np.max(np.abs(loss_a[both] - loss_b[both]))) if both.any() else math.nan
    return [name, int(both.sum()), one_only, f"{rho:.5f}", f"{diff:.2e}", f"{loss_diff:.2e}"]


def weights_mb(model) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2 ** 20


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--rows", type=int, default=1000, help="first rows of the data file")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    parser.add_argument("--batch-size", type=int, default=1000, help="ds.map batch size (datasets' default)")
    parser.add_argument("--data", default="alpaca_52k.json", help="a json file in ../shared/data")
    parser.add_argument("--dtype", default="auto", help="the candidate's dtype (float32: a CPU without native bf16)")
    args = parser.parse_args()

    from hf_prospector.engine import cpu_class
    from hf_prospector.models import load_causal_lm
    from hf_prospector.scorers import IFDScorer

    harness.print_header(f"IFD: Superfiltering per-row loop vs IFDScorer(), first {args.rows} rows of {args.data}",
                         args)
    load_start = harness.report_load("start")
    ds = harness.first_rows(args.data, args.rows)
    rows = ds.to_list()

    ref_model, tokenizer = load_causal_lm(None)  # float32 weights for the loop
    candidate = IFDScorer(dtype=args.dtype)
    engine = candidate.engine()
    counters = {"reference": harness.FlopCounter(ref_model), "candidate": harness.FlopCounter(engine.model, engine.head)}
    # One-time set-up (thread pools, kernel selection) is not what either side is measured on.
    superfiltering_losses(ref_model, tokenizer, rows[:2])
    score(candidate, ds.select(range(min(2, len(ds)))), args.batch_size)

    def counted(name, fn):
        def run():
            counters[name].reset()
            return fn(), counters[name].real_tokens, counters[name].flops
        return run

    # The attainable rate in the candidate's dtype (on a CPU), sampled before and after the rounds; the faster
    # sample counts, so the ceiling is never understated by a moment of load.
    on_cpu = engine.device.type == "cpu"
    peak = [harness.matmul_sample(engine.dtype, 2.0)] if on_cpu else []
    runs = harness.interleave({
        "reference": counted("reference", lambda: superfiltering_losses(ref_model, tokenizer, rows)),
        "candidate": counted("candidate", lambda: score(candidate, ds, args.batch_size)),
    }, args.rounds)

    labels = {"reference": "Superfiltering loop (float32, 1 row per pass, full logits)",
              "candidate": f"IFDScorer({'' if args.dtype == 'auto' else f'dtype={args.dtype!r}'}) defaults "
                           f"({candidate.convention}, {harness.dtype_name(engine.dtype)}"
                           f"{', compiled' if engine.compiled else ''})"}
    weights = {"reference": weights_mb(ref_model), "candidate": weights_mb(engine.model)}
    speed, results = [], {}
    for name, measurements in runs.items():
        seconds = harness.median_seconds(measurements)
        m = harness.median_run(measurements)
        _, tokens, flops = m.result
        results[name] = {"seconds": seconds, "cpu_seconds": harness.median_cpu_seconds(measurements),
                         "rows_per_s": len(rows) / seconds, "tokens_per_s": tokens / seconds,
                         "gflop_per_s": flops / seconds / 1e9, "peak_rss_mb": m.peak_rss,
                         "working_mb": m.working_mb, "weights_mb": weights[name],
                         "all_seconds": [x.seconds for x in measurements]}
        r = results[name]
        speed.append([labels[name], f"{r['rows_per_s']:.2f}", f"{r['tokens_per_s']:.0f}", f"{r['gflop_per_s']:.0f}",
                      f"{r['peak_rss_mb']:.0f}", f"{r['working_mb']:.0f}", f"{r['weights_mb']:.0f}"])
    ratio = results["reference"]["seconds"] / results["candidate"]["seconds"]
    target = TARGET_RATIO.get(cpu_class()) if on_cpu and args.dtype == "auto" else None
    target_text = f"target on {cpu_class()} >= {target:g}x" if target else "no target for this hardware"
    ceiling = None
    if on_cpu:
        peak.append(harness.matmul_sample(engine.dtype, 2.0))
        peak_rate = max(f / t for f, t in peak)
        # The candidate's FLOPs per row at the practical peak: about the most this machine lets any scorer reach.
        ceiling_rows_per_s = peak_rate / (harness.median_run(runs["candidate"]).result[2] / len(rows))
        ceiling = ceiling_rows_per_s / results["reference"]["rows_per_s"]
        results["candidate"].update(matmul_gflop_per_s=peak_rate / 1e9,
                                    share_of_matmul=results["candidate"]["gflop_per_s"] * 1e9 / peak_rate)
    cpu_ratio = results["reference"]["cpu_seconds"] / results["candidate"]["cpu_seconds"]
    first = runs["candidate"][0].seconds  # a run's start: eager until compile="auto" compiles, then the compile
    results["candidate"].update(first_round_seconds=first, compiled=engine.compiled,
                                eager_seconds_before_compile=engine.eager_seconds)
    speed.append([f"speed ratio ({target_text})", f"{ratio:.2f}x", "", "", "", "", ""])
    speed.append(["CPU-time ratio", f"{cpu_ratio:.2f}x", "", "", "", "", ""])
    if ceiling is not None:
        speed.append([f"ceiling: the candidate's FLOPs at the {harness.dtype_name(engine.dtype)} 2048^3 matmul rate",
                      f"{ceiling_rows_per_s:.2f}", "", f"{peak_rate / 1e9:.0f}", "", "", ""])
        speed.append(["ceiling ratio (these FLOPs at the matmul rate)", f"{ceiling:.2f}x", "", "", "", "", ""])
    start = "compiled" if not engine.eager_seconds else "eager, compile, compiled" if engine.compiled else "eager"
    speed.append([f"IFDScorer() first round ({start})",
                  f"{len(rows) / first:.2f}", "", "", "", "", ""])

    # Agreement, untimed.
    ref = runs["reference"][-1].result[0]
    ref_cond = np.array([r["loss_cond"] for r in ref])
    ref_ifd = np.exp(ref_cond - np.array([r["loss_uncond"] for r in ref]))
    default = runs["candidate"][-1].result[0]
    table = []
    for name, scorer, other, other_loss in [
        ('IFDScorer(convention="superfiltering", dtype="float32") vs loop',
         IFDScorer(convention="superfiltering", dtype="float32"), ref_ifd, ref_cond),
        ('IFDScorer(convention="superfiltering") vs loop', IFDScorer(convention="superfiltering"), ref_ifd, ref_cond),
        ('IFDScorer() vs IFDScorer(dtype="float32")', IFDScorer(dtype="float32"),
         np.array(default["ifd"], dtype=float), np.array(default["loss_cond"], dtype=float)),
    ]:
        out = score(scorer, ds, args.batch_size)
        table.append(agreement(name, np.array(out["ifd"], dtype=float), other,
                               np.array(out["loss_cond"], dtype=float), other_loss))

    print()
    speed_text = harness.print_table(["method", "rows/s", "tokens/s", "GFLOP/s", "peak RSS MB", "working MB",
                                      "weights MB"], speed)
    print()
    agreement_text = harness.print_table(["agreement (ifd)", "rows", "NaN in one only", "Spearman",
                                          "max |diff|", "max |diff| loss_cond"], table)
    print(f"# targets: speed ratio: {target_text}; Spearman of the defaults against float32 >= "
          f"{TARGET_SPEARMAN}")
    load_end = harness.report_end_load()
    harness.save_results("bench_ifd", {"rows": len(rows), "rounds": args.rounds, "load_average": [load_start, load_end],
                                       "results": results, "speed_ratio": ratio, "cpu_time_ratio": cpu_ratio,
                                       "ceiling_ratio": ceiling,
                                       "agreement": table,
                                       "tables": [speed_text, agreement_text]})


if __name__ == "__main__":
    main()
