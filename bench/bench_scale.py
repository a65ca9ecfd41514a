"""Benchmark: time per 1,000 rows and peak memory of ``IFDScorer`` while it streams 10k and 50k rows.

For each size N, the first N rows of ``../shared/data/alpaca_52k.json`` go through
``ds.map(IFDScorer(), batched=True, batch_size=1000)`` as a user runs it, writing its result to a
cache file (removed afterwards). After every map batch the script records the rows done, the
time and the process's resident set, so the table shows whether memory grows with the rows scored.
Time per 1,000 rows is the median over the batches after the first (which also pays for thread
pools and kernel set-up). ``--limit`` scores only the first rows of each set, to save time: the
time per 1,000 rows stays meaningful, but memory is then shown over those rows only. ``--layers K``
streams every row cheaply for the memory trace: SmolLM2-135M's config cut to K decoder layers, random
weights, the same tokenizer, rows, micro-batches and ``ds.map`` path (its seconds per 1,000 rows are
not the real model's; take those from a ``--limit`` run).

Peak RSS is the process's high-water mark while the set is scored (reset before each set and read and
reset around every map batch, so the trace also holds each batch's own peak), the weights included;
"growth" is RSS at the end minus RSS after the first batch, and "2nd half" the growth over the second half
of the rows scored (near 0 once memory has levelled off).

    python bench/bench_scale.py                                  # 10k and 50k rows, all scored
    python bench/bench_scale.py --limit 3000                     # time on the first 3,000 of each
    python bench/bench_scale.py --layers 2                       # every row, 2-layer model: memory
    python bench/bench_scale.py --sizes 64 256 --batch-size 32   # a smoke run
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import harness


def cut_model(layers: int, folder: Path) -> str:
    """SmolLM2-135M's config with ``layers`` decoder layers and random weights, saved with its tokenizer."""
    from transformers import AutoModelForCausalLM

    from hf_prospector.models import load_causal_lm

    model, tokenizer = load_causal_lm(None)
    model.config.num_hidden_layers = layers
    AutoModelForCausalLM.from_config(model.config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


class Probe:
    """Calls the scorer on a map batch and records (rows done, seconds since start, RSS after it, peak RSS during
    it); ``peak`` is the highest RSS from the map's start (reset by the caller), between batches included."""

    def __init__(self, scorer):
        self.scorer = scorer
        self.trace: list[tuple[int, float, float, float]] = []
        self.start = time.perf_counter()
        self.peak = 0.0

    def __call__(self, batch):
        self.peak = max(self.peak, harness.peak_rss_mb())  # what the map did since the last batch
        harness.reset_peak_rss()
        out = self.scorer(batch)
        batch_peak = harness.peak_rss_mb()
        self.peak = max(self.peak, batch_peak)
        done = (self.trace[-1][0] if self.trace else 0) + len(next(iter(batch.values())))
        self.trace.append((done, time.perf_counter() - self.start, harness.rss_mb(), batch_peak))
        return out


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000], help="rows per data set")
    parser.add_argument("--limit", type=int, default=None, help="score only this many rows of each set")
    parser.add_argument("--batch-size", type=int, default=1000, help="ds.map batch size")
    parser.add_argument("--data", default="alpaca_52k.json", help="a json file in ../shared/data")
    parser.add_argument("--layers", type=int, default=None,
                        help="memory trace: SmolLM2-135M cut to this many layers, random weights (not its speed)")
    args = parser.parse_args()

    from hf_prospector.scorers import IFDScorer

    model = "SmolLM2-135M" if args.layers is None else f"SmolLM2-135M cut to {args.layers} layers (random weights)"
    harness.print_header(f"scale: IFDScorer() ({model}) streaming the first {' and '.join(map(str, args.sizes))} "
                         f"rows of {args.data}, map batches of {args.batch_size}", args)
    load_start = harness.report_load("start")
    table, results = [], []
    with tempfile.TemporaryDirectory() as folder:
        scorer = IFDScorer(model=None if args.layers is None else cut_model(args.layers, Path(folder) / "model"))
        scorer.engine()  # the model loads once; its weights are in every row of the table
        for n in args.sizes:
            ds = harness.first_rows(args.data, n)
            scored = ds.select(range(min(args.limit, len(ds)))) if args.limit else ds
            probe = Probe(scorer)
            m = harness.Measurement(lambda scored=scored: scored.map(
                probe, batched=True, batch_size=args.batch_size, load_from_cache_file=False,
                cache_file_name=str(Path(folder) / f"ifd_{n}.arrow")))
            per_batch = [(t1 - t0) * 1000 / (r1 - r0)
                         for (r0, t0, *_), (r1, t1, *_) in zip(probe.trace, probe.trace[1:])]
            per_1000 = statistics.median(per_batch) if per_batch else m.seconds * 1000 / len(scored)
            first_rss, end_rss = probe.trace[0][2], probe.trace[-1][2]
            half_rss = next(rss for done, _, rss, _ in probe.trace if done >= len(scored) / 2)
            peak = max(m.peak_rss, probe.peak)
            peak_batch = max(probe.trace, key=lambda entry: entry[3])
            results.append({"rows": len(ds), "rows_scored": len(scored), "seconds": m.seconds,
                            "seconds_per_1000_rows": per_1000, "peak_rss_mb": peak,
                            "rss_after_first_batch_mb": first_rss, "rss_end_mb": end_rss, "rss_half_mb": half_rss,
                            "trace": probe.trace})
            table.append([f"{len(ds):,}", f"{len(scored):,}", f"{per_1000:.1f}", f"{m.seconds:.0f}",
                          f"{peak:.0f}", f"{first_rss:.0f}", f"{end_rss:.0f}", f"{end_rss - first_rss:+.0f}",
                          f"{end_rss - half_rss:+.0f}"])
            print(f"#   {len(ds):,} rows: {len(scored):,} scored in {m.seconds:.0f} s, peak RSS {peak:.0f} MB "
                  f"(highest in a batch: {peak_batch[3]:.0f} MB, the one ending at row {peak_batch[0]:,}), "
                  f"growth after the first batch {end_rss - first_rss:+.0f} MB, "
                  f"over the 2nd half {end_rss - half_rss:+.0f} MB", flush=True)
            del ds, scored
    print()
    text = harness.print_table(["rows", "scored", "s / 1,000 rows", "total s", "peak RSS MB",
                                "RSS after 1st batch MB", "RSS at end MB", "growth MB", "2nd half MB"], table)
    load_end = harness.report_end_load()
    harness.save_results("bench_scale", {"model": model, "load_average": [load_start, load_end], "results": results,
                                         "tables": [text]})


if __name__ == "__main__":
    main()
